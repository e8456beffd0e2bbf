//! OTLP export of the stack's spans and metrics (feature `otlp`), configured by OpenTelemetry's
//! standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or the `_TRACES_` and `_METRICS_`
//! endpoints), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `gcx`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_SDK_DISABLED`. HTTP with
//! protobuf bodies, over the process's tokio runtime.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use genesys_client::{GenesysClient, HttpService};
use http_body_util::{BodyExt, Limited};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::ServiceExt;

use crate::error::CliError;

/// The longest answer read from a collector.
const MAX_ANSWER: usize = 1024 * 1024;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the standard variables ask for OTLP export.
pub(crate) fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .any(|name| set(name))
}

/// The trace and meter providers, flushed and shut down at the end of the run.
pub(crate) struct Otlp {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

impl Otlp {
    /// Builds the exporters. Their requests run on `runtime`, whatever thread exports.
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> Result<Otlp, CliError> {
        let setup = |e: &dyn fmt::Display| CliError::usage(format!("OTLP export: {e}"));
        let client = TokioHttp::new(runtime).map_err(|e| setup(&e))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("gcx");
        }
        let resource = resource.build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .build()
            .map_err(|e| setup(&e))?;
        let tracer = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|e| setup(&e))?;
        let meter = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics).build())
            .with_resource(resource)
            .build();
        Ok(Otlp { tracer, meter })
    }

    /// The `tracing` layer that turns the stack's spans into OpenTelemetry spans.
    pub(crate) fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.tracer("gcx"))
    }

    /// A recorder that sends every metric to OpenTelemetry as well as to `inner`.
    pub(crate) fn recorder<R: Recorder>(&self, inner: R) -> Bridge<R> {
        Bridge {
            inner,
            meter: self.meter.meter("genesys-tower"),
        }
    }

    /// Exports what is left and stops. Blocks: call it off the runtime's threads.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.tracer.shutdown() {
            say!("gcx: OTLP: the last spans were not exported: {e}");
        }
        if let Err(e) = self.meter.shutdown() {
            say!("gcx: OTLP: the last metrics were not exported: {e}");
        }
    }
}

/// OTLP over the client's own HTTP client (the proxy the environment names, the system's
/// certificate authorities and `SSL_CERT_FILE`, as for the API), run on a tokio runtime from
/// whatever thread the SDK exports on.
#[derive(Clone)]
struct TokioHttp {
    runtime: tokio::runtime::Handle,
    service: HttpService,
}

impl TokioHttp {
    fn new(runtime: tokio::runtime::Handle) -> Result<Self, genesys_client::GenesysError> {
        let service = GenesysClient::builder().http_service()?;
        Ok(TokioHttp { runtime, service })
    }
}

impl fmt::Debug for TokioHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioHttp").finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpClient for TokioHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let service = self.service.clone();
        let exchange = async move {
            let response = service
                .oneshot(request.map(genesys_client::Body::from_bytes))
                .await?;
            let (head, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        };
        // The timer is made on the runtime too: the SDK exports from threads of its own.
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the collector did not answer in time".into()),
            Err(e) => Err(Box::new(e)),
        }
    }
}

/// Every metric to `inner` (the Prometheus recorder) and to an OpenTelemetry meter: counters as
/// counters, gauges as up-down counters, histograms as histograms, labels as attributes.
#[derive(Debug)]
pub(crate) struct Bridge<R> {
    inner: R,
    meter: Meter,
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

struct OtelCounter {
    inner: Counter,
    instrument: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
}

impl metrics::CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        self.instrument.add(value, &self.attributes);
    }
    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
    }
}

struct OtelGauge {
    inner: Gauge,
    instrument: opentelemetry::metrics::UpDownCounter<f64>,
    attributes: Vec<KeyValue>,
}

impl metrics::GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.inner.increment(value);
        self.instrument.add(value, &self.attributes);
    }
    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
        self.instrument.add(-value, &self.attributes);
    }
    fn set(&self, value: f64) {
        // An up-down counter has no "set": the stack's one gauge only moves by steps.
        self.inner.set(value);
    }
}

struct OtelHistogram {
    inner: Histogram,
    instrument: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl metrics::HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.inner.record(value);
        self.instrument.record(value, &self.attributes);
    }
}

impl<R: Recorder> Recorder for Bridge<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(OtelCounter {
            inner: self.inner.register_counter(key, metadata),
            instrument: self.meter.u64_counter(key.name().to_owned()).build(),
            attributes: attributes(key),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(OtelGauge {
            inner: self.inner.register_gauge(key, metadata),
            instrument: self
                .meter
                .f64_up_down_counter(key.name().to_owned())
                .build(),
            attributes: attributes(key),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(OtelHistogram {
            inner: self.inner.register_histogram(key, metadata),
            instrument: self.meter.f64_histogram(key.name().to_owned()).build(),
            attributes: attributes(key),
        }))
    }
}
