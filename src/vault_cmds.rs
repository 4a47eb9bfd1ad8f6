//! `secureclaw vault ...` and `secureclaw ledger ...`.
//!
//! Wiring (in main.rs):
//!
//! ```ignore
//! mod vault_cmds;
//! // in each subcommand that opens the vault: #[command(flatten)] pass: vault_cmds::PassphraseArgs,
//! // in the Command enum:
//! //   #[command(subcommand)] Vault(vault_cmds::VaultCommand),
//! //   #[command(subcommand)] Ledger(vault_cmds::LedgerCommand),
//! // dispatch:
//! //   Command::Vault(c) => vault_cmds::run_vault(c, &state_dir, &pass.source()),
//! //   Command::Ledger(c) => vault_cmds::run_ledger(c, &state_dir, &pass.source()),
//! ```
//!
//! Both return the process exit code: 0 success, 1 an integrity check failed (the message says
//! which entry or line); operational failures (wrong passphrase, no vault...) are `Err`.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
// `crate::vault_api`: the engine's `tools::vault` in the binary; the vault crate's own names
// in the vault crate's CLI tests, which compile this file too.
use crate::vault_api::{
    ExportHead, KdfParams, LedgerError, LedgerKey, PassphraseSource, Vault, VaultError,
    parse_export_head, verify_export,
};

/// Where the vault passphrase comes from; flatten into each command that opens the vault (its
/// subcommands inherit the flags), so commands that never do not offer them.
///
/// Default: `SECURECLAW_PASSPHRASE` if set, else a prompt on the terminal.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PassphraseArgs {
    /// Read the vault passphrase from this file (one trailing newline is ignored).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "passphrase_fd"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Read the vault passphrase from this inherited file descriptor (e.g. `3 3<secret`).
    #[arg(long, global = true, value_name = "FD")]
    pub passphrase_fd: Option<i32>,
}

impl PassphraseArgs {
    pub fn source(&self) -> PassphraseSource {
        PassphraseSource::from_flags(self.passphrase_file.clone(), self.passphrase_fd)
    }
}

impl VaultCommand {
    /// Whether machine-readable output was asked for.
    pub fn json(&self) -> bool {
        matches!(self, VaultCommand::Status { json: true })
    }
}

/// Environment variable read by `vault rekey` for the new passphrase (non-interactive use).
pub const ENV_NEW_PASSPHRASE: &str = "SECURECLAW_NEW_PASSPHRASE";

