//! Typed configuration: the TOML file, secret references and validation.
//!
//! The file is read into a `toml::Table` and walked by hand rather than
//! deserialised straight into structs, because serde stops at the first bad
//! field while an operator fixing a config wants every bad key at once (the
//! way linkerd's `env.rs` reports all settings). Unknown keys are errors too:
//! a misspelt `dedupe_retention` silently falling back to the default is the
//! kind of surprise that costs an on-call engineer a night.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::webhook::signature::{Encoding, Scheme, SchemeKind};

/// The config shipped with the binary, used when no file is named and the
/// default path does not exist, so `waybill serve` runs on a fresh machine.
/// Overrides `server.listen`.
pub const LISTEN_ENV: &str = "WAYBILL_LISTEN";
/// The PostgreSQL url when the config names none.
pub const DATABASE_URL_ENV: &str = "WAYBILL_DATABASE_URL";

pub const EMBEDDED_DEFAULT: &str = include_str!("../config/waybill.toml");
pub const DEFAULT_PATH: &str = "config/waybill.toml";

/// The largest `server.max_body_bytes` a config may set: no stored body
/// is larger.
pub const MAX_BODY_BYTES_LIMIT: usize = 1 << 30;

/// One bad key and why it is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub key: String,
    pub why: String,
}

/// Every problem found in a config, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Issue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", issue.key, issue.why)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a secret came from. Printed in summaries and warnings; the value never is.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    Literal,
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Literal => f.write_str("literal"),
            SecretOrigin::Env(name) => write!(f, "env:{name}"),
            SecretOrigin::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A resolved secret. `Debug` shows only its origin so that a stray `{:?}`
/// in a log line cannot leak it.
#[derive(Clone)]
pub struct Secret {
    value: String,
    origin: SecretOrigin,
}

impl Secret {
    pub fn literal(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            origin: SecretOrigin::Literal,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }
}

/// Two secrets are equal when their values are: a reload that only moves
/// a secret to another origin changes nothing.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.value == other.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.origin)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub admin_token: Option<Secret>,
    /// `admin.secure_cookie`: the console is served over TLS (by a proxy
    /// in front), so its session cookie is `Secure`.
    pub console_secure_cookie: bool,
    pub sources: Vec<SourceConfig>,
    pub partners: Vec<PartnerConfig>,
    pub downstream: DownstreamConfig,
    pub telemetry: TelemetryConfig,
    /// `[reconcile] interval`: how often the background pass compares the
    /// services' books with the store's records; none, never.
    pub reconcile_every: Option<Duration>,
    /// Things worth a WARN at start that do not refuse it.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    /// Open connections at most (kept below the descriptor limit).
    pub max_connections: usize,
    pub request_timeout: Duration,
    /// A request's head must arrive within this, and an idle kept-alive
    /// connection is closed after it (GUARANTEES.md: "Hostile traffic").
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Request bodies held before their signature or API key is verified,
    /// in total (GUARANTEES.md: "Hostile traffic").
    pub max_unverified_bytes: u64,
    /// A listener of its own for `/healthz`, `/readyz` and `/metrics`,
    /// outside the public connection cap.
    pub ops_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` name the client
    /// (`http::forwarded`); none: the peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `store.index_flush` when the config names none.
pub const DEFAULT_INDEX_FLUSH: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub dedupe_retention: Duration,
    pub idempotency_retention: Duration,
    pub in_progress_timeout: Duration,
    /// sled's page cache. Its 1 GiB default suits a database, not a gateway
    /// whose hot set is the recent identities.
    pub cache_bytes: u64,
    /// Below this much free space on the store's file system, writes are
    /// refused (503) before sled meets a full disk, which it cannot recover
    /// from in-process; they resume once space is back.
    pub min_free_bytes: u64,
    /// A payload segment is finished, and a new one started, at this size.
    /// Retention deletes whole segments, so smaller ones give disk back
    /// sooner and larger ones mean fewer files.
    pub segment_bytes: u64,
    /// How often sled writes its log out by itself, which also paces how
    /// fast it takes its file back (docs/CONFIG.md, `index_flush`).
    pub index_flush: Duration,
    pub backend: StoreBackend,
}

impl StoreBackend {
    fn url(&self) -> Option<&Secret> {
        match self {
            StoreBackend::Postgres { url, .. } => Some(url),
            StoreBackend::Sled => None,
        }
    }

    fn ca_certs(&self) -> Option<&[Vec<u8>]> {
        match self {
            StoreBackend::Postgres { ca_certs, .. } => Some(ca_certs),
            StoreBackend::Sled => None,
        }
    }

    fn pool_size(&self) -> Option<usize> {
        match self {
            StoreBackend::Postgres { pool_size, .. } => Some(*pool_size),
            StoreBackend::Sled => None,
        }
    }
}

/// Where the store lives (GUARANTEES.md: "Replicas on PostgreSQL").
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// Embedded, under `path`: one process.
    Sled,
    /// A PostgreSQL database any number of processes share; its
    /// certificate is checked against `ca_certs` (DER, from
    /// `store.ca_file`) or the public roots, as the url's sslmode asks.
    Postgres {
        url: Secret,
        pool_size: usize,
        ca_certs: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Tracking,
    Payment,
    StoreOnly,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Tracking => "tracking",
            SourceKind::Payment => "payment",
            SourceKind::StoreOnly => "store-only",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// JSON pointers into a delivery's body, per source kind.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Required string fields: (name, pointer). For tracking:
    /// tracking_number and status; for payment: order_id and status.
    pub required: Vec<(&'static str, String)>,
    pub occurred_at: Option<String>,
    pub status_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub secrets: Vec<Secret>,
    pub scheme: Scheme,
    pub event_id: Option<String>,
    pub dedupe_retention: Duration,
    pub event_type: Option<String>,
    pub accept_event_types: Option<Vec<String>>,
    pub rate_limit: Option<RateLimit>,
    pub mapping: Option<Mapping>,
}

impl SourceConfig {
    /// How long an identity of this source is remembered: its
    /// `dedupe_retention`, and for a scheme that signs a timestamp at least
    /// twice the tolerance and one second more. Timestamps are whole
    /// seconds: a delivery received late in one second may be replayed
    /// until the end of the second twice the tolerance on (GUARANTEES.md: "Hostile traffic").
    pub fn identity_retention(&self) -> Duration {
        match self.scheme.tolerance() {
            Some(tolerance) => self
                .dedupe_retention
                .max(tolerance * 2 + Duration::from_secs(1)),
            None => self.dedupe_retention,
        }
    }

    /// Whether an event of this type (None when absent) goes to the state
    /// machine. A configured `event_type` pointer that is absent makes the
    /// event a type outside `accept_event_types` (GUARANTEES.md: "Event identity").
    pub fn dispatches(&self, event_type: Option<&str>) -> bool {
        if self.kind == SourceKind::StoreOnly {
            return false;
        }
        match (&self.accept_event_types, event_type) {
            (None, _) => true,
            (Some(_), None) => self.event_type.is_none(),
            (Some(accepted), Some(t)) => accepted.iter().any(|a| a == t),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PartnerConfig {
    pub name: String,
    pub api_keys: Vec<Secret>,
    pub rate_limit: Option<RateLimit>,
}

/// Where spans go (`otlp`): an OTLP/HTTP collector's base URL, spans
/// posted to its `/v1/traces`; none, no export.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span.
    pub service_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamConfig {
    /// `http://` (the simulator) or `https://` (a real carrier).
    pub base_url: String,
    /// `downstream.ca_file`: the only certificates an `https://`
    /// downstream is verified against (DER, read from the PEM at load);
    /// empty: the platform's roots (webpki's).
    pub ca_certs: Vec<Vec<u8>>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// How secret references are resolved. Tests pass their own environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

/// An environment with no variables, for unit tests.
#[cfg(test)]
pub(crate) struct NoEnv;

