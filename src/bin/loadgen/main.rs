//! waybill's load generator: correctly signed, unique ~1 KB deliveries at a
//! chosen concurrency and duplicate ratio, in closed loop (each connection
//! sends as fast as answers come) or at a fixed arrival rate (open loop:
//! latency is measured from the intended send time, so a stalled server is
//! charged for the requests it delayed; no coordinated omission).
//!
//! `loadgen bare` serves a hyper server that answers 202 without work: the
//! ceiling to compare against in the same run. `loadgen naive` serves the
//! naive reference design (`naive.rs`): the floor the store must beat.

mod layout;
mod naive;
mod wake;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use waybill::config::{Config, ProcessEnv};
use waybill::webhook::signature::Scheme;

/// Why a run stopped: said on stderr, and the exit code is 1.
type Failed = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for waybill")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A bare hyper server answering 202 with no work.
    Bare {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
    },
    /// The naive reference pipeline: signature check, one sled
    /// compare-and-swap per event, a shared flush before each 202.
    Naive {
        #[arg(long, default_value = "127.0.0.1:8098")]
        listen: SocketAddr,
        /// Config naming the source whose first secret and scheme verify.
        #[arg(long, default_value = "config/bench.toml")]
        config: PathBuf,
        #[arg(long, default_value = "bench")]
        source: String,
        /// A directory to create the sled database in (removed first).
        #[arg(long, default_value = "data-naive")]
        dir: PathBuf,
    },
    /// The state machine's throughput: a backlog of tracking events over
    /// labelled shipments, put straight into a fresh store, then drained.
    Dispatch {
        #[arg(long, default_value = "config/bench.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        shipments: usize,
        /// A directory to create the store in (removed first).
        #[arg(long, default_value = "data-dispatch-bench")]
        dir: PathBuf,
    },
    /// Cross-replica dispatch latency on PostgreSQL: one store takes
    /// events in, another (with the dispatcher) applies them; the time from
    /// the first's commit to the second's outcome, woken by notices and by
    /// its poll alone, in one run.
    Wake {
        /// The database; a fresh schema is made in it and dropped after.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
        database_url: String,
        /// Events per round, sent at --rate.
        #[arg(long, default_value_t = 500)]
        events: usize,
        #[arg(long, default_value_t = 50)]
        rate: u64,
    },
    /// A model of the sled index under churn (`layout.rs`): what sled
    /// writes per event and how large its file grows, for a layout.
    Layout {
        #[command(flatten)]
        model: layout::Model,
        /// A directory to create the sled database in (removed first).
        #[arg(long, default_value = "data-layout")]
        dir: PathBuf,
    },
    /// Send signed deliveries to a running gateway (or a bare server).
    Run {
        /// Where to send; several (comma-separated or repeated) spread the
        /// workers over them, one replica each.
        #[arg(long, default_value = "127.0.0.1:8080", value_delimiter = ',')]
        target: Vec<SocketAddr>,
        /// Config naming the source (its first secret and scheme sign the deliveries).
        #[arg(long, default_value = "config/bench.toml")]
        config: PathBuf,
        #[arg(long, default_value = "bench")]
        source: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Fraction of deliveries that repeat an earlier id (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        duplicate_ratio: f64,
        /// Fixed arrival rate (deliveries per second); absent: closed loop.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 1024)]
        body_bytes: usize,
        /// Pad bodies to --body-bytes with random letters and digits, which
        /// no compression shrinks, instead of one repeated letter, which
        /// any compression takes to nothing.
        #[arg(long)]
        random_pad: bool,
        /// Event ids and tracking numbers scattered over their key space,
        /// as senders' ids are, instead of counting up: each delivery's
        /// number goes through a bijective mix, so ids stay unique and a
        /// duplicate still repeats its id.
        #[arg(long)]
        scatter_ids: bool,
        /// Stop after this many deliveries (closed loop), e.g. for memory runs.
        #[arg(long)]
        total: Option<u64>,
        /// A distinct prefix for ids, so runs against one store do not collide.
        #[arg(long)]
        run_id: Option<String>,
        /// Create shipments through `POST /v1/shipments` with this partner
        /// API key instead of sending webhooks.
        #[arg(long)]
        shipments_api_key: Option<String>,
        /// With --shipments-api-key: cycle through this many idempotency
        /// keys, so all but the first request per key are replays.
        #[arg(long)]
        replay_keys: Option<u64>,
        /// Place orders through `POST /v1/orders` with this partner API key
        /// (a gateway in front of `waybill simulate`), each with its own
        /// order id and key.
        #[arg(long, conflicts_with = "shipments_api_key")]
        orders_api_key: Option<String>,
        /// The server's process id: its CPU time (user and system, every
        /// thread) over the run is reported per answered request.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Bare { listen } => rt.block_on(bare(listen)),
        Cmd::Naive {
            listen,
            config,
            source,
            dir,
        } => {
            let (scheme, key) = source_key(&config, &source)?;
            rt.block_on(naive::serve(listen, &dir, scheme, key, &source))
        }
        Cmd::Dispatch {
            config,
            events,
            shipments,
            dir,
        } => rt.block_on(dispatch_bench(config, events, shipments, dir)),
        Cmd::Wake {
            database_url,
            events,
            rate,
        } => rt.block_on(wake::bench(&database_url, events, rate)),
        Cmd::Layout { model, dir } => {
            let run = layout::run(&model, &dir)?;
            let _ = std::fs::remove_dir_all(&dir);
            let written = run
                .written_per_event
                .map_or_else(|| "unknown".to_string(), |b| format!("{b} bytes"));
            println!(
                "{:?}: sled wrote {written} per event; file {} MiB at the end, {} MiB at most; {} trees",
                model.layout,
                run.size_on_disk >> 20,
                run.peak >> 20,
                run.trees
            );
            Ok(())
        }
        Cmd::Run {
            target,
            config,
            source,
            concurrency,
            duration,
            duplicate_ratio,
            rate,
            body_bytes,
            random_pad,
            scatter_ids,
            total,
            run_id,
            shipments_api_key,
            replay_keys,
            orders_api_key,
            server_pid,
        } => {
            let (scheme, key) = source_key(&config, &source)?;
            let deliveries = Arc::new(Generator {
                scheme,
                key,
                path: format!("/webhooks/{source}"),
                body_bytes,
                random_pad,
                scatter_ids,
                duplicate_ratio,
                run_id: run_id.unwrap_or_else(|| format!("{:x}", now_secs())),
                next: AtomicU64::new(0),
                shipments: shipments_api_key.map(|api_key| (api_key, replay_keys)),
                orders: orders_api_key,
            });
            let cpu_before = server_pid.map(cpu_ticks).transpose()?;
            let report = rt.block_on(async move {
                match rate {
                    None => closed_loop(&target, deliveries, concurrency, duration, total).await,
                    Some(rate) => open_loop(&target, deliveries, concurrency, duration, rate).await,
                }
            })?;
            let answered = report.tally.latencies_us.len();
            let elapsed = report.elapsed;
            report.print(rate, concurrency);
            if let (Some(pid), Some(before)) = (server_pid, cpu_before) {
                let used = Duration::from_secs_f64(
                    cpu_ticks(pid)?.saturating_sub(before) as f64 / clock_ticks_per_second(),
                );
                println!(
                    "server CPU: {:.1} us per request, {:.2} cores",
                    used.as_secs_f64() * 1e6 / answered.max(1) as f64,
                    used.as_secs_f64() / elapsed.as_secs_f64()
                );
            }
            Ok(())
        }
    }
}

