use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waybill::config::Config;
use waybill::telemetry::{self, LogFormat};

/// A webhook ingestion, deduplication and idempotency gateway.
#[derive(Parser)]
#[command(name = "waybill", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file: this path, else $WAYBILL_CONFIG, else
/// config/waybill.toml, else the built-in default.
#[derive(clap::Args)]
struct ConfigArg {
    /// Config file (TOML); without it: config/waybill.toml, else the built-in default.
    #[arg(long, env = "WAYBILL_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Log lines as JSON (for collectors) or as text (for a terminal).
        #[arg(long, value_enum, default_value = "json")]
        log_format: LogFormat,
        /// Write the process id here once serving (removed on exit), so a
        /// reload is `kill -HUP "$(cat PATH)"`.
        #[arg(long, value_name = "PATH")]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config, resolving every secret; exit 2 naming each bad key.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the simulated carrier, payments and inventory services.
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        /// Stock of a SKU, as SKU=N; may be repeated. Others start at 1000.
        #[arg(long, value_parser = parse_stock)]
        stock: Vec<(String, i64)>,
        /// Chance of a 503 before doing the work.
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        fail_rate: f64,
        /// Chance of doing the work and then losing the answer (500 or a dropped connection).
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        lost_response_rate: f64,
        /// Delay before every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Seed for the fault dice, for a repeatable run.
        #[arg(long)]
        seed: Option<u64>,
        /// Send signed tracking webhooks for every label to this URL.
        #[arg(long, requires = "secret")]
        emit_webhooks: Option<String>,
        /// The Standard Webhooks secret (whsec_...) to sign them with.
        #[arg(long)]
        secret: Option<String>,
        /// Chance that an emitted webhook is sent twice.
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        duplicate_rate: f64,
        /// Chance that an emitted webhook is held back and sent after the next one.
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        reorder_rate: f64,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<PathBuf>,
        /// Log lines as JSON or as text.
        #[arg(long, value_enum, default_value = "json")]
        log_format: LogFormat,
    },
    /// Print the headers a delivery of FILE from a source would carry.
    Sign {
        /// The configured source whose first secret and scheme sign.
        #[arg(long)]
        source: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print a ready curl command for this URL instead.
        #[arg(long, value_name = "URL")]
        curl: Option<String>,
        /// The body to sign, byte for byte.
        file: PathBuf,
    },
    /// Check a captured delivery against a source's secrets: exit 0 and
    /// print `valid`, the secret's number and the event id; exit 1 and
    /// print why not; exit 2 for usage or config errors. Never prints a
    /// secret.
    Verify {
        /// The configured source the delivery was sent to.
        #[arg(long)]
        source: String,
        #[command(flatten)]
        config: ConfigArg,
        /// A header of the delivery, as 'Name: value'; repeat for each.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Verify as of this time (unix seconds) instead of now, for a
        /// delivery captured earlier.
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<i64>,
        /// The delivery's body, byte for byte.
        file: PathBuf,
    },
    /// Search, show and redeliver stored events through a running
    /// gateway's admin API; the admin token is read from
    /// WAYBILL_ADMIN_TOKEN.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Apply the PostgreSQL schema migrations this binary carries to the
    /// database the config's `[store] url` names, or to --database-url
    /// (safe while other replicas start); print what was done.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The database, as a libpq URL or key=value string, instead of the
        /// config's.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Compare the carrier's labels, the payment service's charges and the
    /// inventory's reservations with the store's records: one JSON line per
    /// discrepancy; exit 1 when there is any. Opens the store itself (on
    /// sled, only while no gateway runs on it).
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        /// Only records the services made after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Repair what is safe: void labels nobody owns or whose shipment
        /// is cancelled, release reservations with no order. Charges are
        /// never refunded, only reported.
        #[arg(long)]
        fix: bool,
    },
    /// Print a completion script for a shell.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Where the gateway's admin API is.
