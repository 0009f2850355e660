//! The device agent (`edgesim agent`) on boards made of network namespaces: a LAN namespace
//! with a bridge, and "boards" joined to it by veth pairs, each with its own address. The
//! agent runs inside a board's namespace as it would run on a Raspberry Pi (its own
//! interfaces, its own nftables table); the test speaks its JSON-lines protocol over pipes
//! or, in the SSH tests, over a real sshd running in the board's namespace.
//!
//! Effects are measured from inside the boards: ping replies counted, rates by iperf3, rules
//! and qdiscs listed; and every test checks the boards are left clean.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, BIN, ticker_silence};

/// A LAN namespace with a bridge, and boards on it (`10.201.0.<11+i>/24`), plus a controller
/// namespace (`10.201.0.1`). Removed on drop.
pub struct Lan {
    pub boards: Vec<String>,
    pub ctl: String,
    lan: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("ip netns exec runs")
}

impl Lan {
    pub fn new(tag: &str, boards: usize) -> Lan {
        let prefix = format!("edgesim-dev{}{tag}", std::process::id() % 100_000);
        let lan = format!("{prefix}-lan");
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        let join = |ns: &str, addr: &str, i: usize| {
            ip(&["netns", "add", ns]);
            let port = format!("p{i}");
            ip(&[
                "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ]);
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        };
        let ctl = format!("{prefix}-ctl");
        join(&ctl, "10.201.0.1/24", 0);
        let boards: Vec<String> = (0..boards)
            .map(|i| {
                let ns = format!("{prefix}-b{i}");
                join(&ns, &format!("10.201.0.{}/24", 11 + i), i + 1);
                ns
            })
            .collect();
        Lan { boards, ctl, lan }
    }

    /// The controller's namespace drops everything in and out (table `inet cut`): its
    /// control path to every board is cut, without an end of session reaching them.
    pub fn cut_controller(&self) {
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.ctl, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft runs");
        nft.stdin
            .take()
            .expect("piped")
            .write_all(b"table inet cut {\n chain o { type filter hook output priority 0; policy drop; }\n chain i { type filter hook input priority 0; policy drop; }\n}\n")
            .expect("nft reads");
        assert!(nft.wait().expect("nft ends").success());
    }

    /// The command lines of the processes in board `i`'s namespace (NULs as spaces).
    pub fn processes(&self, i: usize) -> Vec<String> {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.boards[i]])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&pids.stdout)
            .lines()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/cmdline", p.trim())).ok())
            .map(|c| c.replace('\0', " "))
            .collect()
    }

    /// The prefix of every namespace of this LAN (what `Drop` and leftover checks match).
    pub fn prefix(&self) -> &str {
        self.lan.trim_end_matches("-lan")
    }

    /// The namespace holding the LAN's bridge (`br0`).
    pub fn lan(&self) -> &str {
        &self.lan
    }

    pub fn addr(i: usize) -> String {
        format!("10.201.0.{}", 11 + i)
    }

    /// What `ping` on board `from` says on stderr when it sends to `to` (empty: every send
    /// went out without an error, whatever became of it).
    pub fn send_errors(&self, from: usize, to: &str) -> String {
        let out = in_ns(
            &self.boards[from],
            &["ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", to],
        );
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// Ping replies from board `from` to `to` out of `n` (10 ms apart).
    pub fn pings(&self, from: usize, to: &str, n: u32) -> u32 {
        let out = in_ns(
            &self.boards[from],
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &n.to_string(),
                "-i",
                "0.01",
                "-W",
                "1",
                to,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(',')
            .find_map(|p| p.trim().strip_suffix(" received"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether board `i` holds the agent's table or a non-default root qdisc.
    pub fn leftovers(&self, i: usize) -> Vec<String> {
        let mut v = Vec::new();
        let t = in_ns(&self.boards[i], &["nft", "list", "tables"]);
        for l in String::from_utf8_lossy(&t.stdout).lines() {
            if l.contains("edgesim") {
                v.push(l.to_string());
            }
        }
        let l = in_ns(&self.boards[i], &["ip", "-o", "link", "show"]);
        for l in String::from_utf8_lossy(&l.stdout).lines() {
            if l.contains(" esc-") {
                v.push(l.to_string());
            }
        }
        // Cells of agents with the default state file are pinned beside it.
        if let Ok(rd) = std::fs::read_dir("/run/edgesim") {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "cell") {
                    v.push(format!("cell {}", e.path().display()));
                }
            }
        }
        let q = in_ns(&self.boards[i], &["tc", "qdisc", "show", "dev", "eth0"]);
        for l in String::from_utf8_lossy(&q.stdout).lines() {
            if l.contains("htb") || l.contains("netem") || l.contains("tbf") {
                v.push(l.to_string());
            }
        }
        v
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.boards.iter().chain([&self.ctl, &self.lan]) {
            // Whatever still runs in there goes too: an sshd session whose client was cut off
            // would otherwise outlive the namespace (until TCP keepalive, hours later).
            let pids = Command::new("ip").args(["netns", "pids", ns]).output();
            for pid in pids
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An agent process speaking over pipes.
pub struct Agent {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    next: u64,
}

impl Agent {
    /// `edgesim agent` inside namespace `ns` (the command before it, e.g. `ssh …`, or none).
    pub fn start(prefix: &[&str], state: &Path) -> Agent {
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(BIN)
            .arg("agent")
            .arg("--state")
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("agent starts");
        Agent {
            stdin: child.stdin.take(),
            out: BufReader::new(child.stdout.take().expect("piped")),
            child,
            next: 1,
        }
    }

    /// The agent in namespace `ns`, in this host's mount namespace (as on a board: `ip netns
    /// exec` would give it a private one, where a cell's `/run/netns` mount stays hidden).
    pub fn in_ns(ns: &str, state: &Path) -> Agent {
        Agent::start(&["nsenter", &format!("--net=/run/netns/{ns}"), "--"], state)
    }

    /// Sends a request (an object with `op`) and returns its reply.
    pub fn call(&mut self, mut req: Value) -> Value {
        req["id"] = json!(self.next);
        self.next += 1;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{req}").expect("agent reads");
        stdin.flush().expect("agent reads");
        let v = self.line().expect("agent replies");
        assert_eq!(v["id"], req["id"], "{v}");
        v
    }

    /// The next line the agent writes, or `None` at its end.
    pub fn line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON line")),
        }
    }

    pub fn ok(&mut self, req: Value) -> Value {
        let v = self.call(req.clone());
        assert_eq!(v["ok"], true, "{req} → {v}");
        v
    }

    /// Waits for the process to exit; its code.
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.exit_code(Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn state_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state/agent.json")
}

/// Waits until `f` holds; how long that took, or `None` past `within`.
pub fn until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

#[test]
fn agent_applies_partitions_loss_and_rate_on_the_board_and_reverts_them() {
    let _g = common::serial();
    if !common::privileged() || !edgesim::testing::program("iperf3", "iperf3") {
        return;
    }
    let lan = Lan::new("a", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let hello = a.ok(json!({"op": "hello"}));
    let f = &hello["facts"];
    assert_eq!(
        f["protocol"],
        edgesim::targets::device::agent::PROTOCOL,
        "{f}"
    );
    assert!(
        f["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "eth0"),
        "{f}"
    );
    assert_eq!(f["capNetAdmin"], true, "{f}");
    assert!(f.get("nftablesError").is_none(), "{f}");
    let b = Lan::addr(1);
    assert_eq!(lan.pings(0, &b, 20), 20, "a clean LAN");

    // A one-way partition b → a, dropped where it arrives (on a): a's pings reach b but
    // their replies are dropped; a's sends never fail (silent loss, as on a real cut).
    let a_addr = format!("{}/32", Lan::addr(0));
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "blocks": [{"name": "partition b-a", "from": [format!("{b}/32")], "to": [a_addr]}]}));
    assert_eq!(lan.pings(0, &b, 10), 0, "partitioned");
    assert_eq!(lan.send_errors(0, &b), "", "the sender sees no error");
    assert!(!lan.leftovers(0).is_empty(), "the table is in force");
    assert!(state_file(&dir).exists(), "what is in force is recorded");

    // Replaced by 30 % loss of what arrives from b (nftables numgen, receiver side).
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "incoming": [{"addr": b, "params": {"loss": 0.3}}]}));
    let got = lan.pings(0, &b, 200);
    assert!(
        (110..=170).contains(&got),
        "30 % loss: {got} of 200 replies"
    );

    // 20 mbit toward b, measured by iperf3 from a (b runs the server).
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "peers": [{"addr": b, "params": {"rate": 20_000_000}}]}));
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.boards[1],
            "iperf3",
            "-s",
            "-1",
            "-B",
            &b,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(&lan.boards[0], &["iperf3", "-c", &b, "-t", "2", "-J"]);
    let _ = server.wait();
    let r: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let bps = r["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(
        (14e6..=21e6).contains(&bps),
        "20 mbit shaped on the board: {bps:.0} bit/s"
    );
    // Traffic to another address is not shaped: the controller's namespace answers as ever.
    assert_eq!(lan.pings(0, "10.201.0.1", 10), 10);

    let r = a.ok(json!({"op": "revert"}));
    assert!(!r["reverted"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    assert!(!state_file(&dir).exists());
    assert_eq!(lan.pings(0, &b, 20), 20, "healed");
    a.ok(json!({"op": "bye"}));
    assert_eq!(a.exit_code(Duration::from_secs(5)), Some(0));
}

#[test]
fn agent_reverts_when_the_lease_expires_and_after_a_crash() {
    let _g = common::serial();
    if !common::privileged() {
        return;
    }
    let lan = Lan::new("l", 2);
    let dir = tempfile::tempdir().unwrap();
    let b = Lan::addr(1);
    let block = json!([{"name": "isolate", "from": [], "to": []}]);

    // The controller goes silent (stdin stays open): reverted within the lease (+ 1 s).
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 1000, "blocks": block}));
    let applied = Instant::now();
    assert_eq!(lan.pings(0, &b, 3), 0);
    let event = a.line().expect("the agent says why it stops");
    let took = applied.elapsed();
    assert_eq!(event["event"], "lease-expired", "{event}");
    assert!(event["silentMs"].as_u64().unwrap() >= 1000, "{event}");
    assert_eq!(a.exit_code(Duration::from_secs(5)), Some(3));
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    eprintln!("lease 1 s: reverted {took:?} after the last request");
    assert!(took < Duration::from_secs(4), "reverted in {took:?}");
    assert_eq!(lan.pings(0, &b, 5), 5);

    // The session ends (stdin closed): reverted at once.
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 60000, "blocks": block}));
    drop(a.stdin.take());
    assert_eq!(a.exit_code(Duration::from_secs(5)), Some(0));
    assert_eq!(lan.leftovers(0), Vec::<String>::new());

    // SIGKILL mid-partition: the rules stay (nothing runs to revert them) until an agent
    // starts again, which reverts them first and says so.
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    a.ok(
        json!({"op": "apply", "iface": "eth0", "leaseMs": 60000, "blocks": block,
        "peers": [{"addr": b, "params": {"rate": 5_000_000}}]}),
    );
    let pid = a.child.id();
    // `ip netns exec` execs the agent: the child is the agent itself.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = a.child.wait();
    assert_eq!(lan.leftovers(0).len(), 2, "{:?}", lan.leftovers(0));
    assert!(state_file(&dir).exists());
    let mut again = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let hello = again.ok(json!({"op": "hello"}));
    let rec = hello["facts"]["recovered"].as_array().unwrap();
    assert_eq!(rec.len(), 2, "{hello}");
    assert!(
        rec[0].as_str().unwrap().contains(&format!("pid {pid}")),
        "{hello}"
    );
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    assert_eq!(lan.pings(0, &b, 5), 5);
    again.ok(json!({"op": "bye"}));
    drop(a);
}

