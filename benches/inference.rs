//! Criterion benchmarks: preprocessing of a real photo, and inference of the shipped digits
//! model in each precision (`cargo bench`). For comparisons against onnxruntime see
//! benches/README.md and benches/compare_ort.py.

use std::path::Path;

use convnext_edge::preprocess::{decode, Preprocess, Preset};
use convnext_edge::{LoadOptions, Model, Precision};
use criterion::{criterion_group, criterion_main, Criterion};
use tract_onnx::prelude::Tensor;

fn preprocessing(c: &mut Criterion) {
    let photo = decode(Path::new("models/images/coffee.png")).unwrap();
    let mut group = c.benchmark_group("preprocess 600x400 -> 224");
    for preset in [
        Preset::Timm,
        Preset::Torchvision,
        Preset::Hf,
        Preset::Squash,
    ] {
        let p = Preprocess::new(preset, 224, preset.default_crop_pct());
        group.bench_function(format!("{preset:?}"), |b| {
            b.iter(|| p.to_tensor(&photo).unwrap())
        });
    }
    group.finish();
    let bytes = std::fs::read("models/images/rocket.jpg").unwrap();
    c.bench_function("decode jpeg 640x427", |b| {
        b.iter(|| convnext_edge::preprocess::decode_bytes(Path::new("rocket.jpg"), &bytes).unwrap())
    });
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("digits convnext 32x32, 1 thread");
    for (file, precision) in [
        ("convnext_digits_f32.onnx", Precision::F32),
        ("convnext_digits_f16.onnx", Precision::F16),
        ("convnext_digits_f16.onnx", Precision::F32),
        ("convnext_digits_int8.onnx", Precision::Int8),
    ] {
        let options = LoadOptions {
            threads: Some(1),
            precision,
            ..Default::default()
        };
        let model = Model::load(&Path::new("models/digits").join(file), &options).unwrap();
        let x = Tensor::zero::<f32>(&[1, 3, 32, 32]).unwrap();
        group.bench_function(format!("{file} as {precision}"), |b| {
            b.iter(|| model.run(x.clone()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, preprocessing, inference);
criterion_main!(benches);
