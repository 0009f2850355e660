//! The `docker` target against the real Docker Engine: node containers on the same fabric
//! as `netns`, so partitions and loss are observed with the same helpers from inside the
//! containers' namespaces; limits read back from `docker inspect` and from the containers'
//! cgroups; freeze as pause/unpause; SIGKILL + `edgesim cleanup`; images checked before
//! anything is created.
//!
//! Capability `docker` (a daemon that answers); the tests build the node image (and apps)
//! with `images/build.sh` where the Engine lacks them. The conformance matrix of portable
//! scenarios lives in `tests/scenarios.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The gates of every docker test: those of the netns tests, and a Docker Engine with the
/// node image and `images`' apps `apps` for this machine (built here when missing).
pub fn docker_ready(apps: &[&str]) -> bool {
    if !privileged()
        || !edgesim::testing::gate(
            "docker",
            edgesim::testing::docker_answers(),
            "no Docker Engine answers",
        )
    {
        return false;
    }
    let names: Vec<&str> = apps.iter().copied().chain(["node"]).collect();
    if let Err(e) = edgesim::testing::ensure_images(&root(), edgesim::testing::host_arch(), &names)
    {
        panic!("{e}");
    }
    true
}

pub fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn inspect(container: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", container])
        .output()
        .expect("docker inspect");
    assert!(
        out.status.success(),
        "docker inspect {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("docker inspect JSON");
    v[0].clone()
}

fn container_of(st: &edgesim::targets::state::RunState, node: &str) -> String {
    match &st.target {
        edgesim::targets::state::TargetState::Docker(d) => {
            d.containers[st.node_index(node).expect("node")].clone()
        }
        other => panic!("not a docker run: {}", other.name()),
    }
}

fn containers_of_run(run_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=edgesim.run={run_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn docker_partition_between_sites_blocks_both_ways_until_heal() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    crate::partition::between_sites("docker");
}

#[test]
fn docker_one_way_partition_blocks_one_direction() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    crate::partition::one_way("docker");
}

#[test]
fn docker_loss_drops_the_configured_fraction() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    crate::impairments::loss_on("docker", "kernel");
}

/// TCP goodput from `from` to `to` over `secs`, in bit/s, measured by the receiver.
pub fn tcp_goodput(from: &Peer, to: &Peer, secs: f64) -> f64 {
    use std::io::{Read, Write};
    let port = 5301;
    let lsock = to
        .sockets
        .socket(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("listener socket");
    lsock.set_reuse_address(true).expect("SO_REUSEADDR");
    lsock
        .bind(&std::net::SocketAddrV4::new(to.addr, port).into())
        .expect("bind");
    lsock.listen(1).expect("listen");
    let listener: std::net::TcpListener = lsock.into();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut first: Option<Instant> = None;
        let mut bytes = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Count from the first byte: the handshake is not the rate.
                    if first.is_none() {
                        first = Some(Instant::now());
                    } else {
                        bytes += n as u64;
                    }
                }
            }
        }
        let t = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        bytes as f64 * 8.0 / t.max(1e-9)
    });
    let csock = from
        .sockets
        .socket(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("client socket");
    csock
        .connect_timeout(
            &std::net::SocketAddrV4::new(to.addr, port).into(),
            Duration::from_secs(3),
        )
        .expect("connect");
    let mut c: std::net::TcpStream = csock.into();
    let chunk = vec![0x5au8; 64 * 1024];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if c.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(c);
    receiver.join().expect("receiver")
}

#[test]
fn docker_rate_limits_tcp_goodput() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    let sc = Scenario::new(
        "docker-rate",
        "\
seed: 4
duration: 60s
sites:
  cloud: {}
  edge:
    uplink: {site: cloud, rate: 8mbit}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw, site: edge, profile: raspberry-pi-5-4gb}
