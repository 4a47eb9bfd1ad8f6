//! `secureclaw sandbox build-image` and `sandbox check` through the real binary, against the
//! real kernel and Docker daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use common::secureclaw;

fn build_default_image() {
    let stdout = common::build_default_image();
    assert!(
        stdout.starts_with(&format!(
            "secureclaw-sandbox:{} sha256:",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
}

#[test]
fn check_reads_every_layer_back_from_native_and_docker() {
    build_default_image();
    let out = secureclaw()
        .args([
            "sandbox",
            "check",
            "--backend",
            "native",
            "--backend",
            "docker",
            "--json",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report:#}");
    let backend = |name: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == name)
            .unwrap()
            .clone()
    };
    for name in ["native", "docker"] {
        let b = backend(name);
        assert_eq!(b["available"], true, "{b:#}");
        assert_eq!(b["isolated"], true);
        assert!(b["missing"].as_array().unwrap().is_empty(), "{b:#}");
        let layers: Vec<&str> = b["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        // The kernel's own view from inside the probe step.
        for kernel in [
            "kernel: seccomp",
            "kernel: no_new_privs",
            "kernel: capabilities",
            "kernel: uid",
        ] {
            assert!(layers.contains(&kernel), "{name}: {layers:?}");
        }
    }
    let docker_layers = backend("docker")["layers"].to_string();
    for read_back in [
        "cap_drop [\\\"ALL\\\"]",
        "network mode none",
        "secureclaw default-deny profile",
        "536870912 bytes, no swap",
    ] {
        assert!(
            docker_layers.contains(read_back),
            "{read_back}: {docker_layers}"
        );
    }
    assert_eq!(backend("host")["isolated"], false);
}

#[test]
fn check_fails_when_a_required_backend_is_unavailable() {
    let out = secureclaw()
        .args(["sandbox", "check", "--backend", "docker"])
        // A daemon that is not there.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("docker: unavailable") && text.contains("Docker daemon"),
        "{text}"
    );
}
