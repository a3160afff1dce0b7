//! The fuzz harnesses over the seed corpus, with no fuzzer: `cargo test -p ccd-fuzz`.
//!
//! `corpus/<target>/` holds the seeds (from the protocol's fixtures and tests) and any input
//! a fuzzer found that once failed, kept as a regression test.

use std::path::Path;

fn run_corpus(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target} failed on {}", path.display());
        count += 1;
    }
    assert!(count >= 5, "{}: only {count} seeds", dir.display());
}

#[test]
fn jsonrpc_corpus() {
    run_corpus("jsonrpc", ccd_fuzz::jsonrpc);
}

#[test]
fn codec_corpus() {
    run_corpus("codec", ccd_fuzz::codec);
}

#[test]
fn agent_corpus() {
    run_corpus("agent", ccd_fuzz::agent);
}
