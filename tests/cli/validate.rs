//! `secureclaw validate` end to end: every example passes, and every file in `tests/broken/`
//! prints exactly the located errors its `# expect:` lines name.

use crate::common;

use std::path::{Path, PathBuf};

use common::secureclaw as bin;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    common::walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect()
}

#[test]
fn examples_and_project_workflows_validate() {
    let mut files = yaml_files(&root().join("examples"));
    files.extend(yaml_files(&root().join("workflows")));
    assert!(
        files.len() >= 4,
        "expected examples and workflows, found {files:?}"
    );
    let out = bin().arg("validate").args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_workflows_report_their_located_errors() {
    let files = yaml_files(&root().join("tests/broken"));
    assert!(
        files.len() >= 20,
        "the broken corpus shrank: {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        let hints: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-hint: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = bin().arg("validate").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, expected 1",
                file.display(),
                out.status.code()
            ));
        }
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
        for e in &expects {
            // `L:C: message` must match `FILE:L:C: error: message…`; a bare message matches anywhere.
            let found = match e.split_once(": ") {
                Some((pos, msg))
                    if pos.contains(':') && pos.chars().all(|c| c.is_ascii_digit() || c == ':') =>
                {
                    errors.iter().any(|l| {
                        l.starts_with(&format!("{}:{pos}: error: ", file.display()))
                            && l.contains(msg)
                    })
                }
                _ => errors.iter().any(|l| l.contains(e)),
            };
            if !found {
                failures.push(format!(
                    "{}: expected `{e}`\n--- got ---\n{stderr}",
                    file.display()
                ));
            }
        }
        for h in &hints {
            if !stderr.contains(&format!("hint: {h}")) {
                failures.push(format!(
                    "{}: expected hint `{h}`\n--- got ---\n{stderr}",
                    file.display()
                ));
            }
        }
        // Every error line carries a position, and nothing panicked.
        assert!(!stderr.contains("panicked"), "{}: {stderr}", file.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let out = bin()
        .arg("validate")
        .arg(root().join("tests/broken/escaping-paths.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": error: ").count(), 3, "{stderr}");
    assert!(stderr.contains("3 errors found"), "{stderr}");
}

#[test]
fn json_output_is_machine_readable() {
    let out = bin()
        .args(["validate", "--json"])
        .arg(root().join("tests/broken/unknown-key.yaml"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = &v[0]["errors"][0];
    assert_eq!(err["location"]["line"], 7);
    assert_eq!(err["path"], "/steps/0/shel");
    assert_eq!(err["hint"], "did you mean `shell`?");
}

#[test]
fn explain_shows_tier_and_rule() {
    let out = bin()
        .args(["validate", "--explain"])
        .arg(root().join("examples/hello/workflow.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("greet") && stdout.contains("low_write") && stdout.contains("action:write"),
        "{stdout}"
    );
}

#[test]
fn schema_command_prints_the_checked_in_schema() {
    let out = bin().arg("schema").output().unwrap();
    let on_disk = std::fs::read(root().join("schemas/workflow.schema.json")).unwrap();
    assert_eq!(out.stdout, on_disk);
}

/// Every trigger form the format allows validates: the checks refuse mistakes, not features.
#[test]
fn every_valid_trigger_form_validates() {
    let forms = [
        // Short schedule, webhook mapping every required input (an empty pointer is the whole
        // payload), GitHub events.
        "inputs:\n  ref: { type: string }\n  payload: { type: object }\non:\n  webhook:\n    events: [push, pull_request, ping]\n    inputs: { ref: /ref, payload: \"\" }\n",
        // Generic HMAC with its header; a pointer with both escapes.
        "inputs:\n  id: { type: string, default: x }\non:\n  webhook: { preset: hmac, header: X-Signature-256, inputs: { id: \"/a~1b/~0c\" } }\n",
        // Standard Webhooks, no inputs at all.
        "on:\n  webhook: { preset: standard_webhooks }\n",
        // The full schedule form with seconds, a time zone and both policies; watch globs.
        "inputs:\n  days: { type: integer, default: 3 }\non:\n  schedule: { cron: \"30 0 3 * * Mon-Fri\", timezone: Asia/Tokyo, missed: run_once, overlap: true }\n  watch: [\"src/**/*.rs\", \"docs/*.md\", \"{a,b}/*.txt\", Cargo.toml]\n",
        "on:\n  schedule: \"*/5 * * * *\"\n",
    ];
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = forms
        .iter()
        .enumerate()
        .map(|(i, on)| {
            let p = dir.path().join(format!("form-{i}.yaml"));
            std::fs::write(
                &p,
                format!("version: 1\nname: form-{i}\n{on}steps:\n  - id: a\n    shell: \"true\"\n"),
            )
            .unwrap();
            p
        })
        .collect();
    let out = bin().arg("validate").args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI checks `on:` and otherwise ignores it: the triggered example runs now, on the
/// default native sandbox, with its inputs' defaults and a given one.
#[test]
fn triggered_example_runs_on_the_native_sandbox() {
    let ws = common::Workspace::new(&["--sandbox", "native"]);
    let out = ws.run(
        &root().join("examples/triggered/workflow.yaml"),
        &["--input", "commit=abc123"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = ws.show();
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert_eq!(
        common::step(&rec, "show")["output"],
        "refs/heads/main abc123\n"
    );
}

/// One diagnostic as printed: its `file:line:col: error: message` line and the lines under it.
struct Printed<'a> {
    header: &'a str,
    body: Vec<&'a str>,
}

/// Split human `validate` output into its diagnostics.
fn printed_diagnostics(stderr: &str) -> Vec<Printed<'_>> {
    let mut out: Vec<Printed<'_>> = Vec::new();
    for line in stderr.lines() {
        if line.contains(": error: ") {
            out.push(Printed {
                header: line,
                body: Vec::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.body.push(line);
        }
    }
    out
}

/// One expected error: line, column, (part of) its message, (part of) its hint.
type Mistake = (usize, usize, &'static str, &'static str);

/// Workflows as a newcomer writes them, with every mistake each one holds, in file order.
const NEWCOMER_MISTAKES: &[(&str, &[Mistake])] = &[
    (
        "greet.yaml",
        &[
            (8, 24, "unknown template filter `shout`", "known filters"),
            (9, 14, "durations need a unit: `5s`", "write `5s`"),
            (
                11,
                13,
                "step `save` needs unknown step `helo`",
                "did you mean `hello`?",
            ),
            (
                13,
                7,
                "`write` is missing the required key `content`",
                "add `content:`",
            ),
            (
                14,
                7,
                "unknown key `contnet` in `write`",
                "did you mean `content`?",
            ),
        ],
    ),
    (
        "build-and-test.yaml",
        &[
            (
                6,
                12,
                "dependency cycle: `build` needs `test`, `test` needs `build`",
                "a workflow is a DAG",
            ),
            (
                10,
                23,
                "unknown template variable `input`",
                "did you mean `inputs`?",
            ),
            (
                13,
                18,
                "unknown template filter `lenght`",
                "did you mean `length`?",
            ),
            (
                14,
                5,
                "unknown key `retires` in step #3",
                "did you mean `retry`?",
            ),
        ],
    ),
    (
        "cleanup.yaml",
        &[
            (7, 11, "sizes need a unit: `512Mi`", "write `512Mi`"),
            (
                10,
                12,
                "template syntax error: unexpected `}`",
                "check `{{ }}`",
            ),
            (
                12,
                13,
                "step `remove` needs unknown step `find_old`",
                "did you mean `find-old`?",
            ),
            (13, 10, "unknown template test `fancy`", "known tests"),
            (
                15,
                5,
                "unknown key `timout` in step #2",
                "did you mean `timeout`?",
            ),
        ],
    ),
];

/// One `validate` run reports every mistake of a newcomer's workflow, whichever layer finds it,
/// each with the offending source line, a caret line under it and its hint, in file order.
#[test]
fn newcomer_mistakes_are_all_reported_in_one_run_with_snippets() {
    let mut kinds = std::collections::BTreeSet::new();
    for (name, mistakes) in NEWCOMER_MISTAKES {
        let file = root().join("tests/newcomer").join(name);
        let source = std::fs::read_to_string(&file).unwrap();
        let out = bin().arg("validate").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains('\x1b'),
            "no colour when stderr is not a terminal: {stderr}"
        );
        let printed = printed_diagnostics(&stderr);
        assert_eq!(
            printed.len(),
            mistakes.len(),
            "{name}: expected exactly these errors: {mistakes:#?}\n--- got ---\n{stderr}"
        );
        for (p, &(line, column, message, hint)) in printed.iter().zip(mistakes.iter()) {
            let prefix = format!("{}:{line}:{column}: error: ", file.display());
            assert!(
                p.header.starts_with(&prefix) && p.header.contains(message),
                "{name}: expected `{prefix}{message}`, got `{}`\n--- all ---\n{stderr}",
                p.header
            );
            let source_line = source.lines().nth(line - 1).unwrap();
            let shown = p
                .body
                .iter()
                .position(|l| l.starts_with(&format!("{line} |")) && l.ends_with(source_line))
                .unwrap_or_else(|| panic!("{name}:{line}: source line not shown:\n{stderr}"));
            // The caret sits under the reported column of the shown line.
            let caret_line = p.body[shown + 1];
            let gutter = format!("{line} | ").len();
            assert_eq!(
                caret_line.find('^'),
                Some(gutter + column - 1),
                "{name}:{line}:{column}: caret misplaced:\n{}\n{caret_line}",
                p.body[shown]
            );
            assert!(
                p.body
                    .iter()
                    .any(|l| l.contains("hint: ") && l.contains(hint)),
                "{name}:{line}: expected hint `{hint}`:\n{stderr}"
            );
            kinds.insert(
                message
                    .split([':', '`'])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            );
        }
    }
    // Together the files hold each kind of mistake a newcomer makes first.
    for kind in [
        "unknown key",
        "step",
        "unknown template variable",
        "template syntax error",
        "durations need a unit",
        "dependency cycle",
        "unknown template filter",
        "unknown template test",
    ] {
        assert!(
            kinds.contains(kind),
            "no newcomer file shows `{kind}`: {kinds:?}"
        );
    }
}

/// The JSON form of a newcomer's mistakes: every one, with where its offending text ends.
#[test]
fn json_output_reports_every_mistake_with_its_span() {
    let out = bin()
        .args(["validate", "--json"])
        .arg(root().join("tests/newcomer/greet.yaml"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v[0]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 5, "{v:#}");
    let timeout = &errors[1];
    assert_eq!(timeout["path"], "/steps/0/timeout");
    assert_eq!(
        timeout["location"],
        serde_json::json!({"line": 9, "column": 14})
    );
    assert_eq!(timeout["end"], serde_json::json!({"line": 9, "column": 15}));
}

/// With a dependency cycle the templates of the steps on it are still checked, and a step the
/// schema refuses still has its `needs` checked.
#[test]
fn a_cycle_or_a_schema_error_does_not_hide_the_other_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: w\nsteps:\n  - id: a\n    needs: [b]\n    shell: echo {{ steps.nope.output }}\n  - id: b\n    needs: [a, ghost]\n    shel: make\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let headers: Vec<&str> = printed_diagnostics(&stderr)
        .iter()
        .map(|p| p.header)
        .collect();
    let expected = [
        ":5:12: error: dependency cycle",
        ":6:17: error: unknown step `nope` in template",
        ":8:16: error: step `b` needs unknown step `ghost`",
        ":9:5: error: unknown key `shel`",
    ];
    assert_eq!(headers.len(), expected.len(), "{stderr}");
    for (h, e) in headers.iter().zip(expected) {
        assert!(h.contains(e), "expected `{e}` in `{h}`\n{stderr}");
    }
}

/// A port on loopback that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A failed `http` step says why the request failed (the connection was refused), not only
/// that sending it failed.
#[test]
fn http_step_failure_names_the_underlying_cause() {
    let ws = common::Workspace::new(&["--sandbox", "native"]);
    let port = closed_port();
    let wf = ws.workflow(&format!(
        "version: 1\nname: notify\nsteps:\n  - id: ping\n    http: {{ method: GET, url: \"http://hook.test:{port}/ping\" }}\n    network: [\"hook.test:{port}\"]\n"
    ));
    let out = ws.run(&wf, &["--approve", "network_egress"]);
    assert!(!out.status.success());
    let rec = ws.show();
    let step = common::step(&rec, "ping");
    let shown = format!("{}\n{rec}", String::from_utf8_lossy(&out.stderr));
    assert!(
        shown.contains("Connection refused"),
        "the cause is missing:\n{shown}\n{step}"
    );
    // The URL (it may carry a token in its query) is not part of the error.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("error sending request for url"),
        "{shown}"
    );
}

/// `plan` with no provider configured says which variables would configure one, besides the
/// connection failure to the local Ollama it fell back to.
#[test]
fn plan_without_a_provider_names_the_variables_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let out = bin()
        .current_dir(dir.path())
        .args(["plan", "list the files"])
        .env("OLLAMA_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("LLM_PROVIDER")
        .env_remove("LLM_FALLBACK_ORDER")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    for variable in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OLLAMA_BASE_URL"] {
        assert!(
            stderr.contains(variable),
            "`{variable}` not named:\n{stderr}"
        );
    }
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// An input the schema refuses is still declared for the template checks: the one mistake is
/// reported once, not again at every template that uses the input.
#[test]
fn a_refused_input_is_not_reported_again_where_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: w\ninputs:\n  days: { type: integr }\nsteps:\n  - id: a\n    shell: echo {{ inputs.days }} {{ inputs.dayz }}\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let headers: Vec<&str> = printed_diagnostics(&stderr)
        .iter()
        .map(|p| p.header)
        .collect();
    assert_eq!(headers.len(), 2, "{stderr}");
    assert!(
        headers[0].contains(":4:17: error: `type` is \"integr\""),
        "{stderr}"
    );
    assert!(
        headers[1].contains(":7:35: error: input `dayz` is not declared"),
        "{stderr}"
    );
}
