//! Logs and traces of every lift process.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as JSON lines on request.
//! Traces: OpenTelemetry over OTLP/gRPC, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_TRACES_EXPORTER=none` turns it off again,
//! and the other standard `OTEL_*` variables (service name, batch delay, timeouts) apply. A job
//! is one trace: its context travels as W3C `traceparent`/`tracestate` in gRPC metadata, in AMQP
//! headers and in the job record, and each process continues it ([`trace_headers`],
//! [`continue_trace`]).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::messages::Headers;

/// Keeps the trace exporter; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter. Call it outside the async runtime's `block_on`, while
    /// the runtime still exists: the exporter's client runs on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: flushing traces failed: {error}");
            }
        }
    }
}

fn otlp_wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber (a second call is a no-op, so tests and embedded mode may
/// call it more than once) and, when OTLP is configured, the trace exporter. `service` names
/// the process in traces unless `OTEL_SERVICE_NAME` does. With OTLP on it must run inside a
/// Tokio runtime (the exporter's gRPC client lives there).
/// Log lines at `default_level` and above, unless `RUST_LOG` says otherwise.
// OpenTelemetry's own variables (`OTEL_*`), which its exporter reads too; tracing starts
// before the configuration is loaded, so that loading it can log.
#[allow(clippy::disallowed_methods)]
pub fn init(json: bool, service: &str, default_level: LevelFilter) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level.to_string()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, exporter_error) = if otlp_wanted(|name| std::env::var(name).ok()) {
        match tracer_provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    // Spans go to the exporter at INFO and above whatever RUST_LOG says about log lines.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("lift"))
            .with_filter(LevelFilter::INFO)
    });
    // `try_init` fails only when a subscriber is already installed, which is fine here.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(traces)
        .try_init();
    if let Some(error) = exporter_error {
        tracing::error!(%error, "cannot set up the OTLP trace exporter; traces are off");
    }
    Telemetry { provider }
}

#[allow(clippy::disallowed_methods)] // OTEL_SERVICE_NAME, as for `init`
fn tracer_provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

struct HeadersInjector<'a>(&'a mut Headers);

impl Injector for HeadersInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

struct HeadersExtractor<'a>(&'a Headers);

impl Extractor for HeadersExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context of the current span as `traceparent` (and `tracestate`) headers; empty
/// when tracing is off or nothing is being traced.
pub fn trace_headers() -> Headers {
    let mut headers = Headers::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeadersInjector(&mut headers));
    headers
}

/// Makes `span` a child of the trace whose context `carrier` holds (AMQP headers, gRPC
/// metadata, a stored record); leaves it alone when the carrier holds none.
pub fn continue_trace(span: &tracing::Span, carrier: &Headers) {
    if !carrier.contains_key("traceparent") {
        return;
    }
    let context = TraceContextPropagator::new().extract(&HeadersExtractor(carrier));
    // Fails only when the span is disabled (filtered out): then there is nothing to link.
    let _ = span.set_parent(context);
}

/// Links the current span to the span a stored `traceparent` names (the synthesis that wrote
/// the tasks a training step uses); nothing when it is empty or malformed.
pub fn link_current_span_to(traceparent: &str) {
    use opentelemetry::trace::TraceContextExt;
    if traceparent.is_empty() {
        return;
    }
    let carrier = Headers::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&HeadersExtractor(&carrier));
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        tracing::Span::current().add_link(linked);
    }
}

/// The W3C headers that carry a trace context, in AMQP headers and gRPC metadata alike.
pub const TRACE_CONTEXT_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Only the trace context of a set of headers (what is worth passing on).
pub fn trace_context_of(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter(|(name, _)| TRACE_CONTEXT_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_is_off_unless_an_endpoint_is_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert!(!otlp_wanted(env(&[])));
        assert!(otlp_wanted(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(otlp_wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(!otlp_wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn only_the_trace_context_is_passed_on() {
        let headers = Headers::from([
            ("traceparent".to_string(), "00-ab-cd-01".to_string()),
            ("job_id".to_string(), "j".to_string()),
        ]);
        let passed = trace_context_of(&headers);
        assert_eq!(passed.len(), 1);
        assert!(passed.contains_key("traceparent"));
    }
}
