//! Read-only grants: toolchains under a home directory made visible to a native step, with the
//! credentials inside them still hidden, and the rules that refuse too-broad grants.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use secureclaw_sandbox::grants::{masks, missing_command_hint, resolve, toolchain_env};
use secureclaw_sandbox::{ExecOutcome, ExecSpec, ExitReason, NativeSandbox, Sandbox};
use tokio_util::sync::CancellationToken;

fn native() -> NativeSandbox {
    NativeSandbox::with_helper(env!("CARGO_BIN_EXE_secureclaw-sandbox-helper").into())
}

fn ws() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = std::fs::canonicalize(d.path()).unwrap();
    (d, p)
}

async fn run(spec: &ExecSpec) -> ExecOutcome {
    native().run(spec, CancellationToken::new()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const BASE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The rustup toolchain of this machine's home, when there is one (`~/.cargo`, `~/.rustup`).
fn host_toolchain() -> Option<(PathBuf, PathBuf)> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let (cargo, rustup) = (home.join(".cargo"), home.join(".rustup"));
    (cargo.join("bin/cargo").is_file() && rustup.is_dir()).then_some((cargo, rustup))
}

/// `cargo test --offline` on a tiny crate (no dependencies) inside the native sandbox, with
/// the toolchain granted read-only from the home directory.
#[tokio::test]
async fn cargo_test_runs_inside_with_the_toolchain_granted() {
    let Some((cargo, rustup)) = host_toolchain() else {
        panic!(
            "this test needs a rustup toolchain in ~/.cargo and ~/.rustup (the one building it)"
        );
    };
    let (_d, ws) = ws();
    std::fs::create_dir(ws.join("src")).unwrap();
    std::fs::write(
        ws.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        ws.join("src/lib.rs"),
        "pub fn add(a: u32, b: u32) -> u32 { a + b }\n#[test]\nfn adds() { assert_eq!(add(2, 2), 4); }\n",
    )
    .unwrap();

    // Without the grant: not found, and the hint names what to grant.
    let mut spec = ExecSpec::shell("cargo test --offline", ws.clone());
    spec.env.insert("PATH".into(), BASE_PATH.into());
    let out = run(&spec).await;
    assert_eq!(out.exit, ExitReason::Exited { code: 127 });
    let host_path = format!("{}:{BASE_PATH}", cargo.join("bin").display());
    let home = cargo.parent().unwrap();
    let hint = missing_command_hint(&text(&out.stderr), &host_path, &[], Some(home)).unwrap();
    assert!(
        hint.contains("\"~/.cargo\", \"~/.rustup\"") && hint.contains("--read-only ~/.cargo"),
        "{hint}"
    );

    // With it.
    let grants = vec![cargo.clone(), rustup.clone()];
    let mut spec = ExecSpec::shell(
        "cargo test --offline 2>&1; echo HOME=$HOME; touch \"$CARGO_HOME/x\" 2>/dev/null || echo cargo-home-read-only",
        ws.clone(),
    );
    spec.read_only = grants.clone();
    spec.env.insert("HOME".into(), "/tmp".into());
    spec.env.extend(toolchain_env(&grants, BASE_PATH));
    spec.limits.memory_bytes = 1 << 30;
    spec.limits.timeout = std::time::Duration::from_secs(240);
    let out = run(&spec).await;
    let stdout = text(&out.stdout);
    assert!(out.exit.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("test adds ... ok"), "{stdout}");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert!(
        stdout.contains("HOME=/tmp\ncargo-home-read-only"),
        "{stdout}"
    );
    assert!(
        ws.join("target").is_dir(),
        "the build went to the workspace"
    );
    assert!(!cargo.join("x").exists());
    assert!(
        out.enforcement
            .layers
            .iter()
            .any(|l| l.name == "read-only-grants" && l.detail.contains(".rustup")),
        "{:#?}",
        out.enforcement.layers
    );
}

/// A fake home: a toolchain with credentials next to it and inside it.
fn fake_home() -> (tempfile::TempDir, PathBuf) {
    // Not under /tmp: the sandbox has its own /tmp, so nothing there can be granted.
    let d = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
    let home = std::fs::canonicalize(d.path()).unwrap();
    std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
    std::fs::write(home.join(".cargo/bin/tool"), "#!/bin/sh\necho tool ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        home.join(".cargo/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        home.join(".cargo/credentials.toml"),
        "token = \"cio-secret\"\n",
    )
    .unwrap();
    std::fs::write(home.join(".cargo/config.toml"), "# plain config\n").unwrap();
    std::fs::create_dir_all(home.join(".config/gcloud")).unwrap();
    std::fs::write(home.join(".config/gcloud/creds.json"), "gcloud-secret").unwrap();
    std::fs::write(home.join(".config/app.toml"), "plain").unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "ssh-secret").unwrap();
    (d, home)
}

