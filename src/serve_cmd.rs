//! `serve`: the HTTP API (and `user add`, which creates accounts on the server's data dir).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use console::style;
use secureclaw_engine::session::{Access, PassphraseSource, Session};
use secureclaw_server::config::{ServerConfig, TlsFiles, default_data_dir};
use secureclaw_server::{AppState, serve};

use crate::exit;

#[derive(Args)]
#[command(
    after_help = "Configuration: defaults, then the environment (JWT_SECRET, \
JWT_EXPIRY_MINUTES, TOTP_ISSUER, PII_SCRUB_ENABLED, PROMPT_INJECTION_DETECT_ENABLED, \
LLM_PROVIDER and the provider keys, DOCKER_*, ARGON2_*, SECURECLAW_*; see .env.example), then \
these flags.\n\nExample:\n  SECURECLAW_PASSPHRASE=... secureclaw serve --workspace site=/srv/site\n  \
curl -s http://127.0.0.1:8080/health"
)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SECURECLAW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Where the server keeps its state and the tasks' workspaces
    /// [default: $XDG_DATA_HOME/secureclaw].
    #[arg(long, env = "SECURECLAW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, requires = "tls_key", env = "SECURECLAW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "SECURECLAW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A workspace tasks may name: NAME=/absolute/path (repeatable).
    #[arg(long = "workspace", value_name = "NAME=PATH")]
    pub workspaces: Vec<String>,
    /// Print the OpenAPI document (as checked in at schemas/openapi.json) and exit.
    #[arg(long)]
    pub print_openapi: bool,
    #[command(flatten)]
    pub pass: crate::vault_cmds::PassphraseArgs,
    #[command(flatten)]
    pub store: crate::shared_store::StoreArgs,
    /// Queue the runs this server starts for `secureclaw worker` processes on the same
    /// --store instead of running them here (see docs/scaling.md).
    #[arg(long, requires = "store", env = "SECURECLAW_RUN_ON_WORKERS")]
    pub workers: bool,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create an account on the server's data dir (the server need not run).
    Add(UserAddArgs),
}

#[derive(Args)]
pub struct UserAddArgs {
    pub username: String,
    /// Make the account an admin (sees and acts on every task).
    #[arg(long)]
    pub admin: bool,
    /// Read the password from this file instead of asking.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// [default: $XDG_DATA_HOME/secureclaw].
    #[arg(long, env = "SECURECLAW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: crate::shared_store::StoreArgs,
}

fn config(data_dir: Option<PathBuf>) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::from_env(
        data_dir.unwrap_or_else(default_data_dir),
    )?)
}

fn open(
    config: &ServerConfig,
    pass: &PassphraseSource,
    store: &crate::shared_store::StoreArgs,
) -> anyhow::Result<Session> {
    Ok(open_node(config, pass, store)?.0)
}

/// The server's session, and on a shared store the node (for the work queue).
fn open_node(
    config: &ServerConfig,
    pass: &PassphraseSource,
    store: &crate::shared_store::StoreArgs,
) -> anyhow::Result<(Session, Option<crate::shared_store::Node>)> {
    let state = config.state_dir();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    if let Some(url) = store.url()? {
        let node = crate::shared_store::open_node(url, &state, pass, "server".into())?;
        return Ok((node.session.clone(), Some(node)));
    }
    let session = crate::state::open_as(
        &state,
        pass,
        Access::Write { create: true },
        "server".into(),
    )?;
    Ok((session, None))
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn serve_cmd(args: ServeArgs, pass: &PassphraseSource) -> anyhow::Result<u8> {
    if args.print_openapi {
        print!("{}", secureclaw_server::docs::openapi_pretty()?);
        return Ok(exit::OK);
    }
    let mut config = config(args.data_dir)?;
    config.listen = args.listen;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let files = TlsFiles { cert, key };
        // Bad certificate files stop the start before a vault is created or unlocked.
        secureclaw_server::tls::server_config(&files)?;
        config.tls = Some(files);
    }
    for w in &args.workspaces {
        config.add_workspace(w)?;
    }
    let rt = runtime()?;
    // The session's background work (the store writer, runs) needs the runtime's context.
    let _guard = rt.enter();
    let (session, node) = open_node(&config, pass, &args.store)?;
    let data_dir = config.data_dir.clone();
    let workers = args.workers;
    rt.block_on(async move {
        let mut state = AppState::new(session, config).await?;
        if let (true, Some(node)) = (workers, node) {
            let queue = node.store.queue_as(node.vault.clone(), node.id.clone());
            state = state.with_dispatch(std::sync::Arc::new(crate::shared_store::QueueDispatch(
                queue,
            )));
        }
        let url_of = state.config.clone();
        serve(
            state,
            move |bound| {
                eprintln!(
                    "{} listening on {} (data in {})",
                    style("serve").cyan().bold(),
                    url_of.url(bound),
                    data_dir.display()
                );
                // The bare URL on stdout, for scripts: `URL=$(secureclaw serve | head -1)`.
                println!("{}", url_of.url(bound));
            },
            shutdown_signal(),
        )
        .await?;
        eprintln!("{} stopped", style("serve").cyan().bold());
        anyhow::Ok(())
    })?;
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// [`stop_signal`], then say what stopping does.
async fn shutdown_signal() {
    stop_signal().await;
    eprintln!(
        "{} shutting down: running steps are cancelled and rolled back, parked runs stay parked",
        style("serve").cyan().bold()
    );
}

pub fn user_cmd(cmd: UserCommand, pass: &PassphraseSource) -> anyhow::Result<u8> {
    match cmd {
        UserCommand::Add(args) => {
            let config = config(args.data_dir)?;
            let password = match &args.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => rpassword_prompt(&args.username)?,
            };
            let rt = runtime()?;
            let _guard = rt.enter();
            let session = open(&config, pass, &args.store)?;
            let account = rt.block_on(async {
                let state = AppState::new(session, config).await?;
                let a = state
                    .auth
                    .accounts
                    .create(
                        &args.username,
                        &password,
                        args.admin,
                        &crate::state::actor(),
                    )
                    .await?;
                anyhow::Ok(a)
            })?;
            eprintln!(
                "{} created {} {} ({})",
                style("✓").green(),
                if account.admin { "admin" } else { "user" },
                account.username,
                account.id
            );
            Ok(exit::OK)
        }
    }
}

fn rpassword_prompt(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no terminal to ask for {user}'s password on: pass --password-file PATH");
    }
    let first = rpassword::prompt_password(format!("password for {user}: "))?;
    let again = rpassword::prompt_password("again: ")?;
    if first != again {
        anyhow::bail!("the two passwords differ");
    }
    Ok(first)
}
