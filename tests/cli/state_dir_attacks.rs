//! A workflow (or a careless command line) must never reach the engine's state dir: not through
//! engine-side `write`/`patch`/`read` by any path spelling, not through a symlink a shell step
//! planted earlier in the same run, not from shell steps whatever the spelling of `-w`, and not
//! by pointing `--state-dir` into the workspace. After every attack the vault still opens, its
//! header is byte for byte what it was, and the ledger verifies.

use crate::common;
use common::stderr;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::secureclaw as bin;

/// A workspace with a vault already in its default state dir.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(site.ws()).unwrap();
        let wf = site.file(
            "setup.yaml",
            "version: 1\nname: setup\nsteps:\n  - { id: w, write: { path: seed.txt, content: seed } }\n",
        );
        let out = site.run_in(site.root(), &wf, &["-w".as_ref(), site.ws().as_os_str()]);
        assert!(out.status.success(), "{}", stderr(&out));
        site
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn ws(&self) -> PathBuf {
        self.root().join("ws")
    }
    fn state(&self) -> PathBuf {
        self.ws().join(".secureclaw")
    }
    fn header(&self) -> Vec<u8> {
        std::fs::read(self.state().join("vault.header.json")).unwrap()
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn run_in(&self, cwd: &Path, wf: &Path, args: &[&std::ffi::OsStr]) -> Output {
        bin()
            .current_dir(cwd)
            .arg("run")
            .arg(wf)
            .args(["-y", "--sandbox", "native"])
            .args(args)
            .output()
            .unwrap()
    }
    fn run(&self, wf: &Path, extra: &[&str]) -> Output {
        let mut args: Vec<&std::ffi::OsStr> = vec!["-w".as_ref()];
        let ws = self.ws();
        args.push(ws.as_os_str());
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        self.run_in(self.root(), wf, &args)
    }
    /// The vault opens, lists its runs and its ledger verifies; the header is unchanged.
    fn assert_vault_intact(&self, header_before: &[u8]) {
        assert_eq!(self.header(), header_before, "the vault header was changed");
        let runs = bin()
            .args(["runs", "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(runs.status.success(), "runs: {}", stderr(&runs));
        assert!(
            String::from_utf8_lossy(&runs.stdout).contains("setup"),
            "{}",
            String::from_utf8_lossy(&runs.stdout)
        );
        let verify = bin()
            .args(["ledger", "verify", "--state-dir"])
            .arg(self.state())
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "ledger verify: {}",
            stderr(&verify)
        );
        assert!(String::from_utf8_lossy(&verify.stdout).contains("chain intact"));
    }
}

#[test]
fn literal_paths_into_the_state_dir_are_refused_by_validation() {
    let site = Site::new();
    let before = site.header();
    let actions = [
        "write: { path: '.secureclaw/vault.header.json', content: '{}' }",
        "write: { path: './.secureclaw/vault.header.json', content: '{}' }",
        "write: { path: 'a/../.secureclaw/vault.header.json', content: '{}' }",
        "write: { path: '.secureclaw/./vault.header.json', content: '{}' }",
        "write: { path: '.secureclaw//blobs/x', content: '{}' }",
        "patch: { path: '.secureclaw/vault.header.json', diff: \"--- a\\n+++ b\\n@@ -1 +1 @@\\n-x\\n+y\\n\" }",
        "read: { path: '.secureclaw/vault.header.json' }",
        "read: { path: './.secureclaw/' }",
    ];
    for action in actions {
        let wf = site.file(
            "attack.yaml",
            &format!("version: 1\nname: attack\nsteps:\n  - id: a\n    {action}\n"),
        );
        let check = bin().arg("validate").arg(&wf).output().unwrap();
        let text = format!(
            "{}{}",
            stderr(&check),
            String::from_utf8_lossy(&check.stdout)
        );
        assert!(!check.status.success(), "{action}: validate accepted it");
        assert!(text.contains("state dir"), "{action}: {text}");
        assert!(
            text.contains("attack.yaml:5:"),
            "{action}: not located: {text}"
        );
        let out = site.run(&wf, &[]);
        assert!(!out.status.success(), "{action}: run accepted it");
        site.assert_vault_intact(&before);
    }
}

#[test]
fn templated_paths_into_the_state_dir_are_refused_when_the_step_runs() {
    let site = Site::new();
    let before = site.header();
    let wf = site.file(
        "attack.yaml",
        "version: 1\nname: attack\ninputs:\n  p: { type: string }\nsteps:\n  - id: w\n    write: { path: '{{ inputs.p }}', content: '{}' }\n",
    );
    for target in [
        ".secureclaw/vault.header.json",
        "./.secureclaw/vault.header.json",
        "x/../.secureclaw/vault.header.json",
        ".secureclaw/",
        ".secureclaw/./ledger.head",
    ] {
        let out = site.run(&wf, &["-i", &format!("p={target}")]);
        assert_eq!(out.status.code(), Some(1), "{target}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("state dir"),
            "{target}: {}",
            stderr(&out)
        );
        site.assert_vault_intact(&before);
    }
    let read = site.file(
        "read.yaml",
        "version: 1\nname: attack\ninputs:\n  p: { type: string }\nsteps:\n  - id: r\n    read: { path: '{{ inputs.p }}' }\n",
    );
    let out = site.run(&read, &["-i", "p=./.secureclaw/vault.header.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    site.assert_vault_intact(&before);
}

#[test]
fn symlinks_planted_by_an_earlier_shell_step_do_not_lead_into_the_state_dir() {
    let site = Site::new();
    let before = site.header();
    let abs = site.state().display().to_string();
    for (plant, through) in [
        ("ln -s .secureclaw st".to_string(), "st/vault.header.json"),
        (
            "mkdir -p d && ln -s ../.secureclaw d/up".to_string(),
            "d/up/vault.header.json",
        ),
        (format!("ln -s {abs} abs"), "abs/vault.header.json"),
        ("ln -s .secureclaw/vault.header.json hdr".to_string(), "hdr"),
        (
            "ln -s . loop".to_string(),
            "loop/.secureclaw/vault.header.json",
        ),
    ] {
        for action in [
            format!("write: {{ path: '{through}', content: '{{}}' }}"),
            format!(
                "patch: {{ path: '{through}', diff: \"--- a\\n+++ b\\n@@ -1 +1 @@\\n-x\\n+y\\n\" }}"
            ),
            format!("read: {{ path: '{through}' }}"),
        ] {
            let wf = site.file(
                "attack.yaml",
                &format!(
                    "version: 1\nname: attack\nsteps:\n  - id: plant\n    shell: \"rm -rf st d abs hdr loop; {plant} && echo planted > proof.txt\"\n    keep_on_failure: true\n  - id: through\n    needs: [plant]\n    keep_on_failure: true\n    {action}\n"
                ),
            );
            let out = site.run(&wf, &[]);
            assert_eq!(
                std::fs::read_to_string(site.ws().join("proof.txt")).unwrap_or_default(),
                "planted\n",
                "{plant}: the planting step did not run: {}",
                stderr(&out)
            );
            assert!(
                std::fs::symlink_metadata(site.ws().join(through.split('/').next().unwrap()))
                    .is_ok_and(|m| m.file_type().is_symlink() || m.is_dir()),
                "{plant}: nothing was planted"
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "{plant} / {action}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("state dir"),
                "{plant} / {action}: {}",
                stderr(&out)
            );
            site.assert_vault_intact(&before);
            std::fs::remove_file(site.ws().join("proof.txt")).unwrap();
        }
    }
}

/// A shell step that tries to overwrite the header, and leaves proof that it ran.
const OVERWRITE: &str = "version: 1\nname: attack\nsteps:\n  - id: s\n    shell: \"echo ran > proof.txt; echo '{}' > .secureclaw/vault.header.json; rm -rf .secureclaw/blobs; ls -a > listing.txt; true\"\n";

fn assert_shell_attack_failed(site: &Site, out: &Output, before: &[u8], how: &str) {
    assert!(out.status.success(), "{how}: {}", stderr(out));
    assert_eq!(
        std::fs::read_to_string(site.ws().join("proof.txt")).unwrap(),
        "ran\n",
        "{how}: the step did not run"
    );
    site.assert_vault_intact(before);
    assert!(site.state().join("blobs").is_dir(), "{how}: blobs deleted");
    std::fs::remove_file(site.ws().join("proof.txt")).unwrap();
}

#[test]
fn shell_steps_cannot_reach_the_state_dir_with_workspace_given_as_dot() {
    let site = Site::new();
    let before = site.header();
    let wf = site.file("attack.yaml", OVERWRITE);
    let out = site.run_in(&site.ws(), &wf, &["-w".as_ref(), ".".as_ref()]);
    assert_shell_attack_failed(&site, &out, &before, "-w .");
    // The default workspace is the current directory, spelled the same way.
    let out = site.run_in(&site.ws(), &wf, &[]);
    assert_shell_attack_failed(&site, &out, &before, "no -w");
}

#[test]
fn shell_steps_cannot_reach_the_state_dir_with_a_relative_workspace() {
    let site = Site::new();
    let before = site.header();
    let wf = site.file("attack.yaml", OVERWRITE);
    for spelling in ["ws", "./ws", "ws/", "ws/../ws"] {
        let out = site.run_in(site.root(), &wf, &["-w".as_ref(), spelling.as_ref()]);
        assert_shell_attack_failed(&site, &out, &before, spelling);
    }
}

#[test]
fn shell_steps_cannot_reach_the_state_dir_through_a_symlinked_workspace() {
    let site = Site::new();
    let before = site.header();
    std::os::unix::fs::symlink(site.ws(), site.root().join("link")).unwrap();
    let wf = site.file("attack.yaml", OVERWRITE);
    let link = site.root().join("link");
    let out = site.run_in(site.root(), &wf, &["-w".as_ref(), link.as_os_str()]);
    assert_shell_attack_failed(&site, &out, &before, "-w <symlink>");
    let out = site.run_in(site.root(), &wf, &["-w".as_ref(), "link".as_ref()]);
    assert_shell_attack_failed(&site, &out, &before, "-w <relative symlink>");
}

#[test]
fn a_state_dir_in_the_workspace_or_around_it_is_refused_before_anything_runs() {
    let site = Site::new();
    let wf = site.file(
        "w.yaml",
        "version: 1\nname: w\nsteps:\n  - { id: s, shell: \"echo ran > proof.txt\" }\n",
    );
    let ws = site.ws();
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (ws.clone(), ws.clone(), "is the workspace itself"),
        (ws.clone(), ws.join("."), "is the workspace itself"),
        (ws.clone(), ws.join("state"), "inside the workspace"),
        (ws.clone(), ws.join("deep/er/state"), "inside the workspace"),
        (
            ws.clone(),
            ws.join("sub/../.secureclaw2"),
            "inside the workspace",
        ),
        (
            site.root().join("outer/ws"),
            site.root().join("outer"),
            "inside the state dir",
        ),
    ];
    for (workspace, state, expect) in cases {
        std::fs::create_dir_all(&workspace).unwrap();
        let out = bin()
            .arg("run")
            .arg(&wf)
            .args(["-y", "--sandbox", "native", "-w"])
            .arg(&workspace)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            state.display(),
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expect),
            "{}: {}",
            state.display(),
            stderr(&out)
        );
        assert!(
            !workspace.join("proof.txt").exists(),
            "{}: a step ran",
            state.display()
        );
        assert!(
            !state.join("vault.header.json").exists(),
            "{}: a vault was created",
            state.display()
        );
    }
    // The same through the environment variable.
    let out = bin()
        .arg("run")
        .arg(&wf)
        .args(["-y", "--sandbox", "native", "-w"])
        .arg(&ws)
        .env("SECURECLAW_STATE_DIR", &ws)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    site.assert_vault_intact(&site.header());
    // Outside the workspace, or the default spelled out, is fine.
    let outside = site.root().join("elsewhere");
    for state in [outside, ws.join(".secureclaw")] {
        let out = bin()
            .arg("run")
            .arg(&wf)
            .args(["-y", "--sandbox", "native", "-w"])
            .arg(&ws)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            state.display(),
            stderr(&out)
        );
    }
}

