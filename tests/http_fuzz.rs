//! Thousands of mutated requests against the built binary: heads, bodies,
//! paths and methods bent from valid requests of every kind. No answer is
//! a 500, no panic reaches the log, and the gateway is healthy and serving
//! afterwards.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waybill::webhook::signature::SchemeKind;

const SECRET: &str = "gh-secret";
const ADMIN: &str = "admin-token";

/// Valid requests of each kind, as raw bytes.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let body = br#"{"id":"seed-1","t":"TN1","s":"transit","at":1763800000}"#;
    let mut head = String::from("POST /webhooks/carrier HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in signed(SchemeKind::Github, SECRET, body, 0, "seed-1") {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.push([head.as_bytes(), body].concat());
    let shipment = br#"{"order_id":"o1","carrier":"ups","service":"ground","from":{"name":"A","street1":"1","city":"C","postal_code":"1","country":"US"},"to":{"name":"B","street1":"2","city":"D","postal_code":"2","country":"DE"},"parcels":[{"weight_grams":100,"length_cm":1,"width_cm":1,"height_cm":1}]}"#;
    out.push(
        [
            format!(
                "POST /v1/shipments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-key\r\nContent-Type: application/json\r\nIdempotency-Key: fz-1\r\nContent-Length: {}\r\n\r\n",
                shipment.len()
            )
            .as_bytes(),
            shipment,
        ]
        .concat(),
    );
    out.push(
        b"POST /v1/shipments/shp_x/label HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-key\r\nContent-Type: application/json\r\nIdempotency-Key: fz-2\r\nContent-Length: 16\r\n\r\n{\"format\":\"PDF\"}".to_vec(),
    );
    out.push(
        format!("GET /admin/events?source=carrier&limit=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
            .into_bytes(),
    );
    out.push(
        b"GET /v1/shipments/shp_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-key\r\n\r\n"
            .to_vec(),
    );
    out
}

const TOKENS: &[&str] = &[
    "\u{0}",
    "\r\n",
    "%",
    "%00",
    "%ff",
    "/../",
    "//",
    "\u{202e}",
    "é",
    "😀",
    "{",
    "}",
    "[",
    "\"",
    "-1",
    "99999999999999999999",
    "1e999",
    "null",
    "Transfer-Encoding: chunked\r\n",
    "Content-Length: 5\r\n",
    "Content-Length: -1\r\n",
    "Content-Length: 99999999999\r\n",
    "Expect: 100-continue\r\n",
    " ",
    "\t",
    "?a=%zz&limit=99999",
    "HTTP/1.0",
    "HTTP/9.9",
];

/// One mutation of a seed: byte flips, token splices, truncation or
/// repetition, a few at a time.
fn mutate(seed: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        if out.is_empty() {
            out.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        }
        let at = rng.usize(0..out.len());
        match rng.u8(0..6) {
            0 => out[at] = rng.u8(..),
            1 => {
                let t = TOKENS[rng.usize(0..TOKENS.len())].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
            2 => out.truncate(at),
            3 => {
                let end = (at + rng.usize(1..64)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.usize(1..50) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                // Another method.
                let methods = [
                    "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "pOsT", "",
                ];
                let sp = out.iter().position(|b| *b == b' ').unwrap_or(0);
                out.splice(..sp, methods[rng.usize(0..methods.len())].bytes());
            }
            _ => {
                let end = (at + rng.usize(1..16)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_get_a_500_nor_panic_the_gateway() {
    let (_dir, gw) = gateway_with(
        "request_timeout = \"1s\"\nmax_body_bytes = 65536",
        &format!(
            "{}{}{}\n[downstream]\nbase_url = \"http://127.0.0.1:9\"\ntimeout = \"100ms\"\n\
             max_attempts = 1\n",
            config::admin(ADMIN),
            config::tracking_source(
                "carrier",
                config::Shape::Github,
                SECRET,
                &[("transit", "IN_TRANSIT")]
            ),
            config::partner("acme", "acme-key"),
        ),
    );
    let seeds = seeds();
    let mut statuses = std::collections::BTreeMap::new();
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let seeds = seeds.clone();
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0xF022 + worker);
            let mut seen = Vec::new();
            for _ in 0..400 {
                let seed = &seeds[rng.usize(0..seeds.len())];
                let request = mutate(seed, &mut rng);
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = stream.write_all(&request).await;
                let _ = stream.shutdown().await;
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
                        .await
                        .unwrap_or_default();
                let status = answer
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|rest| rest.get(..3))
                    .unwrap_or("none")
                    .to_string();
                assert_ne!(
                    status,
                    "500",
                    "request {:?} got {answer}",
                    String::from_utf8_lossy(&request)
                );
                seen.push(status);
            }
            seen
        }));
    }
    for t in tasks {
        for s in t.await.unwrap() {
            *statuses.entry(s).or_insert(0u32) += 1;
        }
    }
    eprintln!("answers by status: {statuses:?}");
    // The mutations reached the handlers, not only the parser.
    assert!(
        statuses.keys().any(|s| s.starts_with('4') && s != "400"),
        "{statuses:?}"
    );
    assert!(
        statuses.contains_key("202")
            || statuses.contains_key("201")
            || statuses.contains_key("200"),
        "{statuses:?}"
    );
    let panics =
        gw.log_lines(|v| v["message"] == "panic" || v["message"] == "request handler panicked");
    assert!(panics.is_empty(), "{panics:?}");
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
    let body = br#"{"id":"after-fuzz","t":"TN1","s":"transit"}"#;
    let r = post(
        gw.addr,
        "/webhooks/carrier",
        &signed(SchemeKind::Github, SECRET, body, 0, "x"),
        body.to_vec(),
    )
    .await;
    assert_eq!(r.status, 202);
}