#[derive(Debug, Clone, clap::Subcommand)]
pub enum VaultCommand {
    /// Create the encrypted vault in the state directory (Argon2id parameters from
    /// ARGON2_MEMORY_KB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, ARGON2_SALT_BYTES).
    Init,
    /// Change the vault passphrase. Only the key header is rewritten; no data is re-encrypted.
    Rekey {
        /// Read the new passphrase from this file (else SECURECLAW_NEW_PASSPHRASE, else a prompt).
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from this file descriptor.
        #[arg(long, value_name = "FD")]
        new_passphrase_fd: Option<i32>,
        /// Also re-derive with the Argon2 parameters from the environment (default: keep them).
        #[arg(long)]
        update_kdf: bool,
    },
    /// Show the vault's non-secret facts: id, KDF parameters, key epoch, sizes.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum LedgerCommand {
    /// Check the whole HMAC chain; names the first bad entry.
    Verify {
        /// Also check the ledger still extends this previously exported head (detects a
        /// truncated or rolled-back database).
        #[arg(long, value_name = "HEAD_JSON")]
        head: Option<PathBuf>,
    },
    /// Write the ledger (or one run) as JSONL plus a signed head.
    Export {
        /// Only entries of this run.
        #[arg(long)]
        run: Option<String>,
        /// Output file (default: stdout).
        #[arg(long, short, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Where to write the signed head (default: <out>.head.json; required with stdout).
        #[arg(long, value_name = "PATH")]
        head_out: Option<PathBuf>,
        /// Also write the ledger MAC key (hex, mode 0600) for an offline auditor. Whoever holds
        /// it can verify, and also forge, entries.
        #[arg(long, value_name = "PATH")]
        key_out: Option<PathBuf>,
    },
    /// Verify an exported JSONL file (and its head) offline.
    VerifyExport {
        /// The JSONL export.
        file: PathBuf,
        /// The signed head written by `export` (without it, cut-off lines cannot be detected).
        #[arg(long, value_name = "HEAD_JSON")]
        head: Option<PathBuf>,
        /// The ledger key file from `export --key-out` (default: derive it from the vault
        /// passphrase; the vault database is not opened).
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
}

pub fn run_vault(
    cmd: VaultCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
) -> anyhow::Result<i32> {
    run_vault_to(cmd, state_dir, pass, &mut std::io::stdout().lock())
}

pub fn run_ledger(
    cmd: LedgerCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
) -> anyhow::Result<i32> {
    run_ledger_to(cmd, state_dir, pass, &mut std::io::stdout().lock())
}

/// For `status`, `ledger verify` and `ledger export`: no write lock, nothing written, so they
/// work on a read-only state dir (a backup being audited).
fn open_reading(state_dir: &Path, pass: &PassphraseSource) -> anyhow::Result<Vault> {
    if let Some(v) = Vault::open_for_reading_with_agent(state_dir)? {
        return Ok(v);
    }
    let p = pass.resolve()?;
    Ok(Vault::open_for_reading(state_dir, &p)?)
}

/// Like [`run_vault`], writing human output to `out`.
pub fn run_vault_to(
    cmd: VaultCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        VaultCommand::Init => {
            if Vault::exists(state_dir) {
                bail!("a vault already exists in {}", state_dir.display());
            }
            let params = KdfParams::from_env()?;
            let p = pass.resolve_new()?;
            let v = Vault::create(state_dir, &p, &params)?;
            writeln!(
                out,
                "created vault {} in {} (Argon2id m={} KiB, t={}, p={})",
                v.vault_id(),
                state_dir.display(),
                params.memory_kib,
                params.iterations,
                params.parallelism
            )?;
            Ok(0)
        }
        VaultCommand::Rekey {
            new_passphrase_file,
            new_passphrase_fd,
            update_kdf,
        } => {
            // Changing the passphrase takes the current one, never the agent's key.
            let v = Vault::open(state_dir, &pass.resolve()?)?;
            rekey(&v, new_passphrase_file, new_passphrase_fd, update_kdf, out)
        }
        VaultCommand::Status { json } => {
            let v = open_reading(state_dir, pass)?;
            let s = v.status()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                writeln!(out, "vault        {}", s.vault_id)?;
                writeln!(out, "state dir    {}", s.state_dir.display())?;
                writeln!(out, "created      {}", s.created)?;
                writeln!(
                    out,
                    "kdf          argon2id m={} KiB t={} p={} salt={} bytes",
                    s.kdf.memory_kib, s.kdf.iterations, s.kdf.parallelism, s.kdf.salt_len
                )?;
                writeln!(
                    out,
                    "data key     epoch {} ({} of {} encryptions before rotation)",
                    s.key_epoch, s.encryptions_in_epoch, s.rotate_after
                )?;
                writeln!(out, "ledger       {} entries", s.ledger_entries)?;
                writeln!(
                    out,
                    "blobs        {} ({} bytes)",
                    s.blob_count, s.blob_bytes
                )?;
            }
            Ok(0)
        }
    }
}

/// Reads a head as strictly as the lines (no duplicate or unknown keys). A malformed head is an
/// integrity failure (exit 1), like a forged one.
fn read_head(path: &Path) -> anyhow::Result<Result<ExportHead, VaultError>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_export_head(&bytes))
}

