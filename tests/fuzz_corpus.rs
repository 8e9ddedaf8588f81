//! Replays every committed fuzz corpus input (`fuzz/corpus/TARGET/*`: the seeds and every input
//! that once crashed or hung a target) through the target's own body, so a regression fails the
//! ordinary `cargo test`. Mutation runs are cargo-fuzz's (README, "Hostile input").

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod bodies;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
    let panicked: Vec<&PathBuf> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .collect();
    assert!(
        panicked.is_empty(),
        "{target}: {} of {} corpus inputs panicked: {panicked:?}",
        panicked.len(),
        inputs.len()
    );
}

macro_rules! replay_tests {
    ($($target:ident),*) => {$(
        #[test]
        fn $target() {
            replay(stringify!($target), bodies::$target);
        }
    )*};
}

replay_tests!(
    cli_lists,
    image_preprocess,
    labels,
    mjpeg,
    npy,
    onnx_load,
    raw_frames
);
