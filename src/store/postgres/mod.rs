//! The PostgreSQL adapter: any number of processes on one database
//! (GUARANTEES.md: "Replicas on PostgreSQL"), which is the only coordinator between them.
//!
//! - Migrations are embedded, versioned, and applied under an advisory
//!   lock, so processes that start together apply each one once.
//! - Intake is group committed (`intake`); a unique key decides new or
//!   duplicate.
//! - Dispatch (`state`): every process's dispatcher claims pending events
//!   with `FOR UPDATE SKIP LOCKED`, applies them and records their
//!   outcomes in one transaction. Writes that park or unpark events under
//!   a tracking number or an order id first take a transaction-scoped
//!   advisory lock on it, so an event is never parked for a shipment or
//!   order that a concurrent transaction is creating.
//! - Idempotency keys: a claim is a row with a lease; the final answer is
//!   written in the transaction of the effect. Another process's claim is
//!   resumable only once its lease ends.
//! - Background fulfilment and retention: each item is claimed with
//!   `SKIP LOCKED` (fulfilment with a lease), so a dead process's work
//!   passes to the others.

/// Runs `$body` (which may use `?`) in a transaction `$tx` under
/// `DB_TIMEOUT`, committing when it succeeds.
macro_rules! in_transaction {
    ($inner:expr, $tx:ident => $body:expr) => {
        deadline(async {
            let mut client = $inner.client().await?;
            let txn = client.transaction().await.map_err(db_err)?;
            let $tx: &Tx<'_> = &txn;
            let out = $body?;
            txn.commit().await.map_err(db_err)?;
            Ok::<_, StateError>(out)
        })
        .await
    };
}

/// Runs `store::core` work in one transaction: the unit is written back
/// and the transaction committed; answers what the body answered and
/// what it dispatched, for counting.
macro_rules! in_work {
    ($inner:expr, $work:ident => $body:expr) => {{
        let sources = $inner.sources.load_full();
        deadline(async {
            let mut client = $inner.client().await?;
            let txn = client.transaction().await.map_err(db_err)?;
            let mut unit = state::PgUnit::new(&txn);
            let mut work = Work::new(&mut unit, &sources);
            let out = {
                let $work = &mut work;
                $body?
            };
            let counted = std::mem::take(&mut work.counted);
            drop(work);
            unit.finish().await?;
            txn.commit().await.map_err(db_err)?;
            Ok::<_, StateError>((out, counted))
        })
        .await
    }};
}

mod intake;
mod listen;
mod state;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use arc_swap::ArcSwap;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Notify, mpsc, oneshot};

use super::core::Work;
use super::{
    Cancel, Claim, Completion, EventFilter, IngestResult, LabelRecorded, NewEvent, NewLabel,
    OrderCreated, OrderRecord, OrderWrite, OutcomeRecord, Search, ShipmentRecord, StateError,
    StoreError, StoredEvent,
};
use crate::config::SourceConfig;
use crate::domain::ids::{OrderId, OrderKey, PartnerName, ShipmentId};
use crate::domain::label::{LabelRequest, LabelVoid};
use crate::health::{Component, Health};
use crate::idempotency::Decision;
use crate::idempotency::IdempotencyKey;
use crate::store::prelude::*;

/// Embedded migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events", include_str!("0001_events.sql")),
    (2, "dispatch", include_str!("0002_dispatch.sql")),
    (3, "state", include_str!("0003_state.sql")),
    (4, "dead", include_str!("0004_dead.sql")),
    (5, "voids", include_str!("0005_voids.sql")),
    (6, "outcomes", include_str!("0006_outcomes.sql")),
];

/// The schema version this build expects: its last migration's.
pub fn schema_version_of_build() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _, _)| *v)
}

/// The advisory lock migrations run under (any fixed number; this one
/// spells "waybill").
const MIGRATION_LOCK: i64 = 0x0077_6179_6269_6c6c;

