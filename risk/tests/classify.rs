//! Behaviour of the classifier on every shell construct it must walk, and rules-file validation.

// Tests may panic on broken fixtures; that is what a failing test is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use secureclaw_risk::{
    Assessment, Classifier, Context, EMBEDDED_RULES, RulesError, Tier, classify_path_write,
    classify_shell,
};

fn tier(cmd: &str) -> Tier {
    classify_shell(cmd).tier
}

fn rules_of(a: &Assessment) -> Vec<&str> {
    a.matched.iter().map(|h| h.rule.as_str()).collect()
}

#[test]
fn embedded_rules_load() {
    assert!(Classifier::embedded().is_ok());
}

#[test]
fn walks_every_construct() {
    for cmd in [
        "ls | rm -rf x",
        "true && rm -rf x",
        "false || rm -rf x",
        "echo; rm -rf x",
        "(rm -rf x)",
        "{ rm -rf x; }",
        "echo $(rm -rf x)",
        "echo `rm -rf x`",
        "echo \"$(rm -rf x)\"",
        "X=$(rm -rf x) true",
        "bash -c 'rm -rf x'",
        "sh -c \"rm -rf x\"",
        "eval rm -rf x",
        "sudo rm -rf x",
        "env A=1 rm -rf x",
        "nice -n 5 rm -rf x",
        "timeout 5s rm -rf x",
        "xargs rm",
        "find . -exec rm {} +",
        "find . -delete",
        "if true; then rm -rf x; fi",
        "while true; do rm -rf x; done",
        "case a in a) rm -rf x;; esac",
        "f() { rm -rf x; }",
        "cat <(rm -rf x)",
        "alias ll='rm -rf x'",
        "bash <<< 'rm -rf x'",
        "ssh host rm -rf x",
    ] {
        assert!(
            classify_shell(cmd).has_tier(Tier::Destructive),
            "{cmd} was not flagged destructive: {:?}",
            classify_shell(cmd)
        );
    }
}

#[test]
fn obfuscations_are_caught() {
    for cmd in [
        "r\"\"m -rf build",
        "\\rm -rf build",
        "command rm -rf build",
        "$(echo rm) -rf build",
        "$'\\x72m' -rf build",
        "/usr/bin/rm -fr build",
        "'rm' -Rf build",
        ":(){ :|:& };:",
        "> important.txt",
        "cat /dev/zero > /dev/sda",
    ] {
        assert_eq!(
            tier(cmd),
            Tier::Destructive,
            "{cmd}: {:?}",
            classify_shell(cmd)
        );
    }
}

#[test]
fn combined_flags() {
    for cmd in [
        "rm -rf x",
        "rm -fr x",
        "rm -r x",
        "rm -R x",
        "rm --recursive x",
        "rm -r -f x",
    ] {
        assert_eq!(classify_shell(cmd).rule, "rm-recursive", "{cmd}");
    }
    // Deleting is the purpose, so named files inside the workspace are destructive too.
    assert_eq!(classify_shell("rm -f notes.txt").rule, "rm-file");
    assert_eq!(tier("rm -f notes.txt"), Tier::Destructive);
    assert_eq!(tier("rm -f *.txt"), Tier::Destructive);
    assert_eq!(
        classify_shell("rm -- -rf").rule,
        "rm-file",
        "`-rf` after `--` is a file name"
    );
}

#[test]
fn redirections() {
    assert_eq!(tier("ls 2>/dev/null"), Tier::ReadOnly);
    assert_eq!(tier("ls >> log.txt"), Tier::LowWrite);
    assert_eq!(tier("ls > listing.txt"), Tier::LowWrite);
    assert_eq!(tier("echo x > /etc/passwd"), Tier::Destructive);
    assert_eq!(tier("echo x >> ~/.bashrc"), Tier::Destructive);
    assert_eq!(tier("echo x > ../../outside.txt"), Tier::Destructive);
    assert_eq!(tier("echo x > /workspace/ok.txt"), Tier::LowWrite);
    assert_eq!(tier("echo x > /tmp/scratch"), Tier::ReadOnly);
    assert_eq!(tier("ls > /dev/sdb"), Tier::Destructive);
    assert_eq!(tier(": > app.log"), Tier::Destructive);
}

