//! HS256 JWTs and the in-memory session table they are bound to.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id (in memory only).
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub user_id: String,
    pub created: u64,
    pub expires: u64,
    pub client: String,
}

/// Sessions one user may hold at once.
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// Sessions held only in memory: a restart signs everyone out.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, SessionInfo>>,
}

impl Sessions {
    pub fn start(&self, user_id: &str, expires: u64, client: String) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let info = SessionInfo {
            id: id.clone(),
            user_id: user_id.to_string(),
            created: unix_now(),
            expires,
            client,
        };
        if let Ok(mut m) = self.by_id.lock() {
            m.retain(|_, s| s.expires > unix_now());
            // A user signing in again and again keeps a bounded number of sessions: the oldest
            // ends first.
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
            m.insert(id.clone(), info);
        }
        id
    }

    /// Set a session's expiry once its token is signed.
    pub fn set_expiry(&self, sid: &str, expires: u64) {
        if let Ok(mut m) = self.by_id.lock()
            && let Some(s) = m.get_mut(sid)
        {
            s.expires = expires;
        }
    }

    pub fn is_active(&self, sid: &str, user_id: &str) -> bool {
        self.by_id
            .lock()
            .map(|m| {
                m.get(sid)
                    .is_some_and(|s| s.user_id == user_id && s.expires > unix_now())
            })
            .unwrap_or(false)
    }

    /// End one session; true if it existed.
    pub fn end(&self, sid: &str) -> bool {
        self.by_id
            .lock()
            .map(|mut m| m.remove(sid).is_some())
            .unwrap_or(false)
    }

    /// End every session of a user (password or 2FA change); how many ended.
    pub fn end_all_of(&self, user_id: &str) -> usize {
        self.by_id
            .lock()
            .map(|mut m| {
                let before = m.len();
                m.retain(|_, s| s.user_id != user_id);
                before - m.len()
            })
            .unwrap_or(0)
    }

    /// End every session of a user but `keep` (the one making a 2FA change); how many ended.
    pub fn end_others_of(&self, user_id: &str, keep: &str) -> usize {
        self.by_id
            .lock()
            .map(|mut m| {
                let before = m.len();
                m.retain(|id, s| s.user_id != user_id || id == keep);
                before - m.len()
            })
            .unwrap_or(0)
    }

    /// One session, if it belongs to `user_id` (someone else's is as absent as a missing one).
    pub fn get_own(&self, sid: &str, user_id: &str) -> Option<SessionInfo> {
        self.by_id
            .lock()
            .ok()?
            .get(sid)
            .filter(|s| s.user_id == user_id && s.expires > unix_now())
            .cloned()
    }

    pub fn of_user(&self, user_id: &str) -> Vec<SessionInfo> {
        self.by_id
            .lock()
            .map(|m| {
                m.values()
                    .filter(|s| s.user_id == user_id && s.expires > unix_now())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
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

    #[test]
    fn sessions_end_on_logout() {
        let s = Sessions::default();
        let id = s.start("u1", unix_now() + 60, "127.0.0.1".into());
        assert!(s.is_active(&id, "u1"));
        assert!(!s.is_active(&id, "u2"));
        assert!(s.end(&id));
        assert!(!s.is_active(&id, "u1"));
    }
}
