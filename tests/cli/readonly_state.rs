//! A read-only state dir (a backup being audited): the reading commands work without writing a
//! byte or taking the write lock, and the writing ones say the state dir is read-only. Made
//! read-only two ways, end to end through the binary:
//!
//! * for root, a read-only bind mount in a private mount namespace (`unshare -m`): root's
//!   DAC override cannot write through it, unlike `chmod a-w`;
//! * for an ordinary user (uid 65534 via `setpriv`), `chmod -R a-w` on a state dir it owns.

use crate::common;
use common::{chown_tree, output_text as text};

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_secureclaw");
const NOBODY: u32 = 65534;

/// Every path in the state dir with its bytes, mode and mtime (ns): any write changes it.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, i64, i64)> {
    common::walk(dir)
        .into_iter()
        .chain(std::iter::once(dir.to_path_buf()))
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (p, (bytes, m.mode(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// A workspace with one recorded run that wrote and changed files, and an export head kept
/// outside the state dir.
struct Setup {
    ws: tempfile::TempDir,
    head: PathBuf,
    run_id: String,
}

impl Setup {
    fn new() -> Self {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("notes.txt"), "before\n").unwrap();
        let wf = ws.path().join("wf.yaml");
        std::fs::write(
            &wf,
            "version: 1\nname: audited\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n  - { id: b, needs: [a], shell: \"echo after > notes.txt\" }\n",
        )
        .unwrap();
        let out = common::secureclaw()
            .arg("run")
            .arg(&wf)
            .arg("--workspace")
            .arg(ws.path())
            .args(["--sandbox", "host"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let run_id = err
            .lines()
            .rev()
            .find(|l| l.starts_with("run "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .to_owned();
        let head = ws.path().join("audit-head.json");
        let out = common::secureclaw()
            .args(["ledger", "export", "--state-dir"])
            .arg(ws.path().join(".secureclaw"))
            .arg("--out")
            .arg(ws.path().join("audit.jsonl"))
            .arg("--head-out")
            .arg(&head)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        Setup { ws, head, run_id }
    }

    fn state(&self) -> PathBuf {
        self.ws.path().join(".secureclaw")
    }

    /// The reading commands (`runs`, `show`, `diff`, `logs`, `ledger`, `vault status`) with what each must
    /// print. Exports go outside the state dir.
    fn reading_commands(&self, out_dir: &Path) -> Vec<(Vec<String>, String)> {
        let s = self.state().display().to_string();
        let o = out_dir.join("ro-export.jsonl").display().to_string();
        let h = self.head.display().to_string();
        let v = |a: &[&str]| a.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        vec![
            (v(&["runs", "--state-dir", &s]), self.run_id.clone()),
            (
                v(&["runs", "--json", "--state-dir", &s]),
                "\"succeeded\"".into(),
            ),
            (v(&["show", "last", "--state-dir", &s]), "a.txt".into()),
            (
                v(&["show", &self.run_id, "--json", "--state-dir", &s]),
                "\"a.txt\"".into(),
            ),
            (
                v(&["diff", &self.run_id, "--color", "never", "--state-dir", &s]),
                "a.txt".into(),
            ),
            (
                v(&["ledger", "verify", "--state-dir", &s]),
                "ledger OK".into(),
            ),
            (
                v(&["ledger", "verify", "--head", &h, "--state-dir", &s]),
                "extends the exported head".into(),
            ),
            (
                v(&["ledger", "export", "--state-dir", &s, "--out", &o]),
                "exported".into(),
            ),
            (v(&["vault", "status", "--state-dir", &s]), "ledger ".into()),
            (
                v(&["vault", "status", "--json", "--state-dir", &s]),
                "\"blob_count\"".into(),
            ),
        ]
    }

    /// Commands that must write to the state dir, run against it.
    fn writing_commands(&self) -> Vec<Vec<String>> {
        let s = self.state().display().to_string();
        let wf = self.ws.path().join("wf.yaml").display().to_string();
        let ws = self.ws.path().display().to_string();
        let v = |a: &[&str]| a.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        vec![
            v(&[
                "run",
                &wf,
                "--workspace",
                &ws,
                "--sandbox",
                "host",
                "--state-dir",
                &s,
            ]),
            v(&["revert", "last", "--state-dir", &s]),
            v(&["vault", "rekey", "--state-dir", &s]),
        ]
    }
}

/// The binary with `args`, inside a private mount namespace where `state` is a read-only bind
/// mount of itself.
fn in_read_only_mount(state: &Path, args: &[String]) -> Output {
    let mut cmd = vec![BIN.to_owned()];
    cmd.extend_from_slice(args);
    in_read_only_mount_run(state, &cmd)
}

fn in_read_only_mount_run(state: &Path, cmd: &[String]) -> Output {
    let script = r#"
set -e
mount --bind "$1" "$1"
mount -o remount,ro,bind "$1"
shift
exec "$@"
"#;
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(state)
        .args(cmd);
    common::with_vault_env(&mut c, common::TEST_PASSPHRASE)
        .env("SECURECLAW_NEW_PASSPHRASE", "another passphrase")
        .output()
        .unwrap()
}

fn require_root() {
    assert_eq!(
        rustix_uid(),
        0,
        "these tests make the state dir read-only for root with a bind mount: run them as root"
    );
}

fn rustix_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn root_on_a_read_only_mount_can_read_and_is_told_when_a_command_must_write() {
    require_root();
    let s = Setup::new();
    let before = fingerprint(&s.state());
    // Control: the mount really refuses root's writes.
    let probe = in_read_only_mount_run(
        &s.state(),
        &[
            "touch".into(),
            s.state().join("probe").display().to_string(),
        ],
    );
    assert!(
        !probe.status.success(),
        "root could write: {}",
        text(&probe)
    );
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("Read-only file system"),
        "{}",
        text(&probe)
    );
    let out_dir = tempfile::tempdir().unwrap();
    for (args, want) in s.reading_commands(out_dir.path()) {
        let out = in_read_only_mount(&s.state(), &args);
        assert!(
            out.status.success(),
            "{args:?} failed read-only: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&want),
            "{args:?}: want {want:?} in {}",
            text(&out)
        );
    }
    // The export made from the read-only vault verifies.
    let exported = std::fs::read_to_string(out_dir.path().join("ro-export.jsonl")).unwrap();
    assert!(exported.contains("\"step_finished\""));
    for args in s.writing_commands() {
        let out = in_read_only_mount(&s.state(), &args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is read-only") && err.contains(&s.state().display().to_string()),
            "{args:?} must say the state dir is read-only: {}",
            text(&out)
        );
    }
    assert!(
        before == fingerprint(&s.state()),
        "the state dir changed although it was mounted read-only"
    );
    // The workspace was not touched by the refused run and revert either.
    assert_eq!(
        std::fs::read_to_string(s.ws.path().join("notes.txt")).unwrap(),
        "after\n"
    );
}

fn as_nobody(args: &[String]) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        BIN,
    ])
    .args(args)
    .env("HOME", "/nonexistent");
    common::with_vault_env(&mut c, common::TEST_PASSPHRASE)
        .env("SECURECLAW_NEW_PASSPHRASE", "another passphrase")
        .output()
        .unwrap()
}

#[test]
fn an_ordinary_user_on_an_unwritable_state_dir_can_read_and_is_told_when_a_command_must_write() {
    require_root();
    let s = Setup::new();
    // The user owns everything, then the state dir loses every write bit.
    chown_tree(s.ws.path(), NOBODY);
    let out = Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(s.state())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(s.state().join("vault.redb"))
            .unwrap()
            .permissions()
            .mode()
            & 0o222,
        0
    );
    let before = fingerprint(&s.state());
    // Control: the user really cannot write there.
    let mut probe = Command::new("setpriv");
    let probe = probe
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "touch",
        ])
        .arg(s.state().join("probe"))
        .output()
        .unwrap();
    assert!(
        !probe.status.success(),
        "the user could write: {}",
        text(&probe)
    );
    let out_dir = s.ws.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    chown_tree(&out_dir, NOBODY);
    for (args, want) in s.reading_commands(&out_dir) {
        let out = as_nobody(&args);
        assert!(
            out.status.success(),
            "{args:?} failed read-only: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&want),
            "{args:?}: want {want:?} in {}",
            text(&out)
        );
    }
    for args in s.writing_commands() {
        let out = as_nobody(&args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is read-only"),
            "{args:?} must say the state dir is read-only: {}",
            text(&out)
        );
    }
    assert!(
        before == fingerprint(&s.state()),
        "the state dir changed although it was not writable"
    );
    // Let the temp dir be cleaned up.
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(s.state())
        .output();
}