#[derive(clap::Args)]
struct Target {
    /// The gateway's base URL, http:// or https://.
    #[arg(long, env = "WAYBILL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

/// The filters a search and a bulk redelivery share.
#[derive(clap::Args)]
struct EventFilters {
    /// Events from this source.
    #[arg(long)]
    source: Option<String>,
    /// Events of this type.
    #[arg(long)]
    event_type: Option<String>,
    /// Received at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Received at or before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Events that match, newest first, one JSON object per line; a page
    /// at a time (the cursor of the next one goes to stderr) or all pages.
    Search {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filters: EventFilters,
        /// This event id (with --source: that event).
        #[arg(long)]
        event_id: Option<String>,
        /// Events for this tracking number.
        #[arg(long)]
        tracking_number: Option<String>,
        /// Events for this order.
        #[arg(long)]
        order_id: Option<String>,
        /// applied, stale, ignored, parked, dead, pending or stored.
        #[arg(long)]
        outcome: Option<String>,
        /// Events per page, 1 to 1000.
        #[arg(long)]
        limit: Option<u32>,
        /// Start at this page (a cursor printed by an earlier search).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page to the end.
        #[arg(long)]
        all: bool,
    },
    /// One event: its fields, headers (signatures redacted) and payload.
    Show {
        #[command(flatten)]
        target: Target,
        /// The event's source.
        source: String,
        /// The event's id.
        event_id: String,
    },
    /// Dispatch again one parked or dead event (SOURCE EVENT_ID), or every
    /// one matching --outcome and the filters.
    Redeliver {
        #[command(flatten)]
        target: Target,
        /// The event's source (with EVENT_ID: that one event).
        #[arg(value_name = "SOURCE", requires = "event_id", conflicts_with_all = ["outcome", "dry_run", "limit"])]
        event_source: Option<String>,
        /// The event's id.
        #[arg(value_name = "EVENT_ID")]
        event_id: Option<String>,
        /// Every event with this outcome: dead or parked.
        #[arg(long, required_unless_present = "event_source")]
        outcome: Option<String>,
        #[command(flatten)]
        filters: EventFilters,
        /// At most this many, newest first (1 to 10000; default 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Only count what would be redelivered.
        #[arg(long)]
        dry_run: bool,
    },
}

fn events(command: EventsCommand) -> ExitCode {
    use waybill::tools::admin_client::{AdminClient, EventsError, Filters, TOKEN_ENV};
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let token = std::env::var(TOKEN_ENV).ok();
    let shared = |f: EventFilters| {
        Filters::default()
            .with("source", f.source)
            .with("event_type", f.event_type)
            .with("since", f.since)
            .with("until", f.until)
    };
    let result: Result<String, EventsError> = runtime.block_on(async move {
        match command {
            EventsCommand::Search {
                target,
                filters,
                event_id,
                tracking_number,
                order_id,
                outcome,
                limit,
                cursor,
                all,
            } => {
                let client = AdminClient::new(&target.url, token)?;
                let filters = shared(filters)
                    .with("event_id", event_id)
                    .with("tracking_number", tracking_number)
                    .with("order_id", order_id)
                    .with("outcome", outcome)
                    .with("limit", limit.map(|l| l.to_string()));
                let (lines, next) = client.search(&filters, cursor, all).await?;
                if let Some(next) = next {
                    eprintln!("more: --cursor {next}");
                }
                Ok(lines)
            }
            EventsCommand::Show {
                target,
                source,
                event_id,
            } => {
                AdminClient::new(&target.url, token)?
                    .show(&source, &event_id)
                    .await
            }
            EventsCommand::Redeliver {
                target,
                event_source,
                event_id,
                outcome,
                filters,
                limit,
                dry_run,
            } => {
                let client = AdminClient::new(&target.url, token)?;
                if let (Some(source), Some(id)) = (event_source, event_id) {
                    return client.redeliver_one(&source, &id).await;
                }
                let mut request = serde_json::Map::new();
                for (k, v) in shared(filters).with("outcome", outcome).pairs {
                    request.insert(k.into(), v.into());
                }
                if let Some(limit) = limit {
                    request.insert("limit".into(), limit.into());
                }
                request.insert("dry_run".into(), dry_run.into());
                client.redeliver_many(request).await
            }
        }
    });
    match result {
        Ok(out) => exit_after(waybill::tools::cli::emit(out.as_bytes()), ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The database of the config at `path`: its url, and the CA certificates
/// its server is checked against (none: the public roots); or the exit
/// code after saying why there is none.
fn database_of(path: Option<&std::path::Path>) -> Result<(String, Vec<Vec<u8>>), ExitCode> {
    match Config::load(path) {
        Ok((config, _)) => match config.store.backend {
            waybill::config::StoreBackend::Postgres { url, ca_certs, .. } => {
                Ok((url.expose().to_string(), ca_certs))
            }
            waybill::config::StoreBackend::Sled => {
                eprintln!(
                    "error: the config's store is sled; migrations are for backend = \"postgres\" (or give --database-url)"
                );
                Err(ExitCode::from(2))
            }
        },
        Err(errors) => {
            waybill::tools::cli::print_errors(&errors);
            Err(ExitCode::from(2))
        }
    }
}

fn migrate(url: &str, ca_certs: &[Vec<u8>]) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let done = async {
            let store = waybill::store::postgres::PgStore::connect(
                url,
                ca_certs,
                2,
                waybill::health::Health::new(),
            )?;
            let applied = store.migrate().await?;
            Ok::<_, waybill::store::StoreError>((applied, store.schema_version().await?))
        };
        match done.await {
            Ok((applied, version)) => exit_after(
                waybill::tools::cli::emit(
                    format!("applied {applied} migration(s); the schema is at version {version}\n")
                        .as_bytes(),
                ),
                ExitCode::SUCCESS,
            ),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A runtime from `builder`, or None after saying why on stderr.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

#[global_allocator]
static ALLOCATOR: waybill::alloc::Allocator = waybill::alloc::Allocator;

/// The allocator's settings, applied by the loader before anything of
/// Rust's runs: the first arena mimalloc reserves, at the first
/// allocation, is already made the way `alloc::tune` says.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        waybill::alloc::tune();
    }
    tune
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Events { command } => events(command),
        Command::Migrate {
            config,
            database_url,
        } => match database_url.map_or_else(
            || database_of(config.config.as_deref()),
            |url| Ok((url, Vec::new())),
        ) {
            Ok((url, ca_certs)) => migrate(&url, &ca_certs),
            Err(code) => code,
        },
        Command::Reconcile { config, since, fix } => {
            let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            ExitCode::from(runtime.block_on(waybill::tools::reconcile::run(
                config.config.as_deref(),
                since.as_deref(),
                fix,
            )))
        }
        Command::CheckConfig { config } => {
            ExitCode::from(waybill::tools::cli::check_config(config.config.as_deref()) as u8)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: written straight to a closed pipe (`|
            // head`), the generator panics.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "waybill", &mut script);
            exit_after(waybill::tools::cli::emit(&script), ExitCode::SUCCESS)
        }
        Command::Verify {
            source,
            config,
            headers,
            at,
            file,
        } => match waybill::tools::cli::verify(
            config.config.as_deref(),
            &source,
            &headers,
            &file,
            at,
        ) {
            Ok(verdict) => {
                let code = match verdict {
                    waybill::tools::cli::Verdict::Valid { .. } => ExitCode::SUCCESS,
                    waybill::tools::cli::Verdict::Invalid(_) => ExitCode::from(1),
                };
                exit_after(
                    waybill::tools::cli::emit(verdict.to_string().as_bytes()),
                    code,
                )
            }
            Err(e) => usage_error(e),
        },
        Command::Sign {
            source,
            config,
            curl,
            file,
        } => match waybill::tools::cli::sign(
            config.config.as_deref(),
            &source,
            &file,
            curl.as_deref(),
        ) {
            Ok(out) => exit_after(waybill::tools::cli::emit(out.as_bytes()), ExitCode::SUCCESS),
            Err(e) => usage_error(e),
        },
        Command::Serve {
            config,
            log_format,
            pid_file,
        } => serve(config.config, log_format, pid_file),
        Command::Simulate {
            listen,
            stock,
            fail_rate,
            lost_response_rate,
            latency_ms,
            seed,
            emit_webhooks,
            secret,
            duplicate_rate,
            reorder_rate,
            tls_cert,
            tls_key,
            log_format,
        } => {
            telemetry::init_logging(log_format);
            let tls = match tls_cert.zip(tls_key) {
                None => None,
                Some((cert, key)) => {
                    match waybill::tools::simulator::tls_server_config(&cert, &key) {
                        Ok(tls) => Some(tls),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let config = waybill::tools::simulator::SimConfig {
                stock: stock.into_iter().collect(),
                default_stock: 1000,
                fail_rate,
                lost_response_rate,
                latency: std::time::Duration::from_millis(latency_ms),
                seed,
                emit: emit_webhooks.zip(secret),
                duplicate_rate,
                reorder_rate,
                tls,
            };
            simulate(listen, config)
        }
    }
}

/// `code`, unless writing the output failed for a reason other than a
/// reader that went away.
fn exit_after(written: std::io::Result<()>, code: ExitCode) -> ExitCode {
    match written {
        Ok(()) => code,
        Err(_) => ExitCode::FAILURE,
    }
}

/// A usage or config error of a command that does not serve: said on
/// stderr, exit 2.
fn usage_error(e: waybill::tools::cli::SignError) -> ExitCode {
    match e {
        waybill::tools::cli::SignError::Config(errors) => {
            waybill::tools::cli::print_errors(&errors)
        }
        e => eprintln!("error: {e}"),
    }
    ExitCode::from(2)
}

fn serve(config: Option<PathBuf>, log_format: LogFormat, pid_file: Option<PathBuf>) -> ExitCode {
    telemetry::init_logging(log_format);
    log_panics();
    raise_descriptor_limit();
    // Failure injection for the crash tests, configured by FAILPOINTS; the
    // feature is off in normal builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let config_path = config;
    let (config, origin) = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for issue in &errors.0 {
                tracing::error!(key = %issue.key, why = %issue.why, "invalid config");
            }
            waybill::tools::cli::print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %origin, "config loaded");
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    if let Err(why) = waybill::otlp::start(&config.telemetry, runtime.handle().clone()) {
        tracing::error!(error = %why, "cannot start the span export");
        return ExitCode::FAILURE;
    }
    let code = runtime.block_on(async move {
        let served = async {
            let listener = bind(config.server.listen).await?;
            let ops = match config.server.ops_listen {
                None => None,
                Some(addr) => Some(bind(addr).await?),
            };
            let shutdown = shutdown_signal().map_err(fatal("cannot install signal handlers"))?;
            let app = waybill::app::App::start(config)
                .await
                .map_err(fatal("cannot open the store"))?;
            reload_on_hangup(app.clone(), config_path)
                .map_err(fatal("cannot install signal handlers"))?;
            // Written once a hangup would reload, not kill, the process.
            let _pid_file = match pid_file {
                Some(path) => {
                    Some(PidFile::write(path).map_err(fatal("cannot write the pid file"))?)
                }
                None => None,
            };
            app.serve_with_ops(listener, ops, shutdown)
                .await
                .map_err(fatal("stopped with an error"))
        };
        exit_code(served.await)
    });
    // The spans still held, sent while the runtime their calls run on
    // still runs.
    waybill::otlp::stop();
    code
}

/// The process id in a file for as long as the process serves; a new file
/// is written whole and renamed into place, so a reader never sees part
/// of one.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: PathBuf) -> std::io::Result<PidFile> {
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        std::fs::write(&partial, format!("{}\n", std::process::id()))?;
        std::fs::rename(&partial, &path)?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove the pid file");
        }
    }
}