/// A cell (what a board without netem gets): linkem delays what the cell sends, a listener
/// in the cell is reached at the board's address, the board's own sshd port is not; after
/// SIGKILL the relay is gone with the agent, and the next agent removes the named cell and
/// restores `ip_forward`.
#[test]
fn agent_cell_carries_delay_and_a_crashed_one_is_removed() {
    let _g = common::serial();
    if !common::privileged() {
        return;
    }
    let lan = Lan::new("k", 2);
    let dir = tempfile::tempdir().unwrap();
    let (a0, b) = (Lan::addr(0), Lan::addr(1));
    let forward = || {
        String::from_utf8_lossy(
            &in_ns(&lan.boards[0], &["sysctl", "-n", "net.ipv4.ip_forward"]).stdout,
        )
        .trim()
        .to_string()
    };
    // (A new namespace may inherit forwarding on: the board's is off, as on most boards.)
    in_ns(&lan.boards[0], &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(forward(), "0");
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let hello = a.ok(json!({"op": "hello"}));
    let cell = hello["facts"]["cellNetns"].as_str().unwrap().to_string();
    assert_eq!(
        Path::new(&cell),
        state_file(&dir).with_extension("cell"),
        "{hello}"
    );
    let in_cell = |cmd: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net={cell}"))
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    };
    a.ok(
        json!({"op": "apply", "iface": "eth0", "leaseMs": 60000, "cell": a0, "seed": 3,
        "peers": [{"addr": b, "params": {"delay": "25ms"}}]}),
    );
    assert_eq!(forward(), "1");
    let ping = |ns: Option<&str>| {
        let cmd = ["ping", "-c", "10", "-i", "0.05", "-q", &b];
        let o = match ns {
            Some(ns) => in_ns(ns, &cmd),
            None => in_cell(&cmd),
        };
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        t.split("= ")
            .nth(1)
            .and_then(|r| r.split('/').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{ns:?}: {t} {}", String::from_utf8_lossy(&o.stderr)))
    };
    let from_cell = ping(None);
    let from_board = ping(Some(&lan.boards[0]));
    eprintln!(
        "cell: 25 ms asked, RTT {from_cell:.2} ms from the cell, {from_board:.2} ms from the board itself"
    );
    assert!((25.0..40.0).contains(&from_cell), "{from_cell}");
    assert!(
        from_board < 10.0,
        "the board's own traffic is not the cell's: {from_board}"
    );
    // A listener in the cell answers at the board's address; port 22 (the board's sshd,
    // which the agent's NAT leaves alone) stays the board's.
    let serve = |port: u16, what: &str| {
        format!(
            "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', {port})); s.listen(); c,_=s.accept(); c.sendall(b'{what}'); c.close()"
        )
    };
    let mut web = Command::new("nsenter")
        .arg(format!("--net={cell}"))
        .args(["--", "python3", "-c", &serve(8099, "from-the-cell")])
        .spawn()
        .unwrap();
    let mut ssh = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.boards[0],
            "python3",
            "-c",
            &serve(22, "from-the-board"),
        ])
        .spawn()
        .unwrap();
    let reach = |port: u16, want: &str| {
        until(Duration::from_secs(5), || {
            let o = in_ns(
                &lan.boards[1],
                &[
                    "python3",
                    "-c",
                    &format!(
                        "import socket; s=socket.create_connection(('{a0}', {port}), 1); print(s.recv(64).decode())"
                    ),
                ],
            );
            String::from_utf8_lossy(&o.stdout).contains(want)
        })
        .is_some()
    };
    assert!(
        reach(8099, "from-the-cell"),
        "a connection to the board's address reaches the cell"
    );
    assert!(
        reach(22, "from-the-board"),
        "its SSH port is the board's own"
    );
    let _ = web.wait();
    let _ = ssh.wait();
    let pid = a.child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = a.child.wait();
    // The kernel frees the relay's namespace, and its veth pairs, after its last process.
    let freed = until(Duration::from_secs(10), || {
        !lan.leftovers(0).iter().any(|l| l.contains("esc-h"))
    });
    eprintln!("the relay's links were gone {freed:?} after the agent's SIGKILL");
    assert!(
        freed.is_some(),
        "the relay went with its agent: {:?}",
        lan.leftovers(0)
    );
    let left = lan.leftovers(0);
    assert!(Path::new(&cell).exists(), "the cell stays pinned: {left:?}");
    let mut again = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let hello = again.ok(json!({"op": "hello"}));
    let rec: Vec<&str> = hello["facts"]["recovered"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        rec.contains(&format!("the cell {cell}").as_str()),
        "{hello}"
    );
    assert!(rec.contains(&"net.ipv4.ip_forward = 0"), "{hello}");
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    assert!(!Path::new(&cell).exists(), "the cell is gone");
    assert_eq!(forward(), "0");
    again.ok(json!({"op": "bye"}));
}

