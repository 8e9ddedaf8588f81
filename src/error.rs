//! The library's error type. Every variant names the file (or input) it is about, so a message
//! printed by the CLI tells the user what to fix without a backtrace.

use std::path::PathBuf;

/// Errors from loading models, reading inputs and running inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX model (truncated, random, wrong format).
    #[error("{path}: not a valid ONNX model: {reason}")]
    InvalidOnnx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The ONNX graph is valid but not an image classifier this runtime can serve.
    #[error("{path}: not an image classifier: {reason}")]
    NotAClassifier {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// tract could not analyse, optimise or run the model.
    #[error("{path}: {stage} failed: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// The load or run stage that failed.
        stage: &'static str,
        /// tract's message.
        reason: String,
    },
    /// An input tensor does not fit the model.
    #[error("{what}: wrong tensor shape or type: expected {expected}, got {got}")]
    Shape {
        /// The tensor.
        what: String,
        /// The shape and type the model takes.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A `.npy` file is malformed or of an unsupported dtype.
    #[error("{path}: bad .npy file: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot read image: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A labels file does not fit the model.
    #[error("{path}: {reason}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
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

thread_local! {
    /// Depth of [`catch_panic`] calls on this thread: their panics are reported as errors, so
    /// the panic hook stays quiet for them.
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, turning a panic inside it (in tract or a decoder, on input they did not expect)
/// into an error message, so that a bad file is an error naming it and a camera loop goes on.
///
/// The first call installs a panic hook that stays silent for panics caught here and defers to
/// the previous hook for all others.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) == 0 {
                previous(info);
            }
        }));
    });
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("internal error (panic): {msg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        assert_eq!(catch_panic(|| 3), Ok(3));
        let e = catch_panic(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(e, "internal error (panic): boom 1");
        let e = catch_panic(|| -> u8 { panic!("static") }).unwrap_err();
        assert!(e.ends_with("static"));
    }
}