/// Integrity failures become exit code 1 with the precise message; anything else is an error.
fn integrity(r: Result<String, VaultError>, out: &mut dyn Write) -> anyhow::Result<i32> {
    match r {
        Ok(msg) => {
            writeln!(out, "{msg}")?;
            Ok(0)
        }
        Err(VaultError::Ledger(e)) => {
            let what = match e {
                LedgerError::Broken { .. } => "LEDGER BROKEN",
                _ => "EXPORT INVALID",
            };
            writeln!(out, "{what}: {e}")?;
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Like [`run_ledger`], writing human output to `out` (the export itself goes to `--out` or
/// stdout).
pub fn run_ledger_to(
    cmd: LedgerCommand,
    state_dir: &Path,
    pass: &PassphraseSource,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        LedgerCommand::Verify { .. } | LedgerCommand::Export { .. } => {
            let v = open_reading(state_dir, pass)?;
            ledger_to(cmd, &v.ledger(), out)
        }
        LedgerCommand::VerifyExport {
            file,
            head,
            key_file,
        } => {
            let key = match key_file {
                Some(k) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&k)
                            .with_context(|| format!("reading {}", k.display()))?,
                    );
                    LedgerKey::from_hex(&text)?
                }
                None => {
                    let p = pass.resolve()?;
                    LedgerKey::unlock(state_dir, &p)?
                }
            };
            let head = match head.as_deref().map(read_head).transpose()? {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => return integrity(Err(e), out),
            };
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let r = verify_export(BufReader::new(f), &key, head.as_ref());
            integrity(
                r.map(|rep| {
                    let range = match (rep.first_seq, rep.last_seq) {
                        (Some(a), Some(b)) => format!("seq {a}..={b}"),
                        _ => "empty".into(),
                    };
                    format!(
                        "export OK: {} entries ({range}){}",
                        rep.entries,
                        if rep.head_checked {
                            ", matches the signed head"
                        } else {
                            "; no head given, so cut-off trailing lines cannot be detected"
                        }
                    )
                }),
                out,
            )
        }
    }
}

/// `ledger verify` and `ledger export` on `ledger`, wherever it is stored.
pub fn ledger_to(
    cmd: LedgerCommand,
    ledger: &crate::vault_api::Ledger<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        LedgerCommand::Verify { head } => {
            let r = match head {
                Some(h) => read_head(&h)?.and_then(|h| ledger.verify_with_head(&h)),
                None => ledger.verify(),
            };
            integrity(
                r.map(|rep| {
                    format!(
                        "ledger OK: {} entries, chain intact{}, head mac {}",
                        rep.entries,
                        if rep.head_checked {
                            ", extends the exported head"
                        } else {
                            ""
                        },
                        rep.last_mac
                    )
                }),
                out,
            )
        }
        LedgerCommand::Export {
            run,
            out: file,
            head_out,
            key_out,
        } => {
            let head_path = match (&head_out, &file) {
                (Some(h), _) => h.clone(),
                (None, Some(f)) => {
                    let mut s = f.clone().into_os_string();
                    s.push(".head.json");
                    PathBuf::from(s)
                }
                (None, None) => bail!("--head-out is required when exporting to stdout"),
            };
            let head = match &file {
                Some(f) => {
                    let fh = std::fs::File::create(f)
                        .with_context(|| format!("creating {}", f.display()))?;
                    let mut w = std::io::BufWriter::new(fh);
                    let head = ledger.export(run.as_deref(), &mut w)?;
                    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    head
                }
                None => ledger.export(run.as_deref(), &mut std::io::stdout().lock())?,
            };
            std::fs::write(&head_path, serde_json::to_string_pretty(&head)? + "\n")
                .with_context(|| format!("writing {}", head_path.display()))?;
            if let Some(k) = key_out {
                let hexkey = ledger.key().to_hex();
                write_private(&k, format!("{}\n", hexkey.as_str()).as_bytes())?;
            }
            if file.is_some() {
                writeln!(
                    out,
                    "exported {} entries (ledger has {}), head {}",
                    head.exported_count,
                    head.ledger_count,
                    head_path.display()
                )?;
            }
            Ok(0)
        }
        LedgerCommand::VerifyExport { .. } => {
            bail!("verify-export reads an export file, not a ledger")
        }
    }
}

/// `vault rekey` on an open vault: a new passphrase from the flags, the environment or a prompt.
pub fn rekey(
    v: &Vault,
    new_passphrase_file: Option<PathBuf>,
    new_passphrase_fd: Option<i32>,
    update_kdf: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let new_source = match (new_passphrase_file, new_passphrase_fd) {
        (Some(f), _) => PassphraseSource::File(f),
        (None, Some(fd)) => PassphraseSource::Fd(fd),
        (None, None) if std::env::var_os(ENV_NEW_PASSPHRASE).is_some() => {
            PassphraseSource::Env(ENV_NEW_PASSPHRASE.into())
        }
        (None, None) => PassphraseSource::Prompt,
    };
    let new = new_source.resolve_new()?;
    let params = if update_kdf {
        Some(KdfParams::from_env()?)
    } else {
        None
    };
    v.rekey(&new, params.as_ref())?;
    writeln!(out, "passphrase changed for vault {}", v.vault_id())?;
    Ok(0)
}
