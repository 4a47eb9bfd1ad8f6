//! Reading a step's hardening report.

use secureclaw_sandbox::{ExecOutcome, Layer};

/// The report's layer called `name`, if any.
pub fn layer<'a>(out: &'a ExecOutcome, name: &str) -> Option<&'a Layer> {
    out.enforcement.layers.iter().find(|l| l.name == name)
}

/// The report states the step had no write budget (a budget of 0): the `write-budget` layer is
/// inactive and says "none", rather than claiming a budget of 0 bytes.
pub fn assert_no_write_budget(out: &ExecOutcome) {
    let budget = layer(out, "write-budget");
    assert!(
        budget.is_some_and(|l| !l.active && l.detail.starts_with("none")),
        "{budget:?}"
    );
}
