//! "Signatures" (GUARANTEES.md): every scheme, rotation, tolerance, and the 401 codes.

use waybill::webhook::signature::{Encoding, SchemeKind};

use crate::helpers::*;

const BODY: &[u8] = br#"{"id":"evt_sig_1","hello":"world"}"#;

fn generic() -> SchemeKind {
    SchemeKind::Generic {
        header: "X-Sig".into(),
        encoding: Encoding::Hex,
        prefix: "sha256=".into(),
        nfkd: false,
    }
}

#[tokio::test]
async fn every_scheme_accepts_its_own_signature() {
    let app = spawn_app().await;
    let ep_body = br#"{"id":"e1","description":"tracker.created"}"#;
    let cases: Vec<(&str, SchemeKind, &str, &[u8])> = vec![
        ("ep", SchemeKind::Easypost, EP_SECRET, ep_body),
        ("sw", SchemeKind::StandardWebhooks, SW_SECRET, BODY),
        ("st", SchemeKind::Stripe, STRIPE_SECRET, BODY),
        ("gh", SchemeKind::Github, GH_SECRET, BODY),
        ("sh", SchemeKind::Shopify, SHOP_SECRET, BODY),
        ("hash", generic(), HASH_SECRET, BODY),
    ];
    for (source, kind, secret, body) in cases {
        let h = signed(kind, secret, body, now(), &format!("id-{source}"));
        let r = app.webhook(source, &h, body).await;
        assert_eq!(r.status, 202, "{source}: {:?}", r.body);
        assert_eq!(r.json()["status"], "accepted");
        assert_eq!(r.json()["source"], source);
    }
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_401_and_stores_nothing() {
    let app = spawn_app().await;
    let h = signed(SchemeKind::Github, "not-the-secret", BODY, now(), "d1");
    let r = app.webhook("gh", &h, BODY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "INVALID_SIGNATURE");
    assert!(
        r.message().contains("no signature matched"),
        "{}",
        r.message()
    );
    let r = app.webhook("gh", &[], BODY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "INVALID_SIGNATURE");
    assert!(r.message().contains("missing"), "{}", r.message());
    // The signature of one body does not carry over to another.
    let h = signed(SchemeKind::Github, GH_SECRET, BODY, now(), "d1");
    let r = app
        .webhook("gh", &h, br#"{"id":"evt_sig_1","hello":"World"}"#)
        .await;
    assert_eq!(r.status, 401);
    // Nothing was stored: the genuine delivery is still new.
    let r = app.webhook("gh", &h, BODY).await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn rotation_lets_either_secret_verify() {
    let app = spawn_app().await;
    // The second: the NFKD-normalised form of the configured secret is the
    // key, so a sender that decomposed the é itself signs the same way.
    for (id, secret) in [("rot-1", "old-secret"), ("rot-2", "ep-se\u{301}cret")] {
        let body = format!(r#"{{"id":"{id}","description":"other"}}"#);
        let h = signed(SchemeKind::Easypost, secret, body.as_bytes(), 0, "");
        let r = app.webhook("ep", &h, body.as_bytes()).await;
        assert_eq!(r.status, 202, "signed with {secret}");
    }
}

#[tokio::test]
async fn timestamps_300s_away_pass_and_301s_away_are_stale() {
    let app = spawn_app().await;
    for (i, (offset, expect)) in [(-295, 202), (295, 202), (-400, 401), (400, 401)]
        .into_iter()
        .enumerate()
    {
        for (source, kind, secret) in [
            ("sw", SchemeKind::StandardWebhooks, SW_SECRET),
            ("st", SchemeKind::Stripe, STRIPE_SECRET),
        ] {
            let body = format!(r#"{{"id":"ts-{i}-{source}"}}"#);
            let h = signed(
                kind,
                secret,
                body.as_bytes(),
                now() + offset,
                &format!("ts-{i}"),
            );
            let r = app.webhook(source, &h, body.as_bytes()).await;
            assert_eq!(r.status, expect, "{source} offset {offset}");
            if expect == 401 {
                assert_eq!(r.code(), "STALE_TIMESTAMP");
            }
        }
    }
}

#[tokio::test]
async fn stale_is_checked_before_the_signature() {
    let app = spawn_app().await;
    let mut h = signed(SchemeKind::Stripe, "wrong", BODY, now() - 3600, "");
    let r = app.webhook("st", &h, BODY).await;
    assert_eq!(r.code(), "STALE_TIMESTAMP");
    h.retain(|(k, _)| k != "Stripe-Signature");
    h.push(("Stripe-Signature".into(), "garbage".into()));
    assert_eq!(
        app.webhook("st", &h, BODY).await.code(),
        "INVALID_SIGNATURE"
    );
}

#[tokio::test]
async fn standard_webhooks_falls_back_to_svix_headers() {
    let app = spawn_app().await;
    let h: Vec<(String, String)> = signed(
        SchemeKind::StandardWebhooks,
        SW_SECRET,
        BODY,
        now(),
        "msg_svix_1",
    )
    .into_iter()
    .map(|(k, v)| (k.replace("webhook-", "svix-"), v))
    .collect();
    let r = app.webhook("sw", &h, BODY).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["event_id"], "msg_svix_1");
}
