//! A ledger entry, the entry the engine hands in, and the canonical JSON both are MAC'd in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::VaultError;

/// Entry kinds the engine writes. `kind` is a free string so the engine can add more; these are
/// the ones the engine writes.
pub mod kind {
    pub const RUN_STARTED: &str = "run_started";
    pub const RUN_FINISHED: &str = "run_finished";
    pub const STEP_STARTED: &str = "step_started";
    pub const STEP_FINISHED: &str = "step_finished";
    pub const STEP_FAILED: &str = "step_failed";
    pub const APPROVAL_GIVEN: &str = "approval_given";
    pub const REVERT_STARTED: &str = "revert_started";
    pub const REVERT_FINISHED: &str = "revert_finished";
    pub const ACTION_REVERTED: &str = "action_reverted";
    pub const SANDBOX_REFUSED: &str = "sandbox_refused";
    /// The planner turned an instruction into a workflow (provenance: hashes only).
    pub const PLAN_CREATED: &str = "plan_created";
    /// A run stopped at approval gates and was saved to be resumed.
    pub const RUN_PARKED: &str = "run_parked";
    /// A parked run continued.
    pub const RUN_RESUMED: &str = "run_resumed";
    /// A failed run continued from its failed step (`result.steps`: the steps run again).
    pub const RUN_RETRIED: &str = "run_retried";
    /// An account was created (by registration or by the operator).
    pub const AUTH_REGISTERED: &str = "auth_registered";
    /// A sign-in succeeded (`result.method`: password, totp).
    pub const AUTH_LOGIN: &str = "auth_login";
    /// A sign-in failed (`result.reason`: unknown user, bad password, bad code, replayed code).
    pub const AUTH_LOGIN_FAILED: &str = "auth_login_failed";
    /// An account or client address was locked out after repeated failures.
    pub const AUTH_LOCKOUT: &str = "auth_lockout";
    /// A session ended by sign-out or revocation.
    pub const AUTH_LOGOUT: &str = "auth_logout";
    /// Two-factor sign-in was turned on or off (`result.enabled`).
    pub const AUTH_2FA_CHANGED: &str = "auth_2fa_changed";
    /// A task was created from an instruction or a workflow.
    pub const TASK_CREATED: &str = "task_created";
    /// A workflow's schedule started a run (`result`: source, path, due time, task, run).
    pub const SCHEDULE_FIRED: &str = "schedule_fired";
    /// A schedule's time passed without a run (`result.reason`: the previous run was still
    /// going, the time was missed while the server was down, the run could not start).
    pub const SCHEDULE_SKIPPED: &str = "schedule_skipped";
    /// A change to watched files started a run (`result`: source, path, changed files).
    pub const WATCH_FIRED: &str = "watch_fired";
    /// A webhook trigger was bound to a workflow (never its secret).
    pub const TRIGGER_BOUND: &str = "trigger_bound";
    /// A webhook trigger was enabled, disabled or removed (`result.change`).
    pub const TRIGGER_CHANGED: &str = "trigger_changed";
    /// A webhook trigger's secret was replaced (`result.grace_until`: when the old one stops).
    pub const TRIGGER_SECRET_ROTATED: &str = "trigger_secret_rotated";
    /// A webhook delivery (`result.outcome`: accepted, duplicate, ignored, refused + reason).
    pub const TRIGGER_DELIVERY: &str = "trigger_delivery";
}

/// One ledger entry as stored, exported and MAC'd. Every field is always present (absent ones
/// are `null`), so the canonical form has a fixed key set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "secureclaw ledger entry")]
pub struct LedgerEntry {
    /// Position in the ledger, starting at 1, without gaps.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// When the entry was appended, RFC 3339 UTC.
    pub time: String,
    /// Who acted: `engine`, `user:<name>`, `cli`...
    pub actor: String,
    /// Run id, when the entry belongs to a run.
    #[schemars(required)]
    pub run: Option<String>,
    /// Step id within the run.
    #[schemars(required)]
    pub step: Option<String>,
    /// What happened: `run_started`, `step_finished`, `sandbox_refused`...
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub kind: String,
    /// Risk tier (engine-defined JSON).
    #[schemars(required)]
    pub tier: Option<Value>,
    /// Sandbox enforcement report (engine-defined JSON).
    #[schemars(required)]
    pub enforcement: Option<Value>,
    /// Workspace manifest hash before the step.
    #[schemars(required)]
    pub pre_manifest: Option<String>,
    /// Workspace manifest hash after the step.
    #[schemars(required)]
    pub post_manifest: Option<String>,
    /// How to undo the action (engine-defined JSON).
    #[schemars(required)]
    pub inverse: Option<Value>,
    /// Outcome (engine-defined JSON).
    #[schemars(required)]
    pub result: Option<Value>,
}

