//! Run a workflow of a registered source: its declared inputs as a form, then the API's
//! `POST /api/v1/workflows/run` as the viewer.
//!
//! ```text
//! GET  /ui/workflows/run?source=S&path=P   the inputs, typed controls, defaults filled in
//! POST /ui/workflows/run                   run_workflow ──303──► /ui/tasks/{id}
//!                                          (bad inputs: the form again, errors by the fields)
//! ```

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Redirect};
use axum::routing::get;
use minijinja::{Value, context};
use secureclaw_engine::inputs::{InputError, InputSources, resolve_sources};
use secureclaw_engine::model::{InputSpec, InputType};
use secureclaw_engine::validate::Validated;
use serde::{Deserialize, Serialize};

use super::task_path;
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::sources::routes::RunWorkflow;
use crate::ui::forms::UiForm;
use crate::ui::{UiResult, Viewer};

pub const RUN_WORKFLOW: &str = "/ui/workflows/run";

/// Form fields of inputs are named `input.NAME`, so they never clash with `csrf` and friends.
const FIELD_PREFIX: &str = "input.";

pub fn routes() -> Router<AppState> {
    Router::new().route(RUN_WORKFLOW, get(run_page).post(run))
}

/// The address of the run form of `path` in `source`.
pub fn run_path(source: &str, path: &str) -> String {
    format!(
        "{RUN_WORKFLOW}?{}",
        serde_html_form::to_string([("source", source), ("path", path)]).unwrap_or_default()
    )
}

/// The HTML control an input gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Text,
    /// A secret: a password field, never filled in by the page.
    Password,
    /// `<input type=number step=1>`.
    Integer,
    /// `<input type=number step=any>`.
    Number,
    Checkbox,
    /// Arrays and objects, typed as JSON.
    Json,
}

pub fn control_of(spec: &InputSpec) -> Control {
    match spec.kind {
        InputType::String if spec.secret => Control::Password,
        InputType::String => Control::Text,
        InputType::Integer => Control::Integer,
        InputType::Number => Control::Number,
        InputType::Boolean => Control::Checkbox,
        InputType::Array | InputType::Object => Control::Json,
    }
}

/// One input of the form.
#[derive(Debug, Serialize)]
struct Field {
    name: String,
    control: Control,
    kind: &'static str,
    description: Option<String>,
    required: bool,
    secret: bool,
    /// What the control shows: the value sent, else the default (never a secret's).
    value: String,
    checked: bool,
    error: Option<String>,
}

/// The text a control shows for a JSON value.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fields(v: &Validated, sent: Option<&BTreeMap<String, String>>) -> Vec<Field> {
    v.workflow
        .inputs
        .iter()
        .map(|(name, spec)| {
            let control = control_of(spec);
            let given = sent.and_then(|s| s.get(&format!("{FIELD_PREFIX}{name}")));
            let default = spec.default.as_ref();
            let value = match (given, spec.secret) {
                (_, true) => String::new(),
                (Some(g), false) => g.clone(),
                (None, false) => default.map(shown).unwrap_or_default(),
            };
            let checked = match sent {
                Some(_) => given.is_some(),
                None => default == Some(&serde_json::Value::Bool(true)),
            };
            Field {
                name: name.clone(),
                control,
                kind: spec.kind.as_str(),
                description: spec.description.clone(),
                required: default.is_none(),
                secret: spec.secret,
                value,
                checked,
                error: None,
            }
        })
        .collect()
}

/// The input values a submitted form carries, as the API takes them (strings are parsed to
/// the declared type there). An empty field is not given (the default applies, or it is
/// missing); an unchecked box is `false`.
fn values_of(
    v: &Validated,
    sent: &BTreeMap<String, String>,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (name, spec) in &v.workflow.inputs {
        let given = sent.get(&format!("{FIELD_PREFIX}{name}"));
        match (control_of(spec), given) {
            (Control::Checkbox, g) => {
                out.insert(name.clone(), serde_json::Value::Bool(g.is_some()));
            }
            // A field left empty is not given: the default applies, or it is missing.
            (_, Some(g)) if g.is_empty() => {}
            (_, Some(g)) => {
                out.insert(name.clone(), serde_json::Value::String(g.clone()));
            }
            (_, None) => {}
        }
    }
    out
}

/// The input a resolution error is about.
fn input_of(e: &InputError) -> Option<&str> {
    match e {
        InputError::Unknown { name, .. }
        | InputError::Type { name, .. }
        | InputError::NoEnv { name, .. } => Some(name),
        InputError::Missing(name) => Some(name),
        InputError::Syntax(_) | InputError::StdinTwice | InputError::File(_) => None,
    }
}

#[derive(Debug, Deserialize)]
pub struct Target {
    pub source: String,
    pub path: String,
}

async fn run_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(target): Query<Target>,
) -> UiResult {
    let v = workflow_of(&state, &target).await?;
    let fields = fields(&v, None);
    page(&state, &viewer, &target, &v, fields, None, StatusCode::OK)
}

/// The workflow file as the API would run it now (the source's last fetch).
async fn workflow_of(state: &AppState, target: &Target) -> Result<Validated, ApiError> {
    Ok(state
        .sources
        .resolve(state, &target.source, &target.path, false)
        .await?
        .validated)
}

