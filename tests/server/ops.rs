//! Running the server: health, metrics, body limits, unknown routes, TLS, shutdown and
//! restart, named workspaces.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::harness::{Api, Server, shared, unique};
use crate::taskkit::{GATED, started, wait_state};

#[tokio::test]
async fn health_says_which_llm_providers_are_configured_and_never_a_key() {
    let r = shared().client().get("/health").await;
    assert_eq!(r.status, 200);
    for name in ["anthropic", "openai", "ollama"] {
        let p = &r.body["llm_providers"][name];
        assert!(p["configured"].is_boolean(), "{name}: {:?}", r.body);
        assert!(p["selected"].is_boolean(), "{name}: {:?}", r.body);
    }

    let key = "sk-ant-api03-health-must-not-show-this";
    let server = Server::start(
        &[("LLM_PROVIDER", "openai"), ("ANTHROPIC_API_KEY", key)],
        &[],
    );
    let r = server.client().get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["database"], "connected");
    let providers = &r.body["llm_providers"];
    assert_eq!(providers["anthropic"]["configured"], true);
    assert_eq!(providers["anthropic"]["selected"], false);
    assert_eq!(providers["openai"]["selected"], true);
    assert!(
        !r.body.to_string().contains("health-must-not-show"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_documents() {
    let api = shared().client();
    let r = api.get("/api/v1/no-such-thing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
    assert_eq!(r.content_type(), "application/problem+json");

    let r = api
        .send(api.request(reqwest::Method::DELETE, "/health"))
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "method_not_allowed");
    assert_eq!(r.content_type(), "application/problem+json");
}

const OVER_LIMIT: usize = 1024 * 1024 + 1;

#[tokio::test]
async fn an_announced_body_over_the_limit_is_refused_as_a_problem() {
    let api = shared().client();
    let big = format!(
        r#"{{"username":"x","password":"{}"}}"#,
        "a".repeat(OVER_LIMIT)
    );
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/api/v1/auth/register")
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.code(), "body_too_large");
    assert_eq!(r.content_type(), "application/problem+json");
}

/// A client that announces a huge body and sends none of it gets its answer at once: nothing
/// waited to read the body.
#[tokio::test]
async fn an_announced_length_is_refused_before_the_body_is_read() {
    let addr = shared().url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            s,
            "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{"
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

/// Send `request` on a fresh connection and return what comes back first.
async fn raw_exchange(addr: &str, request: Vec<u8>) -> String {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // The server may answer and close before it has read everything; that is the point.
        let _ = s.write_all(&request);
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_smaller_limit_holds_for_announced_and_chunked_bodies() {
    let server = Server::start(&[("SECURECLAW_MAX_BODY_BYTES", "1000")], &[]);
    let api = server.client();
    let r = api
        .post(
            "/api/v1/auth/register",
            json!({"username": unique("limit"), "password": "p".repeat(2000)}),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.code(), "body_too_large");

    // Chunked: no length announced, the server learns the size only by reading.
    let mut request = b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut chunk = |data: &[u8]| {
        request.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        request.extend_from_slice(data);
        request.extend_from_slice(b"\r\n");
    };
    chunk(br#"{"username":"chunked","password":""#);
    for _ in 0..8 {
        chunk(&[b'a'; 500]);
    }
    chunk(br#""}"#);
    chunk(b"");
    let addr = server.url.trim_start_matches("http://");
    let answer = raw_exchange(addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // Within the limit, the same chunked framing is read normally.
    let mut request = b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let body =
        json!({"username": unique("chunked"), "password": crate::harness::PASSWORD}).to_string();
    request.extend_from_slice(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes());
    let answer = raw_exchange(addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_for_loopback_clients() {
    let api = shared().client();
    let res = api
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ctype = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = res.text().await.unwrap();
    for family in [
        "# TYPE secureclaw_runs gauge",
        "# TYPE secureclaw_steps gauge",
        "secureclaw_approvals_waiting ",
        "secureclaw_runs_live ",
        "secureclaw_runs_started_total ",
        "secureclaw_run_to_first_step_seconds_bucket{le=\"+Inf\"}",
        "secureclaw_step_seconds_count ",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_refuse_remote_clients_unless_they_bring_the_token() {
    // The loopback client stands in for a proxy the server trusts, so the address it forwards
    // is the client's.
    let server = Server::start(&[("SECURECLAW_TRUSTED_PROXIES", "127.0.0.1")], &[]);
    let api = server.client();
    let remote = |rb: reqwest::RequestBuilder| rb.header("x-forwarded-for", "203.0.113.9");
    let r = api
        .send(remote(api.request(reqwest::Method::GET, "/metrics")))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.content_type(), "application/problem+json");
    drop(server);

    let token = "metrics-token-0123456789abcdef";
    let server = Server::start(&[("SECURECLAW_METRICS_TOKEN", token)], &[]);
    let api = server.client();
    let r = api.get("/metrics").await;
    assert_eq!(
        r.status, 401,
        "loopback needs the token too once one is set"
    );
    let r = api
        .send(
            api.request(reqwest::Method::GET, "/metrics")
                .bearer_auth("metrics-token-0123456789abcdeX"),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = api
        .send(
            api.request(reqwest::Method::GET, "/metrics")
                .bearer_auth(token),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.as_str().unwrap().contains("secureclaw_runs_live"));
}

/// A self-signed certificate for 127.0.0.1 and its key, from the `openssl` command.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test]
async fn tls_serves_https_with_the_given_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let server = Server::start(
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let res = trusting
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    // A client that does not trust the certificate refuses it.
    let stranger = reqwest::Client::new();
    assert!(
        stranger
            .get(format!("{}/health", server.url))
            .send()
            .await
            .is_err()
    );

    // Plain HTTP to the TLS port gets no answer.
    let plain = server.url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/health"))
        .send()
        .await;
    assert!(
        r.as_ref().map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP was answered: {r:?}"
    );
}

/// `secureclaw serve` with bad TLS files: fails at start and says which file and what to do.
fn serve_fails(args: &[&std::ffi::OsStr]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env("SECURECLAW_PASSPHRASE", crate::harness::PASSPHRASE)
        .env("ARGON2_MEMORY_KB", "8192")
        .env("ARGON2_ITERATIONS", "1")
        .env("HOME", dir.path())
        .env_remove("SECURECLAW_STATE_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started with bad TLS files");
    assert!(out.stdout.is_empty(), "a URL was printed");
    assert!(
        !dir.path().join("data/state").exists(),
        "a vault was created before the TLS files were checked"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_tls_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "a");
    let (_, other_key) = self_signed(dir.path(), "b");
    let missing = dir.path().join("missing.pem");
    let os = |p: &Path| p.as_os_str().to_owned();

    let err = serve_fails(&[
        "--tls-cert".as_ref(),
        &os(&missing),
        "--tls-key".as_ref(),
        &os(&key),
    ]);
    assert!(
        err.contains("missing.pem") && err.contains("--tls-cert"),
        "{err}"
    );

    let err = serve_fails(&[
        "--tls-cert".as_ref(),
        &os(&cert),
        "--tls-key".as_ref(),
        &os(&cert),
    ]);
    assert!(
        err.contains("a.crt") && err.contains("private key"),
        "{err}"
    );

    let err = serve_fails(&[
        "--tls-cert".as_ref(),
        &os(&cert),
        "--tls-key".as_ref(),
        &os(&other_key),
    ]);
    assert!(err.contains("does not go with"), "{err}");
}

#[tokio::test]
async fn sigterm_stops_the_server_and_a_restart_keeps_its_state() {
    let server = Server::start(&[], &[]);
    let name = unique("restart");
    let mut api = server.client();
    api.register(&name).await;
    // A request that never finishes sending its body must not hold the shutdown up forever.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();

    let server = server.restart(&[], &[]);
    let mut api = server.client();
    api.login(&name).await;
    assert_eq!(api.get("/api/v1/auth/me").await.status, 200);
}

#[tokio::test]
async fn admins_register_workspaces_that_survive_a_restart() {
    let server = Server::start(&[], &[]);
    let admin = Api::user(&server, "admin").await; // the first account is an admin
    let user = Api::user(&server, "user").await;
    let site = tempfile::tempdir().unwrap();
    let site_path = std::fs::canonicalize(site.path()).unwrap();

    let r = user
        .post(
            "/api/v1/admin/workspaces",
            json!({"name": "site", "path": site_path}),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(user.get("/api/v1/admin/workspaces").await.status, 403);
    assert_eq!(
        server.client().get("/api/v1/admin/workspaces").await.status,
        401
    );

    let inside = server.data_dir.join("state");
    for (name, path) in [
        ("rel", "relative/dir".to_string()),
        ("gone", "/no/such/dir/anywhere".to_string()),
        ("inside", inside.display().to_string()),
        ("root", "/".to_string()),
        ("../x", site_path.display().to_string()),
    ] {
        let r = admin
            .post(
                "/api/v1/admin/workspaces",
                json!({"name": name, "path": path}),
            )
            .await;
        assert_eq!(r.status, 400, "{name} {path}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_workspace");
    }
    let file = site.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = admin
        .post(
            "/api/v1/admin/workspaces",
            json!({"name": "file", "path": file}),
        )
        .await;
    assert_eq!(r.status, 400);

    let r = admin
        .post(
            "/api/v1/admin/workspaces",
            json!({"name": "site", "path": site_path}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    let admin_name = admin_username(&admin).await;
    let fixed = tempfile::tempdir().unwrap();
    let fixed_spec = format!("docs={}", fixed.path().display());
    let server = server.restart(&[], &["--workspace", &fixed_spec]);
    let mut admin = server.client();
    admin.login(&admin_name).await;
    let r = admin.get("/api/v1/admin/workspaces").await;
    assert_eq!(r.status, 200);
    let list = r.body["workspaces"].as_array().unwrap();
    let find = |n: &str| list.iter().find(|w| w["name"] == n).cloned();
    let site_entry = find("site").expect("the registered workspace survived the restart");
    assert_eq!(site_entry["path"], site_path.display().to_string());
    assert_eq!(site_entry["source"], "api");
    assert_eq!(find("docs").unwrap()["source"], "flag");

    let r = admin
        .post(
            "/api/v1/admin/workspaces",
            json!({"name": "docs", "path": site_path}),
        )
        .await;
    assert_eq!(
        r.status, 409,
        "a flag's workspace cannot be moved: {:?}",
        r.body
    );
}

async fn admin_username(api: &Api) -> String {
    let r = api.get("/api/v1/auth/me").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["admin"], true, "{:?}", r.body);
    r.body["username"].as_str().unwrap().to_string()
}

/// The variable names the sources read: string literals with one of the prefixes the project
/// uses for its settings (`std::env::var("X")`, `env = "X"`, `const X_VAR: &str = "X"`).
fn variables_read_by_the_code() -> std::collections::BTreeSet<String> {
    const PREFIXES: &[&str] = &[
        "SECURECLAW_",
        "DOCKER_",
        "ARGON2_",
        "LLM_",
        "OPENAI_",
        "ANTHROPIC_",
        "OLLAMA_",
        "CLAUDE_",
        "JWT_",
        "TOTP_",
        "PII_",
        "PROMPT_",
    ];
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for krate in [
        "src",
        "server/src",
        "engine/src",
        "sandbox/src",
        "vault/src",
        "llm/src",
        "egress/src",
        "risk/src",
        "store-pg/src",
    ] {
        walk(&root.join(krate), &mut files);
    }
    let mut names = std::collections::BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for quoted in text.split('"').skip(1).step_by(2) {
            let is_name = PREFIXES.iter().any(|p| quoted.starts_with(p))
                && quoted.len() > 4
                && quoted
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_name {
                names.insert(quoted.to_string());
            }
        }
    }
    names
}

#[test]
fn every_variable_the_code_reads_is_in_env_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let documented: std::collections::BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let read = variables_read_by_the_code();
    assert!(read.contains("SECURECLAW_MAX_BODY_BYTES") && read.contains("JWT_SECRET"));
    let missing: Vec<&String> = read
        .iter()
        .filter(|v| !documented.contains(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in .env.example: {missing:?}"
    );
    // Each entry has a description on the line above it.
    let lines: Vec<&str> = example.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with('#') && line.contains('=') {
            assert!(
                i > 0 && (lines[i - 1].starts_with('#') || lines[i - 1].contains('=')),
                "{line} has no description"
            );
        }
    }
}

const LONG_STEP: &str = r#"version: 1
name: long
steps:
  - id: slow
    shell: echo started > started.txt && sleep 30
"#;

#[tokio::test]
async fn sigterm_cancels_and_rolls_back_running_runs_while_parked_runs_stay_parked() {
    let server = Server::start(&[], &[]);
    let name = unique("shutdown");
    let mut api = server.client();
    api.register(&name).await;

    let parked = started(&api, GATED).await.0;
    wait_state(&api, &parked, &["awaiting_approval"]).await;
    let running = started(&api, LONG_STEP).await.0;
    let started = server
        .data_dir
        .join("workspaces")
        .join(&running)
        .join("started.txt");
    for _ in 0..600 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(started.exists(), "the long step never started");

    // Had the shutdown waited for the step, the run would be `succeeded` below.
    let server = server.restart(&[], &[]);

    let mut api = server.client();
    api.login(&name).await;
    let task = wait_state(
        &api,
        &running,
        &["cancelled", "interrupted", "failed", "succeeded"],
    )
    .await;
    assert_eq!(task["state"], "cancelled", "{task}");
    // The cancelled step's half-made change was rolled back before the server stopped.
    assert!(
        !started.exists(),
        "the cancelled step's write was not rolled back"
    );
    let task = wait_state(&api, &parked, &["awaiting_approval", "cancelled", "failed"]).await;
    assert_eq!(task["state"], "awaiting_approval", "{task}");
    let gates = api.get(&format!("/api/v1/tasks/{parked}/approvals")).await;
    assert_eq!(gates.status, 200, "{:?}", gates.body);
}

/// A workflow whose sandboxed step writes a file, and a step that reads it back.
const BACKED_UP: &str = r#"version: 1
name: backed-up
steps:
  - id: make
    shell: echo "kept across a restore" > kept.txt
  - id: check
    needs: [make]
    read: { path: kept.txt }
"#;

/// `secureclaw ledger verify --state-dir STATE [--head HEAD]` with the harness passphrase.
fn ledger_verify(state: &Path, head: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secureclaw"));
    cmd.args(["ledger", "verify", "--state-dir"]).arg(state);
    if let Some(head) = head {
        cmd.arg("--head").arg(head);
    }
    cmd.env("SECURECLAW_PASSPHRASE", crate::harness::PASSPHRASE)
        .env("SECURECLAW_AGENT", "off")
        .output()
        .unwrap()
}

/// A command's stdout and stderr, for assertions and their messages.
fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cp -a FROM TO`, as an operator backs the data dir up.
fn cp_a(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Every regular file under `dir` with its bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    assert!(
        out.len() >= 3,
        "only {} files under {}",
        out.len(),
        dir.display()
    );
    out
}

/// Where the sealed value of ledger entry 1 starts in a redb file, for each place the file holds
/// one. The ledger table is keyed by the entry's `u64` sequence number: a leaf page stores its
/// keys side by side (1, 2, 3, ... little-endian) and the values right after the last key, each
/// beginning with the sealed-value header (version byte 1). Pages redb freed may still hold an
/// older copy, so there can be more than one.
fn first_ledger_values(db: &[u8]) -> Vec<usize> {
    let pattern = [1u64.to_le_bytes(), 2u64.to_le_bytes()].concat();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = db[from..]
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .map(|p| from + p)
    {
        let mut n = 0u64;
        while db.get(i + 8 * n as usize..i + 8 * (n as usize + 1))
            == Some((n + 1).to_le_bytes().as_slice())
        {
            n += 1;
        }
        let value = i + 8 * n as usize;
        if db.get(value) == Some(&1) && value + 32 < db.len() {
            found.push(value);
        }
        from = i + 1;
    }
    found
}

/// A backup taken with `cp -a` while the server is stopped is a whole server: a new server on
/// the copy (elsewhere on disk) shows the run with its steps and its diff, and the copy's ledger
/// verifies, also against a head exported before the backup. The copy's state dir holds no
/// password, TOTP secret, token or step output in the clear, and one byte changed in a copy's
/// ledger is caught.
#[tokio::test]
async fn a_data_dir_backup_restores_into_a_new_server_and_its_ledger_verifies() {
    let server = Server::start(&[], &[]);
    let name = unique("backup");
    let mut api = server.client();
    let account = api.register(&name).await.body;
    let (id, run_id) = started(&api, BACKED_UP).await;
    let task = wait_state(&api, &id, &["succeeded", "failed"]).await;
    assert_eq!(task["state"], "succeeded", "{task:#}");
    let written = server
        .data_dir
        .join("workspaces")
        .join(&id)
        .join("kept.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "kept across a restore\n"
    );
    // The head an auditor keeps elsewhere: the restored ledger must still extend it.
    let export = api.get(&format!("/api/v1/tasks/{id}/ledger/export")).await;
    assert_eq!(export.status, 200, "{:?}", export.body);
    let keep = tempfile::tempdir().unwrap();
    let head = keep.path().join("run.head.json");
    std::fs::write(
        &head,
        serde_json::to_vec_pretty(&export.body["head"]).unwrap(),
    )
    .unwrap();

    // Stop the server (SIGTERM), copy its data dir twice, and throw the original away.
    let original = server.stop_keeping_data();
    let restored = tempfile::tempdir().unwrap();
    cp_a(&original.path().join("data"), &restored.path().join("data"));
    let tampered = tempfile::tempdir().unwrap();
    cp_a(&original.path().join("data"), &tampered.path().join("data"));
    drop(original);

    let state = restored.path().join("data/state");
    // What the copy holds of the account and the run is sealed: a stolen backup shows none of it.
    let secrets = [
        crate::harness::PASSWORD,
        account["totp"]["secret"].as_str().unwrap(),
        account["access_token"].as_str().unwrap(),
        "kept across a restore",
    ];
    for (file, bytes) in files_under(&state) {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret:?} in the clear",
                file.display()
            );
        }
    }
    let out = ledger_verify(&state, Some(&head));
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("chain intact, extends the exported head"),
        "{}",
        said(&out)
    );

    // A new server on the copy: the account, the task, its run and steps, and its diff are there.
    let server = Server::start_in(restored, &[], &[]);
    let mut api = server.client();
    api.login(&name).await;
    let r = api.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "succeeded", "{:#}", r.body);
    assert_eq!(r.body["run"]["run_id"], run_id.as_str());
    let steps = r.body["run"]["steps"].as_array().unwrap();
    let states: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("make", "succeeded"), ("check", "succeeded")]);
    assert!(
        steps[1]["output"]
            .as_str()
            .unwrap()
            .contains("kept across a restore"),
        "{:#}",
        steps[1]
    );
    let diff = api.get(&format!("/api/v1/tasks/{id}/diff")).await;
    assert_eq!(diff.status, 200, "{:?}", diff.body);
    assert!(
        diff.body.to_string().contains("+kept across a restore"),
        "{:#}",
        diff.body
    );
    let audit = api.get(&format!("/api/v1/audit?task={id}")).await;
    assert_eq!(audit.status, 200, "{:?}", audit.body);
    let restored = server.stop_keeping_data();
    // The restored server appended to the same chain (its sign-in, at least).
    let out = ledger_verify(&restored.path().join("data/state"), Some(&head));
    assert!(out.status.success(), "{}", said(&out));

    // One byte of the other copy's ledger changed: verify fails and names entry 1. The ledger
    // lives inside the redb file (`state/vault.redb`), so the byte is found by the table's layout.
    let state = tampered.path().join("data/state");
    let db = std::fs::read(state.join("vault.redb")).unwrap();
    let places = first_ledger_values(&db);
    assert!(!places.is_empty(), "no ledger leaf found in vault.redb");
    let mut caught = 0;
    for at in places {
        let copy = tempfile::tempdir().unwrap();
        cp_a(&state, &copy.path().join("state"));
        let mut bad = db.clone();
        bad[at + 24] ^= 0x01; // inside the ciphertext, past the 17-byte sealed header
        std::fs::write(copy.path().join("state/vault.redb"), &bad).unwrap();
        let out = ledger_verify(&copy.path().join("state"), None);
        if out.status.success() {
            // A page redb had freed: nothing reads it.
            continue;
        }
        assert!(!said(&out).contains("chain intact"), "{}", said(&out));
        assert!(
            said(&out).contains("LEDGER BROKEN") && said(&out).contains("seq 1"),
            "{}",
            said(&out)
        );
        caught += 1;
    }
    assert!(caught >= 1, "no changed byte was caught");
    // The untouched copy still verifies: the failures above are the changed byte's.
    let out = ledger_verify(&state, None);
    assert!(out.status.success(), "{}", said(&out));
}
