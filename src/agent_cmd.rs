//! `secureclaw unlock` / `secureclaw lock`: keep a vault unlocked in an agent process for a while
//! (like ssh-agent), so commands skip the passphrase and the Argon2id work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use secureclaw_engine::keyring::{self, PassphraseSource};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Unlock the vault once and keep its key in an agent (memory only, same user only) until
    /// it has gone unused for --timeout or `secureclaw lock`; commands then need no passphrase.
    Unlock(UnlockArgs),
    /// Drop every key the unlock agent holds (zeroised) and stop the agent.
    Lock,
    /// Runs the unlock agent (started by `unlock`).
    #[command(name = "__agent", hide = true)]
    Agent,
}

impl AgentCommand {
    /// Where `unlock` reads the passphrase from (the other commands need none).
    pub fn passphrase(&self) -> PassphraseSource {
        match self {
            AgentCommand::Unlock(args) => args.pass.source(),
            AgentCommand::Lock | AgentCommand::Agent => PassphraseSource::auto(),
        }
    }
}

#[derive(Args)]
pub struct UnlockArgs {
    /// Drop the key after this long without use (e.g. 90s, 15m, 2h).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,
    /// The state directory of the vault [default: ./.secureclaw].
    #[arg(long, env = "SECURECLAW_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Only show what the agent holds (vault ids and idle time left; never a key).
    #[arg(long)]
    status: bool,
    #[command(flatten)]
    pass: crate::vault_cmds::PassphraseArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    secureclaw_engine::units::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(cmd: AgentCommand, pass: &PassphraseSource) -> anyhow::Result<u8> {
    match cmd {
        AgentCommand::Unlock(args) if args.status => {
            match keyring::status()? {
                None => println!("no unlock agent is running"),
                Some(s) => {
                    println!(
                        "unlock agent pid {} on {} (memory locked: {})",
                        s.pid,
                        s.socket.display(),
                        if s.memory_locked { "yes" } else { "no" }
                    );
                    for k in s.keys {
                        println!(
                            "  vault {}: dropped after {}s more without use (timeout {}s)",
                            k.vault_id, k.idle_left_secs, k.timeout_secs
                        );
                    }
                }
            }
            Ok(crate::exit::OK)
        }
        AgentCommand::Unlock(args) => {
            let dir = crate::cwd_state(args.state_dir.as_ref())?;
            let secret = pass.resolve().context(
                "no vault passphrase: set SECURECLAW_PASSPHRASE, or pass --passphrase-file PATH or --passphrase-fd N",
            )?;
            let u = keyring::unlock(&dir, &secret, args.timeout)
                .with_context(|| format!("unlocking the vault in {}", dir.display()))?;
            eprintln!(
                "vault {} unlocked in agent pid {}{} until {}s without use; `secureclaw lock` drops it",
                u.vault_id,
                u.agent_pid,
                if u.started_agent { " (started)" } else { "" },
                u.timeout.as_secs()
            );
            Ok(crate::exit::OK)
        }
        AgentCommand::Lock => {
            if keyring::lock()? {
                eprintln!("unlock agent stopped; every key it held is dropped");
            } else {
                eprintln!("no unlock agent was running");
            }
            Ok(crate::exit::OK)
        }
        AgentCommand::Agent => match keyring::serve_agent()? {},
    }
}
