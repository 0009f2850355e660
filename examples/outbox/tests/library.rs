//! The library API from an async test: the scenario of `scenarios/` with a longer cut,
//! checked assertion by assertion.

use std::time::Duration;

#[tokio::test]
async fn the_outbox_survives_a_longer_cut() {
    if !edgesim::testing::netns() {
        return;
    }
    let outbox = env!("CARGO_BIN_EXE_outbox");
    let mut sc = edgesim::Scenario::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/uplink-cut.yaml"
    ))
    .expect("the scenario reads");
    // Built in Rust on top of the file: the cut lasts 7 s instead of 5 s.
    let cut = &mut sc.model_mut().spec.timeline[0];
    cut.for_ = Some(edgesim::scenario::loc::Loc::bare(edgesim::units::Dur(
        Duration::from_secs(7),
    )));
    let report = edgesim::Run::new(sc)
        .workload_program("sink", outbox)
        .workload_program("sender", outbox)
        .duration(Duration::from_secs(16))
        .out_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/edgesim-runs/outbox-longer-cut"
        ))
        .run()
        .await
        .expect("the run completes");
    report.assert_passed();
    let heal = report.actions("heal");
    assert_eq!(heal.len(), 1);
    assert!(heal[0].scheduled >= Duration::from_secs(9), "{heal:?}");
}