#[test]
fn agent_refuses_bad_requests_without_changing_anything() {
    let _g = common::serial();
    if !common::privileged() {
        return;
    }
    let lan = Lan::new("r", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let v = a.call(json!({"op": "launch-missiles"}));
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("bad request"), "{v}");
    let v = a.call(json!({"op": "apply", "iface": "nope0", "leaseMs": 5000,
        "peers": [{"addr": "10.201.0.99", "params": {"rate": 1000000}}]}));
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope0"), "{v}");
    let v = a.call(json!({"op": "apply", "iface": "eth0", "leaseMs": 5000,
        "peers": [{"addr": "10.201.0.99", "params": {"loss": 0.2}}]}));
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("incoming"), "{v}");
    assert_eq!(
        lan.leftovers(0),
        Vec::<String>::new(),
        "refused before anything changed"
    );
    a.ok(json!({"op": "revert"}));
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    a.ok(json!({"op": "bye"}));
}

/// A real sshd in a board's namespace, with per-test host and user keys.
pub struct Sshd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
    made_run_sshd: bool,
}

pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "edgesim-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
}

/// `ADDR TYPE KEY` for the public key in `pub_file`.
fn known_hosts_line(addr: &str, pub_file: &Path) -> String {
    let text = std::fs::read_to_string(pub_file).expect("test fixture");
    let mut p = text.split_whitespace();
    let (kt, kv) = (p.next().expect("key type"), p.next().expect("key"));
    format!("{addr} {kt} {kv}\n")
}

impl Sshd {
    /// The board as an inventory host named `name`, read from a written inventory file.
    pub fn host(&self, name: &str) -> edgesim::targets::device::inventory::InventoryHost {
        let file = self.dir.path().join("inventory.yaml");
        std::fs::write(&file, self.inventory(name)).expect("test fixture");
        let inv = edgesim::targets::device::inventory::Inventory::load(&file).expect("reads");
        inv.hosts[name].clone()
    }

    pub fn start(board_ns: &str, addr: &str) -> Sshd {
        let dir = tempfile::tempdir().expect("test fixture");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("test fixture");
        std::fs::write(
            d.join("known_hosts"),
            known_hosts_line(addr, &d.join("host_key.pub")),
        )
        .expect("test fixture");
        let cfg = format!(
            "Port 22\nListenAddress {addr}\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel FATAL\n",
            hk = d.join("host_key").display(),
            pid = d.join("sshd.pid").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), cfg).expect("test fixture");
        // sshd's privilege separation directory.
        let made_run_sshd = !Path::new("/run/sshd").exists();
        if made_run_sshd {
            std::fs::create_dir_all("/run/sshd").expect("test fixture");
        }
        // In the board's network namespace but this host's mount namespace, as a board's sshd
        // sees its own /sys (with the cgroup hierarchies) and /run: `ip netns exec` would
        // give it a private mount namespace with a bare sysfs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{board_ns}"))
            .args(["--", "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sshd starts");
        let s = Sshd {
            child,
            dir,
            addr: addr.to_string(),
            made_run_sshd,
        };
        let up = until(Duration::from_secs(10), || {
            in_ns(board_ns, &["ss", "-Hltn", "sport", "=", ":22"])
                .stdout
                .iter()
                .any(|_| true)
        });
        assert!(up.is_some(), "sshd listens");
        s
    }

    /// The inventory entry of this board, as a user would write it.
    pub fn inventory(&self, name: &str) -> String {
        let d = self.dir.path();
        format!(
            "all:\n  hosts:\n    {name}:\n      ansible_host: {addr}\n      ansible_user: root\n      ansible_ssh_private_key_file: {key}\n      edgesim_known_hosts_file: {kh}\n      edgesim_cache_dir: {cache}\n      edgesim_profile: raspberry-pi-5-8gb\n",
            addr = self.addr,
            key = d.join("user_key").display(),
            kh = d.join("known_hosts").display(),
            cache = d.join("cache").display(),
        )
    }

    /// The plain `ssh` command line for this board (from the controller's namespace).
    pub fn ssh_args(&self, ctl_ns: &str) -> Vec<String> {
        let d = self.dir.path();
        [
            "ip",
            "netns",
            "exec",
            ctl_ns,
            "ssh",
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "-i".into(),
            d.join("user_key").display().to_string(),
            format!("root@{}", self.addr),
        ])
        .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

/// Runs `f` on a runtime of its own, on a thread inside namespace `ns` (the controller's
/// laptop): processes it spawns (ssh) live there too.
pub fn controller<R: Send>(ns: &str, f: impl AsyncFnOnce() -> R + Send) -> R {
    edgesim::host::ns::run_in(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test fixture")
            .block_on(f())
    })
    .expect("test fixture")
}

fn ssh_gate() -> bool {
    common::privileged()
        && edgesim::testing::gate(
            "ssh",
            Path::new("/usr/sbin/sshd").exists() && edgesim::testing::program("ssh", "ssh"),
            "needs openssh-server (/usr/sbin/sshd) and openssh-client",
        )
}

