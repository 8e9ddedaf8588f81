//! Fuzz target `raw_frames`: what it exercises is documented on `convnext_edge_fuzz::raw_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| convnext_edge_fuzz::raw_frames(data));
