//! The `session-sidecar` binary: configuration, logging, then the server.

use std::process::ExitCode;

use session_sidecar::config::{Config, ConfigError};
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
    // The main thread is the first event loop (accepting, background work,
    // clients); the server starts the others (`--threads`), each a
    // current-thread runtime of its own: see server::workers.
    let runtime = match session_sidecar::event_loop::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    session_sidecar::event_loop::hooked();
    match runtime.block_on(session_sidecar::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "fatal");
            ExitCode::FAILURE
        }
    }
}
