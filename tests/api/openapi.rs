//! Contract 10.1: the API described. The document is served as kept in
//! `docs/openapi.json`, and the router and the document name the same
//! operations: every path the router knows is in the document with
//! exactly the methods the router accepts there (probed: any answer but
//! 405 means the router serves the method), and nothing else is.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn document() -> Value {
    serde_json::from_str(waybill::http::OPENAPI).expect("docs/openapi.json is JSON")
}

/// A concrete path for a template, with a configured source.
fn concrete(template: &str) -> String {
    template
        .replace("{source}", "gh")
        .replace("{shipment_id}", "shp_probe")
        .replace("{order_id}", "o-probe")
        .replace("{event_id}", "e-probe")
}

#[tokio::test]
async fn the_document_is_served_as_kept() {
    let app = spawn_app().await;
    let r = get(app.addr, "/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), document());
    assert_eq!(r.json()["openapi"], "3.1.0");
    assert_eq!(post(app.addr, "/openapi.json", &[], "").await.status, 405);
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, document());
}

#[tokio::test]
async fn the_router_and_the_document_name_the_same_operations() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = waybill::http::TEMPLATES.iter().copied().collect();
    assert_eq!(
        documented, routed,
        "paths in the document but not the router, or the reverse"
    );

    let app = spawn_app().await;
    let mut client = Client::new(app.addr);
    for (template, item) in paths {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
            .map(|k| k.to_uppercase())
            .collect();
        let mut served = BTreeSet::new();
        // The admin API checks its token before anything else.
        let headers = if template.starts_with("/admin") {
            TestApp::admin_headers()
        } else {
            Vec::new()
        };
        for method in METHODS {
            let r = client
                .send(method, &concrete(template), &headers, bytes::Bytes::new())
                .await;
            if r.status != 405 {
                served.insert(method.to_string());
            } else {
                // A 405 names what the path does accept.
                let allow: BTreeSet<String> = r
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| m != "HEAD")
                    .collect();
                assert_eq!(allow, documented, "Allow of {template}");
            }
        }
        assert_eq!(served, documented, "methods of {template}");
    }
}

/// Every operation documents the answers every request can get (405 and
/// the error body), and every error response uses the one error schema.
#[test]
fn every_operation_documents_its_errors_with_the_error_body() {
    let doc = document();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("405"), "{method} {template}");
            assert!(
                op["operationId"].is_string(),
                "{method} {template} has no operationId"
            );
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {template} {status}"
                    );
                }
            }
        }
    }
}