/// How long getting a connection, or one intake transaction, may take: a
/// database that stops answering fails requests (503, and the sender
/// retries) rather than holding them. A transaction that committed after
/// its deadline is answered as a duplicate on that retry.
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Requests one intake transaction takes at most.
const MAX_GROUP: usize = 512;

/// A database failure with its causes, so that an operator reads why
/// (a TLS handshake refused for a certificate's name, say), not only what.
fn db_err(e: impl std::error::Error) -> StoreError {
    let mut text = format!("database: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        // Some errors repeat their source's words in their own.
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    StoreError::Unavailable(text)
}

type Pending = (NewEvent, oneshot::Sender<Result<IngestResult, StoreError>>);

/// How often an idle dispatcher looks for events other processes stored.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Events one dispatch transaction takes at most.
const PASS: i64 = 256;

/// How long a process keeps a fulfilment it took before another may take
/// it: longer than one attempt's downstream calls.
const FULFIL_LEASE_MS: u64 = 60_000;

/// How long a process holds an owed void it took: longer than asking the
/// carrier and voiding, with their retries.
const VOID_LEASE_MS: u64 = 60_000;

pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    intake: std::sync::Mutex<Option<mpsc::Sender<Pending>>>,
    health: Arc<Health>,
    /// The sources dispatch interprets events with; a reload swaps them.
    sources: ArcSwap<HashMap<String, SourceConfig>>,
    /// Wakes this process's dispatcher after its own intake commits, and
    /// when another process's does (`listen`).
    wake: Arc<Notify>,
    /// Whether another process's intake wakes the dispatcher (else only
    /// the poll finds its events): off only to measure the difference.
    notify_wakes: AtomicBool,
    /// The poll interval, in milliseconds (`POLL`).
    poll_ms: AtomicU64,
    /// How the listening connection reaches the database.
    connect: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Distinguishes this process's claims on idempotency keys.
    epoch: u64,
    /// Whether the last probe reached the database.
    reachable: AtomicBool,
    probing: AtomicBool,
    dispatcher_running: AtomicBool,
    /// The tables' size as last probed.
    size_bytes: AtomicU64,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Held only to push, take or clone: nothing in such a section can leave
/// it inconsistent, so a poisoned lock is used as is.
fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PgStore {
    /// A pool of `pool_size` connections to `url` (a libpq URL or
    /// key=value string, its `sslmode` checked against `ca_certs` or the
    /// public roots: `tls`), and the intake task, spawned on the current
    /// tokio runtime. Connects lazily.
    pub fn connect(
        url: &str,
        ca_certs: &[Vec<u8>],
        pool_size: usize,
        health: Arc<Health>,
    ) -> Result<PgStore, StoreError> {
        let (url, mode) = tls::split_sslmode(url).map_err(StoreError::Unavailable)?;
        let (wire, connector) = tls::connector(mode, ca_certs).map_err(StoreError::Unavailable)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(db_err)?;
        config.ssl_mode(wire);
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(DB_TIMEOUT))
            .create_timeout(Some(DB_TIMEOUT))
            .recycle_timeout(Some(DB_TIMEOUT))
            .build()
            .map_err(db_err)?;
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let wake = Arc::new(Notify::new());
        let intake = tokio::spawn(intake::run(pool.clone(), rx, wake.clone()));
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                intake: std::sync::Mutex::new(Some(tx)),
                health,
                sources: ArcSwap::from_pointee(HashMap::new()),
                wake,
                notify_wakes: AtomicBool::new(true),
                poll_ms: AtomicU64::new(POLL.as_millis() as u64),
                connect: config,
                tls: connector,
                epoch: fastrand::u64(1..),
                reachable: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                dispatcher_running: AtomicBool::new(false),
                size_bytes: AtomicU64::new(0),
                tasks: std::sync::Mutex::new(vec![intake]),
            }),
        })
    }

    /// Applies the migrations this database lacks; how many it applied.
    /// Safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.migrate_to(schema_version_of_build()).await
    }

    /// Applies the migrations this database lacks up to `version`: a
    /// database as an earlier build left it, to test an upgrade from.
    pub async fn migrate_to(&self, version: i32) -> Result<usize, StoreError> {
        let mut client = self.inner.pool.get().await.map_err(db_err)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err)?;
        let applied = apply_migrations(&mut client, version).await;
        // Released whatever happened; a broken connection releases it too.
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err);
        let applied = applied?;
        unlocked?;
        Ok(applied)
    }

    /// Whether another process's intake wakes this one's dispatcher at
    /// once (the default), or only its poll finds those events: the
    /// benchmark measures both.
    pub fn wake_on_notify(&self, on: bool) {
        self.inner.notify_wakes.store(on, Ordering::Relaxed);
    }

    /// How often an idle dispatcher looks for events without a wake
    /// (`POLL` unless set): a test sets it long to see the wakes alone.
    pub fn poll_every(&self, interval: std::time::Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.inner.poll_ms.store(ms, Ordering::Relaxed);
    }

    /// The schema version the database is at (0: none).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.inner.pool.get().await.map_err(db_err)?;
        let row = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM waybill_migrations",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(row.get(0))
    }

    /// Dispatches up to `limit` pending events in one transaction; how
    /// many. Events another process is dispatching are skipped.
    pub async fn dispatch(&self, limit: i64) -> Result<usize, StoreError> {
        deadline(self.inner.dispatch(limit)).await
    }
}

