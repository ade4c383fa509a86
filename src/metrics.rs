//! The metric handles: counters an operator graphs, registered once as
//! plain atomics and kept in the structs that update them.
//!
//! Layer 3 of 15 (the order is in `tests/layers.rs`). Uses the command table
//! of `protocol`. Rendering the handles for `/metrics` is `ops::prometheus`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::command_table::{COMMANDS, Cmd};

/// A monotonically increasing counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub connections: Counter,
    pub rejected_connections: Counter,
    pub command_errors: Counter,
    pub unknown_commands: Counter,
    pub protocol_errors: Counter,
    pub auth_failures: Counter,
    pub oom_rejections: Counter,
    /// Clients closed for holding more unread replies than
    /// `client-output-buffer-limit` allows.
    pub output_limit_disconnections: Counter,
    /// Times freed memory was given back to the OS.
    pub memory_trims: Counter,
    /// Calls per command, indexed by [`Cmd`].
    commands: Box<[Counter]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Counter::default(),
            rejected_connections: Counter::default(),
            command_errors: Counter::default(),
            unknown_commands: Counter::default(),
            protocol_errors: Counter::default(),
            auth_failures: Counter::default(),
            oom_rejections: Counter::default(),
            output_limit_disconnections: Counter::default(),
            memory_trims: Counter::default(),
            commands: COMMANDS.iter().map(|_| Counter::default()).collect(),
        }
    }
}

impl Metrics {
    pub fn command(&self, cmd: Cmd) {
        if let Some(counter) = self.commands.get(cmd as usize) {
            counter.inc();
        }
    }

    /// Calls of one command so far.
    pub fn command_calls(&self, cmd: Cmd) -> u64 {
        self.commands.get(cmd as usize).map_or(0, Counter::get)
    }

    pub fn commands_total(&self) -> u64 {
        self.commands.iter().map(Counter::get).sum()
    }

    pub fn load(&self, value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }
}
