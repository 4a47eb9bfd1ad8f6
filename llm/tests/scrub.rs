#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scrubber corpus: realistic-format (fake) secrets that must be replaced, and look-alikes that
//! must not, with precision/recall printed and asserted; plus the end-to-end check that nothing
//! in the corpus reaches a (fake) provider.

mod common;
mod labelled;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeServer, anthropic_ok, ollama_ok};
use secureclaw_llm::{
    ApiKey, ChatRequest, FallbackChain, HttpProvider, Message, PiiKind, ProviderConfig,
    ProviderKind, Scrubber, TokenBudget,
};

/// (context with `{}` where the secret goes, secret, expected kind)
const POSITIVES: &[(&str, &str, PiiKind)] = &[
    (
        "export ANTHROPIC_API_KEY={}",
        "sk-ant-api03-Zr8vT2kLm9Pq1RwYb4Nc6Hd1Fj5Gs7Ue0AoIiQwErTyUiOpAsDfGhJkLzXcVbNm1234567890abcdefghAA",
        PiiKind::Secret,
    ),
    (
        "OPENAI_API_KEY=\"{}\"",
        "sk-proj-9aB8cD7eF6gH5iJ4kL3mN2oP1qR0sT9uV8wX7yZ6aB5cD4eF3gH2",
        PiiKind::Secret,
    ),
    (
        "legacy key {} in the notebook",
        "sk-3Fh7Jk9Lm1Np3Qr5St7Vw9Xy1Za3Bc5De7Fg9Hi1Jk3Lm5No",
        PiiKind::Secret,
    ),
    (
        "git clone https://x:{}@github.com/acme/app",
        "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2",
        PiiKind::Secret,
    ),
    (
        "token: {}",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        PiiKind::Secret,
    ),
    (
        "GH_TOKEN={}",
        "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3",
        PiiKind::Secret,
    ),
    (
        "[default]\naws_access_key_id = {}",
        "AKIAZ7XQ3LM9PQ2RST4U",
        PiiKind::Secret,
    ),
    ("session key {}", "ASIAY4ZB7HX2QW9ERT5U", PiiKind::Secret),
    (
        "aws_secret_access_key = {}",
        "kU8p/2Xh+9qLrT4vWz1yNb6mC3dF5gJ7hK0sA2eQ",
        PiiKind::Secret,
    ),
    (
        "SLACK_BOT_TOKEN={}",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        PiiKind::Secret,
    ),
    (
        "notify via {}",
        "https://hooks.slack.com/services/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",
        PiiKind::Secret,
    ),
    (
        "stripe: {}",
        "sk_live_51Mz9QkLw2Xv8Yb3Nc7Hd1Fj5Gs7Ue0AoIiQwErTy",
        PiiKind::Secret,
    ),
    (
        "STRIPE_RESTRICTED={}",
        "rk_test_51Ab3De5Gh7Jk9Mn1Pq3St5Vx7Za9Cd1Fg3",
        PiiKind::Secret,
    ),
    (
        "curl -H 'Authorization: Bearer {}' https://api.example.com",
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxNzAwMDAwMDAwfQ.dGhpc2lzbm90YXJlYWxzaWduYXR1cmVfanVzdGFmYWtl",
        PiiKind::Secret,
    ),
    (
        "key file:\n{}\nend",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----",
        PiiKind::Secret,
    ),
    (
        "{}",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----",
        PiiKind::Secret,
    ),
    (
        "maps_api_key: {}",
        "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        PiiKind::Secret,
    ),
    (
        "auth_token = \"{}\"",
        "f3a9c2e1b8d47f6a0e5c9b3d7a1f8e2c4b6d",
        PiiKind::Secret,
    ),
    (
        "client_secret: {}",
        "Qw7eR9tY2uI4oP6aS8dF1gH3jK5lZ",
        PiiKind::Secret,
    ),
    (
        "{{\"apiKey\": \"{}\"}}",
        "a8F3kL9pQ2wX7zC4vB6nM1jH5gT0rY3u",
        PiiKind::Secret,
    ),
    (
        "db:\n  host: db.internal\n  password: {}\n",
        "Tr0ub4dor&3",
        PiiKind::Secret,
    ),
    (
        "{{\"passwd\": \"{}\"}}",
        "correct horse battery staple",
        PiiKind::Secret,
    ),
    (
        "mysql --user=root --password={} prod",
        "s3cr3tPa55",
        PiiKind::Secret,
    ),
    ("POSTGRES_PASSWORD={}", "hunter2hunter2", PiiKind::Secret),
    (
        "export DATABASE_SECRET='{}'",
        "p@ss with spaces",
        PiiKind::Secret,
    ),
    ("smtp_pass = {}", "mailpw!2024", PiiKind::Secret),
    (
        "contact {} for access",
        "jane.doe@example.com",
        PiiKind::Email,
    ),
    (
        "From: {}",
        "ops-team+alerts@acme-corp.co.uk",
        PiiKind::Email,
    ),
    ("owner={}", "r.kowalski@firma.example.pl", PiiKind::Email),
    ("call me at {} tomorrow", "+1 415 555 0132", PiiKind::Phone),
    ("Tel.: {}", "+49 30 901820", PiiKind::Phone),
    ("office {}", "+44 20 7946 0958", PiiKind::Phone),
    ("mobile: {}", "(212) 555-0199", PiiKind::Phone),
    ("fax {}", "415.555.0147", PiiKind::Phone),
    (
        "charge {} for the invoice",
        "4111 1111 1111 1111",
        PiiKind::Card,
    ),
    ("card={}", "5555555555554444", PiiKind::Card),
    ("amex {} exp 04/28", "3782-822463-10005", PiiKind::Card),
    ("discover {}", "6011111111111117", PiiKind::Card),
    ("visa {}", "4012-8888-8888-1881", PiiKind::Card),
];

