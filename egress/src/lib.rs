// A library reports through return values (errors, warnings, traces); the caller decides what
// reaches the terminal. Unit tests may print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

//! Allowlisting egress proxy for sandboxed steps.
//!
//! A step whose sandbox has only loopback gets outbound access to exactly the domains in its
//! `network:` list through this proxy. The engine creates a listener on `127.0.0.1:3128` inside the
//! step's network namespace, hands it to [`EgressProxy::spawn`], and gives the step
//! `HTTP_PROXY`/`HTTPS_PROXY=http://127.0.0.1:3128`. Accepted connections are served in the engine
//! process (host network namespace). See `docs/egress.md` for the design and threat model.
//!
//! # Public API
//!
//! ```text
//! Allowlist::parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, EgressError>
//!     entries: "example.com" (ports 80, 443) | "example.com:8443" | "*.example.com[:port]"
//! Allowlist::check(&self, raw_host: &str, port: u16) -> Result<Target, RefusalReason>
//! Allowlist::check_authority(&self, authority: &str, default_port: Option<u16>)
//!     -> Result<Target, RefusalReason>
//! Allowlist::check_absolute_url(&self, url: &str) -> Result<Target, RefusalReason>   // http:// only
//! Allowlist::is_empty(&self) -> bool
//! struct Target { host: String /* canonical ASCII */, port: u16 }
//! const RESOLVE_ENV: &str = "SECURECLAW_EGRESS_RESOLVE";
//! canonical_host(raw: &str) -> Result<String, RefusalReason>
//! address_forbidden(ip: IpAddr) -> Option<&'static str>
//!
//! #[async_trait] trait Resolve: Send + Sync { async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>; }
//! #[async_trait] trait Connect: Send + Sync { async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream>; }
//! struct SystemResolver;  struct TcpConnector;          // the production implementations
//! struct Pin { addr: IpAddr, port: Option<u16> }          type Pins = HashMap<String, Vec<Pin>>;
//! struct EgressConfig { allow, resolver, connector, pinned, connect_timeout, resolve_timeout,
//!                       header_timeout, idle_timeout, max_concurrent, max_header_bytes, max_events }
//! EgressConfig::new(allow: Allowlist) -> EgressConfig   // production defaults
//! EgressConfig::parse_pins(spec: &str) -> Result<Pins, EgressError>   // "a.test=127.0.0.1:8080,b.test=::1"
//! EgressConfig::pinned_from_env() -> Result<Pins, EgressError>        // SECURECLAW_EGRESS_RESOLVE
//! EgressProxy::spawn(listener: tokio::net::TcpListener, config: EgressConfig) -> ProxyHandle
//! ProxyHandle::local_addr(&self) -> Option<SocketAddr>
//! ProxyHandle::events(&self) -> Vec<EgressEvent>          // snapshot so far
//! ProxyHandle::dropped_events(&self) -> u64               // events past max_events, not kept
//! ProxyHandle::shutdown(self).await -> Vec<EgressEvent>   // stop accepting, close all, full log
//! struct EgressEvent { at_ms, duration_ms, method, host, port, decision, bytes_up, bytes_down }
//! enum Decision { Allowed { address: SocketAddr }, Refused { reason: RefusalReason } }
//! enum RefusalReason { NotAllowed{host}, PortNotAllowed{host,port}, IpLiteral, ForbiddenAddress{..}, ... }
//! enum EgressError { InvalidAllowEntry{..}, InvalidPin{..} }
//! ```

mod host;
mod ip;
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use host::{Target, canonical_host};
pub use proxy::{EgressProxy, ProxyHandle};

/// Environment variable holding operator pins (see [`EgressConfig::pinned_from_env`]).
pub const RESOLVE_ENV: &str = "SECURECLAW_EGRESS_RESOLVE";

/// Why an address may not be connected to (`Some(class)`), or `None` for public unicast.
pub fn address_forbidden(ip: IpAddr) -> Option<&'static str> {
    ip::forbidden_class(ip.to_canonical())
}

