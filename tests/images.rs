//! The Docker images of the edge workloads: built by `images/build.sh` for amd64 and arm64
//! (`FROM scratch`, static musl binaries, no registry), then run as a pipeline.
//!
//! Per architecture (arm64 through qemu-user's binfmt_misc handler), a `cloud-sink` container
//! and an `iot-collector` container share one network namespace that Docker creates for the
//! sink (`--network none`, then `--network container:<sink>`), so their traffic never leaves
//! it. The collector is killed with SIGKILL half-way and started again: its durable queue is
//! inside the container, so the sink must still end up with every reading exactly once. The
//! test reads the sink's `/status` from inside that namespace, stops both containers with
//! SIGTERM and expects a clean exit, and removes them. Capability: `docker` (a daemon that
//! answers); arm64 also needs `qemu`.

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

#[test]
fn images_build_for_both_architectures_and_run_a_crash_safe_pipeline() {
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
    }
    let left = docker_ok(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
    assert!(left.is_empty(), "containers left: {left}");
}
