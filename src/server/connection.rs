//! One client connection: read requests, run them, write replies.
//!
//! Invariant: every request gets exactly one reply, in order. Requests are
//! executed as they are parsed from the read buffer and their replies are
//! appended to one output buffer, written to the socket when the read buffer
//! holds no further complete request (so a pipeline of N commands costs one
//! write, not N) or when the output passes a size bound. With an upstream,
//! the commands the sidecar does not answer go to the [`crate::proxy`],
//! whose pooled connections write their replies to the socket themselves;
//! the proxy keeps both kinds of replies in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::commands::{execute, unsubscribe_all};
use crate::node::Node;
use crate::node::{ClientInfo, ClientState};
use crate::protocol::{Protocol, ReplyWriter, RequestParser};
use crate::proxy::sink::ReplySink;
use crate::pubsub::{Message, Subscriber};
use tokio::sync::mpsc;

/// Write the output buffer once it holds this much, even mid-pipeline.
const FLUSH_AT: usize = 64 * 1024;
/// Read at least this much room per read.
const READ_CHUNK: usize = 16 * 1024;
/// Room made for a read's replies before they are written.
const REPLY_ROOM: usize = 4 * 1024;

/// How long a TLS client may take over its handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

pub async fn serve(
    node: Arc<Node>,
    stream: TcpStream,
    info: Arc<ClientInfo>,
    shutdown: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let id = info.id;
    let limits = node.config.client_output_buffer_limit;
    let mut client = ClientState::new(info, node.config.requirepass.is_none(), limits.pubsub);
    let served = match stream.set_nodelay(true) {
        Err(error) => Err(error),
        Ok(()) => match tls {
            None => {
                let (reader, writer) = stream.into_split();
                let sink = Arc::new(ReplySink::new(writer, limits.normal));
                run(&node, reader, sink, &mut client, &shutdown).await
            }
            // Boxed: a TLS session's state is large, and a plain
            // connection's future would otherwise be sized for it too.
            Some(acceptor) => {
                Box::pin(serve_tls(&node, stream, acceptor, &mut client, &shutdown)).await
            }
        },
    };
    if let Err(error) = served {
        tracing::debug!(client = id, %error, "client connection ended with an error");
    }
    unsubscribe_all(&node, &mut client);
    node.tracking.forget(id);
    node.clients.unregister(id);
}

