//! Helpers shared by the `silo serve` process tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `silo serve` on a free port; returns the child and the port it printed.
pub fn start_server(store_url: &str, extra: &[&str]) -> (Child, u16) {
    start_server_with_env_token(store_url, extra, None)
}

/// [`start_server`] with `VGI_STORAGE_TOKEN` set to `env_token` (unset for `None`).
pub fn start_server_with_env_token(
    store_url: &str,
    extra: &[&str],
    env_token: Option<&str>,
) -> (Child, u16) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_silo"));
    command
        .args(["--store", store_url, "serve", "--bind", "127.0.0.1:0"])
        .args(extra)
        .env_remove("VGI_STORAGE_TOKEN");
    if let Some(token) = env_token {
        command.env("VGI_STORAGE_TOKEN", token);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .strip_prefix("PORT:")
        .expect("first line is PORT:<n>")
        .parse()
        .unwrap();
    (child, port)
}
