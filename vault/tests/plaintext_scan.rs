//! Nothing plaintext on disk: known secrets go through the store, the blob store and the
//! ledger, then every byte under the state directory is scanned for them and their common
//! encodings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use base64::Engine;
use common::*;
use secureclaw_vault::{NewEntry, Vault, kind};

const SECRETS: &[&str] = &[
    "sk-ant-api03-SECRETSECRETSECRET-value-1234567890",
    "ghp_ThisIsAFakeGithubTokenForScanning0001",
    "hunter2-credential-password-0042",
    "/home/alice/projects/secret-plans/merger.txt",
    "run-7f3a9c1e-confidential",
    "step-deploy-production-keys",
];

fn encodings(s: &str) -> Vec<(String, Vec<u8>)> {
    let b = s.as_bytes();
    let mut out = vec![
        ("raw".to_owned(), b.to_vec()),
        ("hex".into(), hex::encode(b).into_bytes()),
        ("HEX".into(), hex::encode_upper(b).into_bytes()),
    ];
    for (name, e) in [
        ("base64", base64::engine::general_purpose::STANDARD),
        ("base64url", base64::engine::general_purpose::URL_SAFE),
    ] {
        // Check each of the three alignments, minus the partial edge characters, so the secret
        // is found even in the middle of a larger encoded value.
        for shift in 0..3 {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(b);
            let enc = e.encode(&padded);
            let start = (shift * 4).div_ceil(3) + 1;
            let core = &enc.as_bytes()[start..enc.len().saturating_sub(4)];
            out.push((format!("{name}+{shift}"), core.to_vec()));
        }
    }
    // UTF-16LE, as some tools write strings.
    out.push((
        "utf16le".into(),
        s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect(),
    ));
    out
}

fn scan(dir: &std::path::Path) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            let name = path.to_string_lossy().into_owned();
            for s in SECRETS {
                for (enc, needle) in encodings(s) {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_slice())
                        || name.contains(std::str::from_utf8(&needle).unwrap_or("\u{0}"))
                    {
                        hits.push(format!("{s:?} ({enc}) in {name}"));
                    }
                }
            }
        }
    }
    assert!(files >= 3, "scanned only {files} files");
    hits
}

#[test]
fn no_secret_reaches_the_disk_in_any_common_encoding() {
    let (dir, v) = new_vault();
    let [api, gh, pw, path, run, step] = SECRETS else {
        unreachable!()
    };
    v.put("credentials", api, gh.as_bytes()).unwrap();
    v.put_json(
        "settings",
        "llm",
        &serde_json::json!({ "api_key": api, "password": pw }),
    )
    .unwrap();
    v.put(run, step, path.as_bytes()).unwrap();
    let blob = format!("{pw}\n{api}\n{path}\n").repeat(5000);
    let id = v.blobs().put(blob.as_bytes()).unwrap();
    v.blobs()
        .put_reader(std::io::Cursor::new(format!("{gh}{gh}").into_bytes()))
        .unwrap();
    for i in 0..50 {
        v.ledger()
            .append(
                NewEntry::new("engine", kind::STEP_FINISHED)
                    .run(*run)
                    .step(*step)
                    .inverse(serde_json::json!({ "restore": [{ "path": path, "blob": id }] }))
                    .result(serde_json::json!({ "stdout": format!("{api} {gh} {pw} #{i}") })),
            )
            .unwrap();
    }
    v.rekey(pw, None).unwrap();
    drop(v);
    // Reopen and use the data, so anything redb writes on open/close is on disk too.
    let v = Vault::open(dir.path(), pw).unwrap();
    assert_eq!(v.get("credentials", api).unwrap().unwrap(), gh.as_bytes());
    assert_eq!(v.keys(run).unwrap(), vec![step.to_string()]);
    assert_eq!(v.ledger().verify().unwrap().entries, 50);
    assert_eq!(v.blobs().get(&id).unwrap(), blob.as_bytes());
    drop(v);

    let hits = scan(dir.path());
    assert!(
        hits.is_empty(),
        "plaintext found on disk:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_scanner_finds_planted_plaintext() {
    // Guard against a scanner that can never fail.
    let dir = tempfile::tempdir().unwrap();
    let plain = SECRETS[1];
    std::fs::write(dir.path().join("a"), format!("xx{plain}yy")).unwrap();
    std::fs::write(
        dir.path().join("b"),
        base64::engine::general_purpose::STANDARD.encode(format!("..{}..", SECRETS[0])),
    )
    .unwrap();
    std::fs::write(dir.path().join("c"), hex::encode(SECRETS[2])).unwrap();
    let hits = scan(dir.path());
    assert!(hits.iter().any(|h| h.contains("(raw)")), "{hits:?}");
    assert!(hits.iter().any(|h| h.contains("(base64+")), "{hits:?}");
    assert!(hits.iter().any(|h| h.contains("(hex)")), "{hits:?}");
    let _ = Vault::exists(dir.path());
}
