//! The Docker images of the edge workloads: built by `images/build.sh` for amd64 and arm64
//! (`FROM scratch`, static musl binaries, no registry), then run as a pipeline.
//!
//! Per architecture (arm64 through qemu-user's binfmt_misc handler), a `cloud-sink` container
//! and an `iot-collector` container share one network namespace that Docker creates for the
//! sink (`--network none`, then `--network container:<sink>`), so their traffic never leaves
//! it. The collector is killed with SIGKILL half-way and started again: its durable queue is
//! inside the container, so the sink must still end up with every reading exactly once. The
//! test reads the sink's `/status` from inside that namespace, stops both containers with
//! SIGTERM and expects a clean exit, and removes them.
//!
//! Then, per architecture, the node image (`edgesim/node`, a scenario node's own container):
//! a shell runs in it through `docker exec`, the command list inside equals the one build.sh
//! wrote next to the binaries and names exactly what `/bin` holds, an orphan left behind by an
//! exec'd shell is reparented to the image's init and reaped once it exits (no zombie), and
//! `docker stop -t 2` (SIGTERM, SIGKILL after 2 s) ends it with status 0 although one of its
//! processes ignores SIGTERM. Capability: `docker` (a daemon that answers); arm64 also needs
//! `qemu`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LABEL: &str = "edgesim.test=images";
const DEVICES: u64 = 3;
const READINGS: u64 = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"))
}

/// Runs `docker args…` and returns its trimmed stdout; panics with its stderr if it fails.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn daemon_answers() -> bool {
    edgesim::testing::have_program("docker")
        && Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Removes this test's containers, also when it fails half-way.
struct Containers;

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}

/// `GET path` on 127.0.0.1:`port` inside the network namespace of the container's process.
fn get_inside(container: &str, port: u16, path: &str) -> Option<String> {
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
    let fd: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .ok()?
        .into();
    let path = path.to_string();
    edgesim::host::ns::run_in_fd(&fd, container, move || {
        let mut s = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_secs(2),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (head, body) = body.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.") && head.contains(" 200 ")).then(|| body.to_string())
    })
    .ok()
    .flatten()
}

fn sink_totals(sink: &str) -> Option<serde_json::Value> {
    let body = get_inside(sink, 8080, "/status")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["totals"].clone())
}

/// `docker run -d` of `image` for `arch` with this test's label, on `network`.
fn run_container(arch: &str, network: &str, name: &str, image: &str, args: &[&str]) {
    let platform = format!("linux/{arch}");
    let mut argv = vec![
        "run",
        "-d",
        "--platform",
        &platform,
        "--network",
        network,
        "--label",
        LABEL,
        "--name",
        name,
        image,
    ];
    argv.extend_from_slice(args);
    docker_ok(&argv);
}

fn exit_code(container: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", container])
}

