//! SSH to boards through the system's OpenSSH client (the `openssh` crate): the user's
//! `~/.ssh/config`, agents and jump hosts work as they do for `ssh`. One master connection per
//! board carries every command (ControlMaster).
//!
//! Host keys are checked strictly: an unknown or changed key is refused, unless the
//! inventory sets `ansible_host_key_checking: false` for that host. `edgesim_known_hosts_file`
//! names a known-hosts file of the board's own (edgesim's tests use per-test keys).
//!
//! The agent ([`super::agent`]) is uploaded once per binary: to
//! `~/.cache/edgesim/agent-<sha256 prefix>/edgesim` on the board (`edgesim_cache_dir` moves it), written to a temporary name
//! and renamed into place, so a half-copied binary is never run and a cached one is reused by
//! later runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::agent::{Message, Reply, Request};
use super::inventory::InventoryHost;

/// The launcher `ansible/prepare-board.yml` installs: a copy of `capsh` holding the file
/// capability CAP_NET_ADMIN, runnable by the `edgesim` group alone. An agent started through
/// it holds exactly that capability (as an ambient one) and no other.
pub const LAUNCHER: &str = "/usr/local/lib/edgesim/capsh";

/// Why a board could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host} ({address}): {detail}")]
    Connect {
        host: String,
        address: String,
        detail: String,
    },
    #[error("{host}: {what}: {detail}")]
    Remote {
        host: String,
        what: String,
        detail: String,
    },
}

/// How to connect, beyond what the inventory says.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    /// Where the master connections' control sockets live (a private temporary folder).
    pub control_dir: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            control_dir: None,
        }
    }
}

/// A board reached over SSH.
pub struct Board {
    pub host: InventoryHost,
    /// Shared with the agent's command, which outlives the borrow of a `&Board`.
    pub session: std::sync::Arc<Session>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !t.is_empty() && !s.contains(&t) {
            s.push_str(": ");
            s.push_str(t.trim());
        }
        src = c.source();
    }
    s
}

