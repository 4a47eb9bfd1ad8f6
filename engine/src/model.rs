//! The workflow file format, version 1. These types are the source of the JSON Schema checked in
//! at `schemas/workflow.schema.json`; doc comments become the schema's descriptions, which is
//! what editors show on hover.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use secureclaw_risk::Tier;

use crate::units::{DurationText, SizeText};

/// Pattern for step ids and input/env names: short, greppable, safe in templates and paths.
pub const ID_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$";
pub const ENV_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$";

/// A secureclaw workflow: a DAG of steps, each run under policy in a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "secureclaw workflow (version 1)")]
pub struct Workflow {
    /// Format version. Always `1`.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Name of the workflow, used in run records and triggers.
    #[schemars(extend("pattern" = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"))]
    pub name: String,
    /// What the workflow does, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Typed parameters, set with `--input name=value`. Inputs without a default are required.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    /// Environment variables given to every step (values are templates; a number or a boolean
    /// is taken as its text, `8080` or `true`). Only these names are visible to templates as
    /// `env.NAME`; nothing is inherited from the engine's environment.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "env_values"
    )]
    #[schemars(schema_with = "env_schema")]
    pub env: BTreeMap<String, String>,
    /// Sandbox backend and limits for every step (steps may override limits).
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// What starts the workflow when no one is at a terminal: a signed webhook, a schedule, a
    /// file change. Triggers take effect on a server that has the workflow in a registered source
    /// (webhooks also need the operator to bind a name and a secret); the CLI ignores them.
    #[serde(default, rename = "on", skip_serializing_if = "Triggers::is_empty")]
    pub on: Triggers,
    /// What a cluster does when the worker running this workflow is lost mid-run (its lease
    /// lapsed, the run is marked interrupted): `stay` leaves the run interrupted until its
    /// worker returns and rolls it back; `rerun` also starts the workflow again, from the same
    /// commit, as a new task on any worker (only for a workflow from a registered git source,
    /// at most twice in a row). One machine has no other worker and ignores it.
    #[serde(default, skip_serializing_if = "WorkerLost::is_stay")]
    pub on_worker_lost: WorkerLost,
    /// The steps. Order in the file does not matter: `needs` defines the graph.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// What happens to a run whose worker is lost mid-run (see `Workflow::on_worker_lost`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLost {
    /// The run stays interrupted; its worker rolls it back when it returns.
    #[default]
    Stay,
    /// The run stays interrupted, and the workflow starts again as a new task on any worker.
    Rerun,
}

impl WorkerLost {
    pub fn is_stay(&self) -> bool {
        *self == WorkerLost::Stay
    }
}

/// The triggers a workflow declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Run on a signed HTTP delivery to `POST /api/v1/hooks/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
    /// Run on a schedule: a cron expression, or an object with a time zone and a missed-run
    /// policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Re-run when files matching these globs (relative to the workspace) change. `.gitignore`d
    /// files, editor swap files and the run's own writes never trigger a run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
}

impl Triggers {
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.schedule.is_none() && self.watch.is_empty()
    }
}

/// How a webhook delivery is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookPreset {
    /// GitHub: `X-Hub-Signature-256: sha256=HEX`, de-duplicated on `X-GitHub-Delivery`.
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,BASE64`
    /// (HMAC-SHA256 over `id.timestamp.body`), within five minutes.
    StandardWebhooks,
    /// A hex HMAC-SHA256 of the body in one header (`header`, default `X-Signature-256`),
    /// optionally prefixed `sha256=`.
    Hmac,
}

/// A webhook trigger. The secret is never in the file: the operator sets it on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// Signature scheme (default `github`).
    #[serde(default = "default_preset")]
    pub preset: HookPreset,
    /// For `hmac`: the header holding the signature (default `X-Signature-256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// For `github`: the `X-GitHub-Event` values that start a run (default: every event but
    /// `ping`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Inputs taken from the JSON payload: input name → JSON pointer (RFC 6901), e.g.
    /// `ref: /ref`. The value is checked against the input's declared type like a CLI input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

fn default_preset() -> HookPreset {
    HookPreset::Github
}

/// A schedule: `"0 3 * * *"` (UTC), or the object form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScheduleSpec {
    Cron(String),
    Full(Schedule),
}

