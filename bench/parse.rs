//! Parsing scenario files (YAML → the serde model, positions kept), no validation.
//!
//! Run: `cargo bench -p edgesim --bench parse` (see bench/README.md).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgesim::scenario::validate;

#[path = "synth.rs"]
mod synth;

fn scenario(name: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    (p, text)
}

fn parse(c: &mut Criterion) {
    let mut cases = vec![scenario("quickstart.yaml"), scenario("scale-200.yaml")];
    cases.push((
        PathBuf::from("synth-large.yaml"),
        synth::Synth::LARGE.yaml(),
    ));
    let mut g = c.benchmark_group("parse");
    for (path, text) in &cases {
        // Fail loudly rather than benchmark an error path.
        validate::parse(path, text).unwrap_or_else(|d| panic!("{}: {d}", path.display()));
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| validate::parse(black_box(path), black_box(text)))
        });
    }
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
