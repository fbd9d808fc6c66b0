//! "Reload" (GUARANTEES.md) through `App::reload`, the function `SIGHUP` calls (the
//! signal itself is tested on the binary in tests/api/cli.rs): a new config is
//! in force for requests that start after it, whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use waybill::app::Reload;
use waybill::config::{Config, ProcessEnv};
use waybill::store::DispatchOutcome;
use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

const GH_BLOCK: &str = "name = \"gh\"\nkind = \"store-only\"\nsecrets = [\"gh-secret\"]";

fn gh_secrets(text: &str, secrets: &str) -> String {
    assert!(text.contains(GH_BLOCK));
    text.replace(
        GH_BLOCK,
        &format!("name = \"gh\"\nkind = \"store-only\"\nsecrets = [{secrets}]"),
    )
}

fn globex_keys(text: &str, keys: &str) -> String {
    let old = "name = \"globex\"\napi_keys = [\"globex-key\"]";
    assert!(text.contains(old));
    text.replace(old, &format!("name = \"globex\"\napi_keys = [{keys}]"))
}

fn reload(app: &TestApp, text: &str) -> Vec<&'static str> {
    match app.app.reload(Config::parse(text, &ProcessEnv)) {
        Reload::Applied { needs_restart } => needs_restart,
        Reload::Rejected(e) => panic!("reload refused: {e}"),
    }
}

async fn gh_webhook(app: &TestApp, secret: &str, id: &str) -> Resp {
    let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    app.webhook(
        "gh",
        &signed(SchemeKind::Github, secret, &body, now(), id),
        &body,
    )
    .await
}

async fn globex_list(app: &TestApp, key: &str) -> Resp {
    Client::new(app.addr)
        .send(
            "GET",
            "/v1/orders",
            &[("Authorization".into(), format!("Bearer {key}"))],
            bytes::Bytes::new(),
        )
        .await
}