/// Configuration errors (bad allowlist entries or pins). Refusals of individual connections are
/// [`RefusalReason`]s in the event log, not errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EgressError {
    /// An allowlist entry that is not a valid domain, `*.domain` or `domain:port`.
    #[error("network allowlist entry {entry:?} is invalid: {reason}")]
    InvalidAllowEntry {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A malformed operator pin.
    #[error("{RESOLVE_ENV} entry {entry:?} is invalid: {reason}")]
    InvalidPin {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why the proxy refused (or could not complete) an attempt. `Display` is a human message that is
/// also sent to the client in the error response body, so an agent can see why it was blocked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusalReason {
    /// The host is not in the step's `network:` list.
    #[error("{host} is not in this step's network allowlist")]
    NotAllowed {
        /// Canonical host.
        host: String,
    },
    /// The host is listed, but not for this port.
    #[error("port {port} is not allowed for {host}")]
    PortNotAllowed {
        /// Canonical host.
        host: String,
        /// Requested port.
        port: u16,
    },
    /// Empty host name.
    #[error("empty host name")]
    EmptyHost,
    /// Host name over 253 characters (after IDNA).
    #[error("host name too long")]
    HostTooLong,
    /// Control characters in the host.
    #[error("control character in host name")]
    ControlCharacter,
    /// `%` in the host.
    #[error("percent-encoding is not allowed in host names")]
    PercentEncoding,
    /// `user@host`.
    #[error("userinfo (`user@`) is not allowed in the request target")]
    Userinfo,
    /// The host is an IP address (any notation) rather than a name.
    #[error("IP address literals are not allowed; use a host name from the allowlist")]
    IpLiteral,
    /// An ASCII character that cannot appear in a host name.
    #[error("invalid character {character:?} in host name")]
    InvalidCharacter {
        /// The offending character.
        character: char,
    },
    /// IDNA (UTS 46) conversion failed.
    #[error("host name is not a valid internationalised domain name")]
    InvalidIdna,
    /// `a..b`, `a.b..`.
    #[error("empty label in host name")]
    EmptyLabel,
    /// CONNECT without `:port`.
    #[error("CONNECT target needs an explicit port")]
    MissingPort,
    /// Port not in 1..=65535 or not plain digits.
    #[error("invalid port")]
    InvalidPort,
    /// The name resolved to an address that is not public unicast.
    #[error("{host} resolves to {address}, which is {class}; refused")]
    ForbiddenAddress {
        /// Canonical host.
        host: String,
        /// The offending address.
        address: IpAddr,
        /// Which special range it is in.
        class: String,
    },
    /// DNS lookup failed.
    #[error("could not resolve {host}: {message}")]
    ResolutionFailed {
        /// Canonical host.
        host: String,
        /// Resolver error.
        message: String,
    },
    /// DNS lookup timed out.
    #[error("resolving {host} timed out")]
    ResolveTimeout {
        /// Canonical host.
        host: String,
    },
    /// DNS returned no address.
    #[error("{host} has no addresses")]
    NoAddresses {
        /// Canonical host.
        host: String,
    },
    /// Every connect attempt failed.
    #[error("could not connect to {host}: {message}")]
    ConnectFailed {
        /// Canonical host.
        host: String,
        /// Last connect error.
        message: String,
    },
    /// Connecting timed out.
    #[error("connecting to {host} timed out")]
    ConnectTimeout {
        /// Canonical host.
        host: String,
    },
    /// Malformed HTTP.
    #[error("bad request: {message}")]
    BadRequest {
        /// What was wrong.
        message: String,
    },
    /// An origin-form request (`GET /path`): the client talked to the proxy as if it were a server.
    #[error("not a proxy request: use an absolute URL (http://host/...) or CONNECT")]
    NotAProxyRequest,
    /// Absolute-form with a scheme other than `http` (HTTPS must use CONNECT).
    #[error("only http:// URLs can be proxied directly; use CONNECT for https")]
    UnsupportedScheme,
    /// Request head larger than the limit, or too many headers.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The request head did not arrive in time.
    #[error("timed out waiting for the request headers")]
    HeaderTimeout,
    /// Request bodies with `Transfer-Encoding` are not forwarded (see docs/egress.md).
    #[error("request Transfer-Encoding is not supported; send a Content-Length body")]
    UnsupportedTransferEncoding,
    /// `max_concurrent` connections are already open.
    #[error("too many concurrent connections through the egress proxy")]
    TooManyConnections,
    /// The proxy shut down before a decision was made.
    #[error("egress proxy shutting down")]
    ShuttingDown,
}

impl RefusalReason {
    /// HTTP status sent to the client for this refusal.
    pub fn http_status(&self) -> u16 {
        use RefusalReason as R;
        match self {
            R::NotAllowed { .. }
            | R::PortNotAllowed { .. }
            | R::IpLiteral
            | R::ForbiddenAddress { .. }
            | R::Userinfo => 403,
            R::HeaderTimeout => 408,
            R::HeadersTooLarge => 431,
            R::UnsupportedTransferEncoding => 501,
            R::ResolutionFailed { .. } | R::NoAddresses { .. } | R::ConnectFailed { .. } => 502,
            R::TooManyConnections | R::ShuttingDown => 503,
            R::ResolveTimeout { .. } | R::ConnectTimeout { .. } => 504,
            R::EmptyHost
            | R::HostTooLong
            | R::ControlCharacter
            | R::PercentEncoding
            | R::InvalidCharacter { .. }
            | R::InvalidIdna
            | R::EmptyLabel
            | R::MissingPort
            | R::InvalidPort
            | R::BadRequest { .. }
            | R::NotAProxyRequest
            | R::UnsupportedScheme => 400,
        }
    }
}

/// What the proxy did with one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Decision {
    /// Connected to `address` (the exact address that passed the checks).
    Allowed {
        /// Upstream address.
        address: SocketAddr,
    },
    /// Refused or failed before any byte reached an upstream.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
}

