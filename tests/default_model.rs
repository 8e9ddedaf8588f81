//! The shipped default model classifies real held-out handwritten digits (scikit-learn's
//! digits, never seen in training) through our own preprocessing, as accurately as
//! onnxruntime did through the Python pipeline (models/digits/metrics.json).

mod common;

use convnext_edge::{npy, Classifier, LoadOptions, Model};
use image::{Rgb, RgbImage};

/// The 64x64 picture models/train_digits.py shows the model: 8x8 scan, 0..16 → 0..255,
/// nearest-neighbour upscaled.
fn picture(scan: &[f32]) -> RgbImage {
    RgbImage::from_fn(64, 64, |x, y| {
        let v = (scan[(y / 8 * 8 + x / 8) as usize] * (255.0 / 16.0)).round() as u8;
        Rgb([v, v, v])
    })
}

#[test]
fn held_out_top1_matches_onnxruntime_in_every_precision() {
    let dir = common::root().join("models/digits");
    let scans = common::f32s(&npy::read(&dir.join("heldout_scans.npy")).unwrap());
    let labels = common::f32s(&npy::read(&dir.join("heldout_labels.npy")).unwrap());
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    for precision in ["f32", "f16", "int8"] {
        let path = dir.join(format!("convnext_digits_{precision}.onnx"));
        let model = Model::load(&path, &LoadOptions::threads(1)).unwrap();
        let classifier = Classifier::new(model, None, None).unwrap();
        let correct = scans
            .chunks(64)
            .zip(&labels)
            .filter(|(scan, &label)| {
                let top = classifier.classify(&picture(scan), 1).unwrap();
                top[0].index == label as usize
            })
            .count();
        let ours = correct as f64 / labels.len() as f64;
        let ort = metrics["top1"][precision].as_f64().unwrap();
        eprintln!("{precision}: held-out top-1 {ours:.4} (onnxruntime + PIL {ort:.4})");
        assert!(
            ours >= ort - 0.006,
            "{precision}: {ours} vs onnxruntime {ort}"
        );
        assert!(ours >= 0.95);
    }
}
