#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests with real sockets on 127.0.0.1 only. No test ever dials anything but
//! loopback: resolvers that return other addresses are paired with a connector that redirects or
//! refuses instead of dialling.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secureclaw_egress::{
    Allowlist, Connect, Decision, EgressConfig, EgressEvent, EgressProxy, ProxyHandle,
    RefusalReason, Resolve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// A fake origin server on 127.0.0.1 standing in for `a.test`.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    /// Bytes a holding upstream has read from its peers so far.
    received: Arc<AtomicUsize>,
}

impl Upstream {
    /// `hold`: accept and keep the connection open until the peer closes, answering nothing.
    async fn start(hold: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let (c, r, got) = (connections.clone(), requests.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                let got = got.clone();
                tokio::spawn(async move {
                    if hold {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = s.read(&mut buf).await {
                            got.fetch_add(n, Ordering::SeqCst);
                        }
                        return;
                    }
                    let Some(req) = read_http_message(&mut s).await else {
                        return;
                    };
                    let path = req.split(' ').nth(1).unwrap_or("").to_owned();
                    r.lock().unwrap().push(req);
                    let body = format!("hello from upstream: {path}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Upstream: yes\r\nConnection: keep-alive\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            requests,
            received,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits (up to `T`) until a holding upstream has read at least `n` bytes.
    async fn wait_received(&self, n: usize) {
        let waited = timeout(T, async {
            while self.received.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "upstream got {} of {n} bytes",
            self.received.load(Ordering::SeqCst)
        );
    }
}

/// Read one HTTP message (head + Content-Length body) as text.
async fn read_http_message(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(T, s.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = timeout(T, s.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf[..head_end + len]).to_string())
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn read_to_end(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    timeout(T, s.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8_lossy(&out).to_string()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A resolver answering from a script: call i gets `answers[min(i, len-1)]`.
struct ScriptedResolver {
    answers: Vec<Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl ScriptedResolver {
    fn new(answers: &[&[&str]]) -> Arc<Self> {
        Arc::new(ScriptedResolver {
            answers: answers
                .iter()
                .map(|a| a.iter().map(|s| s.parse().unwrap()).collect())
                .collect(),
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Resolve for ScriptedResolver {
    async fn resolve(&self, _host: &str) -> io::Result<Vec<IpAddr>> {
        let i = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.answers[i.min(self.answers.len() - 1)].clone())
    }
}

/// Records every address the proxy asks to dial. Loopback addresses are dialled for real;
/// anything else is redirected to `redirect` (if set) or refused, so no test leaves 127.0.0.0/8.
struct RecordingConnector {
    dialled: Mutex<Vec<SocketAddr>>,
    redirect: Option<SocketAddr>,
}

impl RecordingConnector {
    fn new(redirect: Option<SocketAddr>) -> Arc<Self> {
        Arc::new(RecordingConnector {
            dialled: Mutex::new(Vec::new()),
            redirect,
        })
    }
    fn dialled(&self) -> Vec<SocketAddr> {
        self.dialled.lock().unwrap().clone()
    }
}

#[async_trait]
impl Connect for RecordingConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.dialled.lock().unwrap().push(addr);
        match (addr.ip().is_loopback(), self.redirect) {
            (true, _) => TcpStream::connect(addr).await,
            (false, Some(r)) => TcpStream::connect(r).await,
            (false, None) => Err(io::Error::other(
                "test connector: not dialling off loopback",
            )),
        }
    }
}

fn config(allow: &[String], pins: &str) -> EgressConfig {
    let mut c = EgressConfig::new(Allowlist::parse(allow).unwrap());
    c.pinned = EgressConfig::parse_pins(pins).unwrap();
    // Never use the real DNS in tests.
    c.resolver = ScriptedResolver::new(&[&[]]);
    c.connector = RecordingConnector::new(None);
    c
}

async fn start(c: EgressConfig) -> (ProxyHandle, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = EgressProxy::spawn(listener, c);
    let addr = h.local_addr().unwrap();
    (h, addr)
}

/// Send `req` on a fresh connection to the proxy and read until the proxy closes.
async fn exchange(proxy: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(req).await.unwrap();
    read_to_end(&mut s).await
}

fn refused_kind(e: &EgressEvent) -> Option<&RefusalReason> {
    match &e.decision {
        Decision::Refused { reason } => Some(reason),
        Decision::Allowed { .. } => None,
    }
}

fn pins_for(up: &Upstream) -> String {
    format!("a.test={}", up.addr)
}

#[tokio::test]
async fn connect_tunnel_reaches_pinned_upstream() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;

    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 39];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200 Connection established\r\n\r\n");
    let inner = b"GET /through-tunnel HTTP/1.1\r\nHost: a.test\r\n\r\n";
    s.write_all(inner).await.unwrap();
    let resp = read_to_end(&mut s).await;
    assert!(
        resp.ends_with("hello from upstream: /through-tunnel"),
        "{resp}"
    );
    drop(s);

    let events = h.shutdown().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.method, "CONNECT");
    assert_eq!(e.host, "a.test");
    assert_eq!(e.port, 443);
    assert_eq!(e.decision, Decision::Allowed { address: up.addr });
    assert_eq!(e.bytes_up, inner.len() as u64);
    assert_eq!(e.bytes_down, resp.len() as u64);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn connect_forwards_bytes_sent_with_the_head() {
    // Clients may pipeline the first tunnel bytes (a TLS ClientHello) behind the CONNECT head.
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let resp = exchange(
        proxy,
        b"CONNECT a.test:443 HTTP/1.1\r\n\r\nGET /early HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200 Connection established"),
        "{resp}"
    );
    assert!(resp.ends_with("hello from upstream: /early"), "{resp}");
    h.shutdown().await;
}

#[tokio::test]
async fn plain_http_is_rewritten_to_origin_form() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let resp = exchange(
        proxy,
        b"GET http://A.Test./hello?x=1#frag HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: close\r\nConnection: X-Drop-Me\r\nX-Drop-Me: 1\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("X-Upstream: yes"), "{resp}");
    assert!(resp.contains("Connection: close\r\n"), "{resp}");
    assert!(!resp.contains("keep-alive"), "{resp}");
    assert!(resp.ends_with("hello from upstream: /hello?x=1"), "{resp}");

    let seen = up.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert!(
        req.starts_with("GET /hello?x=1 HTTP/1.1\r\nHost: a.test\r\n"),
        "{req}"
    );
    assert!(req.contains("Connection: close\r\n"), "{req}");
    assert!(req.contains("Accept: */*\r\n"), "{req}");
    for leaked in ["evil.test", "proxy-", "x-drop-me", "c2vjcmv0"] {
        assert!(
            !req.to_ascii_lowercase().contains(leaked),
            "{leaked} leaked upstream: {req}"
        );
    }
    let events = h.shutdown().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].method, "GET");
    assert_eq!(events[0].host, "A.Test.");
    assert_eq!(events[0].port, 80);
    assert_eq!(events[0].decision, Decision::Allowed { address: up.addr });
    assert_eq!(events[0].bytes_down, resp.len() as u64);
    assert!(events[0].bytes_up > 0);
}

#[tokio::test]
async fn post_body_with_expect_continue_is_forwarded() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST http://a.test/upload HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut cont = [0u8; 25];
    timeout(T, s.read_exact(&mut cont)).await.unwrap().unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello world").await.unwrap();
    let resp = read_to_end(&mut s).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.requests.lock().unwrap().clone();
    assert!(seen[0].ends_with("\r\n\r\nhello world"), "{seen:?}");
    assert!(!seen[0].to_ascii_lowercase().contains("expect"), "{seen:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn refused_targets_never_reach_the_upstream() {
    let up = Upstream::start(false).await;
    let port = up.addr.port();
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    // (request line target, expected status, expected reason kind)
    let connect_cases: Vec<(String, u16, &str)> = vec![
        ("b.test:443".into(), 403, "not_allowed"),
        (format!("127.0.0.1:{port}"), 403, "ip_literal"),
        ("127.0.0.1:443".into(), 403, "ip_literal"),
        ("2130706433:443".into(), 403, "ip_literal"),
        ("0x7f.1:443".into(), 403, "ip_literal"),
        ("0x7f000001:443".into(), 403, "ip_literal"),
        ("0177.0.0.1:443".into(), 403, "ip_literal"),
        ("127.1:443".into(), 403, "ip_literal"),
        (format!("[::1]:{port}"), 403, "ip_literal"),
        ("[::ffff:127.0.0.1]:443".into(), 403, "ip_literal"),
        ("a.test.evil.test:443".into(), 403, "not_allowed"),
        ("evil.test.a.test:443".into(), 403, "not_allowed"),
        ("xn--80a.test:443".into(), 403, "not_allowed"), // Cyrillic "а.test", punycode
        ("\u{430}.test:443".into(), 403, "not_allowed"), // the same, raw UTF-8
        ("a.test:22".into(), 403, "port_not_allowed"),
        (format!("a.test:{port}"), 403, "port_not_allowed"),
        ("a.test@evil.test:443".into(), 403, "userinfo"),
        ("a.test%2eevil.test:443".into(), 400, "percent_encoding"),
        ("a.test".into(), 400, "missing_port"),
        ("a.test:0".into(), 400, "invalid_port"),
        ("a..test:443".into(), 400, "empty_label"),
        ("a_b.test:443".into(), 400, "invalid_character"),
        ("http://a.test:443".into(), 400, "bad_request"),
    ];
    for (target, status, _) in &connect_cases {
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: a.test:443\r\n\r\n");
        let resp = exchange(proxy, req.as_bytes()).await;
        assert_eq!(status_of(&resp), *status, "CONNECT {target}: {resp}");
        assert!(resp.contains("X-Secureclaw-Egress: refused"), "{resp}");
    }
    let plain_cases: Vec<(String, u16, &str)> = vec![
        ("http://b.test/".into(), 403, "not_allowed"),
        ("http://a.test@evil.test/".into(), 403, "userinfo"),
        ("http://evil.test#@a.test/".into(), 403, "not_allowed"),
        (format!("http://127.0.0.1:{port}/"), 403, "ip_literal"),
        ("http://2130706433/".into(), 403, "ip_literal"),
        ("http://[::1]/".into(), 403, "ip_literal"),
        ("http://a.test:8080/".into(), 403, "port_not_allowed"),
        ("https://a.test/".into(), 400, "unsupported_scheme"),
        ("ftp://a.test/".into(), 400, "unsupported_scheme"),
        ("/relative".into(), 400, "not_a_proxy_request"),
    ];
    for (target, status, _) in &plain_cases {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let resp = exchange(proxy, req.as_bytes()).await;
        assert_eq!(status_of(&resp), *status, "GET {target}: {resp}");
    }
    let events = h.shutdown().await;
    assert_eq!(
        up.connections(),
        0,
        "a refused request reached the upstream"
    );
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let v = serde_json::to_value(refused_kind(e).expect("refused")).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<&str> = connect_cases
        .iter()
        .chain(plain_cases.iter())
        .map(|c| c.2)
        .collect();
    // Events are logged in completion order; each exchange completed before the next started.
    assert_eq!(kinds, expected);
}

#[tokio::test]
async fn private_answers_for_an_allowed_name_are_refused_before_connecting() {
    let up = Upstream::start(false).await;
    let port = up.addr.port();
    let answers: [&[&str]; 7] = [
        &["10.0.0.1"],
        &["169.254.169.254"],
        &["::ffff:127.0.0.1"],
        &["127.0.0.1"],
        &["fd00:ec2::254"],
        &["100.64.1.1"],
        &["93.184.216.34", "127.0.0.1"], // one bad answer taints the name
    ];
    for answer in answers {
        let mut c = config(&[format!("c.test:{port}")], "");
        c.resolver = ScriptedResolver::new(&[answer]);
        let connector = RecordingConnector::new(None);
        c.connector = connector.clone();
        let (h, proxy) = start(c).await;
        let resp = exchange(
            proxy,
            format!("CONNECT c.test:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 403, "{answer:?}: {resp}");
        let events = h.shutdown().await;
        assert!(
            matches!(
                refused_kind(&events[0]),
                Some(RefusalReason::ForbiddenAddress { .. })
            ),
            "{events:?}"
        );
        assert!(connector.dialled().is_empty(), "{answer:?} was dialled");
    }
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn rebinding_resolver_cannot_redirect_the_connection() {
    let up = Upstream::start(false).await;
    // First answer public (passes), every later answer loopback. The proxy must dial the
    // address it checked and must not ask again.
    let resolver = ScriptedResolver::new(&[&["93.184.216.34"], &["127.0.0.1"]]);
    let connector = RecordingConnector::new(Some(up.addr));
    let mut c = config(&["c.test".into()], "");
    c.resolver = resolver.clone();
    c.connector = connector.clone();
    let (h, proxy) = start(c).await;

    let resp = exchange(
        proxy,
        b"CONNECT c.test:443 HTTP/1.1\r\n\r\nGET /rebind HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        connector.dialled(),
        vec!["93.184.216.34:443".parse::<SocketAddr>().unwrap()]
    );
    // The next attempt sees the rebound answer and is refused without dialling.
    let resp = exchange(proxy, b"CONNECT c.test:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(connector.dialled().len(), 1);
    let events = h.shutdown().await;
    assert_eq!(
        events[0].decision,
        Decision::Allowed {
            address: "93.184.216.34:443".parse().unwrap()
        }
    );
    assert!(refused_kind(&events[1]).is_some());
}

#[tokio::test]
async fn keep_alive_checks_every_request() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    for path in ["/one", "/two"] {
        let req = format!("GET http://a.test{path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = read_http_message(&mut s).await.unwrap();
        assert!(resp.contains("Connection: keep-alive\r\n"), "{resp}");
        assert!(
            resp.ends_with(&format!("hello from upstream: {path}")),
            "{resp}"
        );
    }
    // Same client connection, different host: checked on its own and refused.
    s.write_all(b"GET http://b.test/three HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_to_end(&mut s).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(up.connections(), 2);

    // Pipelined in one write: the second request must not ride along to a.test's upstream.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET http://a.test/p1 HTTP/1.1\r\n\r\nGET http://b.test/p2 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let resp = read_to_end(&mut s).await;
    assert!(resp.contains("hello from upstream: /p1"), "{resp}");
    assert!(resp.contains("HTTP/1.1 403 Forbidden"), "{resp}");
    assert_eq!(up.connections(), 3);
    let seen = up.requests.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|r| !r.contains("b.test") && !r.contains("/p2")),
        "{seen:?}"
    );

    let events = h.shutdown().await;
    let summary: Vec<(String, bool)> = events
        .iter()
        .map(|e| (e.host.clone(), refused_kind(e).is_none()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a.test".into(), true),
            ("a.test".into(), true),
            ("b.test".into(), false),
            ("a.test".into(), true),
            ("b.test".into(), false),
        ]
    );
}

#[tokio::test]
async fn oversized_and_malformed_heads_are_refused() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let big = format!(
        "GET http://a.test/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "x".repeat(20 * 1024)
    );
    let resp = exchange(proxy, big.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = exchange(
        proxy,
        format!("GET http://a.test/ HTTP/1.1\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    let resp = exchange(
        proxy,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    let resp = exchange(
        proxy,
        b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 501, "{resp}");
    let resp = exchange(
        proxy,
        b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    let events = h.shutdown().await;
    assert_eq!(events.len(), 5);
    assert_eq!(
        refused_kind(&events[0]),
        Some(&RefusalReason::HeadersTooLarge)
    );
    assert_eq!(
        refused_kind(&events[1]),
        Some(&RefusalReason::HeadersTooLarge)
    );
    assert!(matches!(
        refused_kind(&events[2]),
        Some(RefusalReason::BadRequest { .. })
    ));
    assert_eq!(
        refused_kind(&events[3]),
        Some(&RefusalReason::UnsupportedTransferEncoding)
    );
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn slow_head_times_out() {
    let mut c = config(&["a.test".into()], "");
    c.header_timeout = Duration::from_millis(200);
    let (h, proxy) = start(c).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET http://a.test/ HTTP/1.1\r\n")
        .await
        .unwrap();
    let resp = read_to_end(&mut s).await;
    assert_eq!(status_of(&resp), 408, "{resp}");
    let events = h.shutdown().await;
    assert_eq!(
        refused_kind(&events[0]),
        Some(&RefusalReason::HeaderTimeout)
    );
}

#[tokio::test]
async fn concurrency_limit_answers_503() {
    let up = Upstream::start(true).await;
    let mut c = config(&["a.test".into()], &pins_for(&up));
    c.max_concurrent = 1;
    let (h, proxy) = start(c).await;
    let mut first = TcpStream::connect(proxy).await.unwrap();
    first
        .write_all(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 39];
    timeout(T, first.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = exchange(proxy, b"CONNECT a.test:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    drop(first);
    let events = h.shutdown().await;
    assert!(
        events
            .iter()
            .any(|e| refused_kind(e) == Some(&RefusalReason::TooManyConnections))
    );
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_and_logs_them() {
    let up = Upstream::start(true).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 39];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    s.write_all(b"12345").await.unwrap();
    // The bytes crossed the tunnel before the plug is pulled.
    up.wait_received(5).await;
    // An idle keep-alive connection must not hold shutdown up either.
    let _idle = TcpStream::connect(proxy).await.unwrap();
    let events = timeout(T, h.shutdown()).await.expect("shutdown hangs");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].decision, Decision::Allowed { address: up.addr });
    assert_eq!(events[0].bytes_up, 5);
    let mut rest = Vec::new();
    let n = timeout(T, s.read_to_end(&mut rest)).await.unwrap();
    assert!(
        n.is_err() || rest.is_empty(),
        "tunnel still open after shutdown"
    );
    // The listener is gone too.
    assert!(TcpStream::connect(proxy).await.is_err());
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let up = Upstream::start(true).await;
    let mut c = config(&["a.test".into()], &pins_for(&up));
    c.idle_timeout = Duration::from_millis(300);
    let (h, proxy) = start(c).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 39];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("idle tunnel not closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let events = h.shutdown().await;
    assert_eq!(events.len(), 1);
    assert!(events[0].duration_ms >= 250, "{events:?}");
}

#[tokio::test]
async fn event_log_serialises_with_reasons_and_messages() {
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let resp = exchange(proxy, b"CONNECT evil.test:443 HTTP/1.1\r\n\r\n").await;
    // The client is told why, in words an agent can act on.
    assert!(
        resp.ends_with(
            "secureclaw egress proxy: evil.test is not in this step's network allowlist\n"
        ),
        "{resp}"
    );
    let _ = exchange(
        proxy,
        b"GET http://a.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.events().len(), 2);
    let events = h.shutdown().await;
    let json = serde_json::to_value(&events).unwrap();
    assert_eq!(json[0]["method"], "CONNECT");
    assert_eq!(json[0]["host"], "evil.test");
    assert_eq!(json[0]["port"], 443);
    assert_eq!(json[0]["decision"]["verdict"], "refused");
    assert_eq!(json[0]["decision"]["reason"]["kind"], "not_allowed");
    assert_eq!(json[0]["decision"]["reason"]["host"], "evil.test");
    assert_eq!(json[1]["method"], "GET");
    assert_eq!(json[1]["decision"]["verdict"], "allowed");
    assert_eq!(json[1]["decision"]["address"], up.addr.to_string());
    assert!(json[1]["bytes_down"].as_u64().unwrap() > 0);
    assert!(json[1]["at_ms"].as_u64().unwrap() >= json[0]["at_ms"].as_u64().unwrap());
    let back: Vec<EgressEvent> = serde_json::from_value(json).unwrap();
    assert_eq!(back, events);
}

#[tokio::test]
async fn event_log_is_bounded() {
    let mut c = config(&["a.test".into()], "");
    c.max_events = 3;
    let (h, proxy) = start(c).await;
    for _ in 0..5 {
        let _ = exchange(proxy, b"CONNECT b.test:443 HTTP/1.1\r\n\r\n").await;
    }
    assert_eq!(h.dropped_events(), 2);
    assert_eq!(h.shutdown().await.len(), 3);
}

/// An upstream that reads one request and answers with fixed bytes, then closes.
async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_http_message(&mut s).await;
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn response_framing_is_enforced() {
    // Chunked: passed through verbatim, and the client connection is closed after it because
    // the proxy does not re-frame chunked bodies.
    let chunked = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    // More bytes than Content-Length: the extra ones must not reach the client, where they
    // would be read as a second ("smuggled") response.
    let overlong = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    )
    .await;
    let garbage = raw_upstream(b"SSH-2.0-OpenSSH_9.0\r\n").await;
    let pins = format!("a.test={chunked},b.test={overlong},c.test={garbage}");
    let (h, proxy) = start(config(
        &["a.test".into(), "b.test".into(), "c.test".into()],
        &pins,
    ))
    .await;

    let resp = exchange(proxy, b"GET http://a.test/ HTTP/1.1\r\n\r\n").await;
    assert!(resp.contains("Connection: close\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{resp}");

    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET http://b.test/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let first = read_http_message(&mut s).await.unwrap();
    assert!(first.ends_with("\r\n\r\nok"), "{first}");
    // Keep-alive is still offered (the length was known); the next read must not see "evil".
    s.write_all(b"GET http://c.test/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let next = read_to_end(&mut s).await;
    assert!(!next.contains("evil"), "{next}");
    assert_eq!(status_of(&next), 502, "{next}");
    h.shutdown().await;
}

#[tokio::test]
async fn default_system_resolver_refuses_localhost() {
    // The production configuration: real resolver, real connector, no pins. `localhost` comes
    // from /etc/hosts (no network) and resolves to loopback, which must be refused.
    let up = Upstream::start(false).await;
    let port = up.addr.port();
    let allow = Allowlist::parse(&[format!("localhost:{port}")]).unwrap();
    let (h, proxy) = start(EgressConfig::new(allow)).await;
    let resp = exchange(
        proxy,
        format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    let events = h.shutdown().await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(
        matches!(
            refused_kind(&events[0]),
            Some(RefusalReason::ForbiddenAddress { .. })
        ),
        "{events:?}"
    );
    assert_eq!(up.connections(), 0);
}

/// A real client (.ci/run installs curl; a missing curl is a failure, not a skip).
#[tokio::test]
async fn curl_through_the_proxy() {
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok(),
        "curl is required (apt-get install curl)"
    );
    let up = Upstream::start(false).await;
    let (h, proxy) = start(config(&["a.test".into()], &pins_for(&up))).await;
    let proxy_url = format!("http://{proxy}");
    let curl = |args: &[&str], env_proxy: bool| {
        let mut c = tokio::process::Command::new("curl");
        c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        c.env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        if env_proxy {
            // What a step gets. curl reads only the lowercase http_proxy (a CGI safety rule).
            c.env("http_proxy", &proxy_url)
                .env("HTTPS_PROXY", &proxy_url);
        } else {
            c.args(["-x", &proxy_url]);
        }
        c.args(args);
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        }
    };
    let (code, out) = curl(&["http://a.test/plain"], true).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "hello from upstream: /plain\n200");
    // --proxytunnel: CONNECT a.test:443, then plain HTTP inside the tunnel (no TLS needed).
    let (code, out) = curl(&["-p", "http://a.test:443/tunnel"], false).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "hello from upstream: /tunnel\n200");
    let (_, out) = curl(&["http://b.test/"], true).await;
    assert!(out.ends_with("\n403"), "{out}");
    let (code, _) = curl(&["-p", "http://b.test:443/"], false).await;
    assert_ne!(code, Some(0));
    let events = h.shutdown().await;
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(methods, ["GET", "CONNECT", "GET", "CONNECT"]);
    assert_eq!(up.connections(), 2);
}