#[test]
fn over_ssh_the_management_connection_survives_a_full_partition_of_its_board() {
    use edgesim::targets::device::agent::{Desired, Request, WireBlock};
    use edgesim::targets::device::transport::{self, AgentConn, ConnectOptions};
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("s", 2);
    let sshd = Sshd::start(&lan.boards[0], &Lan::addr(0));
    let host = sshd.host("pi-1");
    let b = Lan::addr(1);
    let ctl = lan.ctl.clone();
    let bin = PathBuf::from(BIN);
    let state = sshd.dir.path().join("agent-state.json");
    let (facts, during, after_heal) = controller(&ctl, async || {
        let opts = ConnectOptions::default();
        let board = transport::connect(&host, &opts).await.expect("connects");
        let remote = board.upload_agent(&bin).await.expect("uploads");
        // Uploaded once: a second upload finds it by hash.
        assert_eq!(board.upload_agent(&bin).await.unwrap(), remote);
        let mut child = board
            .session
            .command(&remote)
            .arg("agent")
            .arg("--state")
            .arg(state.display().to_string())
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .spawn()
            .await
            .expect("agent starts");
        let (w, r) = (
            child.stdin().take().unwrap(),
            child.stdout().take().unwrap(),
        );
        let mut agent = AgentConn::new(w, r);
        let hello = agent.call(Request::Hello).await.unwrap();
        let facts = hello.facts.unwrap();
        // Everything in and out of the board is dropped, but for the SSH connection.
        let isolate = Desired {
            iface: "eth0".into(),
            lease_ms: 10_000,
            blocks: vec![WireBlock {
                name: "isolate pi-1".into(),
                from: vec![],
                to: vec![],
            }],
            ..Desired::default()
        };
        let r = agent.call(Request::Apply(isolate)).await.unwrap();
        assert!(r.ok, "{r:?}");
        let mut during = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let r = agent.call(Request::Heartbeat).await.unwrap();
            assert!(r.ok);
            during.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A second command over the same master connection works too.
        let uname = board.sh("uname -m").await.unwrap();
        assert!(!uname.trim().is_empty());
        let r = agent.call(Request::Bye).await.unwrap();
        assert!(r.ok && !r.reverted.is_empty(), "{r:?}");
        let after = board.sh("echo ok").await.unwrap();
        drop(agent);
        let _ = child.wait().await;
        board.close().await.unwrap();
        (facts, during, after)
    });
    // This "board" is the test host: checked against the Pi profile the inventory gives it,
    // it is reported as what it is, before anything would change.
    let pi = edgesim::profile::ProfileSet::builtin()
        .unwrap()
        .get("raspberry-pi-5-8gb")
        .unwrap()
        .clone();
    let needs = edgesim::targets::device::Needs {
        firewall: true,
        ..Default::default()
    };
    let problems = edgesim::targets::device::check_board("pi-1", &facts, &pi, needs);
    if std::env::consts::ARCH == "x86_64" {
        assert!(
            problems
                .iter()
                .any(|p| p.contains("amd64 but its profile is arm64")),
            "{problems:#?}"
        );
    }
    assert!(
        !problems.iter().any(|p| p.contains("nftables")),
        "{problems:#?}"
    );
    let m = facts
        .management
        .expect("the agent knows its SSH connection");
    assert_eq!(m.local.to_string(), format!("{}:22", Lan::addr(0)));
    assert_eq!(m.remote.ip().to_string(), "10.201.0.1");
    eprintln!("heartbeat round trips during the partition: {during:?}");
    assert_eq!(after_heal.trim(), "ok");
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    assert_eq!(lan.pings(0, &b, 5), 5);
}

#[test]
fn over_ssh_a_wrong_host_key_is_refused() {
    use edgesim::targets::device::transport::{self, ConnectOptions};
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("k", 1);
    let sshd = Sshd::start(&lan.boards[0], &Lan::addr(0));
    // Another key under the board's address.
    let other = sshd.dir.path().join("other_key");
    keygen(&other);
    let kh = sshd.dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        known_hosts_line(&Lan::addr(0), &other.with_extension("pub")),
    )
    .unwrap();
    let host = sshd.host("pi-1");
    let ctl = lan.ctl.clone();
    let refusal = || {
        controller(&ctl, async || {
            transport::connect(&host, &ConnectOptions::default())
                .await
                .err()
                .map(|e| e.to_string())
        })
        .expect("refused")
    };
    let err = refusal();
    assert!(err.contains("refused") && err.contains("host key"), "{err}");
    // An empty known-hosts file: unknown is refused too.
    std::fs::write(&kh, "").unwrap();
    let err = refusal();
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn over_ssh_the_board_reverts_when_its_controller_is_killed_or_cut_off() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("c", 2);
    let sshd = Sshd::start(&lan.boards[0], &Lan::addr(0));
    let b = Lan::addr(1);
    let state = sshd.dir.path().join("agent-state.json");
    let args = sshd.ssh_args(&lan.ctl);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let apply = json!({"op": "apply", "iface": "eth0", "leaseMs": 1500,
        "blocks": [{"name": "partition", "from": [format!("{b}/32")], "to": [format!("{}/32", Lan::addr(0))]}]});

    // SIGKILL of the controller's ssh: sshd sees the connection close, the agent's stdin
    // ends, and the board reverts at once.
    let mut a = Agent::start(&argv, &state);
    a.ok(json!({"op": "hello"}));
    a.ok(apply.clone());
    assert_eq!(lan.pings(0, &b, 3), 0, "partitioned");
    let t = Instant::now();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let killed = until(Duration::from_secs(10), || lan.leftovers(0).is_empty())
        .expect("reverted after the controller died");
    eprintln!("controller SIGKILLed: board reverted after {killed:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(lan.pings(0, &b, 5), 5);

    // The management path is cut (the controller's namespace drops everything): no
    // end-of-session reaches the agent, its lease (1.5 s) runs out.
    let mut a = Agent::start(&argv, &state);
    a.ok(json!({"op": "hello"}));
    a.ok(apply);
    lan.cut_controller();
    let t = Instant::now();
    let lapsed = until(Duration::from_secs(15), || lan.leftovers(0).is_empty())
        .expect("reverted after the lease");
    eprintln!("management path cut: board reverted after {lapsed:?} (lease 1.5 s)");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "not before the lease"
    );
    assert_eq!(lan.pings(0, &b, 5), 5);
    let _ = a.child.kill();
}

/// Median RTT of `n` pings from board `from` to `to`, in milliseconds.
fn rtt_ms(lan: &Lan, from: usize, to: &str, n: u32) -> f64 {
    let out = in_ns(
        &lan.boards[from],
        &[
            "ping",
            "-n",
            "-c",
            &n.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            to,
        ],
    );
    let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!v.is_empty(), "no replies");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Delay needs sch_netem, which this CI kernel lacks: this runs in tests/vm (Debian's stock
/// kernel) and wherever netem exists.
#[test]
fn agent_delays_traffic_to_one_peer_with_netem() {
    let _g = common::serial();
    if !common::privileged() || !edgesim::testing::netem() {
        return;
    }
    let lan = Lan::new("n", 2);
    let dir = tempfile::tempdir().unwrap();
    let b = Lan::addr(1);
    let base = rtt_ms(&lan, 0, &b, 20);
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    assert_eq!(a.ok(json!({"op": "hello"}))["facts"]["netem"], true);
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "peers": [{"addr": b, "params": {"delay": "30ms"}}]}));
    let delayed = rtt_ms(&lan, 0, &b, 20);
    let other = rtt_ms(&lan, 0, "10.201.0.1", 10);
    eprintln!(
        "rtt to b: {base:.3} ms → {delayed:.3} ms with 30 ms; to the controller {other:.3} ms"
    );
    // One direction is delayed (a's egress toward b): the round trip grows by 30 ms.
    assert!(
        delayed - base > 29.0 && delayed - base < 36.0,
        "{base} → {delayed}"
    );
    assert!(other < base + 5.0, "other peers are not delayed: {other}");
    // Adding a partition leaves the delay class alone, and reverting removes both.
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "peers": [{"addr": b, "params": {"delay": "30ms"}}],
        "blocks": [{"name": "cut", "from": ["10.201.0.1/32"], "to": []}]}));
    assert_eq!(lan.pings(0, "10.201.0.1", 3), 0);
    assert!(rtt_ms(&lan, 0, &b, 10) - base > 29.0);
    a.ok(json!({"op": "bye"}));
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
}

