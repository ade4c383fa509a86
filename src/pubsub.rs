//! Local publish/subscribe: channels and glob patterns, delivered to each
//! subscribed client's task through a bounded queue.
//!
//! A subscriber that stops reading is disconnected when its queue passes
//! 32 MiB, as Redis does with `client-output-buffer-limit pubsub`: one slow
//! client never slows a publisher down nor makes the sidecar buffer without
//! bound.
//!
//! Layer 5 of 15 (the order is in `tests/layers.rs`). Uses the layers below
//! (it needs none of them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::OutputLimit;
use tokio_util::sync::CancellationToken;

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub enum Message {
    Message {
        channel: Bytes,
        payload: Bytes,
    },
    PMessage {
        pattern: Bytes,
        channel: Bytes,
        payload: Bytes,
    },
    /// Client-side caching: these sessions (None: every session) may have
    /// changed since the client read them ([`crate::tracking`]).
    Invalidate {
        keys: Option<Vec<Bytes>>,
    },
    /// Client-side caching: the client's REDIRECT target is gone, so an
    /// invalidation was lost (`tracking-redir-broken`, RESP3 only).
    RedirectBroken {
        target: ClientId,
    },
}

/// Queue depth per subscriber (messages) before it is dropped as too slow.
pub const SUBSCRIBER_QUEUE: usize = 16 * 1024;

impl Message {
    /// Bytes this message holds, for the subscriber's budget.
    pub fn size(&self) -> usize {
        match self {
            Message::Message { channel, payload } => channel.len() + payload.len(),
            Message::PMessage {
                pattern,
                channel,
                payload,
            } => pattern.len() + channel.len() + payload.len(),
            Message::Invalidate { keys } => keys.iter().flatten().map(|k| k.len() + 16).sum(),
            Message::RedirectBroken { .. } => 16,
        }
    }
}

pub type ClientId = u64;
type Subscribers = HashMap<Bytes, HashMap<ClientId, Subscriber>>;

/// One client's end of its subscriptions.
#[derive(Clone)]
pub struct Subscriber {
    pub tx: mpsc::Sender<Message>,
    /// Cancelled when the client's queue overflowed: its task disconnects it.
    pub overflow: CancellationToken,
    /// Bytes queued past this drop the subscriber as too slow
    /// (`client-output-buffer-limit pubsub`).
    limit: OutputLimit,
    /// Since when the queue is over the soft limit ([`OutputLimit::exceeded`]).
    over_soft_since: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes sent but not yet taken by the client's task.
    pub queued: Arc<AtomicUsize>,
}

impl Subscriber {
    pub fn new(tx: mpsc::Sender<Message>, limit: OutputLimit) -> Self {
        Self {
            tx,
            limit,
            over_soft_since: Arc::default(),
            overflow: CancellationToken::new(),
            queued: Arc::default(),
        }
    }

    /// Called by the client's task for each message it takes off the queue.
    pub fn taken(&self, message: &Message) {
        self.queued.fetch_sub(message.size(), Ordering::Relaxed);
    }

    pub fn deliver(&self, message: Message) -> bool {
        let size = message.size();
        let held = (self.queued.fetch_add(size, Ordering::Relaxed) + size) as u64;
        if self.limit.exceeded(held, &self.over_soft_since) {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.overflow.cancel();
            return false;
        }
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(size, Ordering::Relaxed);
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(size, Ordering::Relaxed);
                false
            }
        }
    }
}

pub struct PubSub {
    channels: RwLock<Subscribers>,
    patterns: RwLock<Subscribers>,
    /// Subscriptions of either kind: lets publishers skip all work when zero.
    subscriptions: AtomicUsize,
    /// Whether there is any subscription, for whoever must react to it (the
    /// relay of upstream events subscribes upstream only while it is true).
    active: tokio::sync::watch::Sender<bool>,
}

impl Default for PubSub {
    fn default() -> Self {
        Self {
            channels: RwLock::default(),
            patterns: RwLock::default(),
            subscriptions: AtomicUsize::new(0),
            active: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn read(lock: &RwLock<Subscribers>) -> std::sync::RwLockReadGuard<'_, Subscribers> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write(lock: &RwLock<Subscribers>) -> std::sync::RwLockWriteGuard<'_, Subscribers> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl PubSub {
    /// Whether anybody is subscribed to anything.
    pub fn has_subscribers(&self) -> bool {
        self.subscriptions.load(Ordering::Relaxed) > 0
    }

    /// Follows whether anybody is subscribed to anything.
    pub fn watch_active(&self) -> tokio::sync::watch::Receiver<bool> {
        self.active.subscribe()
    }

    pub fn subscribe(&self, client: ClientId, channel: Bytes, subscriber: &Subscriber) {
        self.add(&self.channels, client, channel, subscriber);
    }

    pub fn psubscribe(&self, client: ClientId, pattern: Bytes, subscriber: &Subscriber) {
        self.add(&self.patterns, client, pattern, subscriber);
    }

    pub fn unsubscribe(&self, client: ClientId, channel: &[u8]) {
        self.remove(&self.channels, client, channel);
    }

    pub fn punsubscribe(&self, client: ClientId, pattern: &[u8]) {
        self.remove(&self.patterns, client, pattern);
    }

    fn add(
        &self,
        map: &RwLock<Subscribers>,
        client: ClientId,
        key: Bytes,
        subscriber: &Subscriber,
    ) {
        if write(map)
            .entry(key)
            .or_default()
            .insert(client, subscriber.clone())
            .is_none()
        {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
            self.publish_activity();
        }
    }

    fn remove(&self, map: &RwLock<Subscribers>, client: ClientId, key: &[u8]) {
        let mut map = write(map);
        if let Some(subscribers) = map.get_mut(key) {
            if subscribers.remove(&client).is_some() {
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                self.publish_activity();
            }
            if subscribers.is_empty() {
                map.remove(key);
            }
        }
    }

    fn publish_activity(&self) {
        let active = self.has_subscribers();
        self.active
            .send_if_modified(|current| std::mem::replace(current, active) != active);
    }

    /// Publishes to the channel's subscribers and to matching patterns;
    /// returns how many received it.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes) -> usize {
        if !self.has_subscribers() {
            return 0;
        }
        let mut receivers = 0;
        if let Some(subscribers) = read(&self.channels).get(channel) {
            for subscriber in subscribers.values() {
                let message = Message::Message {
                    channel: channel.clone(),
                    payload: payload.clone(),
                };
                receivers += usize::from(subscriber.deliver(message));
            }
        }
        for (pattern, subscribers) in read(&self.patterns).iter() {
            if glob_match(pattern, channel) {
                for subscriber in subscribers.values() {
                    let message = Message::PMessage {
                        pattern: pattern.clone(),
                        channel: channel.clone(),
                        payload: payload.clone(),
                    };
                    receivers += usize::from(subscriber.deliver(message));
                }
            }
        }
        receivers
    }

    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        read(&self.channels).len()
    }

    /// Patterns with at least one subscriber.
    pub fn pattern_count(&self) -> usize {
        read(&self.patterns).len()
    }
}

/// Redis's glob-style matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`
/// and `\` escapes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index, text index).
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        let matched = match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (matched, backtrack) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((star, from))) => {
                p = star + 1;
                t = from + 1;
                backtrack = Some((star, from + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`;
/// returns the index after the class when it matches.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut found = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            found |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            found |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            found |= pattern[i] == c;
            i += 1;
        }
    }
    (found != negate).then_some((i + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"session:*", b"session:events"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(!glob_match(b"abc", b"ab"));
    }
}
