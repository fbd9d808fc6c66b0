//! `check-config` and `sign`: the subcommands that do not serve.

use std::path::Path;

use crate::config::{Config, ConfigErrors};

/// Prints the summary of a valid config, or every bad key.
/// Returns the process exit code (0 or 2).
pub fn check_config(path: Option<&Path>) -> i32 {
    match Config::load(path) {
        Ok((config, origin)) => {
            println!("config {origin} is valid");
            print!("{}", config.summary());
            for w in &config.warnings {
                println!("warning: {w}");
            }
            0
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let headers = sign_headers(&config, source, &body, now)?;
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

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