/// A TLS client: the handshake (bounded in time), then its requests.
async fn serve_tls(
    node: &Node,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    client: &mut ClientState,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
        Ok(Ok(session)) => {
            let (reader, writer) = tokio::io::split(session);
            let sink = Arc::new(ReplySink::tls(
                writer,
                node.config.client_output_buffer_limit.normal,
            ));
            run(node, reader, sink, client, shutdown).await
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Waits for the next pub/sub message, or forever when not subscribed.
async fn next_message(
    subscriber: &mut Option<(Subscriber, mpsc::Receiver<Message>)>,
) -> Option<Message> {
    match subscriber {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the subscriber's queue overflowed; never when not subscribed.
async fn overflowed(overflow: Option<CancellationToken>) {
    match overflow {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Writes a message for the client; `subscribed`: it may take RESP2
/// messages (an invalidation reaches a RESP2 client only so, on
/// `__redis__:invalidate`, as Redis sends them).
fn encode_message(message: Message, subscribed: bool, out: &mut ReplyWriter) {
    match message {
        Message::Invalidate { keys } => {
            if out.protocol() == Protocol::Resp3 {
                out.push(2);
                out.bulk(b"invalidate");
            } else if subscribed {
                out.push(3);
                out.bulk(b"message");
                out.bulk(b"__redis__:invalidate");
            } else {
                return;
            }
            match keys {
                Some(keys) => {
                    out.array(keys.len());
                    for key in keys {
                        out.bulk(&key);
                    }
                }
                None => out.null(),
            }
        }
        Message::RedirectBroken { target } => {
            if out.protocol() == Protocol::Resp3 {
                out.push(2);
                out.bulk(b"tracking-redir-broken");
                out.int(i64::try_from(target).unwrap_or(i64::MAX));
            }
        }
        Message::Message { channel, payload } => {
            out.push(3);
            out.bulk(b"message");
            out.bulk(&channel);
            out.bulk(&payload);
        }
        Message::PMessage {
            pattern,
            channel,
            payload,
        } => {
            out.push(4);
            out.bulk(b"pmessage");
            out.bulk(&pattern);
            out.bulk(&channel);
            out.bulk(&payload);
        }
    }
}

/// What the connection does after its buffered requests ran.
enum Flow {
    Continue,
    Close,
}

/// Runs every complete request already buffered, then sends what was
/// forwarded. Boxed by the caller: its state lives only while there is
/// input to run, so a connection at rest holds none of it.
async fn run_buffered(
    node: &Node,
    client: &mut ClientState,
    sink: &ReplySink,
    parser: &mut RequestParser,
    input: &mut BytesMut,
    output: &mut BytesMut,
    argv: &mut Vec<bytes::Bytes>,
) -> std::io::Result<Flow> {
    // The client's last interaction (CLIENT LIST's `idle`), as Redis's:
    // when its input was read, once per read, forwarded commands included.
    client
        .info
        .last_command_ms
        .store(crate::store::now_ms(), std::sync::atomic::Ordering::Relaxed);
    // When the last command answered here ended (None: not in this cycle,
    // or something else ran since).
    let mut clock: Option<Instant> = None;
    // Room for the replies at once, rather than doubling from nothing as
    // they are written (the buffer is given back between reads).
    if output.capacity() == 0 {
        output.reserve(REPLY_ROOM);
    }
    loop {
        if let Some(proxy) = &node.proxy
            && client.authenticated
            && client.multi.is_none()
            && client.reply == crate::node::ReplyMode::On
            && parser.is_idle()
        {
            let lane = client.id() as usize;
            client
                .proxy
                .forward_unparsed(proxy, client.protocol, lane, input, node.limits, output)
                .await?;
        }
        let restricted = !client.authenticated;
        match parser.parse(input, argv, node.limits, restricted) {
            Ok(true) => {
                if let Some(proxy) = &node.proxy {
                    // Forwarded, or answered here once the replies owed
                    // for the commands forwarded before it are written.
                    let lane = client.id() as usize;
                    if proxy.forwards(&client.proxy, client.authenticated, argv) {
                        if let Some(transaction) = client.multi.as_mut() {
                            transaction.queued.push(crate::node::Queued::Upstream);
                        }
                        let redirected = crate::commands::upstream_redirect(node, argv);
                        let sent: &[bytes::Bytes] =
                            redirected.as_ref().map_or(&argv[..], |r| &r.argv[..]);
                        if client.reply == crate::node::ReplyMode::On {
                            client
                                .proxy
                                .forward(proxy, client.protocol, lane, sent, output)
                                .await?;
                        } else {
                            // CLIENT REPLY OFF or SKIP: the reply is awaited
                            // here, and dropped.
                            let protocol = client.protocol;
                            client.proxy.settle(proxy, protocol, lane, output).await?;
                            let before = output.len();
                            client
                                .proxy
                                .forward_settled(proxy, protocol, lane, sent, output)
                                .await?;
                            if client.take_reply_suppressed(argv) {
                                output.truncate(before);
                            }
                        }
                        if client.proxy.is_pinned() {
                            client.sync_subscription_counts();
                        }
                        if !redirected.as_ref().is_some_and(|r| r.refused) {
                            crate::commands::note_forwarded(node, client, argv);
                        }
                        clock = None;
                        continue;
                    }
                    client
                        .proxy
                        .settle(proxy, client.protocol, lane, output)
                        .await?;
                    clock = None;
                }
                let before = output.len();
                let mut out = ReplyWriter::new(output, client.protocol);
                // One clock reading per command: its end is the next one's
                // start, within this read cycle.
                let started = clock.unwrap_or_else(Instant::now);
                let cmd = execute(node, client, argv, &mut out).await;
                let ended = Instant::now();
                if let Some(cmd) = cmd {
                    node.metrics.command_took(cmd, ended - started);
                }
                clock = Some(ended);
                // CLIENT REPLY OFF or SKIP: the reply is not sent.
                if client.take_reply_suppressed(argv) {
                    output.truncate(before);
                }
                if client.close {
                    sink.write(output).await?;
                    return Ok(Flow::Close);
                }
                if output.len() >= FLUSH_AT {
                    sink.write(output).await?;
                    output.clear();
                }
            }
            Ok(false) => break,
            Err(error) => {
                if let Some(proxy) = &node.proxy {
                    let lane = client.id() as usize;
                    client
                        .proxy
                        .settle(proxy, client.protocol, lane, output)
                        .await?;
                }
                node.metrics.protocol_errors.inc();
                tracing::debug!(client = client.id(), error = error.0, "protocol error");
                ReplyWriter::new(output, client.protocol)
                    .error(&format!("ERR Protocol error: {}", error.0));
                sink.write(output).await?;
                return Ok(Flow::Close);
            }
        }
    }
    if let Some(proxy) = &node.proxy {
        let lane = client.id() as usize;
        client
            .proxy
            .flush(proxy, client.protocol, lane, output)
            .await?;
        if client.proxy.lost_state() {
            sink.write(output).await?;
            return Ok(Flow::Close);
        }
    }
    Ok(Flow::Continue)
}

/// A client connection's read side: waits for readiness before the read
/// buffer is allocated.
pub trait ClientRead: AsyncRead + Unpin {
    /// Resolves when a read may not block (a plain socket); at once where
    /// that cannot be told (TLS, which buffers on its own).
    fn ready(&self) -> impl Future<Output = std::io::Result<()>>;

    /// Resolves once the client has sent something, or closed. A new
    /// socket is reported readable before it has anything, so that
    /// [`ClientRead::ready`] would let a connection that never sends hold
    /// a read buffer for its life.
    fn arrived(&mut self) -> impl Future<Output = std::io::Result<()>>;
}

impl ClientRead for tokio::net::tcp::OwnedReadHalf {
    async fn ready(&self) -> std::io::Result<()> {
        self.readable().await
    }

    async fn arrived(&mut self) -> std::io::Result<()> {
        self.peek(&mut [0; 1]).await.map(drop)
    }
}

impl<S: AsyncRead + tokio::io::AsyncWrite> ClientRead for tokio::io::ReadHalf<S> {
    async fn ready(&self) -> std::io::Result<()> {
        Ok(())
    }

    async fn arrived(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads what the client sent, allocating room once there is something
/// (`fresh`: nothing was read from this client yet).
async fn read_when_ready<R: ClientRead>(
    reader: &mut R,
    input: &mut BytesMut,
    fresh: &mut bool,
    info: &ClientInfo,
) -> std::io::Result<usize> {
    if input.capacity() - input.len() < READ_CHUNK {
        if *fresh {
            reader.arrived().await?;
            *fresh = false;
        } else {
            reader.ready().await?;
        }
        input.reserve(READ_CHUNK);
        note_buffer(info, input);
    }
    reader.read_buf(input).await
}

/// The read buffer as CLIENT LIST shows it.
fn note_buffer(info: &ClientInfo, input: &BytesMut) {
    info.query_buffer
        .store(input.len(), std::sync::atomic::Ordering::Relaxed);
    info.read_buffer
        .store(input.capacity(), std::sync::atomic::Ordering::Relaxed);
}

/// Serves the client; one that went over its output buffer limit is
/// closed, logged and counted, as Redis does.
async fn run<R: ClientRead>(
    node: &Node,
    reader: R,
    sink: Arc<ReplySink>,
    client: &mut ClientState,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut served = serve_requests(node, reader, sink.clone(), client, shutdown).await;
    // What was left for the loop's sleep is written before the connection
    // closes.
    if served.is_ok() {
        served = sink.drain().await;
    }
    if sink.over_limit() {
        node.metrics.output_limit_disconnections.inc();
        tracing::warn!(
            client = client.id(),
            addr = %client.info.addr,
            "closing client that went over client-output-buffer-limit normal"
        );
        return Ok(());
    }
    served
}

async fn serve_requests<R: ClientRead>(
    node: &Node,
    mut reader: R,
    sink: Arc<ReplySink>,
    client: &mut ClientState,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    // The write side is shared with the proxy's pooled connections, which
    // write the replies of forwarded commands straight to the client.
    client.proxy.attach(sink.clone());
    let mut parser = RequestParser::default();
    // Allocated when there is something to read or write, given back when
    // the client waits: an idle connection holds no buffer.
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    // Made now, beside the connection's other state: made at the first
    // request, after the first read buffer, it would keep that buffer's
    // pages from going back to the system when the buffer is freed.
    let mut argv = Vec::with_capacity(4);
    let mut fresh = true;
    let query_limit = usize::try_from(node.config.client_query_buffer_limit).unwrap_or(usize::MAX);
    let idle = (node.config.timeout > 0).then(|| Duration::from_secs(node.config.timeout));
    // Waited on for the life of the connection rather than made again at
    // every wait: each time takes the token's and its notifier's locks.
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let killed = client.info.kill.clone().cancelled_owned();
    tokio::pin!(killed);
    loop {
        // Run every complete request already buffered.
        let flow = Box::pin(run_buffered(
            node,
            client,
            &sink,
            &mut parser,
            &mut input,
            &mut output,
            &mut argv,
        ))
        .await?;
        if let Flow::Close = flow {
            return Ok(());
        }
        if input.len() > query_limit {
            node.metrics.protocol_errors.inc();
            tracing::warn!(
                client = client.id(),
                "closing client that reached max query buffer length"
            );
            ReplyWriter::new(&mut output, client.protocol)
                .error("ERR Protocol error: query buffer limit reached");
            sink.write(&output).await?;
            return Ok(());
        }
        if !output.is_empty() {
            // Written when the loop runs out of work, with the replies of
            // every client it served in this pass (see crate::event_loop).
            sink.write_soon(&mut output).await?;
        }
        // Waiting for the client: give the buffers back, as Redis frees an
        // idle client's query buffer, so that a connection at rest costs
        // only its state (and a large request or reply once does not pin
        // its buffer for the life of the connection).
        if output.is_empty() && output.capacity() > 0 {
            output = BytesMut::new();
        }
        if input.is_empty() && input.capacity() > 0 {
            input = BytesMut::new();
        }
        note_buffer(&client.info, &input);
        // The last request's arguments are slices of the read buffer: they
        // would keep it alive. (Not those of a request still arriving: the
        // parser goes on from them.)
        if parser.is_idle() {
            argv.clear();
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let idle_timeout = async {
            match idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        // Subscribers, and clients waiting for the upstream (a blocking
        // command), are not idle, as in Redis.
        let subscribed = client.subscription_count() > 0 || client.proxy.busy();
        let overflow = client.subscriber.as_ref().map(|(s, _)| s.overflow.clone());
        tokio::select! {
            read = read_when_ready(&mut reader, &mut input, &mut fresh, &client.info) => {
                if read? == 0 {
                    return Ok(());
                }
                note_buffer(&client.info, &input);
            }
            message = next_message(&mut client.subscriber) => {
                let mut out = ReplyWriter::new(&mut output, client.protocol);
                let subscribed = client.subscription_count() > 0 || client.proxy.subscribed();
                let ClientState { subscriber, channels, patterns, .. } = client;
                if let (Some(message), Some((subscriber, rx))) = (message, subscriber) {
                    // Messages queued before an UNSUBSCRIBE are not delivered
                    // after its reply, as in Redis.
                    let wanted = |message: &Message| match message {
                        Message::Message { channel, .. } => channels.contains(channel),
                        Message::PMessage { pattern, .. } => patterns.contains(pattern),
                        Message::Invalidate { .. } | Message::RedirectBroken { .. } => true,
                    };
                    subscriber.taken(&message);
                    if wanted(&message) {
                        encode_message(message, subscribed, &mut out);
                    }
                    // Batch whatever else is already queued into the same
                    // write, up to the flush bound.
                    while out.len() < FLUSH_AT {
                        let Ok(message) = rx.try_recv() else { break };
                        subscriber.taken(&message);
                        if wanted(&message) {
                            encode_message(message, subscribed, &mut out);
                        }
                    }
                }
            }
            _ = sink.woken() => sink.drain().await?,
            read = client.proxy.readable() => {
                client.proxy.relay(read, &mut output);
                client.sync_subscription_counts();
                if client.proxy.lost_state() {
                    sink.write(&output).await?;
                    return Ok(());
                }
            }
            _ = overflowed(overflow) => {
                node.metrics.output_limit_disconnections.inc();
                tracing::warn!(
                    client = client.id(),
                    addr = %client.info.addr,
                    "closing subscriber that went over client-output-buffer-limit pubsub"
                );
                return Ok(());
            }
            _ = idle_timeout, if !subscribed => {
                tracing::debug!(client = client.id(), "closing idle client");
                return Ok(());
            }
            _ = &mut shutting_down => return Ok(()),
            _ = &mut killed => {
                tracing::debug!(client = client.id(), "closing client killed by CLIENT KILL");
                return Ok(());
            }
        }
    }
}
