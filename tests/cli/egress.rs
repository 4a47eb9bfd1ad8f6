//! A shell step's `network:` allowlist end to end through the real binary, on both isolated
//! backends: the allowed name is reached through the egress proxy, anything else is refused,
//! and every attempt lands in the run record (`show`).

use crate::common;

use std::io::{Read, Write};

use common::secureclaw;

/// Serves one plain HTTP answer per connection on 127.0.0.1; `hook.test` is pinned to it by
/// the test environment (`SECURECLAW_EGRESS_RESOLVE`, see tests/common).
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nhook.test says\n",
            );
        }
    });
    port
}

fn egress_through_the_cli(backend: &str) {
    let port = upstream();
    let ws = tempfile::tempdir().unwrap();
    if backend == "docker" {
        common::build_default_image();
        common::chown_tree(ws.path(), 1000);
    }
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            r#"version: 1
name: egress
steps:
  - id: fetch
    network: ["hook.test:{port}"]
    shell: |
      busybox wget -q -O - http://hook.test:{port}/data
      busybox wget -q -O - http://b.test/ >/dev/null 2>&1 || echo refused-b
"#
        ),
    )
    .unwrap();
    let state = ws.path().join(".secureclaw");

    // Without approval of the network tier nothing runs.
    let out = secureclaw()
        .arg("run")
        .arg(&wf)
        .args(["--workspace"])
        .arg(ws.path())
        .args(["--sandbox", backend])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = secureclaw()
        .arg("run")
        .arg(&wf)
        .args(["--workspace"])
        .arg(ws.path())
        .args(["--sandbox", backend, "--approve", "network_egress"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let show = secureclaw()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let step = &rec["steps"][0];
    let output = step["output"].as_str().unwrap();
    assert!(
        output.contains("hook.test says") && output.contains("refused-b"),
        "{output}"
    );
    let egress = step["egress"].as_array().unwrap();
    let verdicts: Vec<(String, String)> = egress
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap().to_string(),
                e["decision"]["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        verdicts.contains(&("hook.test".into(), "allowed".into()))
            && verdicts.contains(&("b.test".into(), "refused".into())),
        "{verdicts:?}"
    );

    let human = secureclaw()
        .args(["show", "last", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&format!("egress GET hook.test:{port}")) && text.contains("b.test:80"),
        "{text}"
    );
    // The proxy's decisions are in the tamper-evident ledger too, and the chain verifies.
    let verify = secureclaw()
        .args(["ledger", "verify", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn native_shell_step_reaches_exactly_its_allowlist() {
    egress_through_the_cli("native");
}

#[test]
fn docker_shell_step_reaches_exactly_its_allowlist() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    egress_through_the_cli("docker");
}
