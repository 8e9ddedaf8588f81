//! Every committed fixture model loads, runs and matches onnxruntime's output
//! (models/fixtures/manifest.json; regenerate with models/make_fixtures.py).

mod common;

use common::*;
use convnext_edge::{npy, IntegerPath, LoadOptions, Model};

#[test]
fn fixture_files_match_their_sha256() {
    for f in fixtures() {
        for (file, sha) in &f.sha256 {
            assert_eq!(
                &sha256_hex(&fixtures_dir().join(file)),
                sha,
                "{file} differs from the manifest"
            );
        }
    }
}

#[test]
fn every_fixture_matches_onnxruntime() {
    let mut failures = vec![];
    // Quantized models on both paths, whatever this CPU would pick by itself.
    let runs = fixtures().into_iter().flat_map(|f| {
        let paths = match f.precision.as_str() {
            "int8" => vec![IntegerPath::Always, IntegerPath::Never],
            _ => vec![IntegerPath::Auto],
        };
        paths.into_iter().map(move |p| (f.clone(), p))
    });
    for (f, integer) in runs {
        let dir = fixtures_dir();
        let opts = LoadOptions {
            threads: Some(1),
            integer,
            ..Default::default()
        };
        let result = Model::load(&dir.join(&f.model), &opts)
            .map_err(|e| e.to_string())
            .and_then(|model| {
                let x = npy::read(&dir.join(&f.input)).unwrap();
                let reference = f32s(&npy::read(&dir.join(&f.reference)).unwrap());
                let ours = model.run(x.clone()).map_err(|e| e.to_string())?;
                let full = compare(&f.precision, &f32s(&ours), &reference, model.classes())?;
                // A dynamic batch axis must also run one image at a time.
                if model.batch().is_none() {
                    let first = model
                        .run(x.slice(0, 0, 1).unwrap())
                        .map_err(|e| e.to_string())?;
                    compare(
                        &f.precision,
                        &f32s(&first),
                        &reference[..model.classes()],
                        model.classes(),
                    )
                    .map_err(|e| format!("batch 1: {e}"))?;
                }
                Ok(full)
            });
        match result {
            Ok(summary) => eprintln!(
                "ok   {:<24} {:<5} {:<9} {integer:<6?} {summary}",
                f.name, f.precision, f.format
            ),
            Err(e) => {
                eprintln!(
                    "FAIL {:<24} {:<5} {:<9} {integer:<6?} {e}",
                    f.name, f.precision, f.format
                );
                failures.push(format!("{} ({integer:?})", f.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures not matching onnxruntime: {failures:?}"
    );
}

#[test]
fn float_models_run_in_the_other_float_precision() {
    use convnext_edge::Precision;
    let all = fixtures();
    for (name, precision) in [
        ("timm_v1_f16", Precision::F32),
        ("timm_v1_op17", Precision::F16),
    ] {
        let f = all.iter().find(|f| f.name == name).unwrap();
        let opts = LoadOptions {
            threads: Some(1),
            precision,
            ..Default::default()
        };
        let model = Model::load(&fixtures_dir().join(&f.model), &opts).unwrap();
        let x = npy::read(&fixtures_dir().join(&f.input)).unwrap();
        let ours = f32s(&model.run(x).unwrap());
        let reference = f32s(&npy::read(&fixtures_dir().join(&f.reference)).unwrap());
        let agreement = compare("f16", &ours, &reference, model.classes()).unwrap();
        eprintln!("{name} as {precision}: {agreement}");
    }
    let opts = LoadOptions {
        precision: Precision::F32,
        ..Default::default()
    };
    let err = Model::load(&fixtures_dir().join("timm_v1_qdq_pc_u8.onnx"), &opts).unwrap_err();
    assert!(err.to_string().contains("int8-quantized"), "{err}");
    let opts = LoadOptions {
        precision: Precision::Int8,
        ..Default::default()
    };
    let err = Model::load(&fixtures_dir().join("timm_v1_op17.onnx"), &opts).unwrap_err();
    assert!(err.to_string().contains("needs a quantized file"), "{err}");
}