/// A scenario's plan carried onto boards: each board's agent gets `device::desired_for`
/// (shaping of what it sends, drops of what it receives), and the effects between boards are
/// those the scenario describes.
#[test]
fn a_scenario_plan_on_two_boards_gives_the_scenario_links() {
    use edgesim::scenario::plan::{Block, LinkParams};
    use edgesim::scenario::validate::{Capabilities, Overrides, build, parse};
    let _g = common::serial();
    if !common::privileged() || !edgesim::testing::program("iperf3", "iperf3") {
        return;
    }
    let text = "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: boards}\nspec:\n  duration: 10s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, rate: 10mbit, loss: 20%}\n  nodes:\n    - {name: sink, site: cloud, profile: cloud-small}\n    - {name: pi, site: factory, profile: raspberry-pi-5-8gb}\n";
    let f = Path::new("boards.yaml");
    let sc = parse(f, text).unwrap();
    let plan = build(
        f,
        text,
        &sc,
        edgesim::profile::ProfileSet::builtin().unwrap(),
        &Capabilities::all("netns"),
        &Overrides::default(),
    )
    .unwrap()
    .plan;
    let lan = Lan::new("p", 2);
    let addrs: Vec<std::net::IpAddr> = (0..2).map(|i| Lan::addr(i).parse().unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::in_ns(&lan.boards[i], &dir.path().join(format!("s{i}.json"))))
        .collect();
    let apply = |agents: &mut Vec<Agent>,
                 links: &[(LinkParams, LinkParams)],
                 parts: &std::collections::BTreeMap<String, Vec<Block>>| {
        for (i, a) in agents.iter_mut().enumerate() {
            let d = edgesim::targets::device::desired_for(
                &plan,
                links,
                parts,
                &addrs,
                i,
                "eth0",
                Duration::from_secs(30),
            );
            let mut req = serde_json::to_value(&d).unwrap();
            req["op"] = json!("apply");
            a.ok(req);
        }
    };
    let baseline = plan.baseline_links();
    apply(&mut agents, &baseline, &Default::default());
    // 20 % each way: about 64 % of echoes come back.
    let got = lan.pings(1, &Lan::addr(0), 300);
    assert!(
        (150..=230).contains(&got),
        "20 % loss each way: {got} of 300"
    );
    // The uplink impaired to no loss (what an `impair` action would do): its rate stays.
    // (Under 20 % loss iperf3's own TCP control connection may time out.)
    let lossless: Vec<(LinkParams, LinkParams)> = baseline
        .iter()
        .map(|(u, d)| {
            (
                LinkParams { loss: 0.0, ..*u },
                LinkParams { loss: 0.0, ..*d },
            )
        })
        .collect();
    apply(&mut agents, &lossless, &Default::default());
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lan.boards[0], "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // UDP at 30 mbit offered: what arrives is the 10 mbit of the uplink.
    let out = in_ns(
        &lan.boards[1],
        &[
            "iperf3",
            "-u",
            "-b",
            "30M",
            "-c",
            &Lan::addr(0),
            "-t",
            "2",
            "-J",
        ],
    );
    let _ = server.wait();
    let r: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    // The receiver's rate (iperf3 3.12+: `sum_received`; older: `sum` less its loss).
    let end = &r["end"];
    let delivered = end["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| {
            let sum = &end["sum"];
            Some(sum["bits_per_second"].as_f64()? * (1.0 - sum["lost_percent"].as_f64()? / 100.0))
        })
        .unwrap_or_else(|| panic!("no rate: {}", r["error"]));
    assert!(
        (8.0e6..=10.5e6).contains(&delivered),
        "10 mbit: {delivered:.0} bit/s ({end})"
    );
    // The scenario's partition pi ↛ sink.
    let mut parts = std::collections::BTreeMap::new();
    parts.insert(
        "cut".to_string(),
        vec![Block {
            from: vec![1],
            to: vec![0],
        }],
    );
    apply(&mut agents, &baseline, &parts);
    assert_eq!(lan.pings(1, &Lan::addr(0), 20), 0);
    assert_eq!(
        lan.send_errors(1, &Lan::addr(0)),
        "",
        "silent loss for the sender"
    );
    for a in &mut agents {
        a.ok(json!({"op": "bye"}));
    }
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
    assert_eq!(lan.leftovers(1), Vec::<String>::new());
}

/// Probes run by the agent from the board itself: a partition on the board shows in their
/// samples, which come back as the scenario's probes would.
#[test]
fn agent_probes_from_the_board_see_its_partition() {
    let _g = common::serial();
    if !common::privileged() || !edgesim::testing::program("python", "python3") {
        return;
    }
    let lan = Lan::new("o", 2);
    let dir = tempfile::tempdir().unwrap();
    let b = Lan::addr(1);
    let mut web = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.boards[1],
            "python3",
            "-m",
            "http.server",
        ])
        .args(["8080", "--bind", &b])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until(Duration::from_secs(10), || {
        !in_ns(&lan.boards[1], &["ss", "-Hltn", "sport", "=", ":8080"])
            .stdout
            .is_empty()
    })
    .expect("the web server listens");
    let mut a = Agent::in_ns(&lan.boards[0], &state_file(&dir));
    let t0 = Instant::now() + Duration::from_millis(100);
    a.ok(json!({"op": "probes", "startInMs": 100, "durationMs": 2400, "probes": [
        {"name": "ping-b", "type": "ping", "addr": b, "everyMs": 50, "timeoutMs": 300},
        {"name": "web-b", "type": "http", "addr": format!("{b}:8080"), "host": b, "path": "/",
         "expectStatus": 200, "everyMs": 100, "timeoutMs": 300},
        {"name": "closed", "type": "tcp", "addr": format!("{b}:9"), "everyMs": 200, "timeoutMs": 300}
    ]}));
    // From 0.8 s to 1.6 s on the probes' clock, what b sends is dropped on a.
    std::thread::sleep((t0 + Duration::from_millis(800)).saturating_duration_since(Instant::now()));
    a.ok(json!({"op": "apply", "iface": "eth0", "leaseMs": 30000,
        "blocks": [{"name": "partition b-a", "from": [format!("{b}/32")], "to": []}]}));
    std::thread::sleep(
        (t0 + Duration::from_millis(1600)).saturating_duration_since(Instant::now()),
    );
    a.ok(json!({"op": "revert"}));
    std::thread::sleep(
        (t0 + Duration::from_millis(2800)).saturating_duration_since(Instant::now()),
    );
    let r = a.ok(json!({"op": "probe-results"}));
    let samples = r["samples"].as_array().expect("samples per probe");
    assert_eq!(samples.len(), 3, "{r}");
    // ok/failed counts in [0, 0.7) s, [0.9, 1.5) s and [1.8, 2.4) s of each probe.
    let count = |p: usize, from: f64, to: f64| {
        let v: Vec<bool> = samples[p]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                let t = s["tUs"].as_f64().unwrap() / 1e6;
                t >= from && t < to
            })
            .map(|s| s["ok"].as_bool().unwrap())
            .collect();
        (
            v.iter().filter(|x| **x).count(),
            v.iter().filter(|x| !**x).count(),
        )
    };
    for p in [0, 1] {
        let (before, during, after) = (count(p, 0.0, 0.7), count(p, 0.9, 1.5), count(p, 1.8, 2.4));
        eprintln!("probe {p}: before {before:?}, during {during:?}, after {after:?} (ok, failed)");
        assert!(before.0 > 0 && before.1 == 0, "{before:?}");
        assert!(during.0 == 0 && during.1 > 0, "{during:?}");
        assert!(after.0 > 0 && after.1 == 0, "{after:?}");
    }
    let closed = &samples[2].as_array().unwrap()[0];
    assert_eq!(closed["ok"], false);
    assert!(
        closed["error"].as_str().unwrap().contains("refused"),
        "{closed}"
    );
    a.ok(json!({"op": "bye"}));
    let _ = web.kill();
    let _ = web.wait();
    assert_eq!(lan.leftovers(0), Vec::<String>::new());
}

