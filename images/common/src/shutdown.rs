//! Graceful shutdown.
//!
//! A [`Shutdown`] is a cloneable flag that tasks poll ([`Shutdown::is_triggered`]) or await
//! ([`Shutdown::wait`]). [`Shutdown::listen_for_signals`] triggers it on the first SIGTERM or
//! SIGINT, so each task finishes its in-flight work and flushes durable state; a second signal
//! exits the process at once (exit status 130), for an operator who does not want to wait.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A shutdown flag shared by every task of a program.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A flag that is not yet triggered.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self { tx: Arc::new(tx) }
    }

    /// Asks every task to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether a shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once a shutdown is asked for (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it dropped.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Spawns a task that triggers this flag on the first SIGTERM or SIGINT and exits the
    /// process on the second.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if n == 0 {
                    tracing::info!(
                        signal = name,
                        "shutting down gracefully; signal again to exit now"
                    );
                    this.trigger();
                } else {
                    tracing::warn!(signal = name, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger_and_when_already_triggered() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        let s2 = s.clone();
        let h = tokio::spawn(async move { s2.wait().await });
        s.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(1), h)
            .await
            .unwrap()
            .unwrap();
        assert!(s.is_triggered());
        tokio::time::timeout(std::time::Duration::from_secs(1), s.wait())
            .await
            .unwrap();
    }
}
