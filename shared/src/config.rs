//! Process configuration: an optional TOML file, then environment variables on top. Defaults
//! live in [`Config::default`] and nowhere else.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LiftError;
use crate::spec::Limits;

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Format version of this file; must be 1.
    pub version: u32,
    /// `LIFT_STORE_URL`: a directory, `file://dir`, `memory://` or `s3://bucket/prefix`.
    /// Default: the user's data directory (`$XDG_DATA_HOME/lift/store`, else
    /// `~/.local/share/lift/store`), so `lift ask` finds a job from any directory.
    pub store_url: String,
    /// `LIFT_AMQP_URL`: RabbitMQ (`amqp://user:pass@host:5672/%2f`); empty runs the in-process
    /// broker (embedded mode).
    pub amqp_url: String,
    /// `LIFT_GRPC_ADDR`: where the coordinator listens and clients connect.
    pub grpc_addr: String,
    /// `LIFT_GENERATOR_URL`: an OpenAI-compatible `/v1` endpoint; empty uses the built-in
    /// engine; `instant:` answers without a model (message-layer benchmarks only).
    pub generator_url: String,
    /// `LIFT_GENERATOR_MODEL`: model name sent to the generator; empty lets it choose.
    pub generator_model: String,
    /// `LIFT_MODEL`: base model used when a job names none (`default`, a `.gguf` path or a
    /// Hugging Face model directory).
    pub model: String,
    /// `LIFT_MODEL_DIR`: the model cache, where `lift model fetch` puts the default model and
    /// `default` is loaded from. Default: `~/.cache/lift/models`.
    pub model_dir: std::path::PathBuf,
    /// `LIFT_EVAL_DATA_DIR`: where `scripts/fetch-eval-data.sh` put the evaluation data that
    /// `lift eval niah` and `lift eval squad` read. Default: `~/.cache/lift/eval-data`.
    pub eval_data_dir: std::path::PathBuf,
    /// `LIFT_MAX_DOCUMENT_BYTES`: largest accepted document.
    pub max_document_bytes: u64,
    /// `LIFT_FAILED_SHARE_THRESHOLD`: a job fails once more than this share of its chunks
    /// failed (0..=1).
    pub failed_share_threshold: f64,
    /// `LIFT_DELIVERY_LIMIT`: deliveries of a message before it is dead-lettered.
    pub delivery_limit: u32,
    /// `LIFT_BROKER_RETRY_SECS`: how long a RabbitMQ operation keeps retrying before it fails
    /// (a submit then answers UNAVAILABLE; what was accepted is published once the broker is
    /// back).
    pub broker_retry_secs: u64,
    /// `LIFT_TRAINER_LEASE_SECS`: a trainer whose heartbeat has not changed for this long (as
    /// the coordinator sees it) lost its job.
    pub trainer_lease_secs: u64,
    /// `LIFT_UNSERVED_MODEL_TIMEOUT_SECS`: how long an assignment whose base model no trainer
    /// has taken is passed between trainers that hold other models before its job fails.
    pub unserved_model_timeout_secs: u64,
    /// `LIFT_SYNTH_CONCURRENCY`: chunks a synth worker processes at once.
    pub synth_concurrency: u32,
    /// `LIFT_GENERATOR_MAX_IN_FLIGHT`: requests a synth worker has open at the HTTP generator
    /// at once; unset: 4 per chunk of `synth_concurrency` (vLLM batches them). A server that
    /// answers one request at a time (llama-cpp-python's) wants 1: requests queued behind
    /// others there run into the request timeout.
    pub generator_max_in_flight: Option<u32>,
    /// `LIFT_METRICS_ADDR`: where `/metrics` is served; empty disables it.
    pub metrics_addr: String,
    /// `LIFT_SERVE_ADDR`: where `lift serve` listens (its `--addr` overrides it).
    pub serve_addr: std::net::SocketAddr,
    /// `LIFT_CHECKPOINT_EVERY_STEPS`: a trainer checkpoints every this many steps, and at
    /// every epoch end.
    pub checkpoint_every_steps: u64,
    /// `LIFT_TRAINER_EXIT_WHEN_IDLE_SECS`: a trainer exits after this many seconds without a
    /// training job (for KEDA ScaledJob pods, which should complete and free their GPU);
    /// unset: it waits for jobs until SIGTERM.
    pub trainer_exit_when_idle_secs: Option<u64>,
    /// `LIFT_AUTH_TOKENS_FILE`: `tenant:token` lines; with it (or `LIFT_AUTH_TOKENS`) the
    /// gRPC API and `lift serve` want a bearer token and scope jobs to its tenant.
    pub auth_tokens_file: String,
    /// `LIFT_TLS_CERT` and `LIFT_TLS_KEY`: PEM certificate chain and key; with them the
    /// coordinator's gRPC and `lift serve` speak TLS only.
    pub tls_cert: String,
    pub tls_key: String,
    /// `LIFT_TLS_CLIENT_CA`: PEM CA whose client certificates the servers require.
    pub tls_client_ca: String,
    /// `LIFT_TLS_CA`: PEM CA that clients (`lift submit`, ...) trust for `https://` addresses,
    /// instead of the system's roots.
    pub tls_ca: String,
    /// `LIFT_TLS_CLIENT_CERT` and `LIFT_TLS_CLIENT_KEY`: the client's certificate and key,
    /// for servers that require one.
    pub tls_client_cert: String,
    pub tls_client_key: String,
    /// `LIFT_S3_ENDPOINT`, else `AWS_ENDPOINT_URL`: an S3-compatible server (MinIO, moto) for
    /// `s3://` stores instead of AWS.
    pub s3_endpoint: Option<String>,
    /// `LIFT_DEVICE=cpu`: the engine stays on the CPU in a CUDA build.
    pub cpu_only: bool,
    /// `LIFT_TF32=0`: full f32 in the GPU's f32 matmuls instead of TF32.
    pub tf32: bool,
    /// `LIFT_CPU_DECODE=f32`: generation on the CPU reads the f32 weights instead of their
    /// 8-bit copies (`int8`, the default: 1.3 to 1.9x faster decoding of up to 16 rows,
    /// engine/src/decode_weight.rs).
    pub cpu_decode_exact: bool,
    /// `LIFT_AUTH_TOKENS`: `tenant:token` entries inline, as in the tokens file. A secret:
    /// from the environment only, never written out.
    #[serde(skip)]
    pub auth_tokens: Secret,
    /// `LIFT_GENERATOR_API_KEY`: the bearer token sent to the HTTP generator. A secret, as above.
    #[serde(skip)]
    pub generator_api_key: Secret,
    /// `LIFT_TOKEN`: the bearer token clients (`lift submit`, `lift status`, ...) send to a
    /// coordinator that wants one. A secret, as above.
    #[serde(skip)]
    pub client_token: Secret,
}

