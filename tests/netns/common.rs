//! Shared harness: scenario files in temporary folders, `edgesim run` driven through its JSON
//! progress lines, labs brought up with `edgesim up`, traffic generated and counted from
//! inside node namespaces, and checks that a run left nothing behind.
//!
//! Traffic is made by this test process itself, through sockets opened inside the nodes'
//! namespaces ([`SocketFactory`]), so counting datagrams needs no tool beyond the kernel;
//! `ping` and `iperf3` run inside nodes through `edgesim exec`, as a user would run them.
//!
//! The tests of this crate run one at a time ([`serial`]): they measure rates and loss and
//! watch timelines on a machine with few cores, and two runs at once would make each other's
//! numbers noisy.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use edgesim::host::ns::{self, SocketFactory};
use edgesim::targets::state::{self, NodeState, RunState};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_edgesim");

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of this crate (see the module docs). A test that failed while
/// holding the lock does not poison the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The gates every test here passes first: root (network namespaces) and `nft`, which the
/// netns target drives for partitions and loss. `false` means "skip" (a reason was printed).
pub fn privileged() -> bool {
    edgesim::testing::netns() && edgesim::testing::program("nft", "nft")
}

/// A scenario file in a temporary folder that also holds the run's output and report.
pub struct Scenario {
    dir: tempfile::TempDir,
    pub name: String,
    pub path: PathBuf,
    /// The target runs and labs of this scenario use (`--target`).
    pub target: &'static str,
}

impl Scenario {
    /// Writes a scenario named after `tag` (unique per test and process, since labs are found
    /// by scenario name). `spec` is the body of `spec:`, written without indentation.
    pub fn new(tag: &str, spec: &str) -> Scenario {
        let name = format!("nt-{tag}-{:x}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("edgesim-{tag}-"))
            .tempdir()
            .expect("creating a temporary folder");
        let mut body = format!(
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: {name}\nspec:\n"
        );
        for line in spec.lines() {
            body.push_str("  ");
            body.push_str(line);
            body.push('\n');
        }
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, body).expect("writing the scenario file");
        Scenario {
            dir,
            name,
            path,
            target: "netns",
        }
    }

    /// The same scenario, run on another target.
    pub fn on(mut self, target: &'static str) -> Scenario {
        self.target = target;
        self
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    pub fn report_path(&self) -> PathBuf {
        self.dir.path().join("report.json")
    }
    fn stderr_path(&self, what: &str) -> PathBuf {
        self.dir.path().join(format!("{what}.stderr.log"))
    }
    /// Folder a workload instance gets as `$EDGESIM_WORKDIR`.
    pub fn workdir(&self, workload: &str, node: &str) -> PathBuf {
        self.out_dir()
            .join("workloads")
            .join(workload)
            .join(format!("{node}.data"))
    }
}

/// The binary, with a fixed host CPU speed so that profile CPU quotas are predictable.
pub fn edgesim() -> Command {
    let mut c = Command::new(BIN);
    c.env("EDGESIM_HOST_SPEED", "1.0");
    c.env_remove("EDGESIM_STATE_DIR");
    c
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The live run (or lab) of scenario `name`, once its state file says it is ready.
pub fn wait_state(name: &str, timeout: Duration) -> RunState {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = state::live_by_name(name).into_iter().find(|s| s.ready) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "no ready state file for scenario `{name}` in {} after {timeout:?}",
            state::dir().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn node<'a>(st: &'a RunState, name: &str) -> &'a NodeState {
    st.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("run {} has no node `{name}`", st.run_id))
}

/// The netns target's part of a run's state.
pub fn netns_of(st: &RunState) -> &edgesim::targets::netns::NetnsState {
    match &st.target {
        edgesim::targets::state::TargetState::Netns(n) => n,
        other => panic!("run {} is not a netns run: {}", st.run_id, other.name()),
    }
}

/// The netns part of node `name`: namespace and cgroup.
pub fn netns_node<'a>(st: &'a RunState, name: &str) -> &'a edgesim::targets::netns::NetnsNode {
    let i = st
        .node_index(name)
        .unwrap_or_else(|| panic!("run {} has no node `{name}`", st.run_id));
    &netns_of(st).nodes[i]
}

