//! The drain on shutdown, in a binary of its own: it watches the
//! process-wide in-flight gauge, which other tests running in parallel
//! would disturb.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::webhook::signature::SchemeKind;

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_closes_connections() {
    let mut app = spawn_app().await;
    let body = br#"{"id":"draining"}"#;
    let mut held = hold_in_flight(
        app.addr,
        "/webhooks/gh",
        &signed(SchemeKind::Github, GH_SECRET, body, 0, "held-1"),
        body,
    )
    .await;
    // Make sure the held request is being served before the signal: the
    // gauge counts it and this probe (bounded).
    let mut probe = Client::new(app.addr);
    let mut seen = false;
    for _ in 0..500 {
        let m = probe
            .send("GET", "/metrics", &[], bytes::Bytes::new())
            .await;
        if metric(
            &String::from_utf8_lossy(&m.body),
            "waybill_http_requests_in_flight",
            "",
        ) >= 2.0
        {
            seen = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(seen, "the held request never reached the server");
    drop(probe);
    app.trigger_shutdown();
    held.write_all(&body[1..]).await.unwrap();
    let resp = read_response(&mut held).await;
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    app.stop().await;
    // The listener is gone.
    assert!(TcpStream::connect(app.addr).await.is_err());
}
