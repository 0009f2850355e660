//! A real arm64 board on the device LAN: `qemu-system-aarch64 -M virt -cpu cortex-a76 -smp 4`
//! (the Pi 5's core) under TCG, Debian's stock arm64 kernel, and the filesystem
//! `tests/board/arm64.sh` builds (sshd, nftables, iproute2, python3), reached over SSH through
//! a tap device bridged onto the LAN. The agent is edgesim's static aarch64 musl build
//! (`.ci/agent-static`, or `EDGESIM_AGENT_AARCH64`).
//!
//! What it shows on a real arm64 kernel: the board's facts and its profile check; delay, loss
//! and a partition applied by the agent, measured from a namespace board; the management
//! connection through the partition; the lease; recovery after SIGKILL; `ansible/prepare-board.yml`
//! run for real with `ansible-playbook` over SSH, after which the agent runs as the unprivileged
//! `edgesim` user with CAP_NET_ADMIN alone; and the same board without sch_netem, sch_tbf and
//! ifb (what stock Jetson L4T lacks), which passes the same scenario with its delay carried by
//! linkem in a cell on the board.
//!
//! Capability `arm64-board` (`EDGESIM_REQUIRE` makes its absence fail): qemu-system-aarch64,
//! the board's filesystem (built here, cached under target/board/), the aarch64 agent.
//!
//! Capability `systemd-board`: the same board with systemd as PID 1 (`tests/board/arm64.sh
//! systemd`), where a node's workloads run in the transient scope `edgesim-<run>-<node>.scope`
//! in `edgesim.slice`, under the profile's limits, frozen by `node-down` freeze, and stopped
//! after the run, on a lease's revert and by the next agent after a SIGKILLed one — for an
//! agent logged in as root (the system manager's scope) and as the unprivileged `edgesim` user
//! (a scope of that user's own, lingering, systemd manager).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgesim::targets::device::agent::{Desired, Facts, Peer, Request, WireBlock};
use edgesim::targets::device::inventory::{Inventory, InventoryHost};
use edgesim::targets::device::transport::{self, AgentConn, Board, ConnectOptions};
use edgesim::targets::device::{Needs, check_board};

use super::common;
use super::common::{BIN, ticker_silence};
use super::device::{Lan, Sshd, controller, device_run, in_ns, keygen, this_host_profile, until};

const VM_ADDR: &str = "10.201.0.31";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The aarch64 agent: `EDGESIM_AGENT_AARCH64`, else the newest static build under target/.
fn arm64_agent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EDGESIM_AGENT_AARCH64") {
        return Some(PathBuf::from(p));
    }
    ["debug", "release"]
        .iter()
        .map(|p| root().join(format!("target/aarch64-unknown-linux-musl/{p}/edgesim")))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Everything the board needs, or `None` (skipped, or failed where required).
fn gate() -> Option<(PathBuf, PathBuf)> {
    if !common::privileged() || !edgesim::testing::program("ssh", "ssh") {
        return None;
    }
    let qemu = edgesim::testing::have_program("qemu-system-aarch64");
    let agent = arm64_agent();
    if !edgesim::testing::gate(
        "arm64-board",
        qemu && agent.is_some(),
        "needs qemu-system-aarch64 (Debian qemu-system-arm) and the aarch64 agent (.ci/agent-static)",
    ) {
        return None;
    }
    let out = Command::new(root().join("tests/board/arm64.sh"))
        .output()
        .expect("tests/board/arm64.sh runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success(),
        "building the arm64 board: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        root().join("target/board/arm64"),
        agent.expect("gated above"),
    ))
}

/// The board: qemu in a namespace of its own whose bridge joins the tap device to the LAN.
struct Qemu {
    child: Child,
    log: PathBuf,
    // Last: dropped after qemu is killed.
    _net: VmNet,
}

/// The board's namespace and its port on the LAN, removed on drop (also when booting fails
/// half-way).
struct VmNet {
    ns: String,
    lan: String,
    port: String,
}

impl Drop for VmNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.lan, "link", "del", &self.port])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

impl Qemu {
    fn boot(lan: &Lan, dir: &Path, board: &Path, key_pub: &Path, jetson: bool) -> Qemu {
        Qemu::boot_as(
            lan,
            dir,
            board,
            key_pub,
            jetson,
            if jetson { "jetson" } else { "pi" },
        )
    }

