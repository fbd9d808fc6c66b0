//! `/admin/ui`: the web console (GUARANTEES.md: "Admin in bulk"). One static page
//! (`console.html`) that calls the admin API from the browser; no build
//! step and nothing fetched from elsewhere.
//!
//! A browser cannot send the bearer token by itself, so the console signs
//! in once: the token posted from a form is exchanged for a session cookie
//! that holds a digest of the token, never the token. The cookie is
//! `HttpOnly` and `SameSite=Strict`; a POST authenticated by it must also
//! carry `X-Waybill-Console`, a header no cross-site form can set. The
//! page runs under a Content-Security-Policy that allows only its own
//! script, by nonce, and every value from an event is inserted as text.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::State;
use super::error::{ApiError, Body};
use crate::config::Secret;

const PAGE: &str = include_str!("console.html");
const COOKIE: &str = "waybill_console";
/// The header a console POST carries besides its cookie.
pub const CONSOLE_HEADER: &str = "x-waybill-console";

/// How a request to `/admin` proved it may: the bearer token (API
/// clients, the CLI) or the console's cookie (a browser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Console,
    None,
}

pub fn credential(headers: &HeaderMap, token: &Secret) -> Credential {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(presented) = bearer
        && bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
    {
        return Credential::Bearer;
    }
    let session = session(token);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| {
            name == COOKIE && bool::from(value.as_bytes().ct_eq(session.as_bytes()))
        });
    if cookie {
        Credential::Console
    } else {
        Credential::None
    }
}

/// Whether the request offers a credential at all (a bearer token or the
/// console's cookie), right or wrong.
pub fn presented(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| {
                c.trim()
                    .split_once('=')
                    .is_some_and(|(name, _)| name == COOKIE)
            })
}

/// Whether a console-authenticated request may go on: reads always, writes
/// only with the console's header.
pub fn allowed(credential: Credential, method: &Method, headers: &HeaderMap) -> bool {
    match credential {
        Credential::Bearer => true,
        Credential::Console => method == Method::GET || headers.contains_key(CONSOLE_HEADER),
        Credential::None => false,
    }
}

/// The session cookie's value: a digest of the token, so the cookie is
/// worth nothing once the token is rotated, and never reveals it.
fn session(token: &Secret) -> String {
    let mut h = Sha256::new();
    h.update(b"waybill-console\0");
    h.update(token.expose().as_bytes());
    hex::encode(h.finalize())
}

/// `GET /admin/ui` and the sign-in `POST` from its form.
pub async fn handle(
    app: &State,
    req: Request<Incoming>,
    token: &Secret,
    credential: Credential,
    client: std::net::IpAddr,
    request_id: &str,
) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD if credential != Credential::None => page(StatusCode::OK, ""),
        Method::GET | Method::HEAD => page(StatusCode::UNAUTHORIZED, ""),
        Method::POST => sign_in(app, req, token, client).await,
        _ => ApiError::method_not_allowed("GET, POST").into_response(request_id),
    }
}

async fn sign_in(
    app: &State,
    req: Request<Incoming>,
    token: &Secret,
    client: std::net::IpAddr,
) -> Response<Body> {
    let Ok((_, body, _)) = super::body::read(app, req, super::body::Sender::Unverified).await
    else {
        return page(StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let presented = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        app.admin_failures.failed(client);
        return page(StatusCode::UNAUTHORIZED, "That is not the admin token.");
    }
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/admin/ui"));
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict",
        session(token)
    )) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The page: the console when `status` is 200, else its sign-in form with
/// `notice`.
fn page(status: StatusCode, notice: &str) -> Response<Body> {
    let nonce = hex::encode(fastrand::u128(..).to_be_bytes());
    let mode = if status == StatusCode::OK {
        "console"
    } else {
        "sign-in"
    };
    let html = PAGE
        .replace("{{nonce}}", &nonce)
        .replace("{{mode}}", mode)
        .replace("{{notice}}", &escape(notice));
    let mut resp = Response::new(Body::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn the_cookie_holds_a_digest_and_writes_need_the_console_header() {
        let token = Secret::literal("tok");
        let cookie = format!("other=1; {COOKIE}={}", session(&token));
        assert!(!cookie.contains("tok"));
        let h = headers(&[("cookie", &cookie)]);
        assert_eq!(credential(&h, &token), Credential::Console);
        assert!(allowed(Credential::Console, &Method::GET, &h));
        assert!(!allowed(Credential::Console, &Method::POST, &h));
        let h = headers(&[("cookie", &cookie), (CONSOLE_HEADER, "1")]);
        assert!(allowed(Credential::Console, &Method::POST, &h));
        // Rotating the token ends every session.
        assert_eq!(credential(&h, &Secret::literal("tok2")), Credential::None);
        let h = headers(&[("authorization", "Bearer tok")]);
        assert_eq!(credential(&h, &token), Credential::Bearer);
        let h = headers(&[
            ("authorization", "Bearer to"),
            ("cookie", "waybill_console=x"),
        ]);
        assert_eq!(credential(&h, &token), Credential::None);
    }
}
