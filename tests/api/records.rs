//! Records as earlier releases wrote them (`fixtures/records`, taken from
//! a store filled through the API: shipments with and without a label,
//! one with a label's intent, one with a carrier event; orders confirmed,
//! declined and out of stock; final answers of each kind) are read by
//! this release on both stores, field for field. A record that changed
//! shape on reading would break every store upgraded in place.

use serde_json::Value;
use waybill::idempotency::{Decision, Fingerprint};
use waybill::store::Store;
use waybill::store::prelude::*;

fn lines(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/fixtures/records/{name}.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An idempotency key's record, as found under partner `acme` and key
/// `fx-<n>`. Its expiry is moved past the test's run: a stored answer is
/// replayed only until it expires.
fn key_records() -> Vec<(String, Value)> {
    lines("idempotency")
        .into_iter()
        .enumerate()
        .map(|(n, mut record)| {
            record["expires_at_ms"] = Value::from(u64::MAX / 4);
            (format!("fx-{n}"), record)
        })
        .collect()
}

/// What this release writes for a record it read: the same JSON, except
/// that a shipment's details no longer repeat its order id (the record
/// holds it once, at the top).
fn as_written(mut shipment: Value) -> Value {
    if let Some(details) = shipment["details"].as_object_mut() {
        details.remove("order_id");
    }
    shipment
}

/// Drops the fields whose absence and `null` mean the same.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

async fn reads_every_record(store: &dyn Store) {
    let shipments = lines("shipments");
    assert!(shipments.len() >= 4);
    for written in shipments {
        let id = written["shipment_id"].as_str().unwrap();
        let read = store
            .shipment(&id.into())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("shipment {id} is read"));
        assert_eq!(
            without_nulls(serde_json::to_value(&read).unwrap()),
            without_nulls(as_written(written.clone())),
            "shipment {id}"
        );
    }
    let orders = lines("orders");
    assert!(orders.len() >= 3);
    for written in orders {
        let (partner, id) = (
            written["partner"].as_str().unwrap(),
            written["order_id"].as_str().unwrap(),
        );
        let read = store
            .order(&waybill::domain::ids::OrderKey::new(
                partner.into(),
                id.into(),
            ))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {id} is read"));
        assert_eq!(
            without_nulls(serde_json::to_value(&read).unwrap()),
            without_nulls(written.clone()),
            "order {id}"
        );
    }
    let keys = key_records();
    assert!(keys.len() >= 5);
    for (key, written) in keys {
        let fingerprint: Fingerprint =
            serde_json::from_value(written["fingerprint"].clone()).unwrap();
        let decision = store
            .claim(&crate::support::acme_claim(
                key.as_str(),
                fingerprint,
                std::time::Duration::from_secs(30),
            ))
            .await
            .unwrap();
        assert_eq!(
            decision,
            Decision::Replay {
                status: written["status"].as_u64().unwrap() as u16,
                body: written["body"].as_str().unwrap().into(),
            },
            "key {key}"
        );
    }
}

#[tokio::test]
async fn records_written_by_earlier_releases_are_read_on_sled() {
    use waybill::store::sled::codec;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::store_config(dir.path());
    // A store made by the gateway, then filled behind its back, the way an
    // earlier release left it.
    waybill::store::SledStore::open(&cfg)
        .unwrap()
        .close()
        .unwrap();
    {
        let db = waybill::store::sled::open_db(&sled::Config::new().path(&cfg.path)).unwrap();
        let tree = db.open_tree("state").unwrap();
        for rec in lines("shipments") {
            let id = rec["shipment_id"].as_str().unwrap();
            tree.insert(codec::shipment_key(id), rec.to_string().as_bytes())
                .unwrap();
        }
        for rec in lines("orders") {
            let key = codec::order_key(
                rec["partner"].as_str().unwrap(),
                rec["order_id"].as_str().unwrap(),
            );
            tree.insert(key, rec.to_string().as_bytes()).unwrap();
        }
        for (key, rec) in key_records() {
            tree.insert(codec::idem_key("acme", &key), rec.to_string().as_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let store = waybill::store::SledStore::open(&cfg).unwrap();
    store.start_dispatcher(Vec::new()).unwrap();
    reads_every_record(&store).await;
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_earlier_releases_are_read_on_postgres() {
    let Some(schema) = crate::support::pg::schema().await else {
        return;
    };
    let store = schema.store(2);
    store.migrate().await.unwrap();
    let db = &schema.client;
    let name = &schema.name;
    for rec in lines("shipments") {
        db.execute(
            &format!(
                "INSERT INTO {name}.shipments (shipment_id, tracking_number, record)
                 VALUES ($1, $2, $3::text::jsonb)"
            ),
            &[
                &rec["shipment_id"].as_str(),
                &rec["tracking_number"].as_str(),
                &rec.to_string(),
            ],
        )
        .await
        .unwrap();
    }
    for rec in lines("orders") {
        db.execute(
            &format!(
                "INSERT INTO {name}.orders (partner, order_id, created_at_ms, record)
                 VALUES ($1, $2, $3, $4::text::jsonb)"
            ),
            &[
                &rec["partner"].as_str(),
                &rec["order_id"].as_str(),
                &rec["created_at_ms"].as_i64(),
                &rec.to_string(),
            ],
        )
        .await
        .unwrap();
    }
    for (key, rec) in key_records() {
        db.execute(
            &format!(
                "INSERT INTO {name}.idempotency_keys (partner, key, record, expires_at_ms)
                 VALUES ('acme', $1, $2::text::jsonb, $3)"
            ),
            &[&key, &rec.to_string(), &rec["expires_at_ms"].as_i64()],
        )
        .await
        .unwrap();
    }
    reads_every_record(&store).await;
}
