//! Fuzz target `cli_lists`: what it exercises is documented on `convnext_edge_fuzz::cli_lists`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| convnext_edge_fuzz::cli_lists(data));
