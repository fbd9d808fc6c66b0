//! "Operations" (GUARANTEES.md): health, readiness, metrics.

use waybill::webhook::signature::SchemeKind;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = get(app.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(get(app.addr, "/readyz").await.status, 200);
    let r = post(app.addr, "/healthz", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[tokio::test]
async fn metrics_use_route_templates_and_count_outcomes() {
    let app = spawn_app().await;
    let body = br#"{"id":"metrics-1"}"#;
    let h = signed(SchemeKind::Github, GH_SECRET, body, 0, "metrics-1");
    assert_eq!(app.webhook("gh", &h, body).await.status, 202);
    let text = app.metrics().await;
    assert!(
        text.contains("# TYPE waybill_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("waybill_http_requests_total{route=\"/webhooks/{source}\",method=\"POST\",status=\"202\"}"),
        "{text}"
    );
    assert!(
        text.contains("waybill_http_request_duration_seconds_bucket{route=\"/webhooks/{source}\""),
        "{text}"
    );
    assert!(
        !text.contains("route=\"/webhooks/gh\""),
        "raw paths must not become labels"
    );
    assert!(
        metric(
            &text,
            "waybill_webhooks_total",
            "source=\"gh\",outcome=\"accepted\""
        ) >= 1.0
    );
    assert!(
        text.contains("# TYPE waybill_inbox_pending gauge"),
        "{text}"
    );
    assert_eq!(
        get(app.addr, "/metrics").await.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

/// "Operations" (GUARANTEES.md): build info, each source's last accepted time, the
/// inbox's oldest age and the flush histogram under its documented name.
#[tokio::test]
async fn operator_metrics_are_exposed() {
    let app = spawn_app().await;
    let body = br#"{"id":"metrics-10-4"}"#;
    let h = signed(SchemeKind::Github, GH_SECRET, body, 0, "metrics-10-4");
    assert_eq!(app.webhook("gh", &h, body).await.status, 202);
    let text = app.metrics().await;
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert_eq!(metric(&text, "waybill_build_info", &version), 1.0, "{text}");
    let last = metric(
        &text,
        "waybill_source_last_accepted_timestamp_seconds",
        r#"source="gh""#,
    );
    assert!((last - now() as f64).abs() < 60.0, "{last}: {text}");
    assert!(
        text.contains("# TYPE waybill_inbox_oldest_age_seconds gauge"),
        "{text}"
    );
    assert!(metric(&text, "waybill_inbox_oldest_age_seconds", "") >= 0.0);
    assert!(
        text.contains("waybill_flush_duration_seconds_bucket"),
        "{text}"
    );
}
