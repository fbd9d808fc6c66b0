//! Transport rows of contract 3.1 and 7: 404, 405, 408, 413, request ids,
//! load shedding, and the drain on shutdown.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::signature::SchemeKind;

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
    let r = post(
        app.addr,
        "/webhooks/gh",
        &[("X-Request-Id".into(), "trace-abc_1.2".into())],
        "{}",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("trace-abc_1.2"));
    assert_eq!(r.json()["error"]["request_id"], "trace-abc_1.2");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = post(
        app.addr,
        "/webhooks/gh",
        &[("X-Request-Id".into(), "bad id!".into())],
        "{}",
    )
    .await;
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

#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_but_health_is_served() {
    let app = spawn_app_with(Options {
        max_in_flight: 1,
        ..Options::default()
    })
    .await;
    let body = br#"{"id":"held"}"#;
    let mut held = hold_in_flight(
        app.addr,
        "/webhooks/gh",
        &signed(SchemeKind::Github, GH_SECRET, body, 0, "held-1"),
        body,
    )
    .await;
    // The held request takes its slot once the server has read its head;
    // probe until the slot is seen taken (bounded).
    let mut shed = None;
    for _ in 0..500 {
        let r = app.webhook("nope", &[], b"{}").await;
        if r.status == 503 {
            shed = Some(r);
            break;
        }
        assert_eq!(r.status, 404);
        tokio::task::yield_now().await;
    }
    let r = shed.expect("a request beyond max_in_flight is shed");
    assert_eq!(r.code(), "OVERLOADED");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(get(app.addr, "/healthz").await.status, 200);
    assert_eq!(get(app.addr, "/readyz").await.status, 200);
    assert_eq!(get(app.addr, "/metrics").await.status, 200);
    // The held request completes normally once its body arrives.
    held.write_all(&body[1..]).await.unwrap();
    let resp = read_response(&mut held).await;
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
}
