//! Which quantized products of a graph run on integer kernels, and why the others do not:
//! a file that loads, answers right and is slow because its products fell back to float must
//! say so (`info`, and warnings from `bench` and `classify --verbose`).
//!
//! The products are surveyed once the graph is in its canonical form (after the QOperator and
//! `Gemm` rewrites) and looked up again by node name after the fusions: a fused node keeps the
//! name of the product it replaced.

use std::collections::HashMap;

use serde::Serialize;

use tract_onnx::pb::GraphProto;

use super::fused::{DOMAIN, FUSED_DEPTHWISE_OP, FUSED_OP};
use super::index::Index;
use super::matcher::match_node;
use super::weights::quantized_product;
use super::Miss;
use crate::model::onnx::proto::is_onnx;

/// One quantized product of the file and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    /// The node's name (after the load rewrites).
    pub name: String,
    /// Its op type in the file, in canonical form (`Conv`, `MatMul`, `ConvInteger`, …).
    pub op_type: String,
    /// A grouped (depthwise) convolution rather than a full product.
    pub depthwise: bool,
    /// `None` on an integer kernel, else why it runs in float.
    pub float_because: Option<Miss>,
}

/// Every quantized product of a model, with where it runs (see the module docs).
///
/// ```
/// use convnext_edge::{LoadOptions, Model};
/// # let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
/// #     .join("models/fixtures/timm_v1_qdq_pc_u8.onnx");
/// let model = Model::load(&path, &LoadOptions::threads(1))?;
/// let coverage = model.integer_coverage();
/// let (integer, all) = coverage.count(false);
/// println!("int8 products on integer kernels: {integer} of {all}");
/// for p in coverage.on_float() {
///     println!("  {} ({}): {}", p.name, p.op_type, p.float_because.unwrap_or_default());
/// }
/// assert!(all > 0);
/// # Ok::<(), convnext_edge::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// In graph order.
    pub products: Vec<Product>,
}

impl Coverage {
    /// The full (not depthwise) products, or the depthwise ones: `(on integer kernels, all)`.
    pub fn count(&self, depthwise: bool) -> (usize, usize) {
        let of_kind = self.products.iter().filter(|p| p.depthwise == depthwise);
        let integer = of_kind
            .clone()
            .filter(|p| p.float_because.is_none())
            .count();
        (integer, of_kind.count())
    }

    /// The products left on float (depthwise ones included).
    pub fn on_float(&self) -> impl Iterator<Item = &Product> {
        self.products.iter().filter(|p| p.float_because.is_some())
    }

    /// A one-line warning when full products of a quantized model run on float, naming the
    /// first reason; `None` when all run on integer kernels (or the model is not quantized).
    pub fn warning(&self) -> Option<String> {
        let (integer, all) = self.count(false);
        let first = self.on_float().find(|p| !p.depthwise)?;
        Some(format!(
            "{} of {all} int8 products run on float, not integer kernels ({}: {}); `info` lists them",
            all - integer,
            first.name,
            first.float_because.unwrap_or_default()
        ))
    }
}

/// The lines `info` prints: the counts, then each product on float with its reason (the
/// depthwise ones once per reason, they are many and alike).
impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let (integer, all) = self.count(false);
        write!(f, "int8 products on integer kernels: {integer} of {all}")?;
        for p in self.on_float().filter(|p| !p.depthwise) {
            let why = p.float_because.unwrap_or_default();
            write!(f, "\n  on float: {} ({}): {why}", p.name, p.op_type)?;
        }
        let (integer, all) = self.count(true);
        if all > 0 {
            write!(
                f,
                "\nint8 depthwise convolutions on integer kernels: {integer} of {all}"
            )?;
            let mut reasons: Vec<Miss> = self
                .on_float()
                .filter(|p| p.depthwise)
                .filter_map(|p| p.float_because)
                .collect();
            reasons.dedup();
            for why in reasons {
                write!(f, "\n  on float: {why}")?;
            }
        }
        Ok(())
    }
}

/// The quantized products of `graph` (name, op type, depthwise), in graph order.
pub(crate) fn survey(graph: &GraphProto) -> Vec<(String, String, bool)> {
    let ix = Index::new(graph);
    graph
        .node
        .iter()
        .filter(|n| is_onnx(n))
        .filter_map(|n| {
            let group = quantized_product(&ix, n)?;
            Some((n.name.clone(), n.op_type.clone(), group > 1))
        })
        .collect()
}

/// Where each product of `surveyed` ended up in the rewritten `graph`; `integer_off` is why,
/// if the integer path was not taken at all.
pub(crate) fn outcome(
    graph: &GraphProto,
    surveyed: Vec<(String, String, bool)>,
    integer_off: Option<Miss>,
) -> Coverage {
    let ix = Index::new(graph);
    let by_name: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let products = surveyed
        .into_iter()
        .map(|(name, op_type, depthwise)| {
            let node = by_name.get(name.as_str()).map(|&i| (i, &graph.node[i]));
            let float_because = match node {
                Some((_, n)) if n.domain == DOMAIN => {
                    debug_assert!([FUSED_OP, FUSED_DEPTHWISE_OP].contains(&n.op_type.as_str()));
                    None
                }
                // Left to tract-linalg's int8 kernels.
                Some((_, n)) if n.op_type == "ConvInteger" || n.op_type == "MatMulInteger" => None,
                _ if op_type == "ConvInteger" || op_type == "MatMulInteger" => Some(if depthwise {
                    "tract has no int8 depthwise kernel: restated in f32, on our depthwise"
                } else {
                    "tract-linalg's int8 kernel is slower than f32 on this CPU: restated in f32"
                }),
                _ if integer_off.is_some() => integer_off,
                _ if depthwise && !crate::kernels::depthwise::quantized::pays(7, 7) => {
                    Some("our int8 depthwise pays only with SDOT (arm64): float depthwise here")
                }
                _ if depthwise => Some("a depthwise convolution our int8 one does not take"),
                Some((i, n)) => Some(
                    match_node(&ix, i, n)
                        .err()
                        .unwrap_or("not fused: it overlaps another fusion"),
                ),
                None => Some("rewritten before the fusions"),
            };
            Product {
                name,
                op_type,
                depthwise,
                float_because,
            }
        })
        .collect();
    Coverage { products }
}