fn page(
    state: &AppState,
    viewer: &Viewer,
    target: &Target,
    v: &Validated,
    fields: Vec<Field>,
    problem: Option<String>,
    status: StatusCode,
) -> UiResult {
    let steps = crate::tasks::views::plan_steps(v);
    let approvals = steps.iter().filter(|s| s.needs_approval).count();
    let plan = super::new_task::plan_rows(&steps);
    let mut res = viewer.page(
        state,
        "run_workflow.html",
        &format!("Run {}", v.workflow.name),
        context! {
            source => target.source.clone(),
            path => target.path.clone(),
            name => v.workflow.name.clone(),
            description => v.workflow.description.clone(),
            fields => Value::from_serialize(&fields),
            steps => Value::from_serialize(&plan),
            approvals => approvals,
            problem => problem,
        },
    )?;
    *res.status_mut() = status;
    Ok(res)
}

async fn run(
    State(state): State<AppState>,
    viewer: Viewer,
    UiForm(form): UiForm<BTreeMap<String, String>>,
) -> UiResult {
    viewer.check_csrf(&state, form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let target = Target {
        source: form.get("source").cloned().unwrap_or_default(),
        path: form.get("path").cloned().unwrap_or_default(),
    };
    let v = workflow_of(&state, &target).await?;
    let values = values_of(&v, &form);
    // The engine's own resolution first, so each error lands next to its field; the API
    // checks the same values again when it starts the run.
    let file = serde_json::to_string(&values).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Err(errors) = resolve_sources(
        &v.workflow,
        InputSources {
            file: Some(file),
            ..Default::default()
        },
    ) {
        let mut fields = fields(&v, Some(&form));
        let mut other = Vec::new();
        for e in &errors {
            let message = match e {
                // The CLI's wording names a flag; the form has a field.
                InputError::Missing(name) => format!("`{name}` is required"),
                other => other.to_string(),
            };
            match input_of(e).and_then(|n| fields.iter_mut().find(|f| f.name == n)) {
                Some(f) => f.error = Some(message),
                None => other.push(message),
            }
        }
        let problem = Some(if other.is_empty() {
            "some inputs do not fit the workflow".to_string()
        } else {
            other.join("; ")
        });
        return page(
            &state,
            &viewer,
            &target,
            &v,
            fields,
            problem,
            StatusCode::BAD_REQUEST,
        );
    }
    let answer = crate::sources::routes::run_workflow(
        State(state.clone()),
        viewer.who.clone(),
        JsonBody(RunWorkflow {
            source: target.source.clone(),
            path: target.path.clone(),
            commit: None,
            inputs: Some(values),
            workspace: None,
            fetch: false,
        }),
    )
    .await;
    match answer {
        Ok((_, axum::Json(launched))) => {
            Ok(Redirect::to(&task_path(&launched.task_id)).into_response())
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            let status = e.status;
            let mut problem = e.detail.clone().unwrap_or_else(|| e.code.to_string());
            for x in &e.errors {
                if let Some(m) = x.get("message").and_then(|m| m.as_str()) {
                    problem.push_str("; ");
                    problem.push_str(m);
                }
            }
            page(
                &state,
                &viewer,
                &target,
                &v,
                fields(&v, Some(&form)),
                Some(problem),
                status,
            )
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: InputType, secret: bool) -> InputSpec {
        InputSpec {
            kind,
            default: None,
            description: None,
            secret,
        }
    }

    #[test]
    fn each_type_gets_its_control() {
        assert_eq!(control_of(&spec(InputType::String, false)), Control::Text);
        assert_eq!(
            control_of(&spec(InputType::String, true)),
            Control::Password
        );
        assert_eq!(
            control_of(&spec(InputType::Integer, false)),
            Control::Integer
        );
        assert_eq!(control_of(&spec(InputType::Number, false)), Control::Number);
        assert_eq!(
            control_of(&spec(InputType::Boolean, false)),
            Control::Checkbox
        );
        assert_eq!(control_of(&spec(InputType::Array, false)), Control::Json);
        assert_eq!(control_of(&spec(InputType::Object, false)), Control::Json);
    }

    const WF: &str = "version: 1
name: typed
inputs:
  days:
    type: integer
    default: 7
    description: Days to keep
  dry:
    type: boolean
    default: true
  who:
    type: string
  token:
    type: string
    secret: true
    default: abc
steps:
  - id: a
    shell: echo {{ inputs.who }}
";

    #[test]
    fn form_values_follow_the_declarations() {
        let v = crate::tasks::routes::validate_text(WF).expect("valid");
        let blank = fields(&v, None);
        let days = blank.iter().find(|f| f.name == "days").expect("days");
        assert_eq!((days.value.as_str(), days.required), ("7", false));
        assert!(blank.iter().find(|f| f.name == "dry").expect("dry").checked);
        assert!(
            blank
                .iter()
                .find(|f| f.name == "who")
                .expect("who")
                .required
        );
        // A secret's default is never put into the page.
        assert_eq!(
            blank.iter().find(|f| f.name == "token").expect("t").value,
            ""
        );

        let sent: BTreeMap<String, String> = [
            ("input.days", ""),
            ("input.who", "ann"),
            ("input.extra", "ignored"),
            ("input.token", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let values = values_of(&v, &sent);
        assert_eq!(values.get("days"), None, "empty number keeps the default");
        assert_eq!(values.get("dry"), Some(&serde_json::Value::Bool(false)));
        assert_eq!(values.get("who"), Some(&serde_json::json!("ann")));
        assert_eq!(values.get("token"), None, "empty secret keeps the default");
    }

    #[test]
    fn errors_name_their_input() {
        assert_eq!(input_of(&InputError::Missing("who".into())), Some("who"));
        assert_eq!(input_of(&InputError::StdinTwice), None);
    }

    #[test]
    fn run_links_are_encoded() {
        assert_eq!(
            run_path("ops", "flows/a b.yaml"),
            "/ui/workflows/run?source=ops&path=flows%2Fa+b.yaml"
        );
    }
}
