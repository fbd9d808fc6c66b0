//! Reading a request body within `max_body_bytes`, `request_timeout` and
//! the bound on unverified bodies (`unverified`): by its declared length
//! before reading anything, then while streaming.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use super::State;
use super::error::ApiError;
use super::unverified::Hold;
use crate::domain::field::FieldIssue;

/// A JSON body is declared as `application/json`, whatever the parameters
/// (`; charset=utf-8`); anything else is 415.
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    TooLarge,
    Timeout,
    /// The connection broke or the chunked framing was bad.
    Unreadable,
    /// The bound on unverified bodies has no room for this one.
    Overloaded,
}

impl BodyError {
    /// The answer to a body that could not be read; `unreadable` is how
    /// the route words one whose bytes broke off (its client left, or the
    /// chunked framing was wrong).
    pub(super) fn answer(
        self,
        app: &State,
        unreadable: fn(Vec<FieldIssue>) -> ApiError,
    ) -> ApiError {
        // The body was not read to its end: the connection cannot carry
        // another request.
        let mut e = match self {
            BodyError::TooLarge => ApiError::payload_too_large(app.server.max_body_bytes),
            BodyError::Timeout => ApiError::request_timeout(),
            BodyError::Overloaded => ApiError::overloaded(),
            BodyError::Unreadable => unreadable(vec![FieldIssue::new(
                "",
                "the request body could not be read",
            )]),
        };
        e.close = true;
        e
    }
}

/// Whose body is read: an unverified sender's counts against
/// `server.max_unverified_mb` until its `Hold` is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sender {
    Unverified,
    Verified,
}

/// The whole body, the request head it came with, and what it holds of
/// the unverified bound (drop it once the sender is verified).
pub(super) async fn read(
    app: &State,
    req: Request<Incoming>,
    sender: Sender,
) -> Result<(http::request::Parts, Bytes, Hold), BodyError> {
    let max = app.server.max_body_bytes as u64;
    let declared = req.body().size_hint().exact();
    if declared.is_some_and(|len| len > max) {
        return Err(BodyError::TooLarge);
    }
    let mut hold = match sender {
        Sender::Verified => Hold::none(),
        Sender::Unverified => app
            .unverified
            .reserve(declared.unwrap_or(0))
            .ok_or(BodyError::Overloaded)?,
    };
    let (parts, body) = req.into_parts();
    let collect = collect(app, body, max, declared, sender, &mut hold);
    match tokio::time::timeout(app.server.request_timeout, collect).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) => Ok((parts, bytes, hold)),
    }
}

/// Reads the frames of `body`. A body that comes in one frame is kept as
/// it came; a longer one is copied into one buffer, sized up front when
/// the length is declared, so that a body never takes twice its size.
async fn collect(
    app: &State,
    mut body: Incoming,
    max: u64,
    declared: Option<u64>,
    sender: Sender,
    hold: &mut Hold,
) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > max {
            return Err(BodyError::TooLarge);
        }
        if declared.is_none() && sender == Sender::Unverified && !app.unverified.grow(hold, len) {
            return Err(BodyError::Overloaded);
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(earlier) => {
                let size = declared.unwrap_or(len).min(max);
                buf.reserve(usize::try_from(size).unwrap_or(usize::MAX));
                buf.extend_from_slice(&earlier);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
