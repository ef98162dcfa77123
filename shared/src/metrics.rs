//! Prometheus metrics of every lift process, in one registry that `/metrics` renders. Each
//! role moves the metrics of its work; all are registered at start, so a scrape shows every
//! name from the first second (at zero where a role does not do that work).

use std::sync::LazyLock;

use prometheus::core::Collector;

use crate::messages::queues;
use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<M: Collector + Clone + 'static>(metric: M) -> M {
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("every metric name is registered once");
    metric
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 18).expect("valid buckets")
}

/// Chunks by outcome: `queued` (published by the coordinator), `synthesized`, `failed`.
pub static CHUNKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lift_chunks_total",
        "Synthesis chunks by outcome.",
        &["outcome"],
    )
});

/// Sentences by outcome, counted with their chunk.
pub static SENTENCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lift_sentences_total",
        "Sentences by outcome.",
        &["outcome"],
    )
});

pub static QA_PAIRS_PER_SENTENCE: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "lift_qa_pairs_per_sentence",
        "Question/answer pairs kept per synthesized sentence.",
        vec![0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0],
    )
});

pub static GENERATOR_REQUEST_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "lift_generator_request_seconds",
        "Latency of one generator request (one sentence's round).",
        seconds_buckets(),
    )
});

pub static GENERATOR_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "lift_generator_errors_total",
        "Generator requests that failed.",
    )
});

/// `rate(lift_training_tokens_total[1m])` is the training throughput in tokens/s.
pub static TRAINING_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "lift_training_tokens_total",
        "Tokens trained on, padding included.",
    )
});

pub static TRAINING_STEP_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "lift_training_step_seconds",
        "Time of one optimizer step.",
        seconds_buckets(),
    )
});

pub static TRAINING_LOSS: LazyLock<Gauge> = LazyLock::new(|| {
    register(
        Gauge::new("lift_training_loss", "Loss of the last training step.").expect("valid metric"),
    )
});

pub static CHECKPOINT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "lift_checkpoint_bytes_total",
        "Bytes of checkpoints written to the store.",
    )
});

pub static CHECKPOINT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "lift_checkpoint_seconds",
        "Time to write one checkpoint.",
        seconds_buckets(),
    )
});

/// Jobs the coordinator holds, by state.
pub static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("lift_jobs", "Jobs by state, as the coordinator sees them."),
            &["state"],
        )
        .expect("valid metric"),
    )
});

/// Messages in a queue (ready and unacknowledged), as last read from the broker.
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "lift_queue_depth",
                "Messages in a broker queue when last read.",
            ),
            &["queue"],
        )
        .expect("valid metric"),
    )
});

/// Completions `lift serve` answered, by API (`chat`, `text`) and HTTP status.
pub static SERVE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lift_serve_requests_total",
        "Completion requests lift serve answered, by API and HTTP status.",
        &["api", "status"],
    )
});

/// From a completion's admission to the end of its reply (a stream's last event).
pub static SERVE_REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "lift_serve_request_seconds",
                "Seconds from a completion's admission to the end of its reply.",
            )
            .buckets(seconds_buckets()),
            &["api"],
        )
        .expect("valid metric"),
    )
});

/// Completions admitted (waiting for the engine or generating).
pub static SERVE_REQUESTS_RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "lift_serve_requests_running",
            "Completions admitted by lift serve, waiting or generating.",
        )
        .expect("valid metric"),
    )
});

pub static SERVE_PROMPT_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "lift_serve_prompt_tokens_total",
        "Prompt tokens of the completions lift serve generated.",
    )
});

pub static SERVE_GENERATION_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "lift_serve_generation_tokens_total",
        "Tokens lift serve generated.",
    )
});

/// Registers every metric, so the first scrape already lists them all.
pub fn init() {
    for outcome in ["queued", "synthesized", "failed"] {
        CHUNKS.with_label_values(&[outcome]);
        SENTENCES.with_label_values(&[outcome]);
    }
    LazyLock::force(&QA_PAIRS_PER_SENTENCE);
    LazyLock::force(&GENERATOR_REQUEST_SECONDS);
    LazyLock::force(&GENERATOR_ERRORS);
    LazyLock::force(&TRAINING_TOKENS);
    LazyLock::force(&TRAINING_STEP_SECONDS);
    LazyLock::force(&TRAINING_LOSS);
    LazyLock::force(&CHECKPOINT_BYTES);
    LazyLock::force(&CHECKPOINT_SECONDS);
    for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
        JOBS.with_label_values(&[state]);
    }
    for queue in [queues::SYNTH, queues::TRAIN, queues::EVENTS] {
        QUEUE_DEPTH.with_label_values(&[queue]);
    }
    for api in ["chat", "text"] {
        SERVE_REQUEST_SECONDS.with_label_values(&[api]);
    }
    LazyLock::force(&SERVE_REQUESTS);
    LazyLock::force(&SERVE_REQUESTS_RUNNING);
    LazyLock::force(&SERVE_PROMPT_TOKENS);
    LazyLock::force(&SERVE_GENERATION_TOKENS);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    TextEncoder::new()
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_else(|error| format!("# metrics could not be encoded: {error}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_metric_is_rendered_and_moves() {
        init();
        CHUNKS.with_label_values(&["queued"]).inc_by(3);
        TRAINING_LOSS.set(1.5);
        let text = render();
        for name in [
            "lift_chunks_total",
            "lift_sentences_total",
            "lift_qa_pairs_per_sentence",
            "lift_generator_request_seconds",
            "lift_generator_errors_total",
            "lift_training_tokens_total",
            "lift_training_step_seconds",
            "lift_training_loss",
            "lift_checkpoint_bytes_total",
            "lift_checkpoint_seconds",
            "lift_jobs",
            "lift_queue_depth",
            "lift_serve_request_seconds",
            "lift_serve_requests_running",
            "lift_serve_prompt_tokens_total",
            "lift_serve_generation_tokens_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("lift_chunks_total{outcome=\"queued\"} 3"));
        assert!(text.contains("lift_training_loss 1.5"));
    }
}
