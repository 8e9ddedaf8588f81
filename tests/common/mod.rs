//! Shared helpers for the integration tests: the fixture manifest and tensor comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures_dir() -> PathBuf {
    root().join("models/fixtures")
}

#[derive(serde::Deserialize, Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub model: String,
    pub source: String,
    pub version: u8,
    pub precision: String,
    pub format: String,
    pub exporter: String,
    pub input: String,
    pub reference: String,
    pub sha256: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    fixtures: Vec<Fixture>,
}

pub fn fixtures() -> Vec<Fixture> {
    manifest(&fixtures_dir())
}

/// The entries of `dir/manifest.json` (models/fixtures, models/recipes).
pub fn manifest(dir: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    serde_json::from_str::<Manifest>(&text).unwrap().fixtures
}

pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn f32s(t: &tract_onnx::prelude::Tensor) -> Vec<f32> {
    let t = t.cast_to::<f32>().unwrap();
    t.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn argmax_rows(v: &[f32], classes: usize) -> Vec<usize> {
    v.chunks(classes)
        .map(|r| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
        .collect()
}

/// Checks ours against onnxruntime's logits with the precision's tolerance; returns a
/// description of the agreement, or the reason it fails.
pub fn compare(
    precision: &str,
    ours: &[f32],
    reference: &[f32],
    classes: usize,
) -> Result<String, String> {
    if ours.len() != reference.len() {
        return Err(format!(
            "{} values, onnxruntime has {}",
            ours.len(),
            reference.len()
        ));
    }
    let max_ref = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let cos = cosine(ours, reference);
    let top1 = argmax_rows(ours, classes) == argmax_rows(reference, classes);
    let summary = format!(
        "max|d| {:.2e} (rel {:.2e}) cosine {cos:.6} top1 {}",
        max_diff,
        max_diff / max_ref,
        if top1 { "equal" } else { "DIFFERENT" }
    );
    let ok = match precision {
        "f32" => max_diff <= 1e-4 * max_ref,
        "f16" => cos >= 0.999 && top1,
        "int8" => cos >= 0.995 && top1,
        other => return Err(format!("unknown precision {other}")),
    };
    if ok {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// The shipped int8 digits classifier on one thread: the small real model the camera tests use.
pub fn digits_classifier() -> convnext_edge::Classifier {
    let model = convnext_edge::Model::load(
        &root().join("models/digits/convnext_digits_int8.onnx"),
        &convnext_edge::LoadOptions::threads(1),
    )
    .unwrap();
    convnext_edge::Classifier::new(model, None, None).unwrap()
}

/// The synthetic camera at `size`, paced at `fps` (0 = unpaced).
pub fn test_camera(size: (u32, u32), fps: f32) -> Box<dyn convnext_edge::camera::FrameSource> {
    let opts = convnext_edge::camera::SourceOptions {
        size: Some(size),
        fps: Some(fps),
        ..Default::default()
    };
    convnext_edge::camera::open("test", &opts).unwrap()
}
