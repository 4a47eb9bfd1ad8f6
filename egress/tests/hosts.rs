#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Host canonicalisation attacks: the decision table in `hosts.toml`, plus properties.

use proptest::prelude::*;
use secureclaw_egress::{Allowlist, RefusalReason, canonical_host};
use serde::Deserialize;

#[derive(Deserialize)]
struct Table {
    allow: Vec<String>,
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    authority: Option<String>,
    url: Option<String>,
    expect: String,
    canonical: Option<String>,
    why: String,
}

fn kind(r: &RefusalReason) -> String {
    serde_json::to_value(r).unwrap()["kind"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn decision_table() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hosts.toml")).unwrap();
    let table: Table = toml::from_str(&text).unwrap();
    let allow = Allowlist::parse(&table.allow).unwrap();
    assert!(table.case.len() >= 100, "the table shrank");
    let mut failures = Vec::new();
    for c in &table.case {
        let (input, got) = match (&c.authority, &c.url) {
            (Some(a), None) => (a, allow.check_authority(a, None)),
            (None, Some(u)) => (u, allow.check_absolute_url(u)),
            _ => panic!("case needs exactly one of authority/url: {}", c.why),
        };
        let ok = match (&got, c.expect.as_str()) {
            (Ok(t), "allow") => c.canonical.as_deref().is_none_or(|want| t.host == want),
            (Err(r), want) => kind(r) == want,
            (Ok(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "{input:?} ({}): expected {}, got {got:?}",
                c.why, c.expect
            ));
        }
        if c.expect == "allow" {
            assert!(
                c.canonical.is_some(),
                "allow case without canonical: {input:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn allow() -> Allowlist {
    Allowlist::parse(&["allowed.com", "*.wild.test"]).unwrap()
}

/// Hosts for the properties below: arbitrary text, and spellings of the listed names (case,
/// trailing dot, subdomains of the wildcard base, stray affixes) so the "allowed" branch of a
/// property really runs (see `the_host_generator_reaches_allowed_names`).
fn near_allowed() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[aA][lL][lL][oO][wW][eE][dD]\\.[cC][oO][mM]\\.?",
        "[a-zA-Z0-9-]{1,12}(\\.[a-z0-9]{1,5})?\\.[wW][iI][lL][dD]\\.[tT][eE][sS][tT]\\.?",
        "[ .a-z0-9-]{0,3}(allowed\\.com|x\\.wild\\.test|wild\\.test)[ .:a-z0-9-]{0,3}",
    ]
}

/// How many of `n` generated hosts pass `accept`.
fn generated_passing(n: usize, accept: impl Fn(&str) -> bool) -> usize {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = near_allowed();
    (0..n)
        .filter(|_| accept(&strategy.new_tree(&mut runner).unwrap().current()))
        .count()
}

#[test]
fn the_host_generator_reaches_allowed_names() {
    let allowed = generated_passing(1000, |h| allow().check(h, 443).is_ok());
    assert!(
        allowed >= 200,
        "{allowed} of 1000 generated hosts were allowed: `allowed_means_listed` would be vacuous"
    );
    let canonical = generated_passing(1000, |h| canonical_host(h).is_ok());
    assert!(
        canonical >= 200,
        "{canonical} of 1000 generated hosts had a canonical form: `canonical_is_idempotent` would be vacuous"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the input, an allowed result is one of the listed names (or a real subdomain of
    /// the wildcard base), in plain lowercase ASCII: the thing that gets resolved and dialled.
    #[test]
    fn allowed_means_listed(host in near_allowed(), port in prop::sample::select(vec![80u16, 443, 8443])) {
        if let Ok(t) = allow().check(&host, port) {
            prop_assert!(t.host == "allowed.com" || (t.host.ends_with(".wild.test") && t.host.len() > ".wild.test".len()),
                "{host:?} -> {}", t.host);
            prop_assert!(t.host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
            prop_assert!(port == 80 || port == 443);
        }
    }

    /// Arbitrary prefixes and suffixes around an allowed name never pass.
    #[test]
    fn affixes_never_pass(label in "[a-z0-9][a-z0-9-]{0,20}[a-z0-9]", sep in prop::sample::select(vec![".", "-", ""])) {
        let a = allow();
        let suffixed = format!("allowed.com{sep}{label}");
        let prefixed = format!("{label}{sep}allowed.com");
        prop_assert!(a.check(&suffixed, 443).is_err(), "{suffixed}");
        prop_assert!(a.check(&prefixed, 443).is_err(), "{prefixed}");
        let userinfo = format!("allowed.com@{label}.evil:443");
        prop_assert!(a.check_authority(&userinfo, None).is_err());
    }

    /// Every notation of every IPv4 address is an IP literal.
    #[test]
    fn ipv4_in_any_notation_is_refused(n: u32, form in 0usize..5) {
        let o = n.to_be_bytes();
        let host = match form {
            0 => format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]),
            1 => format!("{n}"),
            2 => format!("0x{n:x}"),
            3 => format!("0{n:o}"),
            _ => format!("0x{:x}.{}", o[0], u32::from_be_bytes([0, o[1], o[2], o[3]])),
        };
        prop_assert_eq!(canonical_host(&host), Err(RefusalReason::IpLiteral), "{}", host);
    }

    /// Canonicalisation is idempotent: checking the dialled name again gives the same name.
    #[test]
    fn canonical_is_idempotent(host in near_allowed()) {
        if let Ok(c) = canonical_host(&host) {
            prop_assert_eq!(canonical_host(&c), Ok(c.clone()));
        }
    }
}
