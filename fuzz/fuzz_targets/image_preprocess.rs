//! Image decode (JPEG, PNG and the rest `image` reads) and every preprocessing preset.
#![no_main]

use std::path::Path;

use convnext_edge::preprocess::{decode_bytes, Preprocess, Preset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_bytes(Path::new("fuzz.img"), data) {
        let preset = [
            Preset::Timm,
            Preset::Torchvision,
            Preset::Hf,
            Preset::Squash,
        ][data.len() % 4];
        let _ = Preprocess::new(preset, 32, preset.default_crop_pct()).to_tensor(&img);
    }
});