/// Opens sockets inside a node's namespace (a named one on `netns`, the node container's on
/// `docker`).
pub fn sockets(st: &RunState, name: &str) -> SocketFactory {
    if let edgesim::targets::state::TargetState::Docker(d) = &st.target {
        let i = st.node_index(name).expect("node of the run");
        let c = &d.containers[i];
        let pid = String::from_utf8_lossy(
            &Command::new("docker")
                .args(["inspect", "-f", "{{.State.Pid}}", c])
                .output()
                .expect("docker inspect")
                .stdout,
        )
        .trim()
        .to_string();
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .unwrap_or_else(|e| panic!("opening the namespace of {c} (pid {pid}): {e}"));
        return SocketFactory::start(f.into(), c).unwrap_or_else(|e| panic!("entering {c}: {e}"));
    }
    let n = netns_node(st, name);
    let fd = ns::open(&n.namespace).unwrap_or_else(|e| panic!("opening {}: {e}", n.namespace));
    SocketFactory::start(fd, &n.namespace)
        .unwrap_or_else(|e| panic!("entering {}: {e}", n.namespace))
}

/// A node, by name, with what traffic tests need.
pub struct Peer {
    pub name: String,
    pub addr: Ipv4Addr,
    pub sockets: SocketFactory,
}

pub fn peer(st: &RunState, name: &str) -> Peer {
    Peer {
        name: name.to_string(),
        addr: node(st, name).addr,
        sockets: sockets(st, name),
    }
}

/// How long a receiver waits for stragglers after the sender finished. Longer than ARP's
/// 1 s retransmission: when the first ARP request or reply of a fresh neighbour is lost (seen
/// now and then on a loaded machine), the datagrams wait in the neighbour queue until the
/// second one, and then all arrive.
const QUIET: Duration = Duration::from_millis(1200);

/// Sends `n` numbered UDP datagrams from `from` to `to` and returns how many distinct ones
/// arrived. The receiver's buffer is made large (8 MiB, as root) and the sender is paced, so
/// the harness itself loses nothing (the loss tests check this on a clean path).
pub fn udp_delivered(from: &Peer, to: &Peer, n: u32) -> u32 {
    udp_delivered_within(from, to, n, QUIET)
}

/// [`udp_delivered`], waiting `quiet` for stragglers after the last datagram is sent.
pub fn udp_delivered_within(from: &Peer, to: &Peer, n: u32, quiet: Duration) -> u32 {
    let rx = to
        .sockets
        .socket(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .expect("UDP socket in the receiving node");
    force_rcvbuf(&rx, 8 << 20);
    rx.bind(&SocketAddrV4::new(to.addr, 0).into())
        .unwrap_or_else(|e| panic!("binding UDP on {} ({}): {e}", to.name, to.addr));
    let rx: UdpSocket = rx.into();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let port = rx.local_addr().expect("local address").port();

    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut buf = [0u8; 2048];
        let mut quiet_since: Option<Instant> = None;
        loop {
            match rx.recv(&mut buf) {
                Ok(len) if len >= 4 => {
                    seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    quiet_since = None;
                }
                Ok(_) => {}
                Err(_) => {
                    // Stop once nothing came for QUIET after the sender finished.
                    if d2.load(Ordering::SeqCst) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > quiet {
                            break;
                        }
                    }
                }
            }
        }
        seen.len() as u32
    });

    let tx = from
        .sockets
        .socket(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .expect("UDP socket in the sending node");
    let tx: UdpSocket = tx.into();
    let dst = SocketAddrV4::new(to.addr, port);
    let mut payload = [0u8; 64];
    for seq in 0..n {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        // A send can fail while the sender's own link is down; that datagram is lost too.
        let _ = tx.send_to(&payload, dst);
        if seq % 25 == 24 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done.store(true, Ordering::SeqCst);
    receiver.join().expect("receiver thread")
}

fn force_rcvbuf(s: &Socket, bytes: i32) {
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = s.set_recv_buffer_size(bytes as usize);
    }
}

