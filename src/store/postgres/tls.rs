//! TLS to PostgreSQL, on the one TLS stack, under libpq's `sslmode` names
//! (GUARANTEES.md: "Running in production"). tokio-postgres knows only
//! disable, prefer and require, and leaves the certificate to the TLS
//! connector; the mode is read here and decides both.
//!
//! | sslmode | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (libpq's default) | if the server offers it | as `require` |
//! | `require` | always | not checked, unless a CA is configured: then as `verify-ca` (libpq's rule) |
//! | `verify-ca` | always | signed by the CA (`store.ca_file`, else the public roots) |
//! | `verify-full` | always | as `verify-ca`, and issued for the host connected to |
//!
//! When TLS is required and the server does not offer it, the connection
//! fails: never a plaintext fallback.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (plaintext first), which no deployment
/// needs and which could not keep the no-fallback promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

/// A database url or key=value string without its `sslmode` (which
/// tokio-postgres would refuse past `require`), and that mode; `prefer`
/// when it names none, as libpq does.
pub fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let (rest, mode) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_value(url)
    };
    let mode = match mode {
        None => SslMode::Prefer,
        Some(text) => SslMode::parse(&text)?,
    };
    Ok((rest, mode))
}

/// `postgres://...?a=1&sslmode=x&b=2`: the query without the sslmode pair.
fn split_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut mode = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslmode=") {
            Some(value) => {
                mode = Some(value.to_string());
                false
            }
            None => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode)
}

/// `host=db sslmode = 'verify-full' user=w`: the string without the
/// sslmode pair. Values may be quoted, with backslash escapes, as libpq
/// allows; a string this does not understand is left whole, for
/// tokio-postgres to refuse with its own words.
fn split_key_value(text: &str) -> (String, Option<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let start = i;
        while bytes
            .get(i)
            .is_some_and(|b| *b != b'=' && !b.is_ascii_whitespace())
        {
            i += 1;
        }
        let key = &text[start..i];
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return (text.to_string(), None);
        }
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        let quoted = bytes.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match bytes.get(i) {
                None if quoted => return (text.to_string(), None),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(b) if !quoted && b.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    if let Some(&next) = bytes.get(i + 1) {
                        value.push(char::from(next));
                    }
                    i += 2;
                }
                Some(_) => {
                    // Whole characters: a value may be any UTF-8.
                    let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                    value.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if key == "sslmode" {
            let rest = format!("{}{}", &text[..start], &text[i.min(text.len())..]);
            return (rest.trim().to_string(), Some(value));
        }
    }
    (text.to_string(), None)
}

/// What tokio-postgres is told, and the connector that checks the server
/// as `mode` asks, against `ca_certs` (`store.ca_file`) or the public
/// roots.
pub fn connector(
    mode: SslMode,
    ca_certs: &[Vec<u8>],
) -> Result<(tokio_postgres::config::SslMode, MakeRustlsConnect), String> {
    use tokio_postgres::config::SslMode as Wire;
    let roots = Arc::new(crate::tls::roots(ca_certs, "store.ca_file"));
    let chain = || {
        WebPkiServerVerifier::builder_with_provider(roots.clone(), crate::tls::provider())
            .build()
            .map_err(|e| format!("store.ca_file: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::VerifyFull => chain()?,
        // libpq's rule: with a CA configured, require checks the chain.
        SslMode::Disable | SslMode::Prefer | SslMode::Require if ca_certs.is_empty() => {
            Arc::new(NameUnchecked::new(None))
        }
        _ => Arc::new(NameUnchecked::new(Some(chain()?))),
    };
    let wire = match mode {
        SslMode::Disable => Wire::Disable,
        SslMode::Prefer => Wire::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Wire::Require,
    };
    let config = crate::tls::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((wire, MakeRustlsConnect::new(config)))
}

/// What `verify-ca` checks, and what `prefer` and `require` check without
/// a CA (as libpq: nothing, though the connection is encrypted and the
/// handshake's signatures are checked; docs/CONFIG.md says to use
/// `verify-full`). The certificate's name is never compared with the host.
#[derive(Debug)]
struct NameUnchecked {
    /// The chain must lead to a trusted root; None: not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl NameUnchecked {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>) -> NameUnchecked {
        NameUnchecked {
            chain,
            algorithms: crate::tls::provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_value_strings() {
        for (url, rest, mode) in [
            (
                "postgres://u:p@db:5432/w?sslmode=verify-full",
                "postgres://u:p@db:5432/w",
                SslMode::VerifyFull,
            ),
            (
                "postgresql://db/w?connect_timeout=5&sslmode=verify-ca&application_name=x",
                "postgresql://db/w?connect_timeout=5&application_name=x",
                SslMode::VerifyCa,
            ),
            ("postgres://db/w", "postgres://db/w", SslMode::Prefer),
            (
                "host=db user=w sslmode=require dbname=w",
                "host=db user=w  dbname=w",
                SslMode::Require,
            ),
            (
                "host=db password='a b\\'c' sslmode = 'disable'",
                "host=db password='a b\\'c'",
                SslMode::Disable,
            ),
            ("host=db user=w", "host=db user=w", SslMode::Prefer),
        ] {
            assert_eq!(split_sslmode(url), Ok((rest.to_string(), mode)), "{url}");
        }
        for url in ["postgres://db/w?sslmode=allow", "host=db sslmode=verify"] {
            let err = split_sslmode(url).unwrap_err();
            assert!(err.contains("is not one of"), "{err}");
        }
    }
}
