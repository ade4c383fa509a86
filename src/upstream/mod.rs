//! Write-through to an upstream Redis: the connection ([`connection`]), the
//! server-side script that applies every change atomically
//! (`sessions.lua`), the coherent hot cache ([`cache`]) and the store that
//! puts them together ([`store`]).
//!
//! Layer 7 of 14 (the order is in `tests/layers.rs`). Uses `metrics`,
//! `protocol`, `store`, `pubsub` and `events`.

pub mod cache;
pub mod connection;
pub mod store;

pub use connection::{Timeouts, Upstream};
pub use store::{Coherence, WriteThrough, WriteThroughConfig};