impl ScheduleSpec {
    /// The object form, with defaults filled in for the short form.
    pub fn full(&self) -> Schedule {
        match self {
            ScheduleSpec::Cron(cron) => Schedule {
                cron: cron.clone(),
                timezone: None,
                missed: MissedRuns::default(),
                overlap: false,
            },
            ScheduleSpec::Full(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// A cron expression: five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Paris` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What to do about times missed while the server was down (default `skip`).
    #[serde(default)]
    pub missed: MissedRuns,
    /// Start a run even while the previous one still runs (default: no, the time is skipped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlap: bool,
}

/// Missed-run policy after downtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Forget the missed times; wait for the next one.
    #[default]
    Skip,
    /// Run once at start-up if any time was missed, however many.
    RunOnce,
}

/// Declared type of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Array => "array",
            InputType::Object => "object",
        }
    }

    pub fn accepts(self, v: &Value) -> bool {
        match self {
            InputType::String => v.is_string(),
            InputType::Integer => v.is_i64() || v.is_u64(),
            InputType::Number => v.is_number(),
            InputType::Boolean => v.is_boolean(),
            InputType::Array => v.is_array(),
            InputType::Object => v.is_object(),
        }
    }
}

/// One input parameter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The value's type; `--input` values are parsed to it.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Value used when the input is not given. Without a default the input is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A secret (a token, a password): its value is replaced by `[secret:NAME]` in step output,
    /// run records, `show`, events and the ledger. Pass it with `--input-file`,
    /// `--input NAME=@env:VAR` or `--input NAME=@-` (stdin), never on the command line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// Sandbox backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// No isolation at all: a plain child process. Must be chosen explicitly.
    Host,
    /// Linux namespaces + seccomp + Landlock + cgroups (the default).
    Native,
    /// An ephemeral hardened Docker container per step.
    Docker,
    /// gVisor's user-space kernel (`runsc`) per step: for the code you trust least.
    Gvisor,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Host => "host",
            Backend::Native => "native",
            Backend::Docker => "docker",
            Backend::Gvisor => "gvisor",
        }
    }
}

/// Sandbox settings. At workflow level they apply to every step; a step's own `sandbox`
/// overrides individual limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Backend to run steps in (default `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Memory limit (default `512Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SizeText>,
    /// CPU limit in cores (default `1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1024.0))]
    pub cpus: Option<f64>,
    /// Maximum number of processes (default `128`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub pids: Option<u32>,
    /// Wall-clock limit per step (default `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// Bytes of stdout and of stderr kept per step (default `1Mi`); the rest is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap: Option<SizeText>,
    /// Container image for the `docker` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Run even if the kernel cannot provide every isolation layer (recorded in the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_degraded: Option<bool>,
    /// Write budget: how much a step may add to the disk that holds the workspace (default
    /// `1Gi`). Past it the step is stopped and fails with the reason `disk budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<SizeText>,
    /// Extra host paths a step may read (toolchains in a home directory): absolute or `~/…`,
    /// mounted read-only at the same path. Never a home directory itself, never the state
    /// dir; credentials inside (e.g. `~/.cargo/credentials.toml`) stay hidden. A step's list
    /// adds to the workflow's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
}

/// One step. Exactly one of `read`, `write`, `patch`, `shell`, `http` must be present.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["read"]},
    {"required": ["write"]},
    {"required": ["patch"]},
    {"required": ["shell"]},
    {"required": ["http"]}
]))]
pub struct Step {
    /// Unique id; other steps refer to it in `needs` and templates (`steps.ID.output`, or
    /// `steps['my-id'].output` when it contains `-`).
    #[schemars(extend("pattern" = ID_PATTERN))]
    pub id: String,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Steps that must finish before this one starts: one id (`needs: build`) or a list. By
    /// default they must all have succeeded (`if: failure()` and `if: always()` change that).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    #[schemars(schema_with = "needs_schema")]
    pub needs: Vec<String>,
    /// Condition (a template expression such as `inputs.days > 3`); the step is skipped when
    /// false. `success()` (the default), `failure()` and `always()` say which outcomes of the
    /// steps upstream it runs after: `if: failure()` runs only when one of them failed, `if:
    /// always()` whatever happened; combine them with `and`/`&&`, `or`/`||`, `not`/`!`.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Extra environment variables for this step (values are templates; a number or a boolean
    /// is taken as its text).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "env_values"
    )]
    #[schemars(schema_with = "env_schema")]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit for this step (overrides `sandbox.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// Retry on failure: a number of attempts, or `{attempts, backoff}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Raise the risk tier (it can never be lowered below what the classifier computes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Tier>,
    /// Always pause for approval before this step, whatever its tier.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve: bool,
    /// Domains this step may reach (tier `network_egress`, approval required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    /// The action that undoes this step's external effect (for `http` steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Box<Compensate>>,
    /// Keep the step's workspace changes even if it fails (default: roll them back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_on_failure: bool,
    /// When the step fails, go on as if it had succeeded: its dependents run and the run does
    /// not fail because of it (the step itself stays `failed`, marked continued). Its workspace
    /// changes are still rolled back unless `keep_on_failure`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Per-step limit overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSettings>,

    /// Read a file or the list of files matching a glob (output: the content or the paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadAction>,
    /// Write a file in the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteAction>,
    /// Apply a unified diff to a file in the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchAction>,
    /// Run a shell command (`/bin/sh -c`) in the sandbox, with the workspace as working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Make an HTTP request (tier `network_egress`; its host must be listed in `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpAction>>,
}

