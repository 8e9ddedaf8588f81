//! Fuzz target `labels`: what it exercises is documented on `convnext_edge_fuzz::labels`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| convnext_edge_fuzz::labels(data));