impl Inner {
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(db_err)
    }

    async fn dispatch(&self, limit: i64) -> Result<usize, StoreError> {
        let sources = self.sources.load_full();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let (dispatched, counted) = state::dispatch(&tx, &sources, limit)
            .await
            .map_err(state_to_store)?;
        tx.commit().await.map_err(db_err)?;
        super::count_dispatched(&counted);
        Ok(dispatched)
    }

    /// Checks that the database answers, and reads the tables' size.
    async fn probe(&self) {
        let probed = tokio::time::timeout(PROBE_TIMEOUT, async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::int8
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                    &[],
                )
                .await
                .map_err(db_err)?;
            Ok::<i64, StoreError>(row.get(0))
        })
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "database: the database did not answer".into(),
            ))
        });
        match probed {
            Ok(size) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::warn!("the database answers again");
                }
                self.size_bytes
                    .store(u64::try_from(size).unwrap_or(0), Ordering::Relaxed);
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "the database does not answer; writes are refused until it does");
                }
            }
        }
    }
}

/// How long a readiness probe waits for the database.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The dispatcher: applies what is pending, then waits for a wake (this
/// process's intake, or another's through `listen`) or the poll interval,
/// the fallback should a notice be lost. A
/// database that fails is retried: it is not this process's failure.
async fn dispatcher(inner: Arc<Inner>) {
    let alive = inner.health.enter(Component::Dispatcher, STALL_AFTER);
    inner.dispatcher_running.store(true, Ordering::Release);
    let mut failing = false;
    loop {
        alive.beat();
        match deadline(inner.dispatch(PASS)).await {
            Ok(n) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("dispatch works again");
                }
                if n > 0 {
                    continue;
                }
            }
            // Once per outage, not once per poll.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "dispatch failed; trying again until it works");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(inner.poll_ms.load(Ordering::Relaxed))) => {}
        }
    }
}

/// How long the dispatcher may go without a heartbeat: a pass waits at
/// most `DB_TIMEOUT`.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a database operation under `DB_TIMEOUT`: a database that stops
/// answering fails it (503, and the client retries) rather than holding it.
async fn deadline<T, E: From<StoreError>>(
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(DB_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| {
            Err(
                StoreError::Unavailable("database: the database did not answer in time".into())
                    .into(),
            )
        })
}

