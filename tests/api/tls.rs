//! "Downstreams" (GUARANTEES.md): HTTPS downstreams, on the built binary, against the
//! simulator serving HTTPS with certificates generated here (loopback
//! only). A label is bought over TLS from a carrier whose certificate
//! `downstream.ca_file` vouches for; a certificate from an unknown CA is
//! refused: 503 `UPSTREAM_UNAVAILABLE` at once, `connect_error` counted,
//! the reason in the log, and nothing sent in plain text instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::support::*;
use waybill::tools::simulator::SimConfig;

/// A self-signed certificate for `localhost` and its key, as PEM files.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

async fn https_sim(cert: &Path, key: &Path) -> SocketAddr {
    start_sim(SimConfig {
        default_stock: 1000,
        tls: Some(waybill::tools::simulator::tls_server_config(cert, key).unwrap()),
        ..SimConfig::default()
    })
    .await
}

fn gateway(dir: &Path, base_url: &str, ca_file: Option<&Path>) -> Gateway {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = {:?}", p.display().to_string())
    });
    let config = write_gateway_config(
        dir,
        "",
        &format!(
            r#"
[[partners]]
name = "acme"
api_keys = ["acme-key"]
[downstream]
base_url = "{base_url}"
{ca}
timeout = "2s"
max_attempts = 2
backoff = {{ initial = "5ms", max = "20ms" }}
"#
        ),
    );
    Gateway::start(&config)
}

async fn carrier_connect_errors(addr: SocketAddr) -> f64 {
    let metrics = get(addr, "/metrics").await;
    metric(
        &String::from_utf8_lossy(&metrics.body),
        "waybill_downstream_requests_total",
        r#"service="carrier",outcome="connect_error""#,
    )
}

async fn buy(addr: SocketAddr, id: &str) -> Resp {
    Api::acme(addr)
        .buy_label(id, &format!("label-{id}"), "{}")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_is_bought_over_tls_from_a_carrier_the_ca_file_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "carrier");
    let sim = https_sim(&cert, &key).await;
    let gw = gateway(
        dir.path(),
        &format!("https://localhost:{}", sim.port()),
        Some(&cert),
    );
    let id = create_shipment(gw.addr, "o-tls").await;
    let r = buy(gw.addr, &id).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(
        r.json()["tracking_number"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(carrier_connect_errors(gw.addr).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "carrier");
    let (stranger, _) = certificate(dir.path(), "stranger");
    let sim = https_sim(&cert, &key).await;
    let url = format!("https://localhost:{}", sim.port());
    // Vouched for by another CA, and (no ca_file) by none of the
    // platform's roots: both refused.
    for (name, ca_file) in [
        ("ca_file", Some(stranger.as_path())),
        ("platform roots", None),
    ] {
        let gwdir = tempfile::tempdir().unwrap();
        let gw = gateway(gwdir.path(), &url, ca_file);
        let id = create_shipment(gw.addr, "o-stranger").await;
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), buy(gw.addr, &id))
            .await
            .expect("a TLS failure answers, never hangs");
        assert_eq!(r.status, 503, "{name}: {:?}", r.body);
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE", "{name}");
        assert!(carrier_connect_errors(gw.addr).await >= 1.0, "{name}");
        let logged = gw.await_log(1, |v| v["message"] == "cannot connect to the downstream");
        let error = logged[0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(error.contains("certificate"), "{name}: {error}");
        // The shipment is as it was: no label, nothing bought in clear.
        let shipment = Api::acme(gw.addr).shipment(&id).await;
        assert_eq!(shipment.json()["label"], serde_json::Value::Null, "{name}");
    }
}
