//! Fuzz target `onnx_load`: what it exercises is documented on `convnext_edge_fuzz::onnx_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| convnext_edge_fuzz::onnx_load(data));
