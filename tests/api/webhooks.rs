//! The order of checks, identity and duplicates (GUARANTEES.md: "Order of
//! checks", "Event identity").

use std::sync::Arc;

use waybill::webhook::signature::{Encoding, SchemeKind};

use crate::helpers::*;

fn gh(body: &[u8], delivery: &str) -> Vec<(String, String)> {
    signed(SchemeKind::Github, GH_SECRET, body, now(), delivery)
}

/// A GitHub delivery of `body` with no `X-GitHub-Delivery`: its id is
/// the body's.
async fn gh_without_delivery_id(app: &TestApp, body: &[u8]) -> Resp {
    let h: Vec<_> = gh(body, "x")
        .into_iter()
        .filter(|(k, _)| k != "X-GitHub-Delivery")
        .collect();
    app.webhook("gh", &h, body).await
}

fn hash_headers(body: &[u8]) -> Vec<(String, String)> {
    signed(
        SchemeKind::Generic {
            header: "X-Sig".into(),
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            nfkd: false,
        },
        HASH_SECRET,
        body,
        now(),
        "",
    )
}

#[tokio::test]
async fn second_copy_is_a_duplicate_with_the_first_received_at() {
    let app = spawn_app().await;
    let body = br#"{"id":"dup-1"}"#;
    let first = app.webhook("gh", &gh(body, "del-1"), body).await;
    assert_eq!(first.status, 202);
    let first = first.json();
    assert_eq!(first["event_id"], "del-1");
    let second = app.webhook("gh", &gh(body, "del-1"), body).await;
    assert_eq!(second.status, 200);
    let second = second.json();
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["source"], "gh");
    assert_eq!(second["event_id"], "del-1");
    assert_eq!(second["first_received_at"], first["received_at"]);
}

#[tokio::test]
async fn the_header_id_wins_and_the_pointer_is_the_fallback() {
    let app = spawn_app().await;
    // No X-GitHub-Delivery: the /id pointer names the event.
    let body = br#"{"id":42}"#;
    let r = gh_without_delivery_id(&app, body).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["event_id"], "42");
    // "42" as a string is the same event.
    let body = br#"{"id":"42"}"#;
    let r = gh_without_delivery_id(&app, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["event_id"], "42");
    // With the header, the body needs no id at all.
    let body = br#"{"no_id":true}"#;
    let r = app.webhook("gh", &gh(body, "hdr-7"), body).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["event_id"], "hdr-7");
}

#[tokio::test]
async fn content_hash_identity_ignores_order_spacing_and_escapes() {
    let app = spawn_app().await;
    let a = br#"{"tracking":"1Z","status":"in_transit","n":1}"#;
    let b = b"{\n  \"n\": 1,\n  \"status\": \"in_\\u0074ransit\",\n  \"tracking\": \"1Z\"\n}";
    let r1 = app.webhook("hash", &hash_headers(a), a).await;
    assert_eq!(r1.status, 202);
    let id = r1.json()["event_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let r2 = app.webhook("hash", &hash_headers(b), b).await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.json()["event_id"], id.as_str());
    let c = br#"{"tracking":"1Z","status":"delivered","n":1}"#;
    assert_eq!(app.webhook("hash", &hash_headers(c), c).await.status, 202);
}

#[tokio::test]
async fn a_duplicate_with_another_body_is_counted_as_conflict_only() {
    let app = spawn_app().await;
    let a = br#"{"id":"conf-1","v":1}"#;
    let b = br#"{"id":"conf-1","v":2}"#;
    assert_eq!(app.webhook("gh", &gh(a, "conf-1"), a).await.status, 202);
    let r = app.webhook("gh", &gh(b, "conf-1"), b).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "duplicate");
    // Same content, other spacing: a plain duplicate.
    let a2 = b"{ \"v\": 1, \"id\": \"conf-1\" }";
    assert_eq!(app.webhook("gh", &gh(a2, "conf-1"), a2).await.status, 200);
}

