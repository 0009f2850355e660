//! `emulateArch: true`: an arm64 node runs the aarch64 build of its app under qemu-user.
//!
//! Builds the aarch64 musl `cloud-sink` with `images/build.sh` (skipped when already built),
//! then runs a scenario where the sink sits on a Raspberry Pi 5 node (arm64) and a collector
//! on an amd64 cloud node feeds it. The sink must report `arch="aarch64"` in its build info and
//! have received every reading. Needs the `aarch64-unknown-linux-musl` rust target and
//! qemu-user (binfmt or `qemu-aarch64-static`): the capability is `qemu`.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have_aarch64_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "aarch64-unknown-linux-musl")
        })
        .unwrap_or(false)
}

#[test]
fn arm64_nodes_run_the_arm64_build_under_qemu() {
    if !edgesim::testing::netns() {
        return;
    }
    let qemu = edgesim::workload::apps::arm64_runner();
    if !edgesim::testing::gate(
        "qemu",
        qemu.is_ok() && have_aarch64_target(),
        "needs qemu-user and the aarch64-unknown-linux-musl target",
    ) {
        return;
    }
    let bin = root().join("target/images/arm64/cloud-sink");
    if !bin.is_file() {
        let st = Command::new(root().join("images/build.sh"))
            .args(["--arch", "arm64", "--only", "cloud-sink", "--no-docker"])
            .current_dir(root())
            .status()
            .expect("running images/build.sh");
        assert!(st.success(), "images/build.sh failed");
    }
    assert!(bin.is_file(), "no arm64 cloud-sink at {}", bin.display());

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("arm64.yaml");
    std::fs::write(
        &file,
        "apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: arm64-emulation}
spec:
  seed: 2
  duration: 20s
  emulateArch: true
  sites: {s: {}}
  nodes:
    - {name: sink, site: s, profile: raspberry-pi-5-4gb}
    - {name: gw, site: s, profile: cloud-small}
  workloads:
    - {name: sink, nodes: [sink], app: cloud-sink, readyTimeout: 30s}
    - name: collector
      nodes: [gw]
      app: iot-collector
      args: [--devices, \"2\", --rate, \"5\", --max-readings, \"40\"]
  assertions:
    - {name: sink-is-arm64, metric: {workload: sink, name: edgesim_build_info, labels: {arch: aarch64}}, expect: \"== 1\"}
    - {name: every-reading-delivered, metric: {workload: sink, name: edgesim_sink_device_unique}, expect: \"== 80\"}
",
    )
    .expect("write scenario");
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_edgesim"))
        .arg("run")
        .arg(&file)
        .arg("--report")
        .arg(&report)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("run edgesim");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The arm64 node ran the aarch64 build: its build info says so (the plan is
    // target-neutral; the netns target resolves `app:` per node's architecture).
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
    let arm = r["assertions"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "sink-is-arm64"))
        .cloned()
        .expect("sink-is-arm64 verdict");
    assert_eq!(arm["passed"], true, "{arm}");
}
