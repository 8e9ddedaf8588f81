//! The library's error type. Every variant names the file (or input) it is about, so a message
//! printed by the CLI tells the user what to fix without a backtrace.

use std::path::PathBuf;

/// Errors from loading models, reading inputs and running inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX model (truncated, random, wrong format).
    #[error("{path}: not a valid ONNX model: {reason}")]
    InvalidOnnx { path: PathBuf, reason: String },
    /// The ONNX graph is valid but not an image classifier this runtime can serve.
    #[error("{path}: not an image classifier: {reason}")]
    NotAClassifier { path: PathBuf, reason: String },
    /// tract could not analyse, optimise or run the model.
    #[error("{path}: {stage} failed: {reason}")]
    Model {
        path: PathBuf,
        stage: &'static str,
        reason: String,
    },
    /// An input tensor does not fit the model.
    #[error("{what}: wrong tensor shape or type: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    /// A `.npy` file is malformed or of an unsupported dtype.
    #[error("{path}: bad .npy file: {reason}")]
    Npy { path: PathBuf, reason: String },
    /// An image could not be decoded.
    #[error("{path}: cannot read image: {reason}")]
    Image { path: PathBuf, reason: String },
    /// A labels file does not fit the model.
    #[error("{path}: {reason}")]
    Labels { path: PathBuf, reason: String },
    /// An unknown or invalid option value (preprocessing preset, thread count, ...).
    #[error("{0}")]
    Config(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