/// Why the process could not start, or stopped: logged once at ERROR,
/// and the exit code is 1.
struct Fatal {
    what: &'static str,
    error: String,
}

fn fatal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Fatal {
    move |e| Fatal {
        what,
        error: e.to_string(),
    }
}

fn exit_code(result: Result<(), Fatal>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { what, error }) => {
            tracing::error!(error = %error, "{what}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Fatal> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| fatal("cannot bind")(format!("{addr}: {e}")))
}

/// A panic anywhere is logged as one ERROR line with its thread and
/// place. What happens next is decided where it is caught: a request's
/// panic answers that request 500, a component's stops the process.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panic"
        );
    }));
}

/// Lifts the soft descriptor limit to the hard one, as most servers do:
/// the default soft limit (often 1024) is far below what a gateway with
/// thousands of client connections needs. The connection cap is then
/// derived from the limit in force (`http::connection_cap`).
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability from 0 to 1")),
    }
}

fn parse_stock(s: &str) -> Result<(String, i64), String> {
    match s.split_once('=') {
        Some((sku, n)) if !sku.is_empty() => n
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| (sku.to_string(), n))
            .ok_or_else(|| format!("{s:?}: the stock must be a whole number, like SKU-1=20")),
        _ => Err(format!("{s:?} is not SKU=N")),
    }
}

