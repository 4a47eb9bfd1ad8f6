//! The proxy server: accept loop, per-connection request handling, tunnels.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::{parse_absolute, split_authority};
use crate::{Decision, EgressConfig, EgressEvent, RefusalReason, Target, ip};

/// Most headers accepted in a request or response head.
const MAX_HEADERS: usize = 100;
/// Largest upstream response head; bigger than the request limit because real servers send many
/// cookies, and the upstream is a site the step was allowed to reach.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest `host` kept in an event, so a hostile client cannot bloat the log.
const MAX_LOGGED_HOST: usize = 256;
/// Time allowed for writing a refusal to a client that does not read.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Over-limit connections that still get a 503 (and a lingering close); beyond this they are
/// dropped at once, so a flood cannot pile up file descriptors in the engine.
const MAX_OVERFLOW_REFUSALS: usize = 16;
/// Most bytes read and discarded from a refused client before closing.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// The egress proxy. See the crate docs.
pub struct EgressProxy;

impl EgressProxy {
    /// Serve `listener` with `config` on the current tokio runtime until the handle is shut down
    /// (or dropped). Must be called from within a tokio runtime.
    pub fn spawn(listener: TcpListener, config: EgressConfig) -> ProxyHandle {
        let local_addr = listener.local_addr().ok();
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            overflow: Arc::new(Semaphore::new(MAX_OVERFLOW_REFUSALS)),
            config,
            log: Mutex::new(Log::default()),
            start: Instant::now(),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            cancel.clone(),
            tracker.clone(),
        ));
        ProxyHandle {
            shared,
            cancel,
            tracker,
            accept,
            local_addr,
        }
    }
}

/// A running proxy. Dropping it stops the proxy too, but without waiting; call
/// [`shutdown`](Self::shutdown) to get the complete log.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    accept: JoinHandle<()>,
    local_addr: Option<SocketAddr>,
}

impl ProxyHandle {
    /// Address of the listener the proxy serves.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Events recorded so far (finished attempts only).
    pub fn events(&self) -> Vec<EgressEvent> {
        self.shared.lock_log().events.clone()
    }

    /// Events not kept because `max_events` was reached.
    pub fn dropped_events(&self) -> u64 {
        self.shared.lock_log().dropped
    }

    /// Stop accepting, close every connection and tunnel, wait for them to be logged, and return
    /// the log in completion order.
    pub async fn shutdown(mut self) -> Vec<EgressEvent> {
        self.cancel.cancel();
        // The accept task only ends by cancellation (or a panic, which leaves nothing to do);
        // awaiting it guarantees the listener is dropped and no new task is spawned after close().
        let _ = (&mut self.accept).await;
        self.tracker.close();
        self.tracker.wait().await;
        std::mem::take(&mut self.shared.lock_log().events)
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct Log {
    events: Vec<EgressEvent>,
    dropped: u64,
}

struct Shared {
    config: EgressConfig,
    log: Mutex<Log>,
    start: Instant,
    permits: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
}

impl Shared {
    fn lock_log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep logging.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, event: EgressEvent) {
        let mut log = self.lock_log();
        if log.events.len() < self.config.max_events {
            log.events.push(event);
        } else {
            log.dropped += 1;
        }
    }

    fn millis_since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning; the error is transient or
                    // the proxy is useless anyway, and shutdown still works.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match Arc::clone(&shared.permits).try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(connection(
                    stream,
                    Arc::clone(&shared),
                    cancel.clone(),
                    permit,
                ));
            }
            Err(_) => {
                let mut p = Pending::new("?".to_owned(), String::new(), 0);
                let Ok(overflow) = Arc::clone(&shared.overflow).try_acquire_owned() else {
                    // Flooded: log and close without a response.
                    p.decision = Some(Decision::Refused {
                        reason: RefusalReason::TooManyConnections,
                    });
                    shared.record(p.finish(&shared));
                    continue;
                };
                let shared = Arc::clone(&shared);
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    let _overflow = overflow;
                    let mut stream = stream;
                    refuse(&mut stream, &mut p, RefusalReason::TooManyConnections).await;
                    shared.record(p.finish(&shared));
                    tokio::select! {
                        () = linger(&mut stream) => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        }
    }
}

