//! Dispatch and the writes that change shipments, orders and idempotency
//! keys, each inside the caller's transaction. Rows are read `FOR UPDATE`
//! and written back before the commit; the rules themselves are the
//! records' (`store::records`), shared with the embedded adapter.
//!
//! Lock order, to keep transactions from waiting on each other in a
//! cycle: the advisory locks of the tracking numbers and order ids a
//! transaction may park or unpark under, all at once and sorted; then
//! rows. Dispatch claims its pending events first, but no other
//! transaction locks a pending event.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{EVENT_COLUMNS, Tx, db_err, ms};
use crate::clock::now_ms;
use crate::config::SourceConfig;
use crate::idempotency::{self, Decision};
use crate::mapping::{Fields, Interpretation, interpret, interpret_fields};
use crate::store::{
    CancelAnswer, Completion, DispatchOutcome, EventFilter, EventMeta, LabelRecorded, OrderCreated,
    OrderRecord, OrderWrite, OutcomeRecord, Search, ShipmentRecord, StateError, StoreError,
    StoredEvent,
};

type Sources = HashMap<String, SourceConfig>;

/// What dispatch counted: (source, outcome) per event.
type Counted = Vec<(String, DispatchOutcome)>;

/// The advisory-lock name of a tracking number or an order id.
fn tracking_lock(tn: &str) -> String {
    format!("t:{tn}")
}

fn order_lock(order_id: &str) -> String {
    format!("o:{order_id}")
}

/// An event of a source the config no longer has.
fn gone(source: &str) -> Interpretation {
    Interpretation::Dead {
        reason: format!("source {source} is no longer configured"),
    }
}

/// A stored event read again from its body with the current config
/// (redelivery, unparking).
fn reread(
    sources: &Sources,
    source: &str,
    event_id: &str,
    received_at_ms: u64,
    body: &[u8],
) -> Interpretation {
    match sources.get(source) {
        None => gone(source),
        Some(cfg) => interpret(cfg, event_id, received_at_ms, body),
    }
}

/// The key an interpretation parks under, if any.
fn lock_of(interpretation: &Interpretation) -> Option<String> {
    match interpretation {
        Interpretation::Tracking {
            tracking_number, ..
        } => Some(tracking_lock(tracking_number)),
        Interpretation::Payment { order_id, .. } => Some(order_lock(order_id)),
        _ => None,
    }
}

/// Takes the transaction's advisory locks, in one sorted statement.
async fn lock(tx: &Tx<'_>, keys: impl IntoIterator<Item = String>) -> Result<(), StoreError> {
    let keys: Vec<String> = keys
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(h) FROM (
             SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::text[]) AS k ORDER BY 1
         ) AS sorted",
        &[&keys],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// One JSON record from the first column of a query's only row.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    client: &(impl tokio_postgres::GenericClient + Sync),
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, StoreError> {
    let row = client.query_opt(sql, params).await.map_err(db_err)?;
    row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(db_err))
        .transpose()
}

fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(db_err)
}

/// The rows one transaction reads and changes, cached so that two events
/// for one shipment or order in it see each other.
struct Pass<'a> {
    tx: &'a Tx<'a>,
    shipments: HashMap<String, ShipmentRecord>,
    by_tracking: HashMap<String, Option<String>>,
    orders: HashMap<(String, String), OrderRecord>,
    partners: HashMap<String, Vec<String>>,
    dirty_shipments: BTreeSet<String>,
    dirty_orders: BTreeSet<(String, String)>,
    outcomes: Vec<(i64, OutcomeRecord)>,
    counted: Counted,
}