fn state_to_store(e: StateError) -> StoreError {
    match e {
        StateError::Store(e) => e,
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Intake for PgStore {
    async fn ingest(&self, event: NewEvent) -> Result<IngestResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        let tx = locked(&self.inner.intake)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        tx.send((event, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the intake task stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the intake task stopped".into()))?
    }
}

#[async_trait::async_trait]
impl Dispatch for PgStore {
    fn start_dispatcher(&self, sources: Vec<SourceConfig>) -> Result<(), StoreError> {
        self.set_sources(sources);
        let dispatch = tokio::spawn(dispatcher(self.inner.clone()));
        let listen = tokio::spawn(listen::run(self.inner.clone()));
        locked(&self.inner.tasks).extend([dispatch, listen]);
        Ok(())
    }

    fn set_sources(&self, sources: Vec<SourceConfig>) {
        self.inner.sources.store(Arc::new(
            sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
        ));
    }

    async fn settle(&self) -> Result<(), StateError> {
        let last = {
            let client = self.inner.client().await?;
            let row = client
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])
                .await
                .map_err(db_err)?;
            row.get::<_, i64>(0)
        };
        loop {
            if deadline(self.inner.dispatch(PASS)).await? > 0 {
                continue;
            }
            let client = self.inner.client().await?;
            let waiting = state::count(
                &**client,
                // What dispatch can take (`state::dispatch`'s claim).
                "SELECT COUNT(*) FROM inbox WHERE seq > 0 AND seq <= $1",
                &[&last],
            )
            .await?;
            if waiting == 0 {
                return Ok(());
            }
            // Another process holds them: its transaction ends soon.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn redeliver(&self, source: &str, event_id: &str) -> Result<OutcomeRecord, StateError> {
        let ((out, before), counted) =
            in_work!(self.inner, work => work.redeliver(source, event_id).await)?;
        super::count_redelivered(before, &counted);
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Keys for PgStore {
    async fn claim(&self, claim: &Claim) -> Result<Decision, StateError> {
        let epoch = self.inner.epoch;
        in_transaction!(self.inner, tx => state::claim(tx, claim, epoch).await)
    }

    async fn release(&self, partner: &PartnerName, key: &IdempotencyKey) {
        // Failing, the claim stays until its lease ends: the retry waits
        // that long (409 IDEMPOTENCY_IN_PROGRESS), nothing runs twice.
        let released = deadline(async {
            let client = self.inner.client().await?;
            client
                .execute(
                    "DELETE FROM idempotency_keys WHERE partner = $1 AND key = $2
                     AND record->>'state' = 'in_progress' AND record->>'epoch' = $3",
                    &[
                        &partner.as_str(),
                        &key.as_str(),
                        &self.inner.epoch.to_string(),
                    ],
                )
                .await
                .map_err(db_err)
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing an idempotency key failed");
        }
    }

    async fn finish(&self, completion: Completion) -> Result<(), StateError> {
        in_transaction!(self.inner, tx => state::put_completion(tx, &completion).await.map_err(StateError::from))
    }
}

#[async_trait::async_trait]
impl Shipments for PgStore {
    async fn create_shipment(
        &self,
        rec: ShipmentRecord,
        completion: Option<Completion>,
    ) -> Result<(), StateError> {
        let ((), _) =
            in_work!(self.inner, work => work.create_shipment(rec, completion.as_ref()).await)?;
        Ok(())
    }

    async fn record_intent(
        &self,
        shipment_id: &ShipmentId,
        request: LabelRequest,
    ) -> Result<LabelRequest, StateError> {
        let ((request, _), _) =
            in_work!(self.inner, work => work.record_intent(shipment_id, request).await)?;
        Ok(request)
    }

    async fn record_label(
        &self,
        label: NewLabel,
        completion: Option<Completion>,
    ) -> Result<LabelRecorded, StateError> {
        let (recorded, counted) = in_work!(self.inner, work => work
            .record_label(label.clone(), completion.as_ref())
            .await)?;
        super::count_dispatched(&counted);
        Ok(recorded)
    }

    async fn cancel(&self, cancel: Cancel) -> Result<ShipmentRecord, StateError> {
        let (shipment, _) = in_work!(self.inner, work => work.cancel(cancel.clone()).await)?;
        Ok(shipment)
    }

    async fn shipment(
        &self,
        shipment_id: &ShipmentId,
    ) -> Result<Option<ShipmentRecord>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            state::read_json(
                &**client,
                || format!("the shipment {shipment_id}"),
                "SELECT record::text FROM shipments WHERE shipment_id = $1",
                &[&shipment_id.as_str()],
            )
            .await
        })
        .await
    }

    async fn shipments(&self, ids: &[ShipmentId]) -> Result<Vec<ShipmentRecord>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(ShipmentId::as_str).collect();
        deadline(async {
            let client = self.inner.client().await?;
            state::read_all_json(
                &**client,
                "SELECT record::text, 'shipment ' || shipment_id FROM shipments
                 WHERE shipment_id = ANY($1)",
                &[&ids],
            )
            .await
        })
        .await
    }

    async fn due_voids(&self, now_ms: u64, limit: usize) -> Result<Vec<ShipmentId>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let rows = client
                .query(
                    "UPDATE label_voids v SET claimed_until_ms = $2
                     FROM (SELECT shipment_id FROM label_voids
                           WHERE due_ms <= $1 AND claimed_until_ms <= $1
                           ORDER BY due_ms LIMIT $3 FOR UPDATE SKIP LOCKED) c
                     WHERE v.shipment_id = c.shipment_id
                     RETURNING v.due_ms, v.shipment_id",
                    &[
                        &ms(now_ms),
                        &ms(now_ms.saturating_add(VOID_LEASE_MS)),
                        &to_i64(limit),
                    ],
                )
                .await
                .map_err(db_err)?;
            let mut due: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            due.sort();
            Ok(due
                .into_iter()
                .map(|(_, id)| ShipmentId::from(id))
                .collect())
        })
        .await
    }

    async fn settle_void(
        &self,
        id: &ShipmentId,
        outcome: LabelVoid,
    ) -> Result<Option<ShipmentRecord>, StateError> {
        let (settled, _) =
            in_work!(self.inner, work => work.settle_void(id, outcome.clone()).await)?;
        Ok(settled)
    }

    async fn voids_owed(&self) -> Result<u64, StoreError> {
        let n = self.count("SELECT COUNT(*) FROM label_voids").await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl Orders for PgStore {
    async fn create_order(&self, record: OrderRecord) -> Result<OrderCreated, StateError> {
        let (created, counted) = in_work!(self.inner, work => work.create_order(record).await)?;
        super::count_dispatched(&counted);
        Ok(created)
    }

    async fn write_order(&self, write: OrderWrite) -> Result<OrderRecord, StateError> {
        let (order, counted) = in_work!(self.inner, work => work.write_order(write).await)?;
        super::count_dispatched(&counted);
        Ok(order)
    }

    async fn order(&self, key: &OrderKey) -> Result<Option<OrderRecord>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            state::read_json(
                &**client,
                || format!("the order {key}"),
                "SELECT record::text FROM orders WHERE partner = $1 AND order_id = $2",
                &[&key.partner.as_str(), &key.order_id.as_str()],
            )
            .await
        })
        .await
    }

    async fn orders(
        &self,
        partner: &PartnerName,
        skip: usize,
        limit: usize,
    ) -> Result<(usize, Vec<OrderRecord>), StoreError> {
        let partner = partner.as_str();
        deadline(async {
            let client = self.inner.client().await?;
            let count = state::count(
                &**client,
                "SELECT COUNT(*) FROM orders WHERE partner = $1",
                &[&partner],
            )
            .await?;
            let rows = client
                .query(
                    "SELECT record::text FROM orders WHERE partner = $1
                     ORDER BY created_at_ms DESC, order_id DESC OFFSET $2 LIMIT $3",
                    &[&partner, &to_i64(skip), &to_i64(limit)],
                )
                .await
                .map_err(db_err)?;
            let orders = rows
                .iter()
                .map(|r| {
                    serde_json::from_str(r.get::<_, &str>(0))
                        .map_err(|e| StoreError::corrupt(format!("an order of {partner} ({e})")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((usize::try_from(count).unwrap_or(0), orders))
        })
        .await
    }

    async fn due_fulfilments(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PartnerName, OrderId)>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let rows = client
                .query(
                    "UPDATE fulfilments f SET claimed_until_ms = $2
                     FROM (SELECT partner, order_id FROM fulfilments
                           WHERE due_ms <= $1 AND claimed_until_ms <= $1
                           ORDER BY due_ms LIMIT $3 FOR UPDATE SKIP LOCKED) c
                     WHERE f.partner = c.partner AND f.order_id = c.order_id
                     RETURNING f.due_ms, f.partner, f.order_id",
                    &[
                        &ms(now_ms),
                        &ms(now_ms.saturating_add(FULFIL_LEASE_MS)),
                        &to_i64(limit),
                    ],
                )
                .await
                .map_err(db_err)?;
            let mut due: Vec<(u64, PartnerName, OrderId)> = rows
                .iter()
                .map(|r| {
                    let (partner, order_id) = (r.get::<_, String>(1), r.get::<_, String>(2));
                    let due_ms = unsigned(r.get(0), || {
                        format!("the fulfilment of order {partner}/{order_id}")
                    })?;
                    Ok((due_ms, PartnerName::from(partner), OrderId::from(order_id)))
                })
                .collect::<Result<_, StoreError>>()?;
            due.sort();
            Ok(due)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Events for PgStore {
    async fn event(&self, source: &str, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {EVENT_COLUMNS}, e.body, e.body_lz4 FROM {EVENTS_WITH_OUTCOMES}
                         WHERE e.source = $1 AND e.event_id = $2"
                    ),
                    &[&source, &event_id],
                )
                .await
                .map_err(db_err)?;
            row.map(|r| state::stored_event(&r, true).map(|(ev, _)| ev))
                .transpose()
        })
        .await
    }

    async fn outcome(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<OutcomeRecord>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let row = client
                .query_opt(
                    "SELECT o.record::text FROM events e JOIN outcomes o ON o.seq = e.seq
                     WHERE e.source = $1 AND e.event_id = $2",
                    &[&source, &event_id],
                )
                .await
                .map_err(db_err)?;
            state::outcome_of(row.as_ref().and_then(|r| r.get::<_, Option<&str>>(0)))
        })
        .await
    }

    async fn search(
        &self,
        filter: &EventFilter,
        limit: usize,
        _max_scan: usize,
    ) -> Result<Search, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            state::search(&**client, filter, limit).await
        })
        .await
    }
}

