//! The operations endpoint of each distributed process: `/metrics` moves with a real job,
//! `/healthz` and `/readyz` answer, no log line shows a credential, and a job's spans from
//! every process share one trace. Separate OS processes, real RabbitMQ and S3 on moto; the
//! benchmark-only `instant:` generator keeps synthesis out of the test's time.

use std::time::Duration;

use lift_tests::{free_port, made_up_document, wait_for_port, Cluster};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The value of the sample `series` (name plus labels, exactly as rendered), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_serves_moving_metrics_and_health() {
    let mut cluster = Cluster::with_generator("instant:".into());
    // Credentials no log line may show (moto accepts any).
    let nonce = std::process::id();
    let (key_id, secret) = (
        format!("LIFTKEY{nonce}ID"),
        format!("lift-secret-{nonce}-x9"),
    );
    cluster
        .extra_env
        .push(("AWS_ACCESS_KEY_ID", key_id.clone()));
    cluster
        .extra_env
        .push(("AWS_SECRET_ACCESS_KEY", secret.clone()));
    let (coordinator, synth, trainer) = (free_port(), free_port(), free_port());
    let with_metrics_on = |cluster: &mut Cluster, port: u16| {
        cluster
            .extra_env
            .retain(|(key, _)| *key != "LIFT_METRICS_ADDR");
        cluster
            .extra_env
            .push(("LIFT_METRICS_ADDR", format!("127.0.0.1:{port}")));
    };
    with_metrics_on(&mut cluster, coordinator);
    cluster.start_coordinator().await;
    with_metrics_on(&mut cluster, synth);
    cluster.start_synth_worker();
    with_metrics_on(&mut cluster, trainer);
    cluster.start_trainer();
    for port in [coordinator, synth, trainer] {
        wait_for_port(port, Duration::from_secs(120)).await;
        assert_eq!(get(port, "/healthz").await.0, 200);
    }

    // What each role moves, read before and after one job.
    let watched: [(u16, &[&str]); 3] = [
        (
            coordinator,
            &[
                "lift_chunks_total{outcome=\"queued\"}",
                "lift_sentences_total{outcome=\"queued\"}",
            ],
        ),
        (
            synth,
            &[
                "lift_chunks_total{outcome=\"synthesized\"}",
                "lift_sentences_total{outcome=\"synthesized\"}",
                "lift_qa_pairs_per_sentence_count",
                "lift_generator_request_seconds_count",
            ],
        ),
        (
            trainer,
            &[
                "lift_training_tokens_total",
                "lift_training_step_seconds_count",
                "lift_checkpoint_bytes_total",
                "lift_checkpoint_seconds_count",
            ],
        ),
    ];
    let mut before = Vec::new();
    for (port, series) in &watched {
        let (_, text) = get(*port, "/metrics").await;
        before.push(series.iter().map(|s| sample(&text, s)).collect::<Vec<_>>());
    }

    let job = cluster
        .submit("Vellmar Island", &made_up_document(8), 1)
        .await;
    cluster.wait_for_success(&job, JOB_TIMEOUT).await;

    for ((port, series), before) in watched.iter().zip(&before) {
        let (code, text) = get(*port, "/metrics").await;
        assert_eq!(code, 200);
        for (name, was) in series.iter().zip(before) {
            let now = sample(&text, name);
            assert!(
                now > *was,
                "{name} on port {port} did not move ({was} -> {now}):\n{text}"
            );
        }
        let (code, body) = get(*port, "/readyz").await;
        assert_eq!(code, 200, "/readyz on {port}: {body}");
    }
    let logs = cluster.logs();
    for credential in [&key_id, &secret, &"guest:guest".to_string()] {
        assert!(
            !logs.contains(credential.as_str()),
            "a log line shows {credential}"
        );
    }

    // The coordinator's gauges (refreshed every few seconds) are there too.
    let (_, text) = get(coordinator, "/metrics").await;
    for series in [
        "lift_jobs{state=\"running\"}",
        "lift_queue_depth{queue=\"lift.synth\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

/// An OTLP/gRPC receiver in the test process: keeps (service, trace id, span name) of every
/// span exported to it.
#[derive(Clone, Default)]
struct TraceCollector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for TraceCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(
                    |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(name) => Some(name.clone()),
                        _ => None,
                    },
                )
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let trace_id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                spans.push((service.clone(), trace_id, span.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_one_trace_across_coordinator_synthesis_and_training() {
    let collector = TraceCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let mut cluster = Cluster::with_generator("instant:".into());
    cluster.extra_env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ]);
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(6), 2)
        .await;
    cluster.wait_for_success(&job, JOB_TIMEOUT).await;

    // Spans arrive in batches a little after they end.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        let submit_trace = spans
            .iter()
            .find(|(service, _, name)| service == "lift-coordinator" && name == "SubmitJob")
            .map(|(_, trace, _)| trace.clone());
        if let Some(trace) = submit_trace {
            let in_trace = |service: &str, name: &str| {
                spans
                    .iter()
                    .filter(|(s, t, n)| s == service && *t == trace && n == name)
                    .count()
            };
            let chunks = in_trace("lift-synth-worker", "synthesize_chunk");
            let runs = in_trace("lift-train-worker", "train_job");
            let epochs = in_trace("lift-train-worker", "epoch");
            if chunks >= 6 && runs == 1 && epochs == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "trace {trace}: {chunks} synthesis spans, {runs} training runs, {epochs} epochs; \
                 all spans: {spans:#?}"
            );
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "no SubmitJob span from the coordinator; spans: {spans:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
