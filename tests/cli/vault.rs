//! The engine's state is sealed in the vault and every action lands in the ledger: end to end
//! through the real binary.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

const PASS: &str = "correct horse battery staple";

use common::secureclaw_with_passphrase as bin;

fn run(ws: &Path, wf: &str, extra: &[&str]) -> Output {
    let file = ws.join("wf.yaml");
    std::fs::write(&file, wf).unwrap();
    bin(PASS)
        .arg("run")
        .arg(&file)
        .arg("--workspace")
        .arg(ws)
        .args(["--sandbox", "host"])
        .args(extra)
        .output()
        .unwrap()
}

fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    common::walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let b = secret.as_bytes();
    let mut v = vec![
        b.to_vec(),
        hex::encode(b).into_bytes(),
        hex::encode_upper(b).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(b)
            .into_bytes(),
    ];
    // Base64 of the secret at the other two byte alignments inside a larger buffer.
    for pad in 1..3 {
        let mut shifted = vec![b'x'; pad];
        shifted.extend_from_slice(b);
        let enc = base64::engine::general_purpose::STANDARD.encode(&shifted);
        v.push(enc.as_bytes()[4..enc.len() - 4].to_vec());
    }
    v
}

#[test]
fn nothing_the_engine_stores_is_plaintext() {
    let ws = tempfile::tempdir().unwrap();
    let secret = "sk-live-7Hq9Zx2WmPcR4vTn8LbK";
    let wf = r#"
version: 1
name: secret-keeper
inputs:
  token: { type: string }
env:
  API_TOKEN: "{{ inputs.token }}"
steps:
  - id: echo-it
    shell: 'echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2'
  - id: file-it
    needs: [echo-it]
    write: { path: secret.txt, content: "{{ steps['echo-it'].output }}" }
  - id: read-it
    needs: [file-it]
    read: { path: secret.txt }
"#;
    let out = run(ws.path(), wf, &["--input", &format!("token={secret}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The secret really went through inputs, env, stdout, stderr, outputs and a file...
    assert!(
        std::fs::read_to_string(ws.path().join("secret.txt"))
            .unwrap()
            .contains(secret)
    );
    let show = bin(PASS)
        .args(["show", "last", "--json", "--state-dir"])
        .arg(ws.path().join(".secureclaw"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&show.stdout).contains(secret),
        "the record must hold it"
    );
    // ...and none of it is readable in the state dir, in any common encoding.
    let files = all_bytes(&ws.path().join(".secureclaw"));
    assert!(!files.is_empty());
    for (name, bytes) in &files {
        for form in forms(secret).iter().chain(forms("secret-keeper").iter()) {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                "{name} contains {:?}",
                String::from_utf8_lossy(form)
            );
        }
    }
}

#[test]
fn every_action_is_ledgered_and_the_chain_verifies() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join("build")).unwrap();
    let wf = r#"
version: 1
name: ledgered
steps:
  - { id: a, write: { path: a.txt, content: x } }
  - { id: wipe, needs: [a], shell: "rm -rf build" }
  - { id: bad, needs: [wipe], shell: "exit 3" }
"#;
    let out = run(ws.path(), wf, &["--approve", "destructive"]);
    assert_eq!(out.status.code(), Some(1));
    let state = ws.path().join(".secureclaw");
    let verify = bin(PASS)
        .args(["ledger", "verify", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = ws.path().join("ledger.jsonl");
    let out = bin(PASS)
        .args(["ledger", "export", "--state-dir"])
        .arg(&state)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v.get("entry").unwrap_or(&v);
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["step"].as_str().unwrap_or("-")
            )
        })
        .collect();
    for expected in [
        "run_started:-",
        "approval_given:-",
        "step_started:a",
        "step_finished:a",
        "step_started:wipe",
        "step_finished:wipe",
        "step_failed:bad",
        "run_finished:-",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "missing {expected} in {kinds:?}"
        );
    }
    // The export verifies offline against its head.
    let head = format!("{}.head.json", export.display());
    let v = bin(PASS)
        .args(["ledger", "verify-export", "--state-dir"])
        .arg(&state)
        .arg(&export)
        .args(["--head", &head])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn a_wrong_passphrase_is_refused_before_anything_is_touched() {
    let ws = tempfile::tempdir().unwrap();
    let out = run(
        ws.path(),
        "version: 1\nname: x\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n",
        &[],
    );
    assert!(out.status.success());
    let state = ws.path().join(".secureclaw");
    let before = all_bytes(&state);
    std::fs::remove_file(ws.path().join("a.txt")).unwrap();
    let out = bin("wrong passphrase")
        .arg("run")
        .arg(ws.path().join("wf.yaml"))
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !ws.path().join("a.txt").exists(),
        "the workflow ran with a wrong passphrase"
    );
    let mut after = all_bytes(&state);
    let mut before = before;
    before.sort();
    after.sort();
    assert!(before == after, "the state dir changed");
    let show = bin("wrong passphrase")
        .args(["runs", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(show.status.code(), Some(2));
}

#[test]
fn no_passphrase_and_no_terminal_is_a_clear_error() {
    let ws = tempfile::tempdir().unwrap();
    let file = ws.path().join("wf.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: x\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .env_remove("SECURECLAW_PASSPHRASE")
        .arg("run")
        .arg(&file)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--sandbox", "host"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SECURECLAW_PASSPHRASE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ws.path().join("a.txt").exists());
}

/// Plain SHA-256 (lowercase hex) by the system's `sha256sum`: an independent hash, as anyone
/// holding an export would compute it.
fn plain_sha256(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Whoever holds an export must not be able to confirm a guessed input or file content: every
/// digest of user data in it is keyed by the vault, and the export still verifies (with both
/// verifiers).
#[test]
fn an_export_holds_no_plain_hash_of_inputs_contents_workflow_or_manifests() {
    let ws = tempfile::tempdir().unwrap();
    let token = "hunter2";
    let old_config = "password=swordfish\n";
    std::fs::write(ws.path().join("config.txt"), old_config).unwrap();
    std::fs::write(ws.path().join("gone.txt"), "delete me\n").unwrap();
    let wf = r#"
version: 1
name: guessable
inputs:
  token: { type: string }
steps:
  - { id: put, write: { path: token.txt, content: "{{ inputs.token }}" } }
  - { id: edit, needs: [put], write: { path: config.txt, content: "password=changed\n" } }
  - { id: wipe, needs: [edit], shell: "rm gone.txt" }
"#;
    let out = run(
        ws.path(),
        wf,
        &[
            "--input",
            &format!("token={token}"),
            "--approve",
            "destructive",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = ws.path().join(".secureclaw");
    let export = ws.path().join("ledger.jsonl");
    let key = ws.path().join("ledger.key");
    let out = bin(PASS)
        .args(["ledger", "export", "--state-dir"])
        .arg(&state)
        .arg("--out")
        .arg(&export)
        .arg("--key-out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let head_path = format!("{}.head.json", export.display());
    // What an attacker would hash to test guesses: the input (alone and as the engine serialises
    // the inputs), every file content before and after, the workflow text.
    let mut inputs = std::collections::BTreeMap::new();
    inputs.insert("token", token);
    let workflow_text = std::fs::read(ws.path().join("wf.yaml")).unwrap();
    let guesses = [
        ("the input", plain_sha256(token.as_bytes())),
        (
            "the inputs object",
            plain_sha256(&serde_json::to_vec(&inputs).unwrap()),
        ),
        ("the written token file", plain_sha256(token.as_bytes())),
        ("the old config", plain_sha256(old_config.as_bytes())),
        ("the new config", plain_sha256(b"password=changed\n")),
        ("the deleted file", plain_sha256(b"delete me\n")),
        ("the workflow", plain_sha256(&workflow_text)),
    ];
    for (what, h) in &guesses {
        assert!(
            !text.contains(h.as_str()),
            "the export holds the plain SHA-256 of {what}"
        );
    }
    // The run record (sealed in the vault) keeps the plain manifest hashes for revert; the
    // export must not.
    let show = bin(PASS)
        .args(["show", "last", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let mut manifests = vec![rec["pre_manifest"].as_str().unwrap().to_owned()];
    for s in rec["steps"].as_array().unwrap() {
        for k in ["pre_manifest", "post_manifest"] {
            if let Some(m) = s[k].as_str() {
                manifests.push(m.to_owned());
            }
        }
    }
    assert!(manifests.len() >= 4, "{manifests:?}");
    for m in &manifests {
        assert_eq!(m.len(), 64);
        assert!(
            !text.contains(m.as_str()),
            "the export holds a plain manifest hash"
        );
    }
    // The keyed digests are there instead, and no field still claims to be a plain hash.
    for field in [
        "\"inputs_hmac\"",
        "\"workflow_hmac\"",
        "\"content_hmac\"",
        "\"changes_hmac\"",
    ] {
        assert!(text.contains(field), "no {field} in the export");
    }
    assert!(
        !text.contains("sha256\""),
        "a *sha256 field is left in the export"
    );
    // Equal contents still give equal keyed digests within the vault: the token file's content
    // digest appears for the `put` step.
    let put = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["entry"]["kind"] == "step_finished" && v["entry"]["step"] == "put")
        .unwrap();
    let hmac = put["entry"]["inverse"]["restore"][0]["post"]["content_hmac"]
        .as_str()
        .unwrap();
    assert_eq!(hmac.len(), 64);
    assert_ne!(hmac, plain_sha256(token.as_bytes()));
    // Both verifiers still accept the export.
    let v = bin(PASS)
        .args(["ledger", "verify-export", "--state-dir"])
        .arg(&state)
        .arg(&export)
        .args(["--head", &head_path])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/tools/verify_ledger_export.py"))
        .arg(&export)
        .arg(&key)
        .arg(&head_path)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
}

/// The shared corpus of tampered exports (vault/tests/export-corpus, also run through the
/// library and the Python verifier) through the binary's `ledger verify-export`: exit 0 for the
/// valid cases, exit 1 naming the same reason and line for every tampered one.
#[test]
fn verify_export_gives_the_corpus_verdicts_through_the_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/tests/export-corpus");
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 25);
    let nowhere = tempfile::tempdir().unwrap();
    for c in &cases {
        let name = c["case"].as_str().unwrap();
        let mut cmd = bin(PASS);
        cmd.args(["ledger", "verify-export", "--state-dir"])
            .arg(nowhere.path())
            .arg(dir.join(c["file"].as_str().unwrap()))
            .arg("--key-file")
            .arg(dir.join("key.hex"));
        if let Some(h) = c["head"].as_str() {
            cmd.arg("--head").arg(dir.join(h));
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        match c["verdict"].as_str().unwrap() {
            "valid" => assert_eq!(out.status.code(), Some(0), "{name}: {stdout}"),
            _ => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{name}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let reason = c["reason"].as_str().unwrap();
                assert!(
                    stdout.contains(reason),
                    "{name}: {stdout} (want {reason:?})"
                );
                if let Some(n) = c["line"].as_u64() {
                    assert!(
                        stdout.contains(&format!("line {n}:"))
                            || stdout.contains(&format!("line {n} (")),
                        "{name}: {stdout} (want line {n})"
                    );
                }
            }
        }
    }
}

/// A header edited to absurd KDF costs is refused as corrupt, naming the field, by every
/// command that unlocks the vault, before any Argon2 work (it used to hang or take 8 GB).
#[test]
fn absurd_kdf_parameters_in_the_header_are_a_corrupt_header_for_every_command() {
    let ws = tempfile::tempdir().unwrap();
    let state = ws.path().join(".secureclaw");
    let init = bin(PASS)
        .args(["vault", "init", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let hp = state.join("vault.header.json");
    let orig: serde_json::Value = serde_json::from_slice(&std::fs::read(&hp).unwrap()).unwrap();
    let wf = ws.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "version: 1\nname: x\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n",
    )
    .unwrap();
    for (field, value) in [
        ("iterations", serde_json::json!(4_000_000_000u64)),
        ("memory_kib", serde_json::json!(8u64 * 1024 * 1024)),
        ("parallelism", serde_json::json!(-1)),
        ("iterations", serde_json::json!("3")),
    ] {
        let mut h = orig.clone();
        h["kdf"][field] = value.clone();
        std::fs::write(&hp, serde_json::to_vec_pretty(&h).unwrap()).unwrap();
        let s = state.display().to_string();
        let w = wf.display().to_string();
        let ws_s = ws.path().display().to_string();
        for args in [
            vec!["vault", "status", "--state-dir", &s],
            vec!["runs", "--state-dir", &s],
            vec!["ledger", "verify", "--state-dir", &s],
            vec!["ledger", "verify-export", "/dev/null", "--state-dir", &s],
            vec!["run", &w, "--workspace", &ws_s, "--sandbox", "host"],
        ] {
            let out = bin(PASS).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{field}={value} {args:?}: {err}"
            );
            assert!(
                err.contains("corrupt header") && err.contains(&format!("kdf.{field}")),
                "{field}={value} {args:?}: {err}"
            );
        }
        assert!(!ws.path().join("a.txt").exists(), "the workflow ran");
    }
}
