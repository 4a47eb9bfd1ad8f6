//! Inputs end to end through the real binary: values from a file, stdin and the environment;
//! secret inputs kept out of everything recorded; and values reaching `shell:` commands as one
//! literal word each, whatever they contain.

use crate::common;
use common::stderr;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::secureclaw as bin;

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Self {
        let ws = Ws {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(ws.work()).unwrap();
        ws
    }
    fn work(&self) -> PathBuf {
        self.dir.path().join("ws")
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn run(&self, wf: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = bin();
        cmd.arg("run")
            .arg(wf)
            .arg("-w")
            .arg(self.work())
            .args(["--sandbox", "host", "-y"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(pipe);
        child.wait_with_output().unwrap()
    }
    fn cli(&self, args: &[&str]) -> String {
        let out = bin()
            .args(args)
            .arg("--state-dir")
            .arg(self.work().join(".secureclaw"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.work().join(rel)).unwrap()
    }
}

const ARGS: &str = r#"
version: 1
name: args
inputs:
  v: { type: string }
steps:
  - id: s
    shell: printf '[%s]' {{ inputs.v }} > args.txt
"#;

#[test]
fn shell_injection_through_inputs_arrives_as_one_literal_argument() {
    let ws = Ws::new();
    let wf = ws.file("args.yaml", ARGS);
    let payloads = [
        "x; touch pwned",
        "$(touch pwned)",
        "`touch pwned`",
        "a\ntouch pwned",
        "a && touch pwned",
        "a || touch pwned",
        "it's \"quoted\"; touch pwned",
        "$(touch${IFS}pwned)",
        "a$IFS$9b",
        "x | touch pwned",
        "> pwned",
        "*",
        "",
        "  two  words  ",
        "-n",
    ];
    for p in payloads {
        let out = ws.run(&wf, &["-i", &format!("v={p}")], None, &[]);
        assert!(out.status.success(), "{p:?}: {}", stderr(&out));
        assert_eq!(ws.read("args.txt"), format!("[{p}]"), "{p:?}");
        assert!(!ws.work().join("pwned").exists(), "{p:?} ran a command");
    }
}

#[test]
fn raw_opts_out_and_words_splits_a_list_into_quoted_words() {
    let ws = Ws::new();
    let wf = ws.file(
        "words.yaml",
        r#"
version: 1
name: words
inputs:
  v: { type: string }
  files: { type: array, default: ["a b", "c;touch pwned"] }
steps:
  - id: list
    shell: printf '%s\n' one 'two three' '$(touch pwned)'
  - id: split
    needs: [list]
    shell: printf '[%s]' {{ steps.list.output | words }} {{ inputs.files | words }} > words.txt
  - id: raw
    shell: "{{ inputs.v | raw }} > raw.txt"
"#,
    );
    let out = ws.run(&wf, &["-i", "v=echo one; echo two"], None, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ws.read("words.txt"),
        "[one][two][three][$(touch][pwned)][a b][c;touch pwned]"
    );
    assert_eq!(ws.read("raw.txt"), "two\n");
    assert!(!ws.work().join("pwned").exists());
}

const ECHO: &str = r#"
version: 1
name: sources
inputs:
  who: { type: string }
  days: { type: integer, default: 1 }
steps:
  - id: w
    write: { path: got.txt, content: "{{ inputs.who }}/{{ inputs.days }}" }
"#;

/// Arguments, stdin, environment, and the value the step must see.
type SourceCase<'a> = (
    Vec<String>,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn inputs_come_from_a_file_stdin_or_the_environment() {
    let ws = Ws::new();
    let wf = ws.file("echo.yaml", ECHO);
    let yaml = ws.file("in.yaml", "who: from yaml\ndays: 7\n");
    let json = ws.file("in.json", r#"{"who": "from json", "days": "8"}"#);
    let cases: Vec<SourceCase<'_>> = vec![
        (
            vec!["--input-file".into(), yaml.display().to_string()],
            None,
            vec![],
            "from yaml/7",
        ),
        (
            vec!["--input-file".into(), json.display().to_string()],
            None,
            vec![],
            "from json/8",
        ),
        (
            vec![
                "--input-file".into(),
                yaml.display().to_string(),
                "-i".into(),
                "days=9".into(),
            ],
            None,
            vec![],
            "from yaml/9",
        ),
        (
            vec!["--input-file".into(), "-".into()],
            Some("who: piped\n"),
            vec![],
            "piped/1",
        ),
        (
            vec!["-i".into(), "who=@-".into()],
            Some("line one\nline two\n"),
            vec![],
            "line one\nline two/1",
        ),
        (
            vec!["-i".into(), "who=@env:WHO_VAR".into()],
            None,
            vec![("WHO_VAR", "from env")],
            "from env/1",
        ),
        (
            vec!["-i".into(), "who=@@literal".into()],
            None,
            vec![],
            "@literal/1",
        ),
    ];
    for (args, stdin, env, expect) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ws.run(&wf, &args, stdin, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(ws.read("got.txt"), expect, "{args:?}");
    }
    for (args, env, expect) in [
        (
            vec!["-i", "who=@env:NOT_SET_ANYWHERE"],
            vec![],
            "NOT_SET_ANYWHERE",
        ),
        (vec!["--input-file", "-", "-i", "who=@-"], vec![], "stdin"),
        (
            vec!["-i", "who=x", "-i", "dayz=1"],
            vec![],
            "did you mean `days`",
        ),
    ] {
        let out = ws.run(&wf, &args, Some("who: x\n"), &env);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
}

const SECRET: &str = "tok-'3n\"-s3cr3t value";

#[test]
fn secret_inputs_never_reach_records_show_events_or_the_ledger() {
    let ws = Ws::new();
    let wf = ws.file(
        "secret.yaml",
        r#"
version: 1
name: secret
inputs:
  token: { type: string, secret: true }
  plain: { type: string, default: visible-value }
steps:
  - id: use
    shell: echo "token is" {{ inputs.token }} {{ inputs.plain }}; echo {{ inputs.token }} >&2
  - id: keep
    needs: [use]
    write: { path: token.txt, content: "{{ inputs.token }}" }
  - id: fail
    needs: [keep]
    shell: echo {{ inputs.token }} >&2; exit 3
"#,
    );
    let out = ws.run(
        &wf,
        &["-i", "token=@env:THE_TOKEN", "--json"],
        None,
        &[("THE_TOKEN", SECRET)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The step really had the value.
    assert_eq!(ws.read("token.txt"), SECRET);
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut seen = vec![("events", events), ("stderr", stderr(&out))];
    seen.push(("show --json", ws.cli(&["show", "last", "--json"])));
    seen.push(("show", ws.cli(&["show", "last"])));
    seen.push(("runs", ws.cli(&["runs"])));
    let export = ws.dir.path().join("ledger.jsonl");
    ws.cli(&["ledger", "export", "-o", export.to_str().unwrap()]);
    seen.push(("ledger export", std::fs::read_to_string(&export).unwrap()));
    let quoted = SECRET.replace('\'', "'\\''");
    for (what, text) in &seen {
        for needle in [SECRET, "s3cr3t", quoted.as_str()] {
            assert!(!text.contains(needle), "{what} shows the secret: {text}");
        }
    }
    let show = &seen[2].1;
    assert!(show.contains("[secret:token]"), "{show}");
    assert!(
        show.contains("visible-value"),
        "non-secret inputs stay: {show}"
    );
    // Nothing in the state dir holds it in clear either.
    for path in common::walk(&ws.work().join(".secureclaw")) {
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(6).any(|w| w == b"s3cr3t"),
                "{} holds the secret",
                path.display()
            );
        }
    }
}

/// Templates that build gigabytes from a few instructions end with the limit error, under an
/// address-space ceiling the old engine blew through (it grew to 6 GB and aborted).
#[test]
fn template_memory_bombs_fail_fast_under_a_memory_ceiling() {
    let ws = Ws::new();
    let bombs = [
        "{% set a = 'x' * 100000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d | length }}",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "{{ (['x' * 1000000] * 100000) | join | length }}",
        "{{ range(100000) | join('y' * 1000000) | length }}",
        "{% set ns = namespace(l=[inputs.v * 1000000]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | join | length }}",
        "{% for i in range(100000) %}{% for j in range(100) %}{{ inputs.v * 100000 }}{% endfor %}{% endfor %}",
        "{{ ('x' * 1000000) | replace('x', 'y' * 100000) | length }}",
    ];
    for (i, bomb) in bombs.iter().enumerate() {
        for field in ["shell", "write"] {
            let action = if field == "shell" {
                format!("shell: \"echo {bomb}\"")
            } else {
                format!("write: {{ path: out.txt, content: \"{bomb}\" }}")
            };
            let wf = ws.file(
                "bomb.yaml",
                &format!("version: 1\nname: bomb\ninputs:\n  v: {{ type: string, default: z }}\nsteps:\n  - id: b\n    {action}\n"),
            );
            // Validation renders every template once (with placeholders) to find references.
            let check = std::process::Command::new("prlimit")
                .arg("--as=2147483648")
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_secureclaw"))
                .arg("validate")
                .arg(&wf)
                .output()
                .unwrap();
            assert!(
                matches!(check.status.code(), Some(0 | 1)),
                "validate, bomb {i} in {field}: {:?} {}",
                check.status,
                stderr(&check)
            );
            let mut cmd = std::process::Command::new("prlimit");
            cmd.arg("--as=2147483648")
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_secureclaw"))
                .arg("run")
                .arg(&wf)
                .arg("-w")
                .arg(ws.work())
                .args(["--sandbox", "host", "-y", "-j", "1"]);
            common::with_vault_env(&mut cmd, common::TEST_PASSPHRASE);
            let out = cmd.output().unwrap();
            let err = stderr(&out);
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "bomb {i} in {field}: {:?} {err}",
                out.status
            );
            assert!(err.contains("MiB of text"), "bomb {i} in {field}: {err}");
            assert!(!ws.work().join("out.txt").exists(), "bomb {i} in {field}");
        }
    }
}
