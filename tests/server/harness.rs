//! A real `secureclaw serve` process on loopback, and a small HTTP client for it.
//!
//! One server is shared by the tests of this binary ([`shared`]); tests that change the
//! server's settings or count on a fresh one start their own ([`Server::start`]). Each server
//! lives under `sh`, which stops it (SIGTERM, a graceful shutdown) once the test process's end
//! of its stdin closes, so no server outlives the test binary.

// Each test module uses its own part of the harness.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

pub const PASSPHRASE: &str = "server-test-passphrase";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start a server with extra environment and flags; waits until it listens.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), env, args)
    }

    /// Start a server on `dir/data` (which may hold an earlier server's state).
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)], args: &[&str]) -> Server {
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$0" serve "$@" & pid=$!; read _ ; kill -TERM $pid; wait $pid"#)
            .arg(env!("CARGO_BIN_EXE_secureclaw"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(args)
            .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
            .env("ARGON2_MEMORY_KB", "8192")
            .env("ARGON2_ITERATIONS", "1")
            .env_remove("SECURECLAW_STATE_DIR")
            .env("HOME", dir.path())
            // Every test signs in from loopback: lift the per-address limits unless a test sets
            // its own.
            .env("SECURECLAW_REGISTER_MAX_PER_WINDOW", "1000000")
            .env("SECURECLAW_ADDR_BACKOFF_AFTER", "1000000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http"), "server did not start: {line:?}");
        Server {
            url,
            data_dir,
            child,
            _dir: dir,
        }
    }

    /// Register the first account, which is an admin who sees every user's tasks, so that
    /// the users of tests sharing this server are plain users whatever order the tests start
    /// in. (A thread of its own: this runs inside a test's runtime, which must not block.)
    pub fn take_first_account(&self) {
        let mut api = self.client();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move { api.register(&unique("first-admin")).await })
        })
        .join()
        .unwrap();
    }

    pub fn client(&self) -> Api {
        Api {
            base: self.url.clone(),
            // A request that hangs fails its test instead of holding up the whole run.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(90))
                .build()
                .unwrap(),
            token: None,
        }
    }

    /// Stop the server gracefully (SIGTERM) and wait for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }

    /// Stop the server and keep its directory (`data/state` is the state dir), e.g. to read
    /// its ledger with the CLI.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }

    /// Stop the server and start a new one on the same data dir (sessions do not survive).
    pub fn restart(mut self, env: &[(&str, &str)], args: &[&str]) -> Server {
        drop(self.child.stdin.take());
        assert!(
            self.child.wait().unwrap().success(),
            "the server did not stop cleanly"
        );
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Server::start_in(dir, env, args)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The server this test binary shares.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = Server::start(&[], &[]);
        server.take_first_account();
        server
    })
}

/// A unique username for one test.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HTTP client, signed in or not.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

/// Status and body (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem document's `code`.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    /// Sign in as `username` (no second factor) and keep the token.
    pub async fn login(&mut self, username: &str) -> Reply {
        let r = self
            .post(
                "/api/v1/auth/login",
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 200, "login {username}: {:?}", r.body);
        self.token = r.body["access_token"].as_str().map(str::to_string);
        r
    }

    /// Register `username` and keep the token.
    pub async fn register(&mut self, username: &str) -> Reply {
        let r = self
            .post(
                "/api/v1/auth/register",
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 201, "register {username}: {:?}", r.body);
        self.token = r.body["access_token"].as_str().map(str::to_string);
        r
    }

    /// A new signed-in user on `server`.
    pub async fn user(server: &Server, prefix: &str) -> Api {
        let mut api = server.client();
        api.register(&unique(prefix)).await;
        api
    }
}

/// The TOTP code of `secret` at `unix_time`, as an authenticator app computes it.
pub fn code_at(secret: &str, unix_time: u64) -> String {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap()
        .generate(unix_time)
        .to_string()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
