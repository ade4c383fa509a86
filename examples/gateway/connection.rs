//! One client connection, from the WebSocket handshake to the close: who
//! the user is (the token), which session the connection holds (created,
//! or resumed by id), the messages it answers, and how it ends, including
//! the gateway's shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, warn};

use crate::Gateway;
use crate::protocol::{ClientMessage, ServerMessage, close};
use crate::sidecar::is_no_session;

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A close frame's reason is at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;
/// The largest message a client may send (tungstenite's default, 64 MiB,
/// is far more than a session's attributes need).
const MAX_MESSAGE: usize = 64 * 1024;

type WebSocket = WebSocketStream<TcpStream>;

/// What the upgrade request carried.
struct Credentials {
    user: String,
    /// The session to resume, when the client presents one.
    session: Option<String>,
}

/// Why the conversation ended.
enum Ending {
    /// The client closed, or its connection broke.
    ClientLeft,
    /// No message within the idle timeout.
    Idle,
    /// The session is gone (expired, evicted, deleted).
    SessionEnded,
    /// The sidecar failed in a way the client cannot fix by retrying.
    Failed,
    /// The gateway is shutting down.
    Restart,
}

/// Serves one accepted TCP connection. `released` is held until the
/// connection no longer holds its session: the shutdown waits for every
/// one of them before it drains the sidecar.
pub async fn serve(stream: TcpStream, gateway: Arc<Gateway>, released: mpsc::Sender<()>) {
    let mut credentials = None;
    let limits = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    // The callback's error type (an HTTP response) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response| {
        credentials = authenticate(request, &gateway);
        match credentials {
            Some(_) => Ok(response),
            None => Err(unauthorized()),
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(limits));
    let handshake = tokio::select! {
        // Shutting down: a connection without a session yet is dropped.
        () = gateway.shutdown.quiesce.cancelled() => return,
        handshake = timeout(HANDSHAKE_TIMEOUT, handshake) => handshake,
    };
    let mut ws = match handshake {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    let Some(Credentials { user, session }) = credentials else {
        return;
    };
    if gateway.shutdown.quiesce.is_cancelled() {
        // Accepted just before the shutdown: no session taken here.
        drop(released);
        return close_with(&mut ws, close::RESTART, "", &gateway).await;
    }

    let conn = format!(
        "{}-{}",
        gateway.sidecar.node(),
        uuid::Uuid::new_v4().simple()
    );
    let (id, welcome) = match open_session(&gateway, &user, session.as_deref(), &conn).await {
        Ok(opened) => opened,
        Err(e) => {
            warn!(error = %e, %user, "cannot open a session");
            drop(released);
            return close_with(&mut ws, CloseCode::Error, "sidecar unavailable", &gateway).await;
        }
    };
    let ending = match send(&mut ws, &welcome).await {
        Ok(()) => converse(&mut ws, &gateway, &id).await,
        Err(()) => Ending::ClientLeft,
    };

    // Released like any close, shutdown included: the session stays
    // resumable for the grace period, wherever the drain takes it.
    if !matches!(ending, Ending::SessionEnded) {
        release(&gateway, &id).await;
    }
    drop(released);
    let (code, reason) = match ending {
        Ending::ClientLeft => {
            let _ = ws.close(None).await;
            return;
        }
        Ending::Idle => (close::IDLE.into(), "idle".to_string()),
        Ending::SessionEnded => (close::SESSION_ENDED.into(), "session ended".to_string()),
        Ending::Failed => (CloseCode::Error, "sidecar error".to_string()),
        Ending::Restart => {
            // Once the drain is over: where the session went.
            gateway.shutdown.restart.cancelled().await;
            (close::RESTART.into(), reconnect_url(&gateway, &id).await)
        }
    };
    close_with(&mut ws, code, &reason, &gateway).await;
}

/// The user the upgrade request's `token` names, and the `session` it
/// presents; None when the token is missing, forged or expired.
fn authenticate(request: &Request, gateway: &Gateway) -> Option<Credentials> {
    let mut token = None;
    let mut session = None;
    for pair in request.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("token", value)) => token = Some(value),
            Some(("session", value)) if !value.is_empty() => session = Some(value.to_string()),
            _ => {}
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let user = gateway.tokens.verify(token?, now)?;
    Some(Credentials { user, session })
}

fn unauthorized() -> ErrorResponse {
    let mut refusal = ErrorResponse::new(Some("invalid or expired token".into()));
    *refusal.status_mut() = StatusCode::UNAUTHORIZED;
    refusal
}