#[cfg(test)]
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The sources the crate's unit tests read events with, from one config:
/// - `carrier` (tracking): the event id at `/id`, the type at `/type`, of
///   which only `tracker.updated` is dispatched; the tracking number at
///   `/tn`, the status at `/st` (`transit`, `delivered`), the time at `/at`;
/// - `pay` (payment): the order id at `/order`, the status at `/st` (`ok`,
///   `refund`);
/// - `hashed` (store-only): identified by its content.
#[cfg(test)]
pub(crate) fn test_sources() -> Vec<SourceConfig> {
    // Every one signed the same way; each its own kind and fields.
    let source = |name: &str, kind: &str, rest: &str| {
        format!(
            "[[sources]]\nname = \"{name}\"\nkind = \"{kind}\"\nsecrets = [\"x\"]\n\
             signature = {{ scheme = \"github\" }}\n{rest}\n"
        )
    };
    let text = [
        source(
            "carrier",
            "tracking",
            r#"
            event_id = "/id"
            event_type = "/type"
            accept_event_types = ["tracker.updated"]
            [sources.mapping]
            tracking_number = "/tn"
            status = "/st"
            occurred_at = "/at"
            [sources.mapping.status_map]
            transit = "IN_TRANSIT"
            delivered = "DELIVERED"
            "#,
        ),
        source(
            "pay",
            "payment",
            r#"
            [sources.mapping]
            order_id = "/order"
            status = "/st"
            [sources.mapping.status_map]
            ok = "SUCCEEDED"
            refund = "REFUNDED"
            "#,
        ),
        source("hashed", "store-only", ""),
    ]
    .concat();
    match Config::parse(&text, &NoEnv) {
        Ok(config) => config.sources,
        Err(e) => unreachable!("the test sources parse: {e:?}"),
    }
}

/// One of `test_sources`, by name.
#[cfg(test)]
pub(crate) fn test_source(name: &str) -> SourceConfig {
    test_sources()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| unreachable!("no test source {name}"))
}

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Reads the config named on the command line, else `WAYBILL_CONFIG`,
    /// else the default path, else the embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, String), ConfigErrors> {
        let from_env = std::env::var_os("WAYBILL_CONFIG").map(PathBuf::from);
        let (text, origin) = match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) => {
                    return Err(single(
                        "config",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            },
            None => match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(text) => (text, DEFAULT_PATH.to_string()),
                Err(_) => (EMBEDDED_DEFAULT.to_string(), "embedded default".to_string()),
            },
        };
        Config::parse(&text, &ProcessEnv).map(|c| (c, origin))
    }

    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let mut root: Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(single("config", toml_error(text, &e))),
        };
        let mut w = Walker {
            issues: Vec::new(),
            warnings: Vec::new(),
            env,
        };
        let mut server_t = w.table(&mut root, "server", "server");
        let server = w.server(&mut server_t);
        let mut store_t = w.table(&mut root, "store", "store");
        let store = w.store(&mut store_t);
        let mut admin_t = w.table(&mut root, "admin", "admin");
        let console_secure_cookie = w.opt_bool(&mut admin_t, "secure_cookie", "admin");
        let admin_token = w.admin(&mut admin_t);
        let sources = w.sources(&mut root, store.dedupe_retention);
        let partners = w.partners(&mut root);
        let mut down_t = w.table(&mut root, "downstream", "downstream");
        let downstream = w.downstream(&mut down_t);
        let mut telemetry_t = w.table(&mut root, "telemetry", "telemetry");
        let telemetry = w.telemetry(&mut telemetry_t);
        let mut reconcile_t = w.table(&mut root, "reconcile", "reconcile");
        let reconcile_every = w.opt_duration(&mut reconcile_t, "interval", "reconcile");
        w.unknown(&reconcile_t, "reconcile");
        w.unknown(&root, "");
        if !w.issues.is_empty() {
            return Err(ConfigErrors(w.issues));
        }
        let mut warnings = w.warnings;
        for s in &sources {
            if s.secrets.iter().any(|k| k.origin == SecretOrigin::Literal) {
                warnings.push(format!(
                    "source {} uses a literal secret from the config file; use env: or file: outside development",
                    s.name
                ));
            }
        }
        for p in &partners {
            if p.api_keys.iter().any(|k| k.origin == SecretOrigin::Literal) {
                warnings.push(format!(
                    "partner {} uses a literal API key from the config file; use env: or file: outside development",
                    p.name
                ));
            }
        }
        Ok(Config {
            server,
            store,
            admin_token,
            console_secure_cookie: console_secure_cookie.unwrap_or(false),
            sources,
            partners,
            downstream,
            telemetry,
            reconcile_every,
            warnings,
        })
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The keys of `[server]` and `[store]` whose value differs in `new`:
    /// they are bound at start (the listener, the store's files, the
    /// connection and in-flight caps), so a reload cannot change them.
    /// `store.dedupe_retention` is not among them: it is only the default
    /// of each source's retention, which a reload does change.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        /// Each key whose value, read by its expression from the old
        /// section and the new, differs.
        macro_rules! changed {
            ($old:expr, $new:expr; $($key:literal => |$c:ident| $get:expr,)*) => {
                [$(($key, { let $c = $old; $get } != { let $c = $new; $get }),)*]
            };
        }
        let server = changed!(&self.server, &new.server;
            "server.listen" => |c| c.listen,
            "server.max_body_bytes" => |c| c.max_body_bytes,
            "server.max_in_flight" => |c| c.max_in_flight,
            "server.max_connections" => |c| c.max_connections,
            "server.request_timeout" => |c| c.request_timeout,
            "server.header_timeout" => |c| c.header_timeout,
            "server.shutdown_grace" => |c| c.shutdown_grace,
            "server.max_unverified_mb" => |c| c.max_unverified_bytes,
            "server.ops_listen" => |c| c.ops_listen,
            "server.trusted_proxies" => |c| &c.trusted_proxies,
        );
        let store = changed!(&self.store, &new.store;
            "store.path" => |c| &c.path,
            "store.idempotency_retention" => |c| c.idempotency_retention,
            "store.in_progress_timeout" => |c| c.in_progress_timeout,
            "store.cache_mb" => |c| c.cache_bytes,
            "store.min_free_mb" => |c| c.min_free_bytes,
            "store.segment_mb" => |c| c.segment_bytes,
            "store.index_flush" => |c| c.index_flush,
            "store.backend" => |c| std::mem::discriminant(&c.backend),
            "store.url" => |c| c.backend.url(),
            "store.ca_file" => |c| c.backend.ca_certs(),
            "store.pool_size" => |c| c.backend.pool_size(),
        );
        let telemetry = changed!(&self.telemetry, &new.telemetry;
            "telemetry.otlp_endpoint" => |c| &c.otlp_endpoint,
            "telemetry.service_name" => |c| &c.service_name,
        );
        let reconcile = changed!(self, new;
            "reconcile.interval" => |c| c.reconcile_every,
        );
        server
            .into_iter()
            .chain(store)
            .chain(telemetry)
            .chain(reconcile)
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect()
    }

    /// A human summary for `check-config`: names and origins, never values.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let store = match &self.store.backend {
            StoreBackend::Sled => format!("sled at {}", self.store.path.display()),
            // The url's origin only: the url itself may hold a password.
            StoreBackend::Postgres { url, pool_size, .. } => {
                format!("postgres (url {}, pool_size {pool_size})", url.origin)
            }
        };
        out.push_str(&format!("listen {}, store {store}\n", self.server.listen));
        if let Some(ops) = self.server.ops_listen {
            out.push_str(&format!("ops_listen {ops} (/healthz, /readyz, /metrics)\n"));
        }
        for s in &self.sources {
            let origins: Vec<String> = s.secrets.iter().map(|k| k.origin.to_string()).collect();
            out.push_str(&format!(
                "source {} (kind {}, scheme {}, secrets [{}]) at POST /webhooks/{}\n",
                s.name,
                s.kind.as_str(),
                s.scheme.name(),
                origins.join(", "),
                s.name
            ));
        }
        for p in &self.partners {
            let origins: Vec<String> = p.api_keys.iter().map(|k| k.origin.to_string()).collect();
            out.push_str(&format!(
                "partner {} (api keys [{}])\n",
                p.name,
                origins.join(", ")
            ));
        }
        match &self.admin_token {
            Some(t) => out.push_str(&format!("admin enabled (token {})\n", t.origin)),
            None => out.push_str("admin disabled (no token)\n"),
        }
        out
    }
}

/// An admin token shorter than this is warned about: it guards every
/// event and redelivery.
const MIN_ADMIN_TOKEN_CHARS: usize = 32;

