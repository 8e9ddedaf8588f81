//! What `convnext-edge info` reports about a model file: exporter, ConvNeXt variant,
//! precision and quantization format, input signature, size and cost, and the tract kernels
//! the optimised plan uses on this CPU.
//!
//! The variant is read from the graph, not from names: ConvNeXt's 7x7 depthwise convolutions
//! (group = channels) give each stage's width and block count; a ReduceL2 (GRN) marks V2.

use crate::kernels::qconv::QPointwiseConv;
use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::ops::Cost;

use super::onnx::proto::{int_attr_of, ints_attr_of};
use super::{fmt_dims, LoadOptions, Model, Signature};
use crate::error::{Error, Result};

/// The report of `convnext-edge info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The model file.
    pub file: String,
    /// Its size, with external weights.
    pub file_bytes: u64,
    /// The exporter's `producer_name`.
    pub producer: String,
    /// The exporter as recognised (PyTorch, Hugging Face, …).
    pub exporter: Option<String>,
    /// The default-domain opset.
    pub opset: i64,
    /// Which ConvNeXt it is.
    pub variant: Variant,
    /// The precision its weights are stored in.
    pub precision: String,
    /// The precision the plan runs in on this CPU (see `precision::effective`).
    pub runs_as: String,
    /// How it is quantized, if it is.
    pub quantization: Option<Quantization>,
    /// The input shape the file declares.
    pub input_shape: String,
    /// Axes the file leaves symbolic.
    pub dynamic_axes: Vec<&'static str>,
    /// The input height and width it was analysed at.
    pub input_size_used: [usize; 2],
    /// Output classes.
    pub classes: usize,
    /// Parameters (weight values).
    pub parameters: u64,
    /// Multiply-adds of one inference.
    pub macs: u64,
    /// The protobuf rewrites applied at load, by kind.
    pub rewrites: Vec<(String, usize)>,
    /// Where each quantized product runs (empty for a float model).
    pub integer_coverage: crate::model::Coverage,
    /// The matmul kernels the plan uses.
    pub kernels: Vec<String>,
    /// Nodes of the optimised plan, by op.
    pub op_counts: BTreeMap<String, usize>,
}

/// The ConvNeXt architecture found in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `convnext_atto`, `convnext_tiny`, …, or `unknown`.
    pub name: String,
    /// ConvNeXt version (1 or 2).
    pub version: u8,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage.
    pub dims: Vec<usize>,
}

/// How an int8 model was quantized.
#[derive(Debug, Clone, Serialize)]
pub struct Quantization {
    /// `QDQ`, `QOperator` or `dynamic`.
    pub format: &'static str,
    /// `per-channel` or `per-tensor` weight scales.
    pub weights: &'static str,
    /// Activation integer type (`u8`/`s8`), when stored in the graph.
    pub activations: Option<&'static str>,
}

const KNOWN: &[(&str, [usize; 4], [usize; 4])] = &[
    ("atto", [2, 2, 6, 2], [40, 80, 160, 320]),
    ("femto", [2, 2, 6, 2], [48, 96, 192, 384]),
    ("pico", [2, 2, 6, 2], [64, 128, 256, 512]),
    ("nano", [2, 2, 8, 2], [80, 160, 320, 640]),
    ("tiny", [3, 3, 9, 3], [96, 192, 384, 768]),
    ("small", [3, 3, 27, 3], [96, 192, 384, 768]),
    ("base", [3, 3, 27, 3], [128, 256, 512, 1024]),
    ("large", [3, 3, 27, 3], [192, 384, 768, 1536]),
    ("xlarge", [3, 3, 27, 3], [256, 512, 1024, 2048]),
];