#[tokio::test]
async fn forty_concurrent_copies_yield_exactly_one_202() {
    let app = Arc::new(spawn_app().await);
    let body = br#"{"id":"race-1","payload":"same"}"#.to_vec();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let app = app.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = app.webhook("gh", &gh(&body, "race-1"), &body).await;
            (r.status.as_u16(), r.json())
        }));
    }
    let mut accepted = Vec::new();
    let mut duplicates = Vec::new();
    for t in tasks {
        let (status, json) = t.await.unwrap();
        match status {
            202 => accepted.push(json),
            200 => duplicates.push(json),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    assert_eq!(accepted.len(), 1);
    assert_eq!(duplicates.len(), 39);
    for d in &duplicates {
        assert_eq!(d["first_received_at"], accepted[0]["received_at"]);
    }
}

#[tokio::test]
async fn duplicates_are_remembered_across_restarts() {
    let app = spawn_app().await;
    let body = br#"{"id":"restart-1"}"#;
    let first = app.webhook("gh", &gh(body, "restart-1"), body).await.json();
    let app = app.restart().await;
    let r = app.webhook("gh", &gh(body, "restart-1"), body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["first_received_at"], first["received_at"]);
}

#[tokio::test]
async fn unusable_bodies_are_400_with_the_pointer_named() {
    let app = spawn_app().await;
    for (body, field, issue) in [
        (&br#"[1,2]"#[..], "", "body is not a JSON object"),
        (br#"{"other":1}"#, "/id", "missing"),
        (
            br#"{"id":{"x":1}}"#,
            "/id",
            "must be a string or an integer",
        ),
        (br#"{"id":true}"#, "/id", "must be a string or an integer"),
    ] {
        let r = gh_without_delivery_id(&app, body).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(r.code(), "INVALID_PAYLOAD");
        let details = &r.json()["error"]["details"];
        assert_eq!(details[0]["field"], field);
        assert_eq!(details[0]["issue"], issue);
    }
    let r = app.webhook("gh", &gh(b"not json", "x"), b"not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "INVALID_PAYLOAD");
}

#[tokio::test]
async fn accepted_types_need_mapping_fields_other_types_do_not() {
    let app = spawn_app().await;
    let ep = |body: &[u8]| signed(SchemeKind::Easypost, EP_SECRET, body, 0, "");
    let bad = br#"{"id":"m1","description":"tracker.updated","result":{"status":"in_transit"}}"#;
    let r = app.webhook("ep", &ep(bad), bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["details"][0]["field"],
        "/result/tracking_code"
    );
    assert_eq!(r.json()["error"]["details"][0]["issue"], "missing");
    // Another type: stored and acknowledged without the mapping fields.
    let other = br#"{"id":"m2","description":"tracker.created"}"#;
    assert_eq!(app.webhook("ep", &ep(other), other).await.status, 202);
    // An absent type too.
    let none = br#"{"id":"m3"}"#;
    assert_eq!(app.webhook("ep", &ep(none), none).await.status, 202);
    let good = br#"{"id":"m4","description":"tracker.updated","result":{"tracking_code":"9400","status":"in_transit"}}"#;
    assert_eq!(app.webhook("ep", &ep(good), good).await.status, 202);
}

#[tokio::test]
async fn only_accepted_types_reach_the_inbox() {
    let app = spawn_app().await;
    let ep = |body: &[u8]| signed(SchemeKind::Easypost, EP_SECRET, body, 0, "");
    let stored = br#"{"id":"in-1","description":"tracker.created"}"#;
    let dispatched = br#"{"id":"in-2","description":"tracker.updated","result":{"tracking_code":"9400","status":"delivered"}}"#;
    assert_eq!(app.webhook("ep", &ep(stored), stored).await.status, 202);
    assert_eq!(
        app.webhook("ep", &ep(dispatched), dispatched).await.status,
        202
    );
    app.settle().await;
    let store = &app.app.store;
    // The state machine took the accepted type out of the inbox (no
    // shipment has its tracking number, so it is parked); the other type
    // never went in.
    assert_eq!(store.inbox_pending().await.unwrap(), 0);
    let parked = store
        .outcome("ep", "in-2")
        .await
        .unwrap()
        .expect("dispatched");
    assert_eq!(parked.outcome, waybill::store::DispatchOutcome::Parked);
    assert!(store.outcome("ep", "in-1").await.unwrap().is_none());
    let ev = store.event("ep", "in-1").await.unwrap().unwrap();
    assert!(!ev.meta.dispatch);
    assert_eq!(ev.outcome_name(None), "stored");
    // Signature values never reach the store.
    let sig = ev
        .meta
        .headers
        .iter()
        .find(|(k, _)| k == "x-hmac-signature")
        .unwrap();
    assert_eq!(sig.1, "[redacted]");
}

#[tokio::test]
async fn rate_limit_applies_after_the_signature_with_retry_after() {
    let app = spawn_app().await;
    // Forged traffic does not spend the quota.
    for i in 0..5 {
        let body = format!(r#"{{"n":{i}}}"#);
        let h = signed(
            SchemeKind::Github,
            "forged",
            body.as_bytes(),
            0,
            &format!("f{i}"),
        );
        assert_eq!(
            app.webhook("limited", &h, body.as_bytes()).await.status,
            401
        );
    }
    // The burst of 2 passes; a later one is limited. Up to ten tries, so
    // only a stall of a second between every two requests could hide the
    // refusal.
    let mut accepted = 0;
    let mut limited = None;
    for i in 0..10 {
        let r = to_limited(&app, "l", i).await;
        match r.status.as_u16() {
            202 => accepted += 1,
            429 => {
                limited = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(accepted >= 2, "the burst was not honoured");
    let r = limited.expect("the limit was never reached");
    assert_eq!(r.code(), "RATE_LIMITED");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
}

/// Senders that sign nothing (11.8): HTTP Basic credentials or a static
/// token header, any of the configured ones; a wrong or missing one is 401
/// `INVALID_SIGNATURE` and stores nothing, and the credential never shows
/// in the stored headers.
#[tokio::test]
async fn basic_credentials_and_header_tokens_admit_senders_that_sign_nothing() {
    use base64::Engine;
    let app = spawn_app().await;
    let json = ("Content-Type".to_string(), "application/json".to_string());
    let basic = |pair: &str| {
        let value = base64::engine::general_purpose::STANDARD.encode(pair);
        vec![
            json.clone(),
            ("Authorization".into(), format!("Basic {value}")),
        ]
    };
    let token = |t: &str| vec![json.clone(), ("X-Api-Key".into(), t.to_string())];
    for (source, good, bad) in [
        ("basic", basic(BASIC_CREDENTIALS), basic("carrier:wrong")),
        ("token", token(HEADER_TOKEN), token("tok-3f9c2b7e5a1")),
    ] {
        let body = format!(r#"{{"id":"{source}-1"}}"#);
        let r = app.webhook(source, &bad, body.as_bytes()).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "INVALID_SIGNATURE".into()),
            "{source}"
        );
        let missing = app
            .webhook(source, std::slice::from_ref(&json), body.as_bytes())
            .await;
        assert_eq!(missing.status, 401, "{source}");
        assert_eq!(
            app.admin_get(&format!("/admin/events/{source}/{source}-1"))
                .await
                .status,
            404,
            "{source}: a refusal stores nothing"
        );
        assert_eq!(
            app.webhook(source, &good, body.as_bytes()).await.status,
            202
        );
        assert_eq!(
            app.webhook(source, &good, body.as_bytes()).await.status,
            200
        );
        let shown = app
            .admin_get(&format!("/admin/events/{source}/{source}-1"))
            .await
            .json();
        let stored = shown["headers"].to_string();
        assert!(stored.contains("[redacted]"), "{stored}");
        assert!(
            !stored.contains(HEADER_TOKEN) && !stored.contains("Basic "),
            "{stored}"
        );
    }
}

/// Standard Webhooks `v1a` (11.8) end to end: a source whose secret is a
/// `whpk_` public key takes an Ed25519-signed delivery, answers its
/// duplicate, and refuses a `v1` HMAC signature and a tampered body.
#[tokio::test]
async fn a_v1a_signed_delivery_is_taken_by_a_public_key_source() {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let app = spawn_app().await;
    let ts = now().to_string();
    let body = br#"{"type":"shipment.updated"}"#;
    let sign = |body: &[u8]| {
        let message = [b"msg_v1a".as_slice(), b".", ts.as_bytes(), b".", body].concat();
        let signature = v1a_signer().sign(&message).to_bytes();
        format!(
            "v1a,{}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        )
    };
    let headers = |signature: String| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("webhook-id".to_string(), "msg_v1a".to_string()),
            ("webhook-timestamp".to_string(), ts.clone()),
            ("webhook-signature".to_string(), signature),
        ]
    };
    let tampered = app.webhook("swa", &headers(sign(b"{}")), body).await;
    assert_eq!(tampered.code(), "INVALID_SIGNATURE");
    let hmac = signed(
        SchemeKind::StandardWebhooks,
        SW_SECRET,
        body,
        now(),
        "msg_v1a",
    );
    assert_eq!(app.webhook("swa", &hmac, body).await.status, 401);
    let first = app.webhook("swa", &headers(sign(body)), body).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.json()["event_id"], "msg_v1a");
    assert_eq!(
        app.webhook("swa", &headers(sign(body)), body).await.status,
        200
    );
}
