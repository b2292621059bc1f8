//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` in a temporary directory,
//! reached through a unix socket in that directory (no TCP port to collide on), stopped and
//! removed by a watchdog process once the test process is gone (however it ended).
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI), the cluster runs as the
//! `postgres` system user that Debian's package creates, through `runuser`. When no PostgreSQL
//! binaries are found, [`cluster`] returns `None` and the caller prints a loud SKIPPED line —
//! unless `SILO_REQUIRE_POSTGRES=1` (set by `.ci/run`), which turns that into a failure.
//!
//! [`private_cluster`] starts one more cluster for tests that restart or reconfigure it, and can
//! also listen on loopback TCP with TLS (certificates made by `openssl`) and passwords.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    server_options: String,
    tcp: Option<Tcp>,
}

/// A cluster's loopback TCP listener: TLS only, password authentication.
#[derive(Debug)]
struct Tcp {
    port: u16,
}

/// The password of the `silo` role on a cluster with TCP.
pub const PASSWORD: &str = "silo-test-password";

/// The cluster of this test process, started on first use; `None` when PostgreSQL is not
/// installed (panics instead when `SILO_REQUIRE_POSTGRES=1`, or when it is installed but
/// does not start).
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            let Some(bin) = find_binaries() else {
                assert!(
                    std::env::var("SILO_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "SILO_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) were \
                     found: install them (apt-get install postgresql) or set SILO_PG_BIN"
                );
                // Straight to the file descriptor: the test harness captures `eprintln!`.
                use std::io::Write;
                let _ = std::io::stderr().write_all(
                    b"\n*** SKIPPED: PostgreSQL tests - no initdb/pg_ctl found (apt-get install \
                      postgresql, or set SILO_PG_BIN) ***\n",
                );
                return None;
            };
            Some(
                Cluster::start(&bin, Setup::default())
                    .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")),
            )
        })
        .as_ref()
}

/// How a [`private_cluster`] differs from the shared one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// Also listen on 127.0.0.1 with TLS: `hostssl` + SCRAM passwords for TCP, plain
    /// connections over TCP refused.
    pub tcp: bool,
    /// PostgreSQL's own durability settings (`fsync`, `full_page_writes` on), as a real
    /// deployment has them: for benchmarks. Tests leave them off, for speed.
    pub durable: bool,
}

