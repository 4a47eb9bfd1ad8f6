//! Trigger bindings and their deliveries, as rows of the engine session.
//!
//! A binding row (`AppTable::Triggers`, by name) holds the binding in the clear and its secrets
//! sealed under the fixed system owner [`SECRET_OWNER`], bound to the purpose
//! `trigger-secret/NAME`: a sealed blob copied to another trigger's row does not open.
//! Delivery ids already answered live in `AppTable::TriggerDeliveries` under `seen/NAME/ID`
//! (kept as long as the trigger, so a redelivery days later still finds its first run), and
//! each trigger's most recent deliveries under `log/NAME`.

use base64::Engine as _;
use secureclaw_engine::model::{HookPreset, Tier};
use secureclaw_engine::session::{AppBatch, AppTable, Audit, Session};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::signature::Scheme;
use crate::error::{ApiError, ApiResult};
use crate::launch::Launched;

/// Whose key seals trigger secrets: no user, the server itself.
pub const SECRET_OWNER: &str = "triggers";
/// Deliveries kept per trigger in its list (the ledger keeps every one).
pub const DELIVERY_LOG_LEN: usize = 200;
/// Longest trigger name.
const MAX_NAME_LEN: usize = 64;

/// A binding as stored (without its secrets in the clear).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binding {
    pub name: String,
    /// The workflow source the trigger runs from.
    pub source: String,
    /// The workflow file in the source; `None`: a push hook that only re-fetches the source.
    pub path: Option<String>,
    /// How deliveries are signed, fixed when bound: a commit to the workflow cannot change it.
    pub preset: HookPreset,
    /// The generic HMAC preset's header.
    pub header: Option<String>,
    /// Tiers approved up front on every run it starts (operator's choice; default none).
    pub approve: Vec<Tier>,
    pub enabled: bool,
    /// User id of the admin who bound it: its runs are their tasks.
    pub owner: String,
    /// Their username, for listings.
    pub created_by: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339 of the last secret rotation.
    pub rotated: Option<String>,
    /// Unix seconds until which the previous secret still verifies (not secret itself).
    pub grace_until: Option<i64>,
    /// The [`Secrets`], sealed, base64.
    sealed: String,
}

/// The secrets of one trigger; wiped when dropped.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Secrets {
    pub current: String,
    /// The secret before the last rotation and the Unix second it stops verifying.
    pub previous: Option<(String, i64)>,
}

impl Binding {
    pub fn scheme(&self) -> Scheme {
        Scheme::new(self.preset, self.header.as_deref())
    }

    /// The HMAC keys that verify a delivery at `now`: the current secret, and the previous one
    /// during its grace period.
    pub fn keys(&self, session: &Session, now: i64) -> ApiResult<Vec<Zeroizing<Vec<u8>>>> {
        let secrets = self.secrets(session)?;
        let scheme = self.scheme();
        let mut keys = Vec::with_capacity(2);
        let key = |s: &str| {
            scheme
                .key(s)
                .map(Zeroizing::new)
                .map_err(|e| ApiError::internal(format!("trigger `{}`: {e}", self.name)))
        };
        keys.push(key(&secrets.current)?);
        if let Some((old, until)) = &secrets.previous
            && now < *until
        {
            keys.push(key(old)?);
        }
        Ok(keys)
    }

    fn secrets(&self, session: &Session) -> ApiResult<Secrets> {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&self.sealed)
            .map_err(|e| ApiError::internal(format!("trigger `{}`: {e}", self.name)))?;
        let plain = session
            .open_for_user(SECRET_OWNER, &purpose(&self.name), &sealed)?
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "the secrets of trigger `{}` do not open under its key",
                    self.name
                ))
            })?;
        let plain = Zeroizing::new(plain);
        serde_json::from_slice(&plain)
            .map_err(|e| ApiError::internal(format!("trigger `{}`: {e}", self.name)))
    }

    /// Seal `secrets` into the row.
    pub fn seal(&mut self, session: &Session, secrets: &Secrets) -> ApiResult<()> {
        let plain = Zeroizing::new(
            serde_json::to_vec(secrets).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let sealed = session.seal_for_user(SECRET_OWNER, &purpose(&self.name), &plain)?;
        self.sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
        Ok(())
    }

    /// Replace the secret; the old one verifies until `grace_until`.
    pub fn rotate(&mut self, session: &Session, fresh: String, grace_until: i64) -> ApiResult<()> {
        let old = self.secrets(session)?;
        let secrets = Secrets {
            current: fresh,
            previous: Some((old.current.clone(), grace_until)),
        };
        self.seal(session, &secrets)?;
        self.grace_until = Some(grace_until);
        self.rotated = Some(secureclaw_engine::record::now_rfc3339());
        Ok(())
    }

    /// A new binding with no secret yet (seal one before saving).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        source: String,
        path: Option<String>,
        preset: HookPreset,
        header: Option<String>,
        approve: Vec<Tier>,
        enabled: bool,
        owner: String,
        created_by: String,
    ) -> Self {
        Binding {
            name,
            source,
            path,
            preset,
            header,
            approve,
            enabled,
            owner,
            created_by,
            created: secureclaw_engine::record::now_rfc3339(),
            rotated: None,
            grace_until: None,
            sealed: String::new(),
        }
    }
}

fn purpose(name: &str) -> String {
    format!("trigger-secret/{name}")
}

