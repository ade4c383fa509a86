//! Lifecycle events: one JSON object per message on `<prefix>:events`.
//!
//! In standalone mode they go to the sidecar's own subscribers. Nothing is
//! serialized while nobody listens.
//!
//! Each event is also a change for the clients caching that session
//! ([`crate::tracking`]).
//!
//! Layer 7 of 15 (the order is in `tests/layers.rs`). Uses `store` (the
//! events it reports), `pubsub` (where they are published standalone) and
//! `tracking`.

use std::sync::Arc;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::pubsub::PubSub;
use crate::store::{Event, EventKind, EventSink, lossy_text};
use crate::tracking::Tracking;

/// Publishes store events to local subscribers.
pub struct LocalEvents {
    channel: Bytes,
    pubsub: Arc<PubSub>,
    /// Every event is a change clients caching the session are told of.
    tracking: Arc<Tracking>,
}

impl LocalEvents {
    pub fn new(prefix: &str, pubsub: Arc<PubSub>, tracking: Arc<Tracking>) -> Self {
        Self {
            channel: Bytes::from(format!("{prefix}:events")),
            pubsub,
            tracking,
        }
    }
}

impl EventSink for LocalEvents {
    fn publish(&self, events: Vec<Event>) {
        if self.tracking.any() {
            // What no command names: expiry, moves, and the sessions a
            // command changed besides its own (evictions, KILLUSER, a
            // connection taken from another session). The command's own
            // session is invalidated by the command, with its client (for
            // NOLOOP).
            for event in &events {
                let side_effect = matches!(event.kind, EventKind::Expired | EventKind::Migrated)
                    || event.reason.is_some_and(|reason| reason != "expire");
                if side_effect {
                    self.tracking.invalidate(&event.id, None);
                }
            }
        }
        if !self.pubsub.has_subscribers() {
            return;
        }
        for event in &events {
            self.pubsub
                .publish(&self.channel, &Bytes::from(to_json(event)));
        }
    }
}

/// The JSON form of an event: `event`, `id`, `user`, `conn`, `node`, `at`, and
/// `reason` where one applies.
pub fn to_json(event: &Event) -> Vec<u8> {
    // Strings and integers into a Vec: serialization cannot fail.
    serde_json::to_vec(&JsonEvent(event)).unwrap_or_default()
}

struct JsonEvent<'a>(&'a Event);

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event", e.kind.as_str())?;
        map.serialize_entry("id", &lossy_text(&e.id))?;
        map.serialize_entry("user", &e.user.as_deref().map(lossy_text))?;
        map.serialize_entry("conn", &e.conn.as_deref().map(lossy_text))?;
        map.serialize_entry("node", &lossy_text(&e.node))?;
        map.serialize_entry("at", &e.at)?;
        if let Some(reason) = e.reason {
            map.serialize_entry("reason", reason)?;
        }
        map.end()
    }
}
