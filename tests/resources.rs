//! "Nothing stops the gateway" (GUARANTEES.md) on the built binary: what an
//! unauthenticated client can take is bounded. Slow senders, silent
//! connections, clients that never read their answers and thousands of made-up
//! methods and paths, all at once; signed webhooks keep getting 202 throughout,
//! memory and `/metrics` stay bounded, and the gateway never runs out of
//! descriptors.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::webhook::signature::SchemeKind;

const SECRET: &str = "gh-secret";

/// The gateway's resident memory after fifty accepted deliveries, which
/// bring its pools and caches to their working size.
async fn warmed_up(gw: &Gateway, client: &mut Client) -> u64 {
    for i in 0..50 {
        let (h, b) = delivery(&format!("warm-{i}"));
        assert_eq!(client.send("POST", "/webhooks/gh", &h, b).await.status, 202);
    }
    gw.rss_kib()
}

fn delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    (signed(SchemeKind::Github, SECRET, &body, 0, id), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_starve_signed_senders_or_grow_memory() {
    let (_dir, gw) = gateway_with(
        "max_in_flight = 32\nmax_connections = 4000\nrequest_timeout = \"3s\"",
        &format!(
            "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{SECRET}\"]\nsignature = {{ scheme = \"github\" }}"
        ),
    );
    let addr = gw.addr;
    let mut client = Client::new(addr);
    let baseline = warmed_up(&gw, &mut client).await;

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

/// A connection that stays silent is closed after `header_timeout`, and
/// one that never reads the answers it asked for after `request_timeout`
/// (the write deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_never_reading_connections_are_closed_by_their_deadlines() {
    let (_dir, gw) = gateway_with("request_timeout = \"1s\"\nheader_timeout = \"1s\"", "");
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

/// A client that sends a made-up signature and most of a 1 MiB body, then
/// waits. Its connection, or None when the gateway refused it and closed.
async fn unverified_body(
    addr: std::net::SocketAddr,
    body: std::sync::Arc<Vec<u8>>,
) -> Option<TcpStream> {
    const FULL: usize = 1 << 20;
    let mut s = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: sha256={}\r\nX-GitHub-Delivery: forged\r\nContent-Length: {FULL}\r\n\r\n",
        "0".repeat(64)
    );
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(&body[..FULL - 1]).await.ok()?;
    Some(s)
}

/// Resident memory sampled every 100 ms for `window`; the highest.
async fn peak_rss(gw: &Gateway, window: Duration) -> u64 {
    let mut peak = gw.rss_kib();
    let samples = (window.as_millis() / 100).max(1);
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(gw.rss_kib());
    }
    peak
}

/// "Hostile traffic" (GUARANTEES.md): 400 clients without credentials, each holding most of a
/// 1 MiB body, take at most `server.max_unverified_mb` (256 by default);
/// meanwhile `/healthz` answers within a second and a signed delivery is
/// accepted within three; once they leave, the memory is given back.
async fn unverified_bodies_are_bounded(gw: &Gateway) {
    let addr = gw.addr;
    let mut client = Client::new(addr);
    let baseline = warmed_up(gw, &mut client).await;
    let body = std::sync::Arc::new(vec![b' '; 1 << 20]);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..400 {
        clients.spawn(unverified_body(addr, body.clone()));
    }
    let mut held = Vec::new();
    while let Some(done) = clients.join_next().await {
        held.extend(done.unwrap());
    }
    let peak = peak_rss(gw, Duration::from_secs(2)).await;

    let health = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz")).await;
    assert_eq!(health.expect("/healthz within 1 s").status, 200);
    let (h, b) = delivery("signed-during");
    let signed = tokio::time::timeout(
        Duration::from_secs(3),
        Client::new(addr).send("POST", "/webhooks/gh", &h, b),
    )
    .await
    .expect("a signed delivery answered within 3 s");
    assert_eq!(signed.status, 202, "{:?}", signed.body);
    assert!(
        peak <= baseline + 256 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB with {} clients held",
        held.len()
    );

    drop(held);
    let mut now = gw.rss_kib();
    for _ in 0..120 {
        if now <= baseline + 64 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = gw.rss_kib();
    }
    assert!(
        now <= baseline + 64 * 1024,
        "RSS still {now} KiB 30 s after the clients left (baseline {baseline} KiB, peak {peak} KiB)"
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
}

fn gh_config(dir: &std::path::Path) -> std::path::PathBuf {
    write_gateway_config(
        dir,
        "",
        &format!(
            "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{SECRET}\"]\nsignature = {{ scheme = \"github\" }}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_before_verification_are_bounded_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&gh_config(dir.path()));
    unverified_bodies_are_bounded(&gw).await;
}

/// The same in 512 MiB of address space, where an allocation past the
/// bound would abort the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_512_mib_of_address_space_unverified_bodies_cannot_abort_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_with_address_space(&gh_config(dir.path()), 512 << 20);
    unverified_bodies_are_bounded(&gw).await;
    assert!(gw.wait_for(Duration::ZERO).is_none(), "the gateway ended");
}

/// "Hostile traffic" (GUARANTEES.md): silent connections holding every public slot leave
/// `/healthz`, `/readyz` and `/metrics` answered at once on
/// `server.ops_listen`, which serves nothing else; each silent connection
/// is closed after `server.header_timeout`, not the much longer
/// `request_timeout`, and the public listener answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_cap_leave_probes_answered_on_the_ops_listener() {
    let (_dir, gw) = gateway_with(
        "max_connections = 20\nheader_timeout = \"2s\"\nrequest_timeout = \"60s\"\nops_listen = \"127.0.0.1:0\"",
        "",
    );
    let ops: std::net::SocketAddr =
        gw.log_lines(|v| v["message"] == "waybill serving")[0]["ops_listen"]
            .as_str()
            .expect("the ops listener is announced")
            .parse()
            .unwrap();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = tokio::time::timeout(Duration::from_secs(1), get(ops, path))
            .await
            .unwrap_or_else(|_| panic!("{path} on the ops listener within 1 s"));
        assert_eq!(r.status, 200, "{path}");
    }
    let r = get(ops, "/openapi.json").await;
    assert_eq!(
        r.status, 404,
        "only the operational routes on the ops listener"
    );
    assert_eq!(r.code(), "NOT_FOUND");

    // Each silent connection is closed by the server once its head is
    // late: the read sees the end, well before `request_timeout`.
    for s in &mut silent {
        let _ = tokio::time::timeout(Duration::from_secs(10), read_response(s))
            .await
            .expect("closed after header_timeout");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_secs(5), get(gw.addr, "/healthz"))
        .await
        .expect("the public listener answers again");
    assert_eq!(r.status, 200);
}

