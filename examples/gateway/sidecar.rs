//! The gateway's side of its session sidecar: the `SESSION.*` commands it
//! sends, typed, over a few multiplexed connections that reconnect by
//! themselves (the redis crate's `ConnectionManager`: a native sidecar
//! container can restart without the gateway). Every WebSocket connection
//! shares them.
//!
//! Why several: the sidecar runs each connection's commands in order, and
//! with an upstream a session write waits for the upstream's reply before
//! the next command on that connection runs. One connection would put every
//! client's writes in one line; a handful let them overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError,
    RedisResult,
};
use serde::Deserialize;

/// How long one command may take. The sidecar answers from memory, or
/// within its own upstream timeout (500 ms by default).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `-TRYAGAIN` (the session is being migrated, or the upstream is briefly
/// unreachable) is retried this many times, backing off from 20 ms.
const TRYAGAIN_RETRIES: u32 = 5;

/// A session as `SESSION.GET <id> JSON` returns it (the fields the gateway
/// reads).
#[derive(Debug, Deserialize)]
pub struct Session {
    pub user: Option<String>,
    /// The node id of the sidecar that holds it.
    pub node: String,
    pub attrs: BTreeMap<String, String>,
}

/// The sidecar beside this gateway.
pub struct Sidecar {
    client: Client,
    connections: Vec<ConnectionManager>,
    /// The connection the next command goes to (round robin).
    next: AtomicUsize,
    /// Its node id (`--node-id`), as sessions name their holder.
    node: String,
}

impl Sidecar {
    /// Opens `connections` connections to the sidecar at `url`
    /// (`redis://[:password@]host:port`), with `password` when it is given
    /// apart from the URL.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        connections: usize,
    ) -> RedisResult<Arc<Sidecar>> {
        let mut info = url.into_connection_info()?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut opened = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            opened.push(
                client
                    .get_connection_manager_with_config(config.clone())
                    .await?,
            );
        }
        let mut sidecar = Sidecar {
            client,
            connections: opened,
            next: AtomicUsize::new(0),
            node: String::new(),
        };
        sidecar.node = sidecar.node_id().await?;
        Ok(Arc::new(sidecar))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A new session for `user`, bound to `conn`: `SESSION.CREATE USER ..
    /// CONN .. TTL .. MAXPERUSER ..` (the user's oldest sessions beyond
    /// `max_per_user` are deleted). Returns its id.
    pub async fn create(
        &self,
        user: &str,
        conn: &str,
        ttl_seconds: u64,
        max_per_user: u32,
    ) -> RedisResult<String> {
        let mut cmd = redis::cmd("SESSION.CREATE");
        cmd.arg("USER").arg(user).arg("CONN").arg(conn);
        cmd.arg("TTL").arg(ttl_seconds);
        cmd.arg("MAXPERUSER").arg(max_per_user);
        self.query(&cmd).await
    }

    /// The live session `id`, or None.
    pub async fn get(&self, id: &str) -> RedisResult<Option<Session>> {
        let json: Option<String> = self
            .query(redis::cmd("SESSION.GET").arg(id).arg("JSON"))
            .await?;
        json.map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| RedisError::from((ErrorKind::Parse, "SESSION.GET JSON", e.to_string())))
    }

    /// Binds the session to `conn` (a resume): it becomes active, held by
    /// this sidecar, its expiry slid to now + its ttl. Returns its version.
    pub async fn bind(&self, id: &str, conn: &str) -> RedisResult<u64> {
        self.query(redis::cmd("SESSION.BIND").arg(id).arg(conn))
            .await
    }

    /// The connection is gone: the session stays resumable for at most
    /// `grace_seconds`. A session already gone is not an error.
    pub async fn unbind(&self, id: &str, grace_seconds: u64) -> RedisResult<()> {
        let mut cmd = redis::cmd("SESSION.UNBIND");
        cmd.arg(id).arg("GRACE").arg(grace_seconds);
        match self.query::<u64>(&cmd).await {
            Err(e) if is_no_session(&e) => Ok(()),
            result => result.map(drop),
        }
    }

    /// A heartbeat: milliseconds left, or None when the session is gone.
    pub async fn touch(&self, id: &str) -> RedisResult<Option<i64>> {
        let left: i64 = self.query(redis::cmd("SESSION.TOUCH").arg(id)).await?;
        Ok((left >= 0).then_some(left))
    }

    /// Sets attributes; returns the session's new version.
    pub async fn set_attrs(&self, id: &str, attrs: &BTreeMap<String, String>) -> RedisResult<u64> {
        let mut cmd = redis::cmd("SESSION.ATTR.SET");
        cmd.arg(id);
        for (name, value) in attrs {
            cmd.arg(name).arg(value);
        }
        self.query(&cmd).await
    }

    /// The attributes named, None each when absent; None when the session
    /// is gone.
    pub async fn get_attrs(
        &self,
        id: &str,
        names: &[String],
    ) -> RedisResult<Option<Vec<Option<String>>>> {
        self.query(redis::cmd("SESSION.ATTR.GET").arg(id).arg(names))
            .await
    }

    /// The node id of the sidecar that holds session `id` now, None when it
    /// is gone. After a drain, a standalone sidecar answers
    /// `-SESSIONMOVED <node> <addr>` for the sessions it handed over; with
    /// an upstream the session itself names its new holder.
    pub async fn holder(&self, id: &str) -> RedisResult<Option<String>> {
        match self.get(id).await {
            Ok(session) => Ok(session.map(|s| s.node)),
            Err(e) if e.code() == Some("SESSIONMOVED") => Ok(e
                .detail()
                .and_then(|detail| detail.split_whitespace().next())
                .map(str::to_string)),
            Err(e) => Err(e),
        }
    }

    /// `SESSION.DRAIN TIMEOUT <ms>`: the sidecar refuses new sessions and
    /// binds from now on and hands every session it holds to its live
    /// peers. Returns how many moved. Sent on a connection of its own, whose
    /// reply may take the whole deadline.
    pub async fn drain(&self, timeout: Duration) -> RedisResult<u64> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout + RESPONSE_TIMEOUT));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        redis::cmd("SESSION.DRAIN")
            .arg("TIMEOUT")
            .arg(millis.max(1))
            .query_async(&mut connection)
            .await
    }

    /// The sidecar's node id, from `INFO server`.
    async fn node_id(&self) -> RedisResult<String> {
        let info: String = self.query(redis::cmd("INFO").arg("server")).await?;
        info.lines()
            .find_map(|line| line.trim_end().strip_prefix("node_id:"))
            .map(str::to_string)
            .ok_or_else(|| {
                RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "not a session sidecar: INFO server has no node_id",
                ))
            })
    }

    /// Sends `cmd` on the next connection, retrying `-TRYAGAIN` with
    /// backoff.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.connections[next % self.connections.len()].clone();
        let mut delay = Duration::from_millis(20);
        for _ in 0..TRYAGAIN_RETRIES {
            match cmd.query_async(&mut connection).await {
                Err(e) if e.code() == Some("TRYAGAIN") => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                result => return result,
            }
        }
        cmd.query_async(&mut connection).await
    }
}

/// `-NOSESSION`: the session named is gone.
pub fn is_no_session(error: &RedisError) -> bool {
    error.code() == Some("NOSESSION")
}