",
    )
    .on("docker");
    let lab = Lab::up(&sc);
    let (sink, gw) = (lab.peer("sink"), lab.peer("gw"));
    let bps = tcp_goodput(&gw, &sink, 4.0);
    // htb at 8 Mbit/s of frames; TCP payload is MSS/1514 of it (1448 with timestamps).
    let want = 8e6 * 1448.0 / 1514.0;
    let ratio = bps / want;
    eprintln!(
        "docker rate: gw -> sink goodput {:.3} Mbit/s, expected {:.3} (ratio {ratio:.3})",
        bps / 1e6,
        want / 1e6
    );
    assert!(
        (0.85..=1.08).contains(&ratio),
        "goodput {:.3} Mbit/s through an 8mbit uplink (expected about {:.3})",
        bps / 1e6,
        want / 1e6
    );
    // The other direction is not limited by the uplink's `up` rate alone: it is its `down`
    // (same rate, symmetric link).
    let back = tcp_goodput(&sink, &gw, 3.0) / want;
    assert!(
        (0.85..=1.08).contains(&back),
        "sink -> gw ratio {back:.3} through the symmetric 8mbit link"
    );
    // A live fault on a docker lab: the same path as on netns (`edgesim fault`).
    let out = crate::live::fault(
        &lab.name,
        &["partition", "{between: [[gw], [sink]]}", "--for", "3s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    assert_eq!(ping(&lab.name, "gw", "sink", 2), 0, "partitioned live");
    std::thread::sleep((t + Duration::from_millis(3500)).saturating_duration_since(Instant::now()));
    assert_eq!(ping(&lab.name, "gw", "sink", 2), 2, "healed by its `for`");
    lab.down();
}

/// Profile limits on the node container: `docker inspect` and the cgroups (the node's shared
/// parent and the container's own) agree with the quota arithmetic of `netns`; a frozen node
/// is paused and thawed; `cpu` and `memory` change the container live; a command workload
/// runs inside the node container with the workloads' environment.
#[test]
fn docker_limits_freeze_and_live_updates() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    let sc = Scenario::new(
        "docker-limits",
        "\
seed: 5
duration: 14s
profiles:
  tiny-board:
    arch: arm64
    cpu: {model: test-core, cores: 2, clockGHz: 1.0, relativeSpeed: 0.1}
    memory: {total: 1Gi, reserved: 256Mi}
    pids: 200
    storage: {kind: microsd, readMBps: 40, writeMBps: 20, readIops: 1500, writeIops: 500}
sites:
  lab: {}
nodes:
  - {name: box, site: lab, profile: tiny-board}
workloads:
  - {name: spin, nodes: [box], command: [sh, -c, 'echo \"node=$EDGESIM_NODE cores=$EDGESIM_CPU_CORES\"; while :; do :; done']}
timeline:
  - {at: 2s, for: 2s, node-down: {nodes: [box], mode: freeze}}
  - {at: 6s, for: 3s, cpu: {nodes: [box], cores: 1}}
  - {at: 10s, for: 3s, memory: {nodes: [box], limit: 256Mi}}
",
    )
    .on("docker");
    let mut run = Run::start(&sc);
    run.timeline_started();
    let st = run.state();
    let ctr = container_of(&st, "box");
    let mem = 768 * 1024 * 1024u64;

    // docker inspect: 0.2 host CPUs (2 cores at speed 0.1, host speed 1.0), memory with no
    // swap beyond it, tasks, block IO on the data root's disk.
    let hc = inspect(&ctr)["HostConfig"].clone();
    assert_eq!(hc["NanoCpus"], 200_000_000u64, "NanoCpus: {hc}");
    assert_eq!(hc["Memory"], mem, "Memory");
    assert_eq!(
        hc["MemorySwap"], mem,
        "MemorySwap = Memory (no swap beyond)"
    );
    assert_eq!(hc["PidsLimit"], 200, "PidsLimit");
    assert_eq!(
        hc["NetworkMode"], "none",
        "node containers have no network of Docker's"
    );
    if let Some(dev) = hc["BlkioDeviceReadBps"].as_array().and_then(|a| a.first()) {
        assert_eq!(dev["Rate"], 40_000_000u64, "read bandwidth: {dev}");
        assert_eq!(hc["BlkioDeviceWriteBps"][0]["Rate"], 20_000_000u64);
        assert_eq!(hc["BlkioDeviceReadIOps"][0]["Rate"], 1500);
        assert_eq!(hc["BlkioDeviceWriteIOps"][0]["Rate"], 500);
    } else {
        eprintln!("note: Docker's data root has no block device here; block IO not throttled");
    }
    // The same shape in the kernel: the node's shared parent cgroup and the container's own.
    let parent = NodeCgroup::of(&st, "box");
    assert_eq!(
        parent.cpu(),
        (Some(20_000), 100_000),
        "parent cgroup CPU quota"
    );
    assert_eq!(parent.memory(), Some(mem), "parent cgroup memory limit");
    let id = inspect(&ctr)["Id"]
        .as_str()
        .expect("container id")
        .to_string();
    let own = NodeCgroup::at(
        std::path::PathBuf::from(format!("edgesim/{}/box/{id}", st.run_id)),
        "box",
    );
    assert_eq!(
        own.cpu(),
        (Some(20_000), 100_000),
        "the container's own CPU quota"
    );
    assert_eq!(own.pids_max(), Some(200), "the container's task limit");

    // The command workload runs inside the node container, with the node's environment.
    let out = sc.out_dir().join("workloads/spin/box.stdout.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&out).is_ok_and(|s| s.contains("node=box cores=2")) {
        assert!(
            Instant::now() < deadline,
            "no output from the command workload in {}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Freeze: docker pause, then unpause.
    run.action("node-down", false);
    assert_eq!(
        inspect(&ctr)["State"]["Paused"],
        true,
        "frozen node is paused"
    );
    run.action("node-up", true);
    assert_eq!(
        inspect(&ctr)["State"]["Paused"],
        false,
        "thawed node is unpaused"
    );

    // cpu: {cores: 1}: half the quota, live, on the container and its parent; then back.
    run.action("cpu", false);
    assert_eq!(
        inspect(&ctr)["HostConfig"]["NanoCpus"],
        100_000_000u64,
        "NanoCpus after cpu: 1"
    );
    assert_eq!(
        parent.cpu(),
        (Some(10_000), 100_000),
        "parent quota after cpu: 1"
    );
    run.action("cpu", true);
    assert_eq!(
        inspect(&ctr)["HostConfig"]["NanoCpus"],
        200_000_000u64,
        "NanoCpus restored"
    );

    run.action("memory", false);
    let m = 256 * 1024 * 1024u64;
    assert_eq!(
        inspect(&ctr)["HostConfig"]["Memory"],
        m,
        "Memory after memory: 256Mi"
    );
    assert_eq!(
        parent.memory(),
        Some(m),
        "parent memory after memory: 256Mi"
    );
    run.action("memory", true);
    assert_eq!(
        inspect(&ctr)["HostConfig"]["Memory"],
        mem,
        "Memory restored"
    );

    let fin = run.finish(Duration::from_secs(30));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    assert_eq!(fin.report["target"], "docker");
    assert_gone(&fin.run_id());
}

/// A lab whose daemon is SIGKILLed leaves its containers; `edgesim cleanup` removes them and
/// everything else, by label and from the state file, and the host is as it was.
#[test]
fn docker_sigkill_then_cleanup_leaves_nothing() {
    let _g = serial();
    if !docker_ready(&["cloud-sink"]) {
        return;
    }
    let sc = Scenario::new(
        "docker-kill",
        "\
seed: 6
duration: 60s
sites:
  cloud: {}
  edge:
    uplink: {site: cloud, delay: 5ms}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw, count: 2, site: edge, profile: raspberry-pi-5-4gb}
workloads:
  - {name: sink, nodes: [sink], app: cloud-sink}
  - {name: idle, nodes: [\"gw-*\"], command: sleep 600}
",
    )
    .on("docker");
    let before = HostSnapshot::take();
    let _cleanup = CleanupOnDrop(Some(sc.name.clone()));
    let st = Lab::up(&sc).into_state();
    let ctrs = containers_of_run(&st.run_id);
    assert_eq!(ctrs.len(), 4, "3 node containers and the sink's: {ctrs:?}");
    kill_lab_daemon(&st);
    assert!(
        !containers_of_run(&st.run_id).is_empty(),
        "the killed lab should have left its containers"
    );
    let out = edgesim().arg("cleanup").output().expect("edgesim cleanup");
    assert!(
        out.status.success(),
        "edgesim cleanup failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_gone(&st.run_id);
    before.assert_same(
        &HostSnapshot::take(),
        "across a docker lab whose daemon was killed, and `edgesim cleanup`",
    );
}

/// Missing images and commands the node image lacks are refused before anything exists; a
/// scenario that names an image is refused by `netns` with the targets that take it.
#[test]
fn docker_refuses_missing_images_before_creating_anything() {
    let _g = serial();
    if !docker_ready(&[]) {
        return;
    }
    let sc = Scenario::new(
        "docker-missing",
        "\
duration: 5s
sites:
  a: {}
nodes:
  - {name: n, site: a, profile: cloud-small}
workloads:
  - {name: svc, nodes: [n], image: \"edgesim-test/absent:0\"}
  - {name: py, nodes: [n], command: python3 -m http.server}
",
    );
    let before = std::fs::read_dir(edgesim::targets::state::dir())
        .map(|d| d.count())
        .unwrap_or(0);
    let out = edgesim()
        .args(["run", "--target", "docker"])
        .arg(&sc.path)
        .output()
        .expect("edgesim run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "invalid input: {err}");
    assert!(
        err.contains("the image edgesim-test/absent:0 is not in the Docker Engine"),
        "{err}"
    );
    assert!(
        err.contains("command `python3` is not in the node image"),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    let after = std::fs::read_dir(edgesim::targets::state::dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        before, after,
        "no state file may be written for a refused run"
    );
    let labelled = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=edgesim.scenario={}", sc.name),
        ])
        .output()
        .expect("docker ps");
    assert!(labelled.stdout.is_empty(), "containers were created");

    let out = edgesim()
        .args(["validate", "--target", "netns"])
        .arg(&sc.path)
        .output()
        .expect("edgesim validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("the `netns` target cannot run `image:` workloads")
            && err.contains("--target docker"),
        "{err}"
    );
}

/// `emulateArch: true` on docker: an arm64 board runs the arm64 node image and the app's arm64
/// image under qemu binfmt, and the app serves (the lab waits for its readyPort).
#[test]
fn docker_emulate_arch_runs_arm64_images() {
    let _g = serial();
    if std::env::consts::ARCH == "aarch64"
        || !edgesim::testing::gate(
            "qemu",
            Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(),
            "qemu-aarch64 binfmt is not registered",
        )
        || !docker_ready(&[])
    {
        return;
    }
    if let Err(e) = edgesim::testing::ensure_images(&root(), "arm64", &["node", "cloud-sink"]) {
        panic!("{e}");
    }
    let sc = Scenario::new(
        "docker-arm64",
        "\
duration: 30s
emulateArch: true
sites:
  edge: {}
nodes:
  - {name: pi, site: edge, profile: raspberry-pi-5-4gb}
workloads:
  - {name: sink, nodes: [pi], app: cloud-sink, readyTimeout: 30s}
",
    )
    .on("docker");
    let lab = Lab::up(&sc);
    let node = container_of(&lab.state, "pi");
    let arch = |c: &str| {
        let image = inspect(c)["Image"].as_str().expect("image id").to_string();
        let out = Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Architecture}}", &image])
            .output()
            .expect("docker image inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        arch(&node),
        "arm64",
        "the node container runs the arm64 node image"
    );
    assert_eq!(
        arch(&format!("{node}-sink")),
        "arm64",
        "the app container runs the arm64 image"
    );
    let out = exec(
        &sc.name,
        "pi",
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/healthz"],
    );
    assert!(
        out.status.success(),
        "the arm64 sink answers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.down();
}
