//! session-sidecar: a Redis-protocol session store that runs beside each
//! WebSocket gateway pod.
//!
//! Data flow: [`server`] accepts connections and reads bytes; [`protocol`]
//! parses requests and encodes replies (RESP2/RESP3); [`commands`] turns a
//! request into a call on the [`store`] (sessions and their indexes) or the
//! local [`pubsub`] broker, or (with an upstream) is forwarded there by the
//! [`proxy`]; the store reports lifecycle [`events`]. [`ops`]
//! holds what operators touch: configuration, logs, metrics, health.
#![deny(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod commands;
pub mod config;
pub mod event_loop;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod ops;
pub mod protocol;
pub mod proxy;
pub mod pubsub;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tracking;
pub mod upstream;
