//! Cross-shard work: what one script call cannot do because the keys are in
//! another shard (another hash slot, maybe another master).
//!
//! A call that changes a session returns *follow-ups*. Those that must
//! happen are *intents*, recorded in the calling shard atomically with the
//! change (`P:i:{t}`, scored by when to repair them); the others are
//! tidying that reads already tolerate (an index entry or a pointer left
//! dangling is checked and skipped by every read, and expires with its
//! margin).
//!
//! | follow-up | recorded in | done by |
//! | --- | --- | --- |
//! | `uadd id user max created` | the session's shard | `user_add` in the user's shard (may evict, see `evict`) |
//! | `conn id conn` | the session's shard | `point` in the conn's shard (may displace, see `unbind`) |
//! | `evict id user reason` | the user's shard | `delete` of the session if still the user's, in its shard (MAXPERUSER, KILLUSER) |
//! | `unbind id conn` | the conn's shard | `unbind_if` in the session's shard, if the pointer moved on |
//! | `gone id user conn` | (tidying) | `user_rem` and `unpoint` where those are elsewhere |
//! | `keep id user conn expires` | (tidying) | `keep` of the index and pointer where elsewhere |
//! | `unpoint id conn` | (tidying) | `unpoint` in the conn's shard |
//!
//! The sidecar that made the change does its follow-ups before it replies,
//! then marks the intents done (removed in batches, [`WriteThrough::flush_done`]).
//! Every step is idempotent, so the repairer ([`WriteThrough::repair`]) may
//! run an intent again after its due time, checking first that it still
//! applies: after a kill -9 between two steps nothing stays half-done longer
//! than [`REPAIR_AFTER_MS`] plus a repair interval.

use std::time::Duration;

use redis::Value;

use super::store::{WriteThrough, bulk};
use crate::store::StoreError;

/// How long after it is recorded an intent is repaired if it is still there.
pub const REPAIR_AFTER_MS: u64 = 3000;
/// How often each sidecar looks for due intents in its share of the shards.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(500);

/// Fault injection for the crash tests: with `SESSION_SIDECAR_FAULT` set to
/// `crash-between-steps`, the process aborts (no clean-up, as after kill -9)
/// right after a change whose intents are recorded, before its cross-shard
/// steps. Never set in production.
static CRASH_BETWEEN_STEPS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("SESSION_SIDECAR_FAULT").is_ok_and(|fault| fault == "crash-between-steps")
});

/// The fault injection point: aborts when a change's follow-ups hold an
/// intent and `SESSION_SIDECAR_FAULT=crash-between-steps`.
pub(crate) fn crash_if_injected(followups: &[Vec<u8>]) {
    if *CRASH_BETWEEN_STEPS
        && followups
            .iter()
            .any(|f| FollowUp::parse(f).is_some_and(|f| f.is_intent()))
    {
        tracing::error!("fault injection: crashing between the steps of a cross-shard change");
        std::process::abort();
    }
}

/// One follow-up, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    /// As recorded: what marks an intent done.
    pub raw: Vec<u8>,
    pub kind: Vec<u8>,
    pub fields: Vec<Vec<u8>>,
}

impl FollowUp {
    /// `<kind> <len>:<field> <len>:<field>...`; None if malformed.
    pub fn parse(raw: &[u8]) -> Option<FollowUp> {
        let space = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
        let kind = raw[..space].to_vec();
        let mut fields = Vec::new();
        let mut rest = raw.get(space + 1..).unwrap_or_default();
        while !rest.is_empty() {
            let colon = rest.iter().position(|&b| b == b':')?;
            let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
            let start = colon + 1;
            let field = rest.get(start..start.checked_add(len)?)?;
            fields.push(field.to_vec());
            rest = rest.get(start + len..)?;
            rest = rest.strip_prefix(b" ").unwrap_or(rest);
        }
        Some(FollowUp {
            raw: raw.to_vec(),
            kind,
            fields,
        })
    }