impl Info {
    /// Loads the model (as `classify` would) and gathers the report.
    pub fn gather(path: &Path, options: &LoadOptions) -> Result<Info> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let proto = super::decode(path, &bytes)?;
        let sig = Signature::of(path, &proto)?;
        let model = Model::from_bytes(path, &bytes, options)?;
        let graph = proto.graph.as_ref().expect("decode checks the graph");
        let (h, w) = model.input_hw();
        let mut dynamic_axes = vec![];
        for (name, d) in [
            ("batch", sig.batch),
            ("height", sig.height),
            ("width", sig.width),
        ] {
            if d.is_none() {
                dynamic_axes.push(name);
            }
        }
        let op_counts = model
            .typed_model()
            .nodes()
            .iter()
            .fold(BTreeMap::new(), |mut m, n| {
                *m.entry(n.op.name().to_string()).or_insert(0) += 1;
                m
            });
        Ok(Info {
            file: path.display().to_string(),
            file_bytes: bytes.len() as u64 + external_bytes(path, graph),
            producer: format!("{} {}", proto.producer_name, proto.producer_version)
                .trim()
                .to_owned(),
            exporter: model.metadata("convnext_edge.exporter").map(str::to_owned),
            opset: proto
                .opset_import
                .iter()
                .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
                .map_or(0, |o| o.version),
            variant: variant(graph),
            precision: crate::precision::of_graph(graph).to_string(),
            runs_as: model.precision().to_string(),
            quantization: quantization(graph),
            input_shape: fmt_dims(&[sig.batch, Some(3), sig.height, sig.width]),
            dynamic_axes,
            input_size_used: [h, w],
            classes: model.classes(),
            parameters: graph
                .initializer
                .iter()
                .map(|t| t.dims.iter().product::<i64>().max(1) as u64)
                .sum(),
            macs: macs(path, &bytes, options)?,
            rewrites: model.rewrites().0.clone(),
            integer_coverage: model.integer_coverage().clone(),
            kernels: kernels(model.typed_model()),
            op_counts,
        })
    }
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let v = &self.variant;
        writeln!(
            f,
            "file:          {} ({:.2} MB)",
            self.file,
            self.file_bytes as f64 / 1e6
        )?;
        writeln!(f, "producer:      {} (opset {})", self.producer, self.opset)?;
        if let Some(e) = &self.exporter {
            writeln!(f, "exporter:      {e}")?;
        }
        writeln!(
            f,
            "variant:       ConvNeXt V{} {} depths {:?} dims {:?}",
            v.version, v.name, v.depths, v.dims
        )?;
        write!(f, "precision:     {}", self.precision)?;
        match &self.quantization {
            Some(q) => writeln!(
                f,
                " ({}, {} weights{})",
                q.format,
                q.weights,
                q.activations
                    .map(|a| format!(", {a} activations"))
                    .unwrap_or_default()
            )?,
            None => writeln!(f)?,
        }
        if self.runs_as != self.precision {
            writeln!(f, "runs as:       {} on this CPU", self.runs_as)?;
        }
        let dynamic = if self.dynamic_axes.is_empty() {
            "none".into()
        } else {
            self.dynamic_axes.join(", ")
        };
        writeln!(
            f,
            "input:         {} (dynamic: {dynamic}); running at {}x{}",
            self.input_shape, self.input_size_used[0], self.input_size_used[1]
        )?;
        writeln!(f, "classes:       {}", self.classes)?;
        writeln!(f, "parameters:    {:.2} M", self.parameters as f64 / 1e6)?;
        writeln!(
            f,
            "MACs:          {:.3} G at batch 1",
            self.macs as f64 / 1e9
        )?;
        if !self.rewrites.is_empty() {
            let r: Vec<String> = self
                .rewrites
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            writeln!(f, "rewritten:     {}", r.join(", "))?;
        }
        if !self.integer_coverage.products.is_empty() {
            writeln!(f, "{}", self.integer_coverage)?;
        }
        writeln!(f, "tract kernels: {}", self.kernels.join(", "))?;
        let ops: Vec<String> = self
            .op_counts
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        write!(f, "plan ops:      {}", ops.join(", "))
    }
}

fn external_bytes(path: &Path, graph: &pb::GraphProto) -> u64 {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&str> = graph
        .initializer
        .iter()
        .flat_map(|t| t.external_data.iter())
        .filter(|e| e.key == "location")
        .map(|e| e.value.as_str())
        .collect();
    files.sort_unstable();
    files.dedup();
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn is_depthwise_7x7(n: &pb::NodeProto) -> Option<usize> {
    let conv = matches!(n.op_type.as_str(), "Conv" | "QLinearConv" | "ConvInteger");
    let group = int_attr_of(n, "group").unwrap_or(1);
    let k7 = ints_attr_of(n, "kernel_shape").is_none_or(|k| k == [7, 7]);
    (conv && group > 1 && k7).then_some(group as usize)
}

fn variant(graph: &pb::GraphProto) -> Variant {
    let mut depths: Vec<usize> = vec![];
    let mut dims: Vec<usize> = vec![];
    for c in graph.node.iter().filter_map(is_depthwise_7x7) {
        if dims.last() == Some(&c) {
            *depths.last_mut().expect("dims and depths grow together") += 1;
        } else {
            dims.push(c);
            depths.push(1);
        }
    }
    let v2 = graph
        .node
        .iter()
        .any(|n| n.op_type == "ReduceL2" || n.name.to_lowercase().contains("grn"));
    let name = KNOWN
        .iter()
        .find(|(_, d, c)| depths == d && dims == c)
        .map_or_else(
            || {
                if dims.is_empty() {
                    "unknown".into()
                } else {
                    "custom".into()
                }
            },
            |k| k.0.to_owned(),
        );
    Variant {
        name,
        version: if v2 { 2 } else { 1 },
        depths,
        dims,
    }
}

fn initializer<'g>(graph: &'g pb::GraphProto, name: &str) -> Option<&'g pb::TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