/// A profile shaped like this host, so namespace boards (which are this host) pass the
/// pre-run check the way a real Pi passes its own profile.
pub fn this_host_profile(dir: &Path) -> PathBuf {
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("test fixture")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("test fixture");
    let cores = std::thread::available_parallelism()
        .expect("test fixture")
        .get();
    let arch = if std::env::consts::ARCH == "aarch64" {
        "arm64"
    } else {
        "amd64"
    };
    let pdir = dir.join("profiles");
    std::fs::create_dir_all(&pdir).expect("test fixture");
    std::fs::write(
        pdir.join("this-host.yaml"),
        format!(
            "apiVersion: edgesim.dev/v1alpha1\nkind: HardwareProfile\nmetadata:\n  name: this-host\n  description: the test host as a board\nspec:\n  arch: {arch}\n  cpu: {{model: test host, cores: {cores}, clockGHz: 2.0, relativeSpeed: 1.0}}\n  memory: {{total: {mem_kib}Ki, reserved: 256Mi}}\n  storage: {{kind: nvme, readMBps: 1000, writeMBps: 1000, readIops: 10000, writeIops: 10000}}\n  network: {{nic: 1gbit}}\n  kernel: {{netem: false}}\n"
        ),
    )
    .expect("test fixture");
    pdir
}

/// `edgesim run --target device` from the controller's namespace `ctl`.
pub fn device_run(
    ctl: &str,
    inventory: &Path,
    profiles: &Path,
    report: &Path,
    out: &Path,
    scenario: &Path,
) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ctl, BIN, "run", "--target", "device"])
        .arg("--inventory")
        .arg(inventory)
        .arg("--profiles")
        .arg(profiles)
        .arg("--report")
        .arg(report)
        .arg("--out")
        .arg(out)
        .arg(scenario);
    c
}

/// A real sshd on each of `lan`'s boards, and an inventory naming them `names` (user root,
/// profile `this-host`).
pub fn namespace_boards(lan: &Lan, names: &[&str], dir: &Path) -> (Vec<Sshd>, PathBuf) {
    let sshds: Vec<Sshd> = (0..names.len())
        .map(|i| Sshd::start(&lan.boards[i], &Lan::addr(i)))
        .collect();
    let mut inv =
        String::from("all:\n  vars: {ansible_user: root, edgesim_profile: this-host}\n  hosts:\n");
    for (name, s) in names.iter().zip(&sshds) {
        let d = s.dir.path();
        // The namespace boards share this host's filesystem: their caches go with the test.
        inv.push_str(&format!(
            "    {name}:\n      ansible_host: {}\n      ansible_ssh_private_key_file: {}\n      edgesim_known_hosts_file: {}\n      edgesim_cache_dir: {}\n",
            s.addr,
            d.join("user_key").display(),
            d.join("known_hosts").display(),
            dir.join("cache").display()
        ));
    }
    let inventory = dir.join("inventory.yaml");
    std::fs::write(&inventory, inv).expect("test fixture");
    (sshds, inventory)
}

/// The quickstart's network and timeline on three namespace boards, each with a real sshd
/// and its own agent: `edgesim run --target device --inventory` gives the verdicts netns
/// gives, and every board is left clean.
#[test]
fn a_scenario_runs_on_boards_with_the_device_target() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("t", 3);
    let names = ["sink", "gw-1", "gw-2"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("boards.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: boards}\nspec:\n  seed: 7\n  duration: 8s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, loss: 0.5%, rate: 20mbit}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw, count: 2, site: factory, profile: this-host}\n  timeline:\n    - {at: 2s, partition: {name: uplink-cut, between: [[site/factory], [site/cloud]]}}\n    - {at: 5s, heal: {name: uplink-cut}}\n  probes:\n    - {name: uplink, from: gw-1, ping: sink, every: 100ms}\n    - {name: ssh, from: gw-1, tcp: \"sink:22\", every: 100ms, timeout: 300ms}\n    - {name: lan, from: gw-1, ping: gw-2, every: 100ms}\n  assertions:\n    - {name: cut-while-partitioned, probe: uplink, during: 2.5s..5s, expect: \"success_rate == 0%\"}\n    - {name: ssh-cut-too, probe: ssh, during: 2.5s..5s, expect: \"success_rate == 0%\"}\n    - {name: back-after-heal, probe: uplink, during: 6s..end, expect: \"success_rate >= 90%\"}\n    - {name: ssh-back, probe: ssh, during: 6s..end, expect: \"success_rate >= 90%\"}\n    - {name: factory-lan-unaffected, probe: lan, expect: \"success_rate == 100%\"}\n",
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let state_dir = dir.path().join("state");
    let out = device_run(
        &lan.ctl,
        &inventory,
        &profiles,
        &report,
        &dir.path().join("out"),
        &scenario,
    )
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_STATE_DIR", &state_dir)
    .env("EDGESIM_HOST_SPEED", "1.0")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the scenario passes on boards");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["target"], "device", "{r}");
    let verdicts = r["assertions"].as_array().unwrap();
    assert_eq!(verdicts.len(), 5);
    assert!(
        verdicts.iter().all(|v| v["passed"] == true),
        "{verdicts:#?}"
    );
    for i in 0..3 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new(), "board {i} is clean");
    }
    assert!(
        std::fs::read_dir(&state_dir).map_or(true, |mut d| d.next().is_none()),
        "the state file is gone"
    );
}