/// An attempt in progress; turned into an [`EgressEvent`] when it ends (or is cancelled).
struct Pending {
    at: Instant,
    method: String,
    host: String,
    port: u16,
    decision: Option<Decision>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Pending {
    fn new(method: String, mut host: String, port: u16) -> Self {
        if host.len() > MAX_LOGGED_HOST {
            let mut cut = MAX_LOGGED_HOST;
            while !host.is_char_boundary(cut) {
                cut -= 1;
            }
            host.truncate(cut);
        }
        Pending {
            at: Instant::now(),
            method,
            host,
            port,
            decision: None,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    fn finish(self, shared: &Shared) -> EgressEvent {
        EgressEvent {
            at_ms: shared.millis_since_start(self.at),
            duration_ms: u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX),
            method: self.method,
            host: self.host,
            port: self.port,
            decision: self.decision.unwrap_or(Decision::Refused {
                reason: RefusalReason::ShuttingDown,
            }),
            bytes_up: self.bytes_up.into_inner(),
            bytes_down: self.bytes_down.into_inner(),
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let mut current: Option<Pending> = None;
    // Cancellation drops `serve` wherever it is (closing both sockets); the attempt it was
    // working on is still in `current` and gets logged with the bytes counted so far.
    let cancelled = tokio::select! {
        () = serve(&mut stream, &shared, &mut current) => false,
        () = cancel.cancelled() => true,
    };
    // Log first: the client may take a while to close, and the log must not wait for it.
    if let Some(p) = current.take() {
        shared.record(p.finish(&shared));
    }
    if !cancelled {
        tokio::select! {
            () = linger(&mut stream) => {}
            () = cancel.cancelled() => {}
        }
    }
}

/// A parsed request head, owned so the read buffer can be reused.
struct RequestHead {
    method: String,
    target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    /// Names as sent (compared case-insensitively, forwarded as sent).
    headers: Vec<(String, Vec<u8>)>,
}

enum HeadError {
    Eof,
    TooLarge,
    Timeout,
    Malformed(String),
    Io,
}

async fn serve(client: &mut TcpStream, shared: &Shared, current: &mut Option<Pending>) {
    let cfg = &shared.config;
    // Latency matters more than packet count for request/response traffic through a proxy.
    let _ = client.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        let head =
            read_request_head(client, &mut buf, cfg.max_header_bytes, cfg.header_timeout).await;
        let head = match head {
            Ok(h) => h,
            Err(HeadError::Eof | HeadError::Io) => return,
            // An idle keep-alive connection timing out is normal; a first request that never
            // completes is an attempt worth logging.
            Err(HeadError::Timeout) if !first && buf.is_empty() => return,
            Err(e) => {
                let reason = match e {
                    HeadError::TooLarge => RefusalReason::HeadersTooLarge,
                    HeadError::Timeout => RefusalReason::HeaderTimeout,
                    HeadError::Malformed(message) => RefusalReason::BadRequest { message },
                    HeadError::Eof | HeadError::Io => return,
                };
                let p = current.insert(Pending::new("?".into(), String::new(), 0));
                refuse(client, p, reason).await;
                finish(shared, current);
                return;
            }
        };
        first = false;
        let keep_alive = if head.method == "CONNECT" {
            handle_connect(client, shared, current, head, &mut buf).await;
            false
        } else {
            handle_plain(client, shared, current, head, &mut buf).await
        };
        finish(shared, current);
        if !keep_alive {
            return;
        }
    }
}

fn finish(shared: &Shared, current: &mut Option<Pending>) {
    if let Some(p) = current.take() {
        shared.record(p.finish(shared));
    }
}

/// Read until a complete request head is in `buf`; on success the head is parsed and removed from
/// `buf`, leaving any bytes that followed it (body, pipelined request, TLS ClientHello).
async fn read_request_head(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
    limit_time: Duration,
) -> Result<RequestHead, HeadError> {
    let deadline = Instant::now() + limit_time;
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = RequestHead {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        version: req.version.unwrap_or(1),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_owned(), h.value.to_vec()))
                            .collect(),
                    };
                    buf.drain(..len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
                Err(e) => return Err(HeadError::Malformed(e.to_string())),
            }
        }
        if buf.len() >= limit {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 4096];
        let want = chunk.len().min(limit - buf.len());
        let n = match timeout_at(deadline, client.read(&mut chunk[..want])).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Err(_)) => return Err(HeadError::Io),
            Ok(Ok(0)) if buf.is_empty() => return Err(HeadError::Eof),
            Ok(Ok(0)) => {
                return Err(HeadError::Malformed(
                    "connection closed in the middle of the request head".into(),
                ));
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Send the refusal to the client and set the decision. The caller closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(client: &mut S, p: &mut Pending, reason: RefusalReason) {
    let status = reason.http_status();
    let message = reason.to_string();
    p.decision = Some(Decision::Refused { reason });
    send_error(client, status, &message).await;
}

/// Write a small `text/plain` error response (bounded in time: the client may not read).
async fn send_error<S: AsyncWrite + Unpin>(client: &mut S, status: u16, message: &str) {
    let body = format!("secureclaw egress proxy: {message}\n");
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Secureclaw-Egress: refused\r\n\r\n",
        status_text(status),
        body.len()
    );
    let _ = timeout(REFUSAL_WRITE_TIMEOUT, async {
        client.write_all(head.as_bytes()).await?;
        client.write_all(body.as_bytes()).await?;
        client.flush().await
    })
    .await;
}

