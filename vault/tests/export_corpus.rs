//! One corpus of tampered ledger exports (vault/tests/export-corpus), made from a real export,
//! run through both verifiers: the Rust one (`verify_export` + `parse_export_head`) and the
//! independent Python one in vault/tools. Both must give the expected verdict, name the same
//! reason and, for a bad line, the same line number.
//!
//! Regenerate (new vault, new key, same cases):
//! `cargo test -p secureclaw-vault --test export_corpus -- --ignored regenerate`

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

use secureclaw_vault::{
    ExportHead, LedgerKey, NewEntry, Vault, VaultError, kind, parse_export_head, verify_export,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize)]
struct Case {
    case: String,
    /// What the case attacks or checks.
    about: String,
    file: String,
    head: Option<String>,
    /// `valid` or `invalid`.
    verdict: String,
    /// The 1-based line both verifiers must name, for a fault in a line.
    line: Option<u64>,
    /// Words both verifiers' messages must contain.
    reason: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export-corpus")
}

fn cases() -> Vec<Case> {
    serde_json::from_slice(&std::fs::read(corpus_dir().join("cases.json")).unwrap()).unwrap()
}

fn key() -> LedgerKey {
    LedgerKey::from_hex(&std::fs::read_to_string(corpus_dir().join("key.hex")).unwrap()).unwrap()
}

/// The Rust verifier's verdict: `Ok(summary)` or `Err(message)` for an integrity failure.
fn rust_verdict(c: &Case) -> Result<String, String> {
    let dir = corpus_dir();
    let head = match &c.head {
        None => None,
        Some(h) => match parse_export_head(&std::fs::read(dir.join(h)).unwrap()) {
            Ok(h) => Some(h),
            Err(VaultError::Ledger(e)) => return Err(e.to_string()),
            Err(other) => panic!("{}: not an integrity verdict: {other}", c.case),
        },
    };
    let f = std::fs::File::open(dir.join(&c.file)).unwrap();
    match verify_export(std::io::BufReader::new(f), &key(), head.as_ref()) {
        Ok(r) => Ok(format!("{} entries", r.entries)),
        Err(VaultError::Ledger(e)) => Err(e.to_string()),
        Err(other) => panic!("{}: not an integrity verdict: {other}", c.case),
    }
}

/// The Python verifier's verdict, from its exit code and output.
fn python_verdict(c: &Case) -> Result<String, String> {
    let dir = corpus_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_ledger_export.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg(dir.join(&c.file))
        .arg(dir.join("key.hex"));
    if let Some(h) = &c.head {
        cmd.arg(dir.join(h));
    }
    let out = cmd
        .output()
        .expect("python3 runs (it is part of the test environment)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(text),
        Some(1) => Err(text),
        other => panic!("{}: python verifier crashed ({other:?}): {text}", c.case),
    }
}

fn check(c: &Case, who: &str, got: Result<String, String>) {
    match (c.verdict.as_str(), got) {
        ("valid", Ok(_)) => {}
        ("invalid", Err(msg)) => {
            assert!(
                msg.contains(&c.reason),
                "{}: the {who} verifier refused it for another reason: {msg:?} (want {:?})",
                c.case,
                c.reason
            );
            if let Some(n) = c.line {
                assert!(
                    msg.contains(&format!("line {n}:")) || msg.contains(&format!("line {n} (")),
                    "{}: the {who} verifier names another line: {msg:?} (want line {n})",
                    c.case
                );
            }
        }
        (want, got) => panic!("{}: {who} verifier said {got:?}, want {want}", c.case),
    }
}

#[test]
fn both_verifiers_give_the_expected_verdict_on_every_case() {
    let all = cases();
    assert!(all.len() >= 25, "the corpus lost cases");
    for c in &all {
        check(c, "Rust", rust_verdict(c));
        check(c, "Python", python_verdict(c));
    }
    // The required classes are all there.
    for needed in [
        "duplicate-entry-key",
        "duplicate-nested-key",
        "unknown-top-field",
        "unknown-nested-field",
        "blank-trailing-line",
        "blank-middle-line",
        "reordered-lines",
        "deleted-middle-line",
        "edited-entry",
        "forged-head-signature",
        "truncated-mid-line",
        "crlf-line-endings",
        "non-utf8-byte",
        "huge-number-seq",
    ] {
        assert!(
            all.iter().any(|c| c.case == needed),
            "missing case {needed}"
        );
    }
}

