//! The recipe matrix (models/recipes, made by models/make_recipes.py): one small ConvNeXt
//! exported and quantized the many ways users' tools do it. On every file, each quantized
//! product runs on integer kernels wherever this CPU has them, and the output matches
//! onnxruntime's on the same file.

mod common;

use std::path::PathBuf;

use common::*;
use convnext_edge::{npy, IntegerPath, LoadOptions, Model};

fn recipes_dir() -> PathBuf {
    root().join("models/recipes")
}

#[test]
fn recipe_files_match_their_sha256() {
    for f in manifest(&recipes_dir()) {
        for (file, sha) in &f.sha256 {
            let path = recipes_dir().join(file);
            assert_eq!(&sha256_hex(&path), sha, "{file} differs from the manifest");
        }
    }
}

#[test]
fn every_recipe_runs_its_products_on_integer_kernels_and_matches_onnxruntime() {
    let integer = IntegerPath::Auto.enabled();
    let mut failures = vec![];
    for f in manifest(&recipes_dir()) {
        let dir = recipes_dir();
        let result = Model::load(&dir.join(&f.model), &LoadOptions::threads(1))
            .map_err(|e| e.to_string())
            .and_then(|model| {
                let coverage = model.integer_coverage();
                let (on_integer, all) = coverage.count(false);
                if all == 0 {
                    return Err("no quantized product found".into());
                }
                if integer && on_integer < all {
                    return Err(format!("{coverage}"));
                }
                let x = npy::read(&dir.join(&f.input)).unwrap();
                let reference = f32s(&npy::read(&dir.join(&f.reference)).unwrap());
                let ours = model.run(x).map_err(|e| e.to_string())?;
                let parity = compare("int8", &f32s(&ours), &reference, model.classes())?;
                Ok(format!("{on_integer}/{all} on integer kernels, {parity}"))
            });
        match result {
            Ok(summary) => eprintln!("ok   {:<40} {summary}", f.name),
            Err(e) => {
                eprintln!("FAIL {:<40} {e}", f.name);
                failures.push(f.name);
            }
        }
    }
    assert!(failures.is_empty(), "recipes failing: {failures:?}");
}
