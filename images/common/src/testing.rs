//! Helpers for the workloads' integration tests (feature `testing`): start a workload's real
//! binary on `127.0.0.1` with an ephemeral port, wait until it listens, stop it with SIGTERM
//! or SIGKILL.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running workload process, killed when dropped.
#[derive(Debug)]
pub struct Service {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// Starts `bin` with `args` plus `--listen 127.0.0.1:0 --ready-file …`, its stderr appended to
/// `dir/<name>.log`, the `EDGESIM_*` variables of the test's own environment removed and `env`
/// added, and waits (up to 30 s) until it listens.
///
/// # Errors
/// When it cannot be started, exits early, or does not listen in time.
pub fn spawn(
    bin: &str,
    name: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Service> {
    let ready = dir.join(format!("{name}.addr"));
    let _ = std::fs::remove_file(&ready);
    let log = dir.join(format!("{name}.log"));
    let stderr = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("EDGESIM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(addr) = text.trim().parse()
        {
            return Ok(Service { child, addr, log });
        }
        if let Some(status) = child.try_wait()? {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{name} exited with {status} before listening:\n{out}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{name} did not listen within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Service {
    /// `http://addr` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process does not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!("did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// A fresh directory under the target's temporary directory, removed first if it exists.
///
/// # Errors
/// When it cannot be created.
pub fn scratch_dir(tmpdir: &str, name: &str) -> anyhow::Result<PathBuf> {
    let d = Path::new(tmpdir).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample whose name and labels are exactly `series` (e.g.
/// `edgesim_sink_missing_total` or `edgesim_x{device="a"}`) in an exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// `GET url` and the sample `series` from it (see [`metric`]).
///
/// # Errors
/// When the request fails or the series is absent.
pub async fn scrape(
    client: &crate::client::HttpClient,
    url: &str,
    series: &str,
) -> anyhow::Result<f64> {
    let r = client.get(url).await?;
    let text = r.text();
    metric(&text, series).with_context(|| format!("no `{series}` in {url}:\n{text}"))
}
