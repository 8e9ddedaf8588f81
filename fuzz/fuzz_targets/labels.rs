//! Label files (`--labels`) and labels embedded in model metadata (JSON).
#![no_main]

use std::path::Path;

use convnext_edge::Labels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let classes = data.iter().filter(|&&b| b == b'\n').count() + 1;
    if let Ok(labels) = Labels::from_bytes(Path::new("fuzz.txt"), data, classes) {
        for i in 0..classes + 2 {
            let _ = labels.name(i);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let labels = Labels::default_for(Some(text), 3);
        let _ = labels.name(5);
    }
});