/// Texts with nothing to scrub (look-alikes of the above).
const NEGATIVES: &[&str] = &[
    "git checkout 3f9a2c7e1b8d4f6a0e5c9b3d7a1f8e2c4b6d9e0f",
    "commit e83c5163316f89bfbde7d9ab23ca2e25604af290 fixed it",
    "request id 550e8400-e29b-41d4-a716-446655440000",
    "trace 7d444840-9dc0-11d1-b245-5ffdce74fad2 in logs",
    "aGVsbG8gd29ybGQsIHRoaXMgaXMganVzdCBvcmRpbmFyeSB0ZXh0Lg==",
    "echo SGVsbG8gV29ybGQ= | base64 -d",
    "upgrade to version 1.2.3 then 10.11.12.13",
    "rust-version 1.95.0, tokio 1.48.0, serde 1.0.228",
    "the build took 1234567 ms and used 9876543210 bytes",
    "order number 4111 1111 1111 1112 is invalid",
    "ticket 1234567812345678",
    "timestamp 1700000000000000000",
    "set max_tokens = 4096 and temperature = 0.2",
    "token = ${{ secrets.GITHUB_TOKEN }}",
    "password: ${DB_PASSWORD}",
    "password = <your password here>",
    "password: ********",
    "The password is stored in the vault, never in the repo.",
    "remote: git@github.com:acme/app.git",
    "assets/logo@2x.png and icon@3x.png",
    "use the sk-learn-compatible-estimator-wrapper",
    "listen on 127.0.0.1:8080 and 10.0.0.1",
    "dates: 2024-01-15 and 2025-12-31",
    "archive last week's logs and tell the team",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d08c15b0a08",
    "cargo build --release -j 4 && ./target/release/app --port 3000",
    "phone field is optional; see docs",
    "image: ghcr.io/acme/app@sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1",
    "Call the API at https://api.example.com/v1/users?page=2",
    "ISBN 978-3-16-148410-0",
];

// The corpus cannot shrink unnoticed: checked when the tests are compiled.
const _: () = assert!(POSITIVES.len() >= 35 && NEGATIVES.len() >= 30);

