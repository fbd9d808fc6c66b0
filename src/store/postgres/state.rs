//! The PostgreSQL unit of work of `store::core` ([`PgUnit`]: one
//! transaction, its rows read `FOR UPDATE` and written back before the
//! commit), dispatch's claim of pending events, and the idempotency keys.
//! What each write does is the core's, shared with the embedded adapter.
//!
//! Lock order, to keep transactions from waiting on each other in a
//! cycle: the advisory locks of the tracking numbers and order ids a
//! transaction may park or unpark under, all at once and sorted; then
//! rows. Dispatch claims its pending events first, but no other
//! transaction locks a pending event.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{EVENT_COLUMNS, EVENTS_WITH_OUTCOMES, Tx, db_err, ms, unsigned};
use crate::clock::now_ms;
use crate::domain::ids::{OrderId, OrderKey, PartnerName, ShipmentId, TrackingNumber};
use crate::idempotency::{self, Decision};
use crate::store::core::{
    Counted, EventRows, OrderRows, ParkKey, ShipmentRows, Sources, Stored, Unit, Work, gone,
};
use crate::store::{
    Claim, Completion, EventFilter, EventMeta, OrderRecord, OutcomeRecord, Search, ShipmentRecord,
    StateError, StoreError, StoredEvent,
};
use crate::webhook::mapping::{Fields, Interpretation, interpret_fields};

/// One JSON record, `what` (named in the error when it cannot be read),
/// from the first column of a query's only row.
/// The one number a `SELECT COUNT(*) …` answers.
pub(super) async fn count(
    client: &(impl tokio_postgres::GenericClient + Sync),
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<i64, StoreError> {
    let row = client.query_one(sql, params).await.map_err(db_err)?;
    Ok(row.get(0))
}

pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    client: &(impl tokio_postgres::GenericClient + Sync),
    what: impl FnOnce() -> String + Send,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, StoreError> {
    let row = client.query_opt(sql, params).await.map_err(db_err)?;
    row.map(|r| {
        serde_json::from_str(r.get::<_, &str>(0))
            .map_err(|e| StoreError::corrupt(format!("{} ({e})", what())))
    })
    .transpose()
}

/// The JSON records in the first column of every row of a query, each
/// named by the second column when it cannot be read.
pub(super) async fn read_all_json<T: serde::de::DeserializeOwned>(
    client: &(impl tokio_postgres::GenericClient + Sync),
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<T>, StoreError> {
    let rows = client.query(sql, params).await.map_err(db_err)?;
    rows.iter()
        .map(|r| {
            serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| {
                StoreError::corrupt(format!("the record {} ({e})", r.get::<_, &str>(1)))
            })
        })
        .collect()
}

fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(db_err)
}

/// The columns `PgUnit::stored` reads, in its order.
const STORED: &str =
    "e.seq, e.source, e.event_id, e.received_at_ms, o.record::text, e.body, e.body_lz4";

/// An event's body from its `body` and `body_lz4` columns at `at` and
/// `at + 1` (its `seq` at 0 names it in a report). A packed body that does
/// not unpack is an unreadable record, never an empty body.
pub(super) fn body_of(row: &Row, at: usize) -> Result<Vec<u8>, StoreError> {
    let stored: &[u8] = row.get(at);
    if !row.get::<_, bool>(at + 1) {
        return Ok(stored.to_vec());
    }
    crate::store::packed::unpack(stored).ok_or_else(|| {
        StoreError::corrupt(format!(
            "the body of event #{} does not unpack",
            row.get::<_, i64>(0)
        ))
    })
}

/// An outcome column, read.
pub(super) fn outcome_of(text: Option<&str>) -> Result<Option<OutcomeRecord>, StoreError> {
    text.map(|t| {
        serde_json::from_str(t)
            .map_err(|e| StoreError::corrupt(format!("an event's outcome ({e})")))
    })
    .transpose()
}

/// The rows one transaction reads and changes, cached so that two events
/// for one shipment or order in it see each other: the unit of work of
/// `store::core` on PostgreSQL.
pub(super) struct PgUnit<'a> {
    tx: &'a Tx<'a>,
    shipments: HashMap<ShipmentId, ShipmentRecord>,
    by_tracking: HashMap<TrackingNumber, Option<ShipmentId>>,
    orders: HashMap<OrderKey, OrderRecord>,
    partners: HashMap<OrderId, Vec<PartnerName>>,
    dirty_shipments: BTreeSet<ShipmentId>,
    dirty_orders: BTreeSet<OrderKey>,
    /// The last outcome put for each event, by sequence number.
    outcomes: BTreeMap<i64, OutcomeRecord>,
}

