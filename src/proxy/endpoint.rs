//! One upstream server as the proxy dials it: address, TLS, the URL's
//! credentials and database, and the handshake that makes a fresh
//! connection speak the client's protocol version, so that replies can be
//! forwarded unchanged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::protocol::Protocol;
use crate::protocol::frame::{FrameScanner, FrameView};

/// Where to connect and how to log in.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`, as CLUSTER SLOTS and MOVED name nodes.
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// TLS (`rediss://`), verified against the host name.
    pub tls: Option<TlsConnector>,
}

/// A connected, logged-in upstream connection and the bytes already read
/// past the handshake's replies.
pub struct Connection {
    pub stream: Stream,
    pub input: BytesMut,
    /// The upstream's CLIENT ID for it, learnt in the handshake: what
    /// another client's CLIENT TRACKING ... REDIRECT must name there.
    pub id: Option<i64>,
}

/// A plain or TLS connection to the upstream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TLS client that encrypts but accepts any certificate, for a URL
/// marked `#insecure` (as redis-rs does for the sidecar's own connection):
/// the handshake's signatures are still checked against the certificate.
pub fn insecure_tls_connector() -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Takes the server's certificate without verifying it (`#insecure`).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client verifying servers against `ca_pem`, or the system's roots.
pub fn tls_connector(ca_pem: Option<&[u8]>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate =
                    certificate.map_err(|e| format!("invalid upstream CA certificate: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("invalid upstream CA certificate: {e}"))?;
            }
        }
        None => {
            for certificate in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(certificate);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
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
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut stream = match &self.tls {
                None => Stream::Plain(tcp),
                Some(connector) => {
                    let host = self
                        .addr
                        .rsplit_once(':')
                        .map_or(&self.addr[..], |(h, _)| h);
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| format!("invalid TLS name {host}: {e}"))?;
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with {}: {e}", self.addr))?;
                    Stream::Tls(Box::new(tls))
                }
            };
            let (handshake, replies) = self.handshake(protocol);
            stream
                .write_all(&handshake)
                .await
                .map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut input = BytesMut::with_capacity(16 * 1024);
            let mut scanner = FrameScanner::default();
            let mut answered = 0;
            let mut start = 0;
            let mut id = None;
            while answered < replies {
                match scanner.next_frame(&input) {
                    Ok(Some(end)) => {
                        let view = FrameView::new(&input[start..end]);
                        // An upstream busy with a script refuses CLIENT ID
                        // (the last command) but not the login: the
                        // connection serves, with its id unknown, e.g. to
                        // carry SCRIPT KILL.
                        let busy = input[start..end].starts_with(b"-BUSY");
                        if view.is_error() && !(busy && answered + 1 == replies) {
                            let text = String::from_utf8_lossy(&input[start + 1..end - 2]);
                            return Err(format!("upstream refused the login: {text}"));
                        }
                        // The last reply is CLIENT ID's.
                        if answered + 1 == replies && view.kind == b':' {
                            id = crate::protocol::parse_i64(&input[start + 1..end - 2]);
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
            Ok(Connection { stream, input, id })
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
        encode_command(&mut out, &[&b"CLIENT"[..], b"ID"]);
        replies += 1;
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
