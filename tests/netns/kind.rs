//! The kind target's work on node containers ([`edgesim::targets::kind::nodes`]) against the
//! real Docker Engine, with stand-ins for Kind's nodes: three `edgesim/node` containers named
//! as Kind names them, on a labelled bridge network of their own, the control plane's
//! "API server" a listener on TCP 6443. Limits are read back from `docker inspect` and the
//! containers' cgroups; faults are observed by their effect from inside the containers'
//! namespaces (ping, TCP connects, UDP counted, TCP goodput), and `nft`/`tc` run in those
//! namespaces show what is installed. Everything is removed by a drop guard, also on failure.
//!
//! Capability `docker`, as the docker tests.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use edgesim::host::ns::SocketFactory;
use edgesim::scenario::plan::LinkParams;
use edgesim::targets::kind::nodes::{KindFaults, KindNodes, Member, NodeFaults};
use edgesim::targets::state::{self, Mode};
use socket2::{Domain, Protocol, Type};

use crate::common::*;
use crate::docker::{docker_ready, inspect, root, tcp_goodput};

const SPEC: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: kindnodes}
spec:
  seed: 3
  duration: 10s
  profiles:
    tiny-board:
      arch: arm64
      cpu: {model: test-core, cores: 2, clockGHz: 1.0, relativeSpeed: 0.1}
      memory: {total: 1Gi, reserved: 256Mi}
      pids: 200
  sites:
    edge: {}
  nodes:
    - {name: gw, count: 2, site: edge, profile: tiny-board}
";

