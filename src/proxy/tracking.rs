//! CLIENT TRACKING of ordinary keys in front of a Redis Cluster.
//!
//! A master tracks the keys a connection reads from it, and sends that
//! connection their invalidations. A client tracking through the sidecar
//! holds its pinned connection on one master; its reads of keys on the
//! others go to connections of its own there (its *trackers*), each with
//! the client's CLIENT TRACKING command replayed, so that every master
//! tracks what the client read from it and every invalidation reaches the
//! client. The trackers are opened with tracking (one per other master, so
//! that BCAST hears every master), and on demand for a master that appears
//! later.
//!
//! Replies stay in order: a command goes to a tracker only once every reply
//! owed on the pinned connection is relayed, and it is answered before the
//! next command is read. CLIENT CACHING (OPTIN/OPTOUT) holds for the next
//! command, wherever it goes: it is replayed on the tracker that gets it.
//!
//! Not done: tracking with REDIRECT (the redirect target is a connection on
//! one master; another master cannot send to it) keeps the single pinned
//! connection, as before.

use bytes::{Bytes, BytesMut};

use super::pinned::Pinned;

/// The client's trackers and what to replay on a new one.
#[derive(Default)]
pub struct Trackers {
    trackers: Vec<Pinned>,
    /// The CLIENT TRACKING ON command the client sent.
    replay: Vec<Bytes>,
    /// A CLIENT CACHING for the next command, if that goes to a tracker.
    caching: Option<Vec<Bytes>>,
}

impl Trackers {
    /// Trackers for a client that sent `tracking` (CLIENT TRACKING ON
    /// ...), or None when they cannot serve it (REDIRECT).
    pub fn for_command(tracking: &[Bytes]) -> Option<Trackers> {
        let redirects = tracking.iter().any(|a| a.eq_ignore_ascii_case(b"redirect"));
        (!redirects).then(|| Trackers {
            replay: tracking.to_vec(),
            ..Trackers::default()
        })
    }

    /// Whether `argv` is CLIENT TRACKING (ON or OFF).
    pub fn is_tracking_command(argv: &[Bytes]) -> bool {
        client_subcommand(argv, b"tracking")
    }

    /// Whether `argv` is CLIENT TRACKING ON.
    pub fn turns_on(argv: &[Bytes]) -> bool {
        Self::is_tracking_command(argv)
            && argv.get(2).is_some_and(|on| on.eq_ignore_ascii_case(b"on"))
    }

    /// Notes a CLIENT CACHING, which holds for the next command.
    pub fn note(&mut self, argv: &[Bytes]) {
        self.caching = client_subcommand(argv, b"caching").then(|| argv.to_vec());
    }

    /// Which tracker is on `node`, if one is open.
    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.trackers.iter().position(|t| t.node == node)
    }

    /// Adds a tracker just opened, with the client's tracking replayed on
    /// it (its reply not relayed).
    pub fn add(&mut self, mut tracker: Pinned) -> usize {
        tracker.send_swallowed(&self.replay);
        self.trackers.push(tracker);
        self.trackers.len() - 1
    }

    /// Sends `argv` on every tracker, its reply not relayed (CLIENT
    /// TRACKING OFF, or ON again with other options).
    pub fn send_to_all(&mut self, argv: &[Bytes]) {
        if Self::turns_on(argv) {
            self.replay = argv.to_vec();
        }
        for tracker in &mut self.trackers {
            tracker.send_swallowed(argv);
        }
    }

    /// Sends the client's `argv` on tracker `index`, after the CLIENT
    /// CACHING that came before it.
    pub fn send(&mut self, index: usize, argv: &[Bytes]) {
        let caching = self.caching.take();
        if let Some(tracker) = self.trackers.get_mut(index) {
            if let Some(caching) = caching {
                tracker.send_swallowed(&caching);
            }
            tracker.send(argv);
        }
    }

    /// The command went to the pinned connection: a CLIENT CACHING before
    /// it was used there.
    pub fn sent_elsewhere(&mut self) {
        self.caching = None;
    }

    pub fn is_empty(&self) -> bool {
        self.trackers.is_empty()
    }

    pub fn all(&mut self) -> &mut [Pinned] {
        &mut self.trackers
    }

    /// Relays what tracker `index` read; false when the connection was
    /// lost (the client's tracking with it: its owed replies are failed).
    pub fn relay(
        &mut self,
        index: usize,
        read: std::io::Result<usize>,
        output: &mut BytesMut,
    ) -> bool {
        let Some(tracker) = self.trackers.get_mut(index) else {
            return true;
        };
        let relayed = match read {
            Ok(n) if n > 0 => tracker.relay(output),
            _ => Err("closed"),
        };
        match relayed {
            Ok(()) => true,
            Err(reason) => {
                tracing::debug!(reason, node = %tracker.node, "tracking connection lost");
                self.lose(index, output);
                false
            }
        }
    }

    /// Drops tracker `index`, its connection lost: the replies it owed are
    /// failed (the client's tracking goes with it: the caller disconnects
    /// the client).
    pub fn lose(&mut self, index: usize, output: &mut BytesMut) {
        if index < self.trackers.len() {
            self.trackers.swap_remove(index).fail_owed(output);
        }
    }

    /// Gives back the trackers once tracking is off and nothing is owed.
    pub fn release_if_done(&mut self) -> bool {
        if self.trackers.iter().any(|t| t.in_use()) {
            return false;
        }
        for tracker in self.trackers.drain(..) {
            tracker.release();
        }
        true
    }
}

fn client_subcommand(argv: &[Bytes], sub: &[u8]) -> bool {
    argv.first()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"client"))
        && argv.get(1).is_some_and(|s| s.eq_ignore_ascii_case(sub))
}
