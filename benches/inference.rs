//! Criterion benchmarks: preprocessing of a real photo, inference of the shipped digits model
//! in each precision, and on AVX-512 convnext_tiny's MLPs as two products or one (`cargo
//! bench`). For comparisons against onnxruntime see
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

/// convnext_tiny's MLP of each stage (56², 28², 14², 7² positions of 96 to 768 channels,
/// channels first in and out, channels last between, as tract leaves a MatMul-form export),
/// run as its two `LinearF32` one after the other, then as one `MlpF32`.
#[cfg(target_arch = "x86_64")]
fn mlp(c: &mut Criterion) {
    use convnext_edge::bench_internals::Layout::{ChannelsFirst, ChannelsLast};
    use convnext_edge::bench_internals::{Geometry, LinearF32, MlpF32, OutAxis};
    use tract_onnx::prelude::{tvec, IntoTValue, TValue, TVec};
    use tract_onnx::tract_core::internal::{EvalContext, EvalOp};
    if !LinearF32::available() {
        return;
    }
    let values = |n: usize| (0..n).map(|i| (i * 7919 % 1000) as f32 / 1000.0 - 0.5);
    let matrix = |k: usize, n: usize| {
        Tensor::from_shape(&[k, n], &values(k * n).collect::<Vec<_>>()).unwrap()
    };
    let geometry = |input, k_axis, out_axes| Geometry {
        rank: 4,
        k_axis,
        input,
        output: if input == ChannelsFirst {
            ChannelsLast
        } else {
            ChannelsFirst
        },
        out_axes,
    };
    let ctx = EvalContext::out_of_plan();
    let mut group = c.benchmark_group("convnext_tiny MLP, 1 thread");
    for (side, c) in [(56, 96), (28, 192), (14, 384), (7, 768)] {
        let (i, ch) = (OutAxis::Input, OutAxis::Channels);
        let fc1 = LinearF32::new(
            &matrix(c, 4 * c),
            geometry(ChannelsFirst, 1, tvec!(i(0), i(2), i(3), ch)),
        )
        .and_then(|op| op.with_bias(&vec![0.1; 4 * c]))
        .and_then(|op| op.with_gelu())
        .unwrap();
        let fc2 = LinearF32::new(
            &matrix(4 * c, c),
            geometry(ChannelsLast, 3, tvec!(i(0), ch, i(1), i(2))),
        )
        .and_then(|op| op.with_bias(&vec![0.1; c]))
        .and_then(|op| op.with_scale(&vec![0.5; c]))
        .unwrap();
        let mlp = MlpF32::new(fc1.clone(), fc2.clone()).unwrap();
        let x = Tensor::from_shape(
            &[1, c, side, side],
            &values(c * side * side).collect::<Vec<_>>(),
        )
        .unwrap();
        let input = || -> TVec<TValue> { tvec!(x.clone().into_tvalue()) };
        group.bench_function(format!("{side}x{side}x{c} apart"), |b| {
            b.iter(|| fc2.eval(&ctx, fc1.eval(&ctx, input()).unwrap()).unwrap())
        });
        group.bench_function(format!("{side}x{side}x{c} fused"), |b| {
            b.iter(|| mlp.eval(&ctx, input()).unwrap())
        });
    }
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn mlp(_: &mut Criterion) {}

criterion_group!(benches, preprocessing, inference, mlp);
criterion_main!(benches);