    fn boot_as(
        lan: &Lan,
        dir: &Path,
        board: &Path,
        key_pub: &Path,
        jetson: bool,
        tag: &str,
    ) -> Qemu {
        let ns = format!("{}-vm{tag}", lan.prefix());
        let port = format!("p{tag}");
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip runs");
            assert!(st.success(), "ip {args:?}");
        };
        run(&["netns", "add", &ns]);
        let net = VmNet {
            ns: ns.clone(),
            lan: lan.lan().to_string(),
            port: port.clone(),
        };
        run(&[
            "-n",
            lan.lan(),
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        run(&["-n", lan.lan(), "link", "set", &port, "master", "br0", "up"]);
        run(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        run(&["-n", &ns, "link", "set", "eth0", "master", "br0", "up"]);
        run(&["-n", &ns, "tuntap", "add", "tap0", "mode", "tap"]);
        run(&["-n", &ns, "link", "set", "tap0", "master", "br0", "up"]);
        run(&["-n", &ns, "link", "set", "br0", "up"]);
        let key = std::fs::read_to_string(key_pub).expect("test fixture");
        let key = key.split_whitespace().nth(1).expect("an ed25519 key");
        let log = dir.join(format!("{tag}.log"));
        let append = format!(
            "console=ttyAMA0 panic=-1 quiet edgesim.addr={VM_ADDR}/24 edgesim.key={key}{}",
            if jetson { " edgesim.jetson=1" } else { "" }
        );
        let kernel = board.join("vmlinuz");
        let initrd = board.join("initrd.cpio");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "qemu-system-aarch64"])
            .args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a76",
                "-smp",
                "4",
                "-m",
                "8192",
            ])
            .args(["-accel", "tcg", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("test fixture"))
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu starts");
        let q = Qemu {
            child,
            log,
            _net: net,
        };
        let t = Instant::now();
        let up = until(Duration::from_secs(120), || {
            std::fs::read_to_string(&q.log).is_ok_and(|l| l.contains("sshd up"))
        });
        assert!(
            up.is_some(),
            "the board did not boot: {}",
            std::fs::read_to_string(&q.log).unwrap_or_default()
        );
        eprintln!(
            "arm64 board{} ({tag}) up with sshd after {:.1} s",
            if jetson { " (Jetson stand-in)" } else { "" },
            t.elapsed().as_secs_f64()
        );
        q
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The board as an inventory host for user `user`.
fn host(dir: &Path, board: &Path, user: &str) -> InventoryHost {
    let kh = dir.join("known_hosts");
    let hk = std::fs::read_to_string(board.join("host_ed25519.pub")).expect("test fixture");
    let mut p = hk.split_whitespace();
    std::fs::write(
        &kh,
        format!(
            "{VM_ADDR} {} {}\n",
            p.next().expect("key type"),
            p.next().expect("key")
        ),
    )
    .expect("test fixture");
    let inv = dir.join(format!("inventory-{user}.yaml"));
    std::fs::write(
        &inv,
        format!(
            "all:\n  hosts:\n    pi5-vm:\n      ansible_host: {VM_ADDR}\n      ansible_user: {user}\n      ansible_ssh_private_key_file: {key}\n      ansible_ssh_common_args: -o UserKnownHostsFile={kh}\n      ansible_python_interpreter: /usr/bin/python3\n      edgesim_known_hosts_file: {kh}\n      edgesim_controller_key_file: {key}.pub\n      edgesim_profile: raspberry-pi-5-8gb\n",
            key = dir.join("user_key").display(),
            kh = kh.display(),
        ),
    )
    .expect("test fixture");
    Inventory::load(&inv).expect("reads").hosts["pi5-vm"].clone()
}

/// An agent started on the board over the master connection.
type Conn = AgentConn<openssh::ChildStdin, openssh::ChildStdout>;

async fn start_agent(
    board: &Board,
    bin: &Path,
) -> (openssh::Child<std::sync::Arc<openssh::Session>>, Conn) {
    let remote = board.upload_agent(bin).await.expect("uploads");
    let mut child = board
        .agent_command(&remote, None)
        .await
        .expect("the agent may run")
        .stdin(openssh::Stdio::piped())
        .stdout(openssh::Stdio::piped())
        .spawn()
        .await
        .expect("agent starts");
    let (w, r) = (
        child.stdin().take().expect("piped"),
        child.stdout().take().expect("piped"),
    );
    (child, AgentConn::new(w, r))
}

/// Mean RTT (ms) from namespace board 0 to the VM.
fn rtt(lan: &Lan, n: u32) -> f64 {
    let out = in_ns(
        &lan.boards[0],
        &[
            "ping",
            "-n",
            "-c",
            &n.to_string(),
            "-i",
            "0.02",
            "-W",
            "2",
            VM_ADDR,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!v.is_empty(), "no replies: {text}");
    v.iter().sum::<f64>() / v.len() as f64
}

fn profile(name: &str) -> edgesim::profile::ProfileSpec {
    edgesim::profile::ProfileSet::builtin()
        .expect("built-in profiles")
        .get(name)
        .expect("a shipped profile")
        .clone()
}

/// Everything in and out of the board dropped (but for the management connection).
fn isolate() -> Vec<WireBlock> {
    vec![WireBlock {
        name: "isolate".into(),
        from: vec![],
        to: vec![],
    }]
}

/// Sends `req` and expects it to succeed.
async fn ok(agent: &mut Conn, req: Request) -> edgesim::targets::device::agent::Reply {
    let r = agent.call(req).await.expect("the agent answers");
    assert!(r.ok, "{r:?}");
    r
}

fn apply(d: Desired) -> Request {
    Request::Apply(Desired {
        iface: "eth0".into(),
        lease_ms: 30_000,
        ..d
    })
}

#[test]
fn an_arm64_board_under_qemu_takes_faults_leases_and_the_prepare_playbook() {
    let _g = common::serial();
    let Some((board_dir, bin)) = gate() else {
        return;
    };
    let lan = Lan::new("q", 1);
    let dir = tempfile::tempdir().expect("test fixture");
    keygen(&dir.path().join("user_key"));
    let ns_board: std::net::IpAddr = Lan::addr(0).parse().unwrap();
    let vm = Qemu::boot(
        &lan,
        dir.path(),
        &board_dir,
        &dir.path().join("user_key.pub"),
        false,
    );
    let root_host = host(dir.path(), &board_dir, "root");

    let base = rtt(&lan, 20);
    let (facts, delayed, lossy, parted, lease) = controller(&lan.ctl, async || {
        let board = transport::connect(&root_host, &ConnectOptions::default())
            .await
            .expect("connects with the board's host key");
        let (child, mut agent) = start_agent(&board, &bin).await;
        let facts = agent.call(Request::Hello).await.unwrap().facts.unwrap();

        // 40 ms on the board's way to the namespace board: the round trip grows by 40 ms.
        ok(
            &mut agent,
            apply(Desired {
                peers: vec![Peer {
                    addr: ns_board,
                    params: edgesim::scenario::plan::LinkParams {
                        delay: Some(Duration::from_millis(40)),
                        ..Default::default()
                    },
                }],
                ..Desired::default()
            }),
        )
        .await;
        let delayed = rtt(&lan, 20);
        // 30 % of what arrives from the namespace board is dropped on arrival.
        ok(
            &mut agent,
            apply(Desired {
                incoming: vec![Peer {
                    addr: ns_board,
                    params: edgesim::scenario::plan::LinkParams {
                        loss: 0.3,
                        ..Default::default()
                    },
                }],
                ..Desired::default()
            }),
        )
        .await;
        let lossy = lan.pings(0, VM_ADDR, 200);
        // A full partition of the board; its SSH connection carries heartbeats throughout.
        ok(
            &mut agent,
            apply(Desired {
                blocks: isolate(),
                ..Desired::default()
            }),
        )
        .await;
        let parted = lan.pings(0, VM_ADDR, 10);
        for _ in 0..3 {
            assert!(agent.call(Request::Heartbeat).await.unwrap().ok);
        }
        // Silence: the lease (1.5 s) runs out and the board reverts by itself.
        ok(
            &mut agent,
            Request::Apply(Desired {
                iface: "eth0".into(),
                lease_ms: 1500,
                blocks: isolate(),
                ..Desired::default()
            }),
        )
        .await;
        let t = Instant::now();
        let _ = child.wait().await;
        let lease = t.elapsed();
        drop(agent);

        // SIGKILL mid-partition: the next agent reverts what the dead one left.
        let (_child, mut agent) = start_agent(&board, &bin).await;
        assert!(agent.call(Request::Hello).await.unwrap().ok);
        ok(
            &mut agent,
            apply(Desired {
                blocks: isolate(),
                ..Desired::default()
            }),
        )
        .await;
        board
            .sh("kill -KILL $(pidof edgesim)")
            .await
            .expect("kills the agent");
        drop(agent);
        let (_child, mut agent) = start_agent(&board, &bin).await;
        let hello = agent.call(Request::Hello).await.unwrap().facts.unwrap();
        assert!(
            hello.recovered.iter().any(|r| r.contains("nftables")),
            "{hello:?}"
        );
        assert!(agent.call(Request::Bye).await.unwrap().ok);
        (facts, delayed, lossy, parted, lease)
    });
    eprintln!(
        "arm64 board: {} {} cores, kernel {}, netem {}, tbf {}, htb {}, {}",
        facts.arch, facts.cores, facts.kernel, facts.netem, facts.tbf, facts.htb, facts.cgroup
    );
    eprintln!(
        "rtt {base:.2} ms → {delayed:.2} ms with 40 ms; 30 % loss: {lossy}/200 replies; isolated: {parted}/10; lease 1.5 s: reverted after {lease:?}"
    );
    assert_eq!((facts.arch.as_str(), facts.cores), ("arm64", 4));
    assert!(facts.netem && facts.tbf && facts.htb, "{facts:?}");
    assert!(facts.cgroup.starts_with("v2"), "{facts:?}");
    let all = Needs {
        delay: true,
        rate: true,
        firewall: true,
        limits: true,
        userspace: false,
        freeze: false,
    };
    let fits = check_board("pi5-vm", &facts, &profile("raspberry-pi-5-8gb"), all);
    assert!(fits.is_empty(), "the Pi-shaped board fits: {fits:#?}");
    let orin = check_board("pi5-vm", &facts, &profile("jetson-orin-nx-8gb"), all);
    assert!(
        orin.iter().any(|p| p.contains("CPUs online")),
        "a board that is not the profile's is reported: {orin:#?}"
    );
    assert!(
        delayed - base > 38.0 && delayed - base < 60.0,
        "{base} → {delayed}"
    );
    assert!((110..=170).contains(&lossy), "30 % loss: {lossy} of 200");
    assert_eq!(parted, 0);
    assert!(
        lease >= Duration::from_millis(1500) && lease < Duration::from_secs(6),
        "{lease:?}"
    );
    assert_eq!(lan.pings(0, VM_ADDR, 5), 5, "the board is clean again");

    // A scenario on this board and a namespace board with `edgesim run --target device`: the
    // Pi-shaped board passes its own profile's check, its uplink's 40 ms upstream are netem on
    // this arm64 kernel (the sink, this host without netem, sends on an undelayed direction and
    // is not asked for it), and the partition cuts and heals as on netns.
    let run_on_board = |tag: &str, user: &str| {
        let sshd = Sshd::start(&lan.boards[0], &Lan::addr(0));
        let d = sshd.dir.path();
        let inventory = dir.path().join(format!("inventory-{tag}.yaml"));
        sink_and_pi_inventory(&inventory, d, dir.path(), user);
        let scenario = dir.path().join("pi.yaml");
        std::fs::write(
            &scenario,
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: pi-board}\nspec:\n  duration: 9s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, up: {delay: 40ms, rate: 10mbit}}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: pi, site: factory, profile: raspberry-pi-5-8gb}\n  timeline:\n    - {at: 3s, partition: {name: cut, between: [[site/factory], [site/cloud]]}}\n    - {at: 6s, heal: {name: cut}}\n  probes:\n    - {name: uplink, from: pi, ping: sink, every: 100ms}\n    - {name: ssh, from: sink, tcp: \"pi:22\", every: 200ms, timeout: 500ms}\n  assertions:\n    - {name: rtt-is-the-uplink, probe: uplink, during: 0s..3s, expect: \"p50 >= 40ms\"}\n    - {name: rtt-not-more, probe: uplink, during: 0s..3s, expect: \"p50 < 55ms\"}\n    - {name: cut, probe: uplink, during: 3.5s..6s, expect: \"success_rate == 0%\"}\n    - {name: ssh-cut, probe: ssh, during: 3.5s..6s, expect: \"success_rate == 0%\"}\n    - {name: healed, probe: uplink, during: 7s..end, expect: \"success_rate >= 90%\"}\n",
        )
        .expect("test fixture");
        let profiles = this_host_profile(dir.path());
        let report = dir.path().join(format!("{tag}-report.json"));
        let out = device_run(
            &lan.ctl,
            &inventory,
            &profiles,
            &report,
            &dir.path().join(format!("{tag}-out")),
            &scenario,
        )
        .env("EDGESIM_AGENT_AARCH64", &bin)
        .env("EDGESIM_AGENT_X86_64", BIN)
        .env("EDGESIM_STATE_DIR", dir.path().join("state"))
        .env("EDGESIM_HOST_SPEED", "1.0")
        .output()
        .expect("edgesim runs");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            out.status.code(),
            Some(0),
            "the scenario passes on the {tag} board: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(sshd);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    run_on_board("pi", "root");
    assert_eq!(lan.pings(0, VM_ADDR, 5), 5, "the board is clean again");

    // The prepare playbook, for real, over SSH as root; then the agent as the `edgesim` user,
    // started through the launcher, holds CAP_NET_ADMIN and nothing else.
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.ctl, "ansible-playbook", "-i"])
        .arg(dir.path().join("inventory-root.yaml"))
        .arg(root().join("ansible/prepare-board.yml"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("ansible-playbook runs");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "prepare-board.yml failed:\n{log}");
    let recap = log
        .lines()
        .rev()
        .find(|l| l.contains("pi5-vm"))
        .unwrap_or("");
    eprintln!(
        "prepare-board.yml on the arm64 board: {:.0} s, {}",
        t.elapsed().as_secs_f64(),
        recap.trim()
    );
    let user_host = host(dir.path(), &board_dir, "edgesim");
    let (euid, cap, isolated) = controller(&lan.ctl, async || {
        let board = transport::connect(&user_host, &ConnectOptions::default())
            .await
            .expect("the controller's key was authorised for edgesim");
        let (_child, mut agent) = start_agent(&board, &bin).await;
        let facts: Facts = agent.call(Request::Hello).await.unwrap().facts.unwrap();
        let r = agent
            .call(apply(Desired {
                blocks: isolate(),
                ..Desired::default()
            }))
            .await
            .unwrap();
        assert!(r.ok, "the unprivileged agent applies rules: {r:?}");
        let isolated = lan.pings(0, VM_ADDR, 5);
        let r = agent.call(Request::Bye).await.unwrap();
        assert!(r.ok && !r.reverted.is_empty(), "{r:?}");
        (facts.euid, facts.cap_net_admin, isolated)
    });
    assert_ne!(euid, 0, "the agent runs as the edgesim user");
    assert!(cap, "with CAP_NET_ADMIN");
    assert_eq!(isolated, 0);
    assert_eq!(lan.pings(0, VM_ADDR, 5), 5);
    drop(vm);

    // The same board without sch_netem, sch_tbf and ifb (a stock Jetson's kernel): the same
    // scenario passes, its 40 ms carried by linkem in a cell on the board, and the board is
    // left as it was (no cell, link or table).
    let vm = Qemu::boot(
        &lan,
        dir.path(),
        &board_dir,
        &dir.path().join("user_key.pub"),
        true,
    );
    let facts = controller(&lan.ctl, async || {
        let board = transport::connect(&root_host, &ConnectOptions::default())
            .await
            .expect("connects");
        let (_child, mut agent) = start_agent(&board, &bin).await;
        let f = agent.call(Request::Hello).await.unwrap().facts.unwrap();
        assert!(agent.call(Request::Bye).await.unwrap().ok);
        f
    });
    assert!(!facts.netem && !facts.tbf, "{facts:?}");
    assert!(all.cell(&facts), "{facts:?}");
    let fits = check_board("jetson-vm", &facts, &profile("raspberry-pi-5-8gb"), all);
    assert!(
        fits.is_empty(),
        "root on the Jetson stand-in runs a cell: {fits:#?}"
    );
    let log = run_on_board("jetson", "root");
    assert!(
        log.contains("linkem carries them, in a cell"),
        "the run says the board's links run in linkem: {log}"
    );
    let left = controller(&lan.ctl, async || {
        let board = transport::connect(&root_host, &ConnectOptions::default())
            .await
            .expect("connects");
        board
            .sh("ls /run/netns 2>/dev/null; ip -o link show | grep esc- ; nft list tables; cat /proc/sys/net/ipv4/ip_forward")
            .await
            .expect("the board answers")
    });
    assert_eq!(left.trim(), "0", "the Jetson stand-in is as it was: {left}");
    // Prepared by the playbook, whose launcher gets what a cell needs on a board without
    // netem, the same run passes as the unprivileged `edgesim` user.
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.ctl, "ansible-playbook", "-i"])
        .arg(dir.path().join("inventory-root.yaml"))
        .arg(root().join("ansible/prepare-board.yml"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("ansible-playbook runs");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "prepare-board.yml failed:\n{log}");
    assert!(
        log.contains("linkem, in a cell"),
        "the playbook says what it does: {log}"
    );
    let facts = controller(&lan.ctl, async || {
        let board = transport::connect(&user_host, &ConnectOptions::default())
            .await
            .expect("connects as edgesim");
        let (_child, mut agent) = start_agent(&board, &bin).await;
        let f = agent.call(Request::Hello).await.unwrap().facts.unwrap();
        assert!(agent.call(Request::Bye).await.unwrap().ok);
        f
    });
    assert!(
        facts.euid != 0 && facts.cap_net_admin && facts.cap_sys_admin && facts.cap_net_raw,
        "{facts:?}"
    );
    run_on_board("jetson-user", "edgesim");
    drop(vm);
}