/// Whether a TCP connection from `from` to a listener on `to` is established within 1 s and
/// carries a few bytes.
pub fn tcp_works(from: &Peer, to: &Peer) -> bool {
    let l = to
        .sockets
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("TCP socket in the listening node");
    l.bind(&SocketAddrV4::new(to.addr, 0).into())
        .expect("binding the listener");
    l.listen(4).expect("listen");
    let l: TcpListener = l.into();
    let port = l.local_addr().expect("local address").port();
    l.set_nonblocking(true).expect("nonblocking listener");

    let c = from
        .sockets
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("TCP socket in the connecting node");
    let dst = SocketAddrV4::new(to.addr, port);
    if c.connect_timeout(&dst.into(), Duration::from_secs(1))
        .is_err()
    {
        return false;
    }
    let mut c: TcpStream = c.into();
    use std::io::Write;
    if c.write_all(b"ping").is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(1))).ok();
                let mut buf = [0u8; 4];
                return s.read_exact(&mut buf).is_ok() && &buf == b"ping";
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return false,
        }
    }
}

/// Runs `edgesim exec NAME NODE -- ARGS…` and returns its output.
pub fn exec(scenario: &str, node: &str, args: &[&str]) -> Output {
    edgesim()
        .args(["exec", scenario, node, "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running edgesim exec")
}

/// Pings `target` `count` times from inside `from` (200 ms apart, 1 s timeout) and returns
/// how many replies came back.
pub fn ping(scenario: &str, from: &str, target: &str, count: u32) -> u32 {
    // iputils on the host (netns); busybox in the node image (docker), which has no `-n`.
    let docker = state::live_by_name(scenario)
        .iter()
        .any(|s| s.target.name() == "docker");
    let out = exec(
        scenario,
        from,
        &[
            "ping",
            if docker { "-q" } else { "-n" },
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            target,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    match received {
        Some(r) => r,
        None => panic!(
            "ping {target} from {from} printed no statistics (exit {:?})\nstdout: {text}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// An `edgesim run` in progress, followed through its `--output json` progress lines.
pub struct Run {
    child: Option<Child>,
    events: mpsc::Receiver<Value>,
    /// Every event received so far, for failure messages.
    pub seen: Vec<Value>,
    pub name: String,
    stderr: PathBuf,
    report: PathBuf,
}

/// How a run ended.
pub struct Finished {
    pub status: ExitStatus,
    pub report: Value,
    pub stderr: String,
}

impl Finished {
    /// The run's id, from its report.
    pub fn run_id(&self) -> String {
        self.report["run_id"]
            .as_str()
            .expect("report has run_id")
            .to_string()
    }
    /// Workload events of one workload (and node), in order.
    pub fn workload_events(&self, workload: &str) -> Vec<&Value> {
        self.report["workloads"]
            .as_array()
            .expect("report has workloads")
            .iter()
            .filter(|e| e["workload"] == workload)
            .collect()
    }
}

impl Run {
    /// Starts `edgesim run` on the scenario with JSON progress on stdout and the report and
    /// output inside the scenario's folder.
    pub fn start(sc: &Scenario) -> Run {
        let stderr = sc.stderr_path("run");
        let mut child = edgesim()
            .arg("run")
            .arg(&sc.path)
            .args(["--target", sc.target])
            .args(["--output", "json", "--report"])
            .arg(sc.report_path())
            .arg("--out")
            .arg(sc.out_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("creating the stderr log"))
            .spawn()
            .expect("starting edgesim run");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Run {
            child: Some(child),
            events: rx,
            seen: Vec::new(),
            name: sc.name.clone(),
            stderr,
            report: sc.report_path(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn context(&self) -> String {
        let events: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        format!(
            "events so far:\n  {}\nstderr of edgesim run:\n{}",
            events.join("\n  "),
            tail(&self.stderr)
        )
    }

    /// Waits for the next progress event that satisfies `pred`; panics after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "edgesim run: no {what} within {timeout:?}\n{}",
                    self.context()
                ),
            }
        }
    }

    /// Waits until the timeline starts (the lab is provisioned and workloads are ready);
    /// the timeline's t = 0 is about 20 ms later.
    pub fn timeline_started(&mut self) -> Instant {
        self.wait_for("start of the timeline", Duration::from_secs(60), |v| {
            v["event"] == "phase-started" && v["phase"] == "timeline"
        });
        Instant::now()
    }

    /// Waits for the next applied action with this verb (and revert flag); asserts it
    /// succeeded and returns its journal entry.
    pub fn action(&mut self, verb: &str, revert: bool) -> Value {
        let v = self.wait_for(
            &format!("`{verb}` action (revert: {revert})"),
            Duration::from_secs(60),
            |v| {
                v["event"] == "action"
                    && v["entry"]["verb"] == verb
                    && v["entry"]["revert"] == revert
            },
        );
        let entry = v["entry"].clone();
        assert!(
            entry["ok"] == true,
            "action failed: {entry}\n{}",
            self.context()
        );
        entry
    }

    /// The run's state (namespaces, nodes, cgroups), once ready.
    pub fn state(&self) -> RunState {
        wait_state(&self.name, Duration::from_secs(30))
    }

    /// Sends a signal to the `edgesim run` process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the run to exit (at most `timeout`) and reads its report.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for edgesim run") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "edgesim run did not exit within {timeout:?}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(v) = self.events.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(v);
        }
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let report = std::fs::read(&self.report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no JSON report at {} (exit {status})\n{}",
                    self.report.display(),
                    self.context()
                )
            });
        Finished {
            status,
            report,
            stderr,
        }
    }

    /// Kills the controller with SIGKILL (no teardown) and reaps it.
    pub fn sigkill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Run {
    /// A test that failed half-way still leaves nothing behind: stop the run gracefully,
    /// and if that does not work, kill it and clean up after it.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = edgesim().arg("cleanup").output();
    }
}

/// A lab started with `edgesim up`, taken down on drop.
pub struct Lab {
    pub name: String,
    pub state: RunState,
    up: bool,
}

impl Lab {
    pub fn up(sc: &Scenario) -> Lab {
        let out = edgesim()
            .arg("up")
            .arg(&sc.path)
            .args(["--target", sc.target])
            .arg("--out")
            .arg(sc.out_dir())
            .stdin(Stdio::null())
            .output()
            .expect("running edgesim up");
        assert!(
            out.status.success(),
            "edgesim up failed ({})\nstdout: {}\nstderr: {}\nlab log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&sc.out_dir().join("lab.log"))
        );
        let state = wait_state(&sc.name, Duration::from_secs(10));
        Lab {
            name: sc.name.clone(),
            state,
            up: true,
        }
    }

    pub fn peer(&self, node: &str) -> Peer {
        peer(&self.state, node)
    }

    /// Leaves the lab to the caller (no `edgesim down` on drop) and returns its state.
    pub fn into_state(mut self) -> RunState {
        self.up = false;
        self.state.clone()
    }

    /// `edgesim down`, then checks that nothing of the lab remains.
    pub fn down(mut self) {
        self.up = false;
        let out = edgesim()
            .args(["down", &self.name])
            .output()
            .expect("running edgesim down");
        assert!(
            out.status.success(),
            "edgesim down failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_gone(&self.state.run_id);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.up {
            let _ = edgesim().args(["down", &self.name]).output();
        }
    }
}

/// Processes that belong to run `run_id`: its workloads (their environment names the run)
/// and anything still in the run's cgroups.
pub fn run_processes(run_id: &str) -> Vec<String> {
    let env_mark = format!("EDGESIM_RUN={run_id}\0");
    let cg_mark = format!("/edgesim/{run_id}/");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let in_env = environ
            .windows(env_mark.len())
            .any(|w| w == env_mark.as_bytes());
        let cgroups = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if in_env || cgroups.contains(&cg_mark) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push(format!("pid {name}: {}", cmd.trim()));
        }
    }
    out
}

