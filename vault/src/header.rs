//! The vault header: the only file read before the passphrase is checked.
//!
//! It holds no secret: the vault id, the KDF parameters and salt, a key-check value, and the
//! random root key wrapped (AES-256-GCM) under a key derived from the passphrase. Changing the
//! passphrase rewrites only this file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::crypto::{self, Cipher, KEY_LEN, NONCE_LEN, SecretKey};
use crate::error::VaultError;
use crate::params::KdfParams;
use crate::strict_json;

pub(crate) const HEADER_FILE: &str = "vault.header.json";
pub(crate) const FORMAT_NAME: &str = "secureclaw-vault";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// A real header is about 500 bytes; anything far larger is not one (and is not read whole).
const MAX_HEADER_BYTES: u64 = 64 * 1024;

const LABEL_KEY_CHECK: &str = "secureclaw/v1/key-check";
const LABEL_WRAP: &str = "secureclaw/v1/wrap-root-key";
const KCV_MESSAGE: &[u8] = b"secureclaw/v1/key-check-value";
const WRAP_AAD: &[u8] = b"secureclaw/v1/root-key";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub format: String,
    pub version: u32,
    pub vault_id: String,
    pub created: String,
    pub kdf: HeaderKdf,
    pub key_check: String,
    pub wrapped_root_key: Wrapped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderKdf {
    pub algorithm: String,
    pub argon2_version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wrapped {
    pub nonce: String,
    pub ciphertext: String,
}

/// The decoded, validated header.
pub(crate) struct Parsed {
    pub vault_id: [u8; 16],
    pub params: KdfParams,
    pub salt: Vec<u8>,
    pub key_check: [u8; 32],
    pub wrap_nonce: [u8; NONCE_LEN],
    pub wrapped: Vec<u8>,
    pub created: String,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(HEADER_FILE)
}

fn corrupt(dir: &Path, reason: impl Into<String>) -> VaultError {
    VaultError::HeaderCorrupt {
        path: path(dir),
        reason: reason.into(),
    }
}

/// Argon2id of the passphrase: the master key (key-encryption key). Never stored.
fn master_key(passphrase: &str, salt: &[u8], p: &KdfParams) -> Result<SecretKey, VaultError> {
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    crypto::argon2id(
        passphrase.as_bytes(),
        salt,
        p.memory_kib,
        p.iterations,
        p.parallelism,
        &[],
        &[],
        kek.as_mut(),
    )?;
    Ok(kek)
}

fn key_check_value(kek: &[u8], vault_id: &[u8]) -> Result<[u8; 32], VaultError> {
    let check_key = crypto::derive_key(kek, vault_id, LABEL_KEY_CHECK)?;
    Ok(crypto::hmac_sha256(check_key.as_ref(), &[KCV_MESSAGE]))
}

fn wrap_aad(vault_id: &[u8]) -> Vec<u8> {
    [WRAP_AAD, vault_id].concat()
}

/// Builds a header that wraps `root` under `passphrase`.
pub(crate) fn build(
    vault_id: [u8; 16],
    created: String,
    root: &[u8; KEY_LEN],
    passphrase: &str,
    params: &KdfParams,
) -> Result<Header, VaultError> {
    params.validate()?;
    let mut salt = vec![0u8; params.salt_len];
    crypto::random_bytes(&mut salt)?;
    let kek = master_key(passphrase, &salt, params)?;
    let kcv = key_check_value(kek.as_ref(), &vault_id)?;
    let wrap_key = crypto::derive_key(kek.as_ref(), &vault_id, LABEL_WRAP)?;
    let nonce = crypto::random_nonce()?;
    let wrapped = Cipher::new(&wrap_key).seal(&nonce, &wrap_aad(&vault_id), root)?;
    Ok(Header {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        vault_id: hex::encode(vault_id),
        created,
        kdf: HeaderKdf {
            algorithm: "argon2id".into(),
            argon2_version: 0x13,
            memory_kib: params.memory_kib,
            iterations: params.iterations,
            parallelism: params.parallelism,
            salt: B64.encode(&salt),
        },
        key_check: hex::encode(kcv),
        wrapped_root_key: Wrapped {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(wrapped),
        },
    })
}

pub(crate) fn read(dir: &Path) -> Result<Parsed, VaultError> {
    let p = path(dir);
    let bytes = match read_bounded(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VaultError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            return Err(corrupt(
                dir,
                format!("larger than {MAX_HEADER_BYTES} bytes"),
            ));
        }
        Err(e) => return Err(VaultError::io(format!("reading {}", p.display()), e)),
    };
    parse(dir, &bytes)
}

/// The header file's bytes as they are on disk.
pub(crate) fn read_bytes(dir: &Path) -> Result<Vec<u8>, VaultError> {
    let p = path(dir);
    read_bounded(&p).map_err(|e| VaultError::io(format!("reading {}", p.display()), e))
}