/// User plus system time of every thread of `pid` so far, in clock ticks
/// (`/proc/<pid>/stat` fields 14 and 15; the name in field 2 may hold
/// spaces, so fields are counted after its closing parenthesis).
fn cpu_ticks(pid: u32) -> Result<u64, Failed> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("/proc stat without a name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is the first after the name: utime is field 14.
    let field = |n: usize| -> Result<u64, Failed> {
        fields
            .get(n - 3)
            .ok_or_else(|| format!("/proc/{pid}/stat has no field {n}"))?
            .parse::<u64>()
            .map_err(|e| format!("/proc/{pid}/stat field {n}: {e}").into())
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn read_config(path: &std::path::Path) -> Result<Config, Failed> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(Config::parse(&text, &ProcessEnv).map_err(|e| e.to_string())?)
}

/// The signature scheme of a configured source and the key of its first
/// secret.
fn source_key(config: &std::path::Path, source: &str) -> Result<(Scheme, Vec<u8>), Failed> {
    let config = read_config(config)?;
    let src = config
        .source(source)
        .ok_or_else(|| format!("no source {source}"))?;
    let secret = src
        .secrets
        .first()
        .ok_or_else(|| format!("source {source} has no secret"))?;
    let key = src
        .scheme
        .key_from_secret(secret.expose())
        .map_err(|e| format!("source {source}: {e}"))?;
    Ok((src.scheme.clone(), key))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn bare(listen: SocketAddr) -> Result<(), Failed> {
    let listener = TcpListener::bind(listen).await?;
    println!("bare server on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut r =
                        Response::new(Full::new(Bytes::from_static(br#"{"status":"accepted"}"#)));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    Ok::<_, std::convert::Infallible>(r)
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn dispatch_bench(
    config: PathBuf,
    events: usize,
    shipments: usize,
    dir: PathBuf,
) -> Result<(), Failed> {
    use waybill::domain::ids::ShipmentId;
    use waybill::domain::label::Label;
    use waybill::domain::request::ShipmentDetails;
    use waybill::store::prelude::*;
    use waybill::store::{NewEvent, ShipmentRecord, SledStore};

    let config = read_config(&config)?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut store_cfg = config.store.clone();
    store_cfg.path = dir.clone();
    let open = |cfg: waybill::config::StoreConfig| async move {
        let store = tokio::task::spawn_blocking(move || SledStore::open(&cfg)).await??;
        Ok::<_, Failed>(Arc::new(store))
    };
    let close = |store: Arc<SledStore>| async move {
        tokio::task::spawn_blocking(move || store.close()).await??;
        Ok::<_, Failed>(())
    };

    let t = Instant::now();
    let store = open(store_cfg.clone()).await?;
    store.start_dispatcher(config.sources.clone())?;
    for s in 0..shipments {
        let id = ShipmentId::from(format!("shp_{s}"));
        store
            .create_shipment(
                ShipmentRecord::new(
                    id.clone(),
                    "bench".into(),
                    format!("o{s}").into(),
                    ShipmentDetails::example("bench"),
                    0,
                ),
                None,
            )
            .await?;
        let label = Label::new(format!("lbl_{s}"), &id, format!("LG{s:012}"), String::new());
        store
            .record_label(waybill::store::NewLabel { label, at_ms: 1 }, None)
            .await?;
    }
    close(store).await?;
    println!(
        "{shipments} labelled shipments in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let store = open(store_cfg.clone()).await?;
    let mut pending = Vec::new();
    for n in 0..events {
        let tn = format!("LG{:012}", n % shipments);
        let at = format!("2026-11-20T12:{:02}:{:02}Z", (n / 60) % 60, n % 60);
        let status = if n % 2 == 0 {
            "IN_TRANSIT"
        } else {
            "DELIVERED"
        };
        let body = format!(
            r#"{{"type":"tracking.updated","data":{{"tracking_number":"{tn}","status":"{status}","occurred_at":"{at}"}}}}"#
        );
        let fields = waybill::webhook::mapping::Fields {
            key: tn.clone(),
            status: status.to_string(),
            occurred_at: Some(format!("\"{at}\"")),
        };
        let store = store.clone();
        pending.push(tokio::spawn(async move {
            store
                .ingest(NewEvent {
                    source: "bench".into(),
                    event_id: format!("d{n}"),
                    received_at_ms: 1,
                    expires_at_ms: u64::MAX / 2,
                    content_hash: [0; 32],
                    dispatch: true,
                    event_type: Some("tracking.updated".into()),
                    headers: vec![],
                    tracking_number: Some(tn),
                    order_id: None,
                    fields: Some(fields),
                    body: Bytes::from(body),
                })
                .await
        }));
        if pending.len() >= 4096 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    close(store).await?;
    println!(
        "{events} events in the inbox in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let store = open(store_cfg).await?;
    let t = Instant::now();
    store.start_dispatcher(config.sources.clone())?;
    store.settle().await?;
    let secs = t.elapsed().as_secs_f64();
    let left = store.inbox_pending().await?;
    if left != 0 {
        return Err(format!("{left} events left in the inbox after settling").into());
    }
    println!(
        "dispatched {events} events over {shipments} shipments in {secs:.2} s: {:.0} events/s",
        events as f64 / secs
    );
    close(store).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// splitmix64's finalizer: a bijection on u64 that scatters neighbours.
fn scatter(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Generator {
    scheme: Scheme,
    key: Vec<u8>,
    path: String,
    body_bytes: usize,
    random_pad: bool,
    scatter_ids: bool,
    duplicate_ratio: f64,
    run_id: String,
    next: AtomicU64,
    /// Integrator writes instead of webhooks: (API key, keys to cycle).
    shipments: Option<(String, Option<u64>)>,
    /// Orders instead of webhooks, with this API key.
    orders: Option<String>,
}

impl Generator {
    fn request(&self, rng: &mut fastrand::Rng) -> Request<Full<Bytes>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(api_key) = &self.orders {
            let address = r#"{"name":"Ada Lovelace","street1":"12 Elm St","city":"Brooklyn","postal_code":"11201","country":"US"}"#;
            let body = format!(
                r#"{{"order_id":"lo-{run}-{n}","customer_id":"cus-{n}","amount_cents":2599,"currency":"EUR","items":[{{"sku":"SKU-{sku}","quantity":1}}],"ship_to":{address}}}"#,
                run = self.run_id,
                sku = n % 100
            );
            return v1_post(
                "/v1/orders",
                api_key,
                &format!("lo-{}-{n}", self.run_id),
                body,
            );
        }
        if let Some((api_key, cycle)) = &self.shipments {
            let n = cycle.map_or(n, |c| n % c.max(1));
            let address = r#"{"name":"Ada Lovelace","street1":"12 Elm St","city":"Brooklyn","postal_code":"11201","country":"US"}"#;
            let body = format!(
                r#"{{"order_id":"lg-{run}-{n}","carrier":"ups","service":"ground","from":{address},"to":{address},"parcels":[{{"weight_grams":1200,"length_cm":30,"width_cm":20,"height_cm":10}}]}}"#,
                run = self.run_id
            );
            return v1_post(
                "/v1/shipments",
                api_key,
                &format!("lg-{}-{n}", self.run_id),
                body,
            );
        }
        // A duplicate repeats an id already sent (or in flight) in this run.
        let n = if n > 0 && rng.f64() < self.duplicate_ratio {
            rng.u64(..n)
        } else {
            n
        };
        let n = if self.scatter_ids { scatter(n) } else { n };
        let id = format!("lg-{}-{n}", self.run_id);
        let tn = n % 1_000_000_000_000;
        let head = format!(
            r#"{{"id":"{id}","type":"tracking.updated","data":{{"tracking_number":"LG{tn:012}","status":"IN_TRANSIT","occurred_at":"2026-11-20T12:00:00Z"}},"pad":""#
        );
        let pad = self.body_bytes.saturating_sub(head.len() + 2);
        let mut body = head.into_bytes();
        if self.random_pad {
            body.extend(std::iter::repeat_with(|| rng.alphanumeric() as u8).take(pad));
        } else {
            body.extend(std::iter::repeat_n(b'x', pad));
        }
        body.extend_from_slice(b"\"}");
        let mut req = Request::builder()
            .method("POST")
            .uri(&self.path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json");
        for (k, v) in self.scheme.sign(&self.key, &body, now_secs() as i64, &id) {
            req = req.header(k, v);
        }
        req.body(Full::new(Bytes::from(body))).expect("request")
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    accepted: u64,
    duplicate: u64,
    other: u64,
    errors: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies_us.extend(o.latencies_us);
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.other += o.other;
        self.errors += o.errors;
    }

    fn record(&mut self, status: Option<StatusCode>, latency: Duration) {
        self.latencies_us
            .push(latency.as_micros().min(u32::MAX as u128) as u32);
        match status.map(|s| s.as_u16()) {
            Some(202) | Some(201) => self.accepted += 1,
            Some(200) => self.duplicate += 1,
            Some(_) => self.other += 1,
            None => self.errors += 1,
        }
    }
}

struct Report {
    tally: Tally,
    elapsed: Duration,
}

impl Report {
    fn print(mut self, rate: Option<u64>, concurrency: usize) {
        self.tally.latencies_us.sort_unstable();
        let l = &self.tally.latencies_us;
        let pct = |p: f64| -> f64 {
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len().max(1)) - 1;
            l.get(i).map_or(0.0, |&us| f64::from(us) / 1000.0)
        };
        let secs = self.elapsed.as_secs_f64();
        let t = &self.tally;
        let mode = match rate {
            Some(r) => format!("open loop at {r}/s"),
            None => "closed loop".to_string(),
        };
        println!(
            "{mode}, {concurrency} connections, {secs:.1} s: {} requests ({:.0}/s), accepted {} ({:.0}/s), duplicate {}, other {}, errors {}",
            l.len(),
            l.len() as f64 / secs,
            t.accepted,
            t.accepted as f64 / secs,
            t.duplicate,
            t.other,
            t.errors
        );
        println!(
            "latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            pct(0.50),
            pct(0.95),
            pct(0.99),
            pct(0.999),
            pct(1.0)
        );
    }
}

async fn connect(target: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Sends one request on a kept-alive connection, reconnecting when needed.
async fn send(
    target: SocketAddr,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    req: Request<Full<Bytes>>,
) -> Option<StatusCode> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = connect(target).await;
    }
    let c = conn.as_mut()?;
    if c.ready().await.is_err() {
        *conn = None;
        return None;
    }
    match c.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Some(status)
        }
        Err(_) => {
            *conn = None;
            None
        }
    }
}

/// One connection's sender: its share of the deliveries, its kept-alive
/// connection, and what it measured.
struct Worker {
    target: SocketAddr,
    deliveries: Arc<Generator>,
    rng: fastrand::Rng,
    conn: Option<SendRequest<Full<Bytes>>>,
    tally: Tally,
}

impl Worker {
    /// `concurrency` workers spread over `targets`, each with its own seed.
    fn all(targets: &[SocketAddr], concurrency: usize, deliveries: &Arc<Generator>) -> Vec<Worker> {
        targets
            .iter()
            .cycle()
            .take(concurrency)
            .enumerate()
            .map(|(w, &target)| Worker {
                target,
                deliveries: deliveries.clone(),
                rng: fastrand::Rng::with_seed(w as u64),
                conn: None,
                tally: Tally::default(),
            })
            .collect()
    }

    /// Sends one delivery, its latency counted from `since`.
    async fn send(&mut self, since: Instant) {
        let req = self.deliveries.request(&mut self.rng);
        let status = send(self.target, &mut self.conn, req).await;
        self.tally.record(status, since.elapsed());
    }
}

/// What the workers measured, once they are all done.
async fn report(
    running: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
) -> Result<Report, Failed> {
    let mut tally = Tally::default();
    for w in running {
        tally.merge(w.await?);
    }
    Ok(Report {
        tally,
        elapsed: started.elapsed(),
    })
}

async fn closed_loop(
    targets: &[SocketAddr],
    deliveries: Arc<Generator>,
    concurrency: usize,
    duration: Duration,
    total: Option<u64>,
) -> Result<Report, Failed> {
    let started = Instant::now();
    let deadline = started + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let running = Worker::all(targets, concurrency, &deliveries)
        .into_iter()
        .map(|mut worker| {
            let sent = sent.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline
                    && total.is_none_or(|t| sent.fetch_add(1, Ordering::Relaxed) < t)
                {
                    worker.send(Instant::now()).await;
                }
                worker.tally
            })
        })
        .collect();
    report(running, started).await
}

async fn open_loop(
    targets: &[SocketAddr],
    deliveries: Arc<Generator>,
    concurrency: usize,
    duration: Duration,
    rate: u64,
) -> Result<Report, Failed> {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let count = (duration.as_secs_f64() * rate as f64) as u64;
    let (tx, rx) = async_channel(count as usize);
    let running = Worker::all(targets, concurrency, &deliveries)
        .into_iter()
        .map(|mut worker| {
            let rx = rx.clone();
            tokio::spawn(async move {
                // From the intended send time: waiting for a free
                // connection counts.
                while let Some(intended) = rx.recv().await {
                    worker.send(intended).await;
                }
                worker.tally
            })
        })
        .collect();
    drop(rx);
    for i in 0..count {
        let intended = started + interval * i as u32;
        tokio::time::sleep_until(intended.into()).await;
        tx.send(intended).await;
    }
    drop(tx);
    report(running, started).await
}

/// A multi-consumer queue of intended send times: tokio's mpsc has one
/// receiver, so the receiver sits behind a mutex shared by the workers.
fn async_channel(cap: usize) -> (Sender, Receiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
    (Sender(tx), Receiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct Sender(tokio::sync::mpsc::Sender<Instant>);

impl Sender {
    async fn send(&self, t: Instant) {
        let _ = self.0.send(t).await;
    }
}

#[derive(Clone)]
struct Receiver(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>);

impl Receiver {
    async fn recv(&self) -> Option<Instant> {
        self.0.lock().await.recv().await
    }
}

/// An integrator's write: a JSON `POST` with its key and idempotency key.
fn v1_post(uri: &str, api_key: &str, idempotency_key: &str, body: String) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {api_key}"))
        .header("idempotency-key", idempotency_key)
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

#[cfg(test)]
mod tests {
    /// Scattered ids stay unique, so a run still stores every delivery
    /// it meant to, and neighbours land far apart.
    #[test]
    fn scattered_numbers_are_distinct_and_out_of_order() {
        let scattered: Vec<u64> = (0..200_000).map(super::scatter).collect();
        let distinct: std::collections::HashSet<_> = scattered.iter().collect();
        assert_eq!(distinct.len(), scattered.len());
        let ascending = scattered.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            (90_000..110_000).contains(&ascending),
            "about half of the steps go up: {ascending}"
        );
    }
}
