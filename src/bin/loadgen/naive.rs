//! The naive reference design the store is measured against: a hyper
//! server that verifies the signature, does one sled compare-and-swap per
//! event (the whole delivery as the value, keyed by source and id) and
//! answers 202 once a `flush` has returned (sled's flush waits for the log
//! up to the caller's write, so concurrent requests share each sync; its
//! `flush_async` is not used because its small thread pool stalls under
//! 64 concurrent callers). No inbox, no retention, no state machine: the least an
//! ingestion gateway on sled can do while still being durable.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use waybill::webhook::signature::Scheme;

struct Naive {
    db: sled::Db,
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
    path: String,
}

pub async fn serve(
    listen: SocketAddr,
    dir: &Path,
    scheme: Scheme,
    key: Vec<u8>,
    source: &str,
) -> Result<(), super::Failed> {
    let _ = std::fs::remove_dir_all(dir);
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(16 << 20)
        .open()?;
    let naive = Arc::new(Naive {
        db,
        scheme,
        keys: vec![key],
        path: format!("/webhooks/{source}"),
    });
    let listener = TcpListener::bind(listen).await?;
    println!("naive pipeline on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let naive = naive.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let naive = naive.clone();
                async move { Ok::<_, std::convert::Infallible>(naive.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl Naive {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != self.path {
            return answer(StatusCode::NOT_FOUND, "not found");
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return answer(StatusCode::BAD_REQUEST, "body");
        };
        let now = super::now_secs() as i64;
        let id = match self.scheme.verify(&parts.headers, &body, &self.keys, now) {
            Ok(v) => match v.event_id {
                Some(id) => id,
                None => return answer(StatusCode::BAD_REQUEST, "no event id"),
            },
            Err(_) => return answer(StatusCode::UNAUTHORIZED, "invalid signature"),
        };
        let key = format!("{}\0{id}", self.path);
        match self
            .db
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&body[..]))
        {
            Ok(Ok(())) => {
                let db = self.db.clone();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => answer(StatusCode::ACCEPTED, "accepted"),
                    _ => answer(StatusCode::SERVICE_UNAVAILABLE, "flush"),
                }
            }
            Ok(Err(_)) => answer(StatusCode::OK, "duplicate"),
            Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, "store"),
        }
    }
}

fn answer(status: StatusCode, what: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!(r#"{{"status":"{what}"}}"#))));
    *r.status_mut() = status;
    r
}