fn single(key: &str, why: String) -> ConfigErrors {
    ConfigErrors(vec![Issue {
        key: key.to_string(),
        why,
    }])
}

struct Walker<'e> {
    issues: Vec<Issue>,
    warnings: Vec<String>,
    env: &'e dyn Env,
}

/// Where and why a file is not TOML, without the text of the line: a line
/// of a config file may hold a literal secret, and this goes to the log.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let place = e
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    format!("not valid TOML{place}: {}", e.message())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl Walker<'_> {
    fn bad(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.issues.push(Issue {
            key: key.into(),
            why: why.into(),
        });
    }

    /// `key` holds `found` where `wanted` belongs.
    fn mistyped(&mut self, key: impl Into<String>, wanted: &str, found: &Value) {
        self.bad(key, format!("must be {wanted}, found {}", type_name(found)));
    }

    fn unknown(&mut self, t: &Table, path: &str) {
        for key in t.keys() {
            self.bad(join(path, key), "unknown key");
        }
    }

    fn table(&mut self, t: &mut Table, key: &str, path: &str) -> Table {
        match t.remove(key) {
            None => Table::new(),
            Some(Value::Table(inner)) => inner,
            Some(other) => {
                self.mistyped(path, "a table", &other);
                Table::new()
            }
        }
    }

    /// `key` of `t`, taken out, as `take` reads it; a value of another
    /// type is an issue saying it must be `wanted`.
    fn opt_of<T>(
        &mut self,
        (t, key, path): (&mut Table, &str, &str),
        wanted: &str,
        take: impl FnOnce(Value) -> Result<T, Value>,
    ) -> Option<T> {
        take(t.remove(key)?)
            .map_err(|other| self.mistyped(join(path, key), wanted, &other))
            .ok()
    }

    fn opt_str(&mut self, t: &mut Table, key: &str, path: &str) -> Option<String> {
        self.opt_of((t, key, path), "a string", |v| match v {
            Value::String(s) => Ok(s),
            other => Err(other),
        })
    }

    fn opt_bool(&mut self, t: &mut Table, key: &str, path: &str) -> Option<bool> {
        self.opt_of((t, key, path), "a boolean", |v| match v {
            Value::Boolean(b) => Ok(b),
            other => Err(other),
        })
    }

    fn req_str(&mut self, t: &mut Table, key: &str, path: &str) -> Option<String> {
        let present = t.contains_key(key);
        let v = self.opt_str(t, key, path);
        if !present {
            self.bad(join(path, key), "is required");
        }
        v
    }

    fn opt_uint(
        &mut self,
        t: &mut Table,
        key: &str,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match t.remove(key) {
            None => None,
            Some(Value::Integer(n)) if (min..=max).contains(&n) => Some(n),
            Some(Value::Integer(n)) => {
                self.bad(
                    join(path, key),
                    format!("must be between {min} and {max}, found {n}"),
                );
                None
            }
            Some(other) => {
                self.mistyped(join(path, key), "an integer", &other);
                None
            }
        }
    }

    fn opt_duration(&mut self, t: &mut Table, key: &str, path: &str) -> Option<Duration> {
        let s = self.opt_str(t, key, path)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.bad(join(path, key), "must be longer than zero");
                None
            }
            Err(e) => {
                self.bad(
                    join(path, key),
                    format!("not a duration like \"30s\" or \"7d\": {e}"),
                );
                None
            }
        }
    }

    fn pointer(&mut self, t: &mut Table, key: &str, path: &str, required: bool) -> Option<String> {
        let p = if required {
            self.req_str(t, key, path)
        } else {
            self.opt_str(t, key, path)
        }?;
        if !p.is_empty() && !p.starts_with('/') {
            self.bad(
                join(path, key),
                "must be a JSON pointer starting with \"/\"",
            );
            return None;
        }
        Some(p)
    }

    fn secret(&mut self, raw: &str, key: &str) -> Option<Secret> {
        if let Some(name) = raw.strip_prefix("env:") {
            match self.env.var(name) {
                Some(v) if !v.is_empty() => Some(Secret {
                    value: v,
                    origin: SecretOrigin::Env(name.to_string()),
                }),
                _ => {
                    self.bad(key, format!("environment variable {name} is not set"));
                    None
                }
            }
        } else if let Some(path) = raw.strip_prefix("file:") {
            match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.trim_end().to_string();
                    if v.is_empty() {
                        self.bad(key, format!("secret file {path} is empty"));
                        return None;
                    }
                    Some(Secret {
                        value: v,
                        origin: SecretOrigin::File(PathBuf::from(path)),
                    })
                }
                Err(e) => {
                    self.bad(key, format!("cannot read secret file {path}: {e}"));
                    None
                }
            }
        } else if raw.is_empty() {
            self.bad(key, "secret is empty");
            None
        } else {
            Some(Secret::literal(raw))
        }
    }

    fn secret_list(&mut self, t: &mut Table, key: &str, path: &str) -> Vec<Secret> {
        let k = join(path, key);
        match t.remove(key) {
            Some(Value::Array(items)) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ik = format!("{k}[{i}]");
                    match item {
                        Value::String(s) => out.extend(self.secret(s, &ik)),
                        other => self.mistyped(ik, "a string", other),
                    }
                }
                out
            }
            Some(Value::Array(_)) => {
                self.bad(k, "needs at least one secret");
                Vec::new()
            }
            Some(other) => {
                self.mistyped(k, "an array of strings", &other);
                Vec::new()
            }
            None => {
                self.bad(k, "is required");
                Vec::new()
            }
        }
    }

    fn rate_limit(&mut self, t: &mut Table, path: &str) -> Option<RateLimit> {
        if !t.contains_key("rate_limit") {
            return None;
        }
        let p = join(path, "rate_limit");
        let mut rl = self.table(t, "rate_limit", &p);
        let per_second = self.opt_uint(&mut rl, "per_second", &p, 1, u32::MAX as i64);
        let burst = self.opt_uint(&mut rl, "burst", &p, 1, u32::MAX as i64);
        self.unknown(&rl, &p);
        match per_second {
            Some(ps) => Some(RateLimit {
                per_second: ps as u32,
                burst: burst.unwrap_or(ps) as u32,
            }),
            None => {
                if !self.issues.iter().any(|i| i.key.starts_with(&p)) {
                    self.bad(join(&p, "per_second"), "is required");
                }
                None
            }
        }
    }

    fn server(&mut self, t: &mut Table) -> ServerConfig {
        let p = "server";
        let listen = self.listen(t);
        let cfg = ServerConfig {
            listen,
            max_body_bytes: self
                .opt_uint(t, "max_body_bytes", p, 1, MAX_BODY_BYTES_LIMIT as i64)
                .unwrap_or(1 << 20) as usize,
            max_in_flight: self
                .opt_uint(t, "max_in_flight", p, 1, 1 << 20)
                .unwrap_or(2048) as usize,
            max_connections: self
                .opt_uint(t, "max_connections", p, 1, 1 << 20)
                .unwrap_or(10_000) as usize,
            request_timeout: self
                .opt_duration(t, "request_timeout", p)
                .unwrap_or(Duration::from_secs(30)),
            header_timeout: self
                .opt_duration(t, "header_timeout", p)
                .unwrap_or(Duration::from_secs(5)),
            shutdown_grace: self
                .opt_duration(t, "shutdown_grace", p)
                .unwrap_or(Duration::from_secs(10)),
            max_unverified_bytes: self
                .opt_uint(t, "max_unverified_mb", p, 1, 1 << 20)
                .map_or(256 << 20, |mb| (mb as u64) << 20),
            trusted_proxies: self.trusted_proxies(t),
            ops_listen: self.opt_str(t, "ops_listen", p).and_then(|s| {
                s.parse()
                    .map_err(|_| {
                        self.bad(
                            "server.ops_listen",
                            format!("not a socket address like 127.0.0.1:9091: {s:?}"),
                        )
                    })
                    .ok()
            }),
        };
        // Large bodies may take only part of the bound (the rest is kept
        // for small ones), and that part must hold one whole body.
        if crate::http::large_share(cfg.max_unverified_bytes) < cfg.max_body_bytes as u64 {
            self.bad(
                "server.max_unverified_mb",
                format!(
                    "too small: three quarters of it must hold a body of server.max_body_bytes ({} bytes)",
                    cfg.max_body_bytes
                ),
            );
        }
        if cfg
            .ops_listen
            .is_some_and(|ops| ops == cfg.listen && ops.port() != 0)
        {
            self.bad("server.ops_listen", "must differ from server.listen");
        }
        self.unknown(t, p);
        cfg
    }

    /// `server.trusted_proxies`: addresses or CIDR blocks (`10.0.0.0/8`).
    fn trusted_proxies(&mut self, t: &mut Table) -> Vec<ipnet::IpNet> {
        let key = "server.trusted_proxies";
        let Some(value) = t.remove("trusted_proxies") else {
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.bad(key, "must be an array of addresses or CIDR blocks");
            return Vec::new();
        };
        let mut nets = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let parsed = item.as_str().and_then(|s| {
                s.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            });
            match parsed {
                Some(net) => nets.push(net),
                None => self.bad(
                    format!("{key}[{i}]"),
                    format!("not an address or CIDR block like 10.0.0.0/8: {item}"),
                ),
            }
        }
        nets
    }

    /// `server.listen`, unless `WAYBILL_LISTEN` overrides it: a container
    /// or a platform chooses the address without a config of its own.
    fn listen(&mut self, t: &mut Table) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], 8080));
        let in_file = self.opt_str(t, "listen", "server");
        let (text, key) = match self.env.var(LISTEN_ENV) {
            Some(text) => (text, LISTEN_ENV),
            None => match in_file {
                Some(text) => (text, "server.listen"),
                None => return default,
            },
        };
        text.trim().parse().unwrap_or_else(|_| {
            self.bad(
                key,
                format!("not a socket address like 127.0.0.1:8080: {text:?}"),
            );
            default
        })
    }

    fn store(&mut self, t: &mut Table) -> StoreConfig {
        let p = "store";
        let cfg = StoreConfig {
            path: PathBuf::from(self.opt_str(t, "path", p).unwrap_or_else(|| "data".into())),
            dedupe_retention: self
                .opt_duration(t, "dedupe_retention", p)
                .unwrap_or(Duration::from_secs(7 * 86_400)),
            idempotency_retention: self
                .opt_duration(t, "idempotency_retention", p)
                .unwrap_or(Duration::from_secs(86_400)),
            in_progress_timeout: self
                .opt_duration(t, "in_progress_timeout", p)
                .unwrap_or(Duration::from_secs(30)),
            // sled holds several times what it is given; 2 MiB keeps the
            // process near 64 MiB under churn (docs/CONFIG.md).
            cache_bytes: self
                .opt_uint(t, "cache_mb", p, 1, 1 << 16)
                .map(|mb| mb as u64 * 1024 * 1024)
                .unwrap_or(2 * 1024 * 1024),
            min_free_bytes: self
                .opt_uint(t, "min_free_mb", p, 0, 1 << 20)
                .map(|mb| mb as u64 * 1024 * 1024)
                .unwrap_or(64 * 1024 * 1024),
            segment_bytes: self
                .opt_uint(t, "segment_mb", p, 1, 1 << 12)
                .map(|mb| mb as u64 * 1024 * 1024)
                .unwrap_or(64 * 1024 * 1024),
            index_flush: self.index_flush(t, p),
            backend: self.backend(t),
        };
        self.unknown(t, p);
        cfg
    }

    /// sled cleans its log in the thread that flushes it, after each flush
    /// and for at most half the interval, so the interval is a floor on
    /// how often that work is done and a ceiling on each slice of it.
    fn index_flush(&mut self, t: &mut Table, p: &str) -> Duration {
        let range = Duration::from_millis(10)..=Duration::from_secs(10);
        match self.opt_duration(t, "index_flush", p) {
            Some(d) if range.contains(&d) => d,
            Some(d) => {
                self.bad(
                    join(p, "index_flush"),
                    format!("must be between 10ms and 10s, found {d:?}"),
                );
                DEFAULT_INDEX_FLUSH
            }
            None => DEFAULT_INDEX_FLUSH,
        }
    }

    fn backend(&mut self, t: &mut Table) -> StoreBackend {
        let p = "store";
        let url = self.opt_str(t, "url", p);
        let pool_size = self
            .opt_uint(t, "pool_size", p, 2, 1024)
            .map_or(16, |n| n as usize);
        let ca_file = self.opt_str(t, "ca_file", p);
        let ca_certs = match &ca_file {
            None => Vec::new(),
            Some(path) => read_certificates(std::path::Path::new(path)).unwrap_or_else(|why| {
                self.bad("store.ca_file", why);
                Vec::new()
            }),
        };
        match self.opt_str(t, "backend", p).as_deref() {
            None | Some("sled") => {
                for (key, given) in [
                    ("store.url", url.is_some()),
                    ("store.ca_file", ca_file.is_some()),
                ] {
                    if given {
                        self.bad(key, "only used with backend = \"postgres\"");
                    }
                }
                StoreBackend::Sled
            }
            Some("postgres") => match url {
                // The platform's own variable stands in for a url the
                // config leaves out.
                None if self.env.var(DATABASE_URL_ENV).is_some() => {
                    match self.secret(&format!("env:{DATABASE_URL_ENV}"), "store.url") {
                        Some(url) => StoreBackend::Postgres {
                            url,
                            pool_size,
                            ca_certs,
                        },
                        None => StoreBackend::Sled,
                    }
                }
                None => {
                    self.bad(
                        "store.url",
                        format!(
                            "required with backend = \"postgres\": set it (e.g. \"env:{DATABASE_URL_ENV}\") or {DATABASE_URL_ENV}"
                        ),
                    );
                    StoreBackend::Sled
                }
                Some(raw) => match self.secret(&raw, "store.url") {
                    Some(url) => StoreBackend::Postgres {
                        url,
                        pool_size,
                        ca_certs,
                    },
                    None => StoreBackend::Sled,
                },
            },
            Some(other) => {
                self.bad(
                    "store.backend",
                    format!("must be \"sled\" or \"postgres\", found \"{other}\""),
                );
                StoreBackend::Sled
            }
        }
    }

    fn admin(&mut self, t: &mut Table) -> Option<Secret> {
        let token = self.opt_str(t, "token", "admin");
        self.unknown(t, "admin");
        let Some(raw) = token else {
            self.warnings
                .push("no admin.token is configured; /admin is disabled".into());
            return None;
        };
        // The one secret whose absence does not refuse start: without it the
        // admin API is simply off.
        if let Some(name) = raw.strip_prefix("env:")
            && self.env.var(name).is_none()
        {
            self.warnings.push(format!(
                "admin.token refers to unset environment variable {name}; /admin is disabled"
            ));
            return None;
        }
        // Blank is refused rather than taken as "off": a token set on
        // purpose and left empty is a mistake, and `Bearer ` must never
        // open the admin API.
        if let Some(name) = raw.strip_prefix("env:")
            && self.env.var(name).is_some_and(|v| v.trim().is_empty())
        {
            self.bad(
                "admin.token",
                format!("environment variable {name} is set but blank"),
            );
            return None;
        }
        let token = self.secret(&raw, "admin.token")?;
        if token.expose().trim().is_empty() {
            self.bad("admin.token", "is blank");
            return None;
        }
        let chars = token.expose().chars().count();
        if chars < MIN_ADMIN_TOKEN_CHARS {
            self.warnings.push(format!(
                "admin.token ({}) has {chars} characters; use at least {MIN_ADMIN_TOKEN_CHARS} random ones (for example `openssl rand -hex 32`)",
                token.origin()
            ));
        }
        Some(token)
    }

    fn sources(&mut self, root: &mut Table, default_retention: Duration) -> Vec<SourceConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (p, mut t) in self.tables(root, "sources") {
            if let Some(s) = self.source(&mut t, &p, default_retention, &mut seen) {
                out.push(s);
            }
        }
        out
    }

    /// The tables of `[[key]]`, each with its path (`key[i]`).
    fn tables(&mut self, root: &mut Table, key: &str) -> Vec<(String, Table)> {
        let items = match root.remove(key) {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.bad(
                    key,
                    format!(
                        "must be an array of tables ([[{key}]]), found {}",
                        type_name(&other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{key}[{i}]");
            match item {
                Value::Table(t) => out.push((p, t)),
                _ => self.bad(&p, "must be a table"),
            }
        }
        out
    }

    /// The `name` of the `what` at `p`: present, well formed, and not one
    /// of `seen`.
    fn unique_name(
        &mut self,
        t: &mut Table,
        p: &str,
        what: &str,
        seen: &mut HashSet<String>,
    ) -> Option<String> {
        let name = self.req_str(t, "name", p)?;
        if !valid_name(&name) {
            self.bad(
                join(p, "name"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_'",
            );
        }
        if !seen.insert(name.clone()) {
            self.bad(join(p, "name"), format!("duplicate {what} name {name:?}"));
        }
        Some(name)
    }

    fn source(
        &mut self,
        t: &mut Table,
        p: &str,
        default_retention: Duration,
        seen: &mut HashSet<String>,
    ) -> Option<SourceConfig> {
        let before = self.issues.len();
        let name = self.unique_name(t, p, "source", seen);
        let kind = match self.req_str(t, "kind", p).as_deref() {
            Some("tracking") => Some(SourceKind::Tracking),
            Some("payment") => Some(SourceKind::Payment),
            Some("store-only") => Some(SourceKind::StoreOnly),
            Some(other) => {
                self.bad(
                    join(p, "kind"),
                    format!("must be tracking, payment or store-only, found {other:?}"),
                );
                None
            }
            None => None,
        };
        let secrets = self.secret_list(t, "secrets", p);
        let scheme = self.scheme(t, p);
        let event_id = self.pointer(t, "event_id", p, false);
        let dedupe_retention = self
            .opt_duration(t, "dedupe_retention", p)
            .unwrap_or(default_retention);
        let event_type = self.pointer(t, "event_type", p, false);
        let accept_event_types = match t.remove("accept_event_types") {
            None => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        other => self.bad(
                            join(p, "accept_event_types"),
                            format!("must hold strings, found {}", type_name(&other)),
                        ),
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.mistyped(join(p, "accept_event_types"), "an array of strings", &other);
                None
            }
        };
        if accept_event_types.is_some() && event_type.is_none() {
            self.bad(
                join(p, "accept_event_types"),
                "needs an event_type pointer to read the type from",
            );
        }
        let scheme = scheme.and_then(|s| {
            s.for_secrets(secrets.iter().map(Secret::expose))
                .map_err(|why| self.bad(join(p, "secrets"), why))
                .ok()
        });
        if let Some(scheme) = &scheme {
            for (j, secret) in secrets.iter().enumerate() {
                if let Err(why) = scheme.key_from_secret(secret.expose()) {
                    self.bad(format!("{p}.secrets[{j}]"), why);
                }
            }
        }
        let rate_limit = self.rate_limit(t, p);
        let mapping = match kind {
            Some(SourceKind::StoreOnly) => {
                if t.contains_key("mapping") {
                    self.bad(join(p, "mapping"), "a store-only source has no mapping");
                    t.remove("mapping");
                }
                None
            }
            Some(k) => self.mapping(t, p, k),
            None => {
                t.remove("mapping");
                None
            }
        };
        self.unknown(t, p);
        // A signed timestamp is accepted for `tolerance` either side of
        // now: a delivery stamped `tolerance` ahead is accepted at once and
        // can be replayed until `tolerance` after its stamp, twice the
        // tolerance later. Its identity must be remembered that long, or
        // the replay is accepted as new (GUARANTEES.md: "Hostile traffic").
        match scheme.as_ref().map(|s| (s, s.tolerance())) {
            Some((_, Some(tolerance))) if dedupe_retention < tolerance * 2 => {
                self.bad(
                    join(p, "dedupe_retention"),
                    format!(
                        "{} is under twice the signature tolerance of {}: a captured delivery stamped ahead could be replayed after its identity is forgotten, and accepted twice",
                        humantime::format_duration(dedupe_retention),
                        humantime::format_duration(tolerance)
                    ),
                );
            }
            Some((scheme, None)) if dedupe_retention < Duration::from_secs(86_400) => {
                self.warnings.push(format!(
                    "source {}: the {} scheme signs no timestamp, so remembering identities ({}) is its only defence against a replayed delivery; under 24h, a delivery captured earlier is accepted again",
                    name.as_deref().unwrap_or("?"),
                    scheme.name(),
                    humantime::format_duration(dedupe_retention),
                ));
            }
            _ => {}
        }
        if self.issues.len() > before {
            return None;
        }
        Some(SourceConfig {
            name: name?,
            kind: kind?,
            secrets,
            scheme: scheme?,
            event_id,
            dedupe_retention,
            event_type,
            accept_event_types,
            rate_limit,
            mapping,
        })
    }

    fn scheme(&mut self, t: &mut Table, p: &str) -> Option<Scheme> {
        let sp = join(p, "signature");
        if !t.contains_key("signature") {
            self.bad(&sp, "is required");
            return None;
        }
        let mut st = self.table(t, "signature", &sp);
        let name = self.req_str(&mut st, "scheme", &sp);
        let header = self.opt_str(&mut st, "header", &sp);
        let encoding = self.opt_str(&mut st, "encoding", &sp);
        let prefix = self.opt_str(&mut st, "prefix", &sp);
        let tolerance = self.opt_duration(&mut st, "tolerance", &sp);
        let normalize = self.opt_str(&mut st, "normalize_secret", &sp);
        self.unknown(&st, &sp);
        let kind = match name.as_deref()? {
            "standard-webhooks" => SchemeKind::StandardWebhooks,
            "stripe" => SchemeKind::Stripe,
            "github" => SchemeKind::Github,
            "easypost" => SchemeKind::Easypost,
            "aftership" => SchemeKind::Aftership,
            "shopify" => SchemeKind::Shopify,
            "basic" => SchemeKind::Basic,
            "header-token" => match header.clone() {
                Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                    SchemeKind::HeaderToken {
                        header: h.to_ascii_lowercase(),
                    }
                }
                Some(h) => {
                    self.bad(
                        join(&sp, "header"),
                        format!("not a valid header name: {h:?}"),
                    );
                    return None;
                }
                None => {
                    self.bad(join(&sp, "header"), "is required for scheme header-token");
                    return None;
                }
            },
            "hmac-sha256" => {
                let header = match header.clone() {
                    Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => Some(h),
                    Some(h) => {
                        self.bad(
                            join(&sp, "header"),
                            format!("not a valid header name: {h:?}"),
                        );
                        None
                    }
                    None => {
                        self.bad(join(&sp, "header"), "is required for scheme hmac-sha256");
                        None
                    }
                };
                let encoding = match encoding.as_deref() {
                    Some("hex") | None => Some(Encoding::Hex),
                    Some("base64") => Some(Encoding::Base64),
                    Some(other) => {
                        self.bad(
                            join(&sp, "encoding"),
                            format!("must be hex or base64, found {other:?}"),
                        );
                        None
                    }
                };
                let nfkd = match normalize.as_deref() {
                    None => false,
                    Some("nfkd") => true,
                    Some(other) => {
                        self.bad(
                            join(&sp, "normalize_secret"),
                            format!("must be \"nfkd\", found {other:?}"),
                        );
                        false
                    }
                };
                SchemeKind::Generic {
                    header: header?.to_ascii_lowercase(),
                    encoding: encoding?,
                    prefix: prefix.clone().unwrap_or_default(),
                    nfkd,
                }
            }
            other => {
                self.bad(
                    join(&sp, "scheme"),
                    format!(
                        "unknown scheme {other:?}; one of standard-webhooks, stripe, github, hmac-sha256, easypost, aftership, shopify, basic, header-token"
                    ),
                );
                return None;
            }
        };
        if !matches!(kind, SchemeKind::Generic { .. }) {
            let header = header.filter(|_| !matches!(kind, SchemeKind::HeaderToken { .. }));
            for (key, v) in [
                ("header", &header),
                ("encoding", &encoding),
                ("prefix", &prefix),
                ("normalize_secret", &normalize),
            ] {
                if v.is_some() {
                    self.bad(
                        join(&sp, key),
                        format!(
                            "is fixed by the {} scheme and cannot be set",
                            name.as_deref()?
                        ),
                    );
                }
            }
        }
        let scheme = Scheme::new(kind, tolerance);
        if tolerance.is_some() && !scheme.is_timestamped() {
            self.bad(
                join(&sp, "tolerance"),
                format!("the {} scheme signs no timestamp", scheme.name()),
            );
        }
        Some(scheme)
    }

    fn mapping(&mut self, t: &mut Table, p: &str, kind: SourceKind) -> Option<Mapping> {
        let mp = join(p, "mapping");
        if !t.contains_key("mapping") {
            self.bad(&mp, format!("is required for a {} source", kind.as_str()));
            return None;
        }
        let mut mt = self.table(t, "mapping", &mp);
        let (fields, allowed): (&[&'static str], &[&str]) = match kind {
            SourceKind::Tracking => (
                &["tracking_number", "status"],
                &[
                    "LABEL_CREATED",
                    "IN_TRANSIT",
                    "OUT_FOR_DELIVERY",
                    "DELIVERED",
                    "EXCEPTION",
                    "RETURNED",
                ],
            ),
            _ => (
                &["order_id", "status"],
                &["SUCCEEDED", "FAILED", "REFUNDED"],
            ),
        };
        let mut required = Vec::new();
        for f in fields {
            if let Some(ptr) = self.pointer(&mut mt, f, &mp, true) {
                required.push((*f, ptr));
            }
        }
        let occurred_at = self.pointer(&mut mt, "occurred_at", &mp, false);
        let smp = join(&mp, "status_map");
        let mut status_map = BTreeMap::new();
        let smt = self.table(&mut mt, "status_map", &smp);
        if smt.is_empty() {
            self.bad(&smp, "needs at least one carrier status");
        }
        for (k, v) in smt {
            match v {
                Value::String(s) if allowed.contains(&s.as_str()) => {
                    status_map.insert(k, s);
                }
                other => self.bad(
                    join(&smp, &k),
                    format!("must be one of {}, found {}", allowed.join(", "), other),
                ),
            }
        }
        self.unknown(&mt, &mp);
        Some(Mapping {
            required,
            occurred_at,
            status_map,
        })
    }

    fn partners(&mut self, root: &mut Table) -> Vec<PartnerConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (p, mut t) in self.tables(root, "partners") {
            let name = self.unique_name(&mut t, &p, "partner", &mut seen);
            let api_keys = self.secret_list(&mut t, "api_keys", &p);
            let rate_limit = self.rate_limit(&mut t, &p);
            self.unknown(&t, &p);
            if let Some(name) = name {
                out.push(PartnerConfig {
                    name,
                    api_keys,
                    rate_limit,
                });
            }
        }
        out
    }

    fn downstream(&mut self, t: &mut Table) -> DownstreamConfig {
        let p = "downstream";
        let base_url = self
            .opt_str(t, "base_url", p)
            .unwrap_or_else(|| "http://127.0.0.1:9090".into());
        self.check_url("downstream.base_url", &base_url);
        let ca_certs = match self.opt_str(t, "ca_file", p) {
            None => Vec::new(),
            Some(path) => match read_certificates(std::path::Path::new(&path)) {
                Ok(certs) => certs,
                Err(why) => {
                    self.bad("downstream.ca_file", why);
                    Vec::new()
                }
            },
        };
        let timeout = self
            .opt_duration(t, "timeout", p)
            .unwrap_or(Duration::from_secs(2));
        let max_attempts = self.opt_uint(t, "max_attempts", p, 1, 100).unwrap_or(4) as u32;
        let mut b = self.table(t, "backoff", "downstream.backoff");
        let backoff_initial = self
            .opt_duration(&mut b, "initial", "downstream.backoff")
            .unwrap_or(Duration::from_millis(100));
        let backoff_max = self
            .opt_duration(&mut b, "max", "downstream.backoff")
            .unwrap_or(Duration::from_secs(2));
        self.unknown(&b, "downstream.backoff");
        let mut br = self.table(t, "breaker", "downstream.breaker");
        let breaker_failures = self
            .opt_uint(&mut br, "failures", "downstream.breaker", 1, 10_000)
            .unwrap_or(5) as u32;
        let breaker_cooldown = self
            .opt_duration(&mut br, "cooldown", "downstream.breaker")
            .unwrap_or(Duration::from_secs(10));
        self.unknown(&br, "downstream.breaker");
        self.unknown(t, p);
        DownstreamConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            ca_certs,
            timeout,
            max_attempts,
            backoff_initial,
            backoff_max,
            breaker_failures,
            breaker_cooldown,
        }
    }

    fn check_url(&mut self, key: &str, url: &str) {
        if url.parse::<http::Uri>().map_or(true, |u| {
            !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none()
        }) {
            self.bad(
                key,
                format!("must be an http:// or https:// URL, found {url:?}"),
            );
        }
    }

    fn telemetry(&mut self, t: &mut Table) -> TelemetryConfig {
        let p = "telemetry";
        let otlp_endpoint = self.opt_str(t, "otlp_endpoint", p).map(|url| {
            self.check_url("telemetry.otlp_endpoint", &url);
            url.trim_end_matches('/').to_string()
        });
        let service_name = self
            .opt_str(t, "service_name", p)
            .unwrap_or_else(|| "waybill".into());
        if service_name.trim().is_empty() {
            self.bad("telemetry.service_name", "must not be empty");
        }
        self.unknown(t, p);
        TelemetryConfig {
            otlp_endpoint,
            service_name,
        }
    }
}

