//! Argon2id parameters: the default parameters, overridable by the `ARGON2_*` environment variables.

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

/// Upper bound of `memory_kib`: 4 GiB, 64 times the default.
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Upper bound of `iterations` (the default is 3).
pub const MAX_ITERATIONS: u32 = 64;
/// Upper bound of `parallelism` (the default is 1).
pub const MAX_PARALLELISM: u32 = 255;
/// Upper bound of `memory_kib x iterations`, the work one unlock costs: 4 GiB x 4 passes, about
/// 85 times the default (64 MiB x 3). Keeps any header a command reads to a bounded unlock.
pub const MAX_COST_KIB_PASSES: u64 = 4 * 4 * 1024 * 1024;
/// Salt length bounds in bytes.
pub const MIN_SALT_BYTES: usize = 16;
pub const MAX_SALT_BYTES: usize = 64;

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

    /// Rejects parameters Argon2 cannot run, that weaken the salt, or that cost more than
    /// [`MAX_MEMORY_KIB`], [`MAX_ITERATIONS`], [`MAX_PARALLELISM`] or [`MAX_COST_KIB_PASSES`].
    ///
    /// The same bounds hold when creating a vault and when reading its header, so a header edited
    /// to absurd costs (4e9 passes, 8 GiB) is refused as corrupt before any KDF work instead of
    /// hanging every command. Memory is only held to Argon2's own floor (8 KiB per lane) so tests
    /// can run cheaply; the documented recommendation is to keep the 64 MiB default.
    pub fn validate(&self) -> Result<(), VaultError> {
        self.check().map_err(|e| {
            VaultError::InvalidParams(format!("{} ({}) {}", e.field, e.env, e.message))
        })
    }

    /// Like [`KdfParams::validate`], naming the offending header field.
    pub(crate) fn check(&self) -> Result<(), ParamError> {
        let err = |field, env, message: String| ParamError {
            field,
            env,
            message,
        };
        if !(MIN_SALT_BYTES..=MAX_SALT_BYTES).contains(&self.salt_len) {
            return Err(err(
                "salt",
                ENV_SALT_BYTES,
                format!(
                    "{} bytes: must be between {MIN_SALT_BYTES} and {MAX_SALT_BYTES}",
                    self.salt_len
                ),
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(err(
                "iterations",
                ENV_ITERATIONS,
                format!(
                    "{}: must be between 1 and {MAX_ITERATIONS}",
                    self.iterations
                ),
            ));
        }
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(err(
                "parallelism",
                ENV_PARALLELISM,
                format!(
                    "{}: must be between 1 and {MAX_PARALLELISM}",
                    self.parallelism
                ),
            ));
        }
        let floor = 8 * u64::from(self.parallelism);
        if !(floor..=u64::from(MAX_MEMORY_KIB)).contains(&u64::from(self.memory_kib)) {
            return Err(err(
                "memory_kib",
                ENV_MEMORY_KB,
                format!(
                    "{} KiB: must be between 8 KiB per lane ({floor}) and {MAX_MEMORY_KIB} KiB",
                    self.memory_kib
                ),
            ));
        }
        let cost = u64::from(self.memory_kib) * u64::from(self.iterations);
        if cost > MAX_COST_KIB_PASSES {
            return Err(err(
                "iterations",
                ENV_ITERATIONS,
                format!(
                    "{} passes over {} KiB: memory x passes must stay within {MAX_COST_KIB_PASSES} KiB",
                    self.iterations, self.memory_kib
                ),
            ));
        }
        Ok(())
    }
}

/// A KDF parameter out of range: the header field and the environment variable it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamError {
    pub field: &'static str,
    pub env: &'static str,
    pub message: String,
}
