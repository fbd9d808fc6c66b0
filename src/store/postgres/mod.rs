//! The PostgreSQL adapter, for several replicas on one database
//! (contract 10.7). This part holds the schema migrations, webhook intake
//! and the dispatch of tracking events to shipments; the database is the
//! only coordinator between replicas.
//!
//! - Migrations are embedded, versioned, and applied under an advisory
//!   lock, so replicas that start together apply each one once.
//! - Intake is group committed: the requests waiting when a transaction
//!   starts go in one multi-row `INSERT … ON CONFLICT`, and each is
//!   answered after the commit (`synchronous_commit` stays on). The
//!   unique key on (source, event_id) decides new or duplicate, across
//!   replicas: a copy racing another replica's waits for its commit and
//!   then sees it.

use std::collections::HashMap;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use super::codec::{DispatchOutcome, OutcomeRecord, ShipmentRecord};
use super::{IngestResult, NewEvent, StoreError};
use crate::config::{SourceConfig, SourceKind};
use crate::domain::shipment::Applied;
use crate::mapping::{Fields, Interpretation, interpret_fields};

/// Embedded migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events", include_str!("0001_events.sql")),
    (2, "dispatch", include_str!("0002_dispatch.sql")),
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

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

type Pending = (NewEvent, oneshot::Sender<Result<IngestResult, StoreError>>);

pub struct PgStore {
    pool: Pool,
    tx: mpsc::Sender<Pending>,
}

impl PgStore {
    /// A pool of `pool_size` connections to `url` (a libpq URL or
    /// key=value string), and the intake task, spawned on the current
    /// tokio runtime. Connects lazily.
    pub fn connect(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(db_err)?;
        let manager = Manager::from_config(
            config,
            NoTls,
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
        tokio::spawn(intake(pool.clone(), rx));
        Ok(PgStore { pool, tx })
    }

    /// Applies the migrations this database lacks; how many it applied.
    /// Safe to run from several replicas at once.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await.map_err(db_err)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err)?;
        let applied = apply_migrations(&mut client).await;
        // Released whatever happened; a broken connection releases it too.
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err);
        let applied = applied?;
        unlocked?;
        Ok(applied)
    }

    /// The schema version the database is at (0: none).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        let row = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM waybill_migrations",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(row.get(0))
    }

    /// Stores a new event durably, or says it is a duplicate of the stored
    /// copy (contract 3.3), answering after the transaction's commit.
    pub async fn ingest(&self, event: NewEvent) -> Result<IngestResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((event, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the intake task stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the intake task stopped".into()))?
    }
}

impl PgStore {
    /// Stores a shipment (with its tracking number, if it has one).
    pub async fn put_shipment(&self, rec: &ShipmentRecord) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        let json = serde_json::to_string(rec).map_err(db_err)?;
        client
            .execute(
                "INSERT INTO shipments (shipment_id, tracking_number, record) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (shipment_id) DO UPDATE SET tracking_number = EXCLUDED.tracking_number,
                     record = EXCLUDED.record",
                &[&rec.shipment_id, &rec.tracking_number, &json],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn shipment(&self, shipment_id: &str) -> Result<Option<ShipmentRecord>, StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        let row = client
            .query_opt(
                "SELECT record::text FROM shipments WHERE shipment_id = $1",
                &[&shipment_id],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(db_err))
            .transpose()
    }

    /// An event's dispatch outcome, once it has one.
    pub async fn outcome(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<OutcomeRecord>, StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        let row = client
            .query_opt(
                "SELECT outcome::text FROM events WHERE source = $1 AND event_id = $2",
                &[&source, &event_id],
            )
            .await
            .map_err(db_err)?;
        match row.and_then(|r| r.get::<_, Option<String>>(0)) {
            Some(json) => serde_json::from_str(&json).map(Some).map_err(db_err),
            None => Ok(None),
        }
    }

