//! Every unit's scores on a split of the injection data, as TSV on stdout: the row, its label,
//! source and family, whether the rule layers flag it, and for each unit the cascade reads the
//! n-gram logit and the student's and the full model's probabilities (-1 where a stage did not
//! read it). Every unit is read by all three models, whatever the calibrated bounds, so one dump
//! answers questions such as "what recall at 16 false positives with this student bound", "where
//! do the false positives come from", or "would two models ranked together do better".
//!
//! `cargo run -p secureclaw-llm --release --features ml --example injection-scores -- test > test.tsv`
//! (`val` or `test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/labelled/mod.rs"]
mod labelled;

fn main() {
    use secureclaw_llm::Detector;
    use secureclaw_llm::cascade::CascadeLayer;

    let split = std::env::args().nth(1).unwrap_or_else(|| "val".to_owned());
    assert!(split == "val" || split == "test", "split: val or test");
    let rows = labelled::split(&split);
    let rules = Detector::rules().unwrap();
    let every = CascadeLayer::uncalibrated()
        .unwrap()
        .with_student_bound(0.0);
    println!("row\tattack\tsource\tcategory\trules\tunit\tlexical\tstudent\tfull\tbytes");
    for (i, r) in rows.iter().enumerate() {
        let head = format!(
            "{i}\t{}\t{}\t{}\t{}",
            u8::from(r.attack),
            r.source,
            r.category,
            u8::from(rules.scan(&r.text).flagged)
        );
        let units = every.text_scores(&r.text, f32::NEG_INFINITY).unwrap();
        if units.is_empty() {
            // Too short to be scored: the learned layers never flag it.
            println!("{head}\t-1\t-99\t-1\t-1\t0");
        }
        for (j, u) in units.iter().enumerate() {
            println!(
                "{head}\t{j}\t{}\t{}\t{}\t{}",
                u.lexical,
                u.student.unwrap_or(-1.0),
                u.model.unwrap_or(-1.0),
                u.span.len()
            );
        }
    }
}