/// `needs: build` is `needs: [build]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Ids;
    impl<'de> serde::de::Visitor<'de> for Ids {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a step id or a list of step ids")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(id) = seq.next_element::<String>()? {
                out.push(id);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Ids)
}

fn needs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // One `type` list rather than `anyOf`: a wrong value is reported as "must be a string or a
    // list", at the value.
    schemars::json_schema!({
        "type": ["string", "array"],
        "items": {"type": "string"}
    })
}

/// Environment values as GitHub Actions reads them: `PORT: 8080` is `"8080"`, `DEBUG: true`
/// is `"true"`. An empty value or a mapping stays an error.
fn env_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Scalar;
    impl serde::de::Visitor<'_> for Scalar {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string, a number or a boolean")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    struct EnvValue(String);
    impl<'de> Deserialize<'de> for EnvValue {
        fn deserialize<D2: serde::Deserializer<'de>>(d: D2) -> Result<Self, D2::Error> {
            d.deserialize_any(Scalar).map(EnvValue)
        }
    }
    let raw = BTreeMap::<String, EnvValue>::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn env_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "propertyNames": {"pattern": ENV_NAME_PATTERN}
    })
}

/// `retry: 3` or `retry: {attempts: 3, backoff: 2s}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RetrySpec {
    Attempts(#[schemars(range(min = 1, max = 20))] u32),
    Detailed(Retry),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts, including the first.
    #[schemars(range(min = 1, max = 20))]
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<DurationText>,
    /// Upper bound for the delay (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<DurationText>,
}

/// Read a single file (`path`) or list files (`glob`). Paths are relative to the workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["path"]}, {"required": ["glob"]}]))]
pub struct ReadAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Refuse files larger than this (default `16Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<SizeText>,
}

/// Write `content` to `path` (relative to the workspace; parent directories are created).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteAction {
    pub path: String,
    pub content: String,
    /// Append instead of replacing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    /// File mode as an octal string, e.g. `"0644"` or `"0755"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^0?[0-7]{3,4}$"))]
    pub mode: Option<String>,
}

/// Apply a unified diff (as produced by `diff -u` or `git diff`) to one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAction {
    pub path: String,
    pub diff: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Head => "HEAD",
        }
    }
}

/// An HTTP request made by the engine (URL, headers and body are templates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    #[serde(default)]
    pub method: HttpMethod,
    #[schemars(extend("pattern" = "^(https?://|\\{\\{)"))]
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Raw request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// JSON request body (string values are templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// Request timeout (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// Largest response body accepted (default `4Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response: Option<SizeText>,
    /// Status codes that count as success (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<u16>,
}

/// How to undo a step's external effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["http"]}, {"required": ["shell"]}]))]
pub struct Compensate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// A step's action, resolved from the five optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Read,
    Write,
    Patch,
    Shell,
    Http,
}

impl ActionKind {
    pub const ALL: [ActionKind; 5] = [
        ActionKind::Read,
        ActionKind::Write,
        ActionKind::Patch,
        ActionKind::Shell,
        ActionKind::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Read => "read",
            ActionKind::Write => "write",
            ActionKind::Patch => "patch",
            ActionKind::Shell => "shell",
            ActionKind::Http => "http",
        }
    }

    /// Whether a step of this kind may change the workspace (and so is serialised and snapshotted).
    pub fn may_write(self) -> bool {
        matches!(
            self,
            ActionKind::Write | ActionKind::Patch | ActionKind::Shell
        )
    }
}

