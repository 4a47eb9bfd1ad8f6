//! The in-memory key ring: root key, derived sub-keys, and per-epoch data keys with their
//! encryption counters.
//!
//! Key hierarchy (all HKDF-SHA256 with the vault id as salt):
//!
//! ```text
//! passphrase --Argon2id(salt)--> master key (KEK, dropped right after unlock)
//!   KEK --"secureclaw/v1/key-check"--> key-check value (in header)
//!   KEK --"secureclaw/v1/wrap-root-key"--> wraps the random root key (in header)
//! root key (random, 256 bits)
//!   --"secureclaw/v1/data/epoch-N"--> AES-256-GCM data key for epoch N
//!   --"secureclaw/v1/ledger-mac"-->   ledger HMAC key
//!   --"secureclaw/v1/names"-->        keyed names (blob ids, table and row names)
//!   --"secureclaw/v1/record-digest"--> keyed digests of user data in ledger entries
//!   --"secureclaw/v1/user/<id>"-->    per-user keys
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::crypto::{self, Cipher, NONCE_LEN, SecretKey};
use crate::error::VaultError;

/// Data-key epochs rotate after this many AES-GCM encryptions: with random 96-bit nonces the
/// chance of any nonce collision after q messages is about q^2 / 2^97, so 2^30 keeps it below
/// 2^-37, far inside NIST SP 800-38D's 2^32 invocation limit.
pub const DEFAULT_ROTATE_AFTER: u64 = 1 << 30;

/// Sealed-value layout: version(1) | epoch(4, LE) | nonce(12) | ciphertext || tag(16).
pub(crate) const SEALED_VERSION: u8 = 1;
pub(crate) const SEALED_HEADER: usize = 1 + 4 + NONCE_LEN;

struct NonceState {
    epoch: u32,
    used: u64,
}

pub(crate) struct KeyRing {
    pub vault_id: [u8; 16],
    root: SecretKey,
    pub mac_key: SecretKey,
    pub name_key: SecretKey,
    pub digest_key: SecretKey,
    ciphers: RwLock<HashMap<u32, Arc<Cipher>>>,
    nonce: Mutex<NonceState>,
    rotate_after: u64,
}

impl KeyRing {
    pub fn new(vault_id: [u8; 16], root: SecretKey, rotate_after: u64) -> Result<Self, VaultError> {
        let mac_key = crypto::derive_key(root.as_ref(), &vault_id, "secureclaw/v1/ledger-mac")?;
        let name_key = crypto::derive_key(root.as_ref(), &vault_id, "secureclaw/v1/names")?;
        let digest_key =
            crypto::derive_key(root.as_ref(), &vault_id, "secureclaw/v1/record-digest")?;
        Ok(Self {
            vault_id,
            root,
            mac_key,
            name_key,
            digest_key,
            ciphers: RwLock::new(HashMap::new()),
            nonce: Mutex::new(NonceState { epoch: 0, used: 0 }),
            rotate_after: rotate_after.max(1),
        })
    }

    pub fn root(&self) -> &SecretKey {
        &self.root
    }

    pub fn subkey(&self, label: &str) -> Result<SecretKey, VaultError> {
        crypto::derive_key(self.root.as_ref(), &self.vault_id, label)
    }

    pub fn cipher(&self, epoch: u32) -> Result<Arc<Cipher>, VaultError> {
        // A poisoned lock only means another thread panicked while inserting a cache entry; the
        // map itself is still a valid cache, so keep using it.
        if let Some(c) = self
            .ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&epoch)
        {
            return Ok(c.clone());
        }
        let key = self.subkey(&format!("secureclaw/v1/data/epoch-{epoch}"))?;
        let c = Arc::new(Cipher::new(&key));
        self.ciphers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(epoch, c.clone());
        Ok(c)
    }

    /// Accounts for `n` encryptions and returns the epoch whose key must be used for them,
    /// moving to a fresh epoch first when the current one would pass the rotation limit.
    pub fn take(&self, n: u64) -> Result<u32, VaultError> {
        let mut s = self.nonce.lock().unwrap_or_else(|p| p.into_inner());
        if s.used.saturating_add(n) > self.rotate_after {
            s.epoch = s.epoch.checked_add(1).ok_or_else(|| {
                VaultError::Crypto("data-key epochs exhausted (2^32 rotations)".into())
            })?;
            s.used = 0;
        }
        s.used = s.used.saturating_add(n);
        Ok(s.epoch)
    }

    pub fn counter(&self) -> (u32, u64) {
        let s = self.nonce.lock().unwrap_or_else(|p| p.into_inner());
        (s.epoch, s.used)
    }

    pub fn set_counter(&self, epoch: u32, used: u64) {
        let mut s = self.nonce.lock().unwrap_or_else(|p| p.into_inner());
        s.epoch = epoch;
        s.used = used;
    }

    pub fn rotate_after(&self) -> u64 {
        self.rotate_after
    }

    /// Seals `plaintext` with a fresh random nonce. The AAD is `domain` followed by the sealed
    /// header, so both the location (table/key, ledger seq...) and the key epoch are bound.
    pub fn seal(&self, domain: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let epoch = self.take(1)?;
        self.seal_with(epoch, domain, plaintext)
    }

    pub fn seal_with(
        &self,
        epoch: u32,
        domain: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let nonce = crypto::random_nonce()?;
        let mut out = Vec::with_capacity(SEALED_HEADER + plaintext.len() + crypto::TAG_LEN);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&nonce);
        let aad = [domain, &out[..SEALED_HEADER]].concat();
        let ct = self.cipher(epoch)?.seal(&nonce, &aad, plaintext)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed value; `None` on any authentication failure or malformed framing.
    pub fn open(&self, domain: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEALED_HEADER + crypto::TAG_LEN || sealed[0] != SEALED_VERSION {
            return None;
        }
        let epoch = u32::from_le_bytes(sealed[1..5].try_into().ok()?);
        let nonce: [u8; NONCE_LEN] = sealed[5..SEALED_HEADER].try_into().ok()?;
        let aad = [domain, &sealed[..SEALED_HEADER]].concat();
        self.cipher(epoch)
            .ok()?
            .open(&nonce, &aad, &sealed[SEALED_HEADER..])
    }

    /// A keyed digest of user data for a ledger entry: `HMAC-SHA256(digest key, lp(what) || data)`.
    pub fn digest(&self, what: &str, data: &[u8]) -> [u8; 32] {
        crypto::hmac_sha256(self.digest_key.as_ref(), &[&lp(what.as_bytes()), data])
    }

    /// A keyed name: reveals nothing about `parts` without the key.
    pub fn name(&self, parts: &[&[u8]]) -> [u8; 32] {
        crypto::hmac_sha256(self.name_key.as_ref(), parts)
    }
}

/// Length-prefixes `b` (u64 LE) so that concatenated fields cannot be confused.
pub(crate) fn lp(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + b.len());
    v.extend_from_slice(&(b.len() as u64).to_le_bytes());
    v.extend_from_slice(b);
    v
}