impl<'a> PgUnit<'a> {
    pub(super) fn new(tx: &'a Tx<'a>) -> PgUnit<'a> {
        PgUnit {
            tx,
            shipments: HashMap::new(),
            by_tracking: HashMap::new(),
            orders: HashMap::new(),
            partners: HashMap::new(),
            dirty_shipments: BTreeSet::new(),
            dirty_orders: BTreeSet::new(),
            outcomes: BTreeMap::new(),
        }
    }

    fn keep_shipment(&mut self, rec: ShipmentRecord) {
        if let Some(tn) = &rec.tracking_number {
            self.by_tracking
                .insert(tn.clone(), Some(rec.shipment_id.clone()));
        }
        self.shipments.insert(rec.shipment_id.clone(), rec);
    }

    /// Keeps a shipment read as `record::text`, unless one is kept
    /// already. A record that does not parse is the caller's to report:
    /// dispatch's read-ahead leaves it to the event that asks for it.
    fn keep_shipment_row(&mut self, id: &ShipmentId, text: &str) -> serde_json::Result<()> {
        if !self.shipments.contains_key(id) {
            self.keep_shipment(serde_json::from_str(text)?);
        }
        Ok(())
    }

    /// Keeps an order read as `record::text`, unless one is kept already;
    /// as `keep_shipment_row`.
    fn keep_order_row(&mut self, key: OrderKey, text: &str) -> serde_json::Result<()> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.orders.entry(key) {
            slot.insert(serde_json::from_str(text)?);
        }
        Ok(())
    }

    /// A stored event from the columns of `STORED`.
    fn stored(row: &Row) -> Result<(Stored, Option<Vec<u8>>), StoreError> {
        let (source, event_id): (String, String) = (row.get(1), row.get(2));
        let name = || format!("the event {source}/{event_id}");
        Ok((
            Stored {
                seq: unsigned(row.get(0), name)?,
                received_at_ms: unsigned(row.get(3), name)?,
                outcome: outcome_of(row.get(4))?,
                source,
                event_id,
            },
            Some(body_of(row, 5)?),
        ))
    }

    /// Writes what changed.
    /// Runs a statement on `order`'s fulfilment queue entry due at `due_ms`.
    async fn queue(&self, sql: &str, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                sql,
                &[
                    &order.partner.as_str(),
                    &order.order_id.as_str(),
                    &ms(due_ms),
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) async fn finish(self) -> Result<(), StoreError> {
        for id in &self.dirty_shipments {
            if let Some(rec) = self.shipments.get(id) {
                let tn = rec.tracking_number.as_ref().map(TrackingNumber::as_str);
                self.tx
                    .execute(
                        "UPDATE shipments SET tracking_number = $2, record = $3::text::jsonb
                         WHERE shipment_id = $1",
                        &[&id.as_str(), &tn, &json(rec)?],
                    )
                    .await
                    .map_err(db_err)?;
            }
        }
        for key in &self.dirty_orders {
            if let Some(rec) = self.orders.get(key) {
                self.tx
                    .execute(
                        "UPDATE orders SET record = $3::text::jsonb
                         WHERE partner = $1 AND order_id = $2",
                        &[&rec.partner.as_str(), &rec.order_id.as_str(), &json(rec)?],
                    )
                    .await
                    .map_err(db_err)?;
            }
        }
        if !self.outcomes.is_empty() {
            let seqs: Vec<i64> = self.outcomes.keys().copied().collect();
            let outcomes = self
                .outcomes
                .values()
                .map(json)
                .collect::<Result<Vec<_>, _>>()?;
            // An event with an outcome waits for dispatch no more.
            self.tx
                .execute(
                    "WITH done AS (DELETE FROM inbox WHERE seq = ANY($1))
                     INSERT INTO outcomes (seq, record)
                     SELECT s, o::jsonb FROM UNNEST($1::int8[], $2::text[]) AS u(s, o)
                     ON CONFLICT (seq) DO UPDATE SET record = EXCLUDED.record",
                    &[&seqs, &outcomes],
                )
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Unit for PgUnit<'_> {
    /// Transaction-scoped advisory locks, in one sorted statement.
    async fn lock(&mut self, keys: &BTreeSet<ParkKey>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = keys.iter().map(ParkKey::lock_name).collect();
        self.tx
            .execute(
                "SELECT pg_advisory_xact_lock(h) FROM (
                     SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::text[]) AS k ORDER BY 1
                 ) AS sorted",
                &[&names],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Two statements for a whole dispatch pass instead of one per event.
    async fn read_ahead(&mut self, keys: &BTreeSet<ParkKey>) -> Result<(), StoreError> {
        let mut tracking = Vec::new();
        let mut order_ids = Vec::new();
        for key in keys {
            match key {
                ParkKey::Tracking(tn) if !self.by_tracking.contains_key(tn) => {
                    tracking.push(tn.as_str())
                }
                ParkKey::Order(id) if !self.partners.contains_key(id) => {
                    order_ids.push(id.as_str())
                }
                _ => {}
            }
        }
        if !tracking.is_empty() {
            let rows = self
                .tx
                .query(
                    "SELECT shipment_id, tracking_number, record::text FROM shipments
                     WHERE tracking_number = ANY($1) ORDER BY shipment_id FOR UPDATE",
                    &[&tracking],
                )
                .await
                .map_err(db_err)?;
            let mut found = HashMap::new();
            for row in &rows {
                let id = ShipmentId::from(row.get::<_, &str>(0));
                found.insert(row.get::<_, &str>(1), id.clone());
                // One that cannot be read is left for the event that asks
                // for it to find unreadable.
                let _ = self.keep_shipment_row(&id, row.get(2));
            }
            for tn in tracking {
                match found.remove(tn) {
                    Some(id) if self.shipments.contains_key(&id) => {
                        self.by_tracking.insert(tn.into(), Some(id));
                    }
                    Some(_) => {}
                    None => {
                        self.by_tracking.insert(tn.into(), None);
                    }
                }
            }
        }
        if !order_ids.is_empty() {
            let rows = self
                .tx
                .query(
                    "SELECT order_id, partner, record::text FROM orders
                     WHERE order_id = ANY($1) ORDER BY order_id, partner FOR UPDATE",
                    &[&order_ids],
                )
                .await
                .map_err(db_err)?;
            let mut found: HashMap<&str, Option<Vec<PartnerName>>> =
                order_ids.iter().map(|id| (*id, Some(Vec::new()))).collect();
            for row in &rows {
                let order_id: &str = row.get(0);
                let partner = PartnerName::from(row.get::<_, &str>(1));
                let key = OrderKey::new(partner.clone(), OrderId::from(order_id));
                match (
                    self.keep_order_row(key, row.get(2)),
                    found.get_mut(order_id),
                ) {
                    (Ok(()), Some(Some(partners))) => partners.push(partner),
                    // An id with an order that cannot be read is left for
                    // the event that asks for it to find unreadable.
                    (Err(_), Some(slot)) => *slot = None,
                    _ => {}
                }
            }
            for (id, partners) in found {
                if let Some(partners) = partners {
                    self.partners.insert(OrderId::from(id), partners);
                }
            }
        }
        Ok(())
    }

    async fn put_completion(&mut self, completion: &Completion) -> Result<(), StoreError> {
        put_completion(self.tx, completion).await
    }
}

#[async_trait]
impl ShipmentRows for PgUnit<'_> {
    async fn shipment(&mut self, id: &ShipmentId) -> Result<Option<ShipmentRecord>, StoreError> {
        if !self.shipments.contains_key(id) {
            let found: Option<ShipmentRecord> = read_json(
                self.tx,
                || format!("the shipment {id}"),
                "SELECT record::text FROM shipments WHERE shipment_id = $1 FOR UPDATE",
                &[&id.as_str()],
            )
            .await?;
            match found {
                Some(rec) => self.keep_shipment(rec),
                None => return Ok(None),
            }
        }
        Ok(self.shipments.get(id).cloned())
    }

    /// The shipment with this tracking number, locked.
    async fn shipment_for(
        &mut self,
        tn: &TrackingNumber,
    ) -> Result<Option<ShipmentId>, StoreError> {
        if let Some(hit) = self.by_tracking.get(tn) {
            return Ok(hit.clone());
        }
        // The record comes with the id, in one round trip: dispatch reads
        // it next.
        let row = self
            .tx
            .query_opt(
                "SELECT shipment_id, record::text FROM shipments
                 WHERE tracking_number = $1 FOR UPDATE",
                &[&tn.as_str()],
            )
            .await
            .map_err(db_err)?;
        let id = row.as_ref().map(|r| ShipmentId::from(r.get::<_, &str>(0)));
        if let (Some(row), Some(id)) = (&row, &id) {
            self.keep_shipment_row(id, row.get(1))
                .map_err(|e| StoreError::corrupt(format!("the shipment {id} ({e})")))?;
        }
        self.by_tracking.insert(tn.clone(), id.clone());
        Ok(id)
    }

    fn put_shipment(&mut self, rec: ShipmentRecord) {
        self.dirty_shipments.insert(rec.shipment_id.clone());
        self.keep_shipment(rec);
    }

    async fn insert_shipment(&mut self, rec: ShipmentRecord) -> Result<(), StateError> {
        let tn = rec.tracking_number.as_ref().map(TrackingNumber::as_str);
        let inserted = self
            .tx
            .execute(
                "INSERT INTO shipments (shipment_id, tracking_number, record)
                 VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING",
                &[&rec.shipment_id.as_str(), &tn, &json(&rec)?],
            )
            .await
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(StateError::ShipmentExists(rec.shipment_id));
        }
        self.keep_shipment(rec);
        Ok(())
    }

    async fn schedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO label_voids (shipment_id, due_ms) VALUES ($1, $2)
                 ON CONFLICT (shipment_id) DO UPDATE SET due_ms = EXCLUDED.due_ms,
                     claimed_until_ms = 0",
                &[&id.as_str(), &ms(due_ms)],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn unschedule_void(&mut self, id: &ShipmentId, due_ms: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "DELETE FROM label_voids WHERE shipment_id = $1 AND due_ms = $2",
                &[&id.as_str(), &ms(due_ms)],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

#[async_trait]
impl OrderRows for PgUnit<'_> {
    async fn order(&mut self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError> {
        if let Some(rec) = self.orders.get(key) {
            return Ok(Some(rec.clone()));
        }
        let found: Option<OrderRecord> = read_json(
            self.tx,
            || format!("the order {key}"),
            "SELECT record::text FROM orders WHERE partner = $1 AND order_id = $2 FOR UPDATE",
            &[&key.partner.as_str(), &key.order_id.as_str()],
        )
        .await?;
        if let Some(rec) = &found {
            self.orders.insert(key.clone(), rec.clone());
        }
        Ok(found)
    }

    /// Every partner's order with this id, locked.
    async fn orders_with_id(&mut self, order_id: &OrderId) -> Result<Vec<OrderRecord>, StoreError> {
        if !self.partners.contains_key(order_id) {
            let rows = self
                .tx
                .query(
                    "SELECT partner, record::text FROM orders WHERE order_id = $1
                     ORDER BY partner FOR UPDATE",
                    &[&order_id.as_str()],
                )
                .await
                .map_err(db_err)?;
            let mut found = Vec::new();
            for row in rows {
                let partner = PartnerName::from(row.get::<_, String>(0));
                let key = OrderKey::new(partner.clone(), order_id.clone());
                self.keep_order_row(key, row.get(1)).map_err(|e| {
                    StoreError::corrupt(format!("the order {partner}/{order_id} ({e})"))
                })?;
                found.push(partner);
            }
            self.partners.insert(order_id.clone(), found);
        }
        let partners = self.partners.get(order_id).cloned().unwrap_or_default();
        Ok(partners
            .into_iter()
            .filter_map(|p| {
                self.orders
                    .get(&OrderKey::new(p, order_id.clone()))
                    .cloned()
            })
            .collect())
    }

    fn put_order(&mut self, rec: OrderRecord) {
        let key = rec.key();
        self.dirty_orders.insert(key.clone());
        self.orders.insert(key, rec);
    }

    async fn insert_order(&mut self, rec: &OrderRecord) -> Result<bool, StoreError> {
        let inserted = self
            .tx
            .execute(
                "INSERT INTO orders (partner, order_id, created_at_ms, record)
                 VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
                &[
                    &rec.partner.as_str(),
                    &rec.order_id.as_str(),
                    &ms(rec.created_at_ms),
                    &json(rec)?,
                ],
            )
            .await
            .map_err(db_err)?;
        if inserted == 0 {
            return Ok(false);
        }
        self.orders.insert(rec.key(), rec.clone());
        if let Some(partners) = self.partners.get_mut(&rec.order_id) {
            partners.push(rec.partner.clone());
        }
        Ok(true)
    }

    async fn schedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError> {
        self.queue(
            "INSERT INTO fulfilments (partner, order_id, due_ms) VALUES ($1, $2, $3)
             ON CONFLICT (partner, order_id) DO UPDATE SET due_ms = EXCLUDED.due_ms,
                 claimed_until_ms = 0",
            order,
            due_ms,
        )
        .await
    }

    async fn unschedule(&mut self, order: &OrderRecord, due_ms: u64) -> Result<(), StoreError> {
        self.queue(
            "DELETE FROM fulfilments WHERE partner = $1 AND order_id = $2 AND due_ms = $3",
            order,
            due_ms,
        )
        .await
    }
}

#[async_trait]
impl EventRows for PgUnit<'_> {
    async fn parked(
        &mut self,
        key: &ParkKey,
    ) -> Result<Vec<(Stored, Option<Vec<u8>>)>, StoreError> {
        let (column, value) = match key {
            ParkKey::Tracking(tn) => ("tracking_number", tn.as_str()),
            ParkKey::Order(id) => ("order_id", id.as_str()),
        };
        // Both rows locked: when another transaction changed the outcome
        // while this one waited, the row is checked again against it.
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT {STORED} FROM events e JOIN outcomes o ON o.seq = e.seq
                     WHERE e.{column} = $1 AND o.record->>'outcome' = 'parked'
                     ORDER BY e.seq FOR UPDATE OF e, o"
                ),
                &[&value],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(PgUnit::stored).collect()
    }

    async fn event(
        &mut self,
        source: &str,
        event_id: &str,
        locked: bool,
    ) -> Result<Option<(Stored, Option<Vec<u8>>)>, StoreError> {
        let sql = format!(
            "SELECT {STORED} FROM events e LEFT JOIN outcomes o ON o.seq = e.seq
             WHERE e.source = $1 AND e.event_id = $2{}",
            if locked { " FOR UPDATE OF e" } else { "" }
        );
        let row = self
            .tx
            .query_opt(&sql, &[&source, &event_id])
            .await
            .map_err(db_err)?;
        if locked && let Some(row) = &row {
            // Read again now that the lock is held: whoever held it before
            // may have changed the outcome, and the join above saw the
            // outcome as it was when the statement began.
            let (mut stored, body) = PgUnit::stored(row)?;
            let outcome = self
                .tx
                .query_opt(
                    "SELECT record::text FROM outcomes WHERE seq = $1",
                    &[&ms(stored.seq)],
                )
                .await
                .map_err(db_err)?;
            stored.outcome = outcome_of(outcome.as_ref().map(|r| r.get::<_, &str>(0)))?;
            return Ok(Some((stored, body)));
        }
        row.as_ref().map(PgUnit::stored).transpose()
    }

    fn put_outcome(&mut self, event: &Stored, outcome: &OutcomeRecord) {
        self.outcomes.insert(ms(event.seq), outcome.clone());
    }
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
            // The claim first, on its own: joined in one query, the
            // planner merges the inbox with every event stored since the
            // oldest queued one. Sequence numbers start at 1; one below
            // that was changed by hand, could take no outcome, and is left
            // waiting (counted as pending) rather than failing every pass.
            "WITH claimed AS MATERIALIZED (
                 SELECT seq FROM inbox WHERE seq > 0 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
             )
             SELECT e.seq, e.source, e.event_id, e.received_at_ms, e.fields::text
             FROM claimed c JOIN events e ON e.seq = c.seq ORDER BY e.seq",
            &[&limit],
        )
        .await
        .map_err(db_err)?;
    let mut events = Vec::with_capacity(claimed.len());
    for row in &claimed {
        let (source, event_id): (String, String) = (row.get(1), row.get(2));
        let seq = unsigned(row.get(0), || format!("the event {source}/{event_id}"))?;
        let received_at = unsigned(row.get(3), || {
            format!("the arrival time of {source}/{event_id}")
        });
        let event = Stored {
            seq,
            source,
            event_id,
            // Read only through the interpretation, which an unreadable
            // time makes a dead letter.
            received_at_ms: *received_at.as_ref().unwrap_or(&0),
            // An event gets its outcome as it leaves the inbox.
            outcome: None,
        };
        // Fields that are there and cannot be read are no absent ones:
        // the event goes to the dead letter saying so (a redelivery reads
        // them from the body again), never quietly out of dispatch.
        let fields: Option<Result<Fields, _>> = row
            .get::<_, Option<&str>>(4)
            .map(serde_json::from_str::<Fields>);
        let interpretation = match (sources.get(&event.source), fields) {
            (None, _) => gone(&event.source),
            (Some(cfg), Some(Ok(fields))) => match received_at {
                Ok(at) => interpret_fields(cfg, &event.event_id, at, &fields),
                // Nor is an arrival time that cannot be read taken for 1970.
                Err(_) => Interpretation::Dead {
                    reason: "the arrival time stored at intake cannot be read".into(),
                },
            },
            (Some(_), Some(Err(e))) => {
                let _ = StoreError::corrupt(format!(
                    "the mapped fields of {}/{}",
                    event.source, event.event_id
                ));
                Interpretation::Dead {
                    reason: format!(
                        "the mapped fields stored at intake cannot be read ({e}); redeliver to read them from the body again"
                    ),
                }
            }
            (Some(_), None) => Interpretation::NotDispatched,
        };
        events.push((event, interpretation));
    }
    let n = events.len();
    let mut unit = PgUnit::new(tx);
    let mut work = Work::new(&mut unit, sources);
    work.dispatch(events).await?;
    let counted = work.counted;
    unit.finish().await?;
    Ok((n, counted))
}

