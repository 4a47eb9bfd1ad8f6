//! Where the passphrase comes from. See docs/vault.md for the trade-offs of each source.

use std::io::Read;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::PassphraseError;

/// The environment variable read by [`PassphraseSource::Env`] by default.
pub const ENV_PASSPHRASE: &str = "SECURECLAW_PASSPHRASE";

/// A place to obtain the vault passphrase from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// An environment variable (normally `SECURECLAW_PASSPHRASE`). Convenient for CI; visible to
    /// anything that can read the process environment.
    Env(String),
    /// A file holding the passphrase (one trailing newline is stripped).
    File(PathBuf),
    /// An inherited file descriptor, e.g. `--passphrase-fd 3 3<secret` (Linux: read through
    /// `/proc/self/fd`). Leaves no trace in the environment or on disk.
    Fd(i32),
    /// Ask on the controlling terminal, echo off.
    Prompt,
}

impl PassphraseSource {
    /// The usual default: `SECURECLAW_PASSPHRASE` when set, else a prompt.
    pub fn auto() -> Self {
        if std::env::var_os(ENV_PASSPHRASE).is_some() {
            Self::Env(ENV_PASSPHRASE.into())
        } else {
            Self::Prompt
        }
    }

    /// Picks the source from CLI flags, falling back to [`PassphraseSource::auto`].
    pub fn from_flags(file: Option<PathBuf>, fd: Option<i32>) -> Self {
        match (file, fd) {
            (Some(f), _) => Self::File(f),
            (None, Some(fd)) => Self::Fd(fd),
            (None, None) => Self::auto(),
        }
    }

    /// Reads the passphrase.
    pub fn resolve(&self) -> Result<Zeroizing<String>, PassphraseError> {
        self.resolve_prompting("Vault passphrase: ")
    }

    /// Reads a new passphrase; a prompt asks twice and requires both to match.
    pub fn resolve_new(&self) -> Result<Zeroizing<String>, PassphraseError> {
        match self {
            Self::Prompt => {
                let a = prompt("New vault passphrase: ")?;
                let b = prompt("Repeat new passphrase: ")?;
                if *a != *b {
                    return Err(PassphraseError::Mismatch);
                }
                non_empty(a, "the prompt")
            }
            other => other.resolve(),
        }
    }

    fn resolve_prompting(&self, label: &str) -> Result<Zeroizing<String>, PassphraseError> {
        match self {
            Self::Env(var) => {
                let v = std::env::var(var).map_err(|e| match e {
                    std::env::VarError::NotPresent => PassphraseError::EnvMissing(var.clone()),
                    std::env::VarError::NotUnicode(_) => {
                        PassphraseError::EnvNotUnicode(var.clone())
                    }
                })?;
                non_empty(Zeroizing::new(v), &format!("${var}"))
            }
            Self::File(path) => {
                let what = path.display().to_string();
                let f = std::fs::File::open(path).map_err(|source| PassphraseError::Read {
                    what: what.clone(),
                    source,
                })?;
                read_secret(f, &what)
            }
            Self::Fd(fd) => {
                let what = format!("file descriptor {fd}");
                let f = std::fs::File::open(format!("/proc/self/fd/{fd}")).map_err(|source| {
                    PassphraseError::Read {
                        what: what.clone(),
                        source,
                    }
                })?;
                read_secret(f, &what)
            }
            Self::Prompt => non_empty(prompt(label)?, "the prompt"),
        }
    }
}

fn prompt(label: &str) -> Result<Zeroizing<String>, PassphraseError> {
    // rpassword reads from /dev/tty, so this also works when stdin is redirected; without a
    // controlling terminal it fails and we say how to supply the passphrase instead.
    rpassword::prompt_password(label)
        .map(Zeroizing::new)
        .map_err(|_| PassphraseError::NoTerminal)
}

fn read_secret(mut r: impl Read, what: &str) -> Result<Zeroizing<String>, PassphraseError> {
    let mut bytes = Zeroizing::new(Vec::new());
    // A passphrase file larger than this is a mistake (wrong file), not a passphrase.
    r.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|source| PassphraseError::Read {
            what: what.to_owned(),
            source,
        })?;
    let mut s = Zeroizing::new(
        String::from_utf8(std::mem::take(&mut *bytes))
            .map_err(|_| PassphraseError::NotUnicode(what.to_owned()))?,
    );
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    non_empty(s, what)
}

fn non_empty(s: Zeroizing<String>, what: &str) -> Result<Zeroizing<String>, PassphraseError> {
    if s.is_empty() {
        Err(PassphraseError::Empty(what.to_owned()))
    } else {
        Ok(s)
    }
}
