//! HS256 JWTs and the session table they are bound to (in memory, or in a shared store).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use secureclaw_engine::session::{AppBatch, AppTable};

use crate::error::ApiError;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs and checks tokens with one HS256 secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    expiry: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], expiry: Duration) -> Result<Self, ApiError> {
        let bad = |e: jsonwebtoken::errors::Error| ApiError::internal(format!("JWT key: {e}"));
        Ok(Tokens {
            encoding: EncodingKey::from_secret(secret).map_err(bad)?,
            decoding: DecodingKey::from_secret(secret).map_err(bad)?,
            expiry,
        })
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// A token for `user` in session `sid`, and when it expires (Unix seconds).
    pub fn issue(&self, user: &str, sid: &str) -> Result<(String, u64), ApiError> {
        let iat = unix_now();
        let exp = iat + self.expiry.as_secs();
        let claims = Claims {
            sub: user.to_string(),
            sid: sid.to_string(),
            iat,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok((token, exp))
    }

    /// The claims of a token signed with our key, with HS256 only, not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token is not signed with HS256",
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(why).with_hint("sign in again")
            })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One signed-in session.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub user_id: String,
    pub created: u64,
    pub expires: u64,
    pub client: String,
}

/// Sessions one user may hold at once.
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// The sign-in sessions tokens are bound to. One server holds them in memory only (a restart
/// signs everyone out). Server replicas sharing a store keep them there instead, as sealed
/// rows: a token issued by one replica is good on every other, and signing out on one ends
/// the session on all of them at once.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, SessionInfo>>,
    shared: Option<secureclaw_engine::session::Session>,
}

fn shared_key(user_id: &str, sid: &str) -> String {
    format!("{user_id}/{sid}")
}

impl Sessions {
    /// Sessions kept in the shared store `session` writes to.
    pub fn shared(session: secureclaw_engine::session::Session) -> Self {
        Sessions {
            by_id: Mutex::default(),
            shared: Some(session),
        }
    }