    /// Dispatches up to `limit` pending events in one transaction (contract
    /// 4): claims them with `FOR UPDATE SKIP LOCKED`, so dispatchers on
    /// other replicas take others; locks their shipments in tracking-number
    /// order, so two dispatchers never wait on each other in a cycle;
    /// applies each event and records its outcome; commits all of it at
    /// once. A crash before the commit leaves the events pending for any
    /// dispatcher. How many it dispatched.
    ///
    /// Payment events wait for orders, which live in the embedded store
    /// only so far: they are not claimed, and stay pending.
    pub async fn dispatch(
        &self,
        sources: &HashMap<String, SourceConfig>,
        limit: i64,
    ) -> Result<usize, StoreError> {
        let payment_sources: Vec<&str> = sources
            .values()
            .filter(|s| s.kind == SourceKind::Payment)
            .map(|s| s.name.as_str())
            .collect();
        let mut client = self.pool.get().await.map_err(db_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        let claimed = tx
            .query(
                "SELECT seq, source, event_id, received_at_ms, fields::text, attempts FROM events
                 WHERE dispatch AND outcome IS NULL AND source <> ALL($2)
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit, &payment_sources],
            )
            .await
            .map_err(db_err)?;
        let mut work = Vec::with_capacity(claimed.len());
        for row in &claimed {
            let source: String = row.get(1);
            let event_id: String = row.get(2);
            let received_at_ms = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
            let fields: Option<Fields> = row
                .get::<_, Option<String>>(4)
                .and_then(|f| serde_json::from_str(&f).ok());
            let interpretation = match (sources.get(&source), &fields) {
                (None, _) => Interpretation::Dead {
                    reason: format!("source {source} is no longer configured"),
                },
                (Some(cfg), Some(fields)) => {
                    interpret_fields(cfg, &event_id, received_at_ms, fields)
                }
                (Some(_), None) => Interpretation::NotDispatched,
            };
            work.push((row.get::<_, i64>(0), row.get::<_, i32>(5), interpretation));
        }
        let mut tracking: Vec<String> = work
            .iter()
            .filter_map(|(_, _, i)| match i {
                Interpretation::Tracking {
                    tracking_number, ..
                } => Some(tracking_number.clone()),
                _ => None,
            })
            .collect();
        tracking.sort();
        tracking.dedup();
        let mut shipments: HashMap<String, ShipmentRecord> = HashMap::new();
        for row in tx
            .query(
                "SELECT tracking_number, record::text FROM shipments
                 WHERE tracking_number = ANY($1) ORDER BY tracking_number FOR UPDATE",
                &[&tracking],
            )
            .await
            .map_err(db_err)?
        {
            let rec: ShipmentRecord =
                serde_json::from_str(row.get::<_, &str>(1)).map_err(db_err)?;
            shipments.insert(row.get(0), rec);
        }
        let mut touched = std::collections::BTreeSet::new();
        let mut dispatched = 0;
        for (seq, attempts, interpretation) in work {
            let mut record = OutcomeRecord {
                outcome: DispatchOutcome::Dead,
                reason: None,
                shipment_id: None,
                attempts: u32::try_from(attempts).unwrap_or(0) + 1,
                at_ms: crate::clock::now_ms(),
            };
            match interpretation {
                Interpretation::Payment { .. } => continue,
                Interpretation::Tracking {
                    tracking_number,
                    event,
                } => match shipments.get_mut(&tracking_number) {
                    None => {
                        record.outcome = DispatchOutcome::Parked;
                        record.reason = Some(format!(
                            "no shipment has tracking number {tracking_number} yet"
                        ));
                    }
                    Some(shipment) => {
                        record.outcome = match shipment.timeline.apply(event) {
                            Applied::Applied => DispatchOutcome::Applied,
                            Applied::Stale => DispatchOutcome::Stale,
                        };
                        record.shipment_id = Some(shipment.shipment_id.clone());
                        touched.insert(tracking_number);
                    }
                },
                Interpretation::Ignored { reason } => {
                    record.outcome = DispatchOutcome::Ignored;
                    record.reason = Some(reason);
                }
                Interpretation::Dead { reason } => record.reason = Some(reason),
                Interpretation::NotDispatched => record.outcome = DispatchOutcome::Stored,
            }
            let json = serde_json::to_string(&record).map_err(db_err)?;
            tx.execute(
                "UPDATE events SET outcome = $2::text::jsonb, attempts = attempts + 1 WHERE seq = $1",
                &[&seq, &json],
            )
            .await
            .map_err(db_err)?;
            dispatched += 1;
        }
        for tn in touched {
            if let Some(rec) = shipments.get(&tn) {
                let json = serde_json::to_string(rec).map_err(db_err)?;
                tx.execute(
                    "UPDATE shipments SET record = $2::text::jsonb WHERE shipment_id = $1",
                    &[&rec.shipment_id, &json],
                )
                .await
                .map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(dispatched)
    }
}

async fn apply_migrations(client: &mut deadpool_postgres::Client) -> Result<usize, StoreError> {
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
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
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

/// The intake task: takes what waits, one transaction per group.
async fn intake(pool: Pool, mut rx: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let pending = std::mem::take(&mut group);
        let (events, replies): (Vec<NewEvent>, Vec<_>) = pending.into_iter().unzip();
        let committed = tokio::time::timeout(DB_TIMEOUT, commit(&pool, &events))
            .await
            .unwrap_or_else(|_| Err(db_err("the intake transaction timed out")));
        match committed {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "intake transaction failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Whether an event is the first copy of its identity in the group.
enum InGroup {
    First,
    Copy,
}

/// One transaction for a group: every new identity inserted (an expired
/// stored copy replaced), then the stored copy of every duplicate read.
/// The answers, in the group's order.
async fn commit(pool: &Pool, events: &[NewEvent]) -> Result<Vec<IngestResult>, StoreError> {
    // A statement may not touch a row twice: later copies in the group are
    // answered from the first.
    let mut seen = std::collections::HashSet::new();
    let roles: Vec<InGroup> = events
        .iter()
        .map(|e| {
            if seen.insert((e.source.as_str(), e.event_id.as_str())) {
                InGroup::First
            } else {
                InGroup::Copy
            }
        })
        .collect();
    let firsts: Vec<&NewEvent> = events
        .iter()
        .zip(&roles)
        .filter(|(_, r)| matches!(r, InGroup::First))
        .map(|(e, _)| e)
        .collect();
    let col = |f: fn(&NewEvent) -> String| firsts.iter().map(|e| f(e)).collect::<Vec<_>>();
    let opt = |f: fn(&NewEvent) -> Option<String>| firsts.iter().map(|e| f(e)).collect::<Vec<_>>();
    let sources = col(|e| e.source.clone());
    let ids = col(|e| e.event_id.clone());
    let received: Vec<i64> = firsts.iter().map(|e| ms(e.received_at_ms)).collect();
    let expires: Vec<i64> = firsts.iter().map(|e| ms(e.expires_at_ms)).collect();
    let hashes: Vec<Vec<u8>> = firsts.iter().map(|e| e.content_hash.to_vec()).collect();
    let dispatch: Vec<bool> = firsts.iter().map(|e| e.dispatch).collect();
    let types = opt(|e| e.event_type.clone());
    let tracking = opt(|e| e.tracking_number.clone());
    let orders = opt(|e| e.order_id.clone());
    let headers = col(|e| serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into()));
    let fields = opt(|e| {
        e.fields
            .as_ref()
            .and_then(|f| serde_json::to_string(f).ok())
    });
    let bodies: Vec<Vec<u8>> = firsts.iter().map(|e| e.body.to_vec()).collect();

    let mut client = pool.get().await.map_err(db_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    let inserted = tx
        .query(
            "INSERT INTO events (source, event_id, received_at_ms, expires_at_ms, content_hash,
                                 dispatch, event_type, tracking_number, order_id, headers, fields, body)
             SELECT s, e, r, x, h, d, t, tn, o, hd::jsonb, f::jsonb, b
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::bool[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[])
                  AS n(s, e, r, x, h, d, t, tn, o, hd, f, b)
             ON CONFLICT (source, event_id) DO UPDATE SET
                 seq = nextval(pg_get_serial_sequence('events', 'seq')),
                 received_at_ms = EXCLUDED.received_at_ms, expires_at_ms = EXCLUDED.expires_at_ms,
                 content_hash = EXCLUDED.content_hash, dispatch = EXCLUDED.dispatch,
                 event_type = EXCLUDED.event_type, tracking_number = EXCLUDED.tracking_number,
                 order_id = EXCLUDED.order_id, headers = EXCLUDED.headers,
                 fields = EXCLUDED.fields, body = EXCLUDED.body
             WHERE events.expires_at_ms <= EXCLUDED.received_at_ms
             RETURNING source, event_id",
            &[
                &sources, &ids, &received, &expires, &hashes, &dispatch, &types, &tracking,
                &orders, &headers, &fields, &bodies,
            ],
        )
        .await
        .map_err(db_err)?;
    let new: std::collections::HashSet<(String, String)> = inserted
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The stored copies of the duplicates, as committed by whoever won.
    let (dup_sources, dup_ids): (Vec<String>, Vec<String>) = firsts
        .iter()
        .filter(|e| !new.contains(&(e.source.clone(), e.event_id.clone())))
        .map(|e| (e.source.clone(), e.event_id.clone()))
        .unzip();
    let mut stored = std::collections::HashMap::new();
    if !dup_sources.is_empty() {
        for row in tx
            .query(
                "SELECT source, event_id, received_at_ms, content_hash FROM events
                 WHERE (source, event_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
                &[&dup_sources, &dup_ids],
            )
            .await
            .map_err(db_err)?
        {
            let key: (String, String) = (row.get(0), row.get(1));
            let at: i64 = row.get(2);
            let hash: Vec<u8> = row.get(3);
            stored.insert(key, (u64::try_from(at).unwrap_or(0), hash));
        }
    }
    tx.commit().await.map_err(db_err)?;

    // Each identity of the group: when its stored copy arrived, its
    // content hash, and whether this group stored it.
    let mut identities = std::collections::HashMap::new();
    for e in &firsts {
        let key = (e.source.clone(), e.event_id.clone());
        let known = if new.contains(&key) {
            (e.received_at_ms, e.content_hash.to_vec(), true)
        } else {
            let (at, hash) = stored.remove(&key).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "{}/{} vanished while being stored",
                    e.source, e.event_id
                ))
            })?;
            (at, hash, false)
        };
        identities.insert(key, known);
    }
    events
        .iter()
        .zip(&roles)
        .map(|(e, role)| {
            let key = (e.source.clone(), e.event_id.clone());
            let (at, hash, stored_here) = identities
                .get(&key)
                .ok_or_else(|| StoreError::Unavailable("an identity left its group".into()))?;
            Ok(match role {
                InGroup::First if *stored_here => IngestResult::Accepted {
                    received_at_ms: e.received_at_ms,
                },
                _ => IngestResult::Duplicate {
                    first_received_at_ms: *at,
                    conflict: hash.as_slice() != e.content_hash.as_slice(),
                },
            })
        })
        .collect()
}

/// Milliseconds as PostgreSQL's BIGINT holds them.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