/// Parses a header's bytes; errors name `dir` as the place the header belongs to.
pub(crate) fn parse(dir: &Path, bytes: &[u8]) -> Result<Parsed, VaultError> {
    if bytes.len() as u64 > MAX_HEADER_BYTES {
        return Err(corrupt(
            dir,
            format!("larger than {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let raw = strict_json::parse(bytes, strict_json::Numbers::Any)
        .map_err(|e| corrupt(dir, e.to_string()))?;
    // Every KDF number is checked, by name, before the typed parse (whose errors do not name
    // the field) and long before any Argon2 work.
    if let Some(kdf) = raw.get("kdf").and_then(Value::as_object) {
        for field in ["argon2_version", "memory_kib", "iterations", "parallelism"] {
            match kdf.get(field) {
                None => return Err(corrupt(dir, format!("kdf.{field} is missing"))),
                Some(v) if v.as_u64().is_some_and(|n| u32::try_from(n).is_ok()) => {}
                Some(v) => {
                    return Err(corrupt(
                        dir,
                        format!("kdf.{field} must be an integer from 0 to 2^32-1, found {v}"),
                    ));
                }
            }
        }
    }
    let h: Header = serde_json::from_value(raw).map_err(|e| corrupt(dir, e.to_string()))?;
    if h.format != FORMAT_NAME {
        return Err(corrupt(
            dir,
            format!("format is {:?}, not {FORMAT_NAME:?}", h.format),
        ));
    }
    if h.version != FORMAT_VERSION {
        return Err(VaultError::UnsupportedVersion {
            found: h.version,
            supported: FORMAT_VERSION,
        });
    }
    if h.kdf.algorithm != "argon2id" || h.kdf.argon2_version != 0x13 {
        return Err(corrupt(dir, "only Argon2id version 0x13 is supported"));
    }
    let vault_id: [u8; 16] = decode_fixed(
        &hex::decode(&h.vault_id).map_err(|e| corrupt(dir, format!("vault_id: {e}")))?,
    )
    .ok_or_else(|| corrupt(dir, "vault_id must be 16 bytes"))?;
    let salt = B64
        .decode(&h.kdf.salt)
        .map_err(|e| corrupt(dir, format!("kdf.salt: {e}")))?;
    let params = KdfParams {
        memory_kib: h.kdf.memory_kib,
        iterations: h.kdf.iterations,
        parallelism: h.kdf.parallelism,
        salt_len: salt.len(),
    };
    params
        .check()
        .map_err(|e| corrupt(dir, format!("kdf.{} {}", e.field, e.message)))?;
    let key_check = decode_fixed(
        &hex::decode(&h.key_check).map_err(|e| corrupt(dir, format!("key_check: {e}")))?,
    )
    .ok_or_else(|| corrupt(dir, "key_check must be 32 bytes"))?;
    let wrap_nonce = decode_fixed(
        &B64.decode(&h.wrapped_root_key.nonce)
            .map_err(|e| corrupt(dir, format!("wrapped_root_key.nonce: {e}")))?,
    )
    .ok_or_else(|| corrupt(dir, "wrapped_root_key.nonce must be 12 bytes"))?;
    let wrapped = B64
        .decode(&h.wrapped_root_key.ciphertext)
        .map_err(|e| corrupt(dir, format!("wrapped_root_key.ciphertext: {e}")))?;
    Ok(Parsed {
        vault_id,
        params,
        salt,
        key_check,
        wrap_nonce,
        wrapped,
        created: h.created,
    })
}

/// Derives the master key from `passphrase`, checks it against the key-check value, and only
/// then unwraps the root key.
pub(crate) fn unlock(dir: &Path, h: &Parsed, passphrase: &str) -> Result<SecretKey, VaultError> {
    let kek = master_key(passphrase, &h.salt, &h.params)?;
    unlock_master(dir, h, &kek)
}

/// The master key of `passphrase` for this header (the Argon2id work), checked.
pub(crate) fn derive_master(h: &Parsed, passphrase: &str) -> Result<SecretKey, VaultError> {
    let kek = master_key(passphrase, &h.salt, &h.params)?;
    if !crypto::mac_eq(&key_check_value(kek.as_ref(), &h.vault_id)?, &h.key_check) {
        return Err(VaultError::WrongPassphrase);
    }
    Ok(kek)
}

/// [`unlock`] from an already derived master key (one the agent holds).
pub(crate) fn unlock_master(
    dir: &Path,
    h: &Parsed,
    kek: &SecretKey,
) -> Result<SecretKey, VaultError> {
    let kcv = key_check_value(kek.as_ref(), &h.vault_id)?;
    if !crypto::mac_eq(&kcv, &h.key_check) {
        return Err(VaultError::WrongPassphrase);
    }
    let wrap_key = crypto::derive_key(kek.as_ref(), &h.vault_id, LABEL_WRAP)?;
    let root = Cipher::new(&wrap_key)
        .open(&h.wrap_nonce, &wrap_aad(&h.vault_id), &h.wrapped)
        .map(Zeroizing::new)
        .ok_or_else(|| {
            corrupt(
                dir,
                "the passphrase is right but the wrapped root key does not open",
            )
        })?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if root.len() != KEY_LEN {
        return Err(corrupt(dir, "wrapped root key has the wrong length"));
    }
    out.copy_from_slice(&root);
    Ok(out)
}

/// Writes the header atomically: a crash leaves either the old or the new file, never a mix.
pub(crate) fn write(dir: &Path, h: &Header) -> Result<(), VaultError> {
    let mut bytes =
        serde_json::to_vec_pretty(h).map_err(|e| VaultError::json("vault header", e))?;
    bytes.push(b'\n');
    write_bytes(dir, &bytes)
}

/// Writes header bytes atomically (a shared copy's, already parsed and unlocked, as they are).
pub(crate) fn write_bytes(dir: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let final_path = path(dir);
    let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &final_path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| VaultError::io(format!("writing {}", final_path.display()), e))
}

/// Reads the header, refusing a file larger than [`MAX_HEADER_BYTES`] without reading it all.
fn read_bounded(p: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(p)?;
    let mut bytes = Vec::new();
    f.take(MAX_HEADER_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_HEADER_BYTES {
        return Err(std::io::ErrorKind::FileTooLarge.into());
    }
    Ok(bytes)
}

fn decode_fixed<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    v.try_into().ok()
}
