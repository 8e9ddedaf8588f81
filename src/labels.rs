//! Class names: ImageNet-1k built in, a model's own labels from its metadata, or a text file
//! with one label per line.

use std::path::Path;

use crate::error::{Error, Result};

const IMAGENET_1K: &str = include_str!("labels/imagenet1k.txt");

/// Class names, one per output of the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels(Vec<String>);

impl Labels {
    /// The 1000 ImageNet-1k class names in the standard index order.
    ///
    /// ```
    /// let l = convnext_edge::Labels::imagenet1k();
    /// assert_eq!(l.len(), 1000);
    /// assert_eq!(l.name(0), "tench");
    /// ```
    pub fn imagenet1k() -> Self {
        Labels(IMAGENET_1K.lines().map(str::to_owned).collect())
    }

    /// Reads one label per line (blank trailing lines ignored) and checks that there is one per
    /// model output.
    pub fn from_file(path: &Path, classes: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, &bytes, classes)
    }

    /// [`Labels::from_file`] on bytes already read; `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8], classes: usize) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| Error::Labels {
            path: path.into(),
            reason: format!("not UTF-8 text ({e})"),
        })?;
        let labels: Vec<String> = text
            .trim_end()
            .lines()
            .map(|l| l.trim().to_owned())
            .collect();
        let labels = Labels(labels);
        labels.check_len(classes).map_err(|reason| Error::Labels {
            path: path.into(),
            reason,
        })?;
        Ok(labels)
    }

    /// Labels stored in the model file as a JSON list (`convnext_edge.labels` metadata).
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str::<Vec<String>>(json).ok().map(Labels)
    }

    /// The default for a model: its own labels, ImageNet-1k for 1000 classes, else the index.
    pub fn default_for(embedded: Option<&str>, classes: usize) -> Self {
        embedded
            .and_then(Self::from_json)
            .filter(|l| l.len() == classes)
            .or_else(|| (classes == 1000).then(Self::imagenet1k))
            .unwrap_or_else(|| Labels((0..classes).map(|i| format!("class {i}")).collect()))
    }

    fn check_len(&self, classes: usize) -> std::result::Result<(), String> {
        if self.len() == classes {
            Ok(())
        } else {
            Err(format!(
                "has {} labels but the model has {classes} output classes",
                self.len()
            ))
        }
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name of class `index`; `"?"` past the end (a model with more outputs than labels must
    /// not bring a camera loop down).
    pub fn name(&self, index: usize) -> &str {
        self.0.get(index).map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(Labels::from_file(&p, 3).unwrap().name(2), "c");
        let msg = Labels::from_file(&p, 10).unwrap_err().to_string();
        assert!(
            msg.contains("l.txt") && msg.contains("3 labels") && msg.contains("10"),
            "{msg}"
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(Labels::default_for(Some(r#"["x","y"]"#), 2).name(1), "y");
        assert_eq!(
            Labels::default_for(Some(r#"["x","y"]"#), 3).name(1),
            "class 1"
        );
        assert_eq!(Labels::default_for(None, 1000).name(1), "goldfish");
    }
}