#[tokio::test]
async fn credentials_inside_a_grant_stay_hidden() {
    let (_h, home) = fake_home();
    let (_d, ws) = ws();
    // A grant nested in another one is placed after it (the order given does not matter).
    let grants = vec![
        home.join(".cargo/bin"),
        home.join(".cargo"),
        home.join(".config"),
    ];
    let mut spec = ExecSpec::shell(
        &format!(
            "H={h}; tool; cat $H/.cargo/config.toml $H/.config/app.toml; echo; \
             cat $H/.cargo/credentials.toml; ls -A $H/.config/gcloud; cat $H/.ssh/id_ed25519 2>/dev/null; \
             stat -c %F $H/.cargo/credentials.toml; touch $H/.cargo/new 2>/dev/null || echo read-only",
            h = home.display()
        ),
        ws,
    );
    spec.read_only = grants.clone();
    spec.env.extend(toolchain_env(&grants, BASE_PATH));
    let out = run(&spec).await;
    let stdout = text(&out.stdout);
    assert!(out.exit.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(!stdout.contains("secret"), "{stdout}");
    assert_eq!(
        stdout,
        "tool ran\n# plain config\nplain\nregular empty file\nread-only\n"
    );
    let masked = masks(&home.join(".cargo"));
    assert_eq!(masked, vec![home.join(".cargo/credentials.toml")]);
}

/// Naming a credential directory itself is an explicit choice: it is shown.
#[tokio::test]
async fn a_grant_that_names_a_credential_dir_shows_it() {
    let (_h, home) = fake_home();
    let (_d, ws) = ws();
    let mut spec = ExecSpec::shell(&format!("cat {}/.ssh/id_ed25519", home.display()), ws);
    spec.read_only = vec![home.join(".ssh")];
    let out = run(&spec).await;
    assert_eq!(text(&out.stdout), "ssh-secret");
}

#[test]
fn too_broad_or_overlapping_grants_are_refused() {
    let (_h, home) = fake_home();
    let state = home.join("project/.secureclaw");
    std::fs::create_dir_all(&state).unwrap();
    let h = Some(home.as_path());
    let ok = resolve("~/.cargo", h, Some(&state)).unwrap();
    assert_eq!(ok, home.join(".cargo"));
    for bad in [
        "~",
        "~/",
        "/",
        "/root",
        "/home",
        "relative/path",
        "~/../etc",
        "~/missing-toolchain",
        "~/project",
        "~/project/.secureclaw",
        "~/project/.secureclaw/blobs",
        "/tmp",
        "/usr/lib",
        "/proc/self",
        "/etc",
    ] {
        let r = resolve(bad, h, Some(&state));
        assert!(r.is_err(), "{bad} accepted: {r:?}");
    }
    // A file is not a grant (toolchains are directories).
    assert!(resolve("~/.cargo/config.toml", h, Some(&state)).is_err());
    // A symlink to the home directory is the home directory.
    std::os::unix::fs::symlink(&home, home.join(".cargo/loop")).unwrap();
    assert!(resolve("~/.cargo/loop", h, Some(&state)).is_err());
    std::os::unix::fs::symlink(&state, home.join(".cargo/st")).unwrap();
    assert!(resolve("~/.cargo/st", h, Some(&state)).is_err());
    let abs = format!("{}", home.join(".cargo").display());
    assert_eq!(resolve(&abs, None, None).unwrap(), home.join(".cargo"));
}

#[test]
fn the_hint_names_only_commands_hidden_from_the_sandbox() {
    let (_h, home) = fake_home();
    let path = format!("{}:/usr/bin:/bin", home.join(".cargo/bin").display());
    let h = Some(home.as_path());
    for stderr in [
        "sh: 1: tool: not found\n",
        "bash: line 1: tool: command not found\n",
        "secureclaw: step: `tool` not found in PATH\n",
    ] {
        let hint = missing_command_hint(stderr, &path, &[], h).unwrap();
        assert!(hint.contains("read_only: [\"~/.cargo\"]"), "{hint}");
    }
    // Already granted, a system command, or a command nowhere: no hint.
    assert!(
        missing_command_hint("sh: 1: tool: not found", &path, &[home.join(".cargo")], h).is_none()
    );
    assert!(missing_command_hint("sh: 1: ls: not found", &path, &[], h).is_none());
    assert!(missing_command_hint("sh: 1: nosuchcmd-x: not found", &path, &[], h).is_none());
}

#[test]
fn toolchain_env_puts_granted_bins_first_and_names_the_homes() {
    let (_h, home) = fake_home();
    let env = toolchain_env(&[home.join(".cargo")], BASE_PATH);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("PATH").unwrap(),
        format!("{}:{BASE_PATH}", home.join(".cargo/bin").display())
    );
    assert_eq!(
        get("CARGO_HOME").unwrap(),
        home.join(".cargo").display().to_string()
    );
    let _ = Path::new("/");
}
