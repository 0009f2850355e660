//! Every file of `scenarios/` as one `cargo test` case, with this crate's own `outbox`
//! binary (built by Cargo for the tests) as the scenarios' `sink` and `sender` workloads.

fn main() {
    let outbox = env!("CARGO_BIN_EXE_outbox");
    edgesim::harness::Harness::new()
        .folder(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))
        .workload_program("sink", outbox)
        .workload_program("sender", outbox)
        .out_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/edgesim-runs/outbox"
        ))
        .main()
}
