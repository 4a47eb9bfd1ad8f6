//! Egress on both isolated backends: a step allowed `a.test` reaches a loopback server standing
//! in for it (an operator pin, like curl's `--resolve`), and nothing else: not `b.test`, not a
//! raw IP, not a direct socket that ignores the proxy, not DNS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../tests/common/docker_skip.rs"]
mod docker_skip;

use std::sync::{Arc, Mutex};

use secureclaw_egress::{Decision, EgressConfig};
use secureclaw_sandbox::docker::{DockerSandbox, ImageRecipe, build_image};
use secureclaw_sandbox::{ExecSpec, NativeSandbox, NetworkPolicy, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A plain HTTP server on 127.0.0.1 that answers every request and records its request line.
async fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                log.lock().unwrap().push(line);
                let body = "hello from a.test\n";
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, seen)
}

const SCRIPT: &str = r#"
echo "allowed: $(busybox wget -q -O - http://a.test/hello 2>&1)"
busybox wget -q -O - http://b.test/hello >/dev/null 2>&1 && echo "b: REACHED" || echo "b: refused"
busybox wget -q -O - http://a.test:8080/hello >/dev/null 2>&1 && echo "port: REACHED" || echo "port: refused"
busybox wget -q -O - http://127.0.0.1:PORT/hello >/dev/null 2>&1 && echo "ip: REACHED" || echo "ip: refused"
busybox wget -q -O - http://2130706433:PORT/hello >/dev/null 2>&1 && echo "ip-decimal: REACHED" || echo "ip-decimal: refused"
http_proxy= busybox wget -q -T 3 -O - http://127.0.0.1:PORT/hello >/dev/null 2>&1 && echo "direct: REACHED" || echo "direct: refused"
busybox nslookup exfil-secret.a.test >/dev/null 2>&1 && echo "dns: REACHED" || echo "dns: refused"
(printf 'CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nGET /tunnel HTTP/1.0\r\n\r\n'; sleep 2) | busybox nc 127.0.0.1 3128 | tail -n 1
"#;

/// Runs the script on the backend `make` builds with the upstream pinned as `a.test`.
async fn check_backend(
    make: impl FnOnce(secureclaw_egress::Pins) -> Box<dyn Sandbox>,
    workspace_owner: Option<u32>,
) {
    let (port, seen) = upstream().await;
    let sb = make(EgressConfig::parse_pins(&format!("a.test=127.0.0.1:{port}")).unwrap());
    let ws = tempfile::tempdir().unwrap();
    if let Some(id) = workspace_owner {
        std::os::unix::fs::chown(ws.path(), Some(id), Some(id)).unwrap();
    }
    let mut spec = ExecSpec::shell(
        &SCRIPT.replace("PORT", &port.to_string()),
        ws.path().to_path_buf(),
    );
    spec.network = NetworkPolicy::Domains(vec!["a.test".into()]);
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = sb.name();
    assert!(
        stdout.contains("allowed: hello from a.test"),
        "{name}: {stdout}\n{stderr}"
    );
    for refused in ["b", "port", "ip", "ip-decimal", "direct", "dns"] {
        assert!(
            stdout.contains(&format!("{refused}: refused")),
            "{name}: `{refused}` was not refused:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.trim_end().ends_with("hello from a.test"),
        "{name}: CONNECT tunnel: {stdout}"
    );
    // The upstream saw exactly the two allowed requests, nothing that bypassed the checks.
    let mut lines = seen.lock().unwrap().clone();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "GET /hello HTTP/1.1".to_string(),
            "GET /tunnel HTTP/1.0".to_string()
        ],
        "{name}"
    );
    // Every attempt through the proxy is in the outcome, with its verdict.
    let verdicts: Vec<(String, u16, bool)> = out
        .egress
        .iter()
        .map(|e| {
            (
                e.host.clone(),
                e.port,
                matches!(e.decision, Decision::Allowed { .. }),
            )
        })
        .collect();
    for want in [
        ("a.test".to_string(), 80, true),
        ("b.test".to_string(), 80, false),
        ("a.test".to_string(), 8080, false),
        ("a.test".to_string(), 443, true),
    ] {
        assert!(
            verdicts.contains(&want),
            "{name}: {want:?} not in {verdicts:?}"
        );
    }
    assert!(
        verdicts
            .iter()
            .any(|(h, _, ok)| h.starts_with("127.0.0.1") && !ok),
        "{name}: raw IP attempt not logged as refused: {verdicts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_step_reaches_only_its_allowed_domain() {
    check_backend(
        |pins| {
            Box::new(
                NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
                    .with_egress_pins(pins),
            )
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_step_reaches_only_its_allowed_domain() {
    if docker_skip::skip_without_docker() {
        return;
    }
    let tag = "secureclaw-sandbox:egress-test".to_string();
    let docker = DockerSandbox::docker().await.unwrap();
    build_image(docker, &ImageRecipe::new(tag.clone()), |_| {})
        .await
        .unwrap();
    check_backend(
        |pins| Box::new(DockerSandbox::with_default_image(tag).with_egress_pins(pins)),
        Some(1000),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_network_has_no_proxy() {
    let (port, seen) = upstream().await;
    let ws = tempfile::tempdir().unwrap();
    let sb = NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
        .with_egress_pins(EgressConfig::parse_pins(&format!("a.test=127.0.0.1:{port}")).unwrap());
    let spec = ExecSpec::shell(
        "busybox wget -q -T 3 -O - http://a.test/ 2>&1; echo \"proxy: $http_proxy\"; busybox nc -w 2 127.0.0.1 3128 </dev/null && echo OPEN || echo closed",
        ws.path().to_path_buf(),
    );
    let out = sb.run(&spec, CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("proxy: \n") && stdout.contains("closed"),
        "{stdout}"
    );
    assert!(out.egress.is_empty());
    assert!(seen.lock().unwrap().is_empty());
}
