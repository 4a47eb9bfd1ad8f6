//! User accounts, sealed under each user's own key; passwords hashed with Argon2id.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use secureclaw_engine::session::{AppBatch, AppTable, Audit, Session};
use secureclaw_engine::tools::vault::KdfParams;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ApiError;

/// What an account row holds (sealed under the user's key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub username: String,
    /// PHC string: `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    pub password_hash: String,
    pub admin: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    pub created: String,
    /// Two-factor sign-in, once set up.
    #[serde(default)]
    pub totp: Option<TotpState>,
}

/// A user's TOTP secret and whether it is required at sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpState {
    /// Base32 secret.
    pub secret: String,
    pub enabled: bool,
    /// The time step of the last code accepted: a code is never accepted twice.
    #[serde(default)]
    pub last_step: Option<u64>,
}

/// Purpose string binding sealed account rows.
const ACCOUNT_PURPOSE: &str = "account";

/// Index key of a username.
fn name_key(username: &str) -> String {
    format!("username/{}", username.to_lowercase())
}

pub struct Accounts {
    session: Session,
    params: KdfParams,
}

impl Accounts {
    pub fn new(session: Session, params: KdfParams) -> Self {
        Accounts { session, params }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// One account by id.
    pub fn get(&self, id: &str) -> Result<Option<Account>, ApiError> {
        let Some(sealed) = self.session.app_get(AppTable::Accounts, id)? else {
            return Ok(None);
        };
        let Some(plain) = self.session.open_for_user(id, ACCOUNT_PURPOSE, &sealed)? else {
            return Err(ApiError::internal(format!(
                "account {id} does not open under its own key"
            )));
        };
        let plain = Zeroizing::new(plain);
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("account {id}: {e}")))
    }

    /// One account by username (case-insensitive).
    pub fn find(&self, username: &str) -> Result<Option<Account>, ApiError> {
        let id: Option<String> = self
            .session
            .app_get_json(AppTable::Index, &name_key(username))?;
        match id {
            Some(id) => self.get(&id),
            None => Ok(None),
        }
    }

    /// How many accounts exist.
    pub fn count(&self) -> Result<usize, ApiError> {
        Ok(self.session.app_keys(AppTable::Accounts)?.len())
    }

    /// Every account (for admins).
    pub fn list(&self) -> Result<Vec<Account>, ApiError> {
        let mut out = Vec::new();
        for id in self.session.app_keys(AppTable::Accounts)? {
            if let Some(a) = self.get(&id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Create an account with a TOTP secret ready to enable; `admin` is forced on for the
    /// first one. The ledger gets `auth_registered` in the same commit.
    pub async fn create(
        &self,
        username: &str,
        password: &str,
        admin: bool,
        by: &str,
    ) -> Result<Account, ApiError> {
        check_username(username)?;
        check_password(password)?;
        if self.find(username)?.is_some() {
            return Err(ApiError::conflict(
                "username_taken",
                format!("the username `{username}` is taken"),
            ));
        }
        let first = self.count()? == 0;
        let account = Account {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.to_string(),
            password_hash: self.hash_password(password).await?,
            admin: admin || first,
            roles: Vec::new(),
            created: now(),
            totp: Some(super::totp::fresh_state()),
        };
        let mut batch = self.sealed_row(&account)?;
        batch
            .put_json(AppTable::Index, name_key(username), &account.id)?
            .audit(Audit::new(
                secureclaw_engine::tools::vault::kind::AUTH_REGISTERED,
                by,
                serde_json::json!({
                    "user": account.username,
                    "user_id": account.id,
                    "admin": account.admin,
                }),
            ));
        self.session.app_commit(batch).await?;
        Ok(account)
    }

    /// Write an account back, with ledger entries in the same commit.
    pub async fn save(&self, account: &Account, audits: Vec<Audit>) -> Result<(), ApiError> {
        let mut batch = self.sealed_row(account)?;
        for a in audits {
            batch.audit(a);
        }
        self.session.app_commit(batch).await?;
        Ok(())
    }

    fn sealed_row(&self, account: &Account) -> Result<AppBatch, ApiError> {
        let plain = Zeroizing::new(
            serde_json::to_vec(account).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let sealed = self
            .session
            .seal_for_user(&account.id, ACCOUNT_PURPOSE, &plain)?;
        let mut batch = AppBatch::default();
        batch.put(AppTable::Accounts, account.id.clone(), sealed);
        Ok(batch)
    }

    fn argon2(&self) -> Result<Argon2<'static>, ApiError> {
        let p = Params::new(
            self.params.memory_kib,
            self.params.iterations,
            self.params.parallelism,
            None,
        )
        .map_err(|e| ApiError::internal(format!("Argon2id parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }

    /// Hash off the async threads: Argon2id is deliberately slow.
    pub async fn hash_password(&self, password: &str) -> Result<String, ApiError> {
        let argon = self.argon2()?;
        let password = Zeroizing::new(password.to_string());
        let salt_len = self.params.salt_len;
        tokio::task::spawn_blocking(move || {
            let mut salt = vec![0u8; salt_len];
            getrandom::fill(&mut salt).map_err(|e| ApiError::internal(e.to_string()))?;
            argon
                .hash_password_with_salt(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::internal(format!("hashing the password: {e}")))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// Check a password against a stored hash (constant time inside argon2).
    pub async fn verify_password(&self, hash: &str, password: &str) -> bool {
        let hash = hash.to_string();
        let password = Zeroizing::new(password.to_string());
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Spend the same time as a real check, for unknown usernames (no user enumeration by
    /// timing).
    pub async fn verify_dummy(&self, password: &str) {
        let _ = self.hash_password(password).await;
    }
}

pub fn now() -> String {
    secureclaw_engine::record::now_rfc3339()
}

/// The longest username, in bytes.
pub const MAX_USERNAME_LEN: usize = 64;
/// The longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = (3..=MAX_USERNAME_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_username",
            "a username is 3 to 64 characters: letters, digits, '-', '_', '.', '@'",
        ))
    }
}

fn check_password(pw: &str) -> Result<(), ApiError> {
    if pw.chars().count() < 10 || pw.len() > MAX_PASSWORD_LEN {
        return Err(
            ApiError::bad_request("weak_password", "a password is 10 to 1024 characters")
                .with_hint("a passphrase of a few words is easy to remember and hard to guess"),
        );
    }
    Ok(())
}
