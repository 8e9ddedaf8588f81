//! The option values the CLI parses itself: CPU lists (`bench --cpus`), frame sizes
//! (`--size`), precisions (`bench --precision` lists), presets and pixel formats.
#![no_main]

use convnext_edge::bench::Cpus;
use convnext_edge::camera::{parse_size, PixelFormat};
use convnext_edge::machine::parse_cpu_list;
use convnext_edge::{Precision, Preset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cpus) = parse_cpu_list(s) {
        assert!(!cpus.is_empty() && cpus.windows(2).all(|w| w[0] < w[1]));
    }
    let _ = s.parse::<Cpus>();
    let _ = parse_size(s);
    for item in s.split(',') {
        let _ = item.parse::<Precision>();
        let _ = item.parse::<Preset>();
        let _ = item.parse::<PixelFormat>();
    }
});
