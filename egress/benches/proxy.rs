#![allow(clippy::unwrap_used, clippy::expect_used)]
//! CONNECT tunnel setup latency through the egress proxy vs a direct connect, on loopback.
//!
//! Each iteration opens a fresh connection and completes one 1-byte echo round trip, so both
//! variants include a data round trip over the finished path:
//!   direct:    connect(upstream) → write 1 → read 1
//!   via_proxy: connect(proxy) → CONNECT bench.test:443 → read 200 → write 1 → read 1
//! Run: `CARGO_TARGET_DIR=/work/target-egress cargo bench -p secureclaw-egress --bench proxy`

use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use secureclaw_egress::{Allowlist, EgressConfig, EgressProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream) {
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, proxy, handle) = rt.block_on(async {
        let upstream = echo_server().await;
        let mut cfg = EgressConfig::new(Allowlist::parse(&["bench.test"]).unwrap());
        cfg.pinned = EgressConfig::parse_pins(&format!("bench.test={upstream}")).unwrap();
        // Closed connections linger briefly; keep the limit out of the measurement.
        cfg.max_concurrent = 4096;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = EgressProxy::spawn(l, cfg);
        (upstream, h.local_addr().unwrap(), h)
    });

    let mut g = c.benchmark_group("tunnel_setup");
    g.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = TcpStream::connect(upstream).await.unwrap();
                s.set_nodelay(true).unwrap();
                round_trip(&mut s).await;
            })
        })
    });
    g.bench_function("via_proxy", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = TcpStream::connect(proxy).await.unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(b"CONNECT bench.test:443 HTTP/1.1\r\nHost: bench.test:443\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = [0u8; 39];
                s.read_exact(&mut head).await.unwrap();
                assert_eq!(&head[9..12], b"200");
                round_trip(&mut s).await;
            })
        })
    });
    g.finish();
    let events = rt.block_on(handle.shutdown());
    assert!(!events.is_empty());
}

criterion_group!(benches, bench);
criterion_main!(benches);