/// The systemd board, or `None` (skipped, or failed where `systemd-board` is required).
fn systemd_gate() -> Option<(PathBuf, PathBuf)> {
    if !common::privileged() || !edgesim::testing::program("ssh", "ssh") {
        return None;
    }
    let qemu = edgesim::testing::have_program("qemu-system-aarch64");
    let agent = arm64_agent();
    if !edgesim::testing::gate(
        "systemd-board",
        qemu && agent.is_some(),
        "needs qemu-system-aarch64 (Debian qemu-system-arm) and the aarch64 agent (.ci/agent-static)",
    ) {
        return None;
    }
    let out = Command::new(root().join("tests/board/arm64.sh"))
        .arg("systemd")
        .output()
        .expect("tests/board/arm64.sh runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success(),
        "building the systemd board: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        root().join("target/board/arm64-systemd"),
        agent.expect("gated above"),
    ))
}

/// What of the agent's is left on the systemd board, for a root agent: `edgesim*` units (any
/// state) of the system manager, `edgesim.slice` (its scopes are below it) and the agent's own
/// cgroups, and the ticker (empty: nothing).
const SYSTEMD_LEFTOVERS: &str = "systemctl list-units 'edgesim*' --all --no-legend --plain; \
    ls -d /sys/fs/cgroup/edgesim.slice /sys/fs/cgroup/edgesim 2>/dev/null; \
    pgrep -f 'tmp/tick[s]' || true";

