//! Intake's group commit: the requests waiting when a transaction starts
//! go in one multi-row `INSERT … ON CONFLICT`, and each is answered after
//! the commit (`synchronous_commit` stays on). The unique key on (source,
//! event_id) decides new or duplicate, across processes: a copy racing
//! another process's waits for its commit and then sees it.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc};

use super::{DB_TIMEOUT, MAX_GROUP, Pending, db_err, ms};
use crate::store::{IngestResult, NewEvent, StoreError};
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
    // Every process's dispatcher hears of new work with the commit.
    if firsts
        .iter()
        .any(|e| e.dispatch && new.contains(&(e.source.clone(), e.event_id.clone())))
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
