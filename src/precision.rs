//! Numeric precision: what a model file stores, and converting float models at load time.
//!
//! An f16 file can run in f32 (weights widened once at load) and an f32 file in f16. `Auto`
//! runs f16 files in f32 on CPUs without fp16 arithmetic (x86, Pi 3/4, Jetson Nano), where tract
//! would otherwise run f16 on slow generic kernels, and as stored everywhere else.
//! The conversion is tract's `FloatPrecisionTranslator` on the typed graph, before
//! optimisation, so the optimiser sees one float type. int8 files run as quantized; they are
//! not converted.

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_core::model::translator::Translate;

use crate::error::{Error, Result};

/// A precision asked for (`Auto` = as stored) or found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    /// What the file stores, except f16 on a CPU without fp16 arithmetic, run in f32.
    Auto,
    /// f32.
    F32,
    /// f16.
    F16,
    /// int8 (the file must be quantized).
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "int8" => Ok(Precision::Int8),
            other => Err(Error::Config(format!(
                "unknown precision {other:?}; expected auto, f32, f16 or int8"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        };
        f.write_str(s)
    }
}

/// The precision a graph is stored in: int8 when it holds quantized ops, f16 when its
/// weights are half floats, else f32.
pub fn of_graph(graph: &pb::GraphProto) -> Precision {
    const QUANTIZED: &[&str] = &[
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "DequantizeLinear",
    ];
    if graph
        .node
        .iter()
        .any(|n| QUANTIZED.contains(&n.op_type.as_str()))
    {
        Precision::Int8
    } else if graph.initializer.iter().any(|t| t.data_type == 10) {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// Whether this CPU has fp16 arithmetic (arm64 `asimdhp`: Pi 5, Jetson Xavier / Orin).
pub fn cpu_has_fp16() -> bool {
    crate::kernels::cpu::has(crate::kernels::cpu::Feature::Fp16)
}

/// The precision a model stored in `stored` runs in when `wanted` is asked for.
pub fn effective(stored: Precision, wanted: Precision) -> Precision {
    match (stored, wanted) {
        (Precision::F16, Precision::Auto) if !cpu_has_fp16() => Precision::F32,
        (s, Precision::Auto) => s,
        (_, w) => w,
    }
}

/// Converts a typed model stored in `stored` precision to `wanted` (see [`effective`]), or
/// explains why not.
pub fn convert(
    model: TypedModel,
    stored: Precision,
    wanted: Precision,
) -> std::result::Result<TypedModel, String> {
    let wanted = effective(stored, wanted);
    let translate = |from: DatumType, to: DatumType| {
        FloatPrecisionTranslator::new(from, to)
            .translate_model(&model)
            .map_err(|e| format!("{e:#}"))
    };
    match (stored, wanted) {
        (s, w) if s == w || w == Precision::Auto => Ok(model),
        (Precision::F16, Precision::F32) => translate(f16::datum_type(), f32::datum_type()),
        (Precision::F32, Precision::F16) => translate(f32::datum_type(), f16::datum_type()),
        (Precision::Int8, w) => Err(format!("the model is int8-quantized; it cannot run as {w}")),
        (s, Precision::Int8) => Err(format!(
            "the model is {s}; int8 needs a quantized file (models/quantize.py makes one)"
        )),
        (s, w) => Err(format!("cannot convert {s} to {w}")),
    }
}
