//! The `.npy` reader (`run --input`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = convnext_edge::npy::parse(data);
});