/// A value kept out of `Debug` output and of serialized configuration.
#[derive(Clone, Default, PartialEq)]
pub struct Secret(Option<String>);

impl Secret {
    pub fn new(value: Option<String>) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secret(set)"
        } else {
            "Secret(unset)"
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        let cache = user_cache_dir(process_env);
        Self {
            version: CONFIG_VERSION,
            store_url: default_store_url(process_env),
            amqp_url: String::new(),
            grpc_addr: "127.0.0.1:50051".to_string(),
            generator_url: String::new(),
            generator_model: String::new(),
            model: "default".to_string(),
            model_dir: cache.join("models"),
            eval_data_dir: cache.join("eval-data"),
            max_document_bytes: Limits::default().max_document_bytes as u64,
            failed_share_threshold: 0.5,
            delivery_limit: 5,
            broker_retry_secs: 60,
            trainer_lease_secs: 15,
            unserved_model_timeout_secs: 600,
            synth_concurrency: 4,
            generator_max_in_flight: None,
            metrics_addr: String::new(),
            serve_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 8000)),
            checkpoint_every_steps: 25,
            trainer_exit_when_idle_secs: None,
            auth_tokens_file: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_ca: String::new(),
            tls_client_cert: String::new(),
            tls_client_key: String::new(),
            s3_endpoint: None,
            cpu_only: false,
            tf32: true,
            cpu_decode_exact: false,
            auth_tokens: Secret::default(),
            generator_api_key: Secret::default(),
            client_token: Secret::default(),
        }
    }
}

