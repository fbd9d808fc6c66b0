//! Three `waybill serve` processes on one PostgreSQL database
//! (GUARANTEES.md: "Replicas on PostgreSQL"): every guarantee holds across
//! them. Intake
//! deduplicates across replicas, an idempotency key runs once whichever
//! replica gets each retry, and `kill -9` of one replica under load loses
//! nothing it acknowledged while the others finish its inbox.
//! `tests/support/pg.rs` says where the database is and what happens
//! without one.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;
use support::pg::{Schema, schema};
use support::*;
use waybill::webhook::signature::SchemeKind;

const SECRET: &str = "whsec_cmVwbGljYXMtdGVzdC1rZXktMDAwMDAwMDAwMA==";
const ADMIN: &str = "replicas-admin-token-0123456789abcdef";

/// The replicas' config, with `extra` (TOML) at the end.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let carrier = config::tracking_source(
        "carrier",
        config::Shape::StandardWebhooks,
        SECRET,
        &[("IN_TRANSIT", "IN_TRANSIT"), ("DELIVERED", "DELIVERED")],
    );
    let rest = format!("{}{carrier}\n{extra}", config::partner("acme", "acme-key"));
    config::write(
        dir,
        "",
        "backend = \"postgres\"\nurl = \"env:WAYBILL_DATABASE_URL\"\npool_size = 8",
        &rest,
    )
}

/// Three replicas on `schema`, started one after the other (each applies
/// or finds the migrations).
/// Three replicas on a schema of their own; None where no PostgreSQL is
/// reachable. The directory holds their config.
async fn three_replicas() -> Option<(Schema, tempfile::TempDir, Vec<Gateway>)> {
    let schema = schema().await?;
    let dir = tempfile::tempdir().unwrap();
    let gateways = replicas_with(dir.path(), &schema, "");
    Some((schema, dir, gateways))
}

fn replicas_with(dir: &Path, schema: &Schema, extra: &str) -> Vec<Gateway> {
    let config = write_config(dir, extra);
    (0..3)
        .map(|_| Gateway::start_with_env(&config, &[("WAYBILL_DATABASE_URL", &schema.url)]))
        .collect()
}

