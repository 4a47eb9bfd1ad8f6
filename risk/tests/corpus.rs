//! The labelled corpus: real-world commands with the tier a careful reviewer would give them.
//!
//! Run with `cargo test -p secureclaw-risk --test corpus -- --nocapture` to see the figures
//! reported in docs/perf-risk.md.

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
}

struct Report {
    destructive: Confusion,
    network: Confusion,
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
    println!("{name}: {} commands", cases.len());
    println!(
        "destructive: tp={} fp={} fn={} tn={} precision={:.3} recall={:.3}",
        destructive.tp,
        destructive.fp,
        destructive.fn_,
        destructive.tn,
        destructive.precision(),
        destructive.recall()
    );
    println!(
        "network_egress: tp={} fp={} fn={} tn={} precision={:.3} recall={:.3}",
        network.tp,
        network.fp,
        network.fn_,
        network.tn,
        network.precision(),
        network.recall()
    );
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
