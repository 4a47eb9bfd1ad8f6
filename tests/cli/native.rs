//! `secureclaw run` on the native backend, end to end: the write budget (and the rollback of
//! the step that ran into it), the pids warning in the step record, grants of toolchains in
//! the home directory, the hidden state dir, and runs that leave no cgroup behind.

use crate::common;
use common::{stderr, step_cgroups_of};

use std::path::PathBuf;

use common::secureclaw as bin;

type Ws = common::Workspace;
use common::step;

fn new_ws() -> Ws {
    Ws::new(&["--sandbox", "native", "--yes"])
}

#[test]
fn a_step_past_its_write_budget_fails_as_such_and_is_rolled_back() {
    for (disk, extra) in [
        // The workflow's own budget.
        ("  disk: 8Mi\n", &[][..]),
        // The operator's budget, for a workflow that names none.
        ("", &["--disk-limit", "8Mi"][..]),
        // The operator's budget is a ceiling: a workflow cannot raise it.
        ("  disk: 100Gi\n", &["--disk-limit", "8Mi"][..]),
    ] {
        let ws = new_ws();
        std::fs::write(ws.path().join("keep.txt"), "before").unwrap();
        let wf = ws.workflow(&format!(
            "version: 1\nname: fill\nsandbox:\n  timeout: 120s\n{disk}steps:\n  - id: fill\n    shell: echo after > keep.txt; yes > big\n"
        ));
        let out = ws.run(&wf, extra);
        assert_ne!(out.status.code(), Some(0), "{disk} {extra:?}");
        let rec = ws.show();
        let fill = step(&rec, "fill");
        assert_eq!(fill["state"], "failed", "{fill}");
        let reason = fill["reason"].as_str().unwrap();
        assert!(reason.contains("write budget"), "{reason}");
        assert!(
            !ws.path().join("big").exists(),
            "the failed step's file was left behind"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("keep.txt")).unwrap(),
            "before",
            "the failed step's other change was not rolled back"
        );
    }
}