/// A rotation the way an operator does it, while senders keep sending:
/// add the new secret (and key), switch the senders over, drop the old.
/// Every request signed with a secret the config in force accepts must
/// pass; senders switch only after the reload that added the new one, and
/// the old one is dropped only once every sender has finished a request
/// under the new one.
#[tokio::test]
async fn rotating_a_secret_and_a_key_under_load_refuses_nothing_that_should_pass() {
    let app = Arc::new(spawn_app().await);
    let ok_before = reloads(&app, "ok").await;
    // 0: old secret and key; 1: the new ones; senders stop at 2.
    let phase = Arc::new(AtomicU8::new(0));
    const SENDERS: usize = 6;
    let switched: Arc<Vec<AtomicBool>> =
        Arc::new((0..SENDERS).map(|_| AtomicBool::new(false)).collect());
    let mut tasks = Vec::new();
    for n in 0..SENDERS {
        let (app, phase, switched) = (app.clone(), phase.clone(), switched.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u32;
            for i in 0.. {
                let p = phase.load(Ordering::SeqCst);
                if p >= 2 {
                    break;
                }
                let (secret, key) = if p == 0 {
                    ("gh-secret", "globex-key")
                } else {
                    ("gh-secret-2", "globex-key-2")
                };
                let r = if n % 2 == 0 {
                    gh_webhook(&app, secret, &format!("rot-{n}-{i}")).await
                } else {
                    globex_list(&app, key).await
                };
                assert!(
                    r.status == 202 || r.status == 200,
                    "sender {n}, phase {p}: {} {:?}",
                    r.status,
                    r.body
                );
                sent += 1;
                if p == 1 {
                    switched[n].store(true, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
            sent
        }));
    }
    let wait_for_requests = || async {
        let before = app.metrics().await;
        loop {
            tokio::task::yield_now().await;
            let now = app.metrics().await;
            let count = |t: &str| {
                metric(
                    t,
                    "waybill_webhooks_total",
                    r#"source="gh",outcome="accepted""#,
                )
            };
            if count(&now) >= count(&before) + 20.0 {
                break;
            }
        }
    };
    wait_for_requests().await;
    let both = globex_keys(
        &gh_secrets(&app.config_text, r#""gh-secret", "gh-secret-2""#),
        r#""globex-key", "globex-key-2""#,
    );
    assert!(reload(&app, &both).is_empty());
    phase.store(1, Ordering::SeqCst);
    while !switched.iter().all(|s| s.load(Ordering::SeqCst)) {
        tokio::task::yield_now().await;
    }
    let only_new = globex_keys(
        &gh_secrets(&app.config_text, r#""gh-secret-2""#),
        r#""globex-key-2""#,
    );
    assert!(reload(&app, &only_new).is_empty());
    wait_for_requests().await;
    phase.store(2, Ordering::SeqCst);
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    // The old secret and key are refused now: the reload took effect.
    assert_eq!(gh_webhook(&app, "gh-secret", "after-old").await.status, 401);
    assert_eq!(globex_list(&app, "globex-key").await.status, 401);
    assert_eq!(
        gh_webhook(&app, "gh-secret-2", "after-new").await.status,
        202
    );
    // Other tests reload too (the recorder is the process's): at least ours.
    assert!(reloads(&app, "ok").await >= ok_before + 2.0);
}

async fn reloads(app: &TestApp, result: &str) -> f64 {
    metric(
        &app.metrics().await,
        "waybill_config_reloads_total",
        &format!("result=\"{result}\""),
    )
}

#[tokio::test]
async fn an_invalid_file_is_refused_whole_and_the_running_config_kept() {
    let app = spawn_app().await;
    let (ok_before, rejected_before) = (reloads(&app, "ok").await, reloads(&app, "rejected").await);
    // A new secret (valid) beside a broken key: nothing of it applies.
    let broken = gh_secrets(&app.config_text, r#""gh-secret-2""#)
        .replace("max_attempts = 4", "max_attempts = \"many\"");
    match app.app.reload(Config::parse(&broken, &ProcessEnv)) {
        Reload::Rejected(e) => {
            assert!(
                e.0.iter().any(|i| i.key == "downstream.max_attempts"),
                "{e}"
            )
        }
        Reload::Applied { .. } => panic!("a broken file was applied"),
    }
    assert_eq!(gh_webhook(&app, "gh-secret", "kept").await.status, 202);
    assert_eq!(gh_webhook(&app, "gh-secret-2", "not-yet").await.status, 401);
    // No other test is refused a reload.
    assert_eq!(reloads(&app, "rejected").await, rejected_before + 1.0);
    let _ = ok_before;
}

#[tokio::test]
async fn listen_and_store_changes_are_reported_and_kept_until_a_restart() {
    let app = spawn_app().await;
    let running = app.app.live().config.store.path.clone();
    let text = app
        .config_text
        .replace("[server]\n", "[server]\nlisten = \"127.0.0.1:1\"\n")
        .replace("path = \"", "path = \"/elsewhere")
        .replace("pool_size = 4", "pool_size = 5")
        .replace("max_in_flight = 256", "max_in_flight = 3");
    let mut changed = reload(&app, &text);
    changed.sort();
    assert_eq!(
        changed,
        [
            "server.listen",
            "server.max_in_flight",
            if on_postgres() {
                "store.pool_size"
            } else {
                "store.path"
            }
        ]
    );
    let live = app.app.live();
    assert_eq!(live.config.store.path, running);
    assert_eq!(live.config.server.max_in_flight, 256);
    assert_eq!(app.app.server.max_in_flight, 256);
    // Still serving where it was, on the same store.
    assert_eq!(
        gh_webhook(&app, "gh-secret", "same-place").await.status,
        202
    );
}

#[tokio::test]
async fn a_reloaded_status_map_is_what_the_state_machine_applies() {
    let app = spawn_app().await;
    shipment_with_label(&app, "shp_reload", "TN-RELOAD").await;
    // Held at customs, as the sender says it, an hour apart.
    let held = async |id: &str, at: &str| {
        let r = send_tracking(&app, id, "TN-RELOAD", "held_at_customs", at).await;
        assert_eq!(r.status, 202);
        app.settle().await;
        app.outcome_of("ep", id).await
    };
    let ignored = held("rl-1", "2026-11-20T08:00:00Z").await;
    assert_eq!(ignored, DispatchOutcome::Ignored);

    let text = app.config_text.replace(
        "failure = \"EXCEPTION\"",
        "failure = \"EXCEPTION\"\nheld_at_customs = \"EXCEPTION\"",
    );
    assert!(reload(&app, &text).is_empty());
    let applied = held("rl-2", "2026-11-20T09:00:00Z").await;
    assert_eq!(applied, DispatchOutcome::Applied);
}

/// A reload that leaves a limit alone must not hand its sender a fresh
/// burst, or every SIGHUP would be a way past the limit.
#[tokio::test]
async fn a_limit_left_alone_keeps_its_state_across_a_reload() {
    let app = spawn_app().await;
    let send = |id: &'static str| {
        let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
        let h = signed(SchemeKind::Github, GH_SECRET, &body, now(), id);
        let app = &app;
        async move { app.webhook("limited", &h, &body).await.status }
    };
    assert_eq!(send("l1").await, 202);
    assert_eq!(send("l2").await, 202);
    assert_eq!(send("l3").await, 429);
    assert!(reload(&app, &app.config_text).is_empty());
    assert_eq!(send("l4").await, 429);
    // A changed limit starts afresh.
    let text = app.config_text.replace(
        "rate_limit = { per_second = 1, burst = 2 }",
        "rate_limit = { per_second = 1, burst = 3 }",
    );
    assert!(reload(&app, &text).is_empty());
    assert_eq!(send("l5").await, 202);
}

#[tokio::test]
async fn a_reload_adds_and_removes_sources_and_changes_the_admin_token() {
    let app = spawn_app().await;
    let added = app.config_text.replace(
        "[[sources]]\nname = \"limited\"",
        "[[sources]]\nname = \"gh2\"\nkind = \"store-only\"\nsecrets = [\"gh2-secret\"]\nsignature = { scheme = \"github\" }\nevent_id = \"/id\"\n\n[[sources]]\nname = \"limited\"",
    )
    .replace(
        "[[sources]]\nname = \"sh\"\nkind = \"store-only\"\nsecrets = [\"shop-secret\"]\nsignature = { scheme = \"shopify\" }\n",
        "",
    )
    .replace(ADMIN_TOKEN, "rotated-admin-token");
    assert!(reload(&app, &added).is_empty());
    let body = br#"{"id":"new-source-1"}"#;
    let h = signed(
        SchemeKind::Github,
        "gh2-secret",
        body,
        now(),
        "new-source-1",
    );
    assert_eq!(app.webhook("gh2", &h, body).await.status, 202);
    let h = signed(SchemeKind::Shopify, SHOP_SECRET, body, now(), "gone");
    assert_eq!(app.webhook("sh", &h, body).await.code(), "NOT_FOUND");
    assert_eq!(app.admin_get("/admin/events?source=gh2").await.status, 401);
    let r = Client::new(app.addr)
        .send(
            "GET",
            "/admin/events?source=gh2",
            &[("Authorization".into(), "Bearer rotated-admin-token".into())],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["events"][0]["event_id"], "new-source-1");
}
