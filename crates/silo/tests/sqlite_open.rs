//! Opening SQLite stores: permissions, bad paths, foreign files and schema versions give
//! clear errors and never damage what is stored.

mod common;

use std::os::unix::fs::PermissionsExt;

use silo::Error;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn new_store_is_private_to_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/deeper/state.db");
    let store = silo::open(&format!("sqlite://{}", db.display())).unwrap();
    store.kv_put(b"s", b"k", b"v").unwrap();
    assert_eq!(
        mode(&dir.path().join("nested/deeper")),
        0o700,
        "store directory is 0700"
    );
    assert_eq!(mode(&db), 0o600, "database file is 0600");
    let wal = db.with_file_name("state.db-wal");
    assert_eq!(mode(&wal), 0o600, "WAL file is 0600");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let text = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let err = silo::open(&format!("sqlite://{}", path.display())).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("notes.db"),
        "the error names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        text,
        "the foreign file is untouched"
    );
}

#[test]
fn unusable_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = silo::open(&format!("sqlite://{}/state.db", file.display())).unwrap_err();
    assert!(matches!(under_file, Error::Io { .. }), "{under_file}");
    assert!(
        under_file.to_string().contains("plain-file"),
        "{under_file}"
    );

    let is_dir = silo::open(&format!("sqlite://{}", dir.path().display())).unwrap_err();
    assert!(matches!(is_dir, Error::Config { .. }), "{is_dir}");

    let relative = silo::open("sqlite:state.db").unwrap_err();
    assert!(matches!(relative, Error::Config { .. }), "{relative}");
}

#[test]
fn a_newer_schema_is_refused() {
    let temp = common::TempStore::sqlite("");
    temp.kv_put(b"s", b"k", b"v").unwrap();
    let path = temp.dir.path().join("state.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = silo::open(&temp.url).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("upgrade silo"), "{err}");
    assert_eq!(
        temp.kv_get(b"s", b"k").unwrap(),
        Some(b"v".to_vec()),
        "data untouched"
    );
}

#[test]
fn reopening_keeps_data_and_sync_full_works() {
    let temp = common::TempStore::sqlite("sync=full");
    temp.kv_put(b"s", b"k", b"v").unwrap();
    temp.append(b"s", b"n", b"l", b"e").unwrap();
    let again = silo::open(&temp.url).unwrap();
    assert_eq!(again.kv_get(b"s", b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(again.scan(b"s", b"n", b"l", 0, 10).unwrap().len(), 1);
}