/// The process environment: read here and nowhere else (`clippy.toml`).
#[allow(clippy::disallowed_methods)]
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The per-user store: `$XDG_DATA_HOME/lift/store`, else `$HOME/.local/share/lift/store`,
/// else (no home, as in some containers) `.lift/store` under the working directory.
fn default_store_url(env: impl Fn(&str) -> Option<String>) -> String {
    let set = |name| env(name).filter(|value: &String| !value.trim().is_empty());
    let data_home = set("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(".local/share")));
    match data_home {
        Some(dir) => dir.join("lift/store").display().to_string(),
        None => ".lift/store".to_string(),
    }
}

/// `$HOME/.cache/lift`, else (no home) `.cache/lift` under the working directory: the model
/// cache and the evaluation data, as the fetch scripts place them.
fn user_cache_dir(env: impl Fn(&str) -> Option<String>) -> std::path::PathBuf {
    let home = env("HOME").filter(|home| !home.trim().is_empty());
    std::path::PathBuf::from(home.unwrap_or_else(|| ".".to_string())).join(".cache/lift")
}

/// The configuration file: the one given on the command line, else `LIFT_CONFIG`, else none.
fn config_file(
    given: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<std::path::PathBuf> {
    given.map(Path::to_path_buf).or_else(|| {
        env("LIFT_CONFIG")
            .filter(|value| !value.trim().is_empty())
            .map(std::path::PathBuf::from)
    })
}

fn invalid_config(message: String) -> LiftError {
    LiftError::InvalidArgument(message)
}

/// A variable that takes one of two words: `on` gives true, `off` false.
fn parse_switch(name: &str, raw: &str, on: &str, off: &str) -> Result<bool, LiftError> {
    match raw.trim() {
        value if value == on => Ok(true),
        value if value == off => Ok(false),
        other => Err(invalid_config(format!(
            "environment variable {name}={other:?} is invalid: expected {on} or {off}"
        ))),
    }
}

fn parse_env<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, LiftError>
where
    T::Err: std::fmt::Display,
{
    raw.trim().parse().map_err(|e| {
        invalid_config(format!(
            "environment variable {name}={raw:?} is invalid: {e}"
        ))
    })
}

impl Config {
    /// Reads the configuration file (`path`, else `LIFT_CONFIG`) if there is one, then applies
    /// `LIFT_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Self, LiftError> {
        let path = config_file(path, process_env);
        let file_text = match path.as_deref() {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                invalid_config(format!(
                    "failed to read config file {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        Self::from_sources(file_text.as_deref(), process_env)
    }

    /// [`Config::load`] with the file text and the environment passed in (for tests).
    pub fn from_sources(
        file_text: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, LiftError> {
        let mut config = match file_text {
            Some(text) => toml::from_str::<Config>(text)
                .map_err(|e| invalid_config(format!("failed to parse config file: {e}")))?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), LiftError> {
        let strings: [(&str, &mut String); 14] = [
            ("LIFT_STORE_URL", &mut self.store_url),
            ("LIFT_AMQP_URL", &mut self.amqp_url),
            ("LIFT_GRPC_ADDR", &mut self.grpc_addr),
            ("LIFT_GENERATOR_URL", &mut self.generator_url),
            ("LIFT_GENERATOR_MODEL", &mut self.generator_model),
            ("LIFT_MODEL", &mut self.model),
            ("LIFT_METRICS_ADDR", &mut self.metrics_addr),
            ("LIFT_AUTH_TOKENS_FILE", &mut self.auth_tokens_file),
            ("LIFT_TLS_CERT", &mut self.tls_cert),
            ("LIFT_TLS_KEY", &mut self.tls_key),
            ("LIFT_TLS_CLIENT_CA", &mut self.tls_client_ca),
            ("LIFT_TLS_CA", &mut self.tls_ca),
            ("LIFT_TLS_CLIENT_CERT", &mut self.tls_client_cert),
            ("LIFT_TLS_CLIENT_KEY", &mut self.tls_client_key),
        ];
        for (name, field) in strings {
            if let Some(value) = env(name) {
                *field = value;
            }
        }
        if let Some(raw) = env("LIFT_MAX_DOCUMENT_BYTES") {
            self.max_document_bytes = parse_env("LIFT_MAX_DOCUMENT_BYTES", &raw)?;
        }
        if let Some(raw) = env("LIFT_FAILED_SHARE_THRESHOLD") {
            self.failed_share_threshold = parse_env("LIFT_FAILED_SHARE_THRESHOLD", &raw)?;
        }
        if let Some(raw) = env("LIFT_DELIVERY_LIMIT") {
            self.delivery_limit = parse_env("LIFT_DELIVERY_LIMIT", &raw)?;
        }
        if let Some(raw) = env("LIFT_BROKER_RETRY_SECS") {
            self.broker_retry_secs = parse_env("LIFT_BROKER_RETRY_SECS", &raw)?;
        }
        if let Some(raw) = env("LIFT_TRAINER_LEASE_SECS") {
            self.trainer_lease_secs = parse_env("LIFT_TRAINER_LEASE_SECS", &raw)?;
        }
        if let Some(raw) = env("LIFT_UNSERVED_MODEL_TIMEOUT_SECS") {
            self.unserved_model_timeout_secs = parse_env("LIFT_UNSERVED_MODEL_TIMEOUT_SECS", &raw)?;
        }
        if let Some(raw) = env("LIFT_SYNTH_CONCURRENCY") {
            self.synth_concurrency = parse_env("LIFT_SYNTH_CONCURRENCY", &raw)?;
        }
        if let Some(raw) = env("LIFT_GENERATOR_MAX_IN_FLIGHT") {
            self.generator_max_in_flight = Some(parse_env("LIFT_GENERATOR_MAX_IN_FLIGHT", &raw)?);
        }
        let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if let Some(raw) = set("LIFT_SERVE_ADDR") {
            self.serve_addr = parse_env("LIFT_SERVE_ADDR", &raw)?;
        }
        if let Some(raw) = set("LIFT_CHECKPOINT_EVERY_STEPS") {
            self.checkpoint_every_steps = parse_env("LIFT_CHECKPOINT_EVERY_STEPS", &raw)?;
        }
        if let Some(raw) = set("LIFT_TRAINER_EXIT_WHEN_IDLE_SECS") {
            self.trainer_exit_when_idle_secs =
                Some(parse_env("LIFT_TRAINER_EXIT_WHEN_IDLE_SECS", &raw)?);
        }
        if let Some(endpoint) = set("LIFT_S3_ENDPOINT").or_else(|| set("AWS_ENDPOINT_URL")) {
            self.s3_endpoint = Some(endpoint);
        }
        if let Some(dir) = set("LIFT_MODEL_DIR") {
            self.model_dir = dir.into();
        }
        if let Some(dir) = set("LIFT_EVAL_DATA_DIR") {
            self.eval_data_dir = dir.into();
        }
        if let Some(raw) = set("LIFT_DEVICE") {
            self.cpu_only = parse_switch("LIFT_DEVICE", &raw, "cpu", "auto")?;
        }
        if let Some(raw) = set("LIFT_CPU_DECODE") {
            self.cpu_decode_exact = parse_switch("LIFT_CPU_DECODE", &raw, "f32", "int8")?;
        }
        if let Some(raw) = set("LIFT_TF32") {
            self.tf32 = raw.trim() != "0";
        }
        if let Some(tokens) = env("LIFT_AUTH_TOKENS") {
            self.auth_tokens = Secret::new(Some(tokens));
        }
        if let Some(key) = env("LIFT_GENERATOR_API_KEY") {
            self.generator_api_key = Secret::new(Some(key));
        }
        if let Some(token) = set("LIFT_TOKEN") {
            self.client_token = Secret::new(Some(token));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), LiftError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid_config(format!(
                "config version {} is not supported; expected {CONFIG_VERSION}",
                self.version
            )));
        }
        if self.store_url.trim().is_empty() {
            return Err(invalid_config("store_url is empty".to_string()));
        }
        if !(0.0..=1.0).contains(&self.failed_share_threshold) {
            return Err(invalid_config(format!(
                "failed_share_threshold is {}; it must be in 0..=1",
                self.failed_share_threshold
            )));
        }
        if self.delivery_limit == 0 {
            return Err(invalid_config(
                "delivery_limit must be at least 1".to_string(),
            ));
        }
        if self.broker_retry_secs == 0 {
            return Err(invalid_config(
                "broker_retry_secs must be at least 1".to_string(),
            ));
        }
        if self.trainer_lease_secs == 0 {
            return Err(invalid_config(
                "trainer_lease_secs must be at least 1".to_string(),
            ));
        }
        // A certificate and its key go together: one without the other is a mistake.
        let paired = |a: &str, b: &str, names: &str| {
            if a.trim().is_empty() == b.trim().is_empty() {
                Ok(())
            } else {
                Err(invalid_config(format!(
                    "{names} go together: set both or neither"
                )))
            }
        };
        paired(
            &self.tls_cert,
            &self.tls_key,
            "tls_cert and tls_key (LIFT_TLS_CERT, LIFT_TLS_KEY)",
        )?;
        paired(
            &self.tls_client_cert,
            &self.tls_client_key,
            "tls_client_cert and tls_client_key (LIFT_TLS_CLIENT_CERT, LIFT_TLS_CLIENT_KEY)",
        )?;
        if !self.tls_client_ca.trim().is_empty() && self.tls_cert.trim().is_empty() {
            return Err(invalid_config(
                "tls_client_ca (LIFT_TLS_CLIENT_CA) needs tls_cert and tls_key".to_string(),
            ));
        }
        if self.synth_concurrency == 0 {
            return Err(invalid_config(
                "synth_concurrency must be at least 1".to_string(),
            ));
        }
        if self.checkpoint_every_steps == 0 {
            return Err(invalid_config(
                "checkpoint_every_steps (LIFT_CHECKPOINT_EVERY_STEPS) must be at least 1"
                    .to_string(),
            ));
        }
        if self.trainer_exit_when_idle_secs == Some(0) {
            return Err(invalid_config(
                "trainer_exit_when_idle_secs (LIFT_TRAINER_EXIT_WHEN_IDLE_SECS) must be at least 1; leave it unset to wait for jobs"
                    .to_string(),
            ));
        }
        if self.generator_max_in_flight == Some(0) {
            return Err(invalid_config(
                "generator_max_in_flight (LIFT_GENERATOR_MAX_IN_FLIGHT) must be at least 1"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Requests a synth worker keeps open at the HTTP generator.
    pub fn generator_requests_in_flight(&self) -> usize {
        self.generator_max_in_flight
            .unwrap_or(self.synth_concurrency.saturating_mul(4))
            .max(1) as usize
    }

    /// Submit-time limits derived from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_document_bytes: usize::try_from(self.max_document_bytes).unwrap_or(usize::MAX),
            ..Limits::default()
        }
    }

    pub fn uses_in_process_broker(&self) -> bool {
        self.amqp_url.trim().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_default_store_is_in_the_users_data_directory() {
        assert_eq!(
            default_store_url(env(&[("HOME", "/home/ada")])),
            "/home/ada/.local/share/lift/store"
        );
        assert_eq!(
            default_store_url(env(&[
                ("HOME", "/home/ada"),
                ("XDG_DATA_HOME", "/data/ada")
            ])),
            "/data/ada/lift/store"
        );
        // An empty XDG_DATA_HOME counts as unset, as the XDG specification says.
        assert_eq!(
            default_store_url(env(&[("HOME", "/home/ada"), ("XDG_DATA_HOME", "")])),
            "/home/ada/.local/share/lift/store"
        );
        assert_eq!(default_store_url(env(&[])), ".lift/store");
    }

    #[test]
    fn the_file_given_wins_over_lift_config() {
        let given = Path::new("/etc/lift.toml");
        let set = env(&[("LIFT_CONFIG", "/srv/lift.toml")]);
        assert_eq!(config_file(Some(given), &set), Some(given.to_path_buf()));
        assert_eq!(config_file(None, &set), Some("/srv/lift.toml".into()));
        assert_eq!(config_file(None, env(&[("LIFT_CONFIG", " ")])), None);
        assert_eq!(config_file(None, env(&[])), None);
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let err = Config::from_sources(None, env(&[("LIFT_TLS_CERT", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("LIFT_TLS_KEY"), "{err}");
        let err =
            Config::from_sources(None, env(&[("LIFT_TLS_CLIENT_CA", "/ca.pem")])).unwrap_err();
        assert!(err.to_string().contains("needs tls_cert"), "{err}");
        let both = env(&[("LIFT_TLS_CERT", "/c.pem"), ("LIFT_TLS_KEY", "/k.pem")]);
        assert_eq!(Config::from_sources(None, both).unwrap().tls_key, "/k.pem");
    }

    #[test]
    fn defaults_need_no_file_and_no_environment() {
        let config = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.uses_in_process_broker());
        assert_eq!(config.grpc_addr, "127.0.0.1:50051");
        assert_eq!(config.failed_share_threshold, 0.5);
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = "version = 1\nstore_url = \"s3://b/p\"\ndelivery_limit = 7\n";
        let config = Config::from_sources(
            Some(file),
            env(&[
                ("LIFT_DELIVERY_LIMIT", "9"),
                ("LIFT_AMQP_URL", "amqp://localhost"),
            ]),
        )
        .unwrap();
        assert_eq!(config.store_url, "s3://b/p");
        assert_eq!(config.delivery_limit, 9);
        assert!(!config.uses_in_process_broker());
    }

    #[test]
    fn unknown_fields_and_versions_are_rejected() {
        let err = Config::from_sources(Some("version = 1\nstroe_url = \"x\"\n"), env(&[]));
        assert!(err.unwrap_err().to_string().contains("stroe_url"));
        let err = Config::from_sources(Some("version = 2\n"), env(&[]));
        assert!(err.unwrap_err().to_string().contains("version 2"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let err =
            Config::from_sources(None, env(&[("LIFT_TRAINER_LEASE_SECS", "soon")])).unwrap_err();
        assert!(err.to_string().contains("LIFT_TRAINER_LEASE_SECS"));
        let err =
            Config::from_sources(None, env(&[("LIFT_FAILED_SHARE_THRESHOLD", "1.5")])).unwrap_err();
        assert!(err.to_string().contains("failed_share_threshold"));
    }

    #[test]
    fn engine_store_and_secret_settings_come_from_the_environment() {
        let defaults = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(defaults.s3_endpoint, None);
        assert!(!defaults.cpu_only && defaults.tf32 && !defaults.cpu_decode_exact);
        assert_eq!(defaults.auth_tokens.expose(), None);

        let config = Config::from_sources(
            None,
            env(&[
                ("AWS_ENDPOINT_URL", "http://aws-style:9000"),
                ("LIFT_DEVICE", "cpu"),
                ("LIFT_TF32", "0"),
                ("LIFT_CPU_DECODE", "f32"),
                ("LIFT_AUTH_TOKENS", "corpus:0123456789abcdef"),
                ("LIFT_GENERATOR_API_KEY", "sk-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(config.s3_endpoint.as_deref(), Some("http://aws-style:9000"));
        assert!(config.cpu_only && !config.tf32 && config.cpu_decode_exact);
        assert_eq!(config.generator_api_key.expose(), Some("sk-secret"));
        // Secrets reach neither a log line nor a written configuration.
        let shown = format!("{config:?} {}", toml::to_string(&config).unwrap());
        assert!(!shown.contains("sk-secret") && !shown.contains("0123456789abcdef"));

        let ours = Config::from_sources(
            None,
            env(&[
                ("AWS_ENDPOINT_URL", "http://aws-style:9000"),
                ("LIFT_S3_ENDPOINT", "http://ours:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(ours.s3_endpoint.as_deref(), Some("http://ours:9000"));
        let err = Config::from_sources(None, env(&[("LIFT_DEVICE", "gpu")])).unwrap_err();
        assert!(err.to_string().contains("LIFT_DEVICE"), "{err}");
        let err = Config::from_sources(None, env(&[("LIFT_CPU_DECODE", "q4")])).unwrap_err();
        assert!(err.to_string().contains("LIFT_CPU_DECODE"), "{err}");
    }

    #[test]
    fn generator_requests_in_flight_follow_the_chunks_unless_set() {
        let default = Config::from_sources(None, env(&[("LIFT_SYNTH_CONCURRENCY", "2")])).unwrap();
        assert_eq!(default.generator_requests_in_flight(), 8);
        let serial =
            Config::from_sources(None, env(&[("LIFT_GENERATOR_MAX_IN_FLIGHT", "1")])).unwrap();
        assert_eq!(serial.generator_requests_in_flight(), 1);
        let err =
            Config::from_sources(None, env(&[("LIFT_GENERATOR_MAX_IN_FLIGHT", "0")])).unwrap_err();
        assert!(
            err.to_string().contains("LIFT_GENERATOR_MAX_IN_FLIGHT"),
            "{err}"
        );
    }

    #[test]
    fn role_and_client_settings_come_from_the_environment() {
        let defaults = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(defaults.serve_addr.to_string(), "127.0.0.1:8000");
        assert_eq!(defaults.checkpoint_every_steps, 25);
        assert_eq!(defaults.trainer_exit_when_idle_secs, None);
        assert_eq!(defaults.client_token.expose(), None);

        let config = Config::from_sources(
            None,
            env(&[
                ("LIFT_SERVE_ADDR", "0.0.0.0:9000"),
                ("LIFT_CHECKPOINT_EVERY_STEPS", "10"),
                ("LIFT_TRAINER_EXIT_WHEN_IDLE_SECS", "120"),
                ("LIFT_TOKEN", "corpus-token"),
            ]),
        )
        .unwrap();
        assert_eq!(config.serve_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(config.checkpoint_every_steps, 10);
        assert_eq!(config.trainer_exit_when_idle_secs, Some(120));
        assert_eq!(config.client_token.expose(), Some("corpus-token"));
        assert!(!format!("{config:?}").contains("corpus-token"));

        for (name, value) in [
            ("LIFT_SERVE_ADDR", "localhost"),
            ("LIFT_CHECKPOINT_EVERY_STEPS", "0"),
            ("LIFT_TRAINER_EXIT_WHEN_IDLE_SECS", "0"),
        ] {
            let err = Config::from_sources(None, env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn limits_follow_the_document_size() {
        let config =
            Config::from_sources(None, env(&[("LIFT_MAX_DOCUMENT_BYTES", "100")])).unwrap();
        assert_eq!(config.limits().max_document_bytes, 100);
        assert_eq!(config.limits().max_documents, 64);
    }
}
