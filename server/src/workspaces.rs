//! Named workspaces a task may run in: those given with `--workspace` and those an admin
//! registers through the API (kept in the settings table, so they survive a restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use secureclaw_engine::session::{AppBatch, AppTable, Audit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

/// Settings row holding the workspaces registered through the API: name → path.
const SETTINGS_KEY: &str = "workspaces";

/// A named workspace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    /// Letters, digits, `-` and `_`.
    pub name: String,
    /// An absolute path to an existing directory outside the server's data dir.
    pub path: String,
    /// `flag` (given with `--workspace`, fixed until restart) or `api` (registered here).
    #[serde(default)]
    pub source: String,
}

/// A workspace to register.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewWorkspace {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_workspaces, register_workspace))
}

impl AppState {
    /// The directory of workspace `name`: a `--workspace` flag first, then one an admin
    /// registered. `None` when neither knows the name.
    pub fn workspace(&self, name: &str) -> Option<PathBuf> {
        if let Some(p) = self.config.workspaces.get(name) {
            return Some(p.clone());
        }
        registered(self).ok()?.remove(name)
    }

    /// Every workspace name a task may give: flags first, then registered ones.
    pub fn workspace_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.config.workspaces.keys().cloned().collect();
        for n in registered(self).unwrap_or_default().into_keys() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

fn registered(state: &AppState) -> Result<BTreeMap<String, PathBuf>, ApiError> {
    Ok(state
        .session
        .app_get_json::<BTreeMap<String, PathBuf>>(AppTable::Settings, SETTINGS_KEY)?
        .unwrap_or_default())
}

fn require_admin(who: &Identity) -> ApiResult<()> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("only an admin manages workspaces"))
    }
}

/// Every named workspace.
#[utoipa::path(get, path = "/admin/workspaces", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "flag and API workspaces", body = WorkspaceList),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    who: Identity,
) -> ApiResult<axum::Json<WorkspaceList>> {
    require_admin(&who)?;
    let mut workspaces: Vec<Workspace> = state
        .config
        .workspaces
        .iter()
        .map(|(name, path)| Workspace {
            name: name.clone(),
            path: path.display().to_string(),
            source: "flag".into(),
        })
        .collect();
    for (name, path) in registered(&state)? {
        if !state.config.workspaces.contains_key(&name) {
            workspaces.push(Workspace {
                name,
                path: path.display().to_string(),
                source: "api".into(),
            });
        }
    }
    Ok(axum::Json(WorkspaceList { workspaces }))
}

/// Register (or move) a named workspace. Names given with `--workspace` cannot be changed here.
#[utoipa::path(post, path = "/admin/workspaces", tag = "admin",
    security(("bearer" = [])),
    request_body = NewWorkspace,
    responses(
        (status = 201, description = "registered", body = Workspace),
        (status = 400, description = "bad name or path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the name is fixed by a --workspace flag", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register_workspace(
    State(state): State<AppState>,
    who: Identity,
    JsonBody(new): JsonBody<NewWorkspace>,
) -> ApiResult<(StatusCode, axum::Json<Workspace>)> {
    require_admin(&who)?;
    check_name(&new.name)?;
    if state.config.workspaces.contains_key(&new.name) {
        return Err(ApiError::conflict(
            "workspace_fixed",
            format!("workspace {:?} is given by a --workspace flag", new.name),
        )
        .with_hint("change the flag and restart the server, or pick another name"));
    }
    let path = check_path(Path::new(&new.path), &state.config.data_dir)?;
    let mut all = registered(&state)?;
    all.insert(new.name.clone(), path.clone());
    let mut batch = AppBatch::default();
    batch.put_json(AppTable::Settings, SETTINGS_KEY, &all)?;
    batch.audit(Audit::new(
        "workspace_registered",
        who.actor(),
        serde_json::json!({"name": new.name, "path": path}),
    ));
    state.session.app_commit(batch).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Workspace {
            name: new.name,
            path: path.display().to_string(),
            source: "api".into(),
        }),
    ))
}

fn check_name(name: &str) -> ApiResult<()> {
    check_label(name, "invalid_workspace", "a workspace")
}

/// A name an admin gives a server object (a workspace, a source): 1 to 64 letters, digits, `-`
/// and `_`, so it is safe in paths, URLs and ledger entries. `code` is the problem code of a bad
/// one, `what` says what it names.
pub fn check_label(name: &str, code: &'static str, what: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            code,
            format!("{what} name holds 1 to 64 letters, digits, '-' and '_'"),
        ))
    }
}

/// An absolute, existing directory that neither lies inside the data dir nor holds it (a task
/// in it could otherwise read or change the server's own state). Symlinks are resolved first.
fn check_path(path: &Path, data_dir: &Path) -> ApiResult<PathBuf> {
    let bad = |why: &str| ApiError::bad_request("invalid_workspace", why.to_string());
    if !path.is_absolute() {
        return Err(bad("the path must be absolute"));
    }
    let real = std::fs::canonicalize(path).map_err(|e| bad(&format!("{}: {e}", path.display())))?;
    if !real.is_dir() {
        return Err(bad(&format!("{} is not a directory", path.display())));
    }
    let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if real.starts_with(&data) || data.starts_with(&real) {
        return Err(bad(
            "a workspace may neither lie inside the server's data dir nor contain it",
        ));
    }
    Ok(real)
}