/// Connects to an inventory host.
pub async fn connect(h: &InventoryHost, opts: &ConnectOptions) -> Result<Board, TransportError> {
    let mut b = SessionBuilder::default();
    if let Some(u) = &h.user {
        b.user(u.clone());
    }
    if let Some(p) = h.port {
        b.port(p);
    }
    if let Some(k) = &h.key_file {
        b.keyfile(expand_home(k));
    }
    if let Some(f) = &h.known_hosts_file {
        b.user_known_hosts_file(expand_home(f));
    }
    if let Some(d) = &opts.control_dir {
        b.control_directory(d);
    }
    b.known_hosts_check(if h.host_key_checking {
        KnownHosts::Strict
    } else {
        KnownHosts::Accept
    });
    b.connect_timeout(opts.connect_timeout);
    // Without replies for 3 × 5 s, ssh gives up on the connection (the agent's lease has
    // long reverted the board by then).
    b.server_alive_interval(Duration::from_secs(5));
    let session = b.connect(&h.address).await.map_err(|e| {
        let detail = chain(&e);
        let detail = if detail.contains("Host key verification failed")
            || detail.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || detail.contains("No ED25519 host key is known")
            || detail.contains("host key")
        {
            format!(
                "refused: its SSH host key is unknown or not the one in known_hosts ({detail}); check the board, add its key (ssh-keyscan), or set `ansible_host_key_checking: false` for this host in the inventory"
            )
        } else {
            detail
        };
        TransportError::Connect {
            host: h.name.clone(),
            address: h.address.clone(),
            detail,
        }
    })?;
    Ok(Board {
        host: h.clone(),
        session: std::sync::Arc::new(session),
    })
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// The first 16 hex digits of a file's SHA-256.
pub fn short_hash(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Board {
    fn remote_err(&self, what: &str, detail: impl std::fmt::Display) -> TransportError {
        TransportError::Remote {
            host: self.host.name.clone(),
            what: what.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Runs a shell command on the board; its stdout, or an error with its stderr.
    pub async fn sh(&self, script: &str) -> Result<String, TransportError> {
        let out = self
            .session
            .command("sh")
            .arg("-c")
            .arg(script)
            .output()
            .await
            .map_err(|e| self.remote_err("running a command", chain(&e)))?;
        if !out.status.success() {
            return Err(self.remote_err(
                &format!("`{script}`"),
                format!(
                    "exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How the board's user gets the agent's privileges: root, or the [`LAUNCHER`] and the
    /// capabilities it holds (`ansible/prepare-board.yml`: CAP_NET_ADMIN, and CAP_SYS_ADMIN
    /// with CAP_NET_RAW on boards that need a linkem cell). A user with neither is told how to
    /// prepare the board.
    pub async fn privilege(&self) -> Result<Privilege, TransportError> {
        let probe = format!(
            "if [ \"$(id -u)\" = 0 ]; then echo root; elif [ -x {LAUNCHER} ]; then echo launcher; {LAUNCHER} --print | sed -n 's/^Current: //p'; else echo none; fi"
        );
        let out = self.sh(&probe).await?;
        let mut lines = out.lines();
        match lines.next().map(str::trim) {
            Some("root") => Ok(Privilege::Root),
            Some("launcher") => Ok(Privilege::Launcher(launcher_caps(lines.next().unwrap_or("")))),
            _ => Err(self.remote_err(
                "starting the agent",
                format!(
                    "the user is not root and {LAUNCHER} is missing or not theirs to run: prepare the board with ansible/prepare-board.yml (it gives the agent exactly the capabilities it needs)"
                ),
            )),
        }
    }

    /// The command that starts the agent at `path` (from [`Board::upload_agent`]) with its
    /// state file at `state` (the agent's default where `None`): directly when the board's
    /// user is root, otherwise through the [`LAUNCHER`], which hands it the capabilities the
    /// launcher holds, as ambient ones, and nothing more.
    pub async fn agent_command(
        &self,
        path: &str,
        state: Option<&str>,
    ) -> Result<openssh::OwningCommand<std::sync::Arc<Session>>, TransportError> {
        let argv = self.privilege().await?.argv(path, &AGENT_CAPS);
        let mut cmd = Session::to_command(self.session.clone(), &argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("agent");
        if let Some(s) = state {
            cmd.arg("--state").arg(s);
        }
        Ok(cmd)
    }

    /// Where edgesim keeps its files on the board (uploaded binaries by hash, runs' work
    /// folders): the host's `edgesim_cache_dir` (`~/` is the login's home), else
    /// `~/.cache/edgesim`.
    pub async fn cache_dir(&self) -> Result<String, TransportError> {
        let home = || async { self.sh("printf %s \"$HOME\"").await };
        match self
            .host
            .vars
            .get("edgesim_cache_dir")
            .and_then(|v| v.as_str())
        {
            Some(d) if d.starts_with("~/") => Ok(format!("{}/{}", home().await?, &d[2..])),
            Some(d) => Ok(d.trim_end_matches('/').to_string()),
            None => Ok(format!("{}/.cache/edgesim", home().await?)),
        }
    }

    /// The board's machine (`uname -m`: `aarch64`, `x86_64`).
    pub async fn machine(&self) -> Result<String, TransportError> {
        Ok(self.sh("uname -m").await?.trim().to_string())
    }

    /// Closes the master connection (the agent's session must have ended).
    pub async fn close(self) -> Result<(), TransportError> {
        match std::sync::Arc::try_unwrap(self.session) {
            Ok(s) => s.close().await.map_err(|e| TransportError::Remote {
                host: self.host.name.clone(),
                what: "closing the connection".into(),
                detail: chain(&e),
            }),
            // Still shared: the connection closes when its last user drops it.
            Err(_) => Ok(()),
        }
    }

    /// Makes sure the agent binary `local` is on the board (uploaded once per content hash)
    /// and returns its path there.
    pub async fn upload_agent(&self, local: &Path) -> Result<String, TransportError> {
        self.upload(local, "agent", "edgesim").await
    }

    /// Makes sure the executable `local` is on the board as `~/.cache/edgesim/<kind>-<hash>/<name>`
    /// (uploaded once per content hash, renamed into place) and returns that path.
    pub async fn upload(
        &self,
        local: &Path,
        kind: &str,
        name: &str,
    ) -> Result<String, TransportError> {
        let data = std::fs::read(local)
            .map_err(|e| self.remote_err(&format!("reading {}", local.display()), e))?;
        let dir = format!("{}/{kind}-{}", self.cache_dir().await?, short_hash(&data));
        let full = format!("{dir}/{name}");
        if self
            .sh(&format!("test -x '{full}' && echo yes || true"))
            .await?
            .trim()
            == "yes"
        {
            return Ok(full);
        }
        let tmp = format!("{full}.part.$$");
        let script = format!(
            "set -e; mkdir -p '{dir}'; t=\"{tmp}\"; cat > \"$t\"; chmod 0755 \"$t\"; mv \"$t\" '{full}'"
        );
        let mut child = self
            .session
            .command("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| self.remote_err("uploading", chain(&e)))?;
        let mut stdin = child
            .stdin()
            .take()
            .ok_or_else(|| self.remote_err("uploading", "no stdin"))?;
        stdin
            .write_all(&data)
            .await
            .map_err(|e| self.remote_err("uploading", e))?;
        stdin
            .shutdown()
            .await
            .map_err(|e| self.remote_err("uploading", e))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.remote_err("uploading", chain(&e)))?;
        if !out.status.success() {
            return Err(self.remote_err("uploading", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(full)
    }
}

/// The controller's end of an agent's protocol: requests written to the SSH session's stdin,
/// replies read from its stdout.
pub struct AgentConn<W, R> {
    input: W,
    output: tokio::io::Lines<BufReader<R>>,
    next: u64,
}

impl<W, R> AgentConn<W, R>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    pub fn new(input: W, output: R) -> Self {
        AgentConn {
            input,
            output: BufReader::new(output).lines(),
            next: 1,
        }
    }

    /// Sends a request and waits for its reply (an event line in between is an error: the
    /// agent has reverted and is exiting).
    pub async fn call(&mut self, request: Request) -> std::io::Result<Reply> {
        let id = self.next;
        self.next += 1;
        let mut line =
            serde_json::to_vec(&Message { id, request }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.input.write_all(&line).await?;
        self.input.flush().await?;
        let Some(l) = self.output.next_line().await? else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed its output",
            ));
        };
        let reply: Reply = serde_json::from_str(&l)
            .map_err(|e| std::io::Error::other(format!("not a reply from the agent ({e}): {l}")))?;
        if reply.id != id {
            return Err(std::io::Error::other(format!(
                "reply {} to request {id}",
                reply.id
            )));
        }
        Ok(reply)
    }
}

/// The capabilities the agent may use (a cell needs the last two).
pub const AGENT_CAPS: [&str; 3] = ["cap_net_admin", "cap_sys_admin", "cap_net_raw"];

/// How the board's user runs privileged parts of edgesim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privilege {
    Root,
    /// Through the [`LAUNCHER`], which holds these capabilities (capsh spelling).
    Launcher(Vec<String>),
}

impl Privilege {
    /// The words that run the edgesim binary at `path` with those of `caps` this privilege
    /// has (arguments follow).
    pub fn argv(&self, path: &str, caps: &[&str]) -> Vec<String> {
        match self {
            Privilege::Root => vec![path.to_string()],
            Privilege::Launcher(held) => {
                let give: Vec<&str> = caps
                    .iter()
                    .copied()
                    .filter(|c| held.iter().any(|h| h == c))
                    .collect();
                let mut v = vec![LAUNCHER.to_string()];
                if !give.is_empty() {
                    v.push(format!("--inh={}", give.join(",")));
                    v.push(format!("--addamb={}", give.join(",")));
                }
                v.push(format!("--shell={path}"));
                v.push("--".to_string());
                v
            }
        }
    }
}

/// The capabilities in capsh's `Current:` line (`cap_net_admin,cap_net_raw=p`).
fn launcher_caps(current: &str) -> Vec<String> {
    current
        .split_whitespace()
        .filter_map(|clause| clause.split_once(['=', '+']).map(|(names, _)| names))
        .flat_map(|names| names.split(','))
        .filter(|n| n.starts_with("cap_"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_hands_on_only_what_it_holds() {
        let held = launcher_caps("cap_net_admin,cap_net_raw,cap_sys_admin=p");
        assert_eq!(held, ["cap_net_admin", "cap_net_raw", "cap_sys_admin"]);
        assert_eq!(launcher_caps("cap_net_admin=p"), ["cap_net_admin"]);
        assert_eq!(launcher_caps("="), Vec::<String>::new());
        let argv =
            Privilege::Launcher(vec!["cap_net_admin".into()]).argv("/c/edgesim", &AGENT_CAPS);
        assert_eq!(
            argv,
            [
                LAUNCHER,
                "--inh=cap_net_admin",
                "--addamb=cap_net_admin",
                "--shell=/c/edgesim",
                "--"
            ]
        );
        let argv = Privilege::Launcher(held).argv("/c/edgesim", &["cap_sys_admin"]);
        assert_eq!(argv[1], "--inh=cap_sys_admin");
        assert_eq!(
            Privilege::Root.argv("/c/edgesim", &AGENT_CAPS),
            ["/c/edgesim"]
        );
    }
}