/// The attack the strict parse closes: the verifier must not read the forged approval that a
/// permissive parser (first key wins) would show, nor accept the line because the last key
/// holds the real, authenticated entry.
#[test]
fn a_duplicated_entry_key_is_refused_although_the_last_one_is_authentic() {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("duplicate-entry-key.jsonl")).unwrap();
    let line = text.lines().nth(2).unwrap();
    assert_eq!(line.matches("\"entry\":").count(), 2);
    let last_wins: serde_json::Value = serde_json::from_str(line).unwrap();
    let valid = std::fs::read_to_string(dir.join("valid.jsonl")).unwrap();
    let real: serde_json::Value = serde_json::from_str(valid.lines().nth(2).unwrap()).unwrap();
    assert_eq!(
        last_wins, real,
        "serde_json alone would see only the real entry"
    );
    let c = cases()
        .into_iter()
        .find(|c| c.case == "duplicate-entry-key")
        .unwrap();
    assert!(rust_verdict(&c).is_err());
    assert!(python_verdict(&c).is_err());
}

// ---- corpus generation ------------------------------------------------------------------

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
#[ignore = "writes vault/tests/export-corpus; run with -- --ignored regenerate"]
fn regenerate() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let vdir = tempfile::tempdir().unwrap();
    let v = Vault::create(vdir.path(), common::PASS, &common::FAST).unwrap();
    let e = |k: &str, run: &str| NewEntry::new("engine", k).run(run);
    v.ledger()
        .append_batch(vec![
            e(kind::RUN_STARTED, "r1").result(json!({"workflow": "deploy", "inputs_hmac": "00"})),
            e(kind::APPROVAL_GIVEN, "r1")
                .result(json!({"scope": "plan", "by": "user:alice", "tiers": ["destructive"], "nodes": ["b"]})),
            e(kind::STEP_STARTED, "r1").step("a").tier("low_write"),
            e(kind::STEP_FINISHED, "r1")
                .step("a")
                .tier("low_write")
                .enforcement(json!({"backend": "native", "isolated": true, "layers": ["seccomp"], "missing": []}))
                .manifests(Some("aa".repeat(32)), Some("bb".repeat(32)))
                .inverse(json!({"class": "restore", "paths": 1, "restore": [{"path": "a.txt", "what": "created"}]}))
                .result(json!({"exit_code": 0, "state": "succeeded", "duration_ms": 12, "note": "é \u{1} \" \\ /"})),
            e(kind::STEP_STARTED, "r2").step("x"),
            e(kind::STEP_STARTED, "r1").step("b").tier("destructive"),
            e(kind::STEP_FAILED, "r2").step("x").result(json!({"exit_code": 3})),
            e(kind::STEP_FINISHED, "r1").step("b").result(json!({"exit_code": 0})),
            e(kind::RUN_FINISHED, "r2").result(json!({"state": "failed"})),
            e(kind::RUN_FINISHED, "r1").result(json!({"state": "succeeded"})),
        ])
        .unwrap();
    let export = |run: Option<&str>| -> (String, ExportHead) {
        let mut out = Vec::new();
        let h = v.ledger().export(run, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), h)
    };
    let (valid, head) = export(None);
    let (run_r2, run_head) = export(Some("r2"));
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    let pretty = |h: &ExportHead| serde_json::to_string_pretty(h).unwrap() + "\n";
    write(
        "key.hex",
        format!("{}\n", v.ledger().key().to_hex().as_str()).as_bytes(),
    );
    write("valid.jsonl", valid.as_bytes());
    write("valid.jsonl.head.json", pretty(&head).as_bytes());
    write("run-r2.jsonl", run_r2.as_bytes());
    write("run-r2.jsonl.head.json", pretty(&run_head).as_bytes());

    let lines = lines_of(&valid);
    let n = lines.len() as u64;
    let cases: std::cell::RefCell<Vec<Case>> = std::cell::RefCell::new(Vec::new());
    let add = |case: &str,
               about: &str,
               bytes: Option<Vec<u8>>,
               head: Option<&str>,
               verdict: &str,
               line: Option<u64>,
               reason: &str| {
        let file = match bytes {
            Some(b) => {
                let f = format!("{case}.jsonl");
                write(&f, &b);
                f
            }
            None => "valid.jsonl".into(),
        };
        cases.borrow_mut().push(Case {
            case: case.into(),
            about: about.into(),
            file,
            head: head.map(str::to_owned),
            verdict: verdict.into(),
            line,
            reason: reason.into(),
        });
    };
    let h = Some("valid.jsonl.head.json");
    let edit_line = |i: usize, f: &dyn Fn(&str) -> String| -> Vec<u8> {
        let mut l = lines.clone();
        let new = f(&l[i]);
        assert_ne!(new, l[i], "edit of line {} changed nothing", i + 1);
        l[i] = new;
        join(&l).into_bytes()
    };
    add("valid", "the export as written", None, h, "valid", None, "");
    add(
        "valid-no-head",
        "the export without its head",
        None,
        None,
        "valid",
        None,
        "",
    );
    cases.borrow_mut().push(Case {
        case: "valid-run".into(),
        about: "a run export with its head".into(),
        file: "run-r2.jsonl".into(),
        head: Some("run-r2.jsonl.head.json".into()),
        verdict: "valid".into(),
        line: None,
        reason: String::new(),
    });
    // A forged approval first, the real (authenticated) entry last.
    let forged = {
        let mut e: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        e["entry"]["result"]["tiers"] = json!(["destructive", "network"]);
        e["entry"]["seq"] = json!(3);
        serde_json::to_string(&e["entry"]).unwrap()
    };
    add(
        "duplicate-entry-key",
        "line 3 holds two `entry` keys: a forged approval first, the real entry last",
        Some(edit_line(2, &|l| {
            l.replacen(
                "{\"entry\":",
                &format!("{{\"entry\":{forged},\"entry\":"),
                1,
            )
        })),
        h,
        "invalid",
        Some(3),
        "duplicate key `entry`",
    );
    add(
        "duplicate-nested-key",
        "a second `kind` inside the entry",
        Some(edit_line(3, &|l| {
            l.replacen("\"kind\":", "\"kind\":\"approval_given\",\"kind\":", 1)
        })),
        h,
        "invalid",
        Some(4),
        "duplicate key `kind`",
    );
    add(
        "duplicate-deep-key",
        "a second `exit_code` deep inside the result",
        Some(edit_line(3, &|l| {
            l.replacen("\"exit_code\":0", "\"exit_code\":0,\"exit_code\":0", 1)
        })),
        h,
        "invalid",
        Some(4),
        "duplicate key `exit_code`",
    );
    add(
        "unknown-top-field",
        "an extra top-level field",
        Some(edit_line(1, &|l| {
            format!("{},\"note\":\"approved\"}}", &l[..l.len() - 1])
        })),
        h,
        "invalid",
        Some(2),
        "unknown field `note`",
    );
    add(
        "unknown-nested-field",
        "an extra field in the entry",
        Some(edit_line(1, &|l| {
            l.replacen(
                "{\"entry\":{",
                "{\"entry\":{\"approved_by\":\"mallory\",",
                1,
            )
        })),
        h,
        "invalid",
        Some(2),
        "unknown field `entry.approved_by`",
    );
    add(
        "missing-field",
        "prev_mac removed",
        Some(edit_line(1, &|l| {
            let i = l.find(",\"prev_mac\"").unwrap();
            format!("{}}}", &l[..i])
        })),
        h,
        "invalid",
        Some(2),
        "missing field `prev_mac`",
    );
    add(
        "wrong-type-seq",
        "seq as a string",
        Some(edit_line(1, &|l| {
            l.replacen("\"seq\":2,", "\"seq\":\"2\",", 1)
        })),
        h,
        "invalid",
        Some(2),
        "field `entry.seq` must be an integer of at least 1",
    );
    add(
        "blank-trailing-line",
        "an empty line after the last entry",
        Some(format!("{valid}\n").into_bytes()),
        h,
        "invalid",
        Some(n + 1),
        "blank line",
    );
    add(
        "blank-middle-line",
        "an empty line between two entries",
        Some({
            let mut l = lines.clone();
            l.insert(2, String::new());
            join(&l).into_bytes()
        }),
        h,
        "invalid",
        Some(3),
        "blank line",
    );
    add(
        "reordered-lines",
        "lines 2 and 3 swapped",
        Some({
            let mut l = lines.clone();
            l.swap(1, 2);
            join(&l).into_bytes()
        }),
        h,
        "invalid",
        Some(2),
        "entry is missing: expected seq 2, found seq 3",
    );
    add(
        "deleted-middle-line",
        "line 3 deleted",
        Some({
            let mut l = lines.clone();
            l.remove(2);
            join(&l).into_bytes()
        }),
        h,
        "invalid",
        Some(3),
        "entry is missing: expected seq 3, found seq 4",
    );
    add(
        "deleted-last-line",
        "the last line deleted: only the head can tell",
        Some(join(&lines[..lines.len() - 1]).into_bytes()),
        h,
        "invalid",
        None,
        "ledger export is truncated",
    );
    add(
        "empty-file",
        "every line deleted",
        Some(Vec::new()),
        h,
        "invalid",
        None,
        "ledger export is truncated",
    );
    add(
        "edited-entry",
        "a step renamed, the line kept canonical",
        Some(edit_line(3, &|l| {
            l.replacen("\"step\":\"a\"", "\"step\":\"z\"", 1)
        })),
        h,
        "invalid",
        Some(4),
        "the HMAC does not match",
    );
    add(
        "truncated-mid-line",
        "the file cut in the middle of its last line",
        Some(valid.as_bytes()[..valid.len() - 40].to_vec()),
        h,
        "invalid",
        Some(n),
        "the last line is cut off",
    );
    add(
        "no-final-newline",
        "the last line complete but without its line feed",
        Some(valid.as_bytes()[..valid.len() - 1].to_vec()),
        h,
        "invalid",
        Some(n),
        "the last line is cut off",
    );
    add(
        "crlf-line-endings",
        "every line ends in CR LF",
        Some(valid.replace('\n', "\r\n").into_bytes()),
        h,
        "invalid",
        Some(1),
        "carriage return before the line feed",
    );
    add(
        "non-utf8-byte",
        "a 0xff byte inside a string",
        Some({
            let mut b = join(&lines[..1]).into_bytes();
            let mut l2 = lines[1].clone().into_bytes();
            let at = lines[1].find("engine").unwrap() + 3;
            l2.insert(at, 0xff);
            b.extend_from_slice(&l2);
            b.push(b'\n');
            b.extend_from_slice(join(&lines[2..]).as_bytes());
            b
        }),
        h,
        "invalid",
        Some(2),
        "the line is not valid UTF-8",
    );
    add(
        "huge-number-seq",
        "seq = 2^64",
        Some(edit_line(1, &|l| {
            l.replacen("\"seq\":2,", "\"seq\":18446744073709551616,", 1)
        })),
        h,
        "invalid",
        Some(2),
        "number out of range",
    );
    add(
        "huge-number-nested",
        "an exponent too large for any float, inside the result",
        Some(edit_line(3, &|l| {
            l.replacen("\"exit_code\":0", "\"exit_code\":1e400", 1)
        })),
        h,
        "invalid",
        Some(4),
        "number out of range",
    );
    add(
        "float-number",
        "0 written as 0.0",
        Some(edit_line(3, &|l| {
            l.replacen("\"exit_code\":0", "\"exit_code\":0.0", 1)
        })),
        h,
        "invalid",
        Some(4),
        "number out of range",
    );
    add(
        "negative-zero",
        "0 written as -0 (serde_json reads a float)",
        Some(edit_line(3, &|l| {
            l.replacen("\"exit_code\":0", "\"exit_code\":-0", 1)
        })),
        h,
        "invalid",
        Some(4),
        "number out of range",
    );
    add(
        "deep-nesting",
        "128 levels of nesting (serde_json's limit)",
        Some(edit_line(3, &|l| {
            let deep = format!("{}{}", "[".repeat(126), "]".repeat(126));
            l.replacen("\"tier\":\"low_write\"", &format!("\"tier\":{deep}"), 1)
        })),
        h,
        "invalid",
        Some(4),
        "nesting deeper than 127 levels",
    );
    add(
        "nesting-at-the-limit",
        "127 levels parse in both verifiers; the edit is then caught by the MAC",
        Some(edit_line(3, &|l| {
            let deep = format!("{}{}", "[".repeat(125), "]".repeat(125));
            l.replacen("\"tier\":\"low_write\"", &format!("\"tier\":{deep}"), 1)
        })),
        h,
        "invalid",
        Some(4),
        "the HMAC does not match",
    );
    add(
        "not-canonical-whitespace",
        "a space after a colon",
        Some(edit_line(0, &|l| {
            l.replacen("{\"entry\":{", "{\"entry\": {", 1)
        })),
        h,
        "invalid",
        Some(1),
        "not in canonical form",
    );
    add(
        "not-canonical-escape",
        "a letter written as a \\u escape",
        Some(edit_line(0, &|l| {
            l.replacen("\"engine\"", "\"\\u0065ngine\"", 1)
        })),
        h,
        "invalid",
        Some(1),
        "not in canonical form",
    );
    add(
        "not-canonical-key-order",
        "mac before entry",
        Some(edit_line(0, &|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{{\"mac\":{},\"entry\":{},\"prev_mac\":{}}}",
                v["mac"],
                String::from_utf8(secureclaw_vault::canonical_json(&v["entry"])).unwrap(),
                v["prev_mac"]
            )
        })),
        h,
        "invalid",
        Some(1),
        "not in canonical form",
    );
    // Heads.
    let other = tempfile::tempdir().unwrap();
    let other_vault = Vault::create(other.path(), "other", &common::FAST).unwrap();
    let mut foreign = head.clone();
    {
        let mut out = Vec::new();
        let oh = other_vault.ledger().export(None, &mut out).unwrap();
        foreign.mac = oh.mac; // a real signature, by another vault's key
    }
    write(
        "forged-head-signature.head.json",
        pretty(&foreign).as_bytes(),
    );
    let mut head_cases = vec![(
        "forged-head-signature",
        "the head's mac replaced by another vault's signature",
        "forged-head-signature.head.json",
        "export head is not authentic with this key",
    )];
    let mut bumped = head.clone();
    bumped.exported_count -= 1;
    bumped.ledger_count -= 1;
    write("forged-head-count.head.json", pretty(&bumped).as_bytes());
    head_cases.push((
        "forged-head-count",
        "the head's counts lowered, its mac kept",
        "forged-head-count.head.json",
        "export head is not authentic with this key",
    ));
    let head_text = pretty(&head);
    write(
        "head-unknown-field.head.json",
        head_text
            .replacen("{\n", "{\n  \"note\": \"audited\",\n", 1)
            .as_bytes(),
    );
    head_cases.push((
        "head-unknown-field",
        "an extra field in the head",
        "head-unknown-field.head.json",
        "unknown field `note`",
    ));
    let count_line = format!("  \"exported_count\": {},\n", head.exported_count);
    assert!(head_text.contains(&count_line));
    write(
        "head-duplicate-key.head.json",
        head_text
            .replacen(
                &count_line,
                &format!("  \"exported_count\": 1,\n{count_line}"),
                1,
            )
            .as_bytes(),
    );
    head_cases.push((
        "head-duplicate-key",
        "a second exported_count in the head (a smaller one first)",
        "head-duplicate-key.head.json",
        "duplicate key `exported_count`",
    ));
    for (case, about, head_file, reason) in head_cases {
        add(case, about, None, Some(head_file), "invalid", None, reason);
    }
    // A run export with another run's line slipped in (in seq order, authentic on its own).
    let r2_lines = lines_of(&run_r2);
    let mut mixed = r2_lines.clone();
    mixed.insert(1, lines[5].clone());
    add(
        "foreign-run-line",
        "an r1 entry inside the r2 export",
        Some(join(&mixed).into_bytes()),
        Some("run-r2.jsonl.head.json"),
        "invalid",
        Some(2),
        "entry is not part of run r2",
    );
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string_pretty(&cases.into_inner()).unwrap() + "\n",
    )
    .unwrap();
}
