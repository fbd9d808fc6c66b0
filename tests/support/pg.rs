//! A schema of its own on the test database for each test that runs on
//! PostgreSQL. The machines run PostgreSQL 15 on 127.0.0.1:5432 with a
//! database `test` (`WAYBILL_TEST_DATABASE_URL` overrides). Without a
//! server the tests say they were skipped and why, and pass, unless
//! `WAYBILL_REQUIRE_POSTGRES` is set (`.ci/run` sets it): then they fail.

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn base_url() -> String {
    std::env::var("WAYBILL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

/// A fresh schema, dropped with the guard.
pub struct Schema {
    /// A URL whose connections work in the schema (first on their search
    /// path).
    pub url: String,
    pub name: String,
    /// A connection for the test's own queries (they name the schema).
    pub client: tokio_postgres::Client,
}

/// A fresh schema on the test database; None (after saying why) when no
/// server answers and none is required.
pub async fn schema() -> Option<Schema> {
    let base = base_url();
    let (client, conn) = match tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("WAYBILL_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is required here and {base} does not answer: {e}"
            );
            // Straight to stderr, past the test harness's capture, once.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: the PostgreSQL tests of this binary, since no PostgreSQL answers at {base} ({e}); set WAYBILL_TEST_DATABASE_URL, or WAYBILL_REQUIRE_POSTGRES=1 to fail instead"
                );
            });
            return None;
        }
    };
    tokio::spawn(conn);
    drop_stale(&client).await;
    let name = format!("t_{}_{:016x}", now_secs(), fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{name}");
    Some(Schema { url, name, client })
}

impl Schema {
    /// A count over the schema's tables (`sql` names them unqualified).
    pub async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(&self.q(sql), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Runs a statement over the schema's tables (`sql` names them
    /// unqualified).
    pub async fn execute(&self, sql: &str) {
        self.client.execute(&self.q(sql), &[]).await.unwrap();
    }

    /// `sql` with the tables named in the schema.
    pub fn q(&self, sql: &str) -> String {
        let mut out = sql.to_string();
        for t in [
            "events",
            "shipments",
            "orders",
            "idempotency_keys",
            "fulfilments",
            "inbox",
            "outcomes",
        ] {
            out = out.replace(&format!(" {t}"), &format!(" {}.{t}", self.name));
        }
        out
    }
}

impl Drop for Schema {
    /// Drops the schema from a thread of its own, without waiting for it:
    /// a gateway of the test may still hold a transaction in it until the
    /// test's runtime is gone, so the thread retries for a while. A schema
    /// it could not drop (the process ended first) is dropped by a later
    /// run's `schema` an hour on.
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            for _ in 0..60 {
                if drop_schema(&name).is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
    }
}

/// Drops a schema unless a lock holds it for more than a second.
fn drop_schema(name: &str) -> Option<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "SET lock_timeout = '1s'; DROP SCHEMA IF EXISTS {name} CASCADE"
            ))
            .await
            .ok()
    })
}

/// Drops the schemas earlier runs left behind, an hour after they were
/// made (their names carry the time).
async fn drop_stale(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^t_[0-9]+_[0-9a-f]+$'",
            &[],
        )
        .await
    else {
        return;
    };
    let hour_ago = now_secs().saturating_sub(3600);
    for row in rows {
        let name: String = row.get(0);
        let made: u64 = name
            .split('_')
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(u64::MAX);
        if made < hour_ago {
            let _ = client
                .batch_execute(&format!(
                    "SET lock_timeout = '1s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                ))
                .await;
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// For a test body that runs on either adapter: `Some(None)` on sled,
/// `Some(Some(schema))` on PostgreSQL, None when PostgreSQL is wanted and
/// missing (after `schema` said why): skip.
pub async fn if_postgres(on_postgres: bool) -> Option<Option<Schema>> {
    if on_postgres {
        schema().await.map(Some)
    } else {
        Some(None)
    }
}

impl Schema {
    /// A store on the schema with `pool_size` connections, migrated.
    pub async fn migrated(&self, pool_size: usize) -> waybill::store::postgres::PgStore {
        let store = self.store(pool_size);
        store.migrate().await.unwrap();
        store
    }

    /// A store on the schema with `pool_size` connections, as one replica
    /// would open it (not migrated, no dispatcher).
    pub fn store(&self, pool_size: usize) -> waybill::store::postgres::PgStore {
        waybill::store::postgres::PgStore::connect(
            &self.url,
            &[],
            pool_size,
            waybill::health::Health::new(),
        )
        .unwrap()
    }
}

/// For a test on either store: the schema (None on sled) and the url for
/// `WAYBILL_DATABASE_URL` (empty on sled); None when PostgreSQL is wanted
/// and not there (the test then passes, unless it is required).
pub async fn store_env(on_postgres: bool) -> Option<(Option<Schema>, String)> {
    let pg = if_postgres(on_postgres).await?;
    let url = pg.as_ref().map_or(String::new(), |s| s.url.clone());
    Some((pg, url))
}
