//! Write-through to an upstream Redis: the connections to its masters
//! ([`connection`]), the sharded key layout ([`layout`]), the server-side
//! script that applies every change to a shard atomically (`sessions.lua`),
//! the cross-shard steps and their repair ([`intents`]), the coherent hot
//! cache ([`cache`]), the store that puts them together ([`store`]) and a
//! transaction's writes sent in one script call ([`batch`]).
//!
//! Layer 8 of 15 (the order is in `tests/layers.rs`). Uses `metrics`,
//! `protocol`, `store`, `pubsub` and `events`.

pub mod batch;
pub mod cache;
pub mod connection;
pub mod intents;
pub mod layout;
pub mod store;

pub use batch::Batch;
pub use connection::{Timeouts, Upstream};
pub use store::{Coherence, WriteThrough, WriteThroughConfig};
