//! What each fuzz target does with its bytes, one function per target. The libFuzzer binaries
//! (`fuzz_targets/`) call these, and so does `tests/fuzz_corpus.rs`, which replays the committed
//! corpora in the ordinary `cargo test` — the regression gate needs neither nightly nor an
//! instrumented build.

use std::path::Path;

use convnext_edge::bench::Cpus;
use convnext_edge::camera::mjpeg::{Split, Splitter};
use convnext_edge::camera::{convert, parse_size, Frame, PixelFormat};
use convnext_edge::machine::parse_cpu_list;
use convnext_edge::preprocess::{decode_bytes, Preprocess};
use convnext_edge::{Labels, LoadOptions, Model, Precision, Preset};

/// The option values the CLI parses itself: CPU lists (`bench --cpus`), frame sizes
/// (`--size`), precisions (`bench --precision` lists), presets and pixel formats.
pub fn cli_lists(data: &[u8]) {
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
}

/// Image decode (JPEG, PNG and the rest `image` reads) and every preprocessing preset.
pub fn image_preprocess(data: &[u8]) {
    if let Ok(img) = decode_bytes(Path::new("fuzz.img"), data) {
        let preset = [
            Preset::Timm,
            Preset::Torchvision,
            Preset::Hf,
            Preset::Squash,
        ][data.len() % 4];
        let _ = Preprocess::new(preset, 32, preset.default_crop_pct()).to_tensor(&img);
    }
}

/// Label files (`--labels`) and labels embedded in model metadata (JSON).
pub fn labels(data: &[u8]) {
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
}

/// The MJPEG stream splitter fed in chunks of varying size, the Huffman-table insertion, and
/// the JPEG decode of every frame it cuts.
pub fn mjpeg(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut splitter = Splitter::new(1 << 20);
    let check = |split: Split| {
        if let Split::Frame(frame) = split {
            assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
            let _ = convert::decode_jpeg(&frame);
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
}

/// The `.npy` reader (`run --input`).
pub fn npy(data: &[u8]) {
    let _ = convnext_edge::npy::parse(data);
}

/// The whole load pipeline (protobuf, classifier check, ONNX rewrites, tract parse and typing,
/// precision conversion, our graph passes, optimisation) on arbitrary bytes, then one
/// inference when the model loads and its input is small. Seeds: the committed fixtures.
pub fn onnx_load(data: &[u8]) {
    // The precision comes from the length, so the bytes stay a valid seed model.
    let precision = [Precision::Auto, Precision::F32, Precision::F16][data.len() % 3];
    let options = LoadOptions {
        threads: Some(1),
        precision,
        max_tensor_bytes: Some(64 << 20),
        ..Default::default()
    };
    if let Ok(model) = Model::from_bytes(Path::new("fuzz.onnx"), data, &options) {
        let (h, w) = model.input_hw();
        if h * w <= 64 * 64 {
            let batch = model.batch().unwrap_or(1);
            if let Ok(x) = tract_onnx::prelude::Tensor::zero::<f32>(&[batch, 3, h, w]) {
                let _ = model.run(x);
            }
        }
    }
}

/// YUYV / NV12 / I420 / RGB24 frames of any declared size and any byte count.
pub fn raw_frames(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let format = [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::I420,
        PixelFormat::Rgb24,
    ][data[0] as usize % 4];
    let width = u16::from_le_bytes([data[1], data[2]]) as u32;
    let height = u16::from_le_bytes([data[3], data[4]]) as u32;
    let frame = Frame::new(data[5..].to_vec(), format, (width, height), 0);
    if let Ok(rgb) = convert::to_rgb(&frame) {
        assert_eq!(rgb.dimensions(), (width, height));
    }
}
