//! One upstream server as the proxy dials it: address, the URL's credentials
//! and database, and the handshake that makes a fresh connection speak the
//! client's protocol version, so that replies can be forwarded unchanged.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::Protocol;
use crate::protocol::frame::{FrameScanner, FrameView};

/// Where to connect and how to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as CLUSTER SLOTS and MOVED name nodes.
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

/// A connected, logged-in upstream connection and the bytes already read
/// past the handshake's replies.
pub struct Connection {
    pub stream: TcpStream,
    pub input: BytesMut,
}

impl Endpoint {
    /// The same credentials, another node (a cluster's MOVED target).
    pub fn at(&self, addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            ..self.clone()
        }
    }

    /// Connects within `timeout` and logs in: `HELLO 3 [AUTH ...]` for a
    /// RESP3 connection, `AUTH` for a RESP2 one, then `SELECT db`. The error
    /// is fit for a client: the upstream's own words when it refused.
    pub async fn connect(
        &self,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Connection, String> {
        let connecting = async {
            let mut stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (handshake, replies) = self.handshake(protocol);
            stream
                .write_all(&handshake)
                .await
                .map_err(|e| e.to_string())?;
            let mut input = BytesMut::with_capacity(16 * 1024);
            let mut scanner = FrameScanner::default();
            let mut answered = 0;
            let mut start = 0;
            while answered < replies {
                match scanner.next_frame(&input) {
                    Ok(Some(end)) => {
                        let view = FrameView::new(&input[start..end]);
                        if view.is_error() {
                            let text = String::from_utf8_lossy(&input[start + 1..end - 2]);
                            return Err(format!("upstream refused the login: {text}"));
                        }
                        start = end;
                        answered += 1;
                    }
                    Ok(None) => {
                        if stream
                            .read_buf(&mut input)
                            .await
                            .map_err(|e| e.to_string())?
                            == 0
                        {
                            return Err("upstream closed the connection".into());
                        }
                    }
                    Err(error) => return Err(format!("upstream protocol error: {}", error.0)),
                }
            }
            let _ = input.split_to(start);
            Ok(Connection { stream, input })
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(format!("connecting to {} timed out", self.addr)))
    }

    /// The login commands and how many replies they get.
    fn handshake(&self, protocol: Protocol) -> (BytesMut, usize) {
        let mut out = BytesMut::new();
        let mut replies = 0;
        let user = self.username.as_deref().unwrap_or("default");
        match (protocol, &self.password) {
            (Protocol::Resp3, Some(password)) => {
                encode_command(
                    &mut out,
                    &[
                        &b"HELLO"[..],
                        b"3",
                        b"AUTH",
                        user.as_bytes(),
                        password.as_bytes(),
                    ],
                );
                replies += 1;
            }
            (Protocol::Resp3, None) => {
                encode_command(&mut out, &[&b"HELLO"[..], b"3"]);
                replies += 1;
            }
            (Protocol::Resp2, Some(password)) => {
                encode_command(
                    &mut out,
                    &[&b"AUTH"[..], user.as_bytes(), password.as_bytes()],
                );
                replies += 1;
            }
            (Protocol::Resp2, None) => {}
        }
        if self.db != 0 {
            encode_command(&mut out, &[&b"SELECT"[..], self.db.to_string().as_bytes()]);
            replies += 1;
        }
        (out, replies)
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let len: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    out.reserve(len + 16);
    out.put_u8(b'*');
    put_number(out, args.len());
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        put_number(out, arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

fn put_number(out: &mut BytesMut, n: usize) {
    let mut buffer = itoa::Buffer::new();
    out.put_slice(buffer.format(n).as_bytes());
    out.put_slice(b"\r\n");
}
