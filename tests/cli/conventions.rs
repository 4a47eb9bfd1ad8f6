//! Conventions every command follows: `--json` failures are one JSON object, an error line says
//! each cause once, passphrase flags appear where a vault is opened, and the commands that read
//! runs find them from where `run` was typed.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{output_text, secureclaw as bin, secureclaw_with_passphrase, stderr, text};

type Ws = common::Workspace;

const HELLO: &str = r#"
version: 1
name: hello
steps:
  - id: greet
    write: { path: greeting.txt, content: "hi\n" }
"#;

/// A workspace with one recorded run.
fn ran() -> (Ws, Output) {
    let ws = Ws::new(&["--sandbox", "host"]);
    let wf = ws.workflow(HELLO);
    let out = ws.run(&wf, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    (ws, out)
}

/// The one JSON error object a `--json` command printed on stdout.
fn json_error(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", output_text(out)));
    assert!(doc["error"]["message"].is_string(), "{doc}");
    assert!(doc["error"]["kind"].is_string(), "{doc}");
    doc
}

#[test]
fn json_commands_report_a_failure_as_one_json_error_object() {
    let (ws, _) = ran();
    let state = ws.path().join(".secureclaw");
    let nowhere = ws.path().join("no-such-dir");

    let wrong = secureclaw_with_passphrase("not the passphrase")
        .args(["runs", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert_eq!(json_error(&wrong)["error"]["kind"], "wrong_passphrase");

    let unknown = bin()
        .args(["show", "no-such-run", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    let doc = json_error(&unknown);
    assert_eq!(doc["error"]["kind"], "run_not_found");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-run")
    );

    let no_vault = bin()
        .args(["show", "last", "--json", "--state-dir"])
        .arg(&nowhere)
        .output()
        .unwrap();
    let doc = json_error(&no_vault);
    assert_eq!(doc["error"]["kind"], "no_vault");
    assert!(
        doc["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("--workspace")
    );

    // Before anything runs: an invalid workflow, with its located errors.
    let bad = ws.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nname: bad\nsteps:\n  - id: a\n    shel: ls\n",
    )
    .unwrap();
    let invalid = bin()
        .arg("run")
        .arg(&bad)
        .args(["--json", "--sandbox", "host", "--workspace"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert_eq!(invalid.status.code(), Some(2));
    let doc = json_error(&invalid);
    assert_eq!(doc["error"]["kind"], "invalid_workflow");
    assert_eq!(doc["error"]["diagnostics"][0]["location"]["line"], 5);

    // The planner refuses before any provider is called.
    let plan = bin()
        .args(["plan", "", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2));
    assert_eq!(json_error(&plan)["error"]["kind"], "invalid");

    // A parked run answered wrongly.
    let gate = bin()
        .args(["resume", "last", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(gate.status.code(), Some(2));
    assert_eq!(json_error(&gate)["error"]["kind"], "not_parked");
}

/// The `error:` line of a failed command, split at `: `; no part may come twice.
fn assert_each_cause_once(out: &Output) {
    let said = stderr(out);
    let line = said
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line: {said}"));
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "`{p}` said twice in: {line}");
    }
}

#[test]
fn an_error_line_says_each_cause_once() {
    let (ws, _) = ran();
    let state = ws.path().join(".secureclaw");
    let wrong = secureclaw_with_passphrase("not the passphrase")
        .args(["show", "last", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        stderr(&wrong).contains("wrong passphrase"),
        "{}",
        stderr(&wrong)
    );
    assert_each_cause_once(&wrong);

    let unknown = bin()
        .args(["logs", "no-such-run", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no-such-run"),
        "{}",
        stderr(&unknown)
    );
    assert_each_cause_once(&unknown);

    // A workspace that is a file: the vault cannot be made in it.
    let file = ws.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad_ws = bin()
        .arg("run")
        .arg(ws.path().join("wf.yaml"))
        .args(["--sandbox", "host", "--workspace"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(bad_ws.status.code(), Some(2));
    assert!(
        stderr(&bad_ws).contains("Not a directory"),
        "{}",
        stderr(&bad_ws)
    );
    assert_each_cause_once(&bad_ws);
}

fn help(command: &str) -> String {
    let out = bin().args([command, "--help"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    text(&out.stdout)
}

#[test]
fn passphrase_flags_are_offered_only_by_commands_that_open_the_vault() {
    for command in [
        "validate",
        "schema",
        "risk",
        "workflows",
        "sandbox",
        "guard",
    ] {
        assert!(
            !help(command).contains("--passphrase"),
            "{command}: {}",
            help(command)
        );
    }
    for command in [
        "run", "plan", "rerun", "watch", "runs", "show", "revert", "diff", "approve", "deny",
        "resume", "retry", "logs", "serve", "unlock",
    ] {
        assert!(
            help(command).contains("--passphrase-file"),
            "{command}: {}",
            help(command)
        );
    }

    // After the subcommand, without the environment variable.
    let (ws, _) = ran();
    let pass_file = ws.path().join("pass");
    std::fs::write(&pass_file, format!("{}\n", common::TEST_PASSPHRASE)).unwrap();
    for args in [
        vec!["runs"],
        vec!["ledger", "verify"],
        vec!["vault", "status"],
    ] {
        let out = bin()
            .env_remove("SECURECLAW_PASSPHRASE")
            .args(&args)
            .arg("--passphrase-file")
            .arg(&pass_file)
            .arg("--state-dir")
            .arg(ws.path().join(".secureclaw"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
}

#[test]
fn runs_are_found_from_where_run_was_typed() {
    let here = tempfile::tempdir().unwrap();
    let ws = here.path().join("elsewhere").join("ws");
    let wf = here.path().join("wf.yaml");
    std::fs::write(&wf, HELLO).unwrap();
    let in_here = |args: &[&str]| bin().current_dir(here.path()).args(args).output().unwrap();
    let out = in_here(&[
        "run",
        "wf.yaml",
        "--sandbox",
        "host",
        "--workspace",
        "elsewhere/ws",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(ws.join("greeting.txt").exists());

    // Without flags, `show` looks in ./.secureclaw and says where else to look.
    let plain = in_here(&["show", "last"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(
        stderr(&plain).contains("--workspace DIR"),
        "{}",
        stderr(&plain)
    );

    // The command `run` printed, typed as it is, works from here.
    let said = stderr(&out);
    let hint = said
        .lines()
        .find_map(|l| l.split("(secureclaw ").nth(1))
        .unwrap_or_else(|| panic!("no follow-up command: {said}"));
    let args = shlex::split(hint.trim_end_matches(')')).unwrap();
    assert_eq!(args[0], "show");
    assert!(args.contains(&"--workspace".to_string()), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shown = in_here(&args);
    assert!(shown.status.success(), "{}", output_text(&shown));
    assert!(
        text(&shown.stdout).contains("greet"),
        "{}",
        output_text(&shown)
    );

    // The other commands that read runs take the same `--workspace`.
    let ws_arg = "elsewhere/ws";
    for args in [
        vec!["show", "last", "--workspace", ws_arg],
        vec!["runs", "--workspace", ws_arg],
        vec!["logs", "last", "--workspace", ws_arg],
        vec!["diff", "last", "--workspace", ws_arg],
        vec!["revert", "last", "--dry-run", "--workspace", ws_arg],
    ] {
        let out = in_here(&args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
    let listed = in_here(&["runs", "-w", ws_arg]);
    assert!(
        text(&listed.stdout).contains("hello"),
        "{}",
        output_text(&listed)
    );
    assert_no_state_in(here.path());
}

/// Nothing was created where the commands were typed.
fn assert_no_state_in(dir: &Path) {
    assert!(!dir.join(".secureclaw").exists());
}

/// The references `docs/threat-model.md` gives as proof: `path/to/file.rs::test_name` (a file of
/// the repository that has a test of that name) and `scripts/NAME.sh` (a script that exists).
fn proof_references(doc: &str) -> (Vec<(String, String)>, Vec<String>) {
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-');
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut tests = Vec::new();
    for (at, _) in doc.match_indices(".rs::") {
        let start = doc[..at]
            .rfind(|c: char| !path_char(c))
            .map_or(0, |i| i + 1);
        let rest = &doc[at + ".rs::".len()..];
        let name: String = rest.chars().take_while(|c| name_char(*c)).collect();
        tests.push((format!("{}.rs", &doc[start..at]), name));
    }
    let mut scripts = Vec::new();
    for (at, _) in doc.match_indices("scripts/") {
        let word: String = doc[at..].chars().take_while(|c| path_char(*c)).collect();
        let word = word.trim_end_matches('.');
        if word.ends_with(".sh") {
            scripts.push(word.to_string());
        }
    }
    (tests, scripts)
}

/// Whether `source` declares `fn name(` under a test attribute (`#[test]`, `#[tokio::test]`...).
fn declares_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    let decl = format!("fn {name}(");
    lines.iter().enumerate().any(|(i, line)| {
        let t = line.trim_start();
        if !(t.starts_with(&decl) || t.starts_with(&format!("async {decl}"))) {
            return false;
        }
        lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
            .any(|l| l.starts_with("#[") && l.contains("test"))
    })
}

/// The cells of a markdown table row, trimmed.
fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// The markdown tables of `doc`: header cells (lowercase) and body rows (each row's raw line).
fn tables(doc: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in doc.lines().chain(std::iter::once("")) {
        if line.trim_start().starts_with('|') {
            block.push(line);
            continue;
        }
        if block.len() >= 2 {
            let header = cells(block[0]).iter().map(|c| c.to_lowercase()).collect();
            out.push((header, block[2..].iter().map(|l| l.to_string()).collect()));
        }
        block.clear();
    }
    out
}

#[test]
fn threat_model_references_name_real_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/threat-model.md")).unwrap();
    let (tests, scripts) = proof_references(&doc);
    assert!(tests.len() >= 50, "only {} test references", tests.len());
    let mut wrong = Vec::new();
    for (file, name) in &tests {
        match std::fs::read_to_string(root.join(file)) {
            Err(e) => wrong.push(format!("{file}::{name}: {e}")),
            Ok(source) if name.is_empty() || !declares_test(&source, name) => {
                wrong.push(format!("{file}::{name}: no test of that name in the file"));
            }
            Ok(_) => {}
        }
    }
    for script in &scripts {
        if !root.join(script).is_file() {
            wrong.push(format!("{script}: no such script"));
        }
    }
    assert!(wrong.is_empty(), "docs/threat-model.md: {wrong:#?}");

    // Every row of a table with a test column proves itself or says it is not proven; the OWASP
    // tables (those with a status column) say covered, partly or not, one row per risk.
    let proven = |row: &str| {
        let script = |w: &str| w.starts_with("scripts/") && w.ends_with(".sh");
        row.contains(".rs::")
            || row.to_lowercase().contains("no test")
            || row.split(['`', ' ']).any(script)
    };
    let mut rows = 0;
    let mut ids = Vec::new();
    for (header, body) in tables(&doc) {
        if !header.iter().any(|h| h == "test" || h == "tests") {
            continue;
        }
        let status = header.iter().position(|h| h == "status");
        for row in body {
            rows += 1;
            assert!(proven(&row), "neither a test nor \"no test\": {row}");
            if let Some(col) = status {
                let row_cells = cells(&row);
                let word = row_cells.get(col).map_or("", String::as_str);
                assert!(
                    ["covered", "partly", "not"].contains(&word),
                    "status {word:?} is not covered, partly or not: {row}"
                );
                ids.push(row_cells[0].clone());
            }
        }
    }
    assert!(rows >= 60, "only {rows} rows in the threat tables");
    for n in 1..=10 {
        for prefix in ["LLM", "ASI"] {
            let id = format!("{prefix}{n:02}");
            assert!(ids.contains(&id), "no row for {id} in {ids:?}");
        }
    }
    for surface in [
        "Sandbox escape",
        "Credential theft",
        "Prompt injection",
        "Unauthorised revert or approval",
        "API data leakage",
        "Supply chain",
        "Running the server in a container",
    ] {
        let heading = |l: &&str| l.starts_with('#') && l.contains(surface);
        assert!(doc.lines().any(|l| heading(&l)), "no section on {surface}");
    }
}
