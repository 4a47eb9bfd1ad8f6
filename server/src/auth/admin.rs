//! `/api/v1/admin/*`: accounts and their roles, for admins only.

use axum::Json;
use axum::extract::{Path, State};
use secureclaw_engine::session::Audit;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Identity;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;

/// Ledger kind of a change of someone's roles.
pub const AUTH_ROLES_CHANGED: &str = "auth_roles_changed";

/// Roles one account may hold.
const MAX_ROLES: usize = 16;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(set_roles))
}

/// An account as an admin sees it (never its password hash or TOTP secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub admin: bool,
    pub roles: Vec<String>,
    /// RFC 3339.
    pub created: String,
    pub totp_enabled: bool,
}

impl From<&super::Account> for UserView {
    fn from(a: &super::Account) -> Self {
        UserView {
            id: a.id.clone(),
            username: a.username.clone(),
            admin: a.admin,
            roles: a.roles.clone(),
            created: a.created.clone(),
            totp_enabled: a.totp.as_ref().is_some_and(|t| t.enabled),
        }
    }
}

/// The roles an account should hold from now on (replacing the ones it has).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesRequest {
    /// e.g. `["approver"]`: lowercase letters, digits, `-` and `_`, at most 32 characters each.
    pub roles: Vec<String>,
}

fn require_admin(who: &Identity) -> ApiResult<()> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("only an admin may do this"))
    }
}

/// Every account.
#[utoipa::path(get, path = "/admin/users", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every account, by username", body = [UserView]),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    who: Identity,
) -> ApiResult<Json<Vec<UserView>>> {
    require_admin(&who)?;
    let mut users: Vec<UserView> = state
        .auth
        .accounts
        .list()?
        .iter()
        .map(UserView::from)
        .collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(Json(users))
}

/// Set an account's roles (`approver` lets a user approve gates when approvals need a role).
#[utoipa::path(post, path = "/admin/users/{id}/roles", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    request_body = RolesRequest,
    responses(
        (status = 200, description = "the account with its new roles", body = UserView),
        (status = 400, description = "a bad role name, too many roles, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_roles(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RolesRequest>,
) -> ApiResult<Json<UserView>> {
    require_admin(&who)?;
    let roles = checked_roles(req.roles)?;
    let auth = &state.auth;
    let _writing = auth.account_writes.lock().await;
    let mut account = auth
        .accounts
        .get(&id)?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let before = std::mem::replace(&mut account.roles, roles);
    auth.accounts
        .save(
            &account,
            vec![Audit::new(
                AUTH_ROLES_CHANGED,
                who.actor(),
                serde_json::json!({
                    "user": account.username,
                    "user_id": account.id,
                    "before": before,
                    "after": account.roles,
                }),
            )],
        )
        .await?;
    Ok(Json(UserView::from(&account)))
}

fn checked_roles(mut roles: Vec<String>) -> ApiResult<Vec<String>> {
    roles.sort();
    roles.dedup();
    if roles.len() > MAX_ROLES {
        return Err(ApiError::bad_request(
            "invalid_roles",
            format!("at most {MAX_ROLES} roles"),
        ));
    }
    let valid = |r: &String| {
        (1..=32).contains(&r.len())
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if let Some(bad) = roles.iter().find(|r| !valid(r)) {
        return Err(ApiError::bad_request(
            "invalid_roles",
            format!("`{bad}` is not a role name: lowercase letters, digits, '-' and '_', 1 to 32"),
        ));
    }
    Ok(roles)
}