fn delivery(id: &str, tn: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({"type": "tracking.updated", "data": {"tracking_number": tn,
        "status": "IN_TRANSIT", "occurred_at": "2026-11-20T10:00:00Z"}})
    .to_string()
    .into_bytes();
    let h = signed(SchemeKind::StandardWebhooks, SECRET, &body, now(), id);
    (h, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_copies_over_three_replicas_get_one_202() {
    let Some((schema, _dir, gateways)) = three_replicas().await else {
        return;
    };
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let (h, body) = delivery("evt-one", "TN-ONE");
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (addr, h, body) = (addrs[i % 3], h.clone(), body.clone());
        sends.spawn(async move { post(addr, "/webhooks/carrier", &h, body).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(s) = sends.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        39,
        "{statuses:?}"
    );
    assert_eq!(schema.count("SELECT count(*) FROM events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_retries_of_one_key_over_three_replicas_create_one_shipment() {
    let Some((schema, _dir, gateways)) = three_replicas().await else {
        return;
    };
    let address =
        json!({"name": "A", "street1": "1", "city": "C", "postal_code": "1", "country": "US"});
    let body = json!({"order_id": "o-1", "carrier": "ups", "service": "ground", "from": address,
        "to": address, "parcels": [{"weight_grams": 100, "length_cm": 1, "width_cm": 1, "height_cm": 1}]})
    .to_string();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (addr, body) = (gateways[i % 3].addr, body.clone());
        sends.spawn(
            async move { post(addr, "/v1/shipments", &partner_headers("one-key"), body).await },
        );
    }
    let mut created = HashSet::new();
    while let Some(r) = sends.join_next().await {
        let r = r.unwrap();
        match r.status.as_u16() {
            201 => {
                created.insert(r.json()["shipment_id"].as_str().unwrap().to_string());
            }
            409 => assert_eq!(r.code(), "IDEMPOTENCY_IN_PROGRESS"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert_eq!(created.len(), 1, "every answer names the one shipment");
    assert_eq!(schema.count("SELECT count(*) FROM shipments").await, 1);
    // A retry after all that replays the stored answer, on any replica.
    for g in &gateways {
        let r = post(
            g.addr,
            "/v1/shipments",
            &partner_headers("one-key"),
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 201);
        assert!(created.contains(r.json()["shipment_id"].as_str().unwrap()));
    }
}

/// `kill -9` of one replica while three take a stream of deliveries:
/// every delivery any of them acknowledged is stored, and the two left
/// dispatch everything, the dead one's share included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_under_load_loses_nothing_it_acknowledged() {
    let Some((schema, _dir, mut gateways)) = three_replicas().await else {
        return;
    };
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut senders = tokio::task::JoinSet::new();
    for (r, addr) in addrs.iter().enumerate() {
        let (addr, acked) = (*addr, acked_tx.clone());
        senders.spawn(async move {
            for n in 0..300 {
                let id = format!("r{r}-{n}");
                let (h, body) = delivery(&id, &format!("TN-{}", n % 7));
                let answered = Client::new(addr)
                    .try_send("POST", "/webhooks/carrier", &h, body)
                    .await;
                match answered {
                    Ok(resp) if resp.status == 202 => {
                        let _ = acked.send(id);
                    }
                    // The killed replica stops answering: its sender stops.
                    _ => return,
                }
            }
        });
    }
    drop(acked_tx);
    // Kill replica 0 once it has acknowledged some of its deliveries.
    let mut acked = HashSet::new();
    while acked
        .iter()
        .filter(|id: &&String| id.starts_with("r0-"))
        .count()
        < 50
    {
        acked.insert(acked_rx.recv().await.expect("deliveries are acknowledged"));
    }
    let killed = gateways.remove(0);
    drop(killed);
    while let Some(id) = acked_rx.recv().await {
        acked.insert(id);
    }
    while senders.join_next().await.is_some() {}
    assert!(
        acked.len() > 50 + 2 * 250,
        "the others kept going: {}",
        acked.len()
    );

    // Nothing acknowledged is missing.
    let rows = schema
        .client
        .query(&schema.q("SELECT event_id FROM events"), &[])
        .await
        .unwrap();
    let stored: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");

    // The survivors dispatch everything, the dead replica's share too.
    let mut pending = i64::MAX;
    for _ in 0..500 {
        pending = schema.count("SELECT count(*) FROM inbox").await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(pending, 0, "the inbox drains on the replicas left");
    assert_eq!(
        schema
            .count(
                "SELECT count(*) FROM events e LEFT JOIN outcomes o ON o.seq = e.seq
             WHERE (o.record->>'attempts')::int IS DISTINCT FROM 1"
            )
            .await,
        0,
        "each event dispatched once"
    );
}

/// A TCP proxy to the database that can be cut: while cut it drops every
/// connection it carries and refuses new ones.
struct Proxy {
    addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cuts, watch) = tokio::sync::watch::channel(0u64);
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let mut cut_now = watch.clone();
                // Only cuts from now on end this connection.
                cut_now.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            cuts,
            task,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            self.cuts.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// "Replicas on PostgreSQL" (GUARANTEES.md): while the database is unreachable `/readyz` is 503 and
/// webhooks and writes answer 503 `STORE_UNAVAILABLE` with `Retry-After:
/// 5`, acknowledging nothing; once it is back the gateway is ready and
/// takes them again by itself, and the retried delivery is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_with_retry_after_and_heals_by_itself() {
    let Some(schema) = schema().await else {
        return;
    };
    let base: tokio_postgres::Config = support::pg::base_url().parse().unwrap();
    let port = base.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let url = schema
        .url
        .replace(&format!("127.0.0.1:{port}"), &proxy.addr.to_string());
    assert_ne!(url, schema.url, "the database is reached through the proxy");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[admin]\ntoken = \"{ADMIN}\""));
    let gateway = Gateway::start_with_env(&config, &[("WAYBILL_DATABASE_URL", &url)]);
    let addr = gateway.addr;
    assert_eq!(get(addr, "/readyz").await.status, 200);

    proxy.set_cut(true);
    // "One behaviour, either store" (GUARANTEES.md): every route that reads the
    // store, admin included, answers 503 with Retry-After, never 500.
    let admin = vec![("Authorization".to_string(), format!("Bearer {ADMIN}"))];
    let mut admin_json = admin.clone();
    admin_json.push(("Content-Type".into(), "application/json".into()));
    for (method, path, headers, body) in [
        ("GET", "/admin/events", &admin, ""),
        ("GET", "/admin/events?tracking_number=TN-OUT", &admin, ""),
        ("GET", "/admin/events/carrier/evt-1", &admin, ""),
        ("POST", "/admin/events/carrier/evt-1/redeliver", &admin, ""),
        (
            "POST",
            "/admin/redeliver",
            &admin_json,
            r#"{"outcome":"dead"}"#,
        ),
        (
            "POST",
            "/admin/redeliver",
            &admin_json,
            r#"{"outcome":"parked","dry_run":true}"#,
        ),
        ("GET", "/v1/shipments/shp_0193", &partner_headers("k"), ""),
        ("GET", "/v1/orders", &partner_headers("k"), ""),
        ("GET", "/v1/orders/o-1", &partner_headers("k"), ""),
    ] {
        let r = Client::new(addr)
            .send(method, path, headers, body.to_string())
            .await;
        assert_eq!(r.status, 503, "{method} {path}: {:?}", r.body);
        assert_eq!(r.code(), "STORE_UNAVAILABLE", "{method} {path}");
        assert_eq!(r.header("retry-after"), Some("5"), "{method} {path}");
    }
    let (h, body) = delivery("evt-outage", "TN-OUT");
    let refused = post(addr, "/webhooks/carrier", &h, body.clone()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.code(), "STORE_UNAVAILABLE");
    assert_eq!(refused.header("retry-after"), Some("5"));
    let address =
        json!({"name": "A", "street1": "1", "city": "C", "postal_code": "1", "country": "US"});
    let shipment = json!({"order_id": "o-out", "carrier": "ups", "service": "ground",
        "from": address, "to": address,
        "parcels": [{"weight_grams": 100, "length_cm": 1, "width_cm": 1, "height_cm": 1}]})
    .to_string();
    let write = post(addr, "/v1/shipments", &partner_headers("k-out"), shipment).await;
    assert_eq!(write.status, 503, "{:?}", write.body);
    assert_eq!(write.code(), "STORE_UNAVAILABLE");
    assert!(
        eventually(10, async || get(addr, "/readyz").await.status == 503).await,
        "/readyz turns 503 while the database is away"
    );
    assert_eq!(get(addr, "/healthz").await.status, 200, "alive all along");

    proxy.set_cut(false);
    assert!(
        eventually(10, async || get(addr, "/readyz").await.status == 200).await,
        "ready again once the database is back"
    );
    let stored = post(addr, "/webhooks/carrier", &h, body.clone()).await;
    assert_eq!(stored.status, 202, "{:?}", stored.body);
    assert_eq!(post(addr, "/webhooks/carrier", &h, body).await.status, 200);
    assert_eq!(schema.count("SELECT count(*) FROM events").await, 1);
    // The dispatcher, which failed all through the outage, works again.
    let schema = &schema;
    assert!(
        eventually(10, async || {
            schema.count("SELECT count(*) FROM outcomes").await == 1
        })
        .await,
        "the event is dispatched after the outage"
    );
}

/// A paid order whose label could not be bought waits in the fulfilment
/// queue; `kill -9` of the replica that took it does not strand it: the
/// others fulfil it once the carrier is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_leaves_its_pending_fulfilment_to_the_others() {
    let Some(schema) = schema().await else {
        return;
    };
    let (sim, split) = sim_with_carrier_down().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateways = replicas_with(
        dir.path(),
        &schema,
        &format!(
            "[downstream]\nbase_url = \"http://{}\"\ntimeout = \"1s\"\nbackoff = {{ initial = \"5ms\", max = \"20ms\" }}",
            split.addr
        ),
    );
    let body = order_body("o-stranded", "cus-1", "SKU-1", 1).to_string();
    let placed = post(
        gateways[0].addr,
        "/v1/orders",
        &partner_headers("k-stranded"),
        body,
    )
    .await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(
        placed.json()["status"],
        "PAYMENT_SUCCESS_PENDING_FULFILLMENT"
    );
    // The replica that charged it dies before its first background try.
    drop(gateways.remove(0));
    split
        .carrier_down
        .store(false, std::sync::atomic::Ordering::SeqCst);

    let survivor = gateways[0].addr;
    let confirmed = eventually(10, async || {
        let order = Api::acme(survivor).order("o-stranded").await.json();
        order["status"] == "CONFIRMED"
    })
    .await;
    assert!(confirmed, "a surviving replica fulfilled the order");
    let ledger = get(sim, "/_sim/ledger").await.json();
    let charges = keyed_rows(&ledger, "charges", "charge:acme:o-stranded").len();
    assert_eq!(charges, 1, "charged once");
    assert_eq!(schema.count("SELECT count(*) FROM fulfilments").await, 0);
}