/// "Hostile traffic" (GUARANTEES.md): guessing the admin token is slowed per client address.
/// Ten wrong tries a minute (console sign-ins and bearer tokens alike),
/// then 429 `RATE_LIMITED` with `Retry-After` for every try, the right
/// token included; the burst is logged at WARN with the address and never
/// what was sent; once the wait is over the right token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_is_slowed_per_client_and_logged() {
    const TOKEN: &str = "the-real-admin-token-of-this-gateway";
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), "", &format!("[admin]\ntoken = \"{TOKEN}\""));
    let gw = Gateway::start(&cfg);
    let mut client = Client::new(gw.addr);
    let bearer = |t: &str| vec![("Authorization".to_string(), format!("Bearer {t}"))];
    let form = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    for i in 0..5 {
        let r = client
            .send("POST", "/admin/ui", &form, format!("token=guess-form-{i}"))
            .await;
        assert_eq!(r.status, 401, "sign-in {i}");
    }
    let mut first_refused = None;
    let mut retry_after = 0;
    for i in 0..2000 {
        let r = client
            .send(
                "GET",
                "/admin/events",
                &bearer(&format!("guess-bearer-{i}")),
                Bytes::new(),
            )
            .await;
        match r.status.as_u16() {
            401 => assert!(first_refused.is_none(), "a 401 after a 429, at {i}"),
            429 => {
                assert_eq!(r.code(), "RATE_LIMITED");
                retry_after = r.header("retry-after").unwrap().parse::<u64>().unwrap();
                first_refused.get_or_insert(i);
            }
            other => panic!("{other} at {i}"),
        }
    }
    assert_eq!(first_refused, Some(5), "ten failures, then 429");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The right token is refused too while the client waits: a guesser
    // cannot tell a right guess from a wrong one.
    let r = client
        .send("GET", "/admin/events", &bearer(TOKEN), Bytes::new())
        .await;
    assert_eq!(r.status, 429);

    let warned = gw.await_log(1, |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .unwrap_or("")
                .contains("admin authentication")
    });
    assert!(!warned.is_empty(), "no WARN line for the burst");
    assert_eq!(warned[0]["client_addr"], "127.0.0.1");
    let all = gw.log.lock().unwrap().join("\n");
    assert!(!all.contains("guess-"), "a guessed token reached the log");
    assert!(!all.contains(TOKEN), "the token reached the log");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = client
        .send("GET", "/admin/events", &bearer(TOKEN), Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

crate::on_both_stores!(
    the_running_gateway_forgets_expired_events_by_itself,
    on_postgres_the_running_gateway_forgets_expired_events_by_itself,
    forgets_expired_events
);

/// Disk stays bounded only if retention runs by itself: the served
/// gateway forgets an event once its retention has passed, and the same
/// id is then new again.
async fn forgets_expired_events(on_postgres: bool) {
    let Some((_pg, url)) = support::pg::store_env(on_postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::write(
        dir.path(),
        "",
        config::store(on_postgres),
        &format!(
            "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{SECRET}\"]\nsignature = {{ scheme = \"github\" }}\ndedupe_retention = \"1s\""
        ),
    );
    let gw = Gateway::start_with_env(&cfg, &[("WAYBILL_DATABASE_URL", url.as_str())]);
    let mut client = Client::new(gw.addr);
    let (h, b) = delivery("brief-1");
    assert_eq!(
        client
            .send("POST", "/webhooks/gh", &h, b.clone())
            .await
            .status,
        202
    );
    let again = client.send("POST", "/webhooks/gh", &h, b.clone()).await;
    assert_eq!(again.status, 200, "a duplicate while remembered");
    let swept = eventually(20, async || {
        let m = get(gw.addr, "/metrics").await;
        let text = String::from_utf8(m.body.to_vec()).unwrap();
        metric(&text, "waybill_retention_swept_total", "") >= 1.0
    })
    .await;
    assert!(swept, "no sweep forgot the expired event");
    assert_eq!(
        client.send("POST", "/webhooks/gh", &h, b).await.status,
        202,
        "new again once forgotten"
    );
}
