//! Entry points for the `cargo fuzz` targets in `fuzz/` (README, "Fuzzing"): each takes
//! arbitrary bytes, feeds them to one of edgesim's readers of untrusted input and must never
//! panic, whatever the bytes. Errors are fine; they are what users see.
//!
//! - [`scenario`]: YAML parsing, validation into a plan, and the rendered diagnostics.
//! - [`profile`]: hardware profile files.
//! - [`trace`]: link trace CSV files.
//! - [`tc_decode`], [`nft_decode`]: the kernel's netlink answers to tc and nf_tables requests.
//! - [`frame`]: the header parser the userspace link emulator runs on every packet.
//!
//! Inputs that once made one of them panic are kept in `src/fuzzing/regressions/<target>/`,
//! and a unit test runs every target over them and over the seed corpus.

use std::path::Path;

/// Scenario text: parse, validate against the built-in profiles with every capability, and
/// render what a user would read.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/nonexistent/fuzz.yaml");
    let sc = match crate::scenario::validate::parse(file, text) {
        Ok(sc) => sc,
        Err(d) => {
            let _ = d.to_string();
            return;
        }
    };
    let Ok(profiles) = crate::profile::ProfileSet::builtin() else {
        return;
    };
    for target in ["netns", "docker"] {
        let caps = crate::caps::Capabilities::all(target);
        match crate::scenario::validate::build(
            file,
            text,
            &sc,
            profiles,
            &caps,
            &Default::default(),
        ) {
            Ok(v) => {
                let _ = v.warnings.to_string();
                let _ = v.plan.cpu_warnings(2);
            }
            Err(d) => {
                let _ = d.to_string();
            }
        }
    }
}

/// A hardware profile file.
pub fn profile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = crate::profile::parse_profile(text, "fuzz.yaml")
    {
        let _ = e.to_string();
    }
}

/// A link trace CSV file.
pub fn trace(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::scenario::validate::parse_trace(text);
    }
}

/// A netlink datagram answering a tc request or dump.
pub fn tc_decode(data: &[u8]) {
    crate::host::tc::decode_datagram(data);
}

/// A netlink datagram answering nf_tables requests.
pub fn nft_decode(data: &[u8]) {
    crate::host::nft::decode_datagram(data);
}

/// An Ethernet frame as the userspace link emulator reads it.
pub fn frame(data: &[u8]) {
    if let Some(p) = crate::linkem::frame::parse(data) {
        assert!(p.l3 <= data.len(), "network header offset past the frame");
        if let Some((l4, _)) = p.l4 {
            assert!(l4 <= data.len(), "transport header offset past the frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    type Target = fn(&[u8]);
    const TARGETS: [(&str, Target); 6] = [
        ("scenario", super::scenario),
        ("profile", super::profile),
        ("trace", super::trace),
        ("tc_decode", super::tc_decode),
        ("nft_decode", super::nft_decode),
        ("frame", super::frame),
    ];

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.is_file());
        v.sort();
        v
    }

    /// Every input that once made a target panic, kept as a regression test.
    #[test]
    fn regressions_stay_fixed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fuzzing/regressions");
        for (name, f) in TARGETS {
            for p in files(&root.join(name)) {
                eprintln!("{name}: {}", p.display());
                f(&std::fs::read(&p).unwrap());
            }
        }
    }

    /// The seeds the fuzz targets start from go through them cleanly, and every target meets
    /// the empty input and short prefixes of each seed (where parsers most often slip).
    #[test]
    fn seeds_and_their_prefixes_are_read_without_panics() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seeds = Vec::new();
        for d in [
            "scenarios",
            "scenarios/traces",
            "hardware-profiles",
            "tests/scenarios/pass",
            "tests/scenarios/fail",
            "tests/scenarios/reject",
        ] {
            seeds.extend(files(&repo.join(d)));
        }
        assert!(
            seeds.len() > 20,
            "seed corpus not found: {} files",
            seeds.len()
        );
        for (_, f) in TARGETS {
            f(&[]);
            for p in &seeds {
                let b = std::fs::read(p).unwrap();
                f(&b);
                for cut in [1, 7, 16, 20, 64, b.len() / 2] {
                    f(&b[..cut.min(b.len())]);
                }
            }
        }
    }
}