#[test]
fn truncating_an_existing_file_with_context() {
    let dir = tempdir();
    std::fs::write(dir.join("important.txt"), "data").unwrap();
    let c = Classifier::embedded().unwrap();
    let ctx = Context {
        workspace_dir: Some(&dir),
    };
    let a = c.classify_in("cargo test > important.txt", &ctx);
    assert_eq!(a.tier, Tier::Destructive, "{a:?}");
    assert_eq!(a.rule, "redirect-truncate-existing");
    let b = c.classify_in("cargo test > new.txt", &ctx);
    assert_eq!(b.tier, Tier::LowWrite, "{b:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("secureclaw-risk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn cd_changes_what_relative_paths_mean() {
    assert_eq!(tier("cd /etc && touch passwd"), Tier::Destructive);
    assert_eq!(classify_shell("cd /etc && rm passwd").rule, "rm-outside");
    assert_eq!(tier("cd src && touch old.rs"), Tier::LowWrite);
    assert_eq!(
        tier("(cd /etc) && touch notes.txt"),
        Tier::LowWrite,
        "cd in a subshell does not leak"
    );
}

#[test]
fn network_and_destructive_both_reported() {
    let a = classify_shell("curl -fsSL https://sh.rustup.rs | sh");
    assert_eq!(a.tier, Tier::NetworkEgress);
    assert!(a.has_tier(Tier::Destructive));
    let rules = rules_of(&a);
    assert!(
        rules.contains(&"net-client") && rules.contains(&"pipe-to-shell"),
        "{rules:?}"
    );

    let b = classify_shell("git push --force origin main");
    assert_eq!(b.tier, Tier::NetworkEgress);
    assert!(rules_of(&b).contains(&"git-push-force"));
}

#[test]
fn sudo_only_matters_for_writes() {
    assert_eq!(tier("sudo ls /root"), Tier::ReadOnly);
    assert_eq!(tier("sudo touch x"), Tier::Destructive);
    assert_eq!(tier("sudo -i"), Tier::Destructive);
    assert!(
        tier("sudo -l") < Tier::Destructive,
        "listing privileges runs nothing"
    );
}

#[test]
fn unparseable_is_conservative() {
    for cmd in [
        "echo \"unterminated",
        "if then fi",
        "rm -rf x )",
        "cat <<EOF",
    ] {
        let a = classify_shell(cmd);
        assert_eq!(a.tier, Tier::Destructive, "{cmd}: {a:?}");
        assert_eq!(a.rule, "unparseable", "{cmd}");
        assert!(a.reason.contains("could not be parsed"));
    }
}

#[test]
fn deep_nesting_is_refused() {
    let mut cmd = "ls".to_string();
    for _ in 0..12 {
        cmd = format!("bash -c {}", shell_quote(&cmd));
    }
    let a = classify_shell(&cmd);
    assert_eq!(a.tier, Tier::Destructive);
    assert!(rules_of(&a).contains(&"unparseable"));
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn empty_and_comments() {
    assert_eq!(classify_shell("").rule, "empty");
    assert_eq!(tier("   "), Tier::ReadOnly);
    assert_eq!(tier("# just a comment"), Tier::ReadOnly);
    assert_eq!(tier("FOO=bar"), Tier::ReadOnly);
}

#[test]
fn unknown_programs_are_never_read_only() {
    assert_eq!(classify_shell("./frobnicate --all").rule, "default");
    assert_eq!(tier("./frobnicate --all"), Tier::LowWrite);
}

#[test]
fn path_writes() {
    assert_eq!(classify_path_write("src/lib.rs").tier, Tier::LowWrite);
    assert_eq!(
        classify_path_write("/workspace/src/lib.rs").tier,
        Tier::LowWrite
    );
    assert_eq!(classify_path_write("/etc/passwd").tier, Tier::Destructive);
    assert_eq!(classify_path_write("../x").tier, Tier::Destructive);
    assert_eq!(classify_path_write("/dev/sda").tier, Tier::Destructive);
    assert_eq!(
        classify_path_write("it's $(weird).txt").tier,
        Tier::LowWrite
    );
}

#[test]
fn never_panics_on_garbage() {
    for cmd in [
        "((((", "$(", "`", "'", "\\", "<<<", "&&", "|", ";;", "${", "$((1+", "\u{0}", "a\nb\nc",
    ] {
        let _ = classify_shell(cmd);
    }
}

// ----- rules file validation -----------------------------------------------------------------

fn with_rule(extra: &str) -> Result<Classifier, RulesError> {
    Classifier::from_rules(&format!("{EMBEDDED_RULES}\n{extra}"))
}

#[test]
fn bad_toml_is_a_typed_error() {
    assert!(matches!(
        Classifier::from_rules("version = "),
        Err(RulesError::Syntax(_))
    ));
    assert!(matches!(
        Classifier::from_rules("version = 1\nworkspace = \"/w\"\nbogus = 3"),
        Err(RulesError::Syntax(_))
    ));
}

#[test]
fn bad_rules_are_refused() {
    let dup =
        "[[rule]]\nid = \"rm-recursive\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"rm\"]";
    assert!(matches!(with_rule(dup), Err(RulesError::DuplicateId(id)) if id == "rm-recursive"));

    let tier = "[[rule]]\nid = \"t\"\ntier = \"dangerous\"\nreason = \"x\"\ncommand = [\"rm\"]";
    assert!(matches!(
        with_rule(tier),
        Err(RulesError::UnknownTier { .. })
    ));

    let nocond = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\nflags = [\"-r\"]";
    assert!(matches!(with_rule(nocond), Err(RulesError::NoCondition(_))));

    let class = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"rm\"]\narg_class = [\"elsewhere\"]";
    assert!(matches!(
        with_rule(class),
        Err(RulesError::UnknownArgClass { .. })
    ));

    let glob = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"rm\"]\nargs = [\"[\"]";
    assert!(matches!(
        with_rule(glob),
        Err(RulesError::BadPattern { .. })
    ));

    let flag = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"rm\"]\nflags = [\"r\"]";
    assert!(matches!(with_rule(flag), Err(RulesError::BadFlag { .. })));

    let reason = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \" \"\ncommand = [\"rm\"]";
    assert!(matches!(with_rule(reason), Err(RulesError::EmptyReason(_))));

    let builtin =
        "[[rule]]\nid = \"mystery\"\nbuiltin = true\ntier = \"low_write\"\nreason = \"x\"";
    assert!(matches!(
        with_rule(builtin),
        Err(RulesError::UnknownBuiltin(_))
    ));

    let unknown_field =
        "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncomand = [\"rm\"]";
    assert!(matches!(
        with_rule(unknown_field),
        Err(RulesError::Syntax(_))
    ));
    let stdin = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"tee\"]\nstdin = [\"socket\"]";
    assert!(matches!(
        with_rule(stdin),
        Err(RulesError::UnknownStdin { .. })
    ));

    let action = "[[rule]]\nid = \"t\"\ntier = \"read_only\"\nreason = \"x\"\ncommand = [\"git\"]\naction = [\"list\"]";
    assert!(matches!(
        with_rule(action),
        Err(RulesError::ActionWithoutSubcommand(_))
    ));

    let not_args = "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\ncommand = [\"rm\"]\nnot_args = [\"[\"]";
    assert!(matches!(
        with_rule(not_args),
        Err(RulesError::BadPattern { .. })
    ));

    let no_options = "[[option_code]]\nnames = [\"frob\"]\noptions = []";
    assert!(matches!(
        with_rule(no_options),
        Err(RulesError::NoCodeOptions { .. })
    ));

    let bad_key = "[[option_code]]\nnames = [\"frob\"]\noptions = [\"-c\"]\nkeys = [\"[\"]";
    assert!(matches!(
        with_rule(bad_key),
        Err(RulesError::BadKeyPattern { .. })
    ));

    let exclusive_only =
        "[[rule]]\nid = \"t\"\ntier = \"low_write\"\nreason = \"x\"\nexclusive = true";
    assert!(matches!(
        with_rule(exclusive_only),
        Err(RulesError::NoCondition(_))
    ));
}

#[test]
fn missing_builtin_is_refused() {
    let without =
        EMBEDDED_RULES.replace("id = \"pipe-to-shell\"", "id = \"pipe-to-shell-renamed\"");
    let err = Classifier::from_rules(&without).unwrap_err();
    // The renamed rule is itself an unknown builtin; either way the file is refused.
    assert!(
        matches!(
            err,
            RulesError::UnknownBuiltin(_) | RulesError::MissingBuiltin(_)
        ),
        "{err}"
    );
}

#[test]
fn custom_rules_are_used() {
    let text = r#"
version = 1
workspace = "/w"
[[rule]]
id = "unparseable"
builtin = true
tier = "destructive"
reason = "cannot parse"
[[rule]]
id = "empty"
builtin = true
tier = "read_only"
reason = "nothing"
[[rule]]
id = "default"
builtin = true
tier = "low_write"
reason = "unknown"
[[rule]]
id = "dynamic-command"
builtin = true
tier = "destructive"
reason = "dyn"
[[rule]]
id = "dynamic-shell-code"
builtin = true
tier = "destructive"
reason = "dyn code"
[[rule]]
id = "generated-code"
builtin = true
tier = "low_write"
reason = "gen"
[[rule]]
id = "pipe-to-shell"
builtin = true
tier = "destructive"
reason = "pipe"
[[rule]]
id = "elevated-write"
builtin = true
tier = "destructive"
reason = "root"
[[rule]]
id = "recursive-function"
builtin = true
tier = "destructive"
reason = "bomb"
[[rule]]
id = "run-script"
builtin = true
tier = "low_write"
reason = "script"
[[rule]]
id = "help-query"
builtin = true
tier = "read_only"
reason = "help"
[[rule]]
id = "frob-danger"
tier = "destructive"
reason = "frob with --all is dangerous"
command = ["frob"]
flags = ["--all"]
"#;
    let c = Classifier::from_rules(text).unwrap();
    assert_eq!(c.classify("frob --all").rule, "frob-danger");
    assert_eq!(c.classify("frob").rule, "default");
    assert_eq!(
        c.classify("ls").tier,
        Tier::LowWrite,
        "no read-only rules in this file"
    );
}

#[test]
fn second_round_red_team() {
    for cmd in [
        "a=rm; $a -rf x",
        "printf 'rm -rf x' | bash",
        "perl -e 'unlink glob \"*\"'",
        "mv important.txt /dev/null",
        "tar -xf evil.tar -C /",
        "git rm -rf .",
        "trap 'rm -rf /tmp/x' EXIT",
        "awk 'BEGIN{system(\"rm -rf x\")}'",
        "exec rm -rf x",
        "builtin eval \"rm -rf x\"",
        "cat > ~/.ssh/config <<< 'Host x'",
    ] {
        assert!(
            classify_shell(cmd).has_tier(Tier::Destructive),
            "{cmd}: {:?}",
            classify_shell(cmd)
        );
    }
    assert!(classify_shell("docker run --rm -v /:/host alpine ls").has_tier(Tier::Destructive));
    assert_eq!(
        tier("node -e 'console.log(1)'"),
        Tier::LowWrite,
        "inline code is never read-only"
    );
}

/// A setuid/setgid file, a file capability or a device node left in the workspace hands root to
/// any local user: every spelling is at least destructive, and the harmless modes are not.
#[test]
fn privilege_raising_files_are_destructive() {
    for cmd in [
        "chmod 4755 ./rootsh",
        "chmod 04755 ./rootsh",
        "chmod 6755 ./rootsh",
        "chmod 2755 dir",
        "chmod u+s ./rootsh",
        "chmod +s ./rootsh",
        "chmod g+s ./x",
        "chmod ug+rws ./x",
        "chmod u=rwxs ./x",
        "cp /bin/sh ./rootsh && chmod 4755 ./rootsh",
        "bash -c 'chmod u+s x'",
        "install -m 4755 a b",
        "install -m4755 a b",
        "install --mode=4755 a b",
        "setcap cap_setuid+ep ./x",
        "setfattr -n security.capability -v 0x01 ./x",
        "mknod ./mem c 1 1",
        "mknod ./sda b 8 0",
    ] {
        let a = classify_shell(cmd);
        assert!(
            a.tier >= Tier::Destructive,
            "{cmd}: {:?} {:?}",
            a.tier,
            rules_of(&a)
        );
    }
    for cmd in [
        "chmod 755 x",
        "chmod 1777 scratch",
        "chmod a+rx x",
        "chmod +x x",
        "chmod 644 s",
    ] {
        assert_eq!(tier(cmd), Tier::LowWrite, "{cmd}");
    }
}

fn assert_destructive(cmds: &[&str]) {
    for cmd in cmds {
        let a = classify_shell(cmd);
        assert!(
            a.has_tier(Tier::Destructive),
            "{cmd}: {:?} {:?}",
            a.tier,
            rules_of(&a)
        );
    }
}

fn assert_tier(cases: &[(&str, Tier)]) {
    for (cmd, want) in cases {
        let a = classify_shell(cmd);
        assert_eq!(a.tier, *want, "{cmd}: {:?}", rules_of(&a));
    }
}

/// Deleting, emptying, force-overwriting and discarding uncommitted changes destroy data
/// without any `rm -r`: each spelling is destructive, and the modifying look-alikes are not.
#[test]
fn destruction_without_rm() {
    assert_destructive(&[
        "unlink app.sock",
        "rm notes.txt",
        "cp /dev/null app.log",
        "install /dev/null src/gen.rs",
        "truncate -s 0 app.log",
        "shred -u key.pem",
        ": > out.txt",
        "cat /dev/null > app.log",
        "echo > app.log",
        "printf '' > app.log",
        "tee data.csv < /dev/null",
        "dd of=data.bin if=/dev/zero count=1",
        "sed -i d notes.txt",
        "sed -i '1,$d' notes.txt",
        "sed -i.bak '/.*/d' notes.txt",
        "sed -ni 's/a/b/' notes.txt",
        "perl -i -ne '' config.yaml",
        "perl -ni -e 's/a/b/' config.yaml",
        "mv -f new.db data.db",
        "mv --force a b",
        "git checkout -- .",
        "git checkout HEAD -- src/lib.rs",
        "git restore src/lib.rs",
        "git restore --worktree src/",
        "git restore --staged --worktree src/",
        "git switch --discard-changes main",
        "git reset --hard",
        "git clean -fdx",
        "git stash drop",
        "git stash clear",
        "git branch -D old",
        "find . -name '*.o' -delete",
        "rsync -a --delete a/ b/",
        "vi -c ':%d|wq' notes.txt",
        "vim +'%d|wq' notes.txt",
        "echo 'rm -rf x' | at now",
    ]);
    assert_tier(&[
        ("rmdir build/empty", Tier::LowWrite),
        ("sed -i '/^#/d' config.ini", Tier::LowWrite),
        ("sed -n -i '/keep/p' notes.txt", Tier::LowWrite),
        ("perl -pi -e 's/a/b/' src/lib.rs", Tier::LowWrite),
        ("perl -ni -e 'print if /x/' notes.txt", Tier::LowWrite),
        ("mv a.rs b.rs", Tier::LowWrite),
        ("tee -a log.txt < /dev/null", Tier::LowWrite),
        ("echo hi > greeting.txt", Tier::LowWrite),
        ("git checkout main", Tier::LowWrite),
        ("git checkout -b feature", Tier::LowWrite),
        ("git restore --staged src/lib.rs", Tier::LowWrite),
        ("git switch main", Tier::LowWrite),
        ("git stash", Tier::LowWrite),
        ("vim +10 notes.txt", Tier::LowWrite),
    ]);
}

/// Tools that run another command through an option or an environment variable: the inner
/// command is analysed (so its own tier shows, network included), and a value only known at
/// run time is dynamic code.
#[test]
fn commands_hidden_in_options() {
    assert_destructive(&[
        "tar -xf a.tar --to-command='rm -rf src'",
        "tar --to-command 'rm -rf src' -xf a.tar",
        "tar -cf /dev/null . --checkpoint=1 --checkpoint-action=exec='rm -rf src'",
        "tar -I 'rm -rf src' -xf a.tar",
        "tar --use-compress-program='rm -rf src' -xf a.tar",
        "vim -c ':!rm -rf src' -c ':q!'",
        "vim '+:!rm -rf src'",
        "git -c core.pager='rm -rf src' log",
        "git -c core.fsmonitor='rm -rf src' status",
        "git -c CORE.PAGER='rm -rf src' log",
        "git -c alias.x='!rm -rf src' x",
        "git -c core.hooksPath=/tmp/hooks commit -m x",
        "git -c core.pager=\"$P\" log",
        "GIT_PAGER='rm -rf src' git log",
        "LESSOPEN='|rm -rf src %s' less README.md",
        "export PAGER='rm -rf src'",
        "env EDITOR='rm -rf src' git commit",
        "awk 'BEGIN{system(\"rm -rf src\")}'",
        "man -P 'rm -rf src' ls",
        "man --pager='rm -rf src' ls",
        "env -S 'rm -rf src'",
        "zip out.zip README.md -T -TT 'rm -rf src #'",
        "sed -n '1e rm -rf src' README.md",
        "sed 's/.*/rm -rf src/e' list.txt",
        "make -f <(echo 'all:;rm -rf src')",
        "echo 'all:;rm -rf src' | make -f -",
        "make --eval='all:;rm -rf src'",
        "flock /tmp/l -c 'rm -rf src'",
        "script -qc 'rm -rf src' /dev/null",
        "busybox rm -rf src",
        "hyperfine 'rm -rf src'",
        "strace -f -o t.txt rm -rf target",
        "timeout -s KILL 5 rm -rf target",
        "nohup rm -rf logs &",
        "watch -n 5 rm -f tmp/lock",
        "find . -execdir rm {} \\;",
        "ls | xargs -I{} rm -rf {}",
    ]);
    for cmd in [
        "ssh -o ProxyCommand='rm -rf src' host",
        "ssh -oProxyCommand='rm -rf src' host",
        "ssh -o 'proxycommand rm -rf src' host",
        "scp -S 'rm -rf src' a host:b",
        "rsync -e 'sh -c \"rm -rf src\"' x:/a b",
        "rsync -avze 'rm -rf src' a host:b",
        "git -c core.sshCommand='rm -rf src' fetch",
        "GIT_SSH_COMMAND='rm -rf src' git pull",
        "git ls-remote --upload-pack='rm -rf src' origin",
        "git clone --upload-pack='rm -rf src' host:repo",
    ] {
        let a = classify_shell(cmd);
        assert!(
            a.tier == Tier::NetworkEgress && a.has_tier(Tier::Destructive),
            "{cmd}: {:?} {:?}",
            a.tier,
            rules_of(&a)
        );
    }
    // The inner command's own tier shows through: a download in a pager is network egress.
    assert_eq!(
        tier("git -c core.pager='curl -s http://x' log"),
        Tier::NetworkEgress
    );
    // Options that carry no command leave the tool's own tier.
    assert_tier(&[
        ("git -c user.name=me log", Tier::ReadOnly),
        ("tar --checkpoint-action=dot -xf a.tar", Tier::LowWrite),
        ("tar -xzf a.tar.gz", Tier::LowWrite),
        ("GIT_AUTHOR_NAME=me git log", Tier::ReadOnly),
        ("sed 's/name/value/g' f", Tier::ReadOnly),
    ]);
}

/// `--help`/`--version` before any operand only prints; after an operand it may be an argument
/// of a script or a package the tool runs, so the tool's own rules apply.
#[test]
fn help_and_dry_runs_are_read_only() {
    assert_tier(&[
        ("rm --help", Tier::ReadOnly),
        ("shred --help", Tier::ReadOnly),
        ("rm -rf --help", Tier::ReadOnly),
        ("tar --version", Tier::ReadOnly),
        ("sudo --help", Tier::ReadOnly),
        ("git push --help", Tier::ReadOnly),
        ("docker run --help", Tier::ReadOnly),
        ("npm install --help", Tier::ReadOnly),
        ("git stash list", Tier::ReadOnly),
        ("git stash show -p", Tier::ReadOnly),
        ("git worktree list", Tier::ReadOnly),
        ("git branch", Tier::ReadOnly),
        ("git tag", Tier::ReadOnly),
        ("git clean -n", Tier::ReadOnly),
        ("git clean -fdn", Tier::ReadOnly),
        ("git clean --dry-run -x", Tier::ReadOnly),
        ("git add -n .", Tier::ReadOnly),
        ("git commit --dry-run", Tier::ReadOnly),
        ("rsync -avn --delete a/ b/", Tier::ReadOnly),
        ("rsync -a --dry-run --delete a/ b/", Tier::ReadOnly),
        ("docker system df", Tier::ReadOnly),
        ("docker image ls", Tier::ReadOnly),
        ("docker compose ps", Tier::ReadOnly),
        ("make -n install", Tier::ReadOnly),
        ("apt-get -s install nginx", Tier::ReadOnly),
        ("shellcheck scripts/*.sh", Tier::ReadOnly),
        ("tar -tzf a.tgz", Tier::ReadOnly),
        ("kubectl version --client", Tier::ReadOnly),
        // Dry runs against a cluster still talk to it.
        (
            "kubectl apply -f x.yaml --dry-run=client",
            Tier::NetworkEgress,
        ),
        ("rsync -an --delete a/ host:b/", Tier::NetworkEgress),
        // Not a help query: an operand comes first, or --help is after `--`.
        ("python3 app.py --help", Tier::LowWrite),
        ("./cleanup.sh --help", Tier::LowWrite),
        ("frobnicate --version", Tier::LowWrite),
        ("bash deploy.sh --help", Tier::LowWrite),
        ("cargo run -- --help", Tier::LowWrite),
        ("npx cowsay --help", Tier::NetworkEgress),
        ("docker run img --help", Tier::NetworkEgress),
        ("git commit -n -m x", Tier::LowWrite),
        ("git branch feature", Tier::LowWrite),
        ("git stash push -m list", Tier::LowWrite),
    ]);
    for cmd in [
        "rm -rf build --help",
        "rm -- --help",
        "git -c alias.x='!rm -rf x' x --help",
        "make -n -f <(echo 'all:;+rm -rf x')",
        "kubectl apply -f x.yaml --dry-run=none",
        "docker system prune -af",
        "rsync -a --delete a/ host:b/",
    ] {
        assert!(
            classify_shell(cmd).has_tier(Tier::Destructive),
            "{cmd}: {:?}",
            rules_of(&classify_shell(cmd))
        );
    }
}