/// Close a client connection gracefully. Closing a socket with unread input makes the kernel send
/// RST, which can destroy a response (e.g. a 431 after a huge head) before the client reads it; so
/// send FIN, then read and discard a bounded amount until the client closes or time runs out.
async fn linger(client: &mut TcpStream) {
    let _ = timeout(REFUSAL_WRITE_TIMEOUT, async {
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < LINGER_MAX_BYTES {
            match client.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Resolve (or take the pin for) a checked target, refuse any non-public address, and connect to
/// one of exactly the addresses that were checked. There is no second lookup anywhere, so a DNS
/// answer that changes between check and use (rebinding) cannot redirect the connection.
async fn open_upstream(
    shared: &Shared,
    target: &Target,
) -> Result<(TcpStream, SocketAddr), RefusalReason> {
    let cfg = &shared.config;
    let host = || target.host.clone();
    let addrs: Vec<SocketAddr> = match cfg.pinned.get(&target.host) {
        Some(pins) => pins
            .iter()
            .map(|p| SocketAddr::new(p.addr, p.port.unwrap_or(target.port)))
            .collect(),
        None => {
            let ips = timeout(cfg.resolve_timeout, cfg.resolver.resolve(&target.host))
                .await
                .map_err(|_| RefusalReason::ResolveTimeout { host: host() })?
                .map_err(|e| RefusalReason::ResolutionFailed {
                    host: host(),
                    message: e.to_string(),
                })?;
            if ips.is_empty() {
                return Err(RefusalReason::NoAddresses { host: host() });
            }
            let mut addrs = Vec::with_capacity(ips.len());
            for ip in ips {
                // Mapped IPv6 (::ffff:a.b.c.d) reaches the IPv4 host, so judge and dial it as IPv4.
                let ip = ip.to_canonical();
                if let Some(class) = ip::forbidden_class(ip) {
                    // ANY bad address refuses the name: a resolver mixing public and private
                    // answers is exactly what a rebinding attack looks like.
                    return Err(RefusalReason::ForbiddenAddress {
                        host: host(),
                        address: ip,
                        class: class.to_owned(),
                    });
                }
                addrs.push(SocketAddr::new(ip, target.port));
            }
            addrs
        }
    };
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut last_error = String::from("no address to connect to");
    for addr in addrs {
        match timeout_at(deadline, cfg.connector.connect(addr)).await {
            Err(_) => return Err(RefusalReason::ConnectTimeout { host: host() }),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last_error = format!("{addr}: {e}"),
        }
    }
    Err(RefusalReason::ConnectFailed {
        host: host(),
        message: last_error,
    })
}

async fn handle_connect(
    client: &mut TcpStream,
    shared: &Shared,
    current: &mut Option<Pending>,
    head: RequestHead,
    buf: &mut Vec<u8>,
) {
    let target_raw = head.target;
    let (raw_host, port) = match split_authority(&target_raw, None) {
        Ok((h, p)) => (h.to_owned(), p),
        Err(_) => (target_raw.clone(), 0),
    };
    let p = current.insert(Pending::new(head.method, raw_host, port));
    if target_raw.contains('/') {
        let reason = RefusalReason::BadRequest {
            message: "CONNECT target must be host:port".into(),
        };
        return refuse(client, p, reason).await;
    }
    let target = match shared.config.allow.check_authority(&target_raw, None) {
        Ok(t) => t,
        Err(reason) => return refuse(client, p, reason).await,
    };
    let (mut upstream, address) = match open_upstream(shared, &target).await {
        Ok(x) => x,
        Err(reason) => return refuse(client, p, reason).await,
    };
    p.decision = Some(Decision::Allowed { address });
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Clients may send the TLS ClientHello right behind the CONNECT head.
    if !buf.is_empty() {
        if upstream.write_all(buf).await.is_err() {
            return;
        }
        p.bytes_up.fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.clear();
    }
    let _ = tunnel(client, &mut upstream, shared, p).await;
}

/// Copy both directions until both are closed or nothing moved for `idle_timeout`.
async fn tunnel(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    shared: &Shared,
    p: &Pending,
) -> io::Result<()> {
    let idle = shared.config.idle_timeout;
    let last = AtomicU64::new(0);
    let base = Instant::now();
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    // Two independent directions, so a peer that writes a lot without reading cannot deadlock
    // the other direction; the idle clock is shared so a long one-way download is not "idle".
    tokio::try_join!(
        pipe(&mut cr, &mut uw, &p.bytes_up, &last, base, idle),
        pipe(&mut ur, &mut cw, &p.bytes_down, &last, base, idle),
    )?;
    Ok(())
}

async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    counter: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
    idle: Duration,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut data = vec![0u8; 16 * 1024];
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let now_ms = || u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
    loop {
        let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let n = match timeout(Duration::from_millis(idle_ms - since), r.read(&mut data)).await {
            // The other direction may have been active meanwhile: re-check the shared clock.
            Err(_) => continue,
            Ok(res) => res?,
        };
        if n == 0 {
            // Half-close: pass the EOF on and let the other direction finish.
            let _ = w.shutdown().await;
            return Ok(());
        }
        timeout(idle, w.write_all(&data[..n]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last.store(now_ms(), Ordering::Relaxed);
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Lowercase comma-separated tokens of every `name` header.
fn tokens(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    header(headers, name)
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The single Content-Length of a message: `Ok(None)` if absent, `Err` if malformed or if
/// several disagree (a classic request-smuggling vector).
fn content_length(headers: &[(String, Vec<u8>)]) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for v in header(headers, "content-length") {
        for part in String::from_utf8_lossy(v).split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid Content-Length {part:?}"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| format!("invalid Content-Length {part:?}"))?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length headers".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and proxy credentials, never forwarded. `host` is
/// replaced by the checked authority; `expect` is answered by the proxy itself.
const REQUEST_DROP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
];
const RESPONSE_DROP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "upgrade",
    "trailer",
];

/// Handle one absolute-form request. Returns whether the client connection may carry another
/// request (each one is parsed and checked again from scratch).
async fn handle_plain(
    client: &mut TcpStream,
    shared: &Shared,
    current: &mut Option<Pending>,
    head: RequestHead,
    buf: &mut Vec<u8>,
) -> bool {
    let abs = parse_absolute(&head.target);
    let (raw_host, port) = match &abs {
        Ok(a) => match split_authority(a.authority, Some(80)) {
            Ok((h, p)) => (h.to_owned(), p),
            Err(_) => (a.authority.to_owned(), 0),
        },
        Err(_) => (head.target.clone(), 0),
    };
    let p = current.insert(Pending::new(head.method.clone(), raw_host, port));
    let abs = match abs {
        Ok(a) => a,
        Err(reason) => {
            refuse(client, p, reason).await;
            return false;
        }
    };
    let target = match shared.config.allow.check_authority(abs.authority, Some(80)) {
        Ok(t) => t,
        Err(reason) => {
            refuse(client, p, reason).await;
            return false;
        }
    };
    if header(&head.headers, "transfer-encoding").next().is_some() {
        refuse(client, p, RefusalReason::UnsupportedTransferEncoding).await;
        return false;
    }
    let body_len = match content_length(&head.headers) {
        Ok(n) => n.unwrap_or(0),
        Err(message) => {
            refuse(client, p, RefusalReason::BadRequest { message }).await;
            return false;
        }
    };
    let (mut upstream, address) = match open_upstream(shared, &target).await {
        Ok(x) => x,
        Err(reason) => {
            refuse(client, p, reason).await;
            return false;
        }
    };
    p.decision = Some(Decision::Allowed { address });

    let conn_tokens = {
        let mut t = tokens(&head.headers, "connection");
        t.extend(tokens(&head.headers, "proxy-connection"));
        t
    };
    let client_wants_keep_alive = head.version == 1 && !conn_tokens.iter().any(|t| t == "close");

    // Rewrite: origin-form target, Host = the checked authority (so a `Host: evil.com` header
    // cannot select another virtual host on a shared front end), one request per upstream
    // connection.
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(abs.origin_form.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.host.as_bytes());
    if target.port != 80 {
        out.extend_from_slice(format!(":{}", target.port).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if REQUEST_DROP.contains(&lower.as_str()) || conn_tokens.contains(&lower) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");

    let idle = shared.config.idle_timeout;
    let expects_continue = tokens(&head.headers, "expect")
        .iter()
        .any(|t| t == "100-continue");
    let sent = async {
        write_idle(&mut upstream, &out, idle).await?;
        p.bytes_up.fetch_add(out.len() as u64, Ordering::Relaxed);
        if expects_continue && body_len > 0 {
            write_idle(client, b"HTTP/1.1 100 Continue\r\n\r\n", idle).await?;
        }
        // Body: first what already arrived with the head, then exactly the rest. Anything past
        // Content-Length stays in `buf` as the start of the next request.
        let from_buf = usize::try_from(body_len)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if from_buf > 0 {
            write_idle(&mut upstream, &buf[..from_buf], idle).await?;
            p.bytes_up.fetch_add(from_buf as u64, Ordering::Relaxed);
            buf.drain(..from_buf);
        }
        copy_exact(
            client,
            &mut upstream,
            body_len - from_buf as u64,
            idle,
            &p.bytes_up,
        )
        .await
    }
    .await;
    if sent.is_err() {
        return false;
    }

    match forward_response(
        &mut upstream,
        client,
        &head.method,
        idle,
        &p.bytes_down,
        client_wants_keep_alive,
    )
    .await
    {
        Ok(keep) => keep,
        Err(ResponseError::BeforeHead) => {
            // The decision stays Allowed (the upstream was reached); the client learns why.
            send_error(client, 502, "upstream sent no valid HTTP response").await;
            false
        }
        Err(ResponseError::AfterHead) => false,
    }
}

async fn write_idle<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    idle: Duration,
) -> io::Result<()> {
    timeout(idle, w.write_all(data))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn read_idle<R: AsyncRead + Unpin>(
    r: &mut R,
    data: &mut [u8],
    idle: Duration,
) -> io::Result<usize> {
    timeout(idle, r.read(data))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Copy exactly `n` bytes from `r` to `w`.
async fn copy_exact<R, W>(
    r: &mut R,
    w: &mut W,
    mut n: u64,
    idle: Duration,
    counter: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut data = vec![0u8; 16 * 1024];
    while n > 0 {
        let want = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
        let got = read_idle(r, &mut data[..want], idle).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        write_idle(w, &data[..got], idle).await?;
        counter.fetch_add(got as u64, Ordering::Relaxed);
        n -= got as u64;
    }
    Ok(())
}

/// Copy everything from `r` to `w` until EOF.
async fn copy_to_eof<R, W>(
    r: &mut R,
    w: &mut W,
    idle: Duration,
    counter: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut data = vec![0u8; 16 * 1024];
    loop {
        let got = read_idle(r, &mut data, idle).await?;
        if got == 0 {
            return Ok(());
        }
        write_idle(w, &data[..got], idle).await?;
        counter.fetch_add(got as u64, Ordering::Relaxed);
    }
}

enum ResponseError {
    /// Nothing was sent to the client yet: it can still get an error response.
    BeforeHead,
    /// The client already has part of the response: just close.
    AfterHead,
}

/// Forward the upstream response (any 1xx interim responses, then the final one). Returns whether
/// the client connection stays usable: only when the response length is known from its headers,
/// since the upstream connection is `Connection: close`.
async fn forward_response(
    upstream: &mut TcpStream,
    client: &mut TcpStream,
    method: &str,
    idle: Duration,
    counter: &AtomicU64,
    client_wants_keep_alive: bool,
) -> Result<bool, ResponseError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read one response head.
        let (status, reason, headers, len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, Vec<u8>)> = resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), h.value.to_vec()))
                        .collect();
                    break (
                        resp.code.unwrap_or(502),
                        resp.reason.unwrap_or("").to_owned(),
                        headers,
                        len,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ResponseError::BeforeHead),
            }
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err(ResponseError::BeforeHead);
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_RESPONSE_HEAD - buf.len());
            match read_idle(upstream, &mut chunk[..want], idle).await {
                Ok(0) | Err(_) => return Err(ResponseError::BeforeHead),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..len);
        if status == 101 {
            // Upgrade was stripped from the request, so a 101 is a protocol violation.
            return Err(ResponseError::BeforeHead);
        }
        let interim = (100..200).contains(&status);
        let no_body = interim || status == 204 || status == 304 || method == "HEAD";
        let cl = if no_body {
            Some(0)
        } else if header(&headers, "transfer-encoding").next().is_some() {
            None
        } else {
            match content_length(&headers) {
                Ok(n) => n,
                Err(_) => return Err(ResponseError::BeforeHead),
            }
        };
        let keep = client_wants_keep_alive && cl.is_some();
        let drop_named = tokens(&headers, "connection");
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if RESPONSE_DROP.contains(&lower.as_str()) || drop_named.contains(&lower) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !interim {
            out.extend_from_slice(if keep {
                b"Connection: keep-alive\r\n".as_slice()
            } else {
                b"Connection: close\r\n".as_slice()
            });
        }
        out.extend_from_slice(b"\r\n");
        write_idle(client, &out, idle)
            .await
            .map_err(|_| ResponseError::AfterHead)?;
        counter.fetch_add(out.len() as u64, Ordering::Relaxed);
        if interim {
            continue;
        }
        let after = |_| ResponseError::AfterHead;
        match cl {
            Some(n) => {
                // Body bytes already read with the head, then exactly the rest; anything the
                // upstream sends beyond its own Content-Length is dropped, not passed on as a
                // smuggled "next response".
                let from_buf = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                write_idle(client, &buf[..from_buf], idle)
                    .await
                    .map_err(after)?;
                counter.fetch_add(from_buf as u64, Ordering::Relaxed);
                copy_exact(upstream, client, n - from_buf as u64, idle, counter)
                    .await
                    .map_err(after)?;
            }
            None => {
                write_idle(client, &buf, idle).await.map_err(after)?;
                counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
                copy_to_eof(upstream, client, idle, counter)
                    .await
                    .map_err(after)?;
            }
        }
        return Ok(keep);
    }
}