#[async_trait::async_trait]
impl Upkeep for PgStore {
    async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        // Events still waiting for dispatch stay until dispatched; an
        // event's outcome goes with it.
        self.sweep(
            "WITH gone AS (
                 DELETE FROM events WHERE seq IN (
                     SELECT seq FROM events e
                     WHERE expires_at_ms <= $1 AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.seq = e.seq)
                     ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING seq
             ), outcomes_gone AS (
                 DELETE FROM outcomes WHERE seq IN (SELECT seq FROM gone)
             )
             SELECT COUNT(*) FROM gone",
            now_ms,
            limit,
        )
        .await
    }

    async fn sweep_idempotency(&self, now_ms: u64, limit: usize) -> Result<usize, StateError> {
        Ok(self
            .sweep(
                "WITH gone AS (
                     DELETE FROM idempotency_keys WHERE (partner, key) IN (
                         SELECT partner, key FROM idempotency_keys WHERE expires_at_ms < $1
                         ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING 1
                 )
                 SELECT COUNT(*) FROM gone",
                now_ms,
                limit,
            )
            .await?)
    }

    async fn inbox_pending(&self) -> Result<i64, StoreError> {
        self.count("SELECT COUNT(*) FROM inbox").await
    }

    async fn parked(&self) -> Result<u64, StoreError> {
        let n = self
            .count("SELECT COUNT(*) FROM outcomes WHERE record->>'outcome' = 'parked'")
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead(&self) -> Result<u64, StoreError> {
        let n = self
            .count("SELECT COUNT(*) FROM outcomes WHERE record->>'outcome' = 'dead'")
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let row = client
                .query_one("SELECT MIN(received_at_ms) FROM inbox", &[])
                .await
                .map_err(db_err)?;
            row.get::<_, Option<i64>>(0)
                .map(|v| unsigned(v, || "the oldest arrival in the inbox".into()))
                .transpose()
        })
        .await
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes.load(Ordering::Relaxed)
    }

    fn free_bytes(&self) -> Option<u64> {
        // The database's disk is the database's to watch.
        None
    }

    fn is_ready(&self) -> bool {
        self.inner.reachable.load(Ordering::Acquire)
            && self.inner.dispatcher_running.load(Ordering::Acquire)
            && locked(&self.inner.intake).is_some()
    }

    fn ping(&self) {
        self.inner.wake.notify_one();
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.probe().await;
            inner.probing.store(false, Ordering::Release);
        });
    }

    fn close(&self) -> Result<(), StoreError> {
        locked(&self.inner.intake).take();
        for task in locked(&self.inner.tasks).drain(..) {
            task.abort();
        }
        self.inner
            .dispatcher_running
            .store(false, Ordering::Release);
        self.inner.pool.close();
        Ok(())
    }
}

