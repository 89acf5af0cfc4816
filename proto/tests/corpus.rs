//! Replays the committed cargo-fuzz seed corpus through the same harnesses the fuzz targets
//! use, so every CI run on stable exercises them.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        f(&data);
        n += 1;
    }
    n
}

#[test]
fn frames_corpus_replays() {
    assert!(replay("frames", ferry_proto::harness::frames) >= 8);
}

#[test]
fn messages_corpus_replays() {
    assert!(replay("messages", ferry_proto::harness::messages) >= 8);
}
