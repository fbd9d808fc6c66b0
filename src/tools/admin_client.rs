//! `waybill events search|show|redeliver`: the admin API from the shell
//! (GUARANTEES.md: "Admin in bulk"). The token comes from `WAYBILL_ADMIN_TOKEN`, never from
//! the command line, where other users could read it.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

pub const TOKEN_ENV: &str = "WAYBILL_ADMIN_TOKEN";

/// What went wrong, and how the command exits: 2 for what the caller must
/// fix before trying (usage), 1 for a refusal or an unreachable gateway.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl EventsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            EventsError::Usage(_) => 2,
            EventsError::Failed(_) => 1,
        }
    }
}

/// The search filters, as `GET /admin/events` names them.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub pairs: Vec<(&'static str, String)>,
}

impl Filters {
    pub fn with(mut self, key: &'static str, value: Option<String>) -> Filters {
        if let Some(v) = value {
            self.pairs.push((key, v));
        }
        self
    }

    fn query(&self, cursor: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            q.append_pair(k, v);
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        q.finish()
    }
}

/// `url` with any `user:password@` before its host replaced by `***@`,
/// for messages: credentials in a URL are still credentials.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match url.rfind('@') {
            Some(at) => format!("***{}", url.get(at..).unwrap_or("")),
            None => url.to_string(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***{}{path}", authority.get(at..).unwrap_or("")),
        None => url.to_string(),
    }
}

pub struct AdminClient {
    base: String,
    token: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// For the gateway at `url` (`http://host:port` or `https://…`), with
    /// the token from the environment.
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, EventsError> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            EventsError::Usage(format!("set {TOKEN_ENV} to the gateway's admin token"))
        })?;
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.parse::<http::Uri>().is_err()
        {
            return Err(EventsError::Usage(format!(
                "--url {:?} is not an http:// or https:// URL",
                without_userinfo(url)
            )));
        }
        let connector = crate::tls::connector(&[], std::time::Duration::from_secs(10));
        Ok(AdminClient {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, EventsError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(body))
            .map_err(|e| EventsError::Usage(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            EventsError::Failed(format!(
                "cannot reach {}: {}",
                without_userinfo(&self.base),
                chain(&e)
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EventsError::Failed(format!("reading the answer: {e}")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            let error = value.get("error");
            let field = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
            let message = field("message")
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let code = field("code").unwrap_or("");
            Err(EventsError::Failed(format!("{status} {code}: {message}")))
        }
    }

    /// The events that match, one JSON object per line, newest first; a
    /// page at a time from `cursor`, or every page with `all`. Answers the
    /// lines and the cursor of what is left (None: nothing).
    pub async fn search(
        &self,
        filters: &Filters,
        cursor: Option<String>,
        all: bool,
    ) -> Result<(String, Option<String>), EventsError> {
        let mut out = String::new();
        let mut cursor = cursor;
        loop {
            let page = self
                .call(
                    Method::GET,
                    &format!("/admin/events?{}", filters.query(cursor.as_deref())),
                    None,
                )
                .await?;
            let events = page.get("events").and_then(Value::as_array);
            for ev in events.into_iter().flatten() {
                let _ = writeln!(out, "{ev}");
            }
            cursor = page
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if !all || cursor.is_none() {
                return Ok((out, cursor));
            }
        }
    }

    /// One event: its fields, headers (signatures redacted) and payload.
    pub async fn show(&self, source: &str, event_id: &str) -> Result<String, EventsError> {
        let ev = self
            .call(Method::GET, &event_path(source, event_id, ""), None)
            .await?;
        Ok(pretty(&ev))
    }

    pub async fn redeliver_one(&self, source: &str, event_id: &str) -> Result<String, EventsError> {
        let out = self
            .call(
                Method::POST,
                &event_path(source, event_id, "/redeliver"),
                None,
            )
            .await?;
        Ok(pretty(&out))
    }

    pub async fn redeliver_many(&self, request: Map<String, Value>) -> Result<String, EventsError> {
        let out = self
            .call(
                Method::POST,
                "/admin/redeliver",
                Some(Value::Object(request)),
            )
            .await?;
        Ok(pretty(&out))
    }
}

fn event_path(source: &str, event_id: &str, tail: &str) -> String {
    format!(
        "/admin/events/{}/{}{tail}",
        utf8_percent_encode(source, NON_ALPHANUMERIC),
        utf8_percent_encode(event_id, NON_ALPHANUMERIC)
    )
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_and_filters_become_a_query() {
        assert_eq!(
            event_path("ep", "a/b c", "/redeliver"),
            "/admin/events/ep/a%2Fb%20c/redeliver"
        );
        let f = Filters::default()
            .with("source", Some("ep".into()))
            .with("order_id", None)
            .with("since", Some("2026-11-30T00:00:00+01:00".into()));
        assert_eq!(
            f.query(Some("42")),
            "source=ep&since=2026-11-30T00%3A00%3A00%2B01%3A00&cursor=42"
        );
    }

    #[test]
    fn credentials_in_the_url_never_reach_a_message() {
        for url in [
            "http://user:pw@127.0.0.1:1/x",
            "https://user:pw@example.invalid",
            "ftp://user:pw@host",
            "user:pw@127.0.0.1:8080",
        ] {
            let shown = without_userinfo(url);
            assert!(!shown.contains("pw"), "{shown}");
            assert!(shown.contains("***@"), "{shown}");
        }
        assert_eq!(without_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        let e = AdminClient::new("ftp://user:pw@host", Some("t".into()))
            .err()
            .unwrap();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn a_missing_token_or_a_bad_url_is_a_usage_error() {
        assert_eq!(
            AdminClient::new("http://127.0.0.1:8080", None)
                .err()
                .map(|e| e.exit_code()),
            Some(2)
        );
        assert_eq!(
            AdminClient::new("127.0.0.1:8080", Some("t".into()))
                .err()
                .map(|e| e.exit_code()),
            Some(2)
        );
    }
}
