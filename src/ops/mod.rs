//! Operations: configuration, logging, metrics and the health endpoints.

pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
