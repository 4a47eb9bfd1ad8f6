//! A real PostgreSQL for the tests: Debian's `postgresql` package, `initdb` in a temporary
//! directory and `postgres` on a free loopback port, one server per test binary, one fresh
//! database per test. A watchdog stops the server and removes its directory once the test
//! process is gone, so no server outlives the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Server {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Runs the server's programs as this user: initdb refuses root.
    as_user: Option<String>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The directory holding `initdb` and `postgres`: `SECURECLAW_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off PATH), or PATH.
fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SECURECLAW_TEST_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "PostgreSQL is not installed: the shared-store tests need a real server \
         (apt-get install postgresql, or set SECURECLAW_TEST_PG_BIN to the directory holding initdb)"
    );
    Path::new(&path)
        .parent()
        .expect("a directory")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn start() -> Server {
        let bin = bin_dir();
        let root = running_as_root();
        let as_user = root.then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("secureclaw-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        if let Some(user) = &as_user {
            let ok = Command::new("chown")
                .args([&format!("{user}:"), dir.to_str().expect("utf-8")])
                .status()
                .expect("chown");
            assert!(ok.success(), "chown {} to {user}", dir.display());
        }
        let server = Server {
            dir: dir.clone(),
            port: free_port(),
            bin,
            as_user,
        };
        let data = dir.join("data");
        let out = server
            .command("initdb")
            .args(["-D", data.to_str().expect("utf-8")])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.join("server.log");
        let out = server
            .command("pg_ctl")
            .args(["-D", data.to_str().expect("utf-8")])
            .args([
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
                "start",
            ])
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c fsync={} -c max_connections=200",
                server.port,
                // Tests need no durability; the benchmarks measure with it.
                if std::env::var_os("SECURECLAW_TEST_PG_FSYNC").is_some() {
                    "on"
                } else {
                    "off"
                }
            ))
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The watchdog: once this process is gone, stop the server and remove its files.
        let pidfile = data.join("postmaster.pid");
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -INT $(head -1 '{pid}') 2>/dev/null; \
             for i in $(seq 1 30); do [ -e '{pid}' ] || break; sleep 1; done; \
             rm -rf '{dir}'",
            me = std::process::id(),
            pid = pidfile.display(),
            dir = dir.display()
        );
        // Never waited for: it must outlive this process (then init reaps it).
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        server
    }

    /// A new, empty database on the shared server; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .command("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"])
                .arg(format!("CREATE DATABASE {name}"))
                .output()
                .expect("psql");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CREATE DATABASE: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The test binary's server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(Server::start)
}

/// The path of one of the server's programs (`pg_dump`, `psql`).
#[allow(dead_code)] // each test binary that includes this file uses what it needs
pub fn server_bin(program: &str) -> PathBuf {
    server().bin.join(program)
}
