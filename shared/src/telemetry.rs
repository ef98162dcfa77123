//! Tracing setup shared by every lift process.

use tracing_subscriber::EnvFilter;

/// Installs a global subscriber writing to stderr, filtered by `RUST_LOG` (default `info`),
/// as JSON lines (`json`, for log collectors) or human-readable text. A second call is a no-op,
/// so embedded mode and tests may call it from several places.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed, which is fine here.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
