//! Thin wrappers around the RustCrypto primitives the vault uses.
//!
//! Every key the vault derives or uses passes through these functions, so the published test
//! vectors in `tests/vectors.rs` exercise exactly the code paths the vault runs.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::VaultError;

/// AES-256-GCM nonce length (96 bits, the only size GCM handles without an extra GHASH pass).
pub const NONCE_LEN: usize = 12;
/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Length of every symmetric key and MAC in the vault.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A 256-bit secret that is wiped from memory when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

/// Argon2id (version 0x13) of `passphrase` with `salt`, writing `out.len()` bytes.
///
/// `secret` and `ad` are the optional Argon2 inputs K and X; the vault passes empty slices, the
/// RFC 9106 vector uses them.
#[allow(clippy::too_many_arguments)] // mirrors Argon2's own inputs one to one
pub fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    secret: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), VaultError> {
    let mut builder = argon2::ParamsBuilder::new();
    builder
        .m_cost(memory_kib)
        .t_cost(iterations)
        .p_cost(parallelism)
        .output_len(out.len());
    if !ad.is_empty() {
        let ad = argon2::AssociatedData::new(ad)
            .map_err(|e| VaultError::InvalidParams(format!("argon2 associated data: {e}")))?;
        builder.data(ad);
    }
    let params = builder
        .build()
        .map_err(|e| VaultError::InvalidParams(format!("argon2 parameters: {e}")))?;
    let ctx = if secret.is_empty() {
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    } else {
        argon2::Argon2::new_with_secret(
            secret,
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        )
        .map_err(|e| VaultError::InvalidParams(format!("argon2 secret: {e}")))?
    };
    ctx.hash_password_into(passphrase, salt, out)
        .map_err(|e| VaultError::InvalidParams(format!("argon2: {e}")))
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` into `out`.
pub fn hkdf_sha256(
    ikm: &[u8],
    salt: Option<&[u8]>,
    info: &[u8],
    out: &mut [u8],
) -> Result<(), VaultError> {
    hkdf::Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .map_err(|_| VaultError::Crypto(format!("hkdf output of {} bytes is too long", out.len())))
}

/// A 32-byte sub-key: HKDF-SHA256(ikm, salt, label).
pub fn derive_key(ikm: &[u8], salt: &[u8], label: &str) -> Result<SecretKey, VaultError> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(ikm, Some(salt), label.as_bytes(), out.as_mut())?;
    Ok(out)
}

/// HMAC-SHA256 over the concatenation of `parts` (RFC 2104 / RFC 4231).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = new_hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// An incremental HMAC-SHA256, for content that arrives in chunks (blob names).
pub struct HmacStream(HmacSha256);

impl HmacStream {
    pub fn new(key: &[u8]) -> Self {
        Self(new_hmac(key))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into_bytes().into()
    }
}

fn new_hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length (long keys are hashed, short ones padded), so
    // `new_from_slice` cannot fail; the fallback keeps this total without an unwrap.
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()))
}

/// Constant-time comparison of two MACs.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An AES-256-GCM cipher with its key schedule expanded once.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Aes256Gcm::new(&(*key).into()))
    }

    /// Encrypts `plaintext` under `nonce` and `aad`; returns ciphertext || tag.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::from(*nonce);
        self.0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Crypto("AES-GCM refused to encrypt (message too long)".into()))
    }

    /// Decrypts ciphertext || tag; `None` when the tag does not verify.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::from(*nonce);
        self.0
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::fill(buf).map_err(|e| VaultError::Crypto(format!("OS random source failed: {e}")))
}

/// A fresh random 96-bit nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], VaultError> {
    let mut n = [0u8; NONCE_LEN];
    random_bytes(&mut n)?;
    Ok(n)
}
