//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port with `wal_level=logical` (the CDC source needs it), trust authentication, stopped
//! (fast shutdown) and deleted on drop. Include it with
//! `#[path = "common/postgres.rs"] mod postgres;` (or the path from your test file).
//!
//! The binaries come from `$SPATE_PG_BIN` (a directory), else `initdb` on `PATH`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout; scripts/test.sh installs the `postgresql`
//! package). PostgreSQL refuses to run as root, so under root the server runs as the `postgres`
//! user through `setpriv`, and the data directory is handed to that user.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the server is initialised with.
pub const PG_USER: &str = "spate";

pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SPATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                // Follow links (e.g. /usr/local/bin/initdb → /usr/lib/postgresql/15/bin) so psql
                // and friends come from the same installation.
                let real = std::fs::canonicalize(dir.join("initdb")).unwrap_or_else(|_| dir.join("initdb"));
                return real.parent().map(Path::to_path_buf).unwrap_or(dir);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect(
        "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): \
         run ./scripts/test.sh setup, which installs Debian's postgresql package",
    )
}

fn is_root() -> bool {
    // geteuid through libc would need `unsafe`, which the workspace forbids.
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// `cmd` as a command that runs as the `postgres` user when we are root. `setpriv` execs in
/// place, so the child's pid is the server's own and signals reach it.
fn pg_command(bin: &Path, cmd: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(bin.join(cmd));
        c
    } else {
        Command::new(bin.join(cmd))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free loopback port")
}

impl PgServer {
    /// Starts a fresh server; panics (this is test code) with the server's log when it cannot.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let mut dir = tempfile::Builder::new().prefix("spate-pg-").tempdir().expect("temp dir");
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:"]).arg(dir.path()).status().map(|s| s.success());
            assert_eq!(ok.ok(), Some(true), "chown of the PostgreSQL data dir to postgres failed");
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin, "initdb")
            .args(["--auth=trust", "--encoding=UTF8", "--no-sync", "-U", PG_USER, "-D"])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.path().join("postgres.log");
        for attempt in 0..5 {
            let port = free_port();
            let log_file = std::fs::File::create(&log).expect("postgres log");
            if is_root() {
                let _ = Command::new("chown").args(["postgres:"]).arg(&log).status();
            }
            let child = pg_command(&bin, "postgres")
                .arg("-D")
                .arg(&data)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("port={port}")])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                // Logical decoding for the CDC source; tests run many slots in parallel.
                .args(["-c", "wal_level=logical", "-c", "max_replication_slots=64", "-c", "max_wal_senders=64"])
                .args(["-c", "max_connections=200"])
                // Tests kill workers, never the server: durability of the server itself is not
                // under test, speed is.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file)
                .spawn()
                .expect("spawning postgres");
            let mut server = PgServer { child: Some(child), dir, bin: bin.clone(), port };
            if server.wait_ready(Duration::from_secs(30)) {
                return server;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            server.stop();
            if attempt == 4 || !text.contains("could not bind") {
                panic!("postgres did not start on port {port}:\n{text}");
            }
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp dir"));
        }
        unreachable!()
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            if self.psql("postgres", "SELECT 1").is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `postgresql://spate@127.0.0.1:PORT/DB`, what `connection.url` takes.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through `psql` (unaligned, tuples only) and returns its stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", PG_USER])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\"")).expect("CREATE DATABASE");
        self.url(name)
    }

    /// The server's log so far (attach it to a failing assertion).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown: backends are terminated, the postmaster exits.
            let pid = child.id();
            let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
