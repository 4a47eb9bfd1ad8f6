//! `secureclaw sandbox build-image` and `sandbox check` through the real binary, against the
//! real kernel and Docker daemon.

use crate::common;

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
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
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

#[test]
fn the_docker_variables_are_honoured_or_refused_loudly() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    build_default_image();
    // DOCKER_BASE_IMAGE names the default image.
    let out = secureclaw()
        .args(["sandbox", "check", "--backend", "docker"])
        .env("DOCKER_BASE_IMAGE", "secureclaw-sandbox:no-such-tag")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("secureclaw sandbox build-image"), "{text}");
    // Only `none` is accepted as DOCKER_NETWORK_MODE.
    let out = secureclaw()
        .args(["sandbox", "check", "--backend", "docker"])
        .env("DOCKER_NETWORK_MODE", "bridge")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("network mode `none`"), "{text}");

    // DOCKER_MEMORY_LIMIT / DOCKER_CPU_LIMIT / DOCKER_TIMEOUT_SECONDS set the step defaults.
    let ws = tempfile::tempdir().unwrap();
    common::chown_tree(ws.path(), 1000);
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: limits\nsteps:\n  - { id: a, shell: \"true\" }\n",
    )
    .unwrap();
    for backend in ["native", "docker"] {
        let out = secureclaw()
            .arg("run")
            .arg(&wf)
            .arg("--workspace")
            .arg(ws.path())
            .args(["--sandbox", backend])
            .env("DOCKER_MEMORY_LIMIT", "96m")
            .env("DOCKER_CPU_LIMIT", "0.5")
            .env("DOCKER_TIMEOUT_SECONDS", "42")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let show = secureclaw()
            .args(["show", "last", "--json", "--state-dir"])
            .arg(ws.path().join(".secureclaw"))
            .output()
            .unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        let layers = rec["steps"][0]["enforcement"]["layers"].to_string();
        assert!(
            layers.contains(&(96u64 << 20).to_string()) && layers.contains("42s"),
            "{backend}: {layers}"
        );
        assert!(layers.contains("0.5 cpu"), "{backend}: {layers}");
    }
    let out = secureclaw()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .env("DOCKER_MEMORY_LIMIT", "lots")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DOCKER_MEMORY_LIMIT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Containers with this engine label whose value starts with `pid:`.
fn containers_of_engine(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=org.secureclaw.engine",
            "--format",
            "{{.ID}} {{.Label \"org.secureclaw.engine\"}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|v| v.starts_with(&format!("{pid}:")))
        })
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_engines_container_is_removed_by_the_next_engine() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    build_default_image();
    let ws = tempfile::tempdir().unwrap();
    common::chown_tree(ws.path(), 1000);
    let mut engine = common::start_long_docker_run(ws.path(), "the step's container", |pid| {
        !containers_of_engine(pid).is_empty()
    });
    let pid = engine.id();
    // kill -9: the engine gets no chance to clean up.
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert!(
        !containers_of_engine(pid).is_empty(),
        "nothing was left to sweep"
    );
    // Any next engine that talks to the daemon sweeps the dead engine's containers.
    let out = secureclaw()
        .args(["sandbox", "check", "--backend", "docker"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        containers_of_engine(pid).is_empty(),
        "leftover container not swept"
    );
}

#[test]
fn the_printed_seccomp_profile_is_the_one_containers_get() {
    let out = secureclaw()
        .args(["sandbox", "seccomp-profile"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    for denied in ["ptrace", "mount", "bpf", "keyctl", "unshare", "setns"] {
        assert!(!allowed.contains(&denied), "{denied}");
    }
    assert!(allowed.contains(&"read") && allowed.contains(&"execve"));
}
