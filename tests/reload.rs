//! "Reload" (GUARANTEES.md) on the built binary: `SIGHUP` re-reads the config file.
//! What a reload changes is tested through `App::reload` in tests/api;
//! this is the signal, the logs and the counter an operator sees.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use support::*;
use waybill::webhook::signature::SchemeKind;

fn source(secret: &str) -> String {
    format!(
        "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{secret}\"]\nsignature = {{ scheme = \"github\" }}\nevent_id = \"/id\""
    )
}

async fn deliver(gw: &Gateway, secret: &str, id: &str) -> u16 {
    let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    let h = signed(SchemeKind::Github, secret, &body, now(), id);
    post(gw.addr, "/webhooks/gh", &h, body)
        .await
        .status
        .as_u16()
}

fn hangup(gw: &Gateway) {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) };
}

fn message(text: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["message"] == text
}

#[tokio::test]
async fn sighup_applies_a_new_file_and_refuses_a_broken_one_keeping_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), "", &source("first"));
    let gw = Gateway::start(&cfg);
    // No [admin] at all: said at start, since /admin is then off.
    let warned = gw.log_lines(|v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("no admin.token"))
    });
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(deliver(&gw, "first", "a").await, 202);
    assert_eq!(deliver(&gw, "second", "b").await, 401);

    // A new secret, and a new listen address, which needs a restart.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let next = text
        .replace("127.0.0.1:0", "127.0.0.1:1")
        .replace(&source("first"), &source("second"));
    std::fs::write(&cfg, &next).unwrap();
    hangup(&gw);
    assert_eq!(gw.await_log(1, message("config reloaded")).len(), 1);
    let restart = gw.log_lines(|v| v["level"] == "WARN" && v["key"] == "server.listen");
    assert_eq!(restart.len(), 1, "the listen change is reported");
    assert_eq!(deliver(&gw, "second", "c").await, 202, "still on its port");
    assert_eq!(deliver(&gw, "first", "d").await, 401);

    // A broken file: every error at ERROR, the running config kept.
    std::fs::write(
        &cfg,
        next.replace("secrets = [\"second\"]", "secrets = []")
            .replace("[store]", "[store]\ncache_mb = \"lots\""),
    )
    .unwrap();
    hangup(&gw);
    let refused = gw.await_log(2, |v| {
        v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload refused"))
    });
    let mut keys: Vec<&str> = refused.iter().filter_map(|v| v["key"].as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["sources[0].secrets", "store.cache_mb"],
        "{refused:?}"
    );
    assert_eq!(deliver(&gw, "second", "e").await, 202);
    let m = String::from_utf8(get(gw.addr, "/metrics").await.body.to_vec()).unwrap();
    assert_eq!(
        metric(&m, "waybill_config_reloads_total", r#"result="ok""#),
        1.0
    );
    assert_eq!(
        metric(&m, "waybill_config_reloads_total", r#"result="rejected""#),
        1.0
    );
    // Secrets never reach the log, whatever the reloads said.
    let log = gw.log.lock().unwrap().join("\n");
    assert!(!log.contains("\"second\"") && !log.contains("\"first\""));
    drop(log);
    assert_eq!(gw.terminate(), Some(0));
}
