//! OTLP/HTTP export of the spans `trace` names (GUARANTEES.md:
//! "Operations"): each request's span, below its caller's, and each
//! downstream attempt's, below its request's, with the ids the log lines
//! and the `traceparent` headers carry. Off unless `[telemetry]
//! otlp_endpoint` is set; a trace whose caller did not sample it is not
//! exported.
//!
//! Spans are handed to OpenTelemetry's batch processor, which exports from
//! a thread of its own: a slow or absent collector costs a request
//! nothing, and spans past its queue are dropped, never waited for.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

use crate::config::TelemetryConfig;
use crate::trace::TraceContext;

/// How long one export may take, and how long a stopping process waits for
/// the spans it still holds.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static EXPORT: OnceLock<Export> = OnceLock::new();

struct Export {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// A span that has ended.
pub struct Ended {
    pub context: TraceContext,
    /// The span it is below, and whether that one is another process's.
    pub parent: Option<([u8; 8], bool)>,
    /// `Server` (a request served) or `Client` (a call out).
    pub kind: SpanKind,
    pub name: String,
    /// How long it took: it started that long before it is recorded.
    pub took: Duration,
    pub attributes: Vec<KeyValue>,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// What went wrong (an error code, a failed call's outcome): the span
    /// failed.
    pub error: Option<&'static str>,
}

/// Starts the export `config` asks for, on `runtime` (its HTTP calls run
/// there). Once per process; without an endpoint, nothing.
pub fn start(config: &TelemetryConfig, runtime: tokio::runtime::Handle) -> Result<(), String> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime::new(runtime))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot export to {endpoint}: {e}"))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches)
        .build();
    processor.set_resource(
        &Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build(),
    );
    let scope = InstrumentationScope::builder("waybill")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    EXPORT
        .set(Export { processor, scope })
        .map_err(|_| "the export is already started".to_string())
}

/// Whether a span of `context` is exported (an export runs and the trace
/// is sampled): callers build none otherwise.
pub fn wanted(context: &TraceContext) -> bool {
    context.sampled && EXPORT.get().is_some()
}

/// Hands an ended span to the export, if it is `wanted`.
pub fn record(span: Ended) {
    let Some(export) = EXPORT.get().filter(|_| span.context.sampled) else {
        return;
    };
    let end = SystemTime::now();
    let (parent, parent_remote) = span.parent.unwrap_or(([0; 8], false));
    let mut attributes = span.attributes;
    if let Some(status) = span.status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if let Some(error) = span.error {
        attributes.push(KeyValue::new("error.type", error));
    }
    export.processor.on_end(SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.context.trace_id),
            SpanId::from_bytes(span.context.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_bytes(parent),
        parent_span_is_remote: parent_remote,
        span_kind: span.kind,
        name: Cow::Owned(span.name),
        start_time: end.checked_sub(span.took).unwrap_or(end),
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if span.error.is_some() {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: export.scope.clone(),
    });
}

/// Exports what is still held, waiting at most `EXPORT_TIMEOUT`. Called
/// by a stopping process while its runtime still runs.
pub fn stop() {
    if let Some(export) = EXPORT.get()
        && let Err(e) = export.processor.shutdown_with_timeout(EXPORT_TIMEOUT)
    {
        tracing::warn!(error = %e, "spans could not all be exported before the exit");
    }
}

/// The exporter's HTTP client: hyper on the gateway's runtime. The batch
/// processor's thread has no runtime of its own, so each call is spawned
/// onto the gateway's and awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn new(runtime: tokio::runtime::Handle) -> OnRuntime {
        OnRuntime {
            client: Client::builder(TokioExecutor::new())
                .build(crate::tls::connector(&[], EXPORT_TIMEOUT)),
            runtime,
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let call = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(async move {
                tokio::time::timeout(EXPORT_TIMEOUT, call)
                    .await
                    .map_err(|_| HttpError::from("the collector did not answer in time"))?
            })
            .await?
    }
}