/// The same for an agent that is not root, asked as its user: the units of its own manager
/// and that manager's `edgesim.slice` besides.
const USER_LEFTOVERS: &str = "systemctl --user list-units 'edgesim*' --all --no-legend --plain; \
    systemctl list-units 'edgesim*' --all --no-legend --plain; \
    ls -d /sys/fs/cgroup/user.slice/user-$(id -u).slice/user@$(id -u).service/edgesim.slice \
    /sys/fs/cgroup/edgesim.slice /sys/fs/cgroup/edgesim 2>/dev/null; \
    pgrep -f 'tmp/tick[s]' || true";

/// What ansible/prepare-board.yml does on a systemd board, as shell, run as root: the
/// `edgesim` user with the controller's key, the launcher holding CAP_NET_ADMIN, the agent's
/// state directory, and the user's systemd manager, lingering and delegated cpu, memory and
/// pids; waits for that manager and prints the user's uid. (The playbook itself takes about
/// two minutes on this board under TCG — each task starts Python — and runs for real on the
/// busybox board in `an_arm64_board_under_qemu_takes_faults_leases_and_the_prepare_playbook`.)
const PREPARE_USER: &str = r#"set -e
groupadd edgesim
useradd -m -g edgesim -s /bin/sh edgesim
uid=$(id -u edgesim)
mkdir -p /home/edgesim/.ssh
cp /root/.ssh/authorized_keys /home/edgesim/.ssh/authorized_keys
chown -R edgesim:edgesim /home/edgesim/.ssh
chmod 700 /home/edgesim/.ssh
mkdir -p /usr/local/lib/edgesim
cp /usr/sbin/capsh /usr/local/lib/edgesim/capsh
chown root:edgesim /usr/local/lib/edgesim /usr/local/lib/edgesim/capsh
chmod 750 /usr/local/lib/edgesim /usr/local/lib/edgesim/capsh
setcap cap_net_admin+p /usr/local/lib/edgesim/capsh
printf 'd /run/edgesim 0750 edgesim edgesim -\n' >/etc/tmpfiles.d/edgesim.conf
mkdir -p /run/edgesim && chown edgesim:edgesim /run/edgesim && chmod 750 /run/edgesim
mkdir -p /etc/systemd/system/user@$uid.service.d
printf '[Service]\nDelegate=cpu memory pids\n' >/etc/systemd/system/user@$uid.service.d/edgesim.conf
systemctl daemon-reload
loginctl enable-linger edgesim
c=/sys/fs/cgroup/user.slice/user-$uid.slice/user@$uid.service/cgroup.controllers
i=0
until grep -qw cpu $c 2>/dev/null && grep -qw memory $c && grep -qw pids $c; do
  i=$((i + 1)); [ $i -lt 150 ] || { echo "no manager with cpu memory pids: $(cat $c)" >&2; exit 1; }
  sleep 0.2