/// The columns `state::stored_event` reads, in its order, from
/// `EVENTS_WITH_OUTCOMES`.
const EVENT_COLUMNS: &str = "e.seq, e.source, e.event_id, e.received_at_ms, e.event_type, e.queued, \
     e.headers::text, e.tracking_number, e.order_id, o.record::text";

/// Events, each with its outcome if it has one.
const EVENTS_WITH_OUTCOMES: &str = "events e LEFT JOIN outcomes o ON o.seq = e.seq";

type Tx<'a> = tokio_postgres::Transaction<'a>;

impl PgStore {
    /// Runs a retention statement that deletes at most `$2` rows expired
    /// at `$1`, skipping rows another process is deleting, and counts
    /// them. How many it deleted.
    async fn sweep(&self, sql: &str, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            let n = state::count(&**client, sql, &[&ms(now_ms), &to_i64(limit)]).await?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn count(&self, sql: &str) -> Result<i64, StoreError> {
        deadline(async {
            let client = self.inner.client().await?;
            state::count(&**client, sql, &[]).await
        })
        .await
    }
}

/// A count or limit as PostgreSQL's BIGINT holds it.
fn to_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn apply_migrations(
    client: &mut deadpool_postgres::Client,
    upto: i32,
) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS waybill_migrations (
                version INT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db_err)?;
    // A build older than the schema would read and write tables laid out
    // for a newer one: refused before it takes any traffic.
    let at: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM waybill_migrations",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0);
    let build = schema_version_of_build();
    if at > build {
        return Err(StoreError::Unavailable(format!(
            "the database's schema is at version {at}, newer than this build's ({build}): \
             run a build that knows it"
        )));
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= upto) {
        let tx = client.transaction().await.map_err(db_err)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM waybill_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(db_err)?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO waybill_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        tracing::info!(version, name, "database migration applied");
        applied += 1;
    }
    Ok(applied)
}

/// Milliseconds as PostgreSQL's BIGINT holds them.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A number the gateway stores unsigned (a sequence number, a time in
/// milliseconds) as it reads back: below zero only if the row was changed
/// behind the gateway's back, and then `what` is an unreadable record,
/// never one numbered 0 or stamped 1970.
#[track_caller]
fn unsigned(v: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(format!("{} ({v} is below zero)", what())))
}