/// A device run killed with SIGKILL mid-partition: the boards revert by themselves (the
/// agents' sessions end, or at worst their leases run out), its workload on a board ends too,
/// and `edgesim cleanup` then finds nothing left but the state file.
#[test]
fn a_device_run_killed_mid_partition_leaves_boards_clean() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("k", 2);
    let names = ["sink", "gw-1"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("killed.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: killed}\nspec:\n  duration: 60s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw-1, site: factory, profile: this-host}\n  workloads:\n    - {name: idle, nodes: [gw-1], command: sleep 300}\n  timeline:\n    - {at: 1s, partition: {name: cut, between: [[site/factory], [site/cloud]]}}\n",
    )
    .unwrap();
    let state_dir = dir.path().join("state");
    let run = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lan.ctl, BIN])
            .args(args)
            .env("EDGESIM_AGENT_X86_64", BIN)
            .env("EDGESIM_STATE_DIR", &state_dir)
            .env("EDGESIM_HOST_SPEED", "1.0");
        c
    };
    let mut child = run(&["run", "--target", "device"])
        .arg("--inventory")
        .arg(&inventory)
        .arg("--profiles")
        .arg(&profiles)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&scenario)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    until(Duration::from_secs(30), || {
        lan.pings(1, &Lan::addr(0), 2) == 0
    })
    .expect("the partition is in force on the boards");
    assert!(!lan.leftovers(0).is_empty());
    // The board's workload runs, and must end with its controller (its lifeline: the
    // session's stdin).
    let sleeping = || lan.processes(1).iter().any(|c| c.starts_with("sleep 300"));
    assert!(sleeping(), "the workload runs on gw-1");
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    let clean = until(Duration::from_secs(15), || {
        (0..2).all(|i| lan.leftovers(i).is_empty())
    })
    .expect("the boards revert by themselves");
    eprintln!(
        "controller SIGKILLed mid-partition: both boards clean after {clean:?} (lease {:?})",
        edgesim::targets::device::lab::LEASE
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(lan.pings(1, &Lan::addr(0), 5), 5);
    let gone = until(Duration::from_secs(10), || !sleeping())
        .expect("the workload ends with the controller");
    eprintln!("the board's workload ended {gone:?} after its controller");
    // The state file names the boards; cleanup visits them and removes it.
    assert_eq!(std::fs::read_dir(&state_dir).unwrap().count(), 1);
    let out = run(&["cleanup"]).output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cleanup succeeds");
    assert_eq!(std::fs::read_dir(&state_dir).unwrap().count(), 0);
    for i in 0..2 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new());
    }
}

/// The quickstart itself — its workloads, metrics and all seven assertions — on four
/// namespace boards with real sshds: the apps uploaded and run over SSH, their metrics read by
/// the boards' agents. The same verdicts as on netns (7/7), and every board left clean.
#[test]
fn the_quickstart_passes_on_boards_as_on_netns() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("w", 4);
    let names = ["sink", "gw-1", "gw-2", "gw-3"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let profiles = this_host_profile(dir.path());
    // The shipped quickstart, with boards shaped like this host (namespace boards are it).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("scenarios/quickstart.yaml"))
        .unwrap()
        .replace("profile: cloud-small", "profile: this-host")
        .replace("profile: raspberry-pi-5-8gb", "profile: this-host");
    let scenario = dir.path().join("quickstart.yaml");
    std::fs::write(&scenario, text).unwrap();
    let report = dir.path().join("report.json");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let out = device_run(
        &lan.ctl,
        &inventory,
        &profiles,
        &report,
        &dir.path().join("out"),
        &scenario,
    )
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_APPS_X86_64", bin_dir)
    .env("EDGESIM_STATE_DIR", dir.path().join("state"))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the quickstart passes on boards"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let verdicts = r["assertions"].as_array().unwrap();
    assert_eq!(verdicts.len(), 7);
    assert!(
        verdicts.iter().all(|v| v["passed"] == true),
        "{verdicts:#?}"
    );
    // The workloads' output came back into the run folder, as on netns.
    let log = dir.path().join("out/workloads/collector/gw-1.stderr.log");
    assert!(log.exists(), "{}", log.display());
    for i in 0..4 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new(), "board {i} is clean");
    }
    let runs = dir.path().join("cache/runs");
    assert!(
        !runs.exists() || std::fs::read_dir(runs).unwrap().next().is_none(),
        "the workloads' folders on the boards are removed"
    );
    // No workload process is left on any board (sshd's sessions may take a moment to end).
    for i in 0..lan.boards.len() {
        let others = || {
            lan.processes(i)
                .into_iter()
                .filter(|c| !c.starts_with("/usr/sbin/sshd -D") && !c.contains("[listener]"))
                .collect::<Vec<_>>()
        };
        until(Duration::from_secs(5), || others().is_empty())
            .unwrap_or_else(|| panic!("left running in {}: {:?}", lan.boards[i], others()));
    }
}

/// `impairment: userspace` on boards: every board's workloads live in a linkem cell (a
/// namespace behind a veth pair linkem relays, the board's address NATed onto it), so delay,
/// rate and loss need no sch_netem — what stock Jetson L4T lacks, and this host too. The
/// workloads' readings cross the cells both ways, the delay is measured from inside a cell,
/// the partition cuts and heals, and every cell is gone afterwards.
#[test]
fn boards_carry_delay_rate_and_loss_in_linkem_cells() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("c", 3);
    let names = ["sink", "gw-1", "gw-2"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("cells.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: cells}\nspec:\n  seed: 11\n  duration: 14s\n  impairment: userspace\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, up: {delay: 30ms, rate: 20mbit, loss: 1%}, down: {rate: 20mbit}}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw, count: 2, site: factory, profile: this-host}\n  workloads:\n    - {name: sink, nodes: [sink], app: cloud-sink}\n    - {name: collector, nodes: [gw-1], app: iot-collector, args: [--devices, \"2\", --rate, \"5\", --max-readings, \"40\"], env: {SINK_URL: \"http://sink:8080\"}, restart: on-failure}\n  timeline:\n    - {at: 4s, partition: {name: uplink-cut, between: [[site/factory], [site/cloud]]}}\n    - {at: 7s, heal: {name: uplink-cut}}\n  probes:\n    - {name: uplink, from: gw-1, ping: sink, every: 100ms}\n    - {name: lan, from: gw-1, ping: gw-2, every: 100ms}\n  assertions:\n    - {name: rtt-is-the-uplink, probe: uplink, during: 0.5s..4s, expect: \"p50 >= 30ms\"}\n    - {name: rtt-not-more, probe: uplink, during: 0.5s..4s, expect: \"p50 < 45ms\"}\n    - {name: cut, probe: uplink, during: 4.5s..7s, expect: \"success_rate == 0%\"}\n    - {name: healed, probe: uplink, during: 8s..end, expect: \"success_rate >= 90%\"}\n    - {name: lan-undelayed, probe: lan, expect: \"p50 < 10ms\"}\n    - {name: no-reading-lost, metric: {workload: sink, name: edgesim_sink_missing_total}, at: end, expect: \"== 0\"}\n    - {name: every-reading-delivered, metric: {workload: sink, name: edgesim_sink_device_unique}, at: end, expect: \"== 80\"}\n",
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let out = device_run(
        &lan.ctl,
        &inventory,
        &profiles,
        &report,
        &dir.path().join("out"),
        &scenario,
    )
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_APPS_X86_64", bin_dir)
    .env("EDGESIM_STATE_DIR", dir.path().join("state"))
    .env("EDGESIM_HOST_SPEED", "1.0")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}\n{log}");
    assert_eq!(out.status.code(), Some(0), "the scenario passes in cells");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let verdicts = r["assertions"].as_array().unwrap();
    assert_eq!(verdicts.len(), 7);
    assert!(
        verdicts.iter().all(|v| v["passed"] == true),
        "{verdicts:#?}"
    );
    let p50 = |name: &str| {
        let samples = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["samples"].as_array().unwrap().clone())
            .unwrap_or_default();
        let mut rtts: Vec<f64> = samples
            .iter()
            .filter(|s| s["t"].as_f64().is_some_and(|t| t > 0.5 && t < 4.0))
            .filter_map(|s| s["rtt"].as_f64().map(|x| x * 1e3))
            .collect();
        rtts.sort_by(f64::total_cmp);
        rtts.get(rtts.len() / 2).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "in cells: uplink RTT p50 {:.2} ms (30 ms asked), LAN p50 {:.2} ms",
        p50("uplink"),
        p50("lan")
    );
    for i in 0..3 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new(), "board {i} is clean");
    }
}

