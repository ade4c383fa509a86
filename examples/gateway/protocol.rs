//! The gateway's wire protocol, both sides of it: the JSON text frames
//! clients and the gateway exchange, the close codes the gateway ends a
//! connection with, and the signed tokens users authenticate with.
//!
//! A client connects to `ws://<gateway>/?token=<token>`, adding
//! `&session=<id>` to resume a session it held. The gateway's first frame is
//! [`ServerMessage::Welcome`]; then every [`ClientMessage`] gets exactly one
//! reply carrying its `seq`, in order.
//!
//! The load client (`examples/gateway_load.rs`) includes this file too: it
//! is the one definition of the wire.

use std::collections::BTreeMap;

use ring::hmac;
use serde::{Deserialize, Serialize};

/// A frame a client sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Sets attributes of the session (SESSION.ATTR.SET); answered with
    /// [`ServerMessage::Ack`].
    Set {
        seq: u64,
        attrs: BTreeMap<String, String>,
    },
    /// Reads attributes of the session (SESSION.ATTR.GET); answered with
    /// [`ServerMessage::Attrs`].
    Get { seq: u64, names: Vec<String> },
    /// Keeps the session alive (SESSION.TOUCH); answered with
    /// [`ServerMessage::Heartbeat`].
    Heartbeat { seq: u64 },
}

impl ClientMessage {
    /// The number the reply carries back.
    pub fn seq(&self) -> u64 {
        match self {
            ClientMessage::Set { seq, .. }
            | ClientMessage::Get { seq, .. }
            | ClientMessage::Heartbeat { seq } => *seq,
        }
    }
}

/// A frame the gateway sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The first frame: the session this connection holds, new or resumed,
    /// with its version and attributes.
    Welcome {
        session: String,
        resumed: bool,
        version: u64,
        attrs: BTreeMap<String, String>,
    },
    /// The attributes of a `set` are stored: the session's new version.
    Ack { seq: u64, version: u64 },
    /// The attributes a `get` named; `null` for those the session lacks.
    Attrs {
        seq: u64,
        attrs: BTreeMap<String, Option<String>>,
    },
    /// The heartbeat is recorded: milliseconds before the session expires.
    Heartbeat { seq: u64, ttl_ms: i64 },
    /// The message was not applied; `seq` is absent when the frame could not
    /// be read. Sending it again is safe.
    Error { seq: Option<u64>, message: String },
}

/// Close codes the gateway ends connections with, besides the standard
/// ones (1000 normal, 1011 internal error).
pub mod close {
    /// Service restart (RFC 6455): the gateway is shutting down. The reason
    /// is the URL to reconnect to, where the session is held now, or empty:
    /// reconnect where you first connected (the load balancer). Resume with
    /// the same session id.
    pub const RESTART: u16 = 1012;
    /// No message within the gateway's idle timeout; resume the session.
    pub const IDLE: u16 = 4000;
    /// The session is gone (expired, evicted by a newer session of the same
    /// user, or deleted): connect again without a session id.
    pub const SESSION_ENDED: u16 = 4001;
}

/// Signs and checks tokens of the form `<user>.<expiry>.<signature>`: the
/// user name (ASCII letters, digits, `-` and `_`, so that a token needs no
/// escaping in a URL), its expiry in Unix seconds, and the hex of an
/// HMAC-SHA256 of the two under a secret the gateways share with whatever
/// issues tokens. A stand-in for the JWT or opaque-token check a real
/// deployment makes here.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A token for `user` valid until `expires` (Unix seconds); None when
    /// the user name has characters a token cannot carry.
    pub fn sign(&self, user: &str, expires: u64) -> Option<String> {
        if !valid_user(user) {
            return None;
        }
        let claims = format!("{user}.{expires}");
        let tag = hmac::sign(&self.0, claims.as_bytes());
        Some(format!("{claims}.{}", hex(tag.as_ref())))
    }

    /// The user a token names, when its signature checks out (in constant
    /// time) and it has not expired at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Option<String> {
        let (claims, signature) = token.rsplit_once('.')?;
        let signature = unhex(signature)?;
        hmac::verify(&self.0, claims.as_bytes(), &signature).ok()?;
        let (user, expires) = claims.split_once('.')?;
        let expires: u64 = expires.parse().ok()?;
        (expires > now && valid_user(user)).then(|| user.to_string())
    }
}

fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
