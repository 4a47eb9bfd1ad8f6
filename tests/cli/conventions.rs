//! Completion scripts and manual pages come from the parser's own definition: every shell gets a
//! script naming the subcommands, bash accepts its script, and every subcommand has a page.

use crate::common::secureclaw;

const SUBCOMMANDS: [&str; 6] = ["run", "validate", "revert", "logs", "completions", "man"];

#[test]
fn completions_name_every_subcommand_in_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = secureclaw().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} script lacks `{sub}`");
        }
        assert!(
            script.contains("workspace"),
            "{shell} script lacks run's flags"
        );
    }
}

#[test]
fn bash_accepts_the_bash_completion_script() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secureclaw.bash");
    let out = secureclaw().args(["completions", "bash"]).output().unwrap();
    std::fs::write(&path, &out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p secureclaw",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("secureclaw"));
}

#[test]
fn an_unknown_shell_is_refused_with_the_known_ones() {
    let out = secureclaw().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("zsh"), "{err}");
}

#[test]
fn man_prints_the_main_page_and_writes_one_per_subcommand() {
    let out = secureclaw().arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH secureclaw 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "main page lacks `{sub}`");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = secureclaw()
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for name in [
        "secureclaw.1",
        "secureclaw-run.1",
        "secureclaw-vault-init.1",
        "secureclaw-ledger-verify-export.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{name}");
    }
    let run = std::fs::read_to_string(dir.path().join("secureclaw-run.1")).unwrap();
    assert!(run.contains("workspace"), "run's page lacks its flags");
}
