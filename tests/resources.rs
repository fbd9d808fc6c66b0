//! Contract 10.7 on the built binary: what an unauthenticated client can
//! take is bounded. Slow senders, silent connections, clients that never
//! read their answers and thousands of made-up methods and paths, all at
//! once; signed webhooks keep getting 202 throughout, memory and
//! `/metrics` stay bounded, and the gateway never runs out of descriptors.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::signature::SchemeKind;

const SECRET: &str = "gh-secret";

fn delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    (signed(SchemeKind::Github, SECRET, &body, 0, id), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_starve_signed_senders_or_grow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(
        dir.path(),
        "max_in_flight = 32\nmax_connections = 4000\nrequest_timeout = \"3s\"",
        &format!(
            "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{SECRET}\"]\nsignature = {{ scheme = \"github\" }}"
        ),
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.addr;
    let mut client = Client::new(addr);
    for i in 0..50 {
        let (h, b) = delivery(&format!("warm-{i}"));
        assert_eq!(client.send("POST", "/webhooks/gh", &h, b).await.status, 202);
    }
    let baseline = gw.rss_kib();

    // Slow senders: a signed head and one byte of the body, then nothing.
    let mut held = Vec::new();
    for i in 0..400 {
        let (h, b) = delivery(&format!("slow-{i}"));
        held.push(hold_in_flight(addr, "/webhooks/gh", &h, &b).await);
    }
    // Silent connections.
    for _ in 0..400 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Clients that ask and never read: many pipelined requests each.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let many = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
        let _ = s.write_all(many.as_bytes()).await;
        held.push(s);
    }
    // Made-up methods and paths, each new.
    let junk = tokio::spawn(async move {
        for i in 0..3000 {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                continue;
            };
            let req = format!(
                "M{i:05}ETHOD /x/{i}/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "p".repeat(i % 200)
            );
            let _ = s.write_all(req.as_bytes()).await;
            let _ = read_response(&mut s).await;
        }
    });
    // Signed senders, meanwhile: every one accepted.
    let mut peak = 0;
    for i in 0..300 {
        let (h, b) = delivery(&format!("signed-{i}"));
        let r = client.send("POST", "/webhooks/gh", &h, b).await;
        assert_eq!(r.status, 202, "signed delivery {i}: {:?}", r.body);
        if i % 50 == 0 {
            peak = peak.max(gw.rss_kib());
        }
    }
    junk.await.unwrap();
    peak = peak.max(gw.rss_kib());
    assert!(
        peak < baseline + 96 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
    let metrics = get(addr, "/metrics").await;
    assert!(
        metrics.body.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.body.len()
    );
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(!text.contains("M00001ETHOD") && !text.contains("/x/1/"));
    // The held connections are let go by their timeouts, not kept forever.
    drop(held);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(gw.log_lines(|v| v["message"] == "accept failed").is_empty());
    assert_eq!(get(addr, "/healthz").await.status, 200);
}

/// A connection that stays silent is closed after `request_timeout`, and
/// so is one that never reads the answers it asked for (the write
/// deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_never_reading_connections_are_closed_by_their_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), "request_timeout = \"1s\"", "");
    let gw = Gateway::start(&cfg);
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), read_response(&mut silent)).await;
    assert!(closed.is_ok(), "a silent connection is closed");

    // Many pipelined requests, and no read: the answers back up in the
    // socket buffers, the server's write stalls, and after the deadline
    // the server gives the connection up instead of holding it (and its
    // answers) forever.
    const ASKED: usize = 20_000;
    let reader = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = reader.into_split();
    let writing = tokio::spawn(async move {
        let many = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(ASKED);
        let _ = wr.write_all(many.as_bytes()).await;
        wr
    });
    // Long enough for the 1 s write deadline to pass with nothing read.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut all = Vec::new();
        let _ = rd.read_to_end(&mut all).await;
        String::from_utf8_lossy(&all)
            .matches("HTTP/1.1 200")
            .count()
    })
    .await
    .expect("the connection ends");
    assert!(
        answered < ASKED,
        "all {ASKED} answered: the stalled writer was never given up"
    );
    writing.abort();
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
}
