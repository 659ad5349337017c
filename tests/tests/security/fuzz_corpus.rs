//! Security suite: `fuzz_corpus` — every fuzz target's committed corpus (`fuzz/corpus/TARGET/`)
//! run through the very body the fuzzer ran (the bodies of `fuzz/bodies/` are compiled in here by
//! `#[path]`; the older targets' bodies live in the crates' test kits), so a decoder change that
//! breaks on an input the campaign found fails `cargo test`, not the next fuzzing run.
//!
//! A target of `fuzz/fuzz_targets/` without an entry here, or without a non-empty corpus, fails
//! the test: no target drops out silently.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/bodies/attachment_meta.rs"]
mod attachment_meta;
#[path = "../../../fuzz/bodies/config.rs"]
mod config;
#[path = "../../../fuzz/bodies/drone_core.rs"]
mod drone_core;
#[path = "../../../fuzz/bodies/sfu_codec.rs"]
mod sfu_codec;
#[path = "../../../fuzz/bodies/token.rs"]
mod token;
#[path = "../../../fuzz/bodies/whip_sdp.rs"]
mod whip_sdp;

/// A fuzz body: one input, panics on a broken property.
type Body = fn(&[u8]);

/// Every target of `fuzz/fuzz_targets/` and its body.
const TARGETS: &[(&str, Body)] = &[
    ("attachment_meta", attachment_meta::run),
    ("config", config::run),
    ("core", signaling::testkit::fuzz_core),
    ("decode", signaling::testkit::fuzz_decode),
    ("drone_core", drone_core::run),
    ("gpsd", field_client::gpsd::fuzz_parse),
    ("mavlink_frames", drone_bridge::frame::fuzz_decode),
    ("nmea", field_client::nmea::fuzz_parse),
    ("sfu_codec", sfu_codec::run),
    ("token", token::run),
    ("trunk_decode", trunk::testkit::fuzz_decode),
    ("trunk_router", trunk::testkit::fuzz_router),
    ("whip_sdp", whip_sdp::run),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The names of `fuzz/fuzz_targets/*.rs`.
fn target_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_target_replays_its_committed_corpus() {
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        target_files(),
        listed,
        "fuzz/fuzz_targets/ and this test's TARGETS differ"
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, body) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs a corpus)", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("corpus file is readable");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(format!("{name}: {}", f.display()));
            }
        }
        total += files.len();
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