/// One attempt through the proxy: a CONNECT tunnel or one plain-HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEvent {
    /// Milliseconds from proxy start to the moment the request head was read.
    pub at_ms: u64,
    /// Milliseconds the attempt lasted (for tunnels: until closed).
    pub duration_ms: u64,
    /// `CONNECT`, `GET`, ...; `?` if the request could not be parsed.
    pub method: String,
    /// Host as the client sent it (truncated to 256 bytes), or the raw target if unparsable.
    pub host: String,
    /// Requested port (0 if unknown).
    pub port: u16,
    /// Allowed (with upstream address) or refused (with reason).
    pub decision: Decision,
    /// Bytes sent to the upstream (for plain HTTP including the rewritten request head).
    pub bytes_up: u64,
    /// Bytes from the upstream sent to the client.
    pub bytes_down: u64,
}

/// Domains (and ports) a step may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: BTreeMap<String, BTreeSet<u16>>,
    /// Base name → ports, for `*.base` entries (matches subdomains of any depth, not `base`).
    wildcard: BTreeMap<String, BTreeSet<u16>>,
}

/// Ports an entry without `:port` allows: plain HTTP and HTTPS.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

impl Allowlist {
    /// Parse `network:` entries: `example.com` (ports 80 and 443), `example.com:8443` (only that
    /// port), `*.example.com` (subdomains only, not `example.com` itself). Names go through the
    /// same canonicalisation as requests, so `Bücher.de.` and `xn--bcher-kva.de` are one entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, EgressError> {
        let mut list = Allowlist::default();
        for entry in entries {
            let entry = entry.as_ref();
            let bad = |reason: String| EgressError::InvalidAllowEntry {
                entry: entry.to_owned(),
                reason,
            };
            let (name, ports) = match entry.rsplit_once(':') {
                Some((name, port)) => {
                    let port = port
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad(format!("invalid port {port:?}")))?;
                    (name, vec![port])
                }
                None => (entry, DEFAULT_PORTS.to_vec()),
            };
            let (wild, name) = match name.strip_prefix("*.") {
                Some(base) => (true, base),
                None => (false, name),
            };
            let canon = canonical_host(name).map_err(|e| bad(e.to_string()))?;
            if wild && !canon.contains('.') {
                // `*.com` would open a whole TLD; require at least `*.example.com`.
                return Err(bad(
                    "a wildcard needs a base name with at least two labels".to_owned()
                ));
            }
            let map = if wild {
                &mut list.wildcard
            } else {
                &mut list.exact
            };
            map.entry(canon).or_default().extend(ports);
        }
        Ok(list)
    }

    /// True if nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Canonicalise `raw_host` and check it and `port` against the list.
    pub fn check(&self, raw_host: &str, port: u16) -> Result<Target, RefusalReason> {
        let host = canonical_host(raw_host)?;
        let mut name_listed = false;
        let mut port_listed = false;
        if let Some(ports) = self.exact.get(&host) {
            name_listed = true;
            port_listed |= ports.contains(&port);
        }
        // Every proper suffix after a dot: `a.b.example.com` → `b.example.com`, `example.com`, `com`.
        let mut rest = host.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(ports) = self.wildcard.get(suffix) {
                name_listed = true;
                port_listed |= ports.contains(&port);
            }
            rest = suffix;
        }
        match (name_listed, port_listed) {
            (_, true) => Ok(Target { host, port }),
            (true, false) => Err(RefusalReason::PortNotAllowed { host, port }),
            (false, _) => Err(RefusalReason::NotAllowed { host }),
        }
    }

    /// Split `host[:port]` (no userinfo, no IP literal) and [`check`](Self::check) it.
    pub fn check_authority(
        &self,
        authority: &str,
        default_port: Option<u16>,
    ) -> Result<Target, RefusalReason> {
        let (host, port) = host::split_authority(authority, default_port)?;
        self.check(host, port)
    }

    /// Check an absolute `http://host[:port]/...` URL exactly as the proxy does for plain-HTTP
    /// requests (also usable for the engine's own `http` action). Only `http://` is accepted.
    pub fn check_absolute_url(&self, url: &str) -> Result<Target, RefusalReason> {
        let abs = host::parse_absolute(url)?;
        self.check_authority(abs.authority, Some(80))
    }
}

