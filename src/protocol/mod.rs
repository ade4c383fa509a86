//! The RESP wire format: requests in ([`request`]), replies out ([`reply`]),
//! where a server's replies end ([`frame`]), for the proxy, and the table of
//! the commands the sidecar itself answers ([`command_table`]), and Redis
//! Cluster's hash slots ([`slot`]).
//!
//! Layer 2 of 15 (the order is in `tests/layers.rs`). Uses only `config`.
//! Bytes in, commands and replies out; it knows no store and no server.

pub mod command_table;
pub mod frame;
pub mod reply;
pub mod request;
pub mod slot;

pub use reply::{Protocol, ReplyWriter};
pub use request::{Limits, ProtocolError, RequestParser, complete_request, parse_i64};