fn plan() -> edgesim::scenario::Plan {
    edgesim::testing::plan_of(SPEC, "kind")
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The stand-in cluster; removes its containers, network and state files when dropped.
struct Cluster {
    name: String,
    network: String,
    containers: Vec<String>,
    runs: Vec<String>,
}

impl Cluster {
    fn start(workers: usize) -> Cluster {
        let pid = std::process::id();
        let mut c = Cluster {
            name: format!("edgesim-kt{pid:x}"),
            network: format!("edgesim-test-kind-{pid}"),
            containers: Vec::new(),
            runs: Vec::new(),
        };
        docker(&["network", "create", "--label", "edgesim.test=1", &c.network]);
        let image = format!(
            "edgesim/node:{}-{}",
            env!("CARGO_PKG_VERSION"),
            edgesim::testing::host_arch()
        );
        for i in 0..=workers {
            let name = edgesim::targets::kind::nodes::container_name(&c.name, i);
            c.containers.push(name.clone());
            docker(&[
                "run",
                "-d",
                "--label",
                "edgesim.test=1",
                "--name",
                &name,
                "--hostname",
                &name,
                "--network",
                &c.network,
                &image,
            ]);
        }
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        for r in &self.runs {
            let _ = std::fs::remove_file(state::path_of(r));
        }
    }
}

fn peer(nodes: &KindNodes, m: Member) -> Peer {
    let (name, addr, pid) = &nodes.nodes[m.index()];
    let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("node namespace");
    Peer {
        name: name.clone(),
        addr: *addr,
        sockets: SocketFactory::start(f.into(), name).expect("entering the node"),
    }
}

/// A listener on `port` inside `p`'s namespace (the kernel completes handshakes without
/// `accept`).
fn listen(p: &Peer, port: u16) -> TcpListener {
    let s = p
        .sockets
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .expect("bind");
    s.listen(16).expect("listen");
    s.into()
}

/// Whether a TCP handshake from `from` to `to:port` completes within a second.
fn connects(from: &Peer, to: &Peer, port: u16) -> bool {
    let s = from
        .sockets
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    s.connect_timeout(
        &SocketAddrV4::new(to.addr, port).into(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Whether one ping from `from` to `to` is answered within a second (busybox ping in the
/// container).
fn pings(from: &Peer, to: &Peer) -> bool {
    Command::new("docker")
        .args(["exec", &from.name, "ping", "-c", "1", "-W", "1"])
        .arg(to.addr.to_string())
        .output()
        .expect("docker exec ping")
        .status
        .success()
}

/// `nft list ruleset` or `tc qdisc show dev eth0` inside a node's namespace.
fn inside(pid: i64, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of edgesim's in any node's namespace: no table, no htb.
fn assert_clean(nodes: &KindNodes, when: &str) {
    for (name, _, pid) in &nodes.nodes {
        let rules = inside(*pid, &["nft", "list", "ruleset"]);
        assert!(
            !rules.contains("edgesim"),
            "{when}: {name} still holds edgesim rules:\n{rules}"
        );
        let qd = inside(*pid, &["tc", "qdisc", "show", "dev", "eth0"]);
        assert!(!qd.contains("htb"), "{when}: {name} still shaped:\n{qd}");
    }
}

// `serial()` keeps the kernel tests of this binary one at a time; holding it across awaits
// blocks no other task (each test has a runtime of its own).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_nodes_shaped_and_impaired_from_inside_with_the_api_server_exempt() {
    let _g = serial();
    if !docker_ready(&[]) || !edgesim::testing::program("nsenter", "nsenter") {
        return;
    }
    let plan = plan();
    let cluster = Cluster::start(plan.nodes.len());
    let nodes = KindNodes::find(&cluster.name, plan.nodes.len(), &cluster.network)
        .await
        .expect("finding the node containers");

    // 1. Shaping: the workers hold the board, the control plane nothing.
    let limits = nodes.shape(&plan).await.expect("shaping the workers");
    for (i, l) in limits.iter().enumerate() {
        let name = &nodes.nodes[i + 1].0;
        let quota = l
            .cpu_quota_us
            .expect("a 2-core board at 0.1 is below the host");
        let mem = l.memory_bytes.expect("memory limit");
        assert_eq!(mem, 768 << 20, "1Gi − 256Mi reserved");
        let h = &inspect(name)["HostConfig"];
        assert_eq!(h["NanoCpus"].as_u64(), Some(quota * 10_000), "{name}");
        assert_eq!(h["Memory"].as_u64(), Some(mem), "{name}");
        assert_eq!(h["MemorySwap"].as_u64(), Some(mem), "{name}: no swap");
        let id = inspect(name)["Id"].as_str().expect("id").to_string();
        let cg = NodeCgroup::at(PathBuf::from(format!("docker/{id}")), name);
        assert_eq!(cg.cpu(), (Some(quota), 100_000), "{name}: CFS quota");
        assert_eq!(cg.memory(), Some(mem), "{name}: memory limit");
        if let Some(swap) = cg.memory_and_swap() {
            assert_eq!(swap, Some(mem), "{name}: memory + swap");
        }
    }
    let cp = &inspect(&nodes.nodes[0].0)["HostConfig"];
    assert_eq!(
        (cp["NanoCpus"].as_u64(), cp["Memory"].as_u64()),
        (Some(0), Some(0)),
        "the control plane stays unshaped"
    );

    // 2. Faults. The "API server" listens on 6443 (and 6444, which is not exempt); each
    // worker's "kubelet" on 10250.
    let (c, w0, w1) = (
        peer(&nodes, Member::ControlPlane),
        peer(&nodes, Member::Worker(0)),
        peer(&nodes, Member::Worker(1)),
    );
    let _listeners = (
        listen(&c, 6443),
        listen(&c, 6444),
        listen(&w0, 10250),
        listen(&w1, 10250),
    );
    assert!(pings(&w0, &w1) && pings(&w0, &c), "open before any fault");

    let run = state::new_run_id();
    let mut cluster = cluster;
    cluster.runs.push(run.clone());
    let out = tempfile::tempdir().expect("tempdir");
    let mut faults = KindFaults::open(&plan, &nodes, &run, Mode::Lab, out.path().into())
        .expect("opening the nodes");
    // Every node cut from every other.
    let cut = NodeFaults::default().partition(
        "all",
        &[
            &[Member::ControlPlane],
            &[Member::Worker(0)],
            &[Member::Worker(1)],
        ],
    );
    faults.apply(&cut).await.expect("partition");
    std::thread::scope(|s| {
        let ww = s.spawn(|| pings(&w0, &w1));
        let wc = s.spawn(|| pings(&w1, &c));
        assert!(
            !ww.join().unwrap(),
            "ping between the workers crosses the cut"
        );
        assert!(
            !wc.join().unwrap(),
            "ping to the control plane crosses the cut"
        );
    });
    for w in [&w0, &w1] {
        assert!(
            connects(w, &c, 6443),
            "{} cannot reach the API server",
            w.name
        );
        assert!(
            connects(&c, w, 10250),
            "the API server cannot reach {}'s kubelet",
            w.name
        );
    }
    assert!(
        !connects(&w0, &c, 6444),
        "the exemption must be the API server's port only"
    );
    let dropped: u64 = faults
        .counters(Member::Worker(1))
        .expect("counters")
        .iter()
        .map(|r| r.packets)
        .sum();
    assert!(dropped > 0, "worker 1's rules dropped nothing");
    let rules = inside(nodes.nodes[1].2, &["nft", "list", "ruleset"]);
    assert!(
        rules.contains(&format!("table inet edgesim-{run}")),
        "{rules}"
    );

    // Loss: 30 % of the datagrams from worker 0 to worker 1.
    let loss = NodeFaults::default().link(
        0,
        1,
        LinkParams {
            loss: 0.3,
            ..LinkParams::default()
        },
    );
    faults.apply(&loss).await.expect("loss");
    let n = 1000;
    let got = udp_delivered(&w0, &w1, n);
    let (lo, hi) = binomial_999(n, 0.7);
    eprintln!("kind loss 30%: {got}/{n} delivered (99.9% interval {lo:.0}..{hi:.0})");
    assert!((lo..=hi).contains(&f64::from(got)), "{got}/{n} delivered");
    assert!(pings(&w0, &c), "the partition is gone with the new faults");

    // Rate: 8 Mbit/s from worker 0 to worker 1; the API server's traffic is not held to it.
    let rate = NodeFaults::default().link(
        0,
        1,
        LinkParams {
            rate: Some(8_000_000),
            ..LinkParams::default()
        },
    );
    faults.apply(&rate).await.expect("rate");
    let want = 8e6 * 1448.0 / 1514.0;
    let bps = tcp_goodput(&w0, &w1, 2.0);
    let to_cp = tcp_goodput(&w0, &c, 1.0);
    eprintln!(
        "kind rate 8mbit: worker -> worker {:.2} Mbit/s (ratio {:.3}), worker -> control plane {:.0} Mbit/s",
        bps / 1e6,
        bps / want,
        to_cp / 1e6
    );
    assert!(
        (0.85..=1.08).contains(&(bps / want)),
        "{:.2} Mbit/s through 8mbit",
        bps / 1e6
    );
    assert!(
        to_cp > 10.0 * want,
        "traffic to the control plane was shaped: {:.2} Mbit/s",
        to_cp / 1e6
    );

    // Delay: netem, or a clear refusal that leaves no faults at all.
    let delay = NodeFaults::default().link(
        0,
        1,
        LinkParams {
            delay: Some(Duration::from_millis(20)),
            rate: Some(8_000_000),
            ..LinkParams::default()
        },
    );
    match faults.apply(&delay).await {
        Err(e) => {
            let msg = e.to_string();
            eprintln!("kind delay refused: {msg}");
            assert!(msg.contains("no netem qdisc"), "{msg}");
            assert_clean(&nodes, "after a refused delay");
        }
        Ok(()) => {
            let qd = inside(nodes.nodes[1].2, &["tc", "qdisc", "show", "dev", "eth0"]);
            assert!(qd.contains("netem") && qd.contains("delay 20ms"), "{qd}");
        }
    }

    // Revert: everything open again, nothing left, no state file.
    faults.apply(&cut).await.expect("partition again");
    let errors = faults.revert().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(pings(&w0, &w1) && pings(&w1, &c), "open after revert");
    assert_clean(&nodes, "after revert");
    assert!(!state::path_of(&run).exists(), "state file left");

    // A run that dies (its faults dropped without revert, as SIGKILL would) is cleaned up
    // from its state file alone.
    let run2 = state::new_run_id();
    cluster.runs.push(run2.clone());
    let mut faults = KindFaults::open(&plan, &nodes, &run2, Mode::Lab, out.path().into())
        .expect("opening the nodes");
    let split = NodeFaults::default()
        .partition("split", &[&[Member::Worker(0)], &[Member::Worker(1)]])
        .link(
            1,
            0,
            LinkParams {
                rate: Some(8_000_000),
                ..LinkParams::default()
            },
        );
    faults.apply(&split).await.expect("partition");
    drop(faults);
    assert!(!pings(&w0, &w1), "the dropped run's partition stays");
    assert!(connects(&w0, &c, 6443), "API server reachable");
    let st = state::load(&state::path_of(&run2)).expect("state file of the dead run");
    let errors = edgesim::targets::cleanup(&st).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(pings(&w0, &w1), "open after cleanup");
    assert_clean(&nodes, "after cleanup from the state file");
    assert!(!state::path_of(&run2).exists(), "state file left");
    let network = cluster.network.clone();
    drop(cluster);
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={network}"),
    ]);
    assert!(nets.is_empty(), "network {network} left");
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("name=edgesim-kt{:x}", std::process::id()),
    ]);
    assert!(left.is_empty(), "containers left: {left}");
}

/// The static agent for this host's architecture (`.ci/agent-static` builds it).
fn host_agent() -> Option<PathBuf> {
    let machine = std::env::consts::ARCH;
    if let Some(p) = std::env::var_os(format!("EDGESIM_AGENT_{}", machine.to_uppercase())) {
        return Some(p.into());
    }
    ["debug", "release"]
        .iter()
        .map(|p| root().join(format!("target/{machine}-unknown-linux-musl/{p}/edgesim")))
        .find(|p| p.is_file())
}

/// The agent of a cluster of your own as its DaemonSet runs it: the image of
/// `images/agent/Dockerfile` (around the static agent), with the DaemonSet's capabilities in a
/// node's network namespace (`--network container:<node>`: what `hostNetwork` is), idling; `/edgesim agent`
/// exec'd in it speaks the protocol over the exec stream (`docker exec -i`: what the API
/// server's exec is, once on the node). A block cuts the peer off but for the exempt flow (the
/// kubelet's, on a cluster); the end of the stream makes the agent revert everything.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_agent_image_applies_faults_over_an_exec_stream_and_reverts_when_it_ends() {
    use edgesim::host::nft::Flow;
    use edgesim::targets::device::agent::{Desired, Request, WireBlock};
    use edgesim::targets::device::transport::AgentConn;
    let _g = serial();
    if !docker_ready(&[]) || !edgesim::testing::program("nsenter", "nsenter") {
        return;
    }
    let agent = host_agent();
    if !edgesim::testing::gate(
        "docker",
        agent.is_some(),
        "no static agent for this host (.ci/agent-static builds it)",
    ) {
        return;
    }
    // The image, built as images/build.sh builds it (the Dockerfile around the binary); its
    // guard is dropped after the cluster's, once no container uses it.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(agent.unwrap(), ctx.path().join("edgesim")).unwrap();
    let image = format!("edgesim-test/agent:{}", std::process::id());
    let label = format!("edgesim.test=agent-image-{}", std::process::id());
    docker(&[
        "build",
        "-q",
        "--label",
        &label,
        "-t",
        &image,
        "-f",
        root().join("images/agent/Dockerfile").to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    /// Removes the image and what its build left dangling.
    struct Image(String, String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
            let _ = Command::new("docker")
                .args(["image", "prune", "-f", "--filter"])
                .arg(format!("label={}", self.1))
                .output();
        }
    }
    let _image = Image(image.clone(), label.clone());
    let mut cluster = Cluster::start(1);
    let nodes = KindNodes::find(&cluster.name, 1, &cluster.network)
        .await
        .expect("finding the node containers");
    let (node, other) = (
        peer(&nodes, Member::Worker(0)),
        peer(&nodes, Member::ControlPlane),
    );

    let pod = format!("{}-agent", cluster.name);
    cluster.containers.insert(0, pod.clone());
    docker(&[
        "run",
        "-d",
        "--label",
        "edgesim.test=1",
        "--name",
        &pod,
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "NET_RAW",
        "--cap-add",
        "SYS_ADMIN",
        "--network",
        &format!("container:{}", node.name),
        &image,
    ]);

    // The session: an exec stream into the idling container.
    let mut exec = tokio::process::Command::new("docker")
        .args([
            "exec",
            "-i",
            "-e",
            "EDGESIM_LOG=error",
            &pod,
            "/edgesim",
            "agent",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("docker exec");
    let mut conn = AgentConn::new(exec.stdin.take().unwrap(), exec.stdout.take().unwrap());
    let hello = conn.call(Request::Hello).await.expect("hello");
    let facts = hello.facts.expect("facts");
    assert_eq!(facts.arch, edgesim::testing::host_arch());
    assert!(
        facts.addrs.contains(&("eth0".to_string(), node.addr)),
        "the agent sees the node's address: {:?}",
        facts.addrs
    );
    assert!(
        facts.cap_net_admin && facts.nftables_error.is_none(),
        "{facts:?}"
    );

    let _exempt = listen(&node, 7000);
    let _other = listen(&node, 7001);
    assert!(pings(&other, &node) && connects(&other, &node, 7001));
    let cut = Desired {
        iface: "eth0".into(),
        lease_ms: 30_000,
        blocks: vec![WireBlock {
            name: "cut".into(),
            from: vec![ipnet::IpNet::from(std::net::IpAddr::V4(other.addr))],
            to: vec![],
        }],
        exempt_management: false,
        exempt: vec![Flow {
            local: SocketAddrV4::new(node.addr, 7000).into(),
            remote: SocketAddrV4::new(other.addr, 0).into(),
        }],
        ..Desired::default()
    };
    let r = conn.call(Request::Apply(cut)).await.expect("apply");
    assert!(r.ok, "{r:?}");
    assert!(!pings(&other, &node), "the block drops ping");
    assert!(!connects(&other, &node, 7001), "the block drops TCP 7001");
    assert!(
        connects(&other, &node, 7000),
        "the exempt flow (a kubelet's, on a cluster) still connects"
    );
    let pid = nodes.nodes[1].2;
    assert!(inside(pid, &["nft", "list", "ruleset"]).contains("edgesim"));

    // The stream ends (the controller died, or the API server dropped it): the agent reverts
    // and exits.
    drop(conn);
    let st = tokio::time::timeout(Duration::from_secs(15), exec.wait())
        .await
        .expect("the agent exits when its stream ends")
        .expect("docker exec");
    assert!(st.success(), "the agent reverted cleanly: {st}");
    assert!(pings(&other, &node) && connects(&other, &node, 7001));
    let rules = inside(pid, &["nft", "list", "ruleset"]);
    assert!(!rules.contains("edgesim"), "rules left:\n{rules}");
}
