//! TCP connections and HTTP/1.1 requests from inside a node's namespace.
//!
//! Both the `tcp`/`http` probes and metric scrapes use these. The socket is opened by the node's
//! [`SocketFactory`] (so it belongs to the node's namespace), made non-blocking and handed to
//! tokio unconnected, and only then connected: the connect itself is asynchronous and measured.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use crate::host::ns::SocketFactory;

/// Largest response body read; a longer one fails the request rather than filling memory.
pub const MAX_BODY: usize = 1 << 20;

/// A failed HTTP exchange, named by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("opening a socket in {ns}: {source}")]
    Socket {
        ns: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("building the request for {uri}: {source}")]
    Request {
        uri: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("HTTP exchange with {addr}: {source}")]
    Exchange {
        addr: SocketAddrV4,
        #[source]
        source: hyper::Error,
    },
    #[error("reading the response body from {addr}: {detail}")]
    Body { addr: SocketAddrV4, detail: String },
}

/// Opens a TCP socket in the factory's namespace and connects it to `addr`.
pub async fn connect(sockets: &SocketFactory, addr: SocketAddrV4) -> Result<TcpStream, HttpError> {
    let sock = sockets
        .socket(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .and_then(|s| {
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            Ok(s)
        })
        .map_err(|source| HttpError::Socket {
            ns: sockets.namespace().to_string(),
            source,
        })?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    sock.connect(SocketAddr::V4(addr))
        .await
        .map_err(|source| HttpError::Connect { addr, source })
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends `GET path` with `Host: host` to `addr` over a fresh connection from the namespace and
/// reads the whole response (at most [`MAX_BODY`] bytes of body). No timeout of its own: the
/// caller bounds the whole exchange.
pub async fn get(
    sockets: &SocketFactory,
    addr: SocketAddrV4,
    host: &str,
    path: &str,
) -> Result<Response, HttpError> {
    let stream = connect(sockets, addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| HttpError::Exchange { addr, source })?;
    // The connection task ends when `sender` is dropped; aborting it on the way out also ends
    // it when the caller's timeout drops this future half-way.
    let conn = AbortOnDrop(tokio::spawn(conn));
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::USER_AGENT,
            concat!("edgesim/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|source| HttpError::Request {
            uri: format!("http://{host}{path}"),
            source,
        })?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|source| HttpError::Exchange { addr, source })?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Body {
            addr,
            detail: if e.is::<http_body_util::LengthLimitError>() {
                format!("longer than {MAX_BODY} bytes")
            } else {
                e.to_string()
            },
        })?
        .to_bytes();
    drop(sender);
    drop(conn);
    Ok(Response { status, body })
}

/// Aborts a spawned task when dropped.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
