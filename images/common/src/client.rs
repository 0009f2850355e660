//! A small plain-HTTP/1.1 client for talking to peers (sink, origin, sync partners).
//!
//! Built on `hyper-util`'s pooled client, without TLS (the workloads talk inside the simulated
//! network, and leaving TLS out keeps the binaries static and small). Every request has a
//! whole-request timeout, because a partition shows up as a connection or a response that
//! never comes, not as an error.
//!
//! Host names that are edgesim node names (`EDGESIM_PEERS`) are connected to by the address in
//! the environment, with the original `Host` header kept, so `http://sink:8080` works even in
//! a node whose `/etc/hosts` was not set up; other names go through the system resolver.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("{method} {url}: no response within {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: {source}")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the response body of {method} {url}: {source}")]
    Body {
        method: Method,
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("encoding the JSON body for {url}: {source}")]
    Encode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Decodes the body as JSON.
    ///
    /// # Errors
    /// When the body is not the expected JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client with a per-request timeout.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    peers: Arc<BTreeMap<String, IpAddr>>,
}

impl HttpClient {
    /// A client whose requests (connect, send, read the whole body) time out after `timeout`,
    /// connecting to the node names in `peers` by their address.
    pub fn new(timeout: Duration, peers: BTreeMap<String, IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            inner,
            timeout,
            peers: Arc::new(peers),
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET url`.
    ///
    /// # Errors
    /// See [`ClientError`]; a non-2xx status is not an error here.
    pub async fn get(&self, url: &str) -> Result<Response, ClientError> {
        self.send(Method::GET, url, Bytes::new(), None).await
    }

    /// `POST url` with `body` as JSON.
    ///
    /// # Errors
    /// See [`ClientError`]; a non-2xx status is not an error here.
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
    ) -> Result<Response, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Encode {
            url: url.to_string(),
            source,
        })?;
        self.send(
            Method::POST,
            url,
            Bytes::from(bytes),
            Some("application/json"),
        )
        .await
    }

    /// Sends one request and reads the whole response.
    ///
    /// # Errors
    /// See [`ClientError`]; a non-2xx status is not an error here.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Response, ClientError> {
        let bad = |reason: String| ClientError::Url {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported".into()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("no host".into()))?;
        let connect_uri = match self.peers.get(authority.host()) {
            Some(ip) => {
                let host = match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                let port = authority.port_u16().unwrap_or(80);
                let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
                format!("http://{host}:{port}{pq}")
                    .parse()
                    .map_err(|e| bad(format!("{e}")))?
            }
            None => uri.clone(),
        };
        let mut req = Request::builder().method(method.clone()).uri(connect_uri);
        if let Ok(h) = HeaderValue::from_str(authority.as_str()) {
            req = req.header(HOST, h);
        }
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let req = req.body(Full::new(body)).map_err(|e| bad(format!("{e}")))?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| ClientError::Request {
                    method: method.clone(),
                    url: url.to_string(),
                    source,
                })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    method: method.clone(),
                    url: url.to_string(),
                    source,
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                method,
                url: url.to_string(),
                timeout: self.timeout,
            }),
        }
    }
}
