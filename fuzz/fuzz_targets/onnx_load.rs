//! The whole load pipeline (protobuf, classifier check, ONNX rewrites, tract parse and typing,
//! precision conversion, our graph passes, optimisation) on arbitrary bytes, then one
//! inference when the model loads and its input is small. Seeds: the committed fixtures.
#![no_main]

use std::path::Path;

use convnext_edge::{LoadOptions, Model, Precision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
