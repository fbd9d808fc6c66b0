//! `check-config`, `sign` and `verify`: the subcommands that do not serve.

use std::path::Path;

use crate::config::{Config, ConfigErrors};
use crate::webhook::signature::Rejection;

/// Writes `text` to stdout. A reader that stopped reading (`| head -1`)
/// is no error: it has what it wanted, and the command ends quietly
/// rather than panicking on the broken pipe.
pub fn emit(text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        done => done,
    }
}

/// Prints the summary of a valid config, or every bad key.
/// Returns the process exit code (0, 1 when stdout fails, or 2).
pub fn check_config(path: Option<&Path>) -> i32 {
    match Config::load(path) {
        Ok((config, origin)) => {
            let mut out = format!("config {origin} is valid\n{}", config.summary());
            for w in &config.warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            match emit(out.as_bytes()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Err(errors) => {
            print_errors(&errors);
            2
        }
    }
}

pub fn print_errors(errors: &ConfigErrors) {
    eprintln!("config is invalid:");
    for issue in &errors.0 {
        eprintln!("  {}: {}", issue.key, issue.why);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("no source named {0:?} in the config")]
    UnknownSource(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// What `waybill verify` concluded about a captured delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified with the source's secret number `secret` (1-based); the
    /// event's identity as the gateway would store it.
    Valid { secret: usize, event_id: String },
    /// Why the gateway would refuse it, with no secret in the text.
    Invalid(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Valid { secret, event_id } => {
                writeln!(f, "valid")?;
                writeln!(f, "secret: {secret}")?;
                writeln!(f, "event_id: {event_id}")
            }
            Verdict::Invalid(why) => writeln!(f, "invalid: {why}"),
        }
    }
}

/// Checks a captured delivery (its headers and raw body) against a
/// source's config as the gateway would at `now_unix`.
pub fn verify_delivery(
    config: &Config,
    source: &str,
    headers: &[String],
    body: &[u8],
    now_unix: i64,
) -> Result<Verdict, SignError> {
    let src = config
        .source(source)
        .ok_or_else(|| SignError::UnknownSource(source.to_string()))?;
    let mut map = http::HeaderMap::new();
    for line in headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| SignError::Usage(format!("{line:?} is not 'Name: value'")))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| SignError::Usage(format!("{:?} is not a header name", name.trim())))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| SignError::Usage(format!("the value of {name} is not a header value")))?;
        map.append(name, value);
    }
    let keys: Vec<Vec<u8>> = src
        .secrets
        .iter()
        .filter_map(|s| src.scheme.key_from_secret(s.expose()).ok())
        .collect();
    let wanted = src.scheme.signature_headers();
    if !wanted.iter().any(|h| map.contains_key(*h)) {
        return Ok(Verdict::Invalid(format!(
            "missing header {}",
            wanted.join(" or ")
        )));
    }
    let verified = match src.scheme.verify(&map, body, &keys, now_unix) {
        Ok(v) => v,
        Err(Rejection::Stale { by_secs }) => {
            let tolerance = src.scheme.tolerance().unwrap_or_default().as_secs();
            return Ok(Verdict::Invalid(format!(
                "the signed timestamp is {by_secs} s outside the {tolerance} s tolerance"
            )));
        }
        Err(Rejection::Invalid(why)) => return Ok(Verdict::Invalid(why.to_string())),
    };
    // Which secret: the first that verifies alone.
    let secret = keys
        .iter()
        .position(|k| {
            src.scheme
                .verify(&map, body, std::slice::from_ref(k), now_unix)
                .is_ok()
        })
        .map_or(1, |i| i + 1);
    match crate::webhook::identity::examine(src, verified.event_id, body) {
        Ok(examined) => Ok(Verdict::Valid {
            secret,
            event_id: examined.event_id,
        }),
        Err(issues) => Ok(Verdict::Invalid(format!(
            "the signature is valid (secret {secret}) but the body would be refused: {}",
            issues
                .iter()
                .map(|i| if i.field.is_empty() {
                    i.issue.clone()
                } else {
                    format!("{}: {}", i.field, i.issue)
                })
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// `waybill verify`: reads the config and FILE, verifies as of `at_unix`
/// (default now).
pub fn verify(
    config_path: Option<&Path>,
    source: &str,
    headers: &[String],
    file: &Path,
    at_unix: Option<i64>,
) -> Result<Verdict, SignError> {
    let (config, _) = Config::load(config_path).map_err(SignError::Config)?;
    let body = std::fs::read(file).map_err(|e| SignError::Read(file.display().to_string(), e))?;
    verify_delivery(
        &config,
        source,
        headers,
        &body,
        at_unix.unwrap_or_else(now_unix),
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// The headers a delivery of `body` from `source` would carry now, signed
/// with the source's first secret, `Content-Type` first.
pub fn sign_headers(
    config: &Config,
    source: &str,
    body: &[u8],
    now_unix: i64,
) -> Result<Vec<(String, String)>, SignError> {
    let src = config
        .source(source)
        .ok_or_else(|| SignError::UnknownSource(source.to_string()))?;
    if !src.scheme.signs() {
        // The headers would be the credentials themselves.
        return Err(SignError::Usage(format!(
            "the {} scheme signs nothing: a sender sends its credentials as they are",
            src.scheme.name()
        )));
    }
    let secret = src
        .secrets
        .first()
        .expect("config validation requires a secret");
    let key = src
        .scheme
        .key_from_secret(secret.expose())
        .expect("config validation checked the key");
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let mut out = vec![("Content-Type".to_string(), "application/json".to_string())];
    out.extend(src.scheme.sign(&key, body, now_unix, &id));
    Ok(out)
}

pub fn sign(
    config_path: Option<&Path>,
    source: &str,
    file: &Path,
    curl: Option<&str>,
) -> Result<String, SignError> {
    let (config, _) = Config::load(config_path).map_err(SignError::Config)?;
    let body = std::fs::read(file).map_err(|e| SignError::Read(file.display().to_string(), e))?;
    let headers = sign_headers(&config, source, &body, now_unix())?;
    let mut out = String::new();
    match curl {
        None => {
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
        Some(url) => {
            out.push_str(&format!("curl -sS -X POST {}", shell_quote(url)));
            for (k, v) in headers {
                out.push_str(&format!(" \\\n  -H {}", shell_quote(&format!("{k}: {v}"))));
            }
            out.push_str(&format!(
                " \\\n  --data-binary {}\n",
                shell_quote(&format!("@{}", file.display()))
            ));
        }
    }
    Ok(out)
}

/// Single-quotes for POSIX shells; a `'` becomes `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EMBEDDED_DEFAULT, NoEnv};
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn signed_headers_verify_for_every_default_source() {
        let config = Config::parse(EMBEDDED_DEFAULT, &NoEnv).unwrap();
        let body = br#"{"id":"evt_1","type":"x"}"#;
        for src in &config.sources {
            let headers = sign_headers(&config, &src.name, body, 1_700_000_000).unwrap();
            assert_eq!(
                headers[0],
                ("Content-Type".into(), "application/json".into())
            );
            let mut map = HeaderMap::new();
            for (k, v) in &headers {
                map.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let keys: Vec<Vec<u8>> = src
                .secrets
                .iter()
                .map(|s| src.scheme.key_from_secret(s.expose()).unwrap())
                .collect();
            assert!(
                src.scheme.verify(&map, body, &keys, 1_700_000_000).is_ok(),
                "{}",
                src.name
            );
        }
    }

    /// `verify` (GUARANTEES.md: "Running") names the secret that matched and the
    /// identity, or says why not, and never shows a secret.
    #[test]
    fn verify_names_the_secret_or_the_reason() {
        let text = r#"
            [[sources]]
            name = "acme"
            kind = "store-only"
            secrets = ["whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LTAx", "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LTAy"]
            signature = { scheme = "standard-webhooks" }
        "#;
        let config = Config::parse(text, &NoEnv).unwrap();
        let src = config.source("acme").unwrap();
        let body = br#"{"id":"evt_9"}"#;
        let at = 1_700_000_000;
        let key = |i: usize| src.scheme.key_from_secret(src.secrets[i].expose()).unwrap();
        let lines = |key: &[u8], ts: i64| -> Vec<String> {
            src.scheme
                .sign(key, body, ts, "msg_1")
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect()
        };
        let verdict = verify_delivery(&config, "acme", &lines(&key(1), at), body, at).unwrap();
        assert_eq!(
            verdict,
            Verdict::Valid {
                secret: 2,
                event_id: "msg_1".into()
            }
        );
        assert!(verdict.to_string().starts_with("valid\n"));
        let stale = verify_delivery(&config, "acme", &lines(&key(0), at - 400), body, at).unwrap();
        assert_eq!(
            stale,
            Verdict::Invalid("the signed timestamp is 100 s outside the 300 s tolerance".into())
        );
        let forged =
            verify_delivery(&config, "acme", &lines(b"not-a-secret", at), body, at).unwrap();
        assert_eq!(forged, Verdict::Invalid("no signature matched".into()));
        let mut without = lines(&key(0), at);
        without.retain(|l| !l.starts_with("webhook-signature"));
        let missing = verify_delivery(&config, "acme", &without, body, at).unwrap();
        assert!(
            matches!(&missing, Verdict::Invalid(why) if why.contains("webhook-signature")),
            "{missing:?}"
        );
        for v in [&stale, &forged, &missing] {
            for secret in &src.secrets {
                assert!(!v.to_string().contains(secret.expose()));
            }
        }
        assert!(matches!(
            verify_delivery(&config, "acme", &["no colon".into()], body, at),
            Err(SignError::Usage(_))
        ));
        assert!(matches!(
            verify_delivery(&config, "nobody", &[], body, at),
            Err(SignError::UnknownSource(_))
        ));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
