//! Argon2id parameters: the seed's defaults, overridable by the seed's environment variables.

use serde::{Deserialize, Serialize};

use crate::error::VaultError;

/// Argon2id cost parameters and salt length for the master key.
///
/// The values used to create (or last rekey) a vault are stored in its header, so opening a
/// vault never depends on the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB (`ARGON2_MEMORY_KB`, default 65536 = 64 MiB).
    pub memory_kib: u32,
    /// Time cost, passes over memory (`ARGON2_ITERATIONS`, default 3).
    pub iterations: u32,
    /// Lanes (`ARGON2_PARALLELISM`, default 1).
    pub parallelism: u32,
    /// Random salt length in bytes (`ARGON2_SALT_BYTES`, default 16, at least 16).
    pub salt_len: usize,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt_len: 16,
        }
    }
}

/// Names of the environment variables `KdfParams::from_env` reads.
pub const ENV_MEMORY_KB: &str = "ARGON2_MEMORY_KB";
pub const ENV_ITERATIONS: &str = "ARGON2_ITERATIONS";
pub const ENV_PARALLELISM: &str = "ARGON2_PARALLELISM";
pub const ENV_SALT_BYTES: &str = "ARGON2_SALT_BYTES";

impl KdfParams {
    /// Defaults overridden by `ARGON2_MEMORY_KB`, `ARGON2_ITERATIONS`, `ARGON2_PARALLELISM`,
    /// `ARGON2_SALT_BYTES` where set. A set but unparsable or unsafe value is an error, not
    /// silently ignored.
    pub fn from_env() -> Result<Self, VaultError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`KdfParams::from_env`] with an arbitrary variable lookup (for tests and config files).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, VaultError> {
        fn parse<T: std::str::FromStr>(
            name: &str,
            raw: Option<String>,
            default: T,
        ) -> Result<T, VaultError> {
            match raw {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| {
                    VaultError::InvalidParams(format!("{name}={v:?} is not a positive integer"))
                }),
            }
        }
        let d = Self::default();
        let p = Self {
            memory_kib: parse(ENV_MEMORY_KB, lookup(ENV_MEMORY_KB), d.memory_kib)?,
            iterations: parse(ENV_ITERATIONS, lookup(ENV_ITERATIONS), d.iterations)?,
            parallelism: parse(ENV_PARALLELISM, lookup(ENV_PARALLELISM), d.parallelism)?,
            salt_len: parse(ENV_SALT_BYTES, lookup(ENV_SALT_BYTES), d.salt_len)?,
        };
        p.validate()?;
        Ok(p)
    }

    /// Rejects parameters Argon2 cannot run or that weaken the salt.
    ///
    /// Memory is only held to Argon2's own floor (8 KiB per lane) so tests can run cheaply; the
    /// documented recommendation is to keep the 64 MiB default.
    pub fn validate(&self) -> Result<(), VaultError> {
        if !(16..=64).contains(&self.salt_len) {
            return Err(VaultError::InvalidParams(format!(
                "salt length {} bytes: must be between 16 and 64",
                self.salt_len
            )));
        }
        if self.iterations == 0 {
            return Err(VaultError::InvalidParams(
                "Argon2 iterations must be at least 1".into(),
            ));
        }
        if !(1..=255).contains(&self.parallelism) {
            return Err(VaultError::InvalidParams(format!(
                "Argon2 parallelism {}: must be between 1 and 255",
                self.parallelism
            )));
        }
        if u64::from(self.memory_kib) < 8 * u64::from(self.parallelism) {
            return Err(VaultError::InvalidParams(format!(
                "Argon2 memory {} KiB: must be at least 8 KiB per lane",
                self.memory_kib
            )));
        }
        Ok(())
    }
}
