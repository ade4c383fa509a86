//! Operations: logging, the metrics page, the health endpoints, and giving
//! memory back to the OS.
//!
//! Layer 14 of 15 (the order is in `tests/layers.rs`). Uses `node` and below:
//! the HTTP endpoints and the metrics page read the node; `server` starts
//! them.

pub mod http;
pub mod logging;
pub mod memory;
pub mod prometheus;