impl<'a> Pass<'a> {
    fn new(tx: &'a Tx<'a>) -> Pass<'a> {
        Pass {
            tx,
            shipments: HashMap::new(),
            by_tracking: HashMap::new(),
            orders: HashMap::new(),
            partners: HashMap::new(),
            dirty_shipments: BTreeSet::new(),
            dirty_orders: BTreeSet::new(),
            outcomes: Vec::new(),
            counted: Vec::new(),
        }
    }

    fn keep_shipment(&mut self, rec: ShipmentRecord) {
        if let Some(tn) = &rec.tracking_number {
            self.by_tracking
                .insert(tn.clone(), Some(rec.shipment_id.clone()));
        }
        self.shipments.insert(rec.shipment_id.clone(), rec);
    }

    async fn shipment_mut(&mut self, id: &str) -> Result<Option<&mut ShipmentRecord>, StoreError> {
        if !self.shipments.contains_key(id) {
            let found: Option<ShipmentRecord> = read_json(
                self.tx,
                "SELECT record::text FROM shipments WHERE shipment_id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
            match found {
                Some(rec) => self.keep_shipment(rec),
                None => return Ok(None),
            }
        }
        Ok(self.shipments.get_mut(id))
    }

    /// The shipment with this tracking number, locked.
    async fn shipment_for(&mut self, tn: &str) -> Result<Option<String>, StoreError> {
        if let Some(hit) = self.by_tracking.get(tn) {
            return Ok(hit.clone());
        }
        let found: Option<ShipmentRecord> = read_json(
            self.tx,
            "SELECT record::text FROM shipments WHERE tracking_number = $1 FOR UPDATE",
            &[&tn],
        )
        .await?;
        let id = found.as_ref().map(|r| r.shipment_id.clone());
        match found {
            Some(rec) if !self.shipments.contains_key(&rec.shipment_id) => self.keep_shipment(rec),
            _ => {}
        }
        self.by_tracking.insert(tn.to_string(), id.clone());
        Ok(id)
    }

    /// The partners with an order of this id, their orders locked.
    async fn order_partners(&mut self, order_id: &str) -> Result<Vec<String>, StoreError> {
        if let Some(found) = self.partners.get(order_id) {
            return Ok(found.clone());
        }
        let rows = self
            .tx
            .query(
                "SELECT partner, record::text FROM orders WHERE order_id = $1
                 ORDER BY partner FOR UPDATE",
                &[&order_id],
            )
            .await
            .map_err(db_err)?;
        let mut found = Vec::new();
        for row in rows {
            let partner: String = row.get(0);
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.orders.entry((partner.clone(), order_id.to_string()))
            {
                slot.insert(serde_json::from_str(row.get(1)).map_err(db_err)?);
            }
            found.push(partner);
        }
        self.partners.insert(order_id.to_string(), found.clone());
        Ok(found)
    }

    async fn order_mut(
        &mut self,
        partner: &str,
        order_id: &str,
    ) -> Result<Option<&mut OrderRecord>, StoreError> {
        let key = (partner.to_string(), order_id.to_string());
        if !self.orders.contains_key(&key) {
            let found: Option<OrderRecord> = read_json(
                self.tx,
                "SELECT record::text FROM orders WHERE partner = $1 AND order_id = $2 FOR UPDATE",
                &[&partner, &order_id],
            )
            .await?;
            match found {
                Some(rec) => {
                    self.orders.insert(key.clone(), rec);
                }
                None => return Ok(None),
            }
        }
        Ok(self.orders.get_mut(&key))
    }

    /// Applies one interpretation of event `seq`, dispatched `attempts`
    /// times before, and records its outcome.
    async fn apply(
        &mut self,
        seq: i64,
        source: &str,
        attempts: u32,
        interpretation: Interpretation,
    ) -> Result<OutcomeRecord, StoreError> {
        let mut record = OutcomeRecord::attempt(attempts);
        if !record.settle_plain(&interpretation) {
            match interpretation {
                Interpretation::Tracking {
                    tracking_number,
                    event,
                } => match self.shipment_for(&tracking_number).await? {
                    None => record.park_for_tracking(&tracking_number),
                    Some(id) => {
                        if let Some(shipment) = self.shipment_mut(&id).await? {
                            record.apply_tracking(shipment, event);
                            self.dirty_shipments.insert(id);
                        }
                    }
                },
                Interpretation::Payment { order_id, event } => {
                    let partners = self.order_partners(&order_id).await?;
                    if partners.is_empty() {
                        record.park_for_order(&order_id);
                    } else {
                        let orders = self
                            .orders
                            .iter_mut()
                            .filter(|((p, o), _)| *o == order_id && partners.contains(p))
                            .map(|(_, rec)| rec);
                        record.apply_payment(orders, &event);
                        for p in partners {
                            self.dirty_orders.insert((p, order_id.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        if record.outcome != DispatchOutcome::Stored {
            self.counted.push((source.to_string(), record.outcome));
        }
        self.outcomes.push((seq, record.clone()));
        Ok(record)
    }

    /// Dispatches again every event parked under `value` in `column`
    /// (`tracking_number` or `order_id`), read with the current config.
    async fn unpark(
        &mut self,
        sources: &Sources,
        column: &str,
        value: &str,
    ) -> Result<Counted, StoreError> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT seq, source, event_id, received_at_ms, body, attempts FROM events
                     WHERE {column} = $1 AND outcome->>'outcome' = 'parked'
                     ORDER BY seq FOR UPDATE"
                ),
                &[&value],
            )
            .await
            .map_err(db_err)?;
        let mut unparked = Vec::new();
        for row in rows {
            let source: String = row.get(1);
            let event_id: String = row.get(2);
            let received_at_ms = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
            let interpretation = reread(sources, &source, &event_id, received_at_ms, row.get(4));
            let attempts = u32::try_from(row.get::<_, i32>(5)).unwrap_or(0);
            let out = self
                .apply(row.get(0), &source, attempts, interpretation)
                .await?;
            unparked.push((source, out.outcome));
        }
        Ok(unparked)
    }

    /// Gives a shipment its label and applies the events parked for its
    /// tracking number (whose advisory lock the caller holds).
    async fn label(
        &mut self,
        sources: &Sources,
        shipment_id: &str,
        tracking_number: &str,
        label: serde_json::Value,
        at_ms: u64,
    ) -> Result<Counted, StateError> {
        if let Some(owner) = self.shipment_for(tracking_number).await?
            && owner != shipment_id
        {
            return Err(StateError::Conflict(format!(
                "tracking number {tracking_number} belongs to shipment {owner}"
            )));
        }
        self.shipment_mut(shipment_id)
            .await?
            .ok_or(StateError::NotFound)?
            .give_label(tracking_number, label, at_ms)?;
        self.dirty_shipments.insert(shipment_id.to_string());
        self.by_tracking
            .insert(tracking_number.to_string(), Some(shipment_id.to_string()));
        Ok(self
            .unpark(sources, "tracking_number", tracking_number)
            .await?)
    }

    /// Writes what changed; what dispatch counted.
    async fn finish(self) -> Result<Counted, StoreError> {
        for id in &self.dirty_shipments {
            if let Some(rec) = self.shipments.get(id) {
                self.tx
                    .execute(
                        "UPDATE shipments SET tracking_number = $2, record = $3::text::jsonb
                         WHERE shipment_id = $1",
                        &[id, &rec.tracking_number, &json(rec)?],
                    )
                    .await
                    .map_err(db_err)?;
            }
        }
        for key in &self.dirty_orders {
            if let Some(rec) = self.orders.get(key) {
                write_order_row(self.tx, rec).await?;
            }
        }
        if !self.outcomes.is_empty() {
            let seqs: Vec<i64> = self.outcomes.iter().map(|(s, _)| *s).collect();
            let attempts: Vec<i32> = self
                .outcomes
                .iter()
                .map(|(_, o)| i32::try_from(o.attempts).unwrap_or(i32::MAX))
                .collect();
            let outcomes = self
                .outcomes
                .iter()
                .map(|(_, o)| json(o))
                .collect::<Result<Vec<_>, _>>()?;
            self.tx
                .execute(
                    "UPDATE events e SET outcome = u.o::jsonb, attempts = u.a
                     FROM UNNEST($1::int8[], $2::text[], $3::int4[]) AS u(s, o, a)
                     WHERE e.seq = u.s",
                    &[&seqs, &outcomes, &attempts],
                )
                .await
                .map_err(db_err)?;
        }
        Ok(self.counted)
    }
}

async fn write_order_row(tx: &Tx<'_>, rec: &OrderRecord) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE orders SET record = $3::text::jsonb WHERE partner = $1 AND order_id = $2",
        &[&rec.partner, &rec.order_id, &json(rec)?],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Dispatches up to `limit` pending events, oldest first, skipping those
/// another transaction holds; how many, and what it counted.
pub(super) async fn dispatch(
    tx: &Tx<'_>,
    sources: &Sources,
    limit: i64,
) -> Result<(usize, Counted), StateError> {
    let claimed = tx
        .query(
            "SELECT seq, source, event_id, received_at_ms, fields::text, attempts FROM events
             WHERE dispatch AND outcome IS NULL
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await
        .map_err(db_err)?;
    let mut work = Vec::with_capacity(claimed.len());
    for row in &claimed {
        let source: String = row.get(1);
        let event_id: String = row.get(2);
        let received_at_ms = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
        // Fields that are there and cannot be read are no absent ones:
        // the event goes to the dead letter saying so (a redelivery reads
        // them from the body again), never quietly out of dispatch.
        let fields: Option<Result<Fields, _>> = row
            .get::<_, Option<&str>>(4)
            .map(serde_json::from_str::<Fields>);
        let interpretation = match (sources.get(&source), fields) {
            (None, _) => gone(&source),
            (Some(cfg), Some(Ok(fields))) => {
                interpret_fields(cfg, &event_id, received_at_ms, &fields)
            }
            (Some(_), Some(Err(e))) => {
                let _ = StoreError::corrupt(format!("the mapped fields of {source}/{event_id}"));
                Interpretation::Dead {
                    reason: format!(
                        "the mapped fields stored at intake cannot be read ({e}); redeliver to read them from the body again"
                    ),
                }
            }
            (Some(_), None) => Interpretation::NotDispatched,
        };
        let attempts = u32::try_from(row.get::<_, i32>(5)).unwrap_or(0);
        work.push((row.get::<_, i64>(0), source, attempts, interpretation));
    }
    lock(tx, work.iter().filter_map(|(_, _, _, i)| lock_of(i))).await?;
    let mut pass = Pass::new(tx);
    let n = work.len();
    for (seq, source, attempts, interpretation) in work {
        pass.apply(seq, &source, attempts, interpretation).await?;
    }
    Ok((n, pass.finish().await?))
}

/// Dispatches a parked or dead event again with the current config.
pub(super) async fn redeliver(
    tx: &Tx<'_>,
    sources: &Sources,
    source: &str,
    event_id: &str,
) -> Result<(OutcomeRecord, Counted, DispatchOutcome), StateError> {
    let read = "SELECT seq, received_at_ms, body, attempts, outcome->>'outcome' FROM events
                WHERE source = $1 AND event_id = $2";
    let row = tx
        .query_opt(read, &[&source, &event_id])
        .await
        .map_err(db_err)?
        .ok_or(StateError::NotFound)?;
    let received_at_ms = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    let interpretation = reread(sources, source, event_id, received_at_ms, row.get(2));
    lock(tx, lock_of(&interpretation)).await?;
    // Read again under the row lock: another process may have moved it.
    let row = tx
        .query_opt(&format!("{read} FOR UPDATE"), &[&source, &event_id])
        .await
        .map_err(db_err)?
        .ok_or(StateError::NotFound)?;
    let before = match row.get::<_, Option<&str>>(4) {
        Some("parked") => DispatchOutcome::Parked,
        Some("dead") => DispatchOutcome::Dead,
        _ => {
            return Err(StateError::NotRedeliverable(format!(
                "event {source}/{event_id} is neither parked nor dead"
            )));
        }
    };
    let attempts = u32::try_from(row.get::<_, i32>(3)).unwrap_or(0);
    let mut pass = Pass::new(tx);
    let out = pass
        .apply(row.get(0), source, attempts, interpretation)
        .await?;
    Ok((out, pass.finish().await?, before))
}

/// Claims a key: a new row with a lease, or the existing row locked and
/// decided on. Concurrent claims of one key wait for the first insert's
/// commit, so exactly one of them runs.
pub(super) async fn claim(
    tx: &Tx<'_>,
    partner: &str,
    key: &str,
    fingerprint: &str,
    lease: std::time::Duration,
    epoch: u64,
) -> Result<Decision, StateError> {
    let now = now_ms();
    let claim = json(&idempotency::Record::InProgress {
        fingerprint: fingerprint.to_string(),
        epoch,
        lease_until_ms: now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(0)),
    })?;
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (partner, key, record) VALUES ($1, $2, $3::text::jsonb)
             ON CONFLICT DO NOTHING",
            &[&partner, &key, &claim],
        )
        .await
        .map_err(db_err)?;
    if inserted == 1 {
        return Ok(Decision::Run);
    }
    let record: Option<idempotency::Record> = read_json(
        tx,
        "SELECT record::text FROM idempotency_keys WHERE partner = $1 AND key = $2 FOR UPDATE",
        &[&partner, &key],
    )
    .await?;
    let decision = idempotency::decide_leased(record.as_ref(), fingerprint, now);
    if decision == Decision::Run {
        tx.execute(
            "UPDATE idempotency_keys SET record = $3::text::jsonb, expires_at_ms = NULL
             WHERE partner = $1 AND key = $2",
            &[&partner, &key, &claim],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(decision)
}

/// Stores a request's final answer under its key.
pub(super) async fn put_completion(tx: &Tx<'_>, c: &Completion) -> Result<(), StateError> {
    let expires = match &c.record {
        idempotency::Record::Done { expires_at_ms, .. } => Some(ms(*expires_at_ms)),
        idempotency::Record::InProgress { .. } => None,
    };
    tx.execute(
        "INSERT INTO idempotency_keys (partner, key, record, expires_at_ms)
         VALUES ($1, $2, $3::text::jsonb, $4)
         ON CONFLICT (partner, key) DO UPDATE SET record = EXCLUDED.record,
             expires_at_ms = EXCLUDED.expires_at_ms",
        &[&c.partner, &c.key, &json(&c.record)?, &expires],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn complete(tx: &Tx<'_>, c: Option<&Completion>) -> Result<(), StateError> {
    match c {
        Some(c) => put_completion(tx, c).await,
        None => Ok(()),
    }
}

async fn insert_shipment(tx: &Tx<'_>, rec: &ShipmentRecord) -> Result<(), StateError> {
    let inserted = tx
        .execute(
            "INSERT INTO shipments (shipment_id, tracking_number, record)
             VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING",
            &[&rec.shipment_id, &rec.tracking_number, &json(rec)?],
        )
        .await
        .map_err(db_err)?;
    if inserted == 0 {
        return Err(StateError::Conflict(format!(
            "shipment {} exists",
            rec.shipment_id
        )));
    }
    Ok(())
}

pub(super) async fn create_shipment(
    tx: &Tx<'_>,
    rec: &ShipmentRecord,
    completion: Option<&Completion>,
) -> Result<(), StateError> {
    insert_shipment(tx, rec).await?;
    complete(tx, completion).await
}

pub(super) async fn record_intent(
    tx: &Tx<'_>,
    shipment_id: &str,
    request: serde_json::Value,
) -> Result<serde_json::Value, StateError> {
    let mut pass = Pass::new(tx);
    let (request, changed) = pass
        .shipment_mut(shipment_id)
        .await?
        .ok_or(StateError::NotFound)?
        .intend_label(request)?;
    if changed {
        pass.dirty_shipments.insert(shipment_id.to_string());
        pass.finish().await?;
    }
    Ok(request)
}

pub(super) async fn record_label(
    tx: &Tx<'_>,
    sources: &Sources,
    shipment_id: &str,
    tracking_number: &str,
    label: serde_json::Value,
    at_ms: u64,
    completion: Option<&Completion>,
) -> Result<(LabelRecorded, Counted), StateError> {
    lock(tx, [tracking_lock(tracking_number)]).await?;
    let mut pass = Pass::new(tx);
    let unparked = pass
        .label(sources, shipment_id, tracking_number, label, at_ms)
        .await?;
    let shipment = pass
        .shipments
        .get(shipment_id)
        .cloned()
        .ok_or(StateError::NotFound)?;
    let counted = pass.finish().await?;
    complete(tx, completion).await?;
    Ok((LabelRecorded { shipment, unparked }, counted))
}

pub(super) async fn cancel(
    tx: &Tx<'_>,
    shipment_id: &str,
    at_ms: u64,
    voided: bool,
    answer: Option<CancelAnswer>,
) -> Result<ShipmentRecord, StateError> {
    let mut pass = Pass::new(tx);
    let shipment = pass
        .shipment_mut(shipment_id)
        .await?
        .ok_or(StateError::NotFound)?;
    shipment.cancel(at_ms, voided)?;
    let record = shipment.clone();
    pass.dirty_shipments.insert(shipment_id.to_string());
    pass.finish().await?;
    if let Some(a) = answer {
        put_completion(tx, &a.completion(&record)).await?;
    }
    Ok(record)
}

pub(super) async fn create_order(
    tx: &Tx<'_>,
    sources: &Sources,
    rec: OrderRecord,
) -> Result<(OrderCreated, Counted), StateError> {
    lock(tx, [order_lock(&rec.order_id)]).await?;
    let inserted = tx
        .execute(
            "INSERT INTO orders (partner, order_id, created_at_ms, record)
             VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
            &[
                &rec.partner,
                &rec.order_id,
                &ms(rec.created_at_ms),
                &json(&rec)?,
            ],
        )
        .await
        .map_err(db_err)?;
    let mut pass = Pass::new(tx);
    if inserted == 0 {
        let existing = pass
            .order_mut(&rec.partner, &rec.order_id)
            .await?
            .cloned()
            .ok_or(StateError::NotFound)?;
        return Ok((OrderCreated::Existing(existing), Vec::new()));
    }
    pass.unpark(sources, "order_id", &rec.order_id).await?;
    let stored = pass
        .order_mut(&rec.partner, &rec.order_id)
        .await?
        .cloned()
        .ok_or(StateError::NotFound)?;
    let counted = pass.finish().await?;
    Ok((OrderCreated::Created(stored), counted))
}

pub(super) async fn write_order(
    tx: &Tx<'_>,
    sources: &Sources,
    w: OrderWrite,
) -> Result<(OrderRecord, Counted), StateError> {
    let OrderWrite {
        mut order,
        new_shipment,
        label,
        completion,
        unschedule,
    } = w;
    let mut keys = vec![order_lock(&order.order_id)];
    keys.extend(label.as_ref().map(|l| tracking_lock(&l.tracking_number)));
    lock(tx, keys).await?;
    let mut pass = Pass::new(tx);
    let current = pass
        .order_mut(&order.partner, &order.order_id)
        .await?
        .ok_or(StateError::NotFound)?;
    // The payment history is dispatch's to change.
    order.payments = current.payments.clone();
    *current = order.clone();
    pass.dirty_orders
        .insert((order.partner.clone(), order.order_id.clone()));
    if let Some(rec) = new_shipment {
        insert_shipment(tx, &rec).await?;
        pass.keep_shipment(rec);
    }
    if let Some(l) = label {
        let shipment_id = order
            .progress
            .shipment_id
            .clone()
            .ok_or(StateError::NotFound)?;
        pass.label(sources, &shipment_id, &l.tracking_number, l.label, l.at_ms)
            .await?;
    }
    let (partner, order_id) = (&order.partner, &order.order_id);
    if let Some(due) = unschedule {
        tx.execute(
            "DELETE FROM fulfilments WHERE partner = $1 AND order_id = $2 AND due_ms = $3",
            &[partner, order_id, &ms(due)],
        )
        .await
        .map_err(db_err)?;
    }
    if let Some(due) = order.fulfil_due_ms {
        tx.execute(
            "INSERT INTO fulfilments (partner, order_id, due_ms) VALUES ($1, $2, $3)
             ON CONFLICT (partner, order_id) DO UPDATE SET due_ms = EXCLUDED.due_ms,
                 claimed_until_ms = 0",
            &[partner, order_id, &ms(due)],
        )
        .await
        .map_err(db_err)?;
    }
    complete(tx, completion.as_ref()).await?;
    let counted = pass.finish().await?;
    Ok((order, counted))
}

/// A stored event from a row of `EVENT_COLUMNS` (and `body` after them
/// when `with_body`), with its outcome.
pub(super) fn stored_event(
    row: &Row,
    with_body: bool,
) -> Result<(StoredEvent, Option<OutcomeRecord>), StoreError> {
    let headers: Vec<(String, String)> =
        serde_json::from_str(row.get::<_, &str>(6)).map_err(db_err)?;
    let outcome = row
        .get::<_, Option<&str>>(9)
        .map(serde_json::from_str)
        .transpose()
        .map_err(db_err)?;
    let event = StoredEvent {
        seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        source: row.get(1),
        event_id: row.get(2),
        meta: EventMeta {
            received_at_ms: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
            event_type: row.get(4),
            dispatch: row.get(5),
            headers,
            tracking_number: row.get(7),
            order_id: row.get(8),
        },
        body: if with_body { row.get(10) } else { Vec::new() },
    };
    Ok((event, outcome))
}

/// Events matching every given criterion, newest first. The planner picks
/// the index; a page that filled up has a next page from its last event.
pub(super) async fn search(
    client: &(impl tokio_postgres::GenericClient + Sync),
    filter: &EventFilter,
    limit: usize,
) -> Result<Search, StoreError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut conditions = Vec::new();
    let mut when = |cond: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        conditions.push(cond.replace('$', &format!("${}", params.len())));
    };
    let text = |s: &String| -> Box<dyn ToSql + Sync + Send> { Box::new(s.clone()) };
    if let Some(v) = &filter.source {
        when("source = $", text(v));
    }
    if let Some(v) = &filter.event_id {
        when("event_id = $", text(v));
    }
    if let Some(v) = &filter.tracking_number {
        when("tracking_number = $", text(v));
    }
    if let Some(v) = &filter.order_id {
        when("order_id = $", text(v));
    }
    if let Some(v) = &filter.event_type {
        when("event_type = $", text(v));
    }
    if let Some(v) = &filter.outcome {
        when(
            "COALESCE(outcome->>'outcome', CASE WHEN dispatch THEN 'pending' ELSE 'stored' END) = $",
            text(v),
        );
    }
    if let Some(v) = filter.since_ms {
        when("received_at_ms >= $", Box::new(ms(v)));
    }
    if let Some(v) = filter.until_ms {
        when("received_at_ms <= $", Box::new(ms(v)));
    }
    if let Some(v) = filter.before_seq {
        when("seq < $", Box::new(ms(v)));
    }
    let limit_at = params.len() + 1;
    params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events {} ORDER BY seq DESC LIMIT ${limit_at}",
        if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        }
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &refs).await.map_err(db_err)?;
    let events = rows
        .iter()
        .map(|r| stored_event(r, false))
        .collect::<Result<Vec<_>, _>>()?;
    let single = filter.source.is_some() && filter.event_id.is_some();
    let next_before = match events.last() {
        Some((last, _)) if events.len() >= limit && !single => Some(last.seq),
        _ => None,
    };
    Ok(Search {
        events,
        complete: true,
        next_before,
    })
}