/// Claims a key: a new row with a lease, or the existing row locked and
/// decided on. Concurrent claims of one key wait for the first insert's
/// commit, so exactly one of them runs.
pub(super) async fn claim(tx: &Tx<'_>, claim: &Claim, epoch: u64) -> Result<Decision, StateError> {
    let (partner, key) = (claim.partner.as_str(), claim.key.as_str());
    let now = now_ms();
    let fingerprint = &claim.fingerprint;
    let claim = json(&claim.record(epoch, now))?;
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
        || format!("the idempotency key {partner}/{key}"),
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
pub(super) async fn put_completion(tx: &Tx<'_>, c: &Completion) -> Result<(), StoreError> {
    let expires = match &c.record {
        idempotency::Record::Done { expires_at_ms, .. } => Some(ms(*expires_at_ms)),
        idempotency::Record::InProgress { .. } => None,
    };
    tx.execute(
        "INSERT INTO idempotency_keys (partner, key, record, expires_at_ms)
         VALUES ($1, $2, $3::text::jsonb, $4)
         ON CONFLICT (partner, key) DO UPDATE SET record = EXCLUDED.record,
             expires_at_ms = EXCLUDED.expires_at_ms",
        &[
            &c.partner.as_str(),
            &c.key.as_str(),
            &json(&c.record)?,
            &expires,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
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
    let (source, event_id): (String, String) = (row.get(1), row.get(2));
    let name = || format!("the event {source}/{event_id}");
    let (seq, received_at_ms) = (unsigned(row.get(0), name)?, unsigned(row.get(3), name)?);
    let event = StoredEvent {
        seq,
        source,
        event_id,
        meta: EventMeta {
            received_at_ms,
            event_type: row.get(4),
            dispatch: row.get(5),
            headers,
            tracking_number: row.get(7),
            order_id: row.get(8),
        },
        body: if with_body {
            body_of(row, 10)?
        } else {
            Vec::new()
        },
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
        when("e.source = $", text(v));
    }
    if let Some(v) = &filter.event_id {
        when("e.event_id = $", text(v));
    }
    if let Some(v) = &filter.tracking_number {
        when("e.tracking_number = $", text(v));
    }
    if let Some(v) = &filter.order_id {
        when("e.order_id = $", text(v));
    }
    if let Some(v) = &filter.event_type {
        when("e.event_type = $", text(v));
    }
    if let Some(v) = &filter.outcome {
        when(
            "COALESCE(o.record->>'outcome', CASE WHEN e.queued THEN 'pending' ELSE 'stored' END) = $",
            text(v),
        );
    }
    if let Some(v) = filter.since_ms {
        when("e.received_at_ms >= $", Box::new(ms(v)));
    }
    if let Some(v) = filter.until_ms {
        when("e.received_at_ms <= $", Box::new(ms(v)));
    }
    if let Some(v) = filter.before_seq {
        when("e.seq < $", Box::new(ms(v)));
    }
    let limit_at = params.len() + 1;
    params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM {EVENTS_WITH_OUTCOMES} {} ORDER BY e.seq DESC LIMIT ${limit_at}",
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