/// DNS resolution, swappable for tests and for an engine-side resolver.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// All addresses of `host` (a canonical ASCII name, never an IP literal).
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` via `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, 0)).await?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// Opening upstream connections. The proxy only ever passes addresses that passed the checks; the
/// seam exists so tests can observe exactly which address was dialled without leaving loopback,
/// and so the engine could dial from a specific source address.
#[async_trait]
pub trait Connect: Send + Sync {
    /// Connect to `addr`.
    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream>;
}

/// Plain `TcpStream::connect`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

#[async_trait]
impl Connect for TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        tokio::net::TcpStream::connect(addr).await
    }
}

/// An operator pin: connect to `addr` (and `port` if given, else the requested port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Address to connect to.
    pub addr: IpAddr,
    /// Port override.
    pub port: Option<u16>,
}

/// Canonical host → pins.
pub type Pins = HashMap<String, Vec<Pin>>;

/// Proxy configuration. Construct with [`EgressConfig::new`] and adjust the public fields.
pub struct EgressConfig {
    /// What may be reached.
    pub allow: Allowlist,
    /// Resolver for names that are not pinned.
    pub resolver: Arc<dyn Resolve>,
    /// How upstream connections are opened.
    pub connector: Arc<dyn Connect>,
    /// Operator pins (like `curl --resolve`). A pinned name skips DNS *and* the private-range
    /// check, because the operator chose the address; it still has to be on the allowlist.
    pub pinned: Pins,
    /// Limit for connecting to the upstream (all addresses together).
    pub connect_timeout: Duration,
    /// Limit for one DNS lookup.
    pub resolve_timeout: Duration,
    /// Limit for reading one request head.
    pub header_timeout: Duration,
    /// A connection with no traffic in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered 503 and logged.
    pub max_concurrent: usize,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Events kept in memory; later ones are counted in `dropped_events` only, so a step that
    /// floods the proxy cannot exhaust the engine's memory.
    pub max_events: usize,
}

impl std::fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The resolver and connector are trait objects without Debug; everything that decides
        // policy is shown.
        f.debug_struct("EgressConfig")
            .field("allow", &self.allow)
            .field("pinned", &self.pinned)
            .field("connect_timeout", &self.connect_timeout)
            .field("resolve_timeout", &self.resolve_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_events", &self.max_events)
            .finish_non_exhaustive()
    }
}

impl EgressConfig {
    /// Defaults: system resolver, direct TCP, no pins, connect 10 s, resolve 5 s, header 10 s,
    /// idle 120 s, 64 connections, 16 KiB heads, 10 000 events.
    pub fn new(allow: Allowlist) -> Self {
        EgressConfig {
            allow,
            resolver: Arc::new(SystemResolver),
            connector: Arc::new(TcpConnector),
            pinned: Pins::new(),
            connect_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_concurrent: 64,
            max_header_bytes: 16 * 1024,
            max_events: 10_000,
        }
    }

