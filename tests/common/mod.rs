//! Fixtures shared by the integration tests: the real `session-sidecar`
//! binary started on ephemeral loopback ports, real clients for it (the
//! `redis` crate over RESP2 and RESP3, `redis-cli`, raw TCP), a byte-exact
//! RESP reader for wire-level assertions, and a `redis-server` fixture.
//!
//! Layout, by purpose:
//! - [`sidecar`]: the `session-sidecar` process fixture ([`Sidecar`]).
//! - [`redis_server`]: the `redis-server` fixture ([`RedisServer`],
//!   [`free_port`]).
//! - [`cluster`]: a 3-master Redis Cluster built from [`RedisServer`]s.
//! - [`sentinel`]: a master, a replica and three `redis-sentinel`s.
//! - [`tools`]: other programs and OS resources: `redis-cli`, the redis-py
//!   checks, HTTP GET on the metrics listener, [`TempDir`].
//! - [`resp`]: the raw RESP test client ([`Resp`], [`RawConn`]).
//! - [`client`]: `redis`-crate connections, [`call`] / [`acall`], and the
//!   event-channel [`EventSubscriber`].
//! - [`assertions`]: reply accessors and assertions, decoded sessions, INFO
//!   parsing.
//! - [`polling`]: deadlines, [`wait_until`], [`now_ms`].
//! - [`upstream_keys`]: the upstream's key layout, from the library's own
//!   `Layout`.
//!
//! Everything public is re-exported here, so a test reaches it as
//! `common::name` or through `use common::*`.
//!
//! Every test binary compiles this module but uses only part of it, hence
//! the `dead_code` allowance below (it covers the submodules too) and the
//! `unused_imports` one on the re-exports.
#![allow(dead_code)]

pub mod assertions;
pub mod client;
pub mod cluster;
pub mod polling;
pub mod redis_server;
pub mod resp;
pub mod sentinel;
pub mod sidecar;
pub mod tools;
pub mod upstream_keys;

// A test binary that uses nothing from one of these modules would see its
// re-export as an unused import.
#[allow(unused_imports)]
pub use self::{
    assertions::*, client::*, polling::*, redis_server::*, resp::*, sidecar::*, tools::*,
    upstream_keys::*,
};