    fn field(&self, i: usize) -> &[u8] {
        self.fields.get(i).map_or(&[][..], |f| &f[..])
    }

    /// Whether this follow-up is an intent (recorded, to be marked done).
    fn is_intent(&self) -> bool {
        matches!(&self.kind[..], b"uadd" | b"conn" | b"evict" | b"unbind")
    }
}

/// Whether the follow-up runs as the change's own step (the sidecar just
/// made the change: no need to check it still applies) or as a repair.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Now,
    Repair,
}

impl WriteThrough {
    /// Does the follow-ups a call in `shard` returned, then marks its
    /// intents done. Errors are not the client's: what fails here is left
    /// to the repairer (its intent stays).
    pub(crate) async fn follow_up(&self, shard: u32, followups: Vec<Vec<u8>>, mode: Mode) {
        if followups.is_empty() {
            return;
        }
        // Boxed: most writes have none, and the state of doing them would
        // otherwise sit in the future of every write.
        Box::pin(self.follow_up_all(shard, followups, mode)).await;
    }

    async fn follow_up_all(&self, shard: u32, followups: Vec<Vec<u8>>, mode: Mode) {
        if mode == Mode::Now {
            crash_if_injected(&followups);
        }
        let mut pending: Vec<(u32, Vec<u8>)> = followups.into_iter().map(|f| (shard, f)).collect();
        // Follow-ups may produce more (an eviction, a displaced conn): at
        // most a few rounds, bounded so that a bug cannot loop.
        for _ in 0..4 {
            if pending.is_empty() {
                return;
            }
            let mut next = Vec::new();
            for (origin, raw) in std::mem::take(&mut pending) {
                let Some(step) = FollowUp::parse(&raw) else {
                    tracing::warn!(intent = %String::from_utf8_lossy(&raw), "malformed follow-up dropped");
                    self.mark_done(origin, raw);
                    continue;
                };
                let outcome = match (&step.kind[..], mode) {
                    // A repair of a bind runs under the conn's bind lock, as
                    // the bind itself did (Mode::Now: the caller holds it).
                    (b"conn" | b"unbind", Mode::Repair) => {
                        let conn = step.field(1).to_vec();
                        self.with_conn_lock(&conn, async || self.step(origin, &step, mode).await)
                            .await
                    }
                    _ => self.step(origin, &step, mode).await,
                };
                match outcome {
                    Ok(more) => {
                        next.extend(more);
                        if step.is_intent() {
                            self.mark_done(origin, step.raw);
                        }
                    }
                    Err(error) => {
                        self.stats.follow_up_failures.inc();
                        tracing::debug!(?error, kind = %String::from_utf8_lossy(&step.kind), "follow-up failed; the repairer will finish it");
                    }
                }
            }
            pending = next;
        }
    }