    /// Parse pins: comma-separated `host=ip`, `host=ip:port`, `host=[v6]:port` or `host=v6`.
    /// Repeating a host adds addresses (tried in order). Whitespace around entries is ignored.
    pub fn parse_pins(spec: &str) -> Result<Pins, EgressError> {
        let mut pins = Pins::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason: &str| EgressError::InvalidPin {
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            let (host, addr) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected host=address[:port]"))?;
            let host = canonical_host(host.trim()).map_err(|e| bad(&e.to_string()))?;
            let addr = addr.trim();
            let pin = if let Ok(sa) = addr.parse::<SocketAddr>() {
                if sa.port() == 0 {
                    return Err(bad("port 0"));
                }
                Pin {
                    addr: sa.ip(),
                    port: Some(sa.port()),
                }
            } else if let Ok(ip) = addr.parse::<IpAddr>() {
                Pin {
                    addr: ip,
                    port: None,
                }
            } else {
                return Err(bad("expected an IP address, IP:port or [IPv6]:port"));
            };
            pins.entry(host).or_default().push(pin);
        }
        Ok(pins)
    }

    /// Pins from `SECURECLAW_EGRESS_RESOLVE` (unset or empty: none).
    pub fn pinned_from_env() -> Result<Pins, EgressError> {
        match std::env::var(RESOLVE_ENV) {
            Ok(spec) => Self::parse_pins(&spec),
            Err(std::env::VarError::NotPresent) => Ok(Pins::new()),
            Err(std::env::VarError::NotUnicode(_)) => Err(EgressError::InvalidPin {
                entry: String::new(),
                reason: "not valid UTF-8".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn allowlist_entries() {
        let a = Allowlist::parse(&["Example.com", "api.test:8443", "*.wild.test"]).unwrap();
        assert!(a.check("example.com", 443).is_ok());
        assert!(a.check("EXAMPLE.COM.", 80).is_ok());
        assert_eq!(
            a.check("example.com", 22),
            Err(RefusalReason::PortNotAllowed {
                host: "example.com".into(),
                port: 22
            })
        );
        assert!(a.check("api.test", 8443).is_ok());
        assert!(a.check("api.test", 443).is_err());
        assert!(a.check("x.wild.test", 443).is_ok());
        assert!(a.check("x.y.wild.test", 443).is_ok());
        assert!(a.check("wild.test", 443).is_err());
        assert!(a.check("evilwild.test", 443).is_err());
        for bad in [
            "*.com",
            "1.2.3.4",
            "a.test:0",
            "a.test:x",
            "https://a.test",
            "",
            "*",
            "a.*.b",
        ] {
            assert!(Allowlist::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins() {
        let p = EgressConfig::parse_pins(
            "a.test=127.0.0.1:8080, B.test=127.0.0.1,c.test=[::1]:9,c.test=::1",
        )
        .unwrap();
        assert_eq!(
            p["a.test"],
            vec![Pin {
                addr: "127.0.0.1".parse().unwrap(),
                port: Some(8080)
            }]
        );
        assert_eq!(p["b.test"][0].port, None);
        assert_eq!(p["c.test"].len(), 2);
        for bad in [
            "a.test",
            "a.test=nope",
            "1.2.3.4=1.2.3.4",
            "a.test=1.2.3.4:0",
        ] {
            assert!(EgressConfig::parse_pins(bad).is_err(), "{bad}");
        }
        assert!(EgressConfig::parse_pins("").unwrap().is_empty());
    }

    #[test]
    fn refusal_serde_round_trip() {
        let e = EgressEvent {
            at_ms: 1,
            duration_ms: 2,
            method: "CONNECT".into(),
            host: "x".into(),
            port: 443,
            decision: Decision::Refused {
                reason: RefusalReason::ForbiddenAddress {
                    host: "x".into(),
                    address: "10.0.0.1".parse().unwrap(),
                    class: "private".into(),
                },
            },
            bytes_up: 0,
            bytes_down: 0,
        };
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"verdict\":\"refused\""), "{j}");
        assert!(j.contains("\"kind\":\"forbidden_address\""), "{j}");
        assert_eq!(serde_json::from_str::<EgressEvent>(&j).unwrap(), e);
    }
}