done
echo $uid"#;

/// Runs the freeze scenario on the systemd board (the qemu board `pi`, logged in as
/// `pi_user`, beside the namespace board `sink`): a ticking workload that first prints its
/// cgroup and its scope's limits, frozen from 3 s to 6 s. Checks that it passes, that the
/// report names the scope and the workload ran in `<cgroup_of(unit)>` with the profile's
/// limits, and that it was silent for the freeze. Returns the report's note on the board.
fn freeze_run_on_systemd_board(
    lan: &Lan,
    dir: &Path,
    bin: &Path,
    pi_user: &str,
    limits: &edgesim::host::cgroup::NodeLimits,
    cgroup_of: impl Fn(&str) -> String,
) -> String {
    let t = Instant::now();
    let sshd = Sshd::start(&lan.boards[0], &Lan::addr(0));
    let inventory = dir.join(format!("inventory-systemd-{pi_user}.yaml"));
    sink_and_pi_inventory(&inventory, sshd.dir.path(), dir, pi_user);
    let scenario = dir.join("freeze.yaml");
    std::fs::write(
        &scenario,
        "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: systemd-freeze}\nspec:\n  duration: 9s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud}\n  nodes:\n    - {name: sink, site: cloud, profile: this-host}\n    - {name: pi, site: factory, profile: raspberry-pi-5-8gb}\n  workloads:\n    - {name: ticker, nodes: [pi], command: [sh, -c, \"cat /proc/self/cgroup; s=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/..; echo cpu.max $(cat $s/cpu.max); echo memory.max $(cat $s/memory.max); echo memory.swap.max $(cat $s/memory.swap.max); echo pids.max $(cat $s/pids.max); while :; do read t _ </proc/uptime; echo $t; sleep 0.05; done\"]}\n  timeline:\n    - {at: 3s, node-down: {nodes: [pi], mode: freeze}}\n    - {at: 6s, node-up: {nodes: [pi]}}\n  probes:\n    - {name: up, from: sink, ping: pi, every: 100ms}\n  assertions:\n    - {name: down, probe: up, during: 3.5s..6s, expect: \"success_rate == 0%\"}\n    - {name: back, probe: up, during: 6.5s..end, expect: \"success_rate >= 90%\"}\n",
    )
    .expect("test fixture");
    let profiles = this_host_profile(dir);
    let report = dir.join(format!("report-{pi_user}.json"));
    let out_dir = dir.join(format!("out-{pi_user}"));
    let out = device_run(
        &lan.ctl, &inventory, &profiles, &report, &out_dir, &scenario,
    )
    .env("EDGESIM_AGENT_AARCH64", bin)
    .env("EDGESIM_AGENT_X86_64", BIN)
    .env("EDGESIM_STATE_DIR", dir.join("state"))
    .env("EDGESIM_HOST_SPEED", "1.0")
    .output()
    .expect("edgesim runs");
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the scenario passes on the systemd board as {pi_user}"
    );
    drop(sshd);
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("a report")).expect("JSON");
    let run = r["run_id"].as_str().expect("a run id").to_string();
    let unit = format!("edgesim-{run}-pi.scope");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains(&format!("workloads in systemd scope {unit}")),
        "the report says where the workloads ran: {notes}"
    );
    let log = std::fs::read_to_string(out_dir.join("workloads/ticker/pi.stdout.log"))
        .expect("the ticker's output");
    let head: Vec<&str> = log.lines().take(5).collect();
    eprintln!("ticker on the systemd board as {pi_user}: {head:?}");
    assert_eq!(
        head.first().copied(),
        Some(format!("0::{}", cgroup_of(&unit)).as_str()),
        "the workload runs in the node's scope: {log}"
    );
    let quota = limits.cpu_quota_us.expect("a quota");
    let mem = limits.memory_bytes.expect("a memory limit");
    for want in [
        format!("cpu.max {quota} 100000"),
        format!("memory.max {mem}"),
        "memory.swap.max 0".to_string(),
    ] {
        assert!(head.contains(&want.as_str()), "{want}: {head:?}");
    }
    // The profile's task limit where it has one; else the manager's default (a number).
    let tasks = head.iter().find_map(|l| l.strip_prefix("pids.max "));
    match limits.pids_max {
        Some(p) => assert_eq!(tasks, Some(p.to_string().as_str()), "{head:?}"),
        None => assert!(tasks.is_some_and(|t| t.parse::<u64>().is_ok()), "{head:?}"),
    }
    let (ticks, gap) = ticker_silence(&log);
    assert!(ticks > 30, "{log}");
    assert!((2.5..4.5).contains(&gap), "frozen for the node-down: {gap}");
    eprintln!(
        "freeze run as {pi_user}: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    notes
}

