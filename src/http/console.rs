//! `/admin/ui`: the web console (GUARANTEES.md: "Admin in bulk"). One static page
//! (`console.html`) that calls the admin API from the browser; no build
//! step and nothing fetched from elsewhere.
//!
//! A browser cannot send the bearer token by itself, so the console signs
//! in once: the token posted from a form is exchanged for a session cookie
//! that holds its expiry and a MAC of it under the token, never the token.
//! The cookie is `HttpOnly`, `SameSite=Strict`, lasts `SESSION` (the
//! server checks the expiry, not only the browser), and is `Secure` when
//! `admin.secure_cookie` says the console is served over TLS (by a proxy
//! in front). Signing out clears it. A POST authenticated by it must also
//! carry `X-Waybill-Console`, a header no cross-site form can set. The
//! page runs under a Content-Security-Policy that allows only its own
//! script, by nonce, and every value from an event is inserted as text.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sha2::Sha256;
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

/// How long a console session lasts: a night's shift.
const SESSION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

pub fn credential(headers: &HeaderMap, token: &Secret) -> Credential {
    credential_at(headers, token, crate::clock::now_ms() / 1000)
}

fn credential_at(headers: &HeaderMap, token: &Secret, now_s: u64) -> Credential {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(presented) = bearer
        && bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
    {
        return Credential::Bearer;
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && valid_session(value, token, now_s));
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

/// A session cookie's value: when it expires (unix seconds) and a MAC of
/// that under the token, so the cookie is worth nothing once the token is
/// rotated or the time has passed, and never reveals the token.
fn session(token: &Secret, expires_s: u64) -> String {
    format!("{expires_s}.{}", hex::encode(session_mac(token, expires_s)))
}

fn session_mac(token: &Secret, expires_s: u64) -> Vec<u8> {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()) else {
        return Vec::new();
    };
    mac.update(b"waybill-console\0");
    mac.update(expires_s.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn valid_session(value: &str, token: &Secret, now_s: u64) -> bool {
    let Some((expires, mac)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expires_s), Ok(mac)) = (expires.parse::<u64>(), hex::decode(mac)) else {
        return false;
    };
    let expected = session_mac(token, expires_s);
    now_s < expires_s
        && expires_s <= now_s + SESSION.as_secs()
        && !expected.is_empty()
        && bool::from(mac.ct_eq(&expected))
}

/// The `Set-Cookie` of a session, or of none (`value` empty: cleared).
fn cookie(value: &str, max_age_s: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/admin; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// The admin config the console answers under.
pub struct Admin<'a> {
    pub token: &'a Secret,
    /// `Secure` on the session cookie.
    pub secure_cookie: bool,
}

/// `GET /admin/ui`, the sign-in `POST` from its form, and the sign-out
/// `POST` from the page (`action=sign-out`, with the console's header).
pub async fn handle(
    app: &State,
    req: Request<Incoming>,
    admin: Admin<'_>,
    credential: Credential,
    client: std::net::IpAddr,
    request_id: &str,
) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD if credential != Credential::None => page(StatusCode::OK, ""),
        Method::GET | Method::HEAD => page(StatusCode::UNAUTHORIZED, ""),
        Method::POST => form(app, req, admin, client).await,
        _ => ApiError::method_not_allowed("GET, POST").into_response(request_id),
    }
}

async fn form(
    app: &State,
    req: Request<Incoming>,
    admin: Admin<'_>,
    client: std::net::IpAddr,
) -> Response<Body> {
    let from_page = req.headers().contains_key(CONSOLE_HEADER);
    let Ok((_, body, _)) = super::body::read(app, req, super::body::Sender::Unverified).await
    else {
        return page(StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let field = |name: &str| {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if field("action") == "sign-out" && from_page {
        return back_to_console(cookie("", 0, admin.secure_cookie));
    }
    if !bool::from(
        field("token")
            .as_bytes()
            .ct_eq(admin.token.expose().as_bytes()),
    ) {
        app.admin_failures.failed(client);
        return page(StatusCode::UNAUTHORIZED, "That is not the admin token.");
    }
    let expires_s = crate::clock::now_ms() / 1000 + SESSION.as_secs();
    let value = session(admin.token, expires_s);
    back_to_console(cookie(&value, SESSION.as_secs(), admin.secure_cookie))
}

/// A redirect to the console's page, setting `cookie`.
fn back_to_console(cookie: Option<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/admin/ui"));
    if let Some(cookie) = cookie {
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

    const NOW: u64 = 1_780_000_000;

    #[test]
    fn the_cookie_holds_a_mac_and_writes_need_the_console_header() {
        let token = Secret::literal("tok");
        let cookie = format!("other=1; {COOKIE}={}", session(&token, NOW + 60));
        assert!(!cookie.contains("tok"));
        let h = headers(&[("cookie", &cookie)]);
        assert_eq!(credential_at(&h, &token, NOW), Credential::Console);
        assert!(allowed(Credential::Console, &Method::GET, &h));
        assert!(!allowed(Credential::Console, &Method::POST, &h));
        let h = headers(&[("cookie", &cookie), (CONSOLE_HEADER, "1")]);
        assert!(allowed(Credential::Console, &Method::POST, &h));
        // Rotating the token ends every session.
        assert_eq!(
            credential_at(&h, &Secret::literal("tok2"), NOW),
            Credential::None
        );
        let h = headers(&[("authorization", "Bearer tok")]);
        assert_eq!(credential(&h, &token), Credential::Bearer);
        let h = headers(&[
            ("authorization", "Bearer to"),
            ("cookie", "waybill_console=x"),
        ]);
        assert_eq!(credential(&h, &token), Credential::None);
    }

    #[test]
    fn a_session_ends_at_its_expiry_and_its_time_cannot_be_moved() {
        let token = Secret::literal("tok");
        let at = |value: &str, now| {
            let h = headers(&[("cookie", &format!("{COOKIE}={value}"))]);
            credential_at(&h, &token, now)
        };
        let value = session(&token, NOW + 60);
        assert_eq!(at(&value, NOW + 59), Credential::Console);
        assert_eq!(at(&value, NOW + 60), Credential::None, "expired");
        // Another expiry with the same MAC: refused.
        let (_, mac) = value.split_once('.').unwrap();
        assert_eq!(at(&format!("{}.{mac}", NOW + 600), NOW), Credential::None);
        // A valid MAC for a time further off than a session lasts: refused.
        let far = session(&token, NOW + SESSION.as_secs() + 1);
        assert_eq!(at(&far, NOW), Credential::None);
        for junk in ["", ".", "x.y", "1.zz", &format!("{}.", NOW + 60)] {
            assert_eq!(at(junk, NOW), Credential::None, "{junk:?}");
        }
    }

    #[test]
    fn the_cookie_is_secure_when_configured_and_cleared_on_sign_out() {
        let set = cookie("v", SESSION.as_secs(), true).unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.contains("Max-Age=43200") && set.ends_with("; Secure"),
            "{set}"
        );
        let plain = cookie("v", 1, false).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
        let cleared = cookie("", 0, false).unwrap();
        assert!(
            cleared
                .to_str()
                .unwrap()
                .starts_with(&format!("{COOKIE}=; Path=/admin; Max-Age=0"))
        );
    }
}
