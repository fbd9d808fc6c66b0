//! "Running in production" (GUARANTEES.md): TLS to a real PostgreSQL. The
//! test starts a cluster of its own (Debian's `initdb` and `pg_ctl`, run as
//! the `postgres` user, on a free port, `ssl = on` with a server
//! certificate for `localhost` from a CA made here with rcgen) and
//! connects through the store's own connector:
//! - `verify-full` to `localhost` with the CA as `store.ca_file` connects,
//!   over TLS, and the gateway serves on it;
//! - the same to `127.0.0.1` (a name the certificate does not hold), or
//!   with another CA, is refused, naming the cause; `verify-ca` to
//!   `127.0.0.1` connects, since it does not compare names;
//! - with the server restarted with `ssl = off`, `require` is refused:
//!   never a plaintext fallback.
//!
//! Without root, `runuser` or Debian's PostgreSQL binaries it says it was
//! skipped and passes, unless `WAYBILL_REQUIRE_POSTGRES` is set.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use waybill::webhook::signature::SchemeKind;

/// Debian's PostgreSQL binaries, the newest version installed.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam with a NUL-terminated name; the record is read at
    // once, before any other call could reuse it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: checked non-null just above.
    (!pw.is_null()).then(|| unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A cluster of this test's own, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(args)
            .output()
            .unwrap()
    }

    fn start(&self, options: &str) {
        let out = self.pg_ctl(&["-w", "-t", "60", "-o", options, "start"]);
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start: {out:?}\n{log}");
    }

    fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    fn url(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// A CA called `ca_name`, and a server certificate for `localhost` signed
/// by it.
struct Certs {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn certs(ca_name: &str) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Certs {
        ca_pem: ca.pem(),
        server_pem: server.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

/// Writes `text` at `path`, owned by the `postgres` user with `mode`.
fn write_owned(path: &Path, text: &str, owner: (u32, u32), mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A cluster of our own with `ssl = on`, or None (after saying why) where
/// none can be made and none is required.
fn cluster(certs: &Certs) -> Option<Cluster> {
    let why = match (pg_bin(), postgres_user()) {
        // SAFETY: geteuid has no preconditions.
        _ if unsafe { libc::geteuid() } != 0 => "not running as root".to_string(),
        (None, _) => "no initdb under /usr/lib/postgresql".to_string(),
        (_, None) => "no postgres user".to_string(),
        (Some(bin), Some(owner)) => return Some(make_cluster(bin, owner, certs)),
    };
    assert!(
        std::env::var_os("WAYBILL_REQUIRE_POSTGRES").is_none(),
        "a PostgreSQL cluster of the test's own is required here: {why}"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: PostgreSQL over TLS, since {why}"
    );
    None
}

fn make_cluster(bin: PathBuf, owner: (u32, u32), certs: &Certs) -> Cluster {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(owner.0), Some(owner.1)).unwrap();
    let init = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "initdb: {init:?}");
    write_owned(&dir.path().join("log"), "", owner, 0o644);
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    std::os::unix::fs::chown(&sockets, Some(owner.0), Some(owner.1)).unwrap();
    write_owned(&data.join("server.crt"), &certs.server_pem, owner, 0o644);
    write_owned(
        &data.join("server.key"),
        &certs.server_key_pem,
        owner,
        0o600,
    );
    // A port the kernel just handed out, free again once the probe closes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\n",
        sockets.display()
    );
    let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    text.push_str(&conf);
    write_owned(&data.join("postgresql.conf"), &text, owner, 0o600);
    // Trust, over TLS or not: what is tested is the client's refusal.
    write_owned(
        &data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        owner,
        0o600,
    );
    let cluster = Cluster { bin, dir, port };
    cluster.start("");
    cluster
}

/// Connects through the store and applies its schema: the first thing
/// `serve` does. The error's text when refused.
async fn migrate(url: &str, ca_pem: Option<&str>) -> Result<usize, String> {
    let ca_certs: Vec<Vec<u8>> = ca_pem
        .map(|pem| {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.unwrap().to_vec())
                .collect()
        })
        .unwrap_or_default();
    let store = waybill::store::postgres::PgStore::connect(
        url,
        &ca_certs,
        2,
        waybill::health::Health::new(),
    )
    .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())
}

/// Whether the connection the store's connector makes to `url` is
/// encrypted, as the server sees it.
async fn encrypted(url: &str, ca_pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect();
    let (rest, mode) = waybill::store::postgres::tls::split_sslmode(url).unwrap();
    let (wire, connector) = waybill::store::postgres::tls::connector(mode, &ca).unwrap();
    let mut config: tokio_postgres::Config = rest.parse().unwrap();
    config.ssl_mode(wire);
    let (client, conn) = config.connect(connector).await.unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_and_every_unsafe_connection_is_refused_naming_why() {
    let ours = certs("waybill test CA");
    let Some(cluster) = cluster(&ours) else {
        return;
    };
    let other = certs("another CA");

    // The right CA and the name in the certificate: over TLS.
    let full = cluster.url("localhost", "verify-full");
    let latest = waybill::store::postgres::schema_version_of_build() as usize;
    assert_eq!(migrate(&full, Some(&ours.ca_pem)).await, Ok(latest));
    assert!(encrypted(&full, &ours.ca_pem).await, "the session is TLS");

    // A name the certificate does not hold.
    let by_ip = cluster.url("127.0.0.1", "verify-full");
    let err = migrate(&by_ip, Some(&ours.ca_pem)).await.unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for name"),
        "{err}"
    );
    // verify-ca does not compare names.
    let ca_only = cluster.url("127.0.0.1", "verify-ca");
    assert_eq!(migrate(&ca_only, Some(&ours.ca_pem)).await, Ok(0));

    // A CA that did not sign the server's certificate; the public roots.
    let err = migrate(&full, Some(&other.ca_pem)).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
    let err = migrate(&full, None).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );

    // The gateway serves on it: a config naming the CA, the url from the
    // environment.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ours.ca_pem).unwrap();
    let cfg = config::write(
        dir.path(),
        "",
        &format!(
            "backend = \"postgres\"\npool_size = 4\nca_file = \"{}\"",
            ca_file.display()
        ),
        "\n[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"s\"]\n\
         signature = { scheme = \"github\" }\nevent_id = \"/id\"\n",
    );
    let gw = Gateway::start_with_env(&cfg, &[("WAYBILL_DATABASE_URL", &full)]);
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
    let body = br#"{"id":"tls-1"}"#.to_vec();
    let h = signed(SchemeKind::Github, "s", &body, now(), "tls-1");
    assert_eq!(post(gw.addr, "/webhooks/gh", &h, body).await.status, 202);
    gw.terminate();

    // TLS asked for, and a server that does not offer it: refused.
    cluster.stop();
    cluster.start("-c ssl=off");
    let plain = cluster.url("localhost", "require");
    let err = migrate(&plain, Some(&ours.ca_pem)).await.unwrap_err();
    assert!(err.contains("server does not support TLS"), "{err}");
    // Without sslmode (libpq's prefer), the same server is reached.
    let prefer = format!("postgres://postgres@localhost:{}/postgres", cluster.port);
    assert_eq!(migrate(&prefer, None).await, Ok(0));
}