/// On the systemd board as `user` (host `h`), with the board's own tooling: what is left
/// after the scenario run; an agent whose controller falls silent (its lease runs out and it
/// stops the scope with a ticker in it), and what is left then; an agent SIGKILLed with a
/// scope and a ticker, what the next agent recovers, and what is left after it.
fn lease_and_recovery_on_systemd_board(
    lan: &Lan,
    h: &InventoryHost,
    bin: &Path,
    limits: &edgesim::host::cgroup::NodeLimits,
    leftovers: &str,
) -> (String, String, Vec<String>, String) {
    let t = Instant::now();
    let r = controller(&lan.ctl, async || {
        let board = transport::connect(h, &ConnectOptions::default())
            .await
            .expect("connects");
        let after_run = board.sh(leftovers).await.expect("the board answers");
        let (child, mut agent) = start_agent(&board, bin).await;
        let facts = agent
            .call(Request::Hello)
            .await
            .expect("the agent answers")
            .facts
            .expect("its facts");
        assert!(
            facts
                .systemd
                .as_deref()
                .is_some_and(|v| v.starts_with("systemd 252")),
            "{facts:?}"
        );
        assert_eq!(facts.cgroup_error, None, "{facts:?}");
        let remote = board.upload_agent(bin).await.expect("uploads");
        let scoped = |lease_ms| {
            Request::Apply(Desired {
                iface: "eth0".into(),
                lease_ms,
                cgroup: Some("edgesim/t1/pi".into()),
                limits: Some(limits.clone()),
                ..Desired::default()
            })
        };
        let ticker = format!(
            "setsid {remote} agent-enter --cgroup edgesim/t1/pi -- sh -c 'while :; do date >>/tmp/ticks; sleep 0.1; done' </dev/null >/dev/null 2>&1 & sleep 0.5; pgrep -f 'tmp/tick[s]'"
        );
        // The controller falls silent (SIGKILLed, or cut off): the lease runs out and the
        // agent stops the scope with what ran in it.
        let r = ok(&mut agent, scoped(1500)).await;
        assert!(
            r.workloads
                .as_deref()
                .is_some_and(|w| w.starts_with("systemd scope edgesim-t1-pi.scope")),
            "{r:?}"
        );
        let pid = board.sh(&ticker).await.expect("the ticker starts");
        assert!(!pid.trim().is_empty(), "the ticker runs");
        let _ = child.wait().await;
        drop(agent);
        let after_lease = board.sh(leftovers).await.expect("the board answers");
        // SIGKILL of the agent itself (not the scope's keeper, the same binary): the next
        // agent stops the scope its state file names.
        let (_child, mut agent) = start_agent(&board, bin).await;
        assert!(
            agent
                .call(Request::Hello)
                .await
                .expect("the agent answers")
                .ok
        );
        ok(&mut agent, scoped(30_000)).await;
        board.sh(&ticker).await.expect("the ticker starts");
        board
            .sh("for p in $(pidof edgesim); do grep -q agent-hold /proc/$p/cmdline || kill -KILL $p; done")
            .await
            .expect("kills the agent");
        drop(agent);
        let (_child, mut agent) = start_agent(&board, bin).await;
        let hello = agent
            .call(Request::Hello)
            .await
            .expect("the agent answers")
            .facts
            .expect("its facts");
        assert!(
            agent
                .call(Request::Bye)
                .await
                .expect("the agent answers")
                .ok
        );
        let after_recovery = board.sh(leftovers).await.expect("the board answers");
        (after_run, after_lease, hello.recovered, after_recovery)
    });
    eprintln!(
        "lease and recovery as {}: {:.1} s",
        h.user.as_deref().unwrap_or("?"),
        t.elapsed().as_secs_f64()
    );
    let (after_run, after_lease, recovered, after_recovery) = &r;
    assert_eq!(
        after_run.trim(),
        "",
        "nothing of the run is left on the board"
    );
    assert_eq!(after_lease.trim(), "", "the lease's revert leaves nothing");
    assert!(
        recovered
            .iter()
            .any(|r| r.contains("systemd scope edgesim-t1-pi.scope")),
        "{recovered:?}"
    );
    assert_eq!(after_recovery.trim(), "", "recovery leaves nothing");
    r
}

