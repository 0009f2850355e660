//! The HTTP server scaffolding: binding (with an optional ready file), the standard endpoints
//! and graceful serving.
//!
//! A program builds its own `axum::Router`, merges [`base_router`] into it for `/healthz`,
//! `/metrics` and `/status`, and hands it to [`serve`], which stops accepting connections when
//! the [`Shutdown`] flag is triggered, lets in-flight requests finish, and gives up after the
//! grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::config::CommonArgs;
use crate::shutdown::Shutdown;

/// Produces the JSON of `/status`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A bound listener, ready to [`serve`].
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// The bound address (with the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `--listen`/`--port` and, when `--ready-file` is given, writes the bound address there
/// (written to a temporary file and renamed, so a reader never sees half an address).
///
/// # Errors
/// When the address cannot be bound or the ready file cannot be written.
pub async fn bind(args: &CommonArgs) -> anyhow::Result<Listener> {
    let want = args.listen_addr();
    let inner = tokio::net::TcpListener::bind(want)
        .await
        .with_context(|| format!("binding {want}"))?;
    let addr = inner.local_addr().context("reading the bound address")?;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, addr)?;
    }
    tracing::info!(%addr, "listening");
    Ok(Listener { inner, addr })
}

fn write_ready_file(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .with_context(|| format!("writing the ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The standard endpoints: `GET /healthz` (`ok`), `GET /metrics` (OpenMetrics text of
/// `registry`) and `GET /status` (the JSON `status` returns).
pub fn base_router(registry: Arc<Registry>, status: StatusFn) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_response(&registry) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let status = status.clone();
                async move { axum::Json(status()) }
            }),
        )
}

fn metrics_response(registry: &Registry) -> Response {
    match crate::metrics::render(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves `app` on `listener` until `shutdown` is triggered, then waits up to `grace` for
/// in-flight requests to finish.
///
/// # Errors
/// When accepting connections fails for good.
pub async fn serve(
    listener: Listener,
    app: Router,
    shutdown: Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    let stop = shutdown.clone();
    let server = axum::serve(listener.inner, app).with_graceful_shutdown(async move {
        stop.wait().await;
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.context("serving HTTP"),
        () = shutdown.wait() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.context("serving HTTP"),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish within the grace period"
            );
            Ok(())
        }
    }
}

/// Serves `app` like [`serve`] on a task of its own and, once `shutdown` is triggered, also
/// waits (up to `grace`) for the program's background `tasks`; `what` names them in the log.
/// The returned handle resolves when everything stopped.
pub fn serve_with_tasks(
    listener: Listener,
    app: Router,
    shutdown: Shutdown,
    grace: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    what: &'static str,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let server = tokio::spawn(serve(listener, app, shutdown.clone(), grace));
    tokio::spawn(async move {
        shutdown.wait().await;
        let all = async {
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!(error = %e, "a task panicked");
                }
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "{what} did not stop within the grace period");
        }
        server.await.context("server task")??;
        Ok(())
    })
}
