//! Reading a request body within `max_body_bytes` and `request_timeout`:
//! by Content-Length before reading anything, then while streaming.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::app::App;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    TooLarge,
    Timeout,
    /// The connection broke or the chunked framing was bad.
    Unreadable,
}

/// The whole body, and the request head it came with.
pub(super) async fn read(
    app: &App,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, Bytes), BodyError> {
    let max = app.server.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(
        app.server.request_timeout,
        Limited::new(body, max).collect(),
    )
    .await
    {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Ok(Ok(collected)) => Ok((parts, collected.to_bytes())),
    }
}