fn pipeline(arch: &str, version: &str) {
    let tag = |p: &str| format!("edgesim/{p}:{version}-{arch}");
    for p in ["cloud-sink", "iot-collector"] {
        let got = docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Os}}/{{.Architecture}}",
            &tag(p),
        ]);
        assert_eq!(got, format!("linux/{arch}"), "{}", tag(p));
    }
    let sink = format!("edgesim-images-sink-{arch}-{}", std::process::id());
    let collector = format!("edgesim-images-collector-{arch}-{}", std::process::id());
    run_container(
        arch,
        "none",
        &sink,
        &tag("cloud-sink"),
        &["--listen", "127.0.0.1:8080"],
    );
    // Wait for the sink to answer before the collector starts (qemu makes arm64 slower).
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink_totals(&sink).is_none() {
        assert!(
            Instant::now() < deadline,
            "{arch} sink did not answer /status; its log:\n{}",
            String::from_utf8_lossy(&docker(&["logs", &sink]).stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (devices, readings) = (DEVICES.to_string(), READINGS.to_string());
    run_container(
        arch,
        &format!("container:{sink}"),
        &collector,
        &tag("iot-collector"),
        &[
            "--listen",
            "127.0.0.1:8081",
            "--sink-url",
            "http://127.0.0.1:8080",
            "--devices",
            &devices,
            "--rate",
            "50",
            "--max-readings",
            &readings,
            "--seed",
            "5",
        ],
    );

    // Half-way (50 readings/s per device for 4 s): kill the collector, then start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unique = sink_totals(&sink)
            .and_then(|t| t["unique"].as_u64())
            .unwrap_or(0);
        if unique >= DEVICES * READINGS / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{arch}: the sink got only {unique} readings in 60 s; collector log:\n{}",
            String::from_utf8_lossy(&docker(&["logs", &collector]).stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    docker_ok(&["kill", "--signal", "KILL", &collector]);
    assert_eq!(
        docker_ok(&["wait", &collector]),
        "137",
        "{collector} after SIGKILL"
    );
    let at_kill = sink_totals(&sink).expect("sink status");
    docker_ok(&["start", &collector]);

    let deadline = Instant::now() + Duration::from_secs(120);
    let totals = loop {
        let t = sink_totals(&sink).unwrap_or_default();
        if t["unique"].as_u64() == Some(DEVICES * READINGS) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "{arch}: after the restart the sink has {t} (expected {} unique); collector log:\n{}",
            DEVICES * READINGS,
            String::from_utf8_lossy(&docker(&["logs", &collector]).stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(totals["missing"], 0, "{arch}: readings lost: {totals}");
    assert_eq!(totals["devices"], DEVICES, "{arch}: {totals}");
    let received_at_kill = at_kill["unique"].as_u64().unwrap_or(0);
    assert!(
        received_at_kill < DEVICES * READINGS,
        "{arch}: the kill came too late to test anything ({at_kill})"
    );

    // SIGTERM: each shuts down gracefully and exits 0.
    for c in [&collector, &sink] {
        docker_ok(&["stop", "-t", "20", c]);
        assert_eq!(
            exit_code(c),
            "0",
            "{c} did not exit cleanly on SIGTERM; log:\n{}",
            String::from_utf8_lossy(&docker(&["logs", c]).stderr)
        );
        docker_ok(&["rm", c]);
    }
    eprintln!(
        "{arch}: {} readings, {} at the collector's SIGKILL, none missing; duplicates {}",
        totals["unique"], received_at_kill, totals["duplicates"]
    );
}

/// Commands that scenarios' `command:` workloads lean on; the node image must offer them.
const NODE_COMMANDS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "ping", "nc", "wget", "ls", "ps", "kill", "true", "false", "env",
    "date", "dd", "head", "tail", "grep", "sed", "awk", "mkdir", "rm", "touch", "seq", "printf",
    "timeout", "ip",
];

/// `ps -o pid,ppid,stat,args` inside the container, as (pid, ppid, stat, args) rows. (Not
/// `comm`: under qemu-user a process that exec'd keeps its old name.)
fn processes(container: &str) -> Vec<(String, String, String, String)> {
    docker_ok(&["exec", container, "ps", "-o", "pid,ppid,stat,args"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[0].into(), f[1].into(), f[2].into(), f[3..].join(" ")))
        })
        .collect()
}

fn node(arch: &str, version: &str) {
    let image = format!("edgesim/node:{version}-{arch}");
    let got = docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Os}}/{{.Architecture}} {{index .Config.Labels \"edgesim.image\"}}",
        &image,
    ]);
    assert_eq!(got, format!("linux/{arch} node"), "{image}");
    let c = format!("edgesim-images-node-{arch}-{}", std::process::id());
    run_container(arch, "none", &c, &image, &[]);
    let sh = |script: &str| docker_ok(&["exec", &c, "sh", "-c", script]);

    assert_eq!(sh("echo ok; sleep 0.1"), "ok", "{arch}: docker exec sh");
    assert_eq!(
        sh("seq 1 5 | grep -v 3 | awk '{ s += $1 } END { printf \"%d\\n\", s }'"),
        "12",
        "{arch}: a pipeline of busybox applets"
    );

    // The list edgesim validates `command:` workloads against: the same inside the image and
    // next to the build output, and exactly the names in /bin.
    let lines = |s: &str| -> Vec<String> { s.lines().map(str::to_string).collect() };
    let inside = lines(&docker_ok(&[
        "exec",
        &c,
        "cat",
        "/etc/edgesim-node/commands",
    ]));
    let path = root().join(format!("target/images/{arch}/node.commands"));
    let built = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        inside,
        lines(&built),
        "{arch}: {} differs from the image's",
        path.display()
    );
    let mut in_bin = lines(&sh("ls -1A /bin"));
    in_bin.sort();
    let mut listed = inside.clone();
    listed.sort();
    assert_eq!(
        listed, in_bin,
        "{arch}: the command list is not what /bin holds"
    );
    for cmd in NODE_COMMANDS {
        assert!(
            inside.iter().any(|l| l == cmd),
            "{arch}: no {cmd} in the node image"
        );
    }

    // Reaping: the exec'd shell exits at once, so its background subshell is reparented to the
    // namespace's init; once it exits (on /tmp/go) only the init can reap it.
    let orphan =
        sh("(while [ ! -e /tmp/go ]; do sleep 0.05; done) </dev/null >/dev/null 2>&1 & echo $!");
    let row = processes(&c).into_iter().find(|p| p.0 == orphan);
    assert!(
        row.as_ref().is_some_and(|p| p.1 == "1"),
        "{arch}: the orphan {orphan} is not a child of PID 1: {row:?}"
    );
    sh("touch /tmp/go");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = processes(&c);
        if !ps.iter().any(|p| p.0 == orphan) {
            let zombies: Vec<_> = ps.iter().filter(|p| p.2.starts_with('Z')).collect();
            assert!(zombies.is_empty(), "{arch}: zombies left: {zombies:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{arch}: the orphan {orphan} was never reaped: {ps:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM: the init stops every process of the namespace, one of which ignores SIGTERM,
    // and exits 0 before docker's 2 s run out (then docker would SIGKILL it: 137).
    docker_ok(&["exec", "-d", &c, "sleep", "300"]);
    docker_ok(&["exec", "-d", &c, "sh", "-c", "trap '' TERM; exec sleep 300"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes(&c)
        .iter()
        .filter(|p| p.3.ends_with("sleep 300"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "{arch}: the sleeps did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    docker_ok(&["stop", "-t", "2", &c]);
    let took = t0.elapsed();
    let log = String::from_utf8_lossy(&docker(&["logs", &c]).stderr).into_owned();
    assert_eq!(
        exit_code(&c),
        "0",
        "{arch}: the node did not stop by itself on SIGTERM; log:\n{log}"
    );
    docker_ok(&["rm", &c]);
    eprintln!(
        "{arch}: node image: {} commands, orphan reaped, stopped in {took:.2?}",
        inside.len()
    );
}

#[test]
fn images_build_for_both_architectures_and_run_a_pipeline_and_a_node() {
    if !edgesim::testing::gate(
        "docker",
        daemon_answers(),
        "no Docker daemon answers (apt-get install -y docker.io; dockerd &)",
    ) {
        return;
    }
    let arm64 = edgesim::testing::gate(
        "qemu",
        std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(),
        "arm64 images run through qemu-user's binfmt_misc handler (apt-get install -y qemu-user-static binfmt-support)",
    );
    let _cleanup = Containers;
    let arches = if arm64 { "amd64,arm64" } else { "amd64" };
    let st = Command::new(root().join("images/build.sh"))
        .args(["--arch", arches])
        .current_dir(root())
        .status()
        .expect("running images/build.sh");
    assert!(st.success(), "images/build.sh --arch {arches} failed");

    // Every crate takes the workspace version, which build.sh tags the images with.
    let version = env!("CARGO_PKG_VERSION");
    for arch in arches.split(',') {
        pipeline(arch, version);
        node(arch, version);
    }
    let left = docker_ok(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
    assert!(left.is_empty(), "containers left: {left}");
}
