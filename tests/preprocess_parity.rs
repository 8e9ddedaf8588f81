//! The Rust presets reproduce the Python pipelines (PIL + timm / torchvision / transformers)
//! on real photos: ≤ 2/255 max and ≤ 0.5/255 mean absolute difference per pixel value before
//! normalisation. References: tests/data/preprocess (models/make_preprocess_refs.py).

mod common;

use convnext_edge::preprocess::{decode, Preprocess, Preset};

#[derive(serde::Deserialize)]
struct Case {
    image: String,
    preset: String,
    size: u32,
    crop_pct: f32,
    reference: String,
}

#[test]
fn presets_match_python_pipelines() {
    let dir = common::root().join("tests/data/preprocess");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(cases.len() >= 16);
    let mut worst = (0u8, 0f64);
    for c in cases {
        let img = decode(&common::root().join("models/images").join(&c.image)).unwrap();
        let preset: Preset = c.preset.parse().unwrap();
        let ours = Preprocess::new(preset, c.size, c.crop_pct)
            .resize_crop(&img)
            .unwrap();
        let reference = decode(&dir.join(&c.reference)).unwrap();
        assert_eq!(ours.dimensions(), reference.dimensions(), "{}", c.reference);
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        eprintln!("{:<28} max {max} mean {mean:.4}", c.reference);
        assert!(
            max <= 2 && mean <= 0.5,
            "{}: max {max}/255, mean {mean:.3}/255",
            c.reference
        );
        worst = (worst.0.max(max), worst.1.max(mean));
    }
    eprintln!("worst: max {} mean {:.4} (in 1/255)", worst.0, worst.1);
}
