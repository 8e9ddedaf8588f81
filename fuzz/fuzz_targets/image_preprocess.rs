//! Fuzz target `image_preprocess`: what it exercises is documented on `convnext_edge_fuzz::image_preprocess`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| convnext_edge_fuzz::image_preprocess(data));