/// Everything run `run_id` could have left on the host.
pub fn leftovers(run_id: &str) -> Vec<String> {
    let mut left = Vec::new();
    for n in ns::list(&format!("edgesim-{run_id}-")) {
        left.push(format!("namespace /run/netns/{n}"));
    }
    if let Ok(rd) = std::fs::read_dir("/etc/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("edgesim-{run_id}-")) {
                left.push(format!("hosts folder /etc/netns/{n}"));
            }
        }
    }
    let mut cgroup_dirs = vec![PathBuf::from("/sys/fs/cgroup/edgesim").join(run_id)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            cgroup_dirs.push(e.path().join("edgesim").join(run_id));
        }
    }
    for d in cgroup_dirs {
        if d.exists() {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    let st = state::path_of(run_id);
    if st.exists() {
        left.push(format!("state file {}", st.display()));
    }
    if let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=edgesim.run={run_id}"),
        ])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            left.push(format!("docker container {id}"));
        }
    }
    left.extend(run_processes(run_id));
    left
}

/// Asserts that run `run_id` left nothing behind (processes get 5 s to finish dying).
pub fn assert_gone(run_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(run_id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} left these behind:\n  {}",
            left.join("\n  ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the host's own network looks like: links, routes and firewall.
#[derive(Debug, PartialEq, Eq)]
pub struct HostSnapshot(Vec<(String, String)>);

/// The `edgesim` cgroups (parents of every run's cgroup) that exist, one per line.
fn shared_cgroup_parents() -> String {
    let mut found: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("edgesim"))
                .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup/edgesim")))
                .filter(|p| p.is_dir())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.dedup();
    found.join("\n")
}

impl HostSnapshot {
    pub fn take() -> HostSnapshot {
        let cmds: [&[&str]; 5] = [
            &["ip", "-d", "link"],
            &["ip", "route", "show", "table", "all"],
            &["ip", "-6", "route", "show", "table", "all"],
            &["nft", "list", "ruleset"],
            &["ip", "netns", "list"],
        ];
        HostSnapshot(
            cmds.iter()
                .map(|c| {
                    let out = Command::new(c[0])
                        .args(&c[1..])
                        .output()
                        .expect("running a snapshot command");
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    if c[1] == "netns" {
                        // Other runs (other tests, other people) come and go; only this
                        // machine's own namespaces are compared here, runs via `leftovers`.
                        text = text
                            .lines()
                            .filter(|l| !l.starts_with("edgesim-"))
                            .collect::<Vec<_>>()
                            .join("\n");
                    }
                    (c.join(" "), text)
                })
                .chain(std::iter::once((
                    "edgesim's shared parent cgroups".to_string(),
                    shared_cgroup_parents(),
                )))
                .collect(),
        )
    }

    /// Panics with the lines that differ when `after` is not identical to `self`.
    pub fn assert_same(&self, after: &HostSnapshot, when: &str) {
        let mut diffs = Vec::new();
        for ((cmd, a), (_, b)) in self.0.iter().zip(&after.0) {
            if a != b {
                let la: BTreeSet<&str> = a.lines().collect();
                let lb: BTreeSet<&str> = b.lines().collect();
                let gone: Vec<&&str> = la.difference(&lb).collect();
                let new: Vec<&&str> = lb.difference(&la).collect();
                diffs.push(format!(
                    "`{cmd}` changed:\n    only before: {gone:?}\n    only after:  {new:?}"
                ));
            }
        }
        assert!(
            diffs.is_empty(),
            "the host changed {when}:\n  {}",
            diffs.join("\n  ")
        );
    }
}

/// Lines of a file, 0 when it does not exist yet.
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The 99.9 % two-sided normal approximation of a binomial interval for `n` trials with
/// success probability `p`: returns (low, high) bounds on the number of successes.
pub fn binomial_999(n: u32, p: f64) -> (f64, f64) {
    const Z: f64 = 3.2905; // two-sided 99.9 %
    let mean = f64::from(n) * p;
    let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
    (mean - Z * sd, mean + Z * sd)
}

/// Datagrams per direction in reachability checks.
pub const DATAGRAMS: u32 = 50;
/// Pings per direction in reachability checks.
pub const PINGS: u32 = 3;

/// What gets through between two nodes, each way: UDP datagrams counted at the receiver,
/// a TCP connection carrying bytes, ping replies (which need both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub udp_there: u32,
    pub udp_back: u32,
    pub tcp_there: bool,
    pub tcp_back: bool,
    pub ping_there: u32,
    pub ping_back: u32,
}

