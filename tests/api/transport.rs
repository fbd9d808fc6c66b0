//! Transport answers (GUARANTEES.md: "Order of checks", "Errors"): 404, 405, 408, 413, request ids,
//! load shedding, and the drain on shutdown.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

/// Writes `request` on a fresh connection and reads the answer until the
/// server closes or a whole response is in.
async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    let _ = stream.write_all(request).await;
    read_response(stream).await
}

#[tokio::test]
async fn unknown_sources_and_routes_are_404() {
    let app = spawn_app().await;
    let r = app.webhook("nope", &[], b"{}").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "NOT_FOUND");
    assert_eq!(get(app.addr, "/webhooks/nope").await.status, 404);
    assert_eq!(get(app.addr, "/nothing/here").await.code(), "NOT_FOUND");
}

#[tokio::test]
async fn wrong_method_on_a_source_is_405_with_allow() {
    let app = spawn_app().await;
    let r = get(app.addr, "/webhooks/gh").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_the_signature() {
    let app = spawn_app().await;
    let body = vec![b' '; 5000];
    let r = app.webhook("gh", &[], &body).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "PAYLOAD_TOO_LARGE");
    // Unknown source still wins over size.
    assert_eq!(app.webhook("nope", &[], &body).await.status, 404);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_while_streaming() {
    let app = spawn_app().await;
    let mut req = b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(format!("{:x}\r\n", 1000).as_bytes());
        req.extend_from_slice(&[b' '; 1000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let resp = raw_exchange(&mut stream, &req).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("PAYLOAD_TOO_LARGE"), "{resp}");

    // A chunked body under the limit is read whole and verified.
    let body = br#"{"id":"chunked-ok"}"#;
    let mut req =
        b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".to_vec();
    for (k, v) in signed(SchemeKind::Github, GH_SECRET, body, 0, "chunked-ok") {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    for part in body.chunks(7) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let resp = raw_exchange(&mut stream, &req).await;
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
}

#[tokio::test]
async fn a_body_not_received_in_time_is_408() {
    let app = spawn_app_with(Options {
        request_timeout: "1s",
        ..Options::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let resp = raw_exchange(
        &mut stream,
        b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial\":",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("REQUEST_TIMEOUT"), "{resp}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_minted_and_match_the_error_body() {
    let app = spawn_app().await;
    let with_id = async |id: &str| {
        let h = [("X-Request-Id".into(), id.into())];
        post(app.addr, "/webhooks/gh", &h, "{}").await
    };
    let r = with_id("trace-abc_1.2").await;
    assert_eq!(r.header("x-request-id"), Some("trace-abc_1.2"));
    assert_eq!(r.json()["error"]["request_id"], "trace-abc_1.2");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = with_id("bad id!").await;
    let minted = r.header("x-request-id").unwrap().to_string();
    assert_ne!(minted, "bad id!");
    assert!(uuid::Uuid::parse_str(&minted).is_ok(), "{minted}");
    assert_eq!(r.json()["error"]["request_id"], minted.as_str());
    let long = "a".repeat(129);
    let r = post(
        app.addr,
        "/webhooks/gh",
        &[("X-Request-Id".into(), long.clone())],
        "{}",
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some(long.as_str()));
    let h = get(app.addr, "/healthz").await;
    assert!(h.header("x-request-id").is_some());
    assert_eq!(h.header("x-content-type-options"), Some("nosniff"));
}

/// A downstream that accepts connections and never answers: every call to
/// it lasts until its timeout.
async fn silent_downstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_but_health_is_served() {
    let (silent, _silent) = silent_downstream().await;
    let app = spawn_app_with(Options {
        max_in_flight: 1,
        downstream: format!("http://{silent}"),
        ..Options::default()
    })
    .await;
    let shipment = new_shipment(&app, "held").await;
    // A label purchase waits on the silent carrier, holding the one slot.
    let buying = {
        let addr = app.addr;
        let path = format!("/v1/shipments/{shipment}/label");
        tokio::spawn(async move { post(addr, &path, &headers("held-label"), "{}").await })
    };
    // Probe with an unsigned webhook (401 while the slot is free) until the
    // slot is seen taken (bounded).
    let mut shed = None;
    for _ in 0..2000 {
        let r = app.webhook("gh", &[], b"{}").await;
        if r.status == 503 {
            shed = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
        tokio::task::yield_now().await;
    }
    let r = shed.expect("a request beyond max_in_flight is shed");
    assert_eq!(r.code(), "OVERLOADED");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(get(app.addr, "/healthz").await.status, 200);
    assert_eq!(get(app.addr, "/readyz").await.status, 200);
    assert_eq!(get(app.addr, "/metrics").await.status, 200);
    // The purchase ends (503, the carrier never answered) and gives the
    // slot back: a signed webhook is accepted again.
    let bought = buying.await.unwrap();
    assert_eq!(bought.status, 503);
    assert_eq!(bought.code(), "UPSTREAM_UNAVAILABLE");
    let body = br#"{"id":"after"}"#;
    let r = app
        .webhook(
            "gh",
            &signed(SchemeKind::Github, GH_SECRET, body, 0, "a-1"),
            body,
        )
        .await;
    assert_eq!(r.status, 202);
}

/// "Nothing stops the gateway" (GUARANTEES.md): a request counts against
/// `max_in_flight` once its body has arrived, so senders that trickle their
/// bodies cannot take the slots of signed senders.
#[tokio::test]
async fn slow_senders_do_not_take_in_flight_slots() {
    let app = spawn_app_with(Options {
        max_in_flight: 2,
        ..Options::default()
    })
    .await;
    let body = br#"{"id":"slow"}"#;
    let headers = signed(SchemeKind::Github, GH_SECRET, body, 0, "slow-1");
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(hold_in_flight(app.addr, "/webhooks/gh", &headers, body).await);
    }
    for i in 0..10 {
        let b = format!(r#"{{"id":"fast-{i}"}}"#);
        let r = app
            .webhook(
                "gh",
                &signed(
                    SchemeKind::Github,
                    GH_SECRET,
                    b.as_bytes(),
                    0,
                    &format!("f-{i}"),
                ),
                b.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    // The slow ones still complete when their bodies do.
    let mut first = slow.remove(0);
    first.write_all(&body[1..]).await.unwrap();
    let resp = read_response(&mut first).await;
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
}