fn simulate(
    listen: std::net::SocketAddr,
    config: waybill::tools::simulator::SimConfig,
) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let served = async {
            let listener = bind(listen).await?;
            let shutdown = shutdown_signal().map_err(fatal("cannot install signal handlers"))?;
            ignore_hangup().map_err(fatal("cannot install signal handlers"))?;
            tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "simulator serving");
            waybill::tools::simulator::run(listener, config, shutdown).await;
            Ok(())
        };
        exit_code(served.await)
    })
}

/// `SIGHUP` re-reads the config file the gateway started with and puts
/// it in force, or refuses it whole (GUARANTEES.md: "Reload"). The handler is
/// installed before serving, so a hangup sent right after start is never
/// the default (fatal) action.
fn reload_on_hangup(
    app: std::sync::Arc<waybill::app::App>,
    path: Option<PathBuf>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("hangup received; reloading the config");
            let path = path.clone();
            let loaded = tokio::task::spawn_blocking(move || Config::load(path.as_deref()))
                .await
                .map_err(|e| {
                    waybill::config::ConfigErrors(vec![waybill::config::Issue {
                        key: String::new(),
                        why: format!("reading the config failed: {e}"),
                    }])
                })
                .and_then(|r| r.map(|(config, _)| config));
            app.reload(loaded);
        }
    });
    Ok(())
}

/// The simulator has no config to reload: a hangup (a runbook's reload
/// sent to every process on a host, say) is logged and changes nothing,
/// instead of the default action, which ends the process.
fn ignore_hangup() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("hangup received; the simulator has nothing to reload");
        }
    });
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, before the gateway says it
/// is serving, so a signal sent right after start is never the default
/// (fatal) action; the returned future resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}