#[test]
fn a_glob_read_never_lists_the_state_dir_whatever_the_workspace_spelling() {
    let site = Site::new();
    let before = site.header();
    std::fs::write(site.ws().join("visible.txt"), "x").unwrap();
    let wf = site.file(
        "glob.yaml",
        "version: 1\nname: glob\nsteps:\n  - { id: g, read: { glob: '**' } }\n  - { id: h, read: { glob: '.*/*' } }\n",
    );
    for (cwd, spelling) in [
        (site.ws(), "."),
        (site.root().to_path_buf(), "ws"),
        (site.root().to_path_buf(), "./ws/"),
    ] {
        let out = site.run_in(&cwd, &wf, &["-w".as_ref(), spelling.as_ref()]);
        assert!(out.status.success(), "{spelling}: {}", stderr(&out));
        let show = bin()
            .args(["show", "last", "--json", "--state-dir"])
            .arg(site.state())
            .output()
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        let outputs: Vec<String> = record["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["output"].as_str().unwrap().to_string())
            .collect();
        assert!(
            outputs[0].contains("visible.txt"),
            "{spelling}: {outputs:?}"
        );
        for o in &outputs {
            assert!(!o.contains(".secureclaw"), "{spelling}: {o}");
        }
        site.assert_vault_intact(&before);
    }
}