    /// One follow-up; returns those it produced, with their shard.
    async fn step(
        &self,
        origin: u32,
        step: &FollowUp,
        mode: Mode,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let layout = &self.layout;
        let now = crate::store::now_ms();
        let repair_at = (now + REPAIR_AFTER_MS).to_string();
        match &step.kind[..] {
            b"uadd" => {
                let (id, user, max, created) =
                    (step.field(0), step.field(1), step.field(2), step.field(3));
                let Some(expires) = self.still_applies(id, mode, |u, _| u == Some(user)).await?
                else {
                    return Ok(Vec::new());
                };
                let shard = layout.shard_of(user);
                let deadline = (expires + self.config.key_margin_ms).to_string();
                let reply = self
                    .run(
                        "user_add",
                        shard,
                        &layout.user_key(user),
                        &[user, id, deadline.as_bytes(), max, created],
                        now,
                    )
                    .await?;
                Ok(self.settle(shard, reply))
            }
            b"conn" => {
                let (id, conn) = (step.field(0), step.field(1));
                let Some(expires) = self.still_applies(id, mode, |_, c| c == Some(conn)).await?
                else {
                    return Ok(Vec::new());
                };
                let shard = layout.shard_of(conn);
                let deadline = (expires + self.config.key_margin_ms).to_string();
                let reply = self
                    .run(
                        "point",
                        shard,
                        &layout.conn_key(conn),
                        &[conn, id, deadline.as_bytes(), repair_at.as_bytes()],
                        now,
                    )
                    .await?;
                Ok(self.settle(shard, reply))
            }
            b"evict" => {
                let (id, user) = (step.field(0), step.field(1));
                let reason = match step.field(2) {
                    b"" => &b"evicted"[..],
                    reason => reason,
                };
                let shard = layout.shard_of(id);
                let reply = self
                    .run(
                        "delete",
                        shard,
                        &layout.session_key(id),
                        &[reason, user, id],
                        now,
                    )
                    .await?;
                self.deleted(&reply, reason == b"evicted");
                Ok(self.settle(shard, reply))
            }
            b"unbind" => {
                let (id, conn) = (step.field(0), step.field(1));
                // The pointer is in this intent's own shard: did it move on?
                let pointer = self
                    .run("pointer", origin, &layout.conn_key(conn), &[conn], now)
                    .await?;
                let moved = bulk(pointer.result).is_none_or(|holder| holder != id);
                let shard = layout.shard_of(id);
                let reply = self
                    .run(
                        "unbind_if",
                        shard,
                        &layout.session_key(id),
                        &[id, conn, if moved { b"1" } else { b"0" }],
                        now,
                    )
                    .await?;
                Ok(self.settle(shard, reply))
            }
            b"gone" => {
                let (id, user, conn) = (step.field(0), step.field(1), step.field(2));
                if !user.is_empty() && layout.shard_of(user) != origin {
                    let shard = layout.shard_of(user);
                    self.run("user_rem", shard, &layout.user_key(user), &[user, id], now)
                        .await?;
                }
                if !conn.is_empty() && layout.shard_of(conn) != origin {
                    self.unpoint(id, conn, now).await?;
                }
                Ok(Vec::new())
            }
            b"keep" => {
                let (id, user, conn, expires) =
                    (step.field(0), step.field(1), step.field(2), step.field(3));
                for (name, is_user) in [(user, true), (conn, false)] {
                    if name.is_empty() || layout.shard_of(name) == origin {
                        continue;
                    }
                    let shard = layout.shard_of(name);
                    let key = if is_user {
                        layout.user_key(name)
                    } else {
                        layout.conn_key(name)
                    };
                    let (user_arg, conn_arg): (&[u8], &[u8]) =
                        if is_user { (name, b"") } else { (b"", name) };
                    self.run("keep", shard, &key, &[id, user_arg, conn_arg, expires], now)
                        .await?;
                }
                Ok(Vec::new())
            }
            b"unpoint" => {
                let (id, conn) = (step.field(0), step.field(1));
                if layout.shard_of(conn) != origin {
                    self.unpoint(id, conn, now).await?;
                }
                Ok(Vec::new())
            }
            _ => {
                tracing::warn!(kind = %String::from_utf8_lossy(&step.kind), "unknown follow-up dropped");
                Ok(Vec::new())
            }
        }
    }

    async fn unpoint(&self, id: &[u8], conn: &[u8], now: u64) -> Result<(), StoreError> {
        let shard = self.layout.shard_of(conn);
        self.run(
            "unpoint",
            shard,
            &self.layout.conn_key(conn),
            &[id, conn],
            now,
        )
        .await?;
        Ok(())
    }