impl Reach {
    /// Everything gets through, both ways.
    pub const OPEN: Reach = Reach {
        udp_there: DATAGRAMS,
        udp_back: DATAGRAMS,
        tcp_there: true,
        tcp_back: true,
        ping_there: PINGS,
        ping_back: PINGS,
    };
    /// Nothing gets through, either way.
    pub const CUT: Reach = Reach {
        udp_there: 0,
        udp_back: 0,
        tcp_there: false,
        tcp_back: false,
        ping_there: 0,
        ping_back: 0,
    };
}

/// Measures [`Reach`] between `a` and `b` (all six checks at once, about 1.5 s).
pub fn reach(scenario: &str, a: &Peer, b: &Peer) -> Reach {
    std::thread::scope(|s| {
        let udp_there = s.spawn(|| udp_delivered(a, b, DATAGRAMS));
        let udp_back = s.spawn(|| udp_delivered(b, a, DATAGRAMS));
        let tcp_there = s.spawn(|| tcp_works(a, b));
        let tcp_back = s.spawn(|| tcp_works(b, a));
        let ping_there = s.spawn(|| ping(scenario, &a.name, &b.name, PINGS));
        let ping_back = s.spawn(|| ping(scenario, &b.name, &a.name, PINGS));
        Reach {
            udp_there: udp_there.join().expect("udp"),
            udp_back: udp_back.join().expect("udp"),
            tcp_there: tcp_there.join().expect("tcp"),
            tcp_back: tcp_back.join().expect("tcp"),
            ping_there: ping_there.join().expect("ping"),
            ping_back: ping_back.join().expect("ping"),
        }
    })
}

