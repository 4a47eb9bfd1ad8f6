//! The labelled corpus: real-world commands with the tier a careful reviewer would give them.
//!
//! Run with `cargo test -p secureclaw-risk --test corpus -- --nocapture` to see the figures
//! reported in docs/performance.md.

use secureclaw_risk::{Tier, classify_shell};

struct Case {
    line: usize,
    expected: Vec<Tier>,
    command: String,
    source: String,
}

fn load(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            3,
            "corpus line {}: expected 3 tab-separated columns",
            i + 1
        );
        let expected = cols[0]
            .split(',')
            .map(|t| {
                t.parse::<Tier>()
                    .unwrap_or_else(|e| panic!("line {}: {e}", i + 1))
            })
            .collect();
        cases.push(Case {
            line: i + 1,
            expected,
            command: cols[1].replace("\\n", "\n"),
            source: cols[2].to_string(),
        });
    }
    cases
}

#[derive(Default, Debug)]
struct Confusion {
    tp: usize,
    fp: usize,
    fn_: usize,
    tn: usize,
}

impl Confusion {
    fn add(&mut self, expected: bool, predicted: bool) {
        match (expected, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }
    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

struct Report {
    destructive: Confusion,
    network: Confusion,
    /// Per top tier (in `Tier::ALL` order): labelled with it and predicted as it.
    tiers: [Confusion; 4],
}

impl Report {
    /// Share of the commands labelled with this top tier that got it.
    fn accuracy(&self, tier: Tier) -> f64 {
        let i = Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0);
        self.tiers[i].recall()
    }
}

fn evaluate(name: &str, cases: &[Case]) -> Report {
    let mut destructive = Confusion::default();
    let mut network = Confusion::default();
    let mut matrix = [[0usize; 4]; 4];
    let mut exact = 0;
    let mut misses = Vec::new();
    for case in cases {
        let a = classify_shell(&case.command);
        let top_expected = case.expected[0];
        let d_exp = case.expected.contains(&Tier::Destructive);
        let d_pred = a.has_tier(Tier::Destructive);
        let n_exp = case.expected.contains(&Tier::NetworkEgress);
        let n_pred = a.has_tier(Tier::NetworkEgress);
        destructive.add(d_exp, d_pred);
        network.add(n_exp, n_pred);
        let ei = Tier::ALL
            .iter()
            .position(|t| *t == top_expected)
            .unwrap_or(0);
        let pi = Tier::ALL.iter().position(|t| *t == a.tier).unwrap_or(0);
        matrix[ei][pi] += 1;
        if ei == pi && d_exp == d_pred {
            exact += 1;
        } else {
            let rules: Vec<String> = a
                .matched
                .iter()
                .map(|h| format!("{}:{}", h.rule, h.tier))
                .collect();
            misses.push(format!(
                "  line {:>3}: expected {:<28} got {:<15} [{}]  {}   ({})",
                case.line,
                case.expected
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                a.tier.as_str(),
                rules.join(" "),
                case.command.replace('\n', "\\n"),
                case.source
            ));
        }
    }
    let mut tiers: [Confusion; 4] = Default::default();
    for (t, conf) in tiers.iter_mut().enumerate() {
        for (e, row) in matrix.iter().enumerate() {
            for (p, n) in row.iter().enumerate() {
                match (e == t, p == t) {
                    (true, true) => conf.tp += n,
                    (false, true) => conf.fp += n,
                    (true, false) => conf.fn_ += n,
                    (false, false) => conf.tn += n,
                }
            }
        }
    }
    println!("{name}: {} commands", cases.len());
    for (label, c) in [("destructive", &destructive), ("network_egress", &network)] {
        println!(
            "{label} (has tier): tp={} fp={} fn={} tn={} precision={:.3} recall={:.3} f1={:.3}",
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            c.precision(),
            c.recall(),
            c.f1()
        );
    }
    for (t, c) in Tier::ALL.iter().zip(tiers.iter()) {
        println!(
            "top tier {:<15} n={:>3} precision={:.3} recall={:.3} f1={:.3}",
            t.as_str(),
            c.tp + c.fn_,
            c.precision(),
            c.recall(),
            c.f1()
        );
    }
    println!(
        "top tier (rows expected, columns predicted: read_only low_write destructive network_egress):"
    );
    for (t, row) in Tier::ALL.iter().zip(matrix.iter()) {
        println!(
            "  {:<15} {:>4} {:>4} {:>4} {:>4}",
            t.as_str(),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    println!(
        "exact (top tier and destructive flag): {}/{}",
        exact,
        cases.len()
    );
    println!("disagreements:");
    for m in &misses {
        println!("{m}");
    }
    Report {
        destructive,
        network,
        tiers,
    }
}

#[test]
fn corpus_precision_and_recall() {
    let cases = load(include_str!("corpus.tsv"));
    assert!(
        cases.len() >= 150,
        "corpus has only {} commands",
        cases.len()
    );
    let r = evaluate("corpus", &cases);
    // Thresholds: missing a destructive command is the failure users were burnt by, so recall
    // is held higher than precision (a false positive only costs one extra confirmation).
    assert!(
        r.destructive.recall() >= 0.98,
        "destructive recall {:.3}",
        r.destructive.recall()
    );
    assert!(
        r.destructive.precision() >= 0.95,
        "destructive precision {:.3}",
        r.destructive.precision()
    );
    assert!(
        r.network.recall() >= 0.95,
        "network recall {:.3}",
        r.network.recall()
    );
    assert!(
        r.network.precision() >= 0.95,
        "network precision {:.3}",
        r.network.precision()
    );
}

/// Commands never used to tune the rules: the honest estimate. Looser thresholds, same spirit.
#[test]
fn holdout_precision_and_recall() {
    let cases = load(include_str!("holdout.tsv"));
    let r = evaluate("holdout", &cases);
    assert!(
        r.destructive.recall() >= 0.9,
        "destructive recall {:.3}",
        r.destructive.recall()
    );
    assert!(
        r.destructive.precision() >= 0.85,
        "destructive precision {:.3}",
        r.destructive.precision()
    );
    assert!(
        r.network.recall() >= 0.9,
        "network recall {:.3}",
        r.network.recall()
    );
}

/// A second held-out set, written before the rules for destruction without `rm`, commands run
/// through another tool's options and help/dry-run queries, and never used to tune them.
#[test]
fn holdout2_destructive_f1_and_tier_accuracy() {
    let cases = load(include_str!("holdout2.tsv"));
    assert!(
        cases.len() >= 120,
        "holdout2 has only {} commands",
        cases.len()
    );
    let r = evaluate("holdout2", &cases);
    assert!(
        r.destructive.f1() >= 0.97,
        "destructive f1 {:.3}",
        r.destructive.f1()
    );
    assert!(r.network.f1() >= 0.95, "network f1 {:.3}", r.network.f1());
    for (tier, min) in [
        (Tier::ReadOnly, 0.95),
        (Tier::LowWrite, 0.9),
        (Tier::Destructive, 0.95),
        (Tier::NetworkEgress, 0.95),
    ] {
        assert!(
            r.accuracy(tier) >= min,
            "{tier} accuracy {:.3} < {min}",
            r.accuracy(tier)
        );
    }
}

/// A third held-out set, written after the rules for destruction without `rm` were finished.
/// Its first run missed `git remote show -n` and `docker compose pull` (neither destructive);
/// both got rules afterwards, so only that first run is an unfitted figure.
#[test]
fn holdout3_precision_and_recall() {
    let cases = load(include_str!("holdout3.tsv"));
    assert!(
        cases.len() >= 60,
        "holdout3 has only {} commands",
        cases.len()
    );
    let r = evaluate("holdout3", &cases);
    assert!(
        r.destructive.f1() >= 0.97,
        "destructive f1 {:.3}",
        r.destructive.f1()
    );
    assert!(r.network.f1() >= 0.95, "network f1 {:.3}", r.network.f1());
    for tier in Tier::ALL {
        assert!(
            r.accuracy(tier) >= 0.9,
            "{tier} accuracy {:.3}",
            r.accuracy(tier)
        );
    }
}