#[test]
fn a_bad_disk_limit_is_refused_before_the_run() {
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: x\nsteps:\n  - id: a\n    shell: touch ran\n");
    for bad in ["lots", "0", "-5Mi"] {
        let out = ws.run(&wf, &[&format!("--disk-limit={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("disk-limit"), "{}", stderr(&out));
        assert!(!ws.path().join("ran").exists());
    }
    let wf = ws.workflow(
        "version: 1\nname: x\nsandbox: { disk: 0 }\nsteps:\n  - id: a\n    shell: touch ran\n",
    );
    let out = bin().arg("validate").arg(&wf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("disk") || stderr(&out).contains("disk"));
}

#[test]
fn a_fork_bomb_that_exits_0_is_recorded_with_the_pids_limit() {
    let ws = new_ws();
    let wf = ws.workflow(
        "version: 1\nname: forks\nsandbox: { pids: 16 }\nsteps:\n  - id: forks\n    shell: perl -e 'for (1..40) { my $p = fork(); if (defined $p && $p == 0) { sleep 1; exit 0 } } 1 while wait() != -1; exit 0'\n",
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rec = ws.show();
    let forks = step(&rec, "forks");
    assert_eq!(forks["state"], "succeeded");
    let reason = forks["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("process limit"), "{forks}");
}

#[test]
fn runs_leave_no_cgroup_behind_and_the_next_run_reports_no_crash() {
    let ws = new_ws();
    let wf = ws.workflow(
        "version: 1\nname: two\nsteps:\n  - id: a\n    shell: echo a\n  - id: b\n    shell: sleep 0.2 & wait\n",
    );
    let mut pids = Vec::new();
    for _ in 0..3 {
        let child = bin()
            .arg("run")
            .arg(&wf)
            .arg("--workspace")
            .arg(ws.path())
            .args(["--sandbox", "native"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out_pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // Other engines on this machine may really have crashed; ours did not.
        for earlier in &pids {
            assert!(
                !stderr(&out).contains(&format!("/{earlier}-")),
                "a clean run was reported as a crash: {}",
                stderr(&out)
            );
        }
        pids.push(out_pid);
        let rec = ws.show();
        let layers = step(&rec, "a")["enforcement"]["layers"].to_string();
        assert!(
            layers.contains("cgroup-pids"),
            "no step cgroup was used: {layers}"
        );
    }
    // `sandbox check` runs a probe step: it leaves nothing behind either.
    let child = bin()
        .args(["sandbox", "check", "--backend", "native"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pids.push(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for pid in pids {
        assert_eq!(step_cgroups_of(pid), Vec::<PathBuf>::new());
    }
}

#[test]
fn the_state_dir_does_not_break_find_or_tar_in_a_step() {
    let ws = new_ws();
    std::fs::write(ws.path().join("src.txt"), "code").unwrap();
    let wf = ws.workflow(
        "version: 1\nname: archive\nsteps:\n  - id: archive\n    shell: find . >/dev/null && tar czf /tmp/x.tgz . && tar tzf /tmp/x.tgz | sort && ls -A .secureclaw | wc -l\n",
    );
    let out = ws.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rec = ws.show();
    let s = step(&rec, "archive");
    assert_eq!(s["state"], "succeeded", "{s}");
    let output = s["output"].as_str().unwrap();
    assert!(output.contains("./src.txt"), "{output}");
    assert!(
        !output.contains("vault") && !output.contains("blobs"),
        "{output}"
    );
    assert!(
        output.ends_with("\n0"),
        "the state dir is not empty inside: {output}"
    );
    assert!(s["stderr"].as_str().unwrap().is_empty(), "{s}");
}

/// The toolchain in the engine user's home: not found without a grant (and the record says
/// what to grant), found with `sandbox.read_only` or `--read-only`.
#[test]
fn toolchains_in_the_home_directory_can_be_granted() {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    assert!(
        home.join(".cargo/bin/cargo").is_file(),
        "this test needs the rustup toolchain that builds it in ~/.cargo and ~/.rustup"
    );
    let ws = new_ws();
    let wf = ws.workflow("version: 1\nname: tc\nsteps:\n  - id: v\n    shell: cargo --version\n");
    let host_path = format!("{}:/usr/bin:/bin", home.join(".cargo/bin").display());
    let out = bin()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "native"])
        .env("PATH", &host_path)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let rec = ws.show();
    let reason = step(&rec, "v")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("read_only: [\"~/.cargo\", \"~/.rustup\"]"),
        "{reason}"
    );

    let granted = ws.workflow(
        "version: 1\nname: tc\nsandbox:\n  read_only: [\"~/.cargo\", \"~/.rustup\"]\nsteps:\n  - id: v\n    shell: cargo --version && echo HOME=$HOME\n",
    );
    let out = ws.run(&granted, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rec = ws.show();
    let v = step(&rec, "v");
    assert!(v["output"].as_str().unwrap().starts_with("cargo "), "{v}");
    assert!(v["output"].as_str().unwrap().ends_with("HOME=/tmp"), "{v}");

    let out = ws.run(
        &wf,
        &["--read-only", "~/.cargo", "--read-only", "~/.rustup"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Too broad, or the state dir: refused before anything runs.
    for bad in ["~", "/root", "~/.secureclaw-nothing-here"] {
        let out = ws.run(&wf, &["--read-only", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
    }
    let state = ws.path().join(".secureclaw");
    let out = ws.run(&wf, &["--read-only", state.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let bad = ws.workflow(
        "version: 1\nname: tc\nsandbox:\n  read_only: [\"~\"]\nsteps:\n  - id: v\n    shell: touch ran\n",
    );
    let out = bin().arg("validate").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let out = ws.run(&bad, &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!ws.path().join("ran").exists());
}
