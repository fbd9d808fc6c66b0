//! `waybill events search|show|redeliver` (GUARANTEES.md: "Admin in bulk") against the
//! built binary: the admin API from the shell, the token from the
//! environment.

use std::process::Command;

use crate::support::*;
use serde_json::{Value, json};
use waybill::webhook::signature::SchemeKind;

const TOKEN: &str = "cli-admin-token";

/// Runs `waybill events ARGS` against `url`; exit code, stdout, stderr.
fn events(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waybill"));
    cmd.arg("events")
        .args(args)
        .args(["--url", url])
        .env_remove("WAYBILL_ADMIN_TOKEN")
        .env_remove("WAYBILL_URL");
    if let Some(t) = token {
        cmd.env("WAYBILL_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ids(lines: &str) -> Vec<String> {
    lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_searches_pages_shows_and_redelivers_from_the_shell() {
    // Times read from a pointer that holds garbage: every event is dead.
    let (_dir, gw) = gateway_with(
        "",
        &format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[[sources]]\nname = \"ep\"\nkind = \"tracking\"\nsecrets = [\"s\"]\nsignature = {{ scheme = \"easypost\" }}\nevent_id = \"/id\"\n[sources.mapping]\ntracking_number = \"/t\"\nstatus = \"/s\"\noccurred_at = \"/when\"\n[sources.mapping.status_map]\nin_transit = \"IN_TRANSIT\"\n"
        ),
    );
    for i in 0..3 {
        let body =
            json!({"id": format!("cli-{i}"), "t": "TN-CLI", "s": "in_transit", "when": "never"})
                .to_string()
                .into_bytes();
        let h = signed(SchemeKind::Easypost, "s", &body, 0, "");
        assert_eq!(post(gw.addr, "/webhooks/ep", &h, body).await.status, 202);
    }
    let url = format!("http://{}", gw.addr);
    // The state machine marks them dead; the search waits for that.
    let mut dead = String::new();
    for _ in 0..500 {
        let (code, out, _) = events(&url, Some(TOKEN), &["search", "--outcome", "dead", "--all"]);
        assert_eq!(code, 0);
        dead = out;
        if dead.lines().count() == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(ids(&dead), ["cli-2", "cli-1", "cli-0"]);

    // A page at a time: the cursor goes to stderr, and takes up from there.
    let (code, first, err) = events(
        &url,
        Some(TOKEN),
        &["search", "--source", "ep", "--limit", "2"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&first), ["cli-2", "cli-1"]);
    let cursor = err
        .trim()
        .strip_prefix("more: --cursor ")
        .unwrap()
        .to_string();
    let (_, rest, err) = events(
        &url,
        Some(TOKEN),
        &[
            "search", "--source", "ep", "--limit", "2", "--cursor", &cursor,
        ],
    );
    assert_eq!(ids(&rest), ["cli-0"]);
    assert!(err.is_empty(), "{err}");

    let (code, shown, _) = events(&url, Some(TOKEN), &["show", "ep", "cli-1"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["payload"]["t"], "TN-CLI");
    assert!(shown["reason"].as_str().unwrap().contains("/when"));

    let (code, dry, _) = events(
        &url,
        Some(TOKEN),
        &["redeliver", "--outcome", "dead", "--dry-run"],
    );
    assert_eq!(code, 0);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(
        (dry["matched"].as_u64(), dry["redelivered"].as_u64()),
        (Some(3), Some(0))
    );
    let (code, one, _) = events(&url, Some(TOKEN), &["redeliver", "ep", "cli-0"]);
    assert_eq!(code, 0);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(
        (one["outcome"].as_str(), one["attempts"].as_u64()),
        (Some("dead"), Some(2))
    );
    let (code, all, _) = events(
        &url,
        Some(TOKEN),
        &["redeliver", "--outcome", "dead", "--source", "ep"],
    );
    assert_eq!(code, 0);
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["redelivered"], 3);
    assert_eq!(all["outcomes"]["dead"], 3);

    // Errors: no token is a usage error (2); a refusal or an unknown event 1.
    let (code, _, err) = events(&url, None, &["search"]);
    assert_eq!(code, 2);
    assert!(err.contains("WAYBILL_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = events(&url, Some("wrong"), &["search"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = events(&url, Some(TOKEN), &["show", "ep", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
    let (code, _, err) = events(&url, Some(TOKEN), &["redeliver"]);
    assert_eq!(code, 2, "neither an event nor --outcome: {err}");
    assert!(!err.contains(TOKEN));
    // Credentials written into the URL are not repeated in its errors.
    for url in ["http://ops:s3cret@127.0.0.1:1", "ftp://ops:s3cret@example"] {
        let (code, _, err) = events(url, Some(TOKEN), &["search"]);
        assert_ne!(code, 0, "{url}");
        assert!(!err.is_empty() && !err.contains("s3cret"), "{err}");
    }
    assert_eq!(gw.terminate(), Some(0));
}
