//! Image in, top-K classes out: a [`Model`] with its preprocessing and labels.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tract_onnx::prelude::Tensor;

use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::model::Model;
use crate::preprocess::{Preprocess, Preset};

/// Extensions of the image files [`image_files`] collects from directories (any case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The images that `paths` name: a file as given, a directory as every JPEG/PNG file under it,
/// recursively, in sorted path order (files of other types in a directory are passed over).
///
/// ```
/// let files = convnext_edge::classify::image_files(&["models/digits/samples".into()]).unwrap();
/// assert_eq!(files.len(), 10);
/// assert!(files[0].ends_with("0.png"));
/// ```
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let start = files.len();
            collect_images(path, &mut files)?;
            files[start..].sort();
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn collect_images(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_images(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// One of the top-K classes of an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The class index in the model's output.
    pub index: usize,
    /// The class name (the index when no labels are known).
    pub label: String,
    /// Softmax probability over all classes.
    pub prob: f32,
    /// The model's raw score for the class.
    pub logit: f32,
}

/// A model with the preprocessing it was evaluated with and its class names.
///
/// ```
/// use convnext_edge::{Classifier, LoadOptions, Model};
/// let model = Model::load("models/digits/convnext_digits_int8.onnx".as_ref(), &LoadOptions::default()).unwrap();
/// let classifier = Classifier::new(model, None, None).unwrap();
/// let top = classifier.classify_file("models/digits/samples/3.png".as_ref(), 1).unwrap();
/// assert_eq!(top[0].label, "3");
/// ```
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Model,
    preprocess: Preprocess,
    labels: Labels,
}

impl Classifier {
    /// `preset` overrides the preprocessing recorded in the model file (default `timm`);
    /// `labels` overrides the model's own labels (default: embedded, else ImageNet-1k for
    /// 1000 classes, else class indices).
    pub fn new(model: Model, preset: Option<Preset>, labels: Option<Labels>) -> Result<Self> {
        let preprocess = preprocess_for(&model, preset)?;
        let labels = match labels {
            Some(l) if l.len() != model.classes() => {
                return Err(Error::Config(format!(
                    "{} labels given for a model with {} classes",
                    l.len(),
                    model.classes()
                )))
            }
            Some(l) => l,
            None => Labels::default_for(model.metadata("convnext_edge.labels"), model.classes()),
        };
        Ok(Classifier {
            model,
            preprocess,
            labels,
        })
    }

    /// The preprocessing in use.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Top `k` classes of an RGB image.
    pub fn classify(&self, img: &RgbImage, k: usize) -> Result<Vec<Prediction>> {
        self.predict(self.preprocess.to_tensor(img)?, k)
    }

    /// Top `k` classes of an input tensor made by [`Classifier::preprocess`].
    pub fn predict(&self, x: Tensor, k: usize) -> Result<Vec<Prediction>> {
        let logits = self.model.run(x)?;
        let row = logits
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(top_k(
            &row.iter().copied().collect::<Vec<_>>(),
            k,
            &self.labels,
        ))
    }

    /// Top `k` classes of a JPEG or PNG file.
    pub fn classify_file(&self, path: &Path, k: usize) -> Result<Vec<Prediction>> {
        self.classify(&crate::preprocess::decode(path)?, k)
    }
}

/// The preprocessing a model was evaluated with: preset from the file's metadata (or the
/// override, or `timm`), size from its square input, crop_pct from the metadata when the preset
/// is the recorded one, else the preset's default.
pub fn preprocess_for(model: &Model, preset: Option<Preset>) -> Result<Preprocess> {
    let recorded = model
        .metadata("convnext_edge.preprocess")
        .map(str::parse::<Preset>)
        .transpose()?;
    let preset = preset.or(recorded).unwrap_or(Preset::Timm);
    let (h, w) = model.input_hw();
    if h != w {
        return Err(Error::Config(format!(
            "{}: input {h}x{w} is not square; preprocessing presets produce square crops",
            model.path().display()
        )));
    }
    let crop_pct = model
        .metadata("convnext_edge.crop_pct")
        .filter(|_| recorded == Some(preset))
        .and_then(|c| c.parse::<f32>().ok())
        .filter(|c| *c > 0.0 && *c <= 1.0)
        .unwrap_or_else(|| preset.default_crop_pct());
    Ok(Preprocess::new(preset, h as u32, crop_pct))
}

/// Softmax over `logits` and the `k` most probable classes, best first.
pub fn top_k(logits: &[f32], k: usize, labels: &Labels) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i,
            label: labels.name(i).to_owned(),
            prob: exp[i] / sum,
            logit: logits[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_normalises() {
        let labels = Labels::default_for(Some(r#"["a","b","c"]"#), 3);
        let top = top_k(&[1.0, 3.0, 2.0], 2, &labels);
        assert_eq!(top.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2]);
        let z = 1f32.exp() + 3f32.exp() + 2f32.exp();
        assert!((top[0].prob - 3f32.exp() / z).abs() < 1e-6);
        assert_eq!(top[0].label, "b");
    }
}
