//! The protobuf stage of loading: what is done to an ONNX file before tract parses it, in
//! ONNX's own terms, so that exporter and quantizer quirks stay at the edge and tract sees
//! standard ops (and our fused nodes, whose parsers [`parser`] registers).
//!
//! [`rewrite`] is the one pipeline: classifier loading ([`Model::load`](super::Model::load))
//! and any-graph loading ([`Graph`](super::graph::Graph), which the ONNX backend node tests use)
//! both call it. In order:
//! 1. [`qoperator`]: com.microsoft and QLinear ops restated as QDQ and float ops; f16 `Gemm`
//!    as `MatMul`;
//! 2. [`qdq`]: quantized tensors' reshapes moved before their quantization (the pattern's
//!    canonical form), then quantized depthwise, 1x1 and patch convolutions and MatMuls fused
//!    into our integer ops, when the integer path is on, and where each quantized product
//!    runs recorded ([`qdq::Coverage`]);
//! 3. [`qdq::integer_ops_to_float`]: the integer ops left, in f32 where tract's int8 kernel is
//!    slow (grouped ones everywhere);
//! 4. [`long_matmul`]: products by long weights split along their depth, where our f32
//!    `Linear` does not take them.
//!
//! Relies on tract only for `tract_onnx::pb` and the parser registry (`Onnx::op_register`).

pub(crate) mod initializers;
pub(crate) mod layer_norm;
pub(crate) mod long_matmul;
pub(crate) mod proto;
pub(crate) mod qdq;
pub(crate) mod qoperator;
#[cfg(test)]
mod tests;

use tract_onnx::pb;

use super::IntegerPath;

/// The log of what the protobuf rewrites changed: each kind of rewrite with its count, in the order
/// they ran, for `info` and logs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rewrites(pub Vec<(String, usize)>);

impl Rewrites {
    /// Logs `n` rewrites of a kind, if there were any.
    fn record(&mut self, what: &str, n: usize) {
        if n > 0 {
            self.0.push((what.into(), n));
        }
    }

    /// Logs one more rewrite of a kind.
    fn add(&mut self, what: &str) {
        match self.0.iter_mut().find(|(k, _)| k == what) {
            Some((_, n)) => *n += 1,
            None => self.0.push((what.to_owned(), 1)),
        }
    }
}

/// Rewrites `model` for tract (see the module docs); `integer` says whether to fuse quantized
/// products into our integer ops. Returns the log, and where each quantized product runs.
/// Errors name the node that cannot be expressed.
pub(crate) fn rewrite(
    model: &mut pb::ModelProto,
    integer: IntegerPath,
) -> Result<(Rewrites, qdq::Coverage), String> {
    if let Some(graph) = model.graph.as_mut() {
        name_nodes(graph);
    }
    let mut log = qoperator::apply(model)?;
    let Some(graph) = model.graph.as_mut() else {
        return Ok((log, qdq::Coverage::default()));
    };
    let n = qdq::constants_to_initializers(graph);
    log.record("Constant → initializer", n);
    let n = qdq::reshapes_before_quantize(graph);
    log.record("Q → Reshape moved to Reshape → Q", n);
    let n = qdq::reshapes_around_products(graph);
    log.record("Reshape pair around a product taken out", n);
    let n = qdq::repeated_pairs(graph);
    log.record("repeated Q → DQ pair dropped", n);
    let surveyed = qdq::survey(graph);
    let integer_off = match integer {
        IntegerPath::Never => Some("the integer path is turned off (--float-only)"),
        _ if !integer.enabled() => Some("no int8 kernel beats f32 on this CPU"),
        _ => None,
    };
    if integer_off.is_none() {
        let pays = crate::kernels::depthwise::quantized::pays;
        let n = qdq::fuse_depthwise(graph, pays);
        log.record("QDQ depthwise Conv → integer", n);
        let n = qdq::fuse_pointwise(graph);
        log.record("QDQ 1x1 (or patch) Conv/MatMul → integer", n);
    }
    let grouped_only = !crate::kernels::qconv::tract_int8_kernels_slow();
    let n = qdq::integer_ops_to_float(graph, grouped_only);
    log.record("ConvInteger/MatMulInteger → f32", n);
    let coverage = qdq::outcome(graph, surveyed, integer_off);
    if !super::passes::own_f32_linear() {
        let n = long_matmul::split(graph);
        log.record("MatMul split along its depth", n);
    }
    Ok((log, coverage))
}

/// Gives every node a name of its own (ONNX leaves names optional and unchecked): the
/// coverage report finds products by name, and our rewrites name what they add after them.
fn name_nodes(graph: &mut pb::GraphProto) {
    let mut seen = std::collections::HashSet::new();
    for (i, node) in graph.node.iter_mut().enumerate() {
        if node.name.is_empty() || !seen.insert(node.name.clone()) {
            node.name = format!("{}::cxe_node_{i}", node.op_type);
            seen.insert(node.name.clone());
        }
    }
}

/// tract's ONNX front end with our own nodes' parsers registered.
pub(crate) fn parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    qdq::register(&mut onnx);
    layer_norm::register(&mut onnx);
    onnx
}

/// Runs a one-input graph (opset 17) through our parser and tract on `x` of `shape`: the
/// rewrites' tests compare a graph before and after them.
#[cfg(test)]
pub(crate) fn run_graph(graph: pb::GraphProto, shape: &[usize], x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let mut model = parser().parse(&proto, None).unwrap().model;
    model.set_input_fact(0, f32::fact(shape).into()).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let x = Tensor::from_shape(shape, x).unwrap();
    let y = plan.run(tvec!(x.into_tvalue())).unwrap().remove(0);
    let y = y.try_as_plain_ram().unwrap();
    y.as_slice::<f32>().unwrap().to_vec()
}