/// Workloads on boards run in the run's cgroup, which the agent makes: `node-down` with `mode:
/// freeze` hangs them there (a ticking workload falls silent for the freeze, its probe with
/// it) and `node-up` thaws them; the cgroup is gone after the run, with the process.
#[test]
fn node_down_freeze_hangs_a_boards_workloads_in_their_cgroup() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("z", 2);
    let names = ["sink", "gw-1"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("freeze.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: freeze}\nspec:\n  duration: 9s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw-1, site: factory, profile: this-host}\n  workloads:\n    - {name: ticker, nodes: [gw-1], command: [sh, -c, \"cat /proc/self/cgroup; while :; do date +%s.%N; sleep 0.05; done\"]}\n  timeline:\n    - {at: 3s, node-down: {nodes: [gw-1], mode: freeze}}\n    - {at: 6s, node-up: {nodes: [gw-1]}}\n  probes:\n    - {name: up, from: sink, ping: gw-1, every: 100ms}\n  assertions:\n    - {name: down, probe: up, during: 3.5s..6s, expect: \"success_rate == 0%\"}\n    - {name: back, probe: up, during: 6.5s..end, expect: \"success_rate == 100%\"}\n",
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let out = device_run(
        &lan.ctl,
        &inventory,
        &profiles,
        &report,
        &dir.path().join("out"),
        &scenario,
    )
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_STATE_DIR", dir.path().join("state"))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the freeze scenario passes on boards"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let run = r["run_id"].as_str().unwrap().to_string();
    let log =
        std::fs::read_to_string(dir.path().join("out/workloads/ticker/gw-1.stdout.log")).unwrap();
    let want = format!("edgesim/{run}/gw-1");
    assert!(
        log.lines()
            .take_while(|l| l.contains(':'))
            .any(|l| l.ends_with(&want)),
        "the workload runs in {want}: {log}"
    );
    let (ticks, gap) = ticker_silence(&log);
    assert!(ticks > 60, "{log}");
    assert!((2.5..4.0).contains(&gap), "frozen for the node-down: {gap}");
    let leftover: Vec<String> = ["freezer", "cpu", "memory", "pids", "unified", ""]
        .iter()
        .map(|h| format!("/sys/fs/cgroup/{h}/edgesim/{run}"))
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        leftover.is_empty(),
        "the run's cgroups are removed: {leftover:?}"
    );
    for i in 0..2 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new(), "board {i} is clean");
    }
}

/// A device run whose control path is cut mid-partition (the controller's namespace drops
/// everything): no end of session reaches the boards, and each reverts when its lease
/// (`edgesim_lease: 1s`) runs out.
#[test]
fn a_device_run_cut_off_from_its_boards_reverts_within_the_lease() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("c", 2);
    let names = ["sink", "gw-1"];
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &names, dir.path());
    let inv = std::fs::read_to_string(&inventory).unwrap().replace(
        "edgesim_profile: this-host}",
        "edgesim_profile: this-host, edgesim_lease: 1s}",
    );
    std::fs::write(&inventory, inv).unwrap();
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("cut.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: cut-off}\nspec:\n  duration: 60s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw-1, site: factory, profile: this-host}\n  timeline:\n    - {at: 1s, partition: {name: cut, between: [[site/factory], [site/cloud]]}}\n",
    )
    .unwrap();
    let mut child = device_run(
        &lan.ctl,
        &inventory,
        &profiles,
        &dir.path().join("report.json"),
        &dir.path().join("out"),
        &scenario,
    )
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_STATE_DIR", dir.path().join("state"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    until(Duration::from_secs(30), || {
        lan.pings(1, &Lan::addr(0), 2) == 0
    })
    .expect("the partition is in force on the boards");
    lan.cut_controller();
    let t = Instant::now();
    let clean = until(Duration::from_secs(10), || {
        (0..2).all(|i| lan.leftovers(i).is_empty())
    })
    .expect("the boards revert when their leases run out");
    eprintln!("control path cut: both boards reverted after {clean:?} (lease 1 s)");
    assert!(t.elapsed() < Duration::from_secs(3), "within lease + 1 s");
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("ip")
        .args([
            "netns", "exec", &lan.ctl, "nft", "delete", "table", "inet", "cut",
        ])
        .status();
    let _ = Command::new("ip")
        .args(["netns", "exec", &lan.ctl, BIN, "cleanup"])
        .env("EDGESIM_STATE_DIR", dir.path().join("state"))
        .output();
}

/// `edgesim up --target device` keeps a lab of boards up (the baseline in force on them)
/// until `edgesim down`, which reverts every board.
#[test]
fn a_lab_of_boards_stays_up_until_down() {
    let _g = common::serial();
    if !ssh_gate() {
        return;
    }
    let lan = Lan::new("u", 2);
    let dir = tempfile::tempdir().unwrap();
    let (_sshds, inventory) = namespace_boards(&lan, &["sink", "gw-1"], dir.path());
    let profiles = this_host_profile(dir.path());
    let scenario = dir.path().join("lab.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: board-lab}\nspec:\n  duration: 10s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, loss: 30%}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: gw-1, site: factory, profile: this-host}\n",
    )
    .unwrap();
    let edgesim = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lan.ctl, BIN])
            .arg("--inventory")
            .arg(&inventory)
            .arg("--profiles")
            .arg(&profiles)
            .args(args)
            .env("EDGESIM_AGENT_X86_64", BIN)
            .env("EDGESIM_STATE_DIR", dir.path().join("state"));
        c
    };
    let up = edgesim(&["up", "--target", "device", "--out"])
        .arg(dir.path().join("out"))
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The uplink's 30 % loss is in force on both boards while the lab is up.
    assert!(!lan.leftovers(0).is_empty() && !lan.leftovers(1).is_empty());
    let got = lan.pings(1, &Lan::addr(0), 200);
    assert!((70..=140).contains(&got), "30 % each way: {got} of 200");
    let down = edgesim(&["down", "board-lab"]).output().unwrap();
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    for i in 0..2 {
        assert_eq!(lan.leftovers(i), Vec::<String>::new(), "board {i} is clean");
    }
    assert_eq!(lan.pings(1, &Lan::addr(0), 10), 10);
}
