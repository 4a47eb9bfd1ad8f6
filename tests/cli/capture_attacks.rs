//! Attacks on the capture that follows every writing step, end to end with the real binary:
//! set-id files, file capabilities and device nodes a step plants; FIFOs, sockets and oversized
//! files that once made the capture fail and lose the step's other changes; files that vanish
//! while the capture scans. Every case checks the host afterwards, not only the exit code.
//!
//! The `host` backend has no kernel policy at all, so the attacks that run there prove the
//! capture's own sweep; on `native` and `docker` whichever layer stops them, nothing may be left.
//! The tests run as root (the README's set-up for servers and CI).

use crate::common;
use common::text;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::secureclaw as bin;

/// Files are read for the fingerprint only below this size (a left-over 1.2 GiB file is told
/// apart by its size alone).
const READ_LIMIT: u64 = 16 << 20;

/// A workspace with its workflow file kept outside it.
struct Ws {
    dir: tempfile::TempDir,
    wf_dir: tempfile::TempDir,
}

impl Ws {
    /// A workspace with a few files, an executable, and the user's own set-uid file (which is
    /// theirs: no step may touch it, and the capture must leave it as it is).
    fn seeded() -> Self {
        let ws = Ws {
            dir: tempfile::tempdir().unwrap(),
            wf_dir: tempfile::tempdir().unwrap(),
        };
        let p = ws.path();
        std::fs::write(p.join("keep.txt"), "keep\n").unwrap();
        std::fs::write(p.join("over.txt"), "the original content\n").unwrap();
        std::fs::write(p.join("del.txt"), [0u8, 1, 2, 3, 255]).unwrap();
        std::fs::create_dir(p.join("src")).unwrap();
        std::fs::write(p.join("src/lib.txt"), "lib\n").unwrap();
        std::fs::copy("/bin/true", p.join("tool")).unwrap();
        std::fs::set_permissions(p.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(p.join("users-own-suid"), "theirs\n").unwrap();
        std::fs::set_permissions(
            p.join("users-own-suid"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        ws
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join(".secureclaw")
    }

    fn run(&self, wf: &str, backend: &str) -> Output {
        let p = self.wf_dir.path().join("wf.yaml");
        std::fs::write(&p, wf).unwrap();
        bin()
            .arg("run")
            .arg(&p)
            .arg("--workspace")
            .arg(self.path())
            .args(["--sandbox", backend, "--yes"])
            .output()
            .unwrap()
    }

    /// The last run's record.
    fn last_record(&self) -> serde_json::Value {
        let out = bin()
            .args(["show", "last", "--json", "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A workflow of one shell step (a block scalar: the command needs no YAML quoting).
fn shell_step(cmd: &str) -> String {
    let body: String = cmd.lines().map(|l| format!("      {l}\n")).collect();
    format!("version: 1\nname: attack\nsteps:\n  - id: attack\n    shell: |\n{body}")
}

/// Every path below `root` except the state dir: kind, full mode (set-id bits included),
/// owner, and content (never opening anything but a regular file: a FIFO would block).
fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel.starts_with(b".secureclaw") {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mode = md.permissions().mode() & 0o7777;
            let v = if ft.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else if ft.is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if ft.is_file() && md.len() < READ_LIMIT {
                let c = std::fs::read(&p).unwrap();
                let h = c.iter().fold(0xcbf29ce484222325u64, |h, &x| {
                    (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
                });
                format!("file {mode:o} uid {} {} {h:x}", md.uid(), c.len())
            } else if ft.is_file() {
                format!("big file {mode:o} {}", md.len())
            } else {
                format!("special {ft:?} {mode:o}")
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Paths below `root` that are set-id regular files or device nodes, except `users-own-suid`.
fn privileged_leftovers(root: &Path) -> Vec<String> {
    fingerprint(root)
        .into_iter()
        .filter(|(rel, _)| rel.as_slice() != b"users-own-suid")
        .filter_map(|(rel, _)| {
            let md =
                std::fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(&rel))).unwrap();
            let ft = md.file_type();
            let setid = ft.is_file() && md.permissions().mode() & 0o6000 != 0;
            (setid || ft.is_char_device() || ft.is_block_device())
                .then(|| format!("{} {:o}", String::from_utf8_lossy(&rel), md.mode()))
        })
        .collect()
}

/// `getcap -r` over the workspace: every file that carries capabilities.
fn files_with_capabilities(root: &Path) -> String {
    let out = std::process::Command::new("getcap")
        .arg("-r")
        .arg(root)
        .output()
        .expect("getcap (libcap2-bin) is required: .ci/run installs it");
    text(&out.stdout)
}

fn setcap_present() -> bool {
    let found = std::process::Command::new("setcap")
        .arg("-v")
        .output()
        .is_ok();
    assert!(
        found,
        "setcap (libcap2-bin) is required for the file capability attack: .ci/run installs it"
    );
    found
}

/// Runs before every attack: proves the step ran and could write to the workspace, so a step
/// that fails is stopped by a layer, not by a broken sandbox or a read-only workspace.
const CONTROL: &str = "echo ran > control.txt && echo control-write-ok";

fn assert_control_ran(name: &str, step: &serde_json::Value) {
    assert!(
        step["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("control-write-ok")),
        "{name}: the control write did not run: {step}"
    );
}

/// The attacks of the set-id class: each leaves something that would hand a local user
/// root (or a device) if it stayed in the workspace.
fn setid_attacks(with_setcap: bool) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("setuid copy", "cp /bin/sh ./rootsh && chmod 4755 ./rootsh"),
        (
            "setuid+setgid copy",
            "cp /bin/sh ./rootsh2 && chmod 6755 ./rootsh2",
        ),
        ("setgid copy", "cp /bin/sh ./grpsh && chmod g+s ./grpsh"),
        (
            "setuid in a nested new dir",
            "mkdir -p deep/er/still && cp /bin/sh deep/er/still/sh && chmod 4755 deep/er/still/sh",
        ),
        ("u+s on an existing file", "chmod u+s ./tool"),
        (
            "setuid after editing an existing file",
            "echo edited > over.txt && cat /bin/sh > tool && chmod 4755 tool",
        ),
        ("device node", "mknod ./null c 1 3"),
        ("block device node", "mknod ./disk b 7 0"),
    ];
    if with_setcap {
        v.push((
            "file capabilities",
            "cp /bin/sh ./capsh && setcap cap_net_raw+ep ./capsh",
        ));
        v.push((
            "file capabilities on an existing file",
            "setcap cap_dac_override+ep ./tool",
        ));
    }
    v
}

/// On `host` (no kernel policy) only the capture's sweep stands in the way: every attack runs,
/// the step fails naming the path and what was found, and the workspace is as before.
#[test]
fn host_steps_cannot_leave_setid_files_capabilities_or_devices() {
    let attacks = setid_attacks(setcap_present());
    for (name, cmd) in attacks {
        let ws = Ws::seeded();
        let before = fingerprint(ws.path());
        // A control write first: the step ran, and could write.
        let out = ws.run(&shell_step(&format!("{CONTROL}\n{cmd}")), "host");
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: the run succeeded\n{err}");
        let rec = ws.last_record();
        let step = &rec["steps"][0];
        assert_eq!(step["state"], "failed", "{name}: {step}");
        assert_control_ran(name, step);
        let reason = step["reason"].as_str().unwrap_or_default();
        assert!(
            step["exit_code"] == 0,
            "{name}: the attack itself failed, so nothing was proven: {reason}\n{}",
            step["stderr"]
        );
        assert!(
            reason.contains("it left what no step may leave in the workspace")
                && reason.contains("rolled back"),
            "{name}: {reason}"
        );
        let expect = if name.contains("capabilities") {
            "security.capability"
        } else if name.contains("device") {
            "device node"
        } else if name.contains("setgid copy") {
            "set-group-ID bit"
        } else {
            "set-user-ID"
        };
        assert!(reason.contains(expect), "{name}: {reason}");
        assert_eq!(
            privileged_leftovers(ws.path()),
            Vec::<String>::new(),
            "{name}"
        );
        assert_eq!(files_with_capabilities(ws.path()), "", "{name}");
        assert_eq!(
            fingerprint(ws.path()),
            before,
            "{name}: not rolled back whole"
        );
    }
}

/// Whether the kernel refuses the attack inside the sandbox or the sweep catches it after:
/// nothing set-id and no device is left on the host, and the workspace is as before.
fn sandboxed_steps_leave_nothing_privileged(backend: &str, owner: Option<u32>) {
    for (name, cmd) in setid_attacks(false) {
        let ws = Ws::seeded();
        if let Some(id) = owner {
            common::chown_tree(ws.path(), id);
            // The user's own set-uid file again: chown clears the bit.
            std::fs::set_permissions(
                ws.path().join("users-own-suid"),
                std::fs::Permissions::from_mode(0o4755),
            )
            .unwrap();
        }
        let before = fingerprint(ws.path());
        let out = ws.run(&shell_step(&format!("{CONTROL}\n{cmd}")), backend);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{backend}/{name}: succeeded\n{err}");
        let rec = ws.last_record();
        let step = &rec["steps"][0];
        assert_eq!(step["state"], "failed", "{backend}/{name}: {step}");
        assert_control_ran(&format!("{backend}/{name}"), step);
        assert_eq!(
            privileged_leftovers(ws.path()),
            Vec::<String>::new(),
            "{backend}/{name}"
        );
        assert_eq!(
            fingerprint(ws.path()),
            before,
            "{backend}/{name}: not rolled back whole"
        );
    }
}

#[test]
fn native_steps_leave_nothing_setid_or_device_on_the_host() {
    sandboxed_steps_leave_nothing_privileged("native", None);
}

#[test]
fn docker_steps_leave_nothing_setid_or_device_on_the_host() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    common::build_default_image();
    // The docker backend runs a step as the workspace's owner (see tests/common).
    sandboxed_steps_leave_nothing_privileged("docker", Some(1000));
}

/// What a step leaves besides its ordinary changes (an overwritten and a deleted file), which
/// once made the capture fail, ending the run with those changes lost for good.
fn uncapturable_leftovers() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("a FIFO", "mkfifo ./pipe", "pipe: a FIFO"),
        (
            "a unix socket",
            "perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => \"sock\", Listen => 1) or die $!'",
            "sock: a unix socket",
        ),
        (
            "a FIFO in a new directory",
            "mkdir -p run/d && mkfifo run/d/pipe",
            "run/d/pipe: a FIFO",
        ),
        (
            "a device node",
            "mknod ./tty0 c 4 0",
            "tty0: a character device node",
        ),
        (
            "a 1.2 GiB sparse file",
            "truncate -s 1200M ./huge.bin",
            "huge.bin: 1258291200 bytes, over the snapshot cap",
        ),
        (
            "an existing file grown past the cap",
            "truncate -s 1200M ./keep.txt",
            "keep.txt: 1258291200 bytes, over the snapshot cap",
        ),
    ]
}

/// Each leftover, with an overwritten and a deleted file: the step is rolled back with every
/// pre-image, both files come back byte for byte, nothing is left, and the next run works.
#[test]
fn a_step_leaving_what_cannot_be_captured_is_rolled_back_with_its_other_changes() {
    for (name, leave, named) in uncapturable_leftovers() {
        let ws = Ws::seeded();
        let before = fingerprint(ws.path());
        let cmd = format!("printf 'overwritten' > over.txt\nrm del.txt\n{leave}");
        let out = ws.run(&shell_step(&cmd), "host");
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: succeeded\n{err}");
        let rec = ws.last_record();
        let step = &rec["steps"][0];
        assert_eq!(
            step["exit_code"], 0,
            "{name}: the attack did not run: {step}"
        );
        let reason = step["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(named) && reason.contains("rolled back"),
            "{name}: {reason}"
        );
        assert_eq!(
            std::fs::read(ws.path().join("over.txt")).unwrap(),
            b"the original content\n",
            "{name}"
        );
        assert_eq!(
            std::fs::read(ws.path().join("del.txt")).unwrap(),
            [0u8, 1, 2, 3, 255],
            "{name}"
        );
        assert_eq!(fingerprint(ws.path()), before, "{name}");
        // The workspace is usable: the next writing run works, and can be reverted.
        let out = ws.run(
            &shell_step("echo next >> keep.txt && echo more > src/new.txt"),
            "host",
        );
        assert!(
            out.status.success(),
            "{name}: next run: {}",
            text(&out.stderr)
        );
        let out = bin()
            .args(["revert", "last", "--state-dir"])
            .arg(ws.state())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: revert: {}",
            text(&out.stderr)
        );
        assert_eq!(fingerprint(ws.path()), before, "{name}: after revert");
    }
}

/// A step that fails on its own (and asks to keep its changes) but leaves a FIFO: what cannot
/// be captured is never kept, so it is rolled back all the same.
#[test]
fn keep_on_failure_does_not_keep_what_cannot_be_captured() {
    let ws = Ws::seeded();
    let before = fingerprint(ws.path());
    let wf = "version: 1\nname: keep\nsteps:\n  - id: attack\n    keep_on_failure: true\n    shell: \"printf x > over.txt && rm del.txt && mkfifo pipe && exit 3\"\n";
    let out = ws.run(wf, "host");
    assert!(!out.status.success());
    let rec = ws.last_record();
    let reason = rec["steps"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("pipe: a FIFO"), "{reason}");
    assert_eq!(fingerprint(ws.path()), before);
}

/// Files created and deleted in a loop by a process the step left running while the capture
/// scans: a path that vanishes under the scan is absent, not a failed capture, and the step's
/// own changes are still rolled back.
#[test]
fn files_vanishing_during_the_capture_lose_nothing() {
    let ws = Ws::seeded();
    let before = fingerprint(ws.path());
    // `setsid` takes the churn out of the step's process group, which is killed at its end;
    // it creates and removes files and directories for 4 s, then leaves a marker outside.
    let done = ws.wf_dir.path().join("churn-done");
    let churn = format!(
        r#"setsid perl -e '$end = time + 4; while (time < $end) {{ for (1..100) {{ open(F, ">churn.$_"); close F; mkdir "cd.$_" }} unlink glob("churn.*"); rmdir for glob("cd.*") }} open(F, ">", $ARGV[0])' {} </dev/null >/dev/null 2>&1 &"#,
        done.display()
    );
    let cmd = format!("printf 'overwritten' > over.txt\nrm del.txt\n{churn}\nsleep 0.3\nexit 1");
    let out = ws.run(&shell_step(&cmd), "host");
    assert!(!out.status.success());
    let rec = ws.last_record();
    let reason = rec["steps"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.contains("capturing the workspace after the step failed"),
        "{reason}"
    );
    // The step's own changes are undone whatever the churn did meanwhile.
    assert_eq!(
        std::fs::read(ws.path().join("over.txt")).unwrap(),
        b"the original content\n",
        "{reason}"
    );
    assert_eq!(
        std::fs::read(ws.path().join("del.txt")).unwrap(),
        [0u8, 1, 2, 3, 255],
        "{reason}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the churn never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The churn removes its files each round: once it has ended, the tree is as before.
    assert_eq!(fingerprint(ws.path()), before, "{reason}");
    let out = ws.run(&shell_step("echo next >> keep.txt"), "host");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The engine is killed while a step that left a FIFO, a socket and an oversized file is still
/// running: `revert` recomputes the step's change set from the saved pre-manifest and the
/// workspace as it is, and undoes it all (the scan once failed on the FIFO, so the step's
/// changes could be neither rolled back nor reverted).
#[test]
fn an_engine_killed_after_a_step_left_special_files_is_reverted_exactly() {
    let ws = Ws::seeded();
    let before = fingerprint(ws.path());
    let pid_file = ws.wf_dir.path().join("step.pid");
    let wf = ws.wf_dir.path().join("wf.yaml");
    let cmd = format!(
        "echo $$ > {}\nprintf 'overwritten' > over.txt\nrm del.txt\nmkfifo pipe\n\
         perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => \"sock\", Listen => 1) or die $!'\n\
         truncate -s 1200M huge.bin\ntouch ready\nsleep 60",
        pid_file.display()
    );
    std::fs::write(&wf, shell_step(&cmd)).unwrap();
    let mut child = bin()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = ws.path().join("ready");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    // The step's own process group outlives the engine: end it (its pid is its group id).
    let pgid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let out = bin()
        .args(["revert", "last", "--state-dir"])
        .arg(ws.state())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(fingerprint(ws.path()), before);
    let out = ws.run(&shell_step("echo next >> keep.txt"), "host");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The same leftovers from inside the isolated backends: whichever layer stops them, the step
/// is rolled back with its other changes and the next run works.
fn sandboxed_leftovers_are_rolled_back(backend: &str, owner: Option<u32>) {
    let leftovers = [
        ("a FIFO", "mkfifo ./pipe"),
        (
            "a FIFO in a new directory",
            "mkdir -p run/d && mkfifo run/d/pipe",
        ),
        ("a 1.2 GiB sparse file", "truncate -s 1200M ./huge.bin"),
    ];
    for (name, leave) in leftovers {
        let ws = Ws::seeded();
        if let Some(id) = owner {
            common::chown_tree(ws.path(), id);
            std::fs::set_permissions(
                ws.path().join("users-own-suid"),
                std::fs::Permissions::from_mode(0o4755),
            )
            .unwrap();
        }
        let before = fingerprint(ws.path());
        let cmd = format!("{CONTROL}\nprintf 'overwritten' > over.txt\nrm del.txt\n{leave}");
        let out = ws.run(&shell_step(&cmd), backend);
        assert!(!out.status.success(), "{backend}/{name}: succeeded");
        let rec = ws.last_record();
        let step = &rec["steps"][0];
        assert_control_ran(&format!("{backend}/{name}"), step);
        let reason = step["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("rolled back"), "{backend}/{name}: {reason}");
        assert_eq!(fingerprint(ws.path()), before, "{backend}/{name}: {reason}");
        let out = ws.run(&shell_step("echo next >> keep.txt"), backend);
        assert!(
            out.status.success(),
            "{backend}/{name}: next run: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn native_steps_leaving_what_cannot_be_captured_are_rolled_back() {
    sandboxed_leftovers_are_rolled_back("native", None);
}

#[test]
fn docker_steps_leaving_what_cannot_be_captured_are_rolled_back() {
    if crate::common::docker_skip::skip_without_docker() {
        return;
    }
    common::build_default_image();
    sandboxed_leftovers_are_rolled_back("docker", Some(1000));
}

/// Set-id files, FIFOs, sockets and device nodes the user had before the run are theirs: runs
/// work next to them (they were once refused until removed by hand) and leave them as they are.
#[test]
fn the_users_own_special_and_setid_files_are_left_alone() {
    let ws = Ws::seeded();
    let p = ws.path();
    let made = std::process::Command::new("sh")
        .current_dir(p)
        .args([
            "-c",
            "mkfifo users-fifo && mknod users-null c 1 3 && perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => \"users-sock\", Listen => 1) or die $!'",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let before = fingerprint(p);
    let out = ws.run(
        &shell_step("echo more >> keep.txt && chmod 600 src/lib.txt"),
        "host",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut after = fingerprint(p);
    assert_ne!(after, before);
    for path in ["users-fifo", "users-null", "users-sock", "users-own-suid"] {
        assert_eq!(
            after.remove(path.as_bytes()),
            before.get(path.as_bytes()).cloned(),
            "{path}"
        );
    }
    let out = bin()
        .args(["revert", "last", "--state-dir"])
        .arg(ws.state())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fingerprint(p), before);
}
