//! "The API described" (GUARANTEES.md): the API described. The document is served as kept in
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
/// the error body), and every error response uses the one error schema;
/// the console's page answers a browser in HTML, its sign-in form
/// included.
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
                let page = template == "/admin/ui" && response["content"]["text/html"].is_object();
                if (status.starts_with('4') || status.starts_with('5')) && !page {
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

/// Regressions found by the API fuzzer (`.ci/schemathesis`) against this
/// document: a write's body, when there is one, must be a JSON object (a
/// label bought with `null` for a body, a cancel with an array, were
/// accepted); `page` has a stated bound; a JSON number with a zero
/// fraction is an integer, as the document's `integer` says.
#[tokio::test]
async fn what_the_fuzzer_found_stays_fixed() {
    let (app, _sim) = app_with_sim(waybill::tools::simulator::SimConfig::default()).await;
    let id = new_shipment(&app, "o-fuzz").await;
    for (path, body) in [
        (format!("/v1/shipments/{id}/label"), "null"),
        (format!("/v1/shipments/{id}/cancel"), "[1, [2]]"),
        ("/v1/shipments".to_string(), "\"text\""),
    ] {
        let r = post(app.addr, &path, &headers(&format!("k-{path}")), body).await;
        assert_eq!(r.status, 400, "{path} {body}");
        assert_eq!(r.code(), "VALIDATION_FAILED", "{path} {body}");
    }
    let shipment = Api::acme(app.addr).shipment(&id).await;
    assert_eq!(shipment.json()["status"], "CREATED", "nothing was done");

    let r = Client::new(app.addr)
        .send(
            "GET",
            "/v1/orders?page=1000001",
            &headers("unused"),
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (400, "VALIDATION_FAILED")
    );

    let address = serde_json::json!({"name": "A", "street1": "1", "city": "C", "postal_code": "1", "country": "US"});
    let body = serde_json::json!({"order_id": "o-float", "carrier": "ups", "service": "ground",
        "from": address, "to": address,
        "parcels": [{"weight_grams": 100.0, "length_cm": 1e1, "width_cm": 1, "height_cm": 1}]});
    let r = Api::acme(app.addr).create_shipment("k-float", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // An order id no header can carry still makes one order: the keys
    // sent downstream are derived in a header-safe form.
    let odd = "ordré-😍\u{85}\u{1f}";
    let body = order_body(odd, "c-odd", "SKU-ODD", 1);
    let r = place_order(&app, "k-odd", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["order_id"], odd);
    let again = place_order(&app, "k-odd", &body).await;
    assert_eq!(again.body, r.body);
}

/// The document's country list is the one the server checks against.
#[test]
fn the_documented_countries_are_the_accepted_ones() {
    let doc = document();
    let listed: Vec<&str> =
        doc["components"]["schemas"]["Address"]["properties"]["country"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    assert_eq!(listed, waybill::domain::request::COUNTRIES);
}