/// Capability `systemd-board`: on an arm64 board whose PID 1 is Debian 12's systemd, a node's
/// workloads run in the transient scope `edgesim-<run>-<node>.scope` in `edgesim.slice`,
/// with the profile's limits as its unit properties; `node-down` freeze hangs them there;
/// the scope (and the slice, once empty) is stopped after the run, when the lease of a silent
/// controller runs out, and by the next agent after a SIGKILLed one. First as root (the
/// system manager's scope), then as the unprivileged `edgesim` user (a scope of that user's
/// own systemd manager, lingering, which moves each workload into it on the agent's request).
#[test]
fn a_systemd_board_runs_workloads_in_a_scope_that_freezes_and_goes() {
    let _g = common::serial();
    let Some((board_dir, bin)) = systemd_gate() else {
        return;
    };
    let lan = Lan::new("y", 1);
    let dir = tempfile::tempdir().expect("test fixture");
    keygen(&dir.path().join("user_key"));
    let vm = Qemu::boot_as(
        &lan,
        dir.path(),
        &board_dir,
        &dir.path().join("user_key.pub"),
        false,
        "systemd",
    );
    let pi5 = profile("raspberry-pi-5-8gb");
    let limits = edgesim::targets::device::lab::board_limits(&pi5);

    // As root: scopes of the system manager.
    let root_host = host(dir.path(), &board_dir, "root");
    freeze_run_on_systemd_board(&lan, dir.path(), &bin, "root", &limits, |unit| {
        format!("/edgesim.slice/{unit}/workloads")
    });
    lease_and_recovery_on_systemd_board(&lan, &root_host, &bin, &limits, SYSTEMD_LEFTOVERS);

    // As the `edgesim` user, prepared as the playbook prepares it: scopes of its own manager.
    let t = Instant::now();
    let uid = controller(&lan.ctl, async || {
        let board = transport::connect(&root_host, &ConnectOptions::default())
            .await
            .expect("connects");
        board.sh(PREPARE_USER).await.expect("prepares the user")
    });
    let uid = uid.trim().to_string();
    eprintln!(
        "the edgesim user (uid {uid}) and its lingering manager: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let manager = format!("/user.slice/user-{uid}.slice/user@{uid}.service");
    let notes = freeze_run_on_systemd_board(&lan, dir.path(), &bin, "edgesim", &limits, |unit| {
        format!("{manager}/edgesim.slice/{unit}/workloads")
    });
    assert!(
        notes.contains(&format!("of uid {uid}'s user manager")),
        "the report says whose manager held the workloads: {notes}"
    );
    let user_host = host(dir.path(), &board_dir, "edgesim");
    lease_and_recovery_on_systemd_board(&lan, &user_host, &bin, &limits, USER_LEFTOVERS);
    drop(vm);
}

/// Writes an inventory of two boards: `sink`, the namespace board whose sshd keeps its keys in
/// `sshd_dir`, and `pi`, the qemu board (keys in `board_keys`), reached as `pi_user`.
fn sink_and_pi_inventory(path: &Path, sshd_dir: &Path, board_keys: &Path, pi_user: &str) {
    std::fs::write(
        path,
        format!(
            "all:\n  vars: {{ansible_user: root}}\n  hosts:\n    sink:\n      ansible_host: {}\n      ansible_ssh_private_key_file: {}\n      edgesim_known_hosts_file: {}\n      edgesim_cache_dir: {}\n      edgesim_profile: this-host\n    pi:\n      ansible_host: {VM_ADDR}\n      ansible_user: {pi_user}\n      ansible_ssh_private_key_file: {}\n      edgesim_known_hosts_file: {}\n      edgesim_profile: raspberry-pi-5-8gb\n",
            Lan::addr(0),
            sshd_dir.join("user_key").display(),
            sshd_dir.join("known_hosts").display(),
            sshd_dir.join("cache").display(),
            board_keys.join("user_key").display(),
            board_keys.join("known_hosts").display(),
        ),
    )
    .expect("test fixture");
}
