//! Planning: validation of a parsed scenario into a `Plan` (`validate::build`) and the whole
//! path a CLI command takes (`scenario::load`: read + parse + build), with the built-in
//! profiles and a target that can do everything (`Capabilities::all("netns")`), so no
//! kernel probing is timed.
//!
//! Run: `cargo bench -p edgesim --bench plan` (see bench/README.md).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgesim::profile::ProfileSet;
use edgesim::scenario::{self, Capabilities, Overrides, validate};

#[path = "synth.rs"]
mod synth;
use synth::Synth;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

/// Scenarios with `app:` workloads validate only where the app binaries exist (validation
/// looks them up). Where they are not built, point `EDGESIM_APPS` at empty stand-ins: the
/// lookup costs the same and nothing is run. Returns the folder, to keep it alive.
fn stand_in_apps() -> Option<tempfile::TempDir> {
    use edgesim::workload::apps;
    if apps::APPS
        .iter()
        .all(|a| apps::native_binary(a.name).is_ok())
    {
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    for a in apps::APPS {
        std::fs::write(dir.path().join(a.name), b"").expect("writing a stand-in");
    }
    // SAFETY: set before criterion starts any thread; nothing else reads the environment
    // concurrently.
    unsafe { std::env::set_var("EDGESIM_APPS", dir.path()) };
    Some(dir)
}

fn plan(c: &mut Criterion) {
    let _apps = stand_in_apps();
    let profiles = ProfileSet::builtin().expect("built-in profiles load");
    let caps = Capabilities::all("netns");
    let ov = Overrides::default();

    // The synthetic scenario is written to a temporary file so `load` reads it like the CLI.
    let dir = tempfile::tempdir().expect("temporary folder");
    let synth_path = dir.path().join("synth-large.yaml");
    std::fs::write(&synth_path, Synth::LARGE.yaml()).expect("writing the synthetic scenario");
    let files = [
        shipped("quickstart.yaml"),
        shipped("scale-200.yaml"),
        synth_path,
    ];

    let mut g = c.benchmark_group("build");
    for f in &files {
        let text = std::fs::read_to_string(f).expect("reading the scenario");
        let sc = validate::parse(f, &text).unwrap_or_else(|d| panic!("{}: {d}", f.display()));
        let p = validate::build(f, &text, &sc, profiles, &caps, &ov)
            .unwrap_or_else(|d| panic!("{}: {d}", f.display()))
            .plan;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        eprintln!(
            "{name}: {} nodes, {} timeline actions, {} probes, {} assertions",
            p.nodes.len(),
            p.actions.len(),
            p.probes.len(),
            p.assertions.len()
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                validate::build(
                    black_box(f),
                    black_box(&text),
                    black_box(&sc),
                    profiles,
                    &caps,
                    &ov,
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("load");
    for f in &files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        g.bench_function(name, |b| {
            b.iter(|| scenario::load(black_box(f), profiles, &caps, &ov))
        });
    }
    g.finish();

    // How validation scales with the timeline: linear is expected; anything steeper shows
    // as a falling throughput (entries/s) across the sizes.
    let mut g = c.benchmark_group("build-timeline");
    g.sample_size(20);
    for events in [100usize, 1000, 4000] {
        let s = Synth {
            events,
            ..Synth::LARGE
        };
        let text = s.yaml();
        let f = PathBuf::from(format!("synth-{events}.yaml"));
        let sc = validate::parse(&f, &text).unwrap_or_else(|d| panic!("{}: {d}", f.display()));
        validate::build(&f, &text, &sc, profiles, &caps, &ov)
            .unwrap_or_else(|d| panic!("{}: {d}", f.display()));
        g.throughput(Throughput::Elements(events as u64));
        g.bench_with_input(BenchmarkId::from_parameter(events), &sc, |b, sc| {
            b.iter(|| validate::build(&f, &text, black_box(sc), profiles, &caps, &ov))
        });
    }
    g.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);