#[test]
fn corpus_precision_and_recall() {
    let s = Scrubber::builtin().unwrap();
    let mut tp = 0usize;
    let mut fn_ = Vec::new();
    let mut wrong_kind = Vec::new();
    for (ctx, secret, kind) in POSITIVES {
        let text = ctx
            .replacen("{}", secret, 1)
            .replace("{{", "{")
            .replace("}}", "}");
        let (out, restorer) = s.scrub(&text);
        if out.contains(secret) {
            fn_.push(text.clone());
        } else {
            tp += 1;
            if !out.contains(&format!("<{}_1>", kind.label())) {
                wrong_kind.push(format!("{text:?} -> {out:?}"));
            }
        }
        assert_eq!(restorer.restore(&out), text, "round trip");
    }
    let mut fp = Vec::new();
    for text in NEGATIVES {
        let (out, _) = s.scrub(text);
        if out != *text {
            fp.push(format!("{text:?} -> {out:?}"));
        }
    }
    let recall = tp as f64 / POSITIVES.len() as f64;
    // Precision over texts: a negative text that got any placeholder counts as one false positive.
    let precision = tp as f64 / (tp + fp.len()) as f64;
    println!(
        "scrubber: {} positives, {} negatives; recall {recall:.3}, precision {precision:.3}; missed {fn_:?}; false positives {fp:?}; wrong kind {wrong_kind:?}",
        POSITIVES.len(),
        NEGATIVES.len()
    );
    assert!(recall >= 0.97, "recall {recall}: missed {fn_:?}");
    assert!(precision >= 0.97, "precision {precision}: {fp:?}");
    assert!(wrong_kind.is_empty(), "{wrong_kind:?}");
}

#[test]
fn same_value_same_placeholder_across_messages() {
    let s = Scrubber::builtin().unwrap();
    let mut session = s.session();
    let a = session.scrub("key AKIAZ7XQ3LM9PQ2RST4U and mail bob@example.com");
    let b = session.scrub("again AKIAZ7XQ3LM9PQ2RST4U, also AKIAQ2W3E4R5T6Y7U8I9");
    assert_eq!(a, "key <SECRET_1> and mail <EMAIL_1>");
    assert_eq!(b, "again <SECRET_1>, also <SECRET_2>");
}

/// Attempts to slip a secret past the patterns.
#[test]
fn evasions_are_still_scrubbed() {
    let s = Scrubber::builtin().unwrap();
    let key = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
    let cases = [
        format!("({key})"),
        format!("\"{key}\","),
        format!("https://api.example.com/repos?access_token={key}&x=1"),
        // Zero-width characters inside the key: stripped before matching.
        "ghp_Z9y8X7w6V5u4\u{200B}T3s2R1q0P9o8N7m6L5k4J3i2".to_owned(),
        "gh\u{2060}p_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2".to_owned(),
        // JSON-escaped PEM (literal backslash-n, no real newline).
        "{\"key\": \"-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIBAAKCAQEA7VZr8q\\n-----END RSA PRIVATE KEY-----\"}".to_owned(),
        "PASSWORD: \"Zq9!vR2#mL\"".to_owned(),
        "export  DB_PASSWORD = \"Zq9!vR2#mL\"".to_owned(),
    ];
    for text in &cases {
        let (out, _) = s.scrub(text);
        for needle in [
            "Z9y8X7w6V5u4",
            "T3s2R1q0P9o8",
            "MIIEowIBAAKCAQEA7VZr8q",
            "Zq9!vR2#mL",
        ] {
            assert!(!out.contains(needle), "{text:?} -> {out:?}");
        }
        assert!(out.contains("<SECRET_1>"), "{text:?} -> {out:?}");
    }
}