/// A trigger name as the API takes it: `[a-z0-9_-]{1,64}` (it is a URL segment and a key).
pub fn parse_name(text: &str) -> ApiResult<String> {
    let ok = (1..=MAX_NAME_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(text.to_string())
    } else {
        Err(ApiError::not_found("trigger"))
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A run started.
    Accepted,
    /// The delivery id was seen before: the first run was answered, nothing started.
    Duplicate,
    /// Verified, but nothing to run (a `ping`, an event the workflow does not take, a push
    /// hook that only re-fetched).
    Ignored,
    /// Refused; `reason` says why.
    Refused,
}

/// One delivery in a trigger's list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRecord {
    /// RFC 3339.
    pub time: String,
    /// The sender's delivery id, when its preset has one.
    pub delivery: Option<String>,
    pub outcome: Outcome,
    /// The problem code (refused) or what was ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The commit the source was at (re-fetched), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What the injection detector made of the strings the payload mapped to inputs (a
    /// flagged one refuses the delivery with 422; an accepted one keeps its sub-threshold
    /// findings here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screening: Option<PayloadScreening>,
}

/// The screening of one delivery's mapped inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PayloadScreening {
    /// How many strings were scanned.
    pub strings: usize,
    /// The highest score of any of them, 0..1.
    pub score: f32,
    pub flagged: bool,
    /// `INPUT: PATTERN (LAYER, SCORE)` of each finding, at most eight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// Bindings and deliveries over one session.
#[derive(Clone)]
pub struct TriggerStore {
    session: Session,
}

fn log_key(name: &str) -> String {
    format!("log/{name}")
}

fn seen_key(name: &str, delivery: &str) -> String {
    format!("seen/{name}/{delivery}")
}

impl TriggerStore {
    pub fn new(session: Session) -> Self {
        TriggerStore { session }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn get(&self, name: &str) -> ApiResult<Option<Binding>> {
        Ok(self.session.app_get_json(AppTable::Triggers, name)?)
    }

    pub fn list(&self) -> ApiResult<Vec<Binding>> {
        let mut out = Vec::new();
        for name in self.session.app_keys(AppTable::Triggers)? {
            if let Some(b) = self.get(&name)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    pub async fn save(&self, binding: &Binding, audit: Audit) -> ApiResult<()> {
        let mut batch = AppBatch::default();
        batch
            .put_json(AppTable::Triggers, binding.name.clone(), binding)?
            .audit(audit);
        Ok(self.session.app_commit(batch).await?)
    }

    /// Remove the binding, its delivery list and the ids it has seen.
    pub async fn remove(&self, name: &str, audit: Audit) -> ApiResult<()> {
        let mut batch = AppBatch::default();
        batch
            .delete(AppTable::Triggers, name)
            .delete(AppTable::TriggerDeliveries, log_key(name))
            .audit(audit);
        let prefix = seen_key(name, "");
        for key in self.session.app_keys(AppTable::TriggerDeliveries)? {
            if key.starts_with(&prefix) {
                batch.delete(AppTable::TriggerDeliveries, key);
            }
        }
        Ok(self.session.app_commit(batch).await?)
    }

    /// The run a delivery id already started, if any.
    pub fn seen(&self, name: &str, delivery: &str) -> ApiResult<Option<Launched>> {
        Ok(self
            .session
            .app_get_json(AppTable::TriggerDeliveries, &seen_key(name, delivery))?)
    }

    /// Newest first.
    pub fn deliveries(&self, name: &str) -> ApiResult<Vec<DeliveryRecord>> {
        let mut list: Vec<DeliveryRecord> = self
            .session
            .app_get_json(AppTable::TriggerDeliveries, &log_key(name))?
            .unwrap_or_default();
        list.reverse();
        Ok(list)
    }

    /// Append a delivery to the trigger's list and the ledger; with `started`, remember the
    /// delivery id's run so a redelivery answers it. The caller holds the trigger's lock.
    pub async fn record(
        &self,
        name: &str,
        record: DeliveryRecord,
        started: Option<&Launched>,
    ) -> ApiResult<()> {
        let mut list: Vec<DeliveryRecord> = self
            .session
            .app_get_json(AppTable::TriggerDeliveries, &log_key(name))?
            .unwrap_or_default();
        let audit = Audit::new(
            secureclaw_engine::tools::vault::kind::TRIGGER_DELIVERY,
            format!("trigger:{name}"),
            serde_json::json!({
                "trigger": name,
                "delivery": record.delivery,
                "outcome": record.outcome,
                "reason": record.reason,
                "event": record.event,
                "task": record.task_id,
                "run": record.run_id,
                "commit": record.commit,
                // Ledger entries carry integers only: the score in thousandths.
                "screening": record.screening.as_ref().map(|s| serde_json::json!({
                    "strings": s.strings,
                    "flagged": s.flagged,
                    "score_permille": secureclaw_engine::screen::permille(s.score),
                    "findings": s.findings,
                })),
            }),
        );
        let mut batch = AppBatch::default();
        if let (Some(started), Some(id)) = (started, &record.delivery) {
            batch.put_json(AppTable::TriggerDeliveries, seen_key(name, id), started)?;
        }
        list.push(record);
        if list.len() > DELIVERY_LOG_LEN {
            list.drain(..list.len() - DELIVERY_LOG_LEN);
        }
        batch
            .put_json(AppTable::TriggerDeliveries, log_key(name), &list)?
            .audit(audit);
        Ok(self.session.app_commit(batch).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_url_segments_and_keys() {
        assert!(parse_name("deploy-prod_2").is_ok());
        for bad in ["", "Deploy", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