    /// The session's expiry if the step still applies: at once when it is
    /// the change's own step; as a repair, only if the session is live and
    /// `check(user, conn)` holds.
    async fn still_applies(
        &self,
        id: &[u8],
        mode: Mode,
        check: impl FnOnce(Option<&[u8]>, Option<&[u8]>) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        let now = crate::store::now_ms();
        let shard = self.layout.shard_of(id);
        let reply = self
            .run(
                "session_of",
                shard,
                &self.layout.session_key(id),
                &[id],
                now,
            )
            .await?;
        let Value::Array(parts) = reply.result else {
            return Ok(None);
        };
        let mut parts = parts.into_iter();
        let user = parts.next().and_then(bulk);
        let conn = parts.next().and_then(bulk);
        let expires = parts
            .next()
            .and_then(bulk)
            .and_then(|e| std::str::from_utf8(&e).ok()?.parse::<u64>().ok());
        let Some(expires) = expires else {
            return Ok(None);
        };
        let applies = mode == Mode::Now || check(user.as_deref(), conn.as_deref());
        Ok(applies.then_some(expires))
    }

    /// Queues an intent as done; [`WriteThrough::flush_done`] removes them.
    fn mark_done(&self, shard: u32, intent: Vec<u8>) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((shard, intent));
    }

    /// Removes the intents marked done, one call per shard.
    pub(crate) async fn flush_done(&self) {
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()));
        if done.is_empty() {
            return;
        }
        let mut by_shard: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
        for (shard, intent) in done {
            by_shard.entry(shard).or_default().push(intent);
        }
        let now = crate::store::now_ms();
        for (shard, intents) in by_shard {
            let args: Vec<&[u8]> = intents.iter().map(|i| &i[..]).collect();
            let key = self.layout.intents_key(shard);
            if self.run("done", shard, &key, &args, now).await.is_err() {
                // Left for the repairer, which finds them done already.
                tracing::debug!(shard, "intents not marked done");
            }
        }
    }

    /// Repairs the due intents of the shards in this sidecar's share.
    pub(crate) async fn repair(&self) {
        const LIMIT: &[u8] = b"100";
        let shards = self.my_shards();
        let due = self.shards_with_due(&shards, "i").await;
        for shard in due {
            let now = crate::store::now_ms();
            let retry_at = (now + REPAIR_AFTER_MS).to_string();
            let key = self.layout.intents_key(shard);
            let Ok(reply) = self
                .run(
                    "due_intents",
                    shard,
                    &key,
                    &[LIMIT, retry_at.as_bytes()],
                    now,
                )
                .await
            else {
                continue;
            };
            let Value::Array(intents) = reply.result else {
                continue;
            };
            let intents: Vec<Vec<u8>> = intents.into_iter().filter_map(bulk).collect();
            if !intents.is_empty() {
                self.stats.intents_repaired.add(intents.len() as u64);
                tracing::info!(
                    shard,
                    count = intents.len(),
                    "repairing unfinished cross-shard work"
                );
            }
            self.follow_up(shard, intents, Mode::Repair).await;
        }
    }

    /// Drops our copies of what a follow-up call touched; returns the
    /// follow-ups it produced, with its shard.
    fn settle(&self, shard: u32, reply: super::store::Reply) -> Vec<(u32, Vec<u8>)> {
        for id in &reply.touched {
            self.cache.invalidate(id);
        }
        reply.followups.into_iter().map(|f| (shard, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_parse_as_the_script_writes_them() {
        let step = FollowUp::parse(b"conn 3:a b 5:c:d e").unwrap();
        assert_eq!(step.kind, b"conn");
        assert_eq!(step.fields, vec![b"a b".to_vec(), b"c:d e".to_vec()]);
        let step = FollowUp::parse(b"keep 1:x 0: 0: 3:123").unwrap();
        assert_eq!(
            step.fields,
            vec![b"x".to_vec(), Vec::new(), Vec::new(), b"123".to_vec()]
        );
        assert!(FollowUp::parse(b"conn 9:short").is_none());
        assert!(FollowUp::parse(b"conn x:1").is_none());
        assert_eq!(FollowUp::parse(b"done").unwrap().fields.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = FollowUp::parse(&raw);
        }
    }
}