/// What the engine hands to `append`: an entry without `seq` and `time`, which the ledger
/// assigns inside the write transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    pub actor: String,
    pub kind: String,
    pub run: Option<String>,
    pub step: Option<String>,
    pub tier: Option<Value>,
    pub enforcement: Option<Value>,
    pub pre_manifest: Option<String>,
    pub post_manifest: Option<String>,
    pub inverse: Option<Value>,
    pub result: Option<Value>,
}

impl NewEntry {
    pub fn new(actor: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            kind: kind.into(),
            ..Self::default()
        }
    }
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }
    pub fn step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }
    pub fn tier(mut self, tier: impl Into<Value>) -> Self {
        self.tier = Some(tier.into());
        self
    }
    pub fn enforcement(mut self, report: Value) -> Self {
        self.enforcement = Some(report);
        self
    }
    pub fn manifests(mut self, pre: Option<String>, post: Option<String>) -> Self {
        self.pre_manifest = pre;
        self.post_manifest = post;
        self
    }
    pub fn inverse(mut self, inverse: Value) -> Self {
        self.inverse = Some(inverse);
        self
    }
    pub fn result(mut self, result: Value) -> Self {
        self.result = Some(result);
        self
    }
}

/// Canonical JSON as RFC 8785 (JCS) defines it: object keys sorted, no insignificant
/// whitespace, strings and numbers in their one ECMAScript form, so any JCS implementation
/// computes the same bytes (the ledger still refuses floats at append; see
/// [`refuse_non_integers`]).
pub fn canonical_json(v: &Value) -> Vec<u8> {
    // A `Value` holds only string keys and finite numbers, the two things JCS could refuse, so
    // this cannot fail; were it to, the empty output matches no recorded MAC and verification
    // refuses rather than passes.
    serde_json_canonicalizer::to_vec(v).unwrap_or_default()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(&canonical_json(v));
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic (", \, control characters; nothing else).
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `canonical_json(to_value(e))` without building a `Value` for the whole entry (appends are
/// allocation-bound otherwise). Keys are written in sorted order; a unit test checks the
/// output equals the generic path, so a new field cannot be forgotten here.
pub(super) fn entry_canonical(e: &LedgerEntry) -> Result<Vec<u8>, VaultError> {
    fn key(out: &mut Vec<u8>, k: &str, first: bool) {
        if !first {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
    }
    fn opt_str(out: &mut Vec<u8>, v: Option<&String>) {
        match v {
            Some(s) => write_string(s, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_val(out: &mut Vec<u8>, v: Option<&Value>) {
        match v {
            Some(v) => write_canonical(v, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    key(&mut out, "actor", true);
    write_string(&e.actor, &mut out);
    key(&mut out, "enforcement", false);
    opt_val(&mut out, e.enforcement.as_ref());
    key(&mut out, "inverse", false);
    opt_val(&mut out, e.inverse.as_ref());
    key(&mut out, "kind", false);
    write_string(&e.kind, &mut out);
    key(&mut out, "post_manifest", false);
    opt_str(&mut out, e.post_manifest.as_ref());
    key(&mut out, "pre_manifest", false);
    opt_str(&mut out, e.pre_manifest.as_ref());
    key(&mut out, "result", false);
    opt_val(&mut out, e.result.as_ref());
    key(&mut out, "run", false);
    opt_str(&mut out, e.run.as_ref());
    key(&mut out, "seq", false);
    out.extend_from_slice(e.seq.to_string().as_bytes());
    key(&mut out, "step", false);
    opt_str(&mut out, e.step.as_ref());
    key(&mut out, "tier", false);
    opt_val(&mut out, e.tier.as_ref());
    key(&mut out, "time", false);
    write_string(&e.time, &mut out);
    out.push(b'}');
    Ok(out)
}

pub(crate) fn now_rfc3339() -> Result<String, VaultError> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| VaultError::Crypto(format!("formatting the clock: {e}")))
}

/// JCS gives a float one printed form, but a verifier without a JCS library (the standard-library
/// Python verifier, `jq`) prints floats its own way (Python writes `1e+20`), so an entry carrying
/// one could not be verified everywhere: the ledger stays integer-only and refuses it at append.
pub(super) fn refuse_non_integers(e: &LedgerEntry) -> Result<(), VaultError> {
    fn first_float(v: &Value) -> Option<&serde_json::Number> {
        match v {
            Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => Some(n),
            Value::Array(items) => items.iter().find_map(first_float),
            Value::Object(m) => m.values().find_map(first_float),
            _ => None,
        }
    }
    for (name, v) in [
        ("tier", &e.tier),
        ("enforcement", &e.enforcement),
        ("inverse", &e.inverse),
        ("result", &e.result),
    ] {
        if let Some(n) = v.as_ref().and_then(first_float) {
            return Err(VaultError::InvalidParams(format!(
                "ledger entry `{name}` holds the non-integer number {n}: entries carry integers only"
            )));
        }
    }
    Ok(())
}