fn quantization(graph: &pb::GraphProto) -> Option<Quantization> {
    let has = |op: &str| graph.node.iter().any(|n| n.op_type == op);
    let len = |name: &str| initializer(graph, name).map_or(1, |t| t.dims.iter().product::<i64>());
    let zp_type = |name: &str| match initializer(graph, name).map(|t| t.data_type) {
        Some(2) => Some("u8"),
        Some(3) => Some("s8"),
        _ => None,
    };
    let (format, scales, act): (&'static str, Vec<i64>, Option<&'static str>) =
        if has("QLinearConv") || has("QLinearMatMul") {
            let ops = graph
                .node
                .iter()
                .filter(|n| matches!(n.op_type.as_str(), "QLinearConv" | "QLinearMatMul"));
            let scales = ops
                .clone()
                .map(|n| len(n.input.get(4).map_or("", |s| s)))
                .collect();
            let act = ops
                .clone()
                .find_map(|n| n.input.get(2).and_then(|z| zp_type(z)));
            ("QOperator", scales, act)
        } else if has("DynamicQuantizeLinear") || has("MatMulInteger") || has("ConvInteger") {
            let scales = graph
                .node
                .iter()
                .filter(|n| matches!(n.op_type.as_str(), "MatMulInteger" | "ConvInteger"))
                .map(|n| len(n.input.get(3).map_or("", |s| s)))
                .collect();
            ("dynamic", scales, Some("u8"))
        } else if has("DequantizeLinear") {
            let weight_dq = graph.node.iter().filter(|n| {
                n.op_type == "DequantizeLinear"
                    && initializer(graph, &n.input[0]).is_some_and(|t| t.dims.len() >= 2)
            });
            let scales = weight_dq
                .map(|n| len(n.input.get(1).map_or("", |s| s)))
                .collect();
            let act = graph
                .node
                .iter()
                .filter(|n| n.op_type == "QuantizeLinear")
                .find_map(|n| n.input.get(2).and_then(|z| zp_type(z)));
            ("QDQ", scales, act)
        } else {
            return None;
        };
    let weights = if scales.iter().any(|&s| s > 1) {
        "per-channel"
    } else {
        "per-tensor"
    };
    Some(Quantization {
        format,
        weights,
        activations: act,
    })
}

/// Multiply-accumulates of one batch-1 inference, from tract's cost model of the
/// decluttered (not yet kernel-lowered) graph.
fn macs(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<u64> {
    let typed = super::typed_model(path, super::decode(path, bytes)?, options)?.0;
    let mut batch1 = SymbolValues::default();
    for sym in typed.symbols.all_symbols() {
        batch1.set(&sym, 1);
    }
    let mut total = 0u64;
    for node in typed.nodes() {
        let inputs: TVec<&TypedFact> = node
            .inputs
            .iter()
            .filter_map(|o| typed.outlet_fact(*o).ok())
            .collect();
        if let Ok(costs) = node.op.cost(&inputs) {
            for (cost, n) in costs {
                if let (Cost::FMA(_), Ok(n)) = (cost, n.eval_to_i64(&batch1)) {
                    total += n.max(0) as u64;
                }
            }
        }
    }
    Ok(total)
}

/// The matmul kernels an optimised plan uses (tract's and our integer ops').
pub fn kernels(model: &TypedModel) -> Vec<String> {
    let mut names: Vec<String> = model
        .nodes()
        .iter()
        .flat_map(|n| {
            let tract = n
                .op_as::<OptMatMul>()
                .into_iter()
                .flat_map(|op| op.mmm.iter().map(|k| k.name().to_string()));
            let ours = n
                .op_as::<QPointwiseConv>()
                .map(|op| op.kernel_name().unwrap_or_else(|e| format!("{e}")));
            tract.chain(ours)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