    /// A new session id, for the token to carry before the session is started.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Start session `sid` of `user_id` until `expires` (Unix seconds). A user signing in again
    /// and again keeps a bounded number of sessions: the oldest ends first.
    pub async fn start(
        &self,
        sid: &str,
        user_id: &str,
        expires: u64,
        client: String,
    ) -> Result<(), ApiError> {
        let info = SessionInfo {
            id: sid.to_string(),
            user_id: user_id.to_string(),
            created: unix_now(),
            expires,
            client,
        };
        if let Some(store) = &self.shared {
            let mut batch = AppBatch::default();
            let mut mine = self.stored_of(store, user_id)?;
            // Ended by expiry: swept here, each user's at their next sign-in.
            for s in mine.iter().filter(|s| s.expires <= unix_now()) {
                batch.delete(AppTable::SignIns, shared_key(user_id, &s.id));
            }
            mine.retain(|s| s.expires > unix_now());
            mine.sort_by_key(|s| s.created);
            let excess = (mine.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
            for s in mine.iter().take(excess) {
                batch.delete(AppTable::SignIns, shared_key(user_id, &s.id));
            }
            batch.put_json(AppTable::SignIns, shared_key(user_id, sid), &info)?;
            store.app_commit(batch).await?;
            return Ok(());
        }
        if let Ok(mut m) = self.by_id.lock() {
            m.retain(|_, s| s.expires > unix_now());
            loop {
                let mine = m.values().filter(|s| s.user_id == user_id);
                if mine.clone().count() < MAX_SESSIONS_PER_USER {
                    break;
                }
                let Some(oldest) = mine.min_by_key(|s| s.created).map(|s| s.id.clone()) else {
                    break;
                };
                m.remove(&oldest);
            }
            m.insert(sid.to_string(), info);
        }
        Ok(())
    }

    /// Every stored session of `user_id`, expired ones included.
    fn stored_of(
        &self,
        store: &secureclaw_engine::session::Session,
        user_id: &str,
    ) -> Result<Vec<SessionInfo>, ApiError> {
        let prefix = format!("{user_id}/");
        let mut out = Vec::new();
        for key in store.app_keys(AppTable::SignIns)? {
            if key.starts_with(&prefix)
                && let Some(s) = store.app_get_json::<SessionInfo>(AppTable::SignIns, &key)?
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The session, if it is `user_id`'s and has not expired.
    fn lookup(&self, sid: &str, user_id: &str) -> Option<SessionInfo> {
        let found = match &self.shared {
            // A store that cannot be read signs nobody in.
            Some(store) => store
                .app_get_json::<SessionInfo>(AppTable::SignIns, &shared_key(user_id, sid))
                .ok()
                .flatten(),
            None => self.by_id.lock().ok()?.get(sid).cloned(),
        };
        found.filter(|s| s.user_id == user_id && s.expires > unix_now())
    }

    pub fn is_active(&self, sid: &str, user_id: &str) -> bool {
        self.lookup(sid, user_id).is_some()
    }

    /// End one session of `user_id`; true if it existed.
    pub async fn end(&self, sid: &str, user_id: &str) -> Result<bool, ApiError> {
        if let Some(store) = &self.shared {
            let key = shared_key(user_id, sid);
            if store
                .app_get_json::<SessionInfo>(AppTable::SignIns, &key)?
                .is_none()
            {
                return Ok(false);
            }
            let mut batch = AppBatch::default();
            batch.delete(AppTable::SignIns, key);
            store.app_commit(batch).await?;
            return Ok(true);
        }
        Ok(self
            .by_id
            .lock()
            .map(|mut m| {
                m.get(sid).is_some_and(|s| s.user_id == user_id) && m.remove(sid).is_some()
            })
            .unwrap_or(false))
    }

    /// End every session of a user but `keep` (the one making a 2FA change; `None`: all of
    /// them); how many ended.
    pub async fn end_others_of(
        &self,
        user_id: &str,
        keep: Option<&str>,
    ) -> Result<usize, ApiError> {
        if let Some(store) = &self.shared {
            let mut batch = AppBatch::default();
            let mut ended = 0;
            for s in self.stored_of(store, user_id)? {
                if Some(s.id.as_str()) != keep {
                    batch.delete(AppTable::SignIns, shared_key(user_id, &s.id));
                    ended += 1;
                }
            }
            if ended > 0 {
                store.app_commit(batch).await?;
            }
            return Ok(ended);
        }
        Ok(self
            .by_id
            .lock()
            .map(|mut m| {
                let before = m.len();
                m.retain(|id, s| s.user_id != user_id || Some(id.as_str()) == keep);
                before - m.len()
            })
            .unwrap_or(0))
    }

    /// One session, if it belongs to `user_id` (someone else's is as absent as a missing one).
    pub fn get_own(&self, sid: &str, user_id: &str) -> Option<SessionInfo> {
        self.lookup(sid, user_id)
    }

    pub fn of_user(&self, user_id: &str) -> Vec<SessionInfo> {
        let all = match &self.shared {
            Some(store) => self.stored_of(store, user_id).unwrap_or_default(),
            None => self
                .by_id
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
        };
        all.into_iter()
            .filter(|s| s.user_id == user_id && s.expires > unix_now())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_with_its_key() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60)).unwrap();
        let (tok, _) = t.issue("u1", "s1").unwrap();
        assert_eq!(t.verify(&tok).unwrap().sub, "u1");
        let other =
            Tokens::new(b"another-secret-another-secret-xx", Duration::from_secs(60)).unwrap();
        assert!(other.verify(&tok).is_err());
    }

    #[tokio::test]
    async fn sessions_end_on_logout() {
        let s = Sessions::default();
        let id = Sessions::new_id();
        s.start(&id, "u1", unix_now() + 60, "127.0.0.1".into())
            .await
            .unwrap();
        assert!(s.is_active(&id, "u1"));
        assert!(!s.is_active(&id, "u2"));
        assert!(!s.end(&id, "u2").await.unwrap(), "another user's session");
        assert!(s.end(&id, "u1").await.unwrap());
        assert!(!s.is_active(&id, "u1"));
    }
}