/// Removes whatever a killed run left, even when the test fails half-way; with a lab name,
/// first takes that lab down in case the test failed before killing its daemon.
pub struct CleanupOnDrop(pub Option<String>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some(lab) = &self.0 {
            let _ = edgesim().args(["down", lab]).output();
        }
        let _ = edgesim().arg("cleanup").output();
    }
}

/// Asserts that a check made for a phase of the timeline finished before the phase ended,
/// so that it really observed that phase.
pub fn assert_within(phase: &str, since: Instant, limit: Duration) {
    let took = since.elapsed();
    assert!(
        took < limit,
        "the checks of phase `{phase}` took {took:?}, past the next timeline action {limit:?} away: \
         they may have observed the wrong state (machine overloaded?)"
    );
}

/// A node's cgroup as the kernel shows it, on cgroup v1 (one folder per controller under
/// `/sys/fs/cgroup/<controller>/edgesim/<run>/<node>`) or v2 (`/sys/fs/cgroup/edgesim/…`).
pub struct NodeCgroup {
    rel: PathBuf,
    v2: bool,
}

impl NodeCgroup {
    pub fn of(st: &RunState, name: &str) -> NodeCgroup {
        let rel = match &st.target {
            edgesim::targets::state::TargetState::Netns(_) => {
                PathBuf::from(&netns_node(st, name).cgroup)
            }
            // The parent cgroup every container of the node shares.
            _ => PathBuf::from(format!("edgesim/{}/{name}", st.run_id)),
        };
        Self::at(rel, name)
    }

    /// The cgroup at `rel` (relative to the hierarchy roots).
    pub fn at(rel: PathBuf, name: &str) -> NodeCgroup {
        let v1 = Path::new("/sys/fs/cgroup/cpu").join(&rel);
        let v2 = Path::new("/sys/fs/cgroup").join(&rel);
        if v1.is_dir() {
            NodeCgroup { rel, v2: false }
        } else if v2.join("cgroup.procs").is_file() {
            NodeCgroup { rel, v2: true }
        } else {
            panic!(
                "node `{name}` has no cgroup at {} or {}",
                v1.display(),
                v2.display()
            )
        }
    }

