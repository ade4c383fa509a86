//! The `session-sidecar` binary: configuration, logging, then the server.

use std::process::ExitCode;

use session_sidecar::ops::config::{Config, ConfigError};
use session_sidecar::ops::logging;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // Prints --help/--version to stdout (exit 0) or the error to stderr (exit 2).
        Err(ConfigError::Invalid(error)) => error.exit(),
        Err(ConfigError::File(message)) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {message}");
            }
            return ExitCode::from(2);
        }
    };
    if let Err(message) = logging::init(&config) {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{message}");
        }
        return ExitCode::from(2);
    }
    // TLS to the upstream (rediss://) uses rustls with ring's cryptography;
    // this fails only if a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: a current-thread runtime, as Redis's single event loop,
    // with no work stealing or cross-thread wake-ups.
    let mut builder = match config.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(session_sidecar::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "fatal");
            ExitCode::FAILURE
        }
    }
}