fn corpus_text() -> String {
    POSITIVES
        .iter()
        .map(|(ctx, secret, _)| {
            ctx.replacen("{}", secret, 1)
                .replace("{{", "{")
                .replace("}}", "}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn http(kind: ProviderKind, base: &str) -> Arc<HttpProvider> {
    Arc::new(
        HttpProvider::new(
            ProviderConfig {
                kind,
                base_url: base.to_owned(),
                model: "m".into(),
                api_key: Some(ApiKey::new("sk-ant-api03-unused-key-for-tests-0000000000")),
            },
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn no_secret_reaches_a_remote_provider_and_the_reply_is_restored() {
    // The fake model echoes placeholders back in its plan, as a real one would.
    let a = FakeServer::start(vec![anthropic_ok(
        "steps:\n  - shell: deploy --key <SECRET_1> --notify <EMAIL_1>",
        100,
        20,
    )])
    .await;
    let chain = FallbackChain::new(vec![http(ProviderKind::Anthropic, &a.base_url)]).unwrap();
    let corpus = corpus_text();
    let req = ChatRequest {
        system: Some(format!("Context from the workspace:\n{corpus}")),
        messages: vec![
            Message::user(format!("Deploy. Here is the config:\n{corpus}")),
            Message::assistant("Which environment?"),
            Message::user(
                "prod; the key again: sk-ant-api03-Zr8vT2kLm9Pq1RwYb4Nc6Hd1Fj5Gs7Ue0AoIiQwErTyUiOpAsDfGhJkLzXcVbNm1234567890abcdefghAA",
            ),
        ],
        max_tokens: 500,
        temperature: Some(0.0),
    };
    let r = chain
        .complete(&req, &mut TokenBudget::unlimited())
        .await
        .unwrap();
    let seen = a.requests()[0].raw();
    for (_, secret, _) in POSITIVES {
        // Multi-line PEM bodies arrive JSON-escaped; check line by line.
        for line in secret.lines().filter(|l| l.len() > 8) {
            assert!(!seen.contains(line), "secret reached the provider: {line}");
        }
    }
    assert!(seen.contains("<SECRET_1>") && seen.contains("<EMAIL_1>") && seen.contains("<CARD_1>"));
    assert!(r.attempts[0].scrubbed);
    assert!(r.placeholders.len() >= 30, "{:?}", r.placeholders);
    // Restored locally.
    assert!(
        r.completion.text.contains("--key sk-ant-api03-Zr8vT2k"),
        "{}",
        r.completion.text
    );
    assert!(r.completion.text.contains("--notify jane.doe@example.com"));
}

#[tokio::test]
async fn local_ollama_gets_the_original_and_scrub_can_be_disabled() {
    let l = FakeServer::start(vec![ollama_ok("ok", 1, 1)]).await;
    let chain = FallbackChain::new(vec![http(ProviderKind::Ollama, &l.base_url)]).unwrap();
    let req = ChatRequest::new(None, "mail jane.doe@example.com");
    let r = chain
        .complete(&req, &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(!r.attempts[0].scrubbed);
    assert!(l.requests()[0].body.contains("jane.doe@example.com"));

    let a = FakeServer::start(vec![anthropic_ok("ok", 1, 1)]).await;
    let chain = FallbackChain::new(vec![http(ProviderKind::Anthropic, &a.base_url)])
        .unwrap()
        .with_scrubber(None);
    let r = chain
        .complete(&req, &mut TokenBudget::unlimited())
        .await
        .unwrap();
    assert!(!r.attempts[0].scrubbed);
    assert!(a.requests()[0].body.contains("jane.doe@example.com"));
}

/// One row of `tests/data/secrets-*.tsv`.
struct LabelledRow {
    line: usize,
    label: String,
    kind: String,
    value: String,
    text: String,
}

fn labelled(raw: &str) -> Vec<LabelledRow> {
    let mut rows = Vec::new();
    let mut header = false;
    for (i, l) in raw.lines().enumerate() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if !header {
            assert_eq!(l, "label\tkind\tvalue\ttext");
            header = true;
            continue;
        }
        let cols: Vec<&str> = l.splitn(4, '\t').collect();
        assert_eq!(cols.len(), 4, "line {}: {l}", i + 1);
        assert!(
            ["secret", "pii", "benign"].contains(&cols[0]),
            "line {}: label {}",
            i + 1,
            cols[0]
        );
        let row = LabelledRow {
            line: i + 1,
            label: cols[0].to_owned(),
            kind: cols[1].to_owned(),
            value: labelled::unescape(cols[2]),
            text: labelled::unescape(cols[3]),
        };
        if row.label == "benign" {
            assert_eq!(row.value, "-", "line {}", row.line);
        } else {
            assert!(
                row.text.contains(&row.value),
                "line {}: value not in text",
                row.line
            );
        }
        rows.push(row);
    }
    rows
}

/// Every occurrence of `value` in `text` lies entirely inside found ranges.
fn fully_replaced(s: &Scrubber, text: &str, value: &str) -> bool {
    let found = s.find(text);
    text.match_indices(value).all(|(a, v)| {
        let b = a + v.len();
        let mut pos = a;
        for m in &found {
            if m.start <= pos && m.end > pos {
                pos = m.end;
            }
            if pos >= b {
                return true;
            }
        }
        pos >= b
    })
}

struct Score {
    recall: f64,
    benign_altered: f64,
    misses: Vec<String>,
    altered: Vec<String>,
}

fn score(name: &str, raw: &str) -> Score {
    let s = Scrubber::builtin().unwrap();
    let rows = labelled(raw);
    // kind -> (rows, hits) for positives, (rows, altered) for benign.
    let mut table: std::collections::BTreeMap<(String, String), (usize, usize)> =
        std::collections::BTreeMap::new();
    let (mut pos, mut hit, mut neg) = (0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    let mut altered = Vec::new();
    for row in &rows {
        let family = row.kind.split('-').next().unwrap_or("").to_owned();
        let e = table.entry((row.label.clone(), family)).or_default();
        e.0 += 1;
        if row.label == "benign" {
            neg += 1;
            let (out, _) = s.scrub(&row.text);
            if out != row.text {
                e.1 += 1;
                altered.push(format!("{name}:{} {:?} -> {out:?}", row.line, row.text));
            }
        } else {
            pos += 1;
            if fully_replaced(s, &row.text, &row.value) {
                hit += 1;
                e.1 += 1;
            } else {
                let (out, _) = s.scrub(&row.text);
                misses.push(format!("{name}:{} [{}] {out:?}", row.line, row.kind));
            }
        }
    }
    println!("{name}: label/kind, rows, caught (secret/pii) or altered (benign)");
    for ((label, kind), (n, k)) in &table {
        println!("  {label:<7} {kind:<20} {n:>4} {k:>4}");
    }
    let recall = hit as f64 / pos as f64;
    let benign_altered = altered.len() as f64 / neg as f64;
    println!(
        "{name}: {pos} positive rows, recall {recall:.3}; {neg} benign rows, altered {:.1} %",
        benign_altered * 100.0
    );
    for m in &misses {
        println!("  MISS {m}");
    }
    for a in &altered {
        println!("  ALTERED {a}");
    }
    Score {
        recall,
        benign_altered,
        misses,
        altered,
    }
}

/// The held-out set: written before the patterns were tuned, never edited to make a row pass.
#[test]
fn holdout_recall_and_benign_altered() {
    let sc = score(
        "secrets-holdout.tsv",
        include_str!("data/secrets-holdout.tsv"),
    );
    assert!(sc.recall >= 0.99, "recall {}: {:#?}", sc.recall, sc.misses);
    assert!(
        sc.benign_altered <= 0.02,
        "benign altered {}: {:#?}",
        sc.benign_altered,
        sc.altered
    );
}

/// The tuning set: measured once untouched, then tuned against; a regression guard here.
#[test]
fn train_recall_and_benign_altered() {
    let sc = score("secrets-train.tsv", include_str!("data/secrets-train.tsv"));
    assert!(sc.recall >= 0.95, "recall {}: {:#?}", sc.recall, sc.misses);
    assert!(
        sc.benign_altered <= 0.03,
        "benign altered {}: {:#?}",
        sc.benign_altered,
        sc.altered
    );
}

/// Real keys that happen to contain placeholder-looking pieces (`XX`, `Xx`, `000`, `test`, a
/// short run) are still scrubbed: the placeholder rules look at the whole random part.
#[test]
fn placeholder_looking_real_keys_are_still_scrubbed() {
    let s = Scrubber::builtin().unwrap();
    let keys = [
        "ghp_MR32bAEFKBPFHEEFXXBu36Rz30XxXLcYmDbL",
        "AKIA6M5UEWXXLTTCNMCU",
        "sk-proj-Tq9XXXv2Lm000Rz8Kp3Wn5Yb7Hd1Fj4Gs6Ue0AoIiQwErTyUiOpAsDfGhJkLz",
        "sk_test_51Hq8ZrX3vLw9Nb2Ty7Kp4Sd6Hj1Fg0Ae5Wc8Vu",
        "glpat-xX9kQ2mZ7rT4vB1nL8wP",
        "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",
        "xoxb-2471828390-4839201938475-XXe5Gh7Jk9Mn1Pq3St5Vx",
        "npm_aaaaa7F3kL9pQ2wX7zC4vB6nM1jH5gT0rY3u",
        // A made-up key that borrows ascending runs but is not made of them.
        "sk-ant-api03-PLANTESTdoNotLeak0123456789abcdefghijklmnopqrstuvwxyzABCD-xyzAA",
    ];
    for key in keys {
        for text in [
            format!("token: {key}"),
            format!("export KEY={key}"),
            format!("see {key}"),
        ] {
            let (out, _) = s.scrub(&text);
            assert!(!out.contains(key), "{text:?} -> {out:?}");
        }
    }
    // Generic assignments and passwords: hex with a run of zeros, a password with `xx`.
    for (text, value) in [
        (
            "api_key: 7f3a9c2e1b8d0000f6a0e5c9b3d7a1f8",
            "7f3a9c2e1b8d0000f6a0e5c9b3d7a1f8",
        ),
        ("password: xXr7!kq2", "xXr7!kq2"),
        ("DB_PASSWORD=Xx0!kq2Zp", "Xx0!kq2Zp"),
    ] {
        let (out, _) = s.scrub(text);
        assert!(!out.contains(value), "{text:?} -> {out:?}");
    }
}

/// Documentation placeholders stay readable.
#[test]
fn documentation_placeholders_are_left_alone() {
    let s = Scrubber::builtin().unwrap();
    for text in [
        "ANTHROPIC_API_KEY=sk-ant-...",
        "OPENAI_API_KEY=sk-proj-...",
        "export OPENAI_API_KEY=\"sk-...\"",
        "GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "token: ghp_************",
        "aws_access_key_id = AKIAXXXXXXXXXXXXXXXX",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "API_KEY=your-api-key-here",
        "Authorization: Bearer <token>",
        "password: xxxxxxxx",
        "SECRET_KEY=0000000000",
        "SECRET_KEY=1234567890abcdef1234567890abcdef",
        "api_key = abcdefghijklmnopqrstuvwxyz0123456789",
        "STRIPE_KEY=sk_live_REPLACE_ME_WITH_YOUR_KEY",
        "postgres://user:${PASS}@10.0.0.5/db",
        "postgres://user:<password>@10.0.0.5/db",
        "postgres://user:****@10.0.0.5/db",
        "IBAN: DE00 0000 0000 0000 0000 00",
        "card 4242 4242 4242 4242",
    ] {
        let (out, _) = s.scrub(text);
        assert_eq!(out, text);
    }
}

/// IBAN: mod-97 catches every single-character substitution, spaced and unspaced forms are
/// replaced whole, and the check digits alone decide (a wrong length for the country fails).
#[test]
fn iban_checksum_and_forms() {
    let s = Scrubber::builtin().unwrap();
    let good = "DE89370400440532013000";
    for text in [
        format!("IBAN {good}"),
        "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX".to_owned(),
        "iban: gb29 nwbk 6016 1331 9268 19".to_owned(),
    ] {
        let (out, r) = s.scrub(&text);
        assert!(out.contains("<IBAN_1>"), "{text:?} -> {out:?}");
        assert!(!out.contains("3704") && !out.contains("1331"), "{out:?}");
        assert_eq!(r.restore(&out), text);
    }
    let mut caught = 0;
    for i in 4..good.len() {
        for d in b'0'..=b'9' {
            if good.as_bytes()[i] == d {
                continue;
            }
            let mut bad = good.as_bytes().to_vec();
            bad[i] = d;
            let bad = String::from_utf8(bad).unwrap();
            if s.scrub(&format!("IBAN {bad}")).0.contains("<IBAN_") {
                caught += 1;
            }
        }
    }
    assert_eq!(caught, 0, "single-digit errors must fail mod-97");
    // Right checksum scheme, wrong length for CH (21).
    assert!(!s.scrub("CH80 0076 2011 6238 5295").0.contains("<IBAN_"));
}

/// Phone words make bare national numbers safe to scrub; dates, IPs and versions after them are
/// not phones.
#[test]
fn national_phones_need_shape_or_context() {
    let s = Scrubber::builtin().unwrap();
    for (text, value) in [
        ("Tél. 06 12 34 56 78", "06 12 34 56 78"),
        ("携帯: 090-1234-5678", "090-1234-5678"),
        ("ph (02) 9876 5432", "(02) 9876 5432"),
        ("Telefon: 030 12345678", "030 12345678"),
        ("call Ravi on 98765 43210", "98765 43210"),
        ("mobile 07700 900123", "07700 900123"),
    ] {
        let (out, _) = s.scrub(text);
        assert!(!out.contains(value), "{text:?} -> {out:?}");
        assert!(out.contains("<PHONE_1>"), "{text:?} -> {out:?}");
    }
    for text in [
        "call 2026-03-02 at noon",
        "contact 192.168.100.200",
        "mobile build 2026.03.15.1",
        "version 06.12.34.56.78",
        "phone: 3 devices, tablet: 2",
        "tel 2001:db8::1",
        "30 12345678",
        "98765 43210",
    ] {
        assert_eq!(s.scrub(text).0, text);
    }
}
