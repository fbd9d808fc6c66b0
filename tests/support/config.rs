//! The configs the tests run the gateway with, written once: the tracking
//! sources they share, partners, the admin token, and the file around
//! them.

/// How a tracking source signs its deliveries and where their fields are.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `github` signatures over `{"id", "t", "s", "at"}`.
    Github,
    /// Standard Webhooks over `{"type": "tracking.updated", "data":
    /// {"tracking_number", "status", "occurred_at"}}`.
    StandardWebhooks,
}

/// A tracking source called `name`, signed with `secret`, mapping each
/// (sender's status, shipment status) of `statuses`.
pub fn tracking_source(
    name: &str,
    shape: Shape,
    secret: &str,
    statuses: &[(&str, &str)],
) -> String {
    let (signature, fields) = match shape {
        Shape::Github => (
            "signature = { scheme = \"github\" }\nevent_id = \"/id\"",
            "tracking_number = \"/t\"\nstatus = \"/s\"\noccurred_at = \"/at\"",
        ),
        Shape::StandardWebhooks => (
            "signature = { scheme = \"standard-webhooks\" }\nevent_type = \"/type\"\n\
             accept_event_types = [\"tracking.updated\"]",
            "tracking_number = \"/data/tracking_number\"\nstatus = \"/data/status\"\n\
             occurred_at = \"/data/occurred_at\"",
        ),
    };
    let map: String = statuses
        .iter()
        .map(|(from, to)| format!("{from} = \"{to}\"\n"))
        .collect();
    format!(
        "\n[[sources]]\nname = \"{name}\"\nkind = \"tracking\"\nsecrets = [\"{secret}\"]\n\
         {signature}\n[sources.mapping]\n{fields}\n[sources.mapping.status_map]\n{map}"
    )
}

/// A partner with one API key.
pub fn partner(name: &str, api_key: &str) -> String {
    format!("\n[[partners]]\nname = \"{name}\"\napi_keys = [\"{api_key}\"]\n")
}

/// The admin API, behind `token`.
pub fn admin(token: &str) -> String {
    format!("\n[admin]\ntoken = \"{token}\"\n")
}

/// Writes `dir/waybill.toml`: a gateway on a free loopback port with
/// `server` lines, storing under `dir/data` (or in `store`'s lines, when
/// they name a backend), and then `rest`.
pub fn write(dir: &std::path::Path, server: &str, store: &str, rest: &str) -> std::path::PathBuf {
    let store = if store.contains("backend") {
        store.to_string()
    } else {
        format!(
            "path = \"{}\"\nmin_free_mb = 0\n{store}",
            dir.join("data").display()
        )
    };
    let path = dir.join("waybill.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[store]\n{store}\n{rest}\n"),
    )
    .unwrap();
    path
}

/// The `[store]` lines of a gateway on PostgreSQL (at the URL in
/// `WAYBILL_DATABASE_URL`, as `pg::store_env` gives it), or none: sled
/// under the test's directory.
pub fn store(on_postgres: bool) -> &'static str {
    if on_postgres {
        "backend = \"postgres\"\nurl = \"env:WAYBILL_DATABASE_URL\"\npool_size = 4"
    } else {
        ""
    }
}

/// A gateway for partner `acme` in front of the simulator at `sim`, on
/// sled or on PostgreSQL; there with a one-second claim lease, so that a
/// key a killed process held is resumable soon (docs/OPERATIONS.md).
pub fn acme_before_simulator(
    dir: &std::path::Path,
    sim: std::net::SocketAddr,
    on_postgres: bool,
) -> std::path::PathBuf {
    let store = if on_postgres {
        format!("{}\nin_progress_timeout = \"1s\"", store(true))
    } else {
        String::new()
    };
    let rest = format!(
        "{}\n[downstream]\nbase_url = \"http://{sim}\"\ntimeout = \"1s\"\n\
         backoff = {{ initial = \"5ms\", max = \"20ms\" }}\n",
        partner("acme", "acme-key")
    );
    write(dir, "", &store, &rest)
}