impl Step {
    /// The actions present on this step (exactly one in a valid workflow).
    pub fn actions(&self) -> Vec<ActionKind> {
        let mut out = Vec::new();
        if self.read.is_some() {
            out.push(ActionKind::Read);
        }
        if self.write.is_some() {
            out.push(ActionKind::Write);
        }
        if self.patch.is_some() {
            out.push(ActionKind::Patch);
        }
        if self.shell.is_some() {
            out.push(ActionKind::Shell);
        }
        if self.http.is_some() {
            out.push(ActionKind::Http);
        }
        out
    }

    /// The step's single action kind. Validation guarantees there is exactly one.
    pub fn kind(&self) -> ActionKind {
        self.actions().first().copied().unwrap_or(ActionKind::Shell)
    }
}

/// The JSON Schema of the workflow format, as checked in at `schemas/workflow.schema.json`.
pub fn workflow_schema() -> Value {
    // `timeout:` left empty in YAML is a mistake worth reporting, not a silent default, so
    // optional keys are "may be absent", never "may be null".
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(schemars::transform::RecursiveTransform(
            drop_null_from_options,
        ))
        .into_generator()
        .into_root_schema_for::<Workflow>();
    let mut v = schema.to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "$id".into(),
            Value::String("https://secureclaw.dev/schemas/workflow.schema.json".into()),
        );
    }
    v
}

/// The schema as pretty JSON with a trailing newline (the checked-in form).
pub fn workflow_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&workflow_schema()).unwrap_or_default();
    s.push('\n');
    s
}

fn drop_null_from_options(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            obj.insert("type".into(), only);
        }
    }
    let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
    if let Some(Value::Array(branches)) = obj.get("anyOf")
        && branches.len() == 2
        && branches.iter().any(is_null)
    {
        let keep = branches.iter().find(|b| !is_null(b)).cloned();
        obj.remove("anyOf");
        if let Some(Value::Object(inner)) = keep {
            for (k, v) in inner {
                obj.entry(k).or_insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::validate::validate_bytes;

    #[test]
    fn needs_may_be_one_id_and_env_values_may_be_numbers_or_booleans() {
        let wf = validate_bytes(
            Path::new("wf.yaml"),
            b"version: 1\nname: n\nenv: { PORT: 8080, RATIO: 0.5, DEBUG: true, NAME: x }\nsteps:\n  - id: build\n    shell: make\n  - id: test\n    needs: build\n    env: { RETRIES: 3, QUIET: false }\n    shell: make test\n",
        )
        .unwrap();
        let w = &wf.workflow;
        assert_eq!(w.steps[1].needs, ["build"]);
        assert_eq!(wf.deps[1], [0]);
        let env: Vec<(&str, &str)> = w
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("DEBUG", "true"),
                ("NAME", "x"),
                ("PORT", "8080"),
                ("RATIO", "0.5")
            ]
        );
        assert_eq!(w.steps[1].env["RETRIES"], "3");
        assert_eq!(w.steps[1].env["QUIET"], "false");
        // The list form is what is written back.
        let back = serde_json::to_value(&w.steps[1]).unwrap();
        assert_eq!(back["needs"], serde_json::json!(["build"]));
    }

    #[test]
    fn empty_or_nested_env_values_and_wrong_needs_are_located_errors() {
        let err = validate_bytes(
            Path::new("wf.yaml"),
            b"version: 1\nname: n\nenv:\n  EMPTY:\n  NESTED: { a: 1 }\nsteps:\n  - id: a\n    needs: 3\n    shell: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("wf.yaml:4:"), "{err}");
        assert!(err.contains("`EMPTY` must be "), "{err}");
        assert!(err.contains("a number or a string, found null"), "{err}");
        assert!(err.contains("wf.yaml:5:"), "{err}");
        assert!(err.contains("found a mapping"), "{err}");
        assert!(err.contains("wf.yaml:8:12"), "{err}");
        assert!(
            err.contains("`needs` must be a string or a list, found an integer"),
            "{err}"
        );
        let err = validate_bytes(
            Path::new("wf.yaml"),
            b"version: 1\nname: n\nsteps:\n  - id: build\n    shell: x\n  - id: t\n    needs: biuld\n    shell: y\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("wf.yaml:7:12"), "{err}");
        assert!(err.contains("needs unknown step `biuld`"), "{err}");
    }
}
