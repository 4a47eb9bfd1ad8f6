//! Egress for isolated backends: a step allowed `network: [domain, ...]` still has no network
//! interface but loopback. The engine opens the egress proxy's listening socket *inside* the
//! step's network namespace (127.0.0.1:3128 there) while the proxy itself runs in the engine,
//! in the host namespace: the socket is the only door, and the proxy decides, per connection,
//! whether the name is on the list and its resolved address is public. Programs that ignore
//! `HTTP_PROXY` have no route anywhere; DNS does not exist inside.
//!
//! Compared with a unix socket bind-mounted into the sandbox and bridged to a loopback port by
//! a process inside, this needs no bridge process in the sandbox (nothing in the image, no
//! extra pid in the step's limits) and exposes no file: the result is the same loopback port.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use secureclaw_egress::{Allowlist, EgressConfig, EgressProxy, ProxyHandle};
pub use secureclaw_egress::{EgressEvent, Pins};

use crate::SandboxError;

/// Where the proxy listens inside the step's network namespace.
pub const PROXY_ADDR: &str = "127.0.0.1:3128";

/// The proxy serving one step.
pub struct EgressSession {
    handle: ProxyHandle,
}

impl EgressSession {
    /// Open the listener inside `netns` and start the proxy for `domains`; `pins` are operator
    /// pins (name → address, like curl's `--resolve`).
    pub async fn start_in(
        netns: &OwnedFd,
        domains: &[String],
        pins: &Pins,
    ) -> Result<Self, SandboxError> {
        let allow = Allowlist::parse(domains).map_err(|e| SandboxError::Unsupported {
            backend: "egress".into(),
            feature: format!("this network allowlist: {e}"),
        })?;
        let mut config = EgressConfig::new(allow);
        config.pinned = pins.clone();
        let listener = listen_in(netns)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(EgressSession {
            handle: EgressProxy::spawn(listener, config),
        })
    }

    /// Stop the proxy (open tunnels are closed) and return what it saw.
    pub async fn finish(self) -> Vec<EgressEvent> {
        self.handle.shutdown().await
    }
}

/// Operator pins from `SECURECLAW_EGRESS_RESOLVE` (`name=ip[:port],...`, like curl's
/// `--resolve`): how an operator (or a test) stands a known address in for a name. A pinned
/// name still has to be on the step's list.
pub fn pins_from_env() -> Result<Pins, SandboxError> {
    EgressConfig::pinned_from_env().map_err(|e| SandboxError::Unavailable {
        backend: "egress".into(),
        reason: format!("{}: {e}", secureclaw_egress::RESOLVE_ENV),
    })
}

/// The proxy variables every common client honours (curl, wget, pip, git, Python, Go, Node's
/// undici with a flag). `NO_PROXY` is cleared so nothing bypasses it by name.
pub fn set_proxy_env(env: &mut BTreeMap<String, String>) {
    let url = format!("http://{PROXY_ADDR}");
    for key in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env.insert(key.into(), url.clone());
    }
    env.insert("NO_PROXY".into(), String::new());
    env.insert("no_proxy".into(), String::new());
}

/// Bind a TCP listener on [`PROXY_ADDR`] inside the network namespace `netns`. A short-lived
/// thread enters the namespace, binds and exits: the socket keeps its namespace, the engine's
/// other threads never leave theirs. Needs CAP_SYS_ADMIN over the namespace (a root engine).
pub fn listen_in(netns: &OwnedFd) -> Result<std::net::TcpListener, SandboxError> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns changes the network namespace of this thread only; `fd` is a
                // valid namespace fd borrowed for the duration of the scope, and the thread
                // ends right after binding, so no other code runs in the step's namespace.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                std::net::TcpListener::bind(PROXY_ADDR)
            })
            .join()
            .map_err(|_| std::io::Error::other("the netns thread panicked"))?
    })
    .map_err(|e| SandboxError::Unavailable {
        backend: "egress".into(),
        reason: format!(
            "cannot open the proxy port inside the step's network namespace: {e} (egress needs a root engine)"
        ),
    })
}
