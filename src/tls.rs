//! The one TLS stack, rustls on ring, for every connection waybill opens:
//! to the downstream services, the admin API (`waybill events`) and
//! PostgreSQL.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// The certificates a server is checked against: `ca_certs` alone when
/// given (a `ca_file`, named `key` in a warning), else the public roots as
/// webpki ships them.
pub fn roots(ca_certs: &[Vec<u8>], key: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    if ca_certs.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        // Parsed at config load; a certificate webpki cannot use as a
        // root is left out, and the handshake then fails with its name.
        let (_, ignored) = roots
            .add_parsable_certificates(ca_certs.iter().map(|c| CertificateDer::from(c.clone())));
        if ignored > 0 {
            tracing::warn!(ignored, "{key}: certificates not usable as roots");
        }
    }
    roots
}

/// The crypto every config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config builder on `provider`, at the safe protocol versions,
/// with the server's certificate still to be decided.
pub fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
}

/// A client config that checks servers against `roots`, names included.
pub fn verifying(roots: RootCertStore) -> rustls::ClientConfig {
    builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTP client's connector for `http://` and `https://` URLs: TLS
/// verified against `ca_certs` alone when given (`downstream.ca_file`),
/// else against the platform's roots as webpki ships them. `http://`
/// stays plain; an `https://` URL is never tried in plain text. A
/// connection not made within `connect_timeout` fails.
pub fn connector(
    ca_certs: &[Vec<u8>],
    connect_timeout: std::time::Duration,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // The TLS layer above decides the scheme.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(verifying(roots(ca_certs, "downstream.ca_file")))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
