//! The MJPEG stream splitter fed in chunks of varying size, the Huffman-table insertion, and
//! the JPEG decode of every frame it cuts.
#![no_main]

use convnext_edge::camera::convert::decode_jpeg;
use convnext_edge::camera::mjpeg::{Split, Splitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut splitter = Splitter::new(1 << 20);
    let check = |split: Split| {
        if let Split::Frame(frame) = split {
            assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
            let _ = decode_jpeg(&frame);
        }
    };
    for piece in stream.chunks(chunk as usize + 1) {
        splitter.push(piece);
        while let Some(split) = splitter.pop() {
            check(split);
        }
        assert!(splitter.pending() <= (1 << 20) + piece.len() + 2);
    }
    if let Some(split) = splitter.finish() {
        check(split);
    }
});
