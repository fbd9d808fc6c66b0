//! Intake's group commit: the requests waiting when a transaction starts
//! go in one multi-row `INSERT … ON CONFLICT DO NOTHING` (which also
//! queues the new ones for dispatch), and each is answered after
//! the commit (`synchronous_commit` stays on). The unique key on (source,
//! event_id) decides new or duplicate, across processes: a copy racing
//! another process's waits for its commit and then sees it.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc};

use super::{DB_TIMEOUT, MAX_GROUP, Pending, db_err, ms, unsigned};
use crate::store::{IngestResult, NewEvent, StoreError, packed};
use crate::telemetry::metric;

/// The intake task: takes what waits, one transaction per group.
pub(super) async fn run(pool: Pool, mut rx: mpsc::Receiver<Pending>, wake: Arc<Notify>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let pending = std::mem::take(&mut group);
        let (events, replies): (Vec<NewEvent>, Vec<_>) = pending.into_iter().unzip();
        metrics::histogram!(metric::STORE_GROUP_SIZE).record(events.len() as f64);
        let started = std::time::Instant::now();
        let committed = tokio::time::timeout(DB_TIMEOUT, commit(&pool, &events))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "database: the intake transaction timed out".into(),
                ))
            });
        // The commit is what makes the group durable: the flush of this
        // adapter.
        metrics::histogram!(metric::STORE_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        match committed {
            Ok(answers) => {
                wake.notify_one();
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
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

/// An identity: (source, event id).
type Identity = (String, String);

fn identity(e: &NewEvent) -> Identity {
    (e.source.clone(), e.event_id.clone())
}

/// What a duplicate's stored copy says: its sequence number, when it
/// arrived and expires, and its content hash.
struct StoredCopy {
    seq: i64,
    received_at_ms: u64,
    expires_at_ms: u64,
    hash: Vec<u8>,
}

/// One transaction for a group: every new identity inserted, then the
/// stored copy of every duplicate read, and a stored copy past its
/// retention (which the sweep has not reached yet) replaced by the copy
/// that arrived. The answers, in the group's order: a stored copy that
/// cannot be read fails the copies of its identity, and only those.
async fn commit(
    pool: &Pool,
    events: &[NewEvent],
) -> Result<Vec<Result<IngestResult, StoreError>>, StoreError> {
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

    let mut client = pool.get().await.map_err(db_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    let mut new = insert(&tx, &firsts).await?;
    let mut stored =
        stored_copies(&tx, firsts.iter().filter(|e| !new.contains(&identity(e)))).await?;
    let expired: Vec<&NewEvent> = firsts
        .iter()
        .filter(|e| {
            stored.get(&identity(e)).is_some_and(|s| {
                s.as_ref()
                    .is_ok_and(|s| s.expires_at_ms <= e.received_at_ms)
            })
        })
        .copied()
        .collect();
    if !expired.is_empty() {
        let seqs: Vec<i64> = expired
            .iter()
            .filter_map(|e| stored.get(&identity(e)).and_then(|s| s.as_ref().ok()))
            .map(|s| s.seq)
            .collect();
        forget(&tx, &seqs).await?;
        let replaced = insert(&tx, &expired).await?;
        // A copy another process stored meanwhile is the one to answer
        // from.
        stored.extend(
            stored_copies(
                &tx,
                expired.iter().filter(|e| !replaced.contains(&identity(e))),
            )
            .await?,
        );
        for key in replaced {
            stored.remove(&key);
            new.insert(key);
        }
    }
    // Every process's dispatcher hears of new work with the commit.
    if firsts
        .iter()
        .any(|e| e.dispatch && new.contains(&identity(e)))
    {
        tx.batch_execute(&format!("NOTIFY {}", super::listen::CHANNEL))
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;

    // Each identity of the group: when its stored copy arrived, its
    // content hash, and whether this group stored it.
    let mut identities = std::collections::HashMap::new();
    for e in &firsts {
        let key = identity(e);
        let known = if new.contains(&key) {
            Ok((e.received_at_ms, e.content_hash.to_vec(), true))
        } else {
            let copy = stored.remove(&key).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "{}/{} vanished while being stored",
                    e.source, e.event_id
                ))
            })?;
            copy.map(|c| (c.received_at_ms, c.hash, false))
        };
        identities.insert(key, known);
    }
    events
        .iter()
        .zip(&roles)
        .map(|(e, role)| {
            let known = identities
                .get(&identity(e))
                .ok_or_else(|| StoreError::Unavailable("an identity left its group".into()))?;
            Ok(known.clone().map(|(at, hash, stored_here)| match role {
                InGroup::First if stored_here => IngestResult::Accepted {
                    received_at_ms: e.received_at_ms,
                },
                _ => IngestResult::Duplicate {
                    first_received_at_ms: at,
                    conflict: hash.as_slice() != e.content_hash.as_slice(),
                },
            }))
        })
        .collect()
}

/// Inserts the events whose identity is not stored yet, queueing those for
/// dispatch in `inbox` in the same statement; the identities it inserted.
async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[&NewEvent],
) -> Result<std::collections::HashSet<Identity>, StoreError> {
    let col = |f: fn(&NewEvent) -> String| events.iter().map(|e| f(e)).collect::<Vec<_>>();
    let opt = |f: fn(&NewEvent) -> Option<String>| events.iter().map(|e| f(e)).collect::<Vec<_>>();
    let sources = col(|e| e.source.clone());
    let ids = col(|e| e.event_id.clone());
    let received: Vec<i64> = events.iter().map(|e| ms(e.received_at_ms)).collect();
    let expires: Vec<i64> = events.iter().map(|e| ms(e.expires_at_ms)).collect();
    let hashes: Vec<&[u8]> = events.iter().map(|e| e.content_hash.as_slice()).collect();
    let queued: Vec<bool> = events.iter().map(|e| e.dispatch).collect();
    let types = opt(|e| e.event_type.clone());
    let tracking = opt(|e| e.tracking_number.clone());
    let orders = opt(|e| e.order_id.clone());
    let headers = col(|e| serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into()));
    let fields = opt(|e| {
        e.fields
            .as_ref()
            .and_then(|f| serde_json::to_string(f).ok())
    });
    // A body is stored packed when that makes it smaller: less to write,
    // in the table and in the WAL.
    let packs: Vec<Option<Vec<u8>>> = events
        .iter()
        .map(|e| Some(packed::pack(&e.body)).filter(|p| p.len() < e.body.len()))
        .collect();
    let bodies: Vec<&[u8]> = events
        .iter()
        .zip(&packs)
        .map(|(e, p)| p.as_deref().unwrap_or(&e.body))
        .collect();
    let lz4: Vec<bool> = packs.iter().map(Option::is_some).collect();
    let rows = tx
        .query(
            "WITH stored AS (
                 INSERT INTO events (source, event_id, received_at_ms, expires_at_ms, content_hash,
                                     queued, event_type, tracking_number, order_id, headers, fields, body,
                                     body_lz4)
                 SELECT s, e, r, x, h, d, t, tn, o, hd::jsonb, f::jsonb, b, z
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::bool[],
                             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[],
                             $13::bool[])
                      AS n(s, e, r, x, h, d, t, tn, o, hd, f, b, z)
                 ON CONFLICT (source, event_id) DO NOTHING
                 RETURNING seq, source, event_id, received_at_ms, queued
             ), queue AS (
                 INSERT INTO inbox (seq, received_at_ms)
                 SELECT seq, received_at_ms FROM stored WHERE queued
             )
             SELECT source, event_id FROM stored",
            &[
                &sources, &ids, &received, &expires, &hashes, &queued, &types, &tracking,
                &orders, &headers, &fields, &bodies, &lz4,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The stored copies of these events' identities, as committed by whoever
/// stored them, each as far as it can be read.
async fn stored_copies<'a, 'e: 'a>(
    tx: &tokio_postgres::Transaction<'_>,
    events: impl Iterator<Item = &'a &'e NewEvent>,
) -> Result<std::collections::HashMap<Identity, Result<StoredCopy, StoreError>>, StoreError> {
    let (sources, ids): (Vec<String>, Vec<String>) = events.map(|e| identity(e)).unzip();
    let mut stored = std::collections::HashMap::new();
    if sources.is_empty() {
        return Ok(stored);
    }
    for row in tx
        .query(
            "SELECT source, event_id, seq, received_at_ms, expires_at_ms, content_hash FROM events
             WHERE (source, event_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
            &[&sources, &ids],
        )
        .await
        .map_err(db_err)?
    {
        let (source, event_id): (String, String) = (row.get(0), row.get(1));
        let name = || format!("the stored copy of {source}/{event_id}");
        let copy = (|| {
            Ok(StoredCopy {
                seq: row.get(2),
                received_at_ms: unsigned(row.get(3), name)?,
                expires_at_ms: unsigned(row.get(4), name)?,
                hash: row.get(5),
            })
        })();
        stored.insert((source, event_id), copy);
    }
    Ok(stored)
}

/// Deletes expired events with their queue entries and outcomes. The
/// queue entries go first, in a statement of their own: one a dispatcher
/// holds is deleted after its transaction ends, and the outcome that
/// transaction recorded is then seen, and deleted, by the next statement.
async fn forget(tx: &tokio_postgres::Transaction<'_>, seqs: &[i64]) -> Result<(), StoreError> {
    tx.execute("DELETE FROM inbox WHERE seq = ANY($1)", &[&seqs])
        .await
        .map_err(db_err)?;
    tx.execute(
        "WITH gone AS (DELETE FROM events WHERE seq = ANY($1))
         DELETE FROM outcomes WHERE seq = ANY($1)",
        &[&seqs],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}