/// A run whose engine died shows as interrupted in a read-only state dir, without the state
/// dir being written (a writable one records it at the next writing command).
#[test]
fn a_dead_run_shows_as_interrupted_read_only() {
    require_root();
    let s = Setup::new();
    // Fake a crash: a second run left `running` by an engine that is gone. Simulated by a run
    // killed mid-step.
    let wf = s.ws.path().join("slow.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: crashed\nsteps:\n  - { id: hang, shell: \"touch started; sleep 5\" }\n",
    )
    .unwrap();
    let mut child = common::secureclaw()
        .arg("run")
        .arg(&wf)
        .arg("--workspace")
        .arg(s.ws.path())
        .args(["--sandbox", "host"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = s.ws.path().join("started");
    for _ in 0..600 {
        if started.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(started.exists(), "the step never started");
    // SIGKILL: the engine dies without closing the database or finishing the record.
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = Command::new("pkill")
        .args(["-f", "touch started; sleep 5"])
        .output();
    let runs_ro = |s: &Setup| {
        in_read_only_mount(
            &s.state(),
            &[
                "runs".into(),
                "--state-dir".into(),
                s.state().display().to_string(),
            ],
        )
    };
    let before = fingerprint(&s.state());
    let out = runs_ro(&s);
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("interrupted"), "{}", text(&out));
    } else {
        // The killed engine had the database open: recovery writes, which a read-only mount
        // cannot allow. That is said, not a generic storage error.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs recovery"),
            "{}",
            text(&out)
        );
    }
    assert!(before == fingerprint(&s.state()));
    // A reading command on the writable state dir recovers the database (without recording
    // the interruption: it only reads the records)...
    let out = common::secureclaw()
        .args(["vault", "status", "--state-dir"])
        .arg(s.state())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // ...after which the read-only view shows the dead run as interrupted, writing nothing.
    let before = fingerprint(&s.state());
    let out = runs_ro(&s);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let crashed = stdout
        .lines()
        .find(|l| l.contains("crashed"))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(crashed.contains("interrupted"), "{crashed}");
    assert!(before == fingerprint(&s.state()));
}