/// Resumes `presented` when it is a live session of `user` (SESSION.BIND
/// to this connection), or creates a new one (SESSION.CREATE with
/// MAXPERUSER). Returns the session id and the welcome to send.
async fn open_session(
    gateway: &Gateway,
    user: &str,
    presented: Option<&str>,
    conn: &str,
) -> redis::RedisResult<(String, ServerMessage)> {
    let sidecar = &gateway.sidecar;
    if let Some(id) = presented {
        // Another user's session, or one that is gone, is not resumed: the
        // client gets a new session (and a new id in the welcome).
        let held = sidecar.get(id).await?;
        if let Some(session) = held.filter(|s| s.user.as_deref() == Some(user)) {
            match sidecar.bind(id, conn).await {
                Ok(version) => {
                    let welcome = ServerMessage::Welcome {
                        session: id.to_string(),
                        resumed: true,
                        version,
                        attrs: session.attrs,
                    };
                    return Ok((id.to_string(), welcome));
                }
                // Expired between the read and the bind.
                Err(e) if is_no_session(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let settings = &gateway.settings;
    let id = sidecar
        .create(
            user,
            conn,
            settings.session_ttl,
            settings.max_sessions_per_user,
        )
        .await?;
    let welcome = ServerMessage::Welcome {
        session: id.clone(),
        resumed: false,
        version: 1,
        attrs: Default::default(),
    };
    Ok((id, welcome))
}

/// Answers the client's messages, one at a time, until the connection ends.
/// A message read is always answered before the shutdown is looked at, so a
/// client knows exactly which of its messages were applied: those answered.
async fn converse(ws: &mut WebSocket, gateway: &Gateway, id: &str) -> Ending {
    loop {
        let frame = tokio::select! {
            biased;
            () = gateway.shutdown.quiesce.cancelled() => return Ending::Restart,
            frame = timeout(gateway.settings.idle_timeout, ws.next()) => frame,
        };
        let text = match frame {
            Err(_) => return Ending::Idle,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ending::ClientLeft,
            Ok(Some(Ok(Message::Text(text)))) => text,
            // Pings are answered by tungstenite itself; nothing else is spoken.
            Ok(Some(Ok(_))) => continue,
        };
        let reply = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(message) => match answer(gateway, id, message).await {
                Ok(reply) => reply,
                Err(ending) => return ending,
            },
            Err(e) => ServerMessage::Error {
                seq: None,
                message: format!("unreadable message: {e}"),
            },
        };
        if send(ws, &reply).await.is_err() {
            return Ending::ClientLeft;
        }
    }
}

/// The reply to one message, or why the connection must end.
async fn answer(
    gateway: &Gateway,
    id: &str,
    message: ClientMessage,
) -> Result<ServerMessage, Ending> {
    let sidecar = &gateway.sidecar;
    let seq = message.seq();
    // Ok(None): the session is gone.
    let reply = match message {
        ClientMessage::Set { attrs, .. } => sidecar
            .set_attrs(id, &attrs)
            .await
            .map(|version| Some(ServerMessage::Ack { seq, version })),
        ClientMessage::Get { names, .. } => sidecar.get_attrs(id, &names).await.map(|values| {
            let attrs = names.into_iter().zip(values?).collect();
            Some(ServerMessage::Attrs { seq, attrs })
        }),
        ClientMessage::Heartbeat { .. } => sidecar
            .touch(id)
            .await
            .map(|left| Some(ServerMessage::Heartbeat { seq, ttl_ms: left? })),
    };
    match reply {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(Ending::SessionEnded),
        Err(e) if is_no_session(&e) => Err(Ending::SessionEnded),
        // The sidecar's refusals (a limit, -TRYAGAIN after retries, ...):
        // the client may send the message again.
        Err(e) if e.code().is_some() => Ok(ServerMessage::Error {
            seq: Some(seq),
            message: e.to_string(),
        }),
        Err(e) => {
            warn!(error = %e, "sidecar command failed");
            Err(Ending::Failed)
        }
    }
}

/// The connection no longer holds session `id`: SESSION.UNBIND with the
/// grace period in which the client may resume it.
async fn release(gateway: &Gateway, id: &str) {
    if let Err(e) = gateway
        .sidecar
        .unbind(id, gateway.settings.resume_grace)
        .await
    {
        warn!(error = %e, session = id, "cannot unbind");
    }
}

/// Where the client should reconnect to resume session `id`: the gateway of
/// the sidecar that holds it now (`--reconnect-url` with `{node}` replaced
/// by that sidecar's node id), or empty (reconnect through the load
/// balancer) when that is unknown or still this one.
async fn reconnect_url(gateway: &Gateway, id: &str) -> String {
    let Some(template) = &gateway.settings.reconnect_url else {
        return String::new();
    };
    let holder = match gateway.sidecar.holder(id).await {
        Ok(Some(node)) if node != gateway.sidecar.node() => node,
        Ok(_) => return String::new(),
        Err(e) => {
            warn!(error = %e, session = id, "cannot tell where the session went");
            return String::new();
        }
    };
    let url = template.replace("{node}", &holder);
    if url.len() > MAX_CLOSE_REASON {
        warn!(%url, "the reconnect URL is longer than a close frame's reason can carry");
        return String::new();
    }
    url
}

async fn send(ws: &mut WebSocket, message: &ServerMessage) -> Result<(), ()> {
    let text = serde_json::to_string(message).map_err(drop)?;
    ws.send(Message::text(text)).await.map_err(drop)
}

/// Sends a close frame, then waits (at most `--close-timeout-ms`) for the
/// client's, which ends the closing handshake.
async fn close_with(
    ws: &mut WebSocket,
    code: impl Into<CloseCode>,
    reason: &str,
    gateway: &Gateway,
) {
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from(reason),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let rest = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = timeout(gateway.settings.close_timeout, rest).await;
}