/// The certificates of a PEM file, as DER; at least one.
fn read_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn no_env() -> NoEnv {
        NoEnv
    }

    fn keys(e: &ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|i| i.key.as_str()).collect()
    }

    #[test]
    fn embedded_default_parses_without_environment() {
        let cfg = Config::parse(EMBEDDED_DEFAULT, &no_env()).expect("default config must parse");
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.store.path, PathBuf::from("data"));
        assert!(cfg.source("sim-carrier").is_some());
        assert!(!cfg.partners.is_empty());
        // Every source and partner uses a literal there, and each is warned about.
        for s in &cfg.sources {
            assert!(
                cfg.warnings
                    .iter()
                    .any(|w| w.contains(&format!("source {} ", s.name))),
                "{}",
                s.name
            );
        }
        for p in &cfg.partners {
            assert!(
                cfg.warnings
                    .iter()
                    .any(|w| w.contains(&format!("partner {} ", p.name)))
            );
        }
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            max_body_bytes = 0
            request_timout = "3s"
            [store]
            dedupe_retention = "seven days"
            [[sources]]
            name = "a"
            kind = "tracking"
            secrets = ["env:MISSING_SECRET"]
            signature = { scheme = "stripe", header = "x" }
            [sources.mapping]
            tracking_number = "/t"
            status = "s"
            [sources.mapping.status_map]
            x = "NOT_A_STATUS"
        "#;
        let err = Config::parse(text, &no_env()).unwrap_err();
        let k = keys(&err);
        for expected in [
            "server.listen",
            "server.max_body_bytes",
            "server.request_timout",
            "store.dedupe_retention",
            "sources[0].secrets[0]",
            "sources[0].signature.header",
            "sources[0].mapping.status",
            "sources[0].mapping.status_map.x",
        ] {
            assert!(k.contains(&expected), "missing {expected} in {k:?}");
        }
        let text = err.to_string();
        assert!(text.contains("MISSING_SECRET is not set"), "{text}");
    }

    /// "Running in production" (GUARANTEES.md): `WAYBILL_LISTEN` overrides
    /// `server.listen`, and is checked like it; `WAYBILL_DATABASE_URL` is
    /// the url of a PostgreSQL backend whose config names none, never one
    /// the config names.
    #[test]
    fn the_environment_sets_the_listen_address_and_a_missing_database_url() {
        let listen = |env: MapEnv| Config::parse("[server]\nlisten = \"127.0.0.1:1\"", &env);
        let cfg = listen(MapEnv(HashMap::from([("WAYBILL_LISTEN", "0.0.0.0:8080")]))).unwrap();
        assert_eq!(cfg.server.listen, "0.0.0.0:8080".parse().unwrap());
        let cfg = listen(MapEnv(HashMap::new())).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:1".parse().unwrap());
        let err = listen(MapEnv(HashMap::from([("WAYBILL_LISTEN", "everywhere")]))).unwrap_err();
        assert_eq!(keys(&err), ["WAYBILL_LISTEN"]);

        let url = "postgres://u:pw@db/waybill";
        let env = || {
            MapEnv(HashMap::from([
                ("WAYBILL_DATABASE_URL", url),
                ("DB", "postgres://named"),
            ]))
        };
        let cfg = Config::parse("[store]\nbackend = \"postgres\"", &env()).unwrap();
        assert!(
            matches!(&cfg.store.backend, StoreBackend::Postgres { url: u, .. } if u.expose() == url)
        );
        let named = Config::parse("[store]\nbackend = \"postgres\"\nurl = \"env:DB\"", &env());
        assert!(matches!(
            &named.unwrap().store.backend,
            StoreBackend::Postgres { url: u, .. } if u.expose() == "postgres://named"
        ));
        // The embedded store has no url to take.
        assert_eq!(
            Config::parse("", &env()).unwrap().store.backend,
            StoreBackend::Sled
        );
    }

    /// "Replicas on PostgreSQL" (GUARANTEES.md): the store's backend, its URL
    /// as a secret reference, and what is refused.
    #[test]
    fn the_postgres_backend_takes_its_url_from_a_secret_reference() {
        let env = MapEnv(HashMap::from([("DB", "postgres://u:pw@db/waybill")]));
        let cfg = Config::parse(
            "[store]\nbackend = \"postgres\"\nurl = \"env:DB\"\npool_size = 4",
            &env,
        )
        .unwrap();
        match &cfg.store.backend {
            StoreBackend::Postgres { url, pool_size, .. } => {
                assert_eq!(url.expose(), "postgres://u:pw@db/waybill");
                assert_eq!(*pool_size, 4);
                assert!(!format!("{:?}", cfg.store).contains("pw"), "never shown");
            }
            other => panic!("{other:?}"),
        }
        let sled = Config::parse("", &no_env()).unwrap();
        assert_eq!(sled.store.backend, StoreBackend::Sled);
        for (text, key, why) in [
            ("backend = \"postgres\"", "store.url", "required"),
            (
                "backend = \"postgres\"\nurl = \"env:UNSET\"",
                "store.url",
                "UNSET is not set",
            ),
            (
                "backend = \"mysql\"",
                "store.backend",
                "\"sled\" or \"postgres\"",
            ),
            ("url = \"postgres://x\"", "store.url", "only used with"),
            (
                "backend = \"postgres\"\nurl = \"x\"\npool_size = 1",
                "store.pool_size",
                "",
            ),
        ] {
            let err = Config::parse(&format!("[store]\n{text}"), &no_env()).unwrap_err();
            assert!(keys(&err).contains(&key), "{text}: {err}");
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_resolve_from_env_file_and_literal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file \n\n").unwrap();
        let text = format!(
            r#"
            [[sources]]
            name = "s"
            kind = "store-only"
            secrets = ["env:S1", "file:{}", "plain"]
            signature = {{ scheme = "github" }}
            "#,
            file.display()
        );
        let env = MapEnv(HashMap::from([("S1", "from-env")]));
        let cfg = Config::parse(&text, &env).unwrap();
        let s = cfg.source("s").unwrap();
        let values: Vec<&str> = s.secrets.iter().map(Secret::expose).collect();
        assert_eq!(values, ["from-env", "from-file", "plain"]);
        assert_eq!(format!("{:?}", s.secrets[0]), "Secret(env:S1)");
        assert!(!cfg.summary().contains("from-env"));
        assert!(!cfg.summary().contains("plain"));
    }

    #[test]
    fn admin_token_from_unset_env_disables_admin_with_a_warning() {
        let cfg = Config::parse("[admin]\ntoken = \"env:NOPE\"\n", &no_env()).unwrap();
        assert!(cfg.admin_token.is_none());
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.contains("/admin is disabled"))
        );
    }

    #[test]
    fn basic_and_header_token_sources_take_credentials_not_signing_options() {
        let source = |signature: &str, secret: &str| {
            format!(
                "[[sources]]\nname = \"c\"\nkind = \"store-only\"\nsecrets = [\"{secret}\"]\nsignature = {signature}\ndedupe_retention = \"2d\"\n"
            )
        };
        let basic = Config::parse(&source("{ scheme = \"basic\" }", "u:p"), &no_env()).unwrap();
        assert_eq!(basic.sources[0].scheme.name(), "basic");
        let token = Config::parse(
            &source("{ scheme = \"header-token\", header = \"X-Api-Key\" }", "t"),
            &no_env(),
        )
        .unwrap();
        assert_eq!(token.sources[0].scheme.signature_headers(), ["x-api-key"]);
        for (signature, secret, key) in [
            (
                "{ scheme = \"basic\" }",
                "no-colon",
                "sources[0].secrets[0]",
            ),
            (
                "{ scheme = \"basic\", header = \"X-A\" }",
                "u:p",
                "sources[0].signature.header",
            ),
            (
                "{ scheme = \"header-token\" }",
                "t",
                "sources[0].signature.header",
            ),
            (
                "{ scheme = \"header-token\", header = \"X-A\", prefix = \"p\" }",
                "t",
                "sources[0].signature.prefix",
            ),
            (
                "{ scheme = \"basic\", tolerance = \"1m\" }",
                "u:p",
                "sources[0].signature.tolerance",
            ),
        ] {
            let e = Config::parse(&source(signature, secret), &no_env()).unwrap_err();
            assert_eq!(keys(&e), [key], "{signature}");
        }
    }

    #[test]
    fn preset_options_and_tolerance_without_timestamp_are_errors() {
        let text = r#"
            [[sources]]
            name = "g"
            kind = "store-only"
            secrets = ["x"]
            signature = { scheme = "github", tolerance = "1m" }
            [[sources]]
            name = "e"
            kind = "store-only"
            secrets = ["x"]
            signature = { scheme = "easypost", encoding = "hex" }
            [[sources]]
            name = "h"
            kind = "store-only"
            secrets = ["x"]
            signature = { scheme = "hmac-sha256" }
        "#;
        let err = Config::parse(text, &no_env()).unwrap_err();
        let k = keys(&err);
        assert!(k.contains(&"sources[0].signature.tolerance"), "{k:?}");
        assert!(k.contains(&"sources[1].signature.encoding"), "{k:?}");
        assert!(k.contains(&"sources[2].signature.header"), "{k:?}");
    }

    /// "Downstreams" (GUARANTEES.md): `https://` downstreams, and `ca_file` read and
    /// checked at load, naming the key when it is wrong.
    #[test]
    fn the_span_export_takes_a_collectors_url_and_needs_a_restart_to_change() {
        let cfg = |t: &str| Config::parse(&format!("[telemetry]\n{t}\n"), &no_env());
        let none = Config::parse("", &no_env()).unwrap();
        assert_eq!(none.telemetry.otlp_endpoint, None);
        assert_eq!(none.telemetry.service_name, "waybill");
        let on =
            cfg("otlp_endpoint = \"http://collector:4318/\"\nservice_name = \"edge\"").unwrap();
        assert_eq!(
            on.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(
            none.needs_restart(&on),
            ["telemetry.otlp_endpoint", "telemetry.service_name"]
        );
        for (bad, key) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "telemetry.otlp_endpoint",
            ),
            ("service_name = \" \"", "telemetry.service_name"),
            ("otlp_headers = {}", "telemetry.otlp_headers"),
        ] {
            assert_eq!(keys(&cfg(bad).unwrap_err()), [key], "{bad}");
        }
        let secure = Config::parse("[admin]\ntoken = \"t\"\nsecure_cookie = true\n", &no_env());
        assert!(secure.unwrap().console_secure_cookie);
        let wrong = Config::parse(
            "[admin]\ntoken = \"t\"\nsecure_cookie = \"yes\"\n",
            &no_env(),
        );
        assert_eq!(keys(&wrong.unwrap_err()), ["admin.secure_cookie"]);
    }

    #[test]
    fn the_index_flush_is_bounded_and_needs_a_restart_to_change() {
        let cfg = |t: &str| Config::parse(&format!("[store]\n{t}\n"), &no_env());
        let default = Config::parse("", &no_env()).unwrap();
        assert_eq!(default.store.index_flush, Duration::from_millis(500));
        let fast = cfg("index_flush = \"20ms\"").unwrap();
        assert_eq!(fast.store.index_flush, Duration::from_millis(20));
        assert_eq!(default.needs_restart(&fast), ["store.index_flush"]);
        for edge in ["10ms", "10s"] {
            assert!(cfg(&format!("index_flush = \"{edge}\"")).is_ok(), "{edge}");
        }
        for bad in ["9ms", "11s", "0s", "often", "20"] {
            let err = cfg(&format!("index_flush = {}", toml_value(bad))).unwrap_err();
            assert_eq!(keys(&err), ["store.index_flush"], "{bad}");
        }
    }

    #[test]
    fn the_sled_cache_defaults_to_2_mib_and_takes_1_to_65536() {
        let cfg = |t: &str| Config::parse(&format!("[store]\n{t}\n"), &no_env());
        let default = Config::parse("", &no_env()).unwrap();
        assert_eq!(default.store.cache_bytes, 2 << 20);
        for (mb, bytes) in [(1, 1 << 20), (8, 8 << 20), (65536, 1 << 36)] {
            let c = cfg(&format!("cache_mb = {mb}")).unwrap();
            assert_eq!(c.store.cache_bytes, bytes, "{mb}");
        }
        assert_eq!(
            default.needs_restart(&cfg("cache_mb = 8").unwrap()),
            ["store.cache_mb"]
        );
        for bad in ["0", "65537", "-1", "\"2MiB\""] {
            let err = cfg(&format!("cache_mb = {bad}")).unwrap_err();
            assert_eq!(keys(&err), ["store.cache_mb"], "{bad}");
        }
    }

    /// A bare number stays a TOML integer, to check the type is refused too.
    fn toml_value(v: &str) -> String {
        if v.parse::<i64>().is_ok() {
            v.to_string()
        } else {
            format!("\"{v}\"")
        }
    }

    #[test]
    fn downstreams_may_be_https_with_a_ca_file_checked_at_load() {
        let cfg = |url: &str, ca: &str| format!("[downstream]\nbase_url = \"{url}\"\n{ca}\n");
        let ok = Config::parse(&cfg("https://carrier.example/api/", ""), &no_env()).unwrap();
        assert_eq!(ok.downstream.base_url, "https://carrier.example/api");
        assert!(ok.downstream.ca_certs.is_empty());
        for bad in ["ftp://carrier.example", "carrier.example", "https://"] {
            let e = Config::parse(&cfg(bad, ""), &no_env()).unwrap_err();
            assert_eq!(keys(&e), ["downstream.base_url"], "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        for path in [&missing, &garbage] {
            let ca = format!("ca_file = {:?}", path.display().to_string());
            let e = Config::parse(&cfg("https://carrier.example", &ca), &no_env()).unwrap_err();
            assert_eq!(keys(&e), ["downstream.ca_file"], "{}", path.display());
        }
        let pem = dir.path().join("ca.pem");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&pem, generated.cert.pem()).unwrap();
        let ca = format!("ca_file = {:?}", pem.display().to_string());
        let ok = Config::parse(&cfg("https://localhost:9443", &ca), &no_env()).unwrap();
        assert_eq!(ok.downstream.ca_certs, [generated.cert.der().to_vec()]);
    }

    /// "Hostile traffic" (GUARANTEES.md): the signed window spans twice the tolerance, so a
    /// retention under that is an error (a replay at 1.5 times the
    /// tolerance would be accepted twice); identities are then kept one
    /// second longer, for whole-second timestamps.
    #[test]
    fn a_dedupe_retention_under_twice_the_tolerance_is_an_error() {
        let cfg = |retention: &str| {
            format!(
                r#"
                [[sources]]
                name = "s"
                kind = "store-only"
                secrets = ["whsec_dGVzdA=="]
                signature = {{ scheme = "standard-webhooks", tolerance = "10s" }}
                dedupe_retention = "{retention}"
                "#
            )
        };
        for short in ["9s", "10s", "15s", "19s"] {
            let e = Config::parse(&cfg(short), &no_env()).unwrap_err();
            assert_eq!(keys(&e), ["sources[0].dedupe_retention"], "{short}");
            assert!(e.0[0].why.contains("replayed"), "{}", e.0[0].why);
        }
        let ok = Config::parse(&cfg("20s"), &no_env()).unwrap();
        assert_eq!(ok.sources[0].identity_retention(), Duration::from_secs(21));
        let ok = Config::parse(&cfg("1h"), &no_env()).unwrap();
        assert_eq!(
            ok.sources[0].identity_retention(),
            Duration::from_secs(3600)
        );
    }

    /// "Hostile traffic" (GUARANTEES.md): a scheme that signs no timestamp relies on dedupe
    /// alone, so a retention under 24 hours is warned about.
    #[test]
    fn an_untimestamped_source_under_a_day_of_retention_is_warned_about() {
        let cfg = |retention: &str| {
            format!(
                "[[sources]]\nname = \"ep\"\nkind = \"store-only\"\nsecrets = [\"x\"]\n\
                 signature = {{ scheme = \"easypost\" }}\ndedupe_retention = \"{retention}\"\n"
            )
        };
        let warned = |c: &Config| c.warnings.iter().any(|w| w.contains("only defence"));
        let short = Config::parse(&cfg("1s"), &no_env()).unwrap();
        assert!(warned(&short), "{:?}", short.warnings);
        assert_eq!(
            short.sources[0].identity_retention(),
            Duration::from_secs(1)
        );
        assert!(!warned(&Config::parse(&cfg("24h"), &no_env()).unwrap()));
    }

    /// "Hostile traffic" (GUARANTEES.md): a blank admin token is refused, a short one warned
    /// about; an unset variable still only disables `/admin`.
    #[test]
    fn a_blank_admin_token_is_refused_and_a_short_one_warned_about() {
        struct One(&'static str);
        impl Env for One {
            fn var(&self, name: &str) -> Option<String> {
                (name == "TOKEN").then(|| self.0.to_string())
            }
        }
        for (raw, env) in [
            ("\"   \"", ""),
            ("\"\"", ""),
            ("\"env:TOKEN\"", ""),
            ("\"env:TOKEN\"", " \t"),
        ] {
            let e = Config::parse(&format!("[admin]\ntoken = {raw}\n"), &One(env)).unwrap_err();
            assert_eq!(keys(&e), ["admin.token"], "{raw} {env:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("token");
        std::fs::write(&blank, "  \n").unwrap();
        let e = Config::parse(
            &format!("[admin]\ntoken = \"file:{}\"\n", blank.display()),
            &no_env(),
        )
        .unwrap_err();
        assert_eq!(keys(&e), ["admin.token"]);

        let short = Config::parse("[admin]\ntoken = \"x\"\n", &no_env()).unwrap();
        assert!(short.admin_token.is_some());
        assert!(short.warnings.iter().any(|w| w.contains("at least 32")));
        let long = Config::parse(
            &format!("[admin]\ntoken = \"{}\"\n", "k".repeat(32)),
            &no_env(),
        )
        .unwrap();
        assert!(!long.warnings.iter().any(|w| w.contains("at least 32")));
    }

    #[test]
    fn a_toml_syntax_error_names_the_place_but_never_echoes_the_line() {
        let text = "[admin]\ntoken = \"s3cr3t-literal\" trailing\n";
        let e = Config::parse(text, &no_env()).unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn duplicate_source_names_are_rejected() {
        let one = "[[sources]]\nname = \"a\"\nkind = \"store-only\"\nsecrets = [\"x\"]\nsignature = { scheme = \"github\" }\n";
        let err = Config::parse(&format!("{one}{one}"), &no_env()).unwrap_err();
        assert_eq!(keys(&err), ["sources[1].name"]);
    }

    #[test]
    fn durations_accept_days() {
        let cfg = Config::parse("[store]\ndedupe_retention = \"14d\"\n", &no_env()).unwrap();
        assert_eq!(cfg.store.dedupe_retention, Duration::from_secs(14 * 86_400));
    }

    #[test]
    fn dispatch_follows_accept_event_types() {
        let s = test_source("carrier");
        assert!(s.dispatches(Some("tracker.updated")));
        assert!(!s.dispatches(Some("tracker.created")));
        assert!(!s.dispatches(None));
    }
}
