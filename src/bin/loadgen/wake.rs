//! Cross-replica dispatch latency on PostgreSQL (docs/BENCHMARKS.md). Two
//! stores on one fresh schema stand for two replicas: the first only takes
//! events in, the second runs the dispatcher. Each event is timed from the
//! first store's commit (the moment a sender gets its 202) to the moment
//! its outcome is readable, polled every millisecond. Two rounds in one
//! run: the dispatcher woken by the intake's notices, then by its poll
//! alone.

use std::time::{Duration, Instant};

use waybill::store::postgres::PgStore;
use waybill::store::prelude::*;
use waybill::store::{NewEvent, StoreError};

use super::Failed;

pub async fn bench(database_url: &str, events: usize, rate: u64) -> Result<(), Failed> {
    let (admin, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let schema = format!("bench_wake_{:x}", fastrand::u64(..));
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let sep = if database_url.contains('?') { '&' } else { '?' };
    let url = format!("{database_url}{sep}options=-csearch_path%3D{schema}");
    let result = rounds(&url, events, rate).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    result
}

async fn rounds(url: &str, events: usize, rate: u64) -> Result<(), Failed> {
    let health = waybill::health::Health::new;
    let intake = PgStore::connect(url, &[], 4, health())?;
    intake.migrate().await?;
    let dispatcher = PgStore::connect(url, &[], 4, health())?;
    dispatcher.start_dispatcher(Vec::new())?;
    println!("round         events  p50 ms  p99 ms  max ms");
    for (name, notify) in [("notify", true), ("poll only", false)] {
        dispatcher.wake_on_notify(notify);
        let mut took = Vec::with_capacity(events);
        let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        for i in 0..events {
            let started = Instant::now();
            let id = format!("{}-{i}", name.replace(' ', "-"));
            took.push(one(&intake, &id).await?);
            tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
        }
        took.sort();
        let at = |q: f64| {
            let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
            took.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{name:<12} {:>7} {:>7.1} {:>7.1} {:>7.1}",
            took.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    dispatcher.close()?;
    intake.close()?;
    Ok(())
}

/// One event through the first store; how long until the second had
/// dispatched it.
async fn one(intake: &PgStore, id: &str) -> Result<Duration, StoreError> {
    let now = waybill::clock::now_ms();
    intake
        .ingest(NewEvent {
            source: "bench".into(),
            event_id: id.into(),
            received_at_ms: now,
            expires_at_ms: now + 3_600_000,
            content_hash: [7; 32],
            dispatch: true,
            event_type: None,
            headers: Vec::new(),
            tracking_number: Some("TN-BENCH".into()),
            order_id: None,
            fields: None,
            body: bytes::Bytes::from_static(b"{}"),
        })
        .await?;
    let committed = Instant::now();
    while intake.outcome("bench", id).await?.is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(committed.elapsed())
}
