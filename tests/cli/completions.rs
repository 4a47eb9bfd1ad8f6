//! Completion scripts, manual pages and the configuration page follow the parser's own
//! definition: every shell gets a script naming the subcommands, bash accepts its script, every
//! subcommand has a page, and docs/configuration.md names every variable and flag.

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

/// The subcommands `secureclaw --help` lists (nested ones as `vault init`).
fn subcommands(prefix: &[&str]) -> Vec<Vec<String>> {
    let out = secureclaw().args(prefix).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let Some(list) = help.split("\nCommands:\n").nth(1) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in list.lines() {
        if !line.starts_with("  ") || line.starts_with("   ") {
            if line.trim().is_empty() || !line.starts_with(' ') {
                break;
            }
            continue;
        }
        let name = line.split_whitespace().next().unwrap_or_default();
        if name == "help" || name.is_empty() {
            continue;
        }
        let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        path.push(name.to_string());
        let as_str: Vec<&str> = path.iter().map(String::as_str).collect();
        let nested = subcommands(&as_str);
        found.push(path);
        found.extend(nested);
    }
    found
}

/// docs/configuration.md names every variable in `.env.example` (itself checked against the code
/// by the server tests) and every long flag of every subcommand, so the one table stays whole.
#[test]
fn the_configuration_page_names_every_variable_and_flag() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let mut missing = Vec::new();
    for line in example.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, _)) = line.split_once('=')
            && !page.contains(&format!("`{name}`"))
        {
            missing.push(name.to_string());
        }
    }
    let commands = subcommands(&[]);
    assert!(commands.len() > 20, "{commands:?}");
    for path in commands {
        let out = secureclaw().args(&path).arg("--help").output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        // Option lines only (`  -w, --workspace <DIR>  …`), not flags quoted in prose.
        for line in help.lines() {
            let indent = line.len() - line.trim_start().len();
            if !(2..=6).contains(&indent) {
                continue;
            }
            let line = line.trim_start();
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let Some(rest) = line.strip_prefix("--") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let flag = format!("--{name}");
            if !["--help", "--version"].contains(&flag.as_str())
                && !page.contains(&format!("`{flag}"))
            {
                missing.push(format!("{} {flag}", path.join(" ")));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks: {missing:?}"
    );
}