    fn file(&self, controller: &str, file: &str) -> PathBuf {
        if self.v2 {
            Path::new("/sys/fs/cgroup").join(&self.rel).join(file)
        } else {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.rel)
                .join(file)
        }
    }

    fn read(&self, controller: &str, file: &str) -> String {
        let p = self.file(controller, file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// `None` for "max"/unlimited.
    fn limit(s: &str) -> Option<u64> {
        s.parse::<u64>().ok().filter(|v| *v < 1 << 62)
    }

    /// CFS quota (`None`: unlimited) and period, in µs.
    pub fn cpu(&self) -> (Option<u64>, u64) {
        if self.v2 {
            let s = self.read("cpu", "cpu.max");
            let (q, p) = s.split_once(' ').unwrap_or((&s, "100000"));
            (Self::limit(q), p.parse().expect("cpu.max period"))
        } else {
            let q: i64 = self.read("cpu", "cpu.cfs_quota_us").parse().expect("quota");
            let p = self
                .read("cpu", "cpu.cfs_period_us")
                .parse()
                .expect("period");
            (u64::try_from(q).ok(), p)
        }
    }

    pub fn memory(&self) -> Option<u64> {
        Self::limit(&self.read(
            "memory",
            if self.v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            },
        ))
    }

    /// Memory + swap limit where the kernel accounts swap (v1 `memsw`), else `None`.
    pub fn memory_and_swap(&self) -> Option<Option<u64>> {
        if self.v2 {
            return None;
        }
        let p = self.file("memory", "memory.memsw.limit_in_bytes");
        p.exists()
            .then(|| Self::limit(&self.read("memory", "memory.memsw.limit_in_bytes")))
    }

    pub fn pids_max(&self) -> Option<u64> {
        Self::limit(&self.read("pids", "pids.max"))
    }

    /// CPU time used so far by the cgroup's tasks.
    pub fn cpu_used(&self) -> Duration {
        if self.v2 {
            let s = self.read("cpu", "cpu.stat");
            let us = s
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.parse().ok())
                .expect("usage_usec in cpu.stat");
            Duration::from_micros(us)
        } else {
            Duration::from_nanos(
                self.read("cpuacct", "cpuacct.usage")
                    .parse()
                    .expect("cpuacct.usage"),
            )
        }
    }

    /// Whether the kernel reports the cgroup frozen.
    pub fn frozen(&self) -> bool {
        if self.v2 {
            self.read("cpu", "cgroup.events")
                .lines()
                .any(|l| l == "frozen 1")
        } else {
            self.read("freezer", "freezer.state") == "FROZEN"
        }
    }

    /// Processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        let s = self.read("pids", "cgroup.procs");
        s.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// CPUs' worth of time the cgroup used over `window` (measured, not assumed).
    pub fn cpu_rate(&self, window: Duration) -> f64 {
        let (u0, t0) = (self.cpu_used(), Instant::now());
        std::thread::sleep(window);
        let (u1, t1) = (self.cpu_used(), Instant::now());
        (u1 - u0).as_secs_f64() / (t1 - t0).as_secs_f64()
    }
}

/// SIGKILLs the lab daemon of `st` and waits until it is gone.
pub fn kill_lab_daemon(st: &RunState) {
    assert!(
        st.controller_alive(),
        "the lab daemon (pid {}) should be running",
        st.pid
    );
    // SAFETY: kill(2) on the lab daemon's pid, which the state file names and
    // `controller_alive` just matched against its start time.
    unsafe {
        libc::kill(st.pid as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.controller_alive() {
        assert!(Instant::now() < deadline, "the lab daemon survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ticker workload's log (one uptime reading per line, other lines ignored): how many ticks
/// it holds and its longest silence in seconds (printed: what a 3 s freeze looks like).
pub fn ticker_silence(log: &str) -> (usize, f64) {
    let ticks: Vec<f64> = log.lines().filter_map(|l| l.parse().ok()).collect();
    let gap = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    eprintln!(
        "ticker: {} ticks, longest silence {gap:.2} s (frozen 3 s)",
        ticks.len()
    );
    (ticks.len(), gap)
}
