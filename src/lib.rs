//! convnext-edge: run ConvNeXt image classifiers exported to ONNX (f32, f16, int8) with tract.
//!
//! Modules, in the order data flows through them:
//! - [`model`]: load an ONNX file (graph rewrites for exporter/quantizer quirks, tract
//!   analysis and optimisation) and run it; [`model::inspect`] reports what is in a file.
//! - [`precision`]: what precision a file stores; f16 ↔ f32 conversion at load.
//! - `kernels` (internal): our own compute kernels as tract ops; `kernels::cpu` says what the CPU has.
//! - [`preprocess`]: decode images and reproduce timm / torchvision / Hugging Face evaluation
//!   transforms.
//! - [`labels`]: class names.
//! - [`classify`]: image → top-K predictions.
//! - [`camera`]: frame sources (V4L2, pipes, files, recordings, a test pattern) and frame → RGB.
//! - [`display`]: sinks for live results (image files, JSON lines, HTTP live view, framebuffer,
//!   panels) and the embedded-graphics overlay.
//! - [`live`]: the camera loop tying sources, a classifier and sinks together; [`config`] its
//!   flags as a TOML file, for running it as a service.
//! - [`profile`]: time per node and per op type of one inference.
//! - [`npy`]: raw tensors in and out, for parity checks against other runtimes.
//! - [`bench`](mod@bench): latency benchmarking (round-robin configurations, statistics, reports).
//! - [`machine`]: what the machine is (cores, ...), from sysfs.
//!
//! ```
//! use convnext_edge::{Classifier, LoadOptions, Model};
//! let model = Model::load("models/digits/convnext_digits_f32.onnx".as_ref(), &LoadOptions::default())?;
//! let top = Classifier::new(model, None, None)?.classify_file("models/digits/samples/7.png".as_ref(), 3)?;
//! println!("{} {:.3}", top[0].label, top[0].prob);
//! # Ok::<(), convnext_edge::Error>(())
//! ```

pub mod bench;
#[cfg(feature = "camera")]
pub mod camera;
pub mod classify;
#[cfg(feature = "camera")]
pub mod config;
#[cfg(feature = "camera")]
pub mod display;
pub mod error;
pub(crate) mod kernels;
pub mod labels;
#[cfg(feature = "camera")]
pub mod live;
pub mod machine;
pub mod model;
pub mod npy;
pub mod precision;
pub mod preprocess;
pub mod profile;

pub use classify::{Classifier, Prediction};
pub use error::{Error, Result};
pub use labels::Labels;
pub use model::{IntegerPath, LoadOptions, Model};
pub use precision::Precision;
pub use preprocess::{Preprocess, Preset};

/// The f32 `Linear` kernels, for the criterion benchmark that compares two products run apart
/// with the fused MLP (`benches/inference.rs`); not part of the library's API.
#[doc(hidden)]
#[cfg(target_arch = "x86_64")]
pub mod bench_internals {
    pub use crate::kernels::linear::{Geometry, LinearF32, MlpF32, OutAxis};
    pub use crate::kernels::Layout;
}