/// A cluster of the caller's own (to restart, reconfigure or benchmark); `None` as for
/// [`cluster`].
pub fn private_cluster(setup: Setup) -> Option<Cluster> {
    let bin = find_binaries();
    if bin.is_none() {
        cluster()?;
    }
    Some(Cluster::start(&bin?, setup).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")))
}

/// Whether PostgreSQL tests can run here; prints the SKIPPED line (once) when not.
pub fn available() -> bool {
    cluster().is_some()
}

impl Cluster {
    fn start(bin: &Path, setup: Setup) -> Result<Cluster, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("silo-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let root = is_root();
        if root {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        run(as_owner(bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync"))?;
        // Durability of the cluster itself is not under test (unless `durable`, for benchmarks):
        // fsync off keeps tests fast.
        let mut server_options = format!(
            "-k {} -c max_connections=400 -c shared_buffers=64MB{}",
            dir.display(),
            if setup.durable {
                ""
            } else {
                " -c fsync=off -c full_page_writes=off"
            }
        );
        let tcp = if setup.tcp {
            let port = make_tls_files(&dir, &data)?;
            server_options.push_str(&format!(
                " -c listen_addresses=127.0.0.1 -p {port} -c ssl=on \
                 -c ssl_cert_file={tls}/server.crt -c ssl_key_file={tls}/server.key",
                tls = dir.join("tls").display()
            ));
            Some(Tcp { port })
        } else {
            server_options.push_str(" -c listen_addresses=''");
            None
        };
        if root {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir))?;
        }
        let cluster = Cluster {
            dir: dir.clone(),
            bin: bin.to_path_buf(),
            server_options,
            tcp,
        };
        cluster.pg_ctl(&["start"])?;
        // The watchdog: once this process is gone, stop the cluster and remove its files.
        let stop = format!(
            "{runuser}{pg_ctl} -D {data} stop -m immediate",
            runuser = if root { "runuser -u postgres -- " } else { "" },
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
        );
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {dir}",
            pid = std::process::id(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the watchdog: {e}"))?;
        if cluster.tcp.is_some() {
            cluster.psql(&format!(
                "CREATE ROLE silo LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
            ))?;
        }
        Ok(cluster)
    }

    /// Runs `pg_ctl` on the cluster (as its owner), waiting for it.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut c = as_owner(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &self.server_options])
            .args(args);
        run(&mut c)
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, in-flight transactions
    /// rolled back).
    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "stop"])
    }

    /// Starts the server again after [`Cluster::stop`].
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl(&["start"])
    }

    /// A `postgres://silo:…@host:port/postgres` URL of the cluster's TCP listener (`host`:
    /// `localhost`, which its certificate names, or `127.0.0.1`, which it does not), with the
    /// store in `schema` and `query` appended. Panics when the cluster has no TCP listener.
    pub fn tcp_url(&self, host: &str, schema: &str, query: &str) -> String {
        let port = self
            .tcp
            .as_ref()
            .map(|t| t.port)
            .expect("a cluster with tcp");
        let mut url = format!("postgres://silo:{PASSWORD}@{host}:{port}/postgres?schema={schema}");
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        url
    }

    /// The server's port (its unix socket's name carries it too).
    pub fn port(&self) -> u16 {
        self.tcp.as_ref().map_or(5432, |t| t.port)
    }

    /// The CA certificate that signed the TCP listener's certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// A CA certificate that signed nothing of this cluster's (PEM).
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("tls/other-ca.crt")
    }

    /// A URL of the cluster's `postgres` database with the store in `schema`, and `query`
    /// (more options, possibly empty) appended.
    pub fn url(&self, schema: &str, query: &str) -> String {
        let mut url = format!(
            "postgres:///postgres?user=postgres&host={}&port={}&schema={schema}",
            self.dir.display(),
            self.port()
        );
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        url
    }

    /// [`Cluster::url`] with a schema no other call of this process got.
    pub fn fresh_url(&self, query: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.url(&format!("t{}_{n}", std::process::id()), query)
    }

    /// The cluster's directory (its socket lives there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs SQL on the cluster's `postgres` database through `psql`, as its owner; returns
    /// what it printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let bin = find_binaries().ok_or("no PostgreSQL binaries")?;
        let mut c = Command::new(bin.join("psql"));
        c.args(["-X", "-A", "-t", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port().to_string(), "-c", sql]);
        let out = c.output().map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Makes the TLS files of a cluster with TCP in `dir/tls` (a CA, a server certificate it signed
/// that names `localhost` only, and a second CA), lets `data/pg_hba.conf` take passwords over
/// TLS only, and returns a free loopback port.
fn make_tls_files(dir: &Path, data: &Path) -> Result<u16, String> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| format!("creating {}: {e}", tls.display()))?;
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(&tls).args(args));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=silo {ca}"),
        );
        let mut args = vec!["req", "-x509", "-days", "3", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args)?;
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(&args)?;
    std::fs::write(tls.join("san.ext"), "subjectAltName=DNS:localhost\n")
        .map_err(|e| format!("writing san.ext: {e}"))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| format!("chmod server.key: {e}"))?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .map_err(|e| format!("writing pg_hba.conf: {e}"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    Ok(port)
}

/// The directory holding `initdb` and `pg_ctl`: `SILO_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else the one on `PATH`.
fn find_binaries() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("SILO_PG_BIN").map(PathBuf::from) {
        return has(&dir).then_some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| has(d))
}

/// `bin/program`, run as the `postgres` user when this process is root (PostgreSQL refuses
/// to run as root).
fn as_owner(bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {c:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{c:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
