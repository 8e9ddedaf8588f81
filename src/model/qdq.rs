//! QDQ models: the quantized 1x1 convolutions found at the ONNX level and handed to our integer
//! op, [`QPointwiseConv`].
//!
//! tract folds a weight `DequantizeLinear` into f32 constants while typing the graph, so after
//! parsing nothing says any more that a convolution's weights were int8. The pattern is
//! therefore found here, in the protobuf, where it is explicit:
//!
//! ```text
//! x ─ QuantizeLinear ─ DequantizeLinear ─ Conv(1x1) ─ [QuantizeLinear ─ DequantizeLinear] ─ y
//!                     DequantizeLinear(W int8) ─┘
//! ```
//!
//! and the `Conv` (with the output pair, when the conv output feeds only it) is replaced by one
//! node, [`FUSED_OP`], whose parser builds the integer op. The input pair stays in the graph
//! for any other consumer of the dequantized input (ConvNeXt's residual branch reads it); tract
//! drops it when nothing else does. Conditions, each needed for the integer op to compute the
//! same function: a 1x1 kernel, group 1, stride and dilation 1, no padding; per-tensor input
//! and output quantization whose quantize and dequantize agree; int8 weights with zero point 0
//! and one scale per output channel or one for all. Anything else keeps the float path.
//!
//! A convolution over non-overlapping `s × s` patches (kernel = stride = s, no padding:
//! ConvNeXt's stem and downsampling layers) is a 1x1 product over the patches, and is fused
//! the same way where that pays (`patches_pay`: our own integer product, on arm64 and in
//! graphs whose products are MatMuls, which tract moves channels last).
//!
//! Quantized depthwise convolutions (ConvNeXt's 7x7 `conv_dw`) are fused the same way into
//! [`FUSED_DEPTHWISE_OP`] ([`fuse_depthwise`]) where our integer depthwise pays: on arm64 with
//! SDOT.
//!
//! tract internals used (tract-onnx 0.23.9): the op registry (`Onnx::op_register`) and
//! `tract_hir`'s `Expansion`.

use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::{expand, Expansion};

use super::rewrite::{int_attr, int_attr_of, ints_attr, ints_attr_of};
use crate::kernels::depthwise::quantized::QDepthwiseConv;
use crate::kernels::qconv::{ActQuant, Layout, QPointwiseConv, QdqGelu};

/// The node type the fusion emits: inputs `x, x_scale, x_zero_point, w_int8, w_scale, bias`
/// and optionally `y_scale, y_zero_point`; output f32.
pub const FUSED_OP: &str = "ConvNextEdgeQPointwiseConv";
const DOMAIN: &str = "convnext_edge";

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
const ATTR_FLOATS: i32 = 6;

/// The node type the depthwise fusion emits: inputs `x, x_scale, x_zero_point, w_int8,
/// w_scale, bias`; attribute `pads` as ONNX orders them; output f32.
pub const FUSED_DEPTHWISE_OP: &str = "ConvNextEdgeQDepthwiseConv";

/// Registers the parsers of [`FUSED_OP`] and [`FUSED_DEPTHWISE_OP`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(FUSED_OP, parse);
    onnx.op_register.insert(FUSED_DEPTHWISE_OP, parse_depthwise);
}

/// Replaces every quantized 1x1 convolution matching the module docs' pattern; returns how many.
pub fn fuse_pointwise(graph: &mut GraphProto) -> usize {
    let mut fused = 0;
    let matmul_form = find_all(graph, None)
        .iter()
        .any(|m| int_attr_of(&m.node, "channels_last") == Some(1));
    loop {
        let matches = non_overlapping(find_all(graph, Some(matmul_form)));
        if matches.is_empty() {
            remove_dead_nodes(graph);
            link_integer_chains(graph);
            return fused;
        }
        fused += matches.len();
        apply(graph, matches);
    }
}

/// Replaces every quantized depthwise convolution
///
/// ```text
/// x ─ QuantizeLinear ─ DequantizeLinear ─ Conv(group = C) ─ y
///                     DequantizeLinear(W int8) ─┘
/// ```
///
/// whose integer op ([`QDepthwiseConv`]) pays on this CPU (`pays(kh, kw)`) by one
/// [`FUSED_DEPTHWISE_OP`] node; returns how many. Conditions, each needed for the integer op to
/// compute the same function: `C × 1 × kh × kw` int8 weights with zero point 0 and one scale
/// per channel or one for all, stride and dilation 1, explicit (or no) padding, per-tensor
/// input quantization whose quantize and dequantize agree. An output pair stays: the model's
/// passes merge it with the element-wise ops after it into one lookup. In MatMul-form graphs
/// tract moves the op channels last with the blocks around it.
pub fn fuse_depthwise(graph: &mut GraphProto, pays: impl Fn(usize, usize) -> bool) -> usize {
    let ix = Index::new(graph);
    let matches: Vec<Match> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_onnx(n))
        .filter_map(|(i, n)| match_depthwise(&ix, i, n, &pays))
        .collect();
    let fused = matches.len();
    apply(graph, non_overlapping(matches));
    remove_dead_nodes(graph);
    fused
}

/// Rewrites each remaining `ConvInteger | MatMulInteger → Cast(float)` as
/// `Conv | MatMul` of the zero-point-corrected operands in f32
/// (`DequantizeLinear` with scale 1), for CPUs where tract-linalg's int8 kernel is much slower
/// than its f32 ones (x86 without VNNI: dynamic-quantization models took 12 s for
/// convnext_tiny). The integer operands and their products are exact in f32; sums are exact up
/// to 2²⁴ in magnitude, past which f32 rounds where the integer op would not (a relative error
/// of 6e-8, the float model's own precision). With `grouped_only`, only grouped
/// (depthwise) `ConvInteger`s: tract has no integer depthwise kernel on any CPU, and runs them
/// as an im2col and a product per group (57% of a convnext_tiny dynamic inference on a Xeon
/// with AMX), where in f32 they become our depthwise kernel. Returns how many.
pub fn integer_ops_to_float(graph: &mut GraphProto, grouped_only: bool) -> usize {
    let ix = Index::new(graph);
    let mut rewrites = vec![];
    for (i, op) in graph.node.iter().enumerate().filter(|(_, n)| is_onnx(n)) {
        let float_op = match op.op_type.as_str() {
            "ConvInteger" => "Conv",
            "MatMulInteger" => "MatMul",
            _ => continue,
        };
        if grouped_only && int_attr_of(op, "group").unwrap_or(1) == 1 {
            continue;
        }
        let Some((cast_ix, cast)) = op
            .output
            .first()
            .and_then(|out| ix.sole_consumer(out, "Cast"))
        else {
            continue;
        };
        if cast.output.is_empty() {
            continue;
        }
        if int_attr_of(cast, "to") != Some(FLOAT as i64) {
            continue;
        }
        // Per-channel weight zero points run along the output channels: axis 0 of a conv's
        // [Cout, Cin, kh, kw] weight, axis 1 of a matmul's [K, N].
        let w_zp = arg(op, 3);
        let per_channel = ix.init(w_zp).map(|t| t.dims.iter().product::<i64>());
        if !w_zp.is_empty() && per_channel.is_none() {
            continue;
        }
        let w_axis = if float_op == "Conv" { 0 } else { 1 };
        rewrites.push((i, cast_ix, float_op, per_channel.filter(|&n| n > 1), w_axis));
    }
    let count = rewrites.len();
    let mut remove = vec![];
    for (i, cast_ix, float_op, channels, w_axis) in rewrites {
        let op = graph.node[i].clone();
        let name = &op.name;
        let w_one = match channels {
            Some(n) => {
                let ones = format!("{name}::cxe_ones");
                graph.initializer.push(TensorProto {
                    name: ones.clone(),
                    data_type: FLOAT,
                    dims: vec![n],
                    raw_data: (0..n).flat_map(|_| 1f32.to_le_bytes()).collect(),
                    ..Default::default()
                });
                ones
            }
            None => {
                let one = format!("{name}::cxe_one");
                graph.initializer.push(TensorProto {
                    name: one.clone(),
                    data_type: FLOAT,
                    raw_data: 1f32.to_le_bytes().to_vec(),
                    ..Default::default()
                });
                one
            }
        };
        // The input's zero point is computed at run time (tract's DequantizeLinear wants a
        // constant one): x − zp as two casts and a subtraction.
        let to_float = |input: &str, out: String| NodeProto {
            name: out.clone(),
            op_type: "Cast".into(),
            input: vec![input.into()],
            output: vec![out],
            attribute: vec![int_attr("to", FLOAT as i64)],
            ..Default::default()
        };
        let x = format!("{name}::cxe_x");
        let mut x_nodes = vec![to_float(arg(&op, 0), x.clone())];
        let x = match arg(&op, 2) {
            "" => x,
            zp => {
                let (zpf, centred) = (format!("{name}::cxe_xzp"), format!("{name}::cxe_xc"));
                x_nodes.push(to_float(zp, zpf.clone()));
                x_nodes.push(NodeProto {
                    name: centred.clone(),
                    op_type: "Sub".into(),
                    input: vec![x, zpf],
                    output: vec![centred.clone()],
                    ..Default::default()
                });
                centred
            }
        };
        let w = format!("{name}::cxe_w");
        let dq_w = NodeProto {
            name: w.clone(),
            op_type: "DequantizeLinear".into(),
            input: vec![arg(&op, 1).into(), w_one, arg(&op, 3).into()],
            output: vec![w.clone()],
            attribute: vec![int_attr("axis", w_axis)],
            ..Default::default()
        };
        let float = NodeProto {
            op_type: float_op.into(),
            input: vec![x, w],
            output: graph.node[cast_ix].output.clone(),
            ..op.clone()
        };
        graph.node[i] = float;
        graph.node.extend(x_nodes);
        graph.node.push(dq_w);
        remove.push(cast_ix);
    }
    remove.sort_unstable();
    for i in remove.into_iter().rev() {
        graph.node.remove(i);
    }
    count
}

/// Attribute of a fused node that writes i8 for the fused node reading it; its last two
/// inputs are then that reader's input scale and zero point.
const EMIT_ATTR: &str = "emit_i8";

/// Makes each fused product whose output quantization is known and whose only reader is
/// another fused product's input write i8 for it
/// ([`QPointwiseConv::emitting_i8`]): ConvNeXt's `fc1 → GELU → fc2`, where the f32 tensor
/// between them is the widest of the block. Safe because the reader would quantize that f32
/// tensor with exactly the parameters handed over, and nothing else reads it.
fn link_integer_chains(graph: &mut GraphProto) {
    let ix = Index::new(graph);
    let is_fused = |n: &NodeProto| n.op_type == FUSED_OP && n.domain == DOMAIN;
    let links: Vec<(usize, [String; 2])> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_fused(n) && matches!(n.input.len(), 8 | 10) && emit_of(n).is_none())
        .filter_map(|(i, n)| {
            let out = n.output.first()?;
            if graph.output.iter().any(|o| &o.name == out) {
                return None;
            }
            let [r] = ix.consumers.get(out.as_str())?[..] else {
                return None;
            };
            let reader = &graph.node[r];
            let static_input = int_attr_of(reader, DYNAMIC_ATTR).is_none_or(|d| d == 0);
            (is_fused(reader)
                && static_input
                && arg(reader, 0) == out
                && !reader.input[1..].contains(out))
            .then(|| (i, [arg(reader, 1).to_owned(), arg(reader, 2).to_owned()]))
        })
        .collect();
    for (i, quant) in links {
        let node = &mut graph.node[i];
        node.input.extend(quant);
        node.attribute.push(int_attr(EMIT_ATTR, 1));
        // The exporter's shape inference recorded the tensor as f32.
        let out = node.output[0].clone();
        graph.value_info.retain(|v| v.name != out);
    }
}

/// Removes the nodes none of whose outputs is read: the input pairs a fusion left behind
/// (ONNX nodes have no side effects, and tract would drop them anyway), so that they do not
/// count as readers.
fn remove_dead_nodes(graph: &mut GraphProto) {
    loop {
        let read: std::collections::HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter())
            .chain(graph.output.iter().map(|o| &o.name))
            .map(|s| s.as_str())
            .collect();
        let dead: Vec<usize> = (0..graph.node.len())
            .filter(|&i| {
                graph.node[i]
                    .output
                    .iter()
                    .all(|o| !read.contains(o.as_str()))
            })
            .collect();
        if dead.is_empty() {
            return;
        }
        for i in dead.into_iter().rev() {
            graph.node.remove(i);
        }
    }
}

/// Whether a fused node writes i8 (see [`EMIT_ATTR`]).
fn emit_of(node: &NodeProto) -> Option<i64> {
    int_attr_of(node, EMIT_ATTR).filter(|&v| v != 0)
}

/// One match: the conv's index, the new node, the nodes it reads (the input pair, the weight
/// dequantize) and the output pair's nodes, which it removes.
struct Match {
    conv: usize,
    node: NodeProto,
    reads: [usize; 3],
    remove: Vec<usize>,
    initializers: Vec<TensorProto>,
}

/// Keeps the matches that do not touch a node an earlier one removes: when one conv's output
/// pair is the next conv's input pair, the next is matched again once the first is fused.
fn non_overlapping(matches: Vec<Match>) -> Vec<Match> {
    let mut removed = std::collections::HashSet::new();
    let mut kept = vec![];
    for m in matches {
        let overlaps = m
            .reads
            .iter()
            .chain(&m.remove)
            .chain([&m.conv])
            .any(|i| removed.contains(i));
        if overlaps {
            continue;
        }
        removed.extend(m.remove.iter().copied());
        kept.push(m);
    }
    kept
}

fn apply(graph: &mut GraphProto, matches: Vec<Match>) {
    let mut remove = vec![];
    for m in matches {
        graph.node[m.conv] = m.node;
        graph.initializer.extend(m.initializers);
        remove.extend(m.remove);
    }
    remove.sort_unstable();
    for i in remove.into_iter().rev() {
        graph.node.remove(i);
    }
}

struct Index<'g> {
    graph: &'g GraphProto,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializer: HashMap<&'g str, &'g TensorProto>,
}

impl<'g> Index<'g> {
    fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        let initializer = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        Index {
            graph,
            producer,
            consumers,
            initializer,
        }
    }

    fn producer(&self, name: &str, op_type: &str) -> Option<(usize, &'g NodeProto)> {
        let i = *self.producer.get(name)?;
        let n = &self.graph.node[i];
        (is_onnx(n) && n.op_type == op_type).then_some((i, n))
    }

    /// The one node reading `name`, when it is of `op_type` and `name` is not a graph output.
    fn sole_consumer(&self, name: &str, op_type: &str) -> Option<(usize, &'g NodeProto)> {
        if self.graph.output.iter().any(|o| o.name == name) {
            return None;
        }
        match self.consumers.get(name)?.as_slice() {
            [i] => {
                let n = &self.graph.node[*i];
                (is_onnx(n) && n.op_type == op_type).then_some((*i, n))
            }
            _ => None,
        }
    }

    fn init(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializer.get(name).copied()
    }

    /// Whether the scale and zero point inputs of a quantize `q` and a dequantize `dq` are the
    /// same tensors (by name, or by value).
    fn same_params(&self, q: &NodeProto, dq: &NodeProto) -> bool {
        (1..3).all(|i| {
            let (a, b) = (arg(q, i), arg(dq, i));
            a == b
                || match (self.init(a), self.init(b)) {
                    (Some(x), Some(y)) => same_value(x, y),
                    _ => false,
                }
        })
    }

    /// A per-tensor activation quantization: an f32 scalar scale and a u8/i8 scalar zero point
    /// (absent means u8 0, unless the node asks for another output type).
    fn act_quant(&self, q: &NodeProto) -> Option<ActQuant> {
        if int_attr_of(q, "output_dtype").is_some_and(|t| t != UINT8 as i64 && t != INT8 as i64) {
            return None;
        }
        let scale = self
            .init(arg(q, 1))
            .filter(|t| t.data_type == FLOAT && is_scalar(t))?;
        let scale = *floats(scale)?.first()?;
        let (zero_point, signed) = match arg(q, 2) {
            "" => (0, int_attr_of(q, "output_dtype") == Some(INT8 as i64)),
            zp => {
                let t = self.init(zp).filter(|t| is_scalar(t))?;
                (*ints(t)?.first()? as i32, t.data_type == INT8)
            }
        };
        Some(ActQuant {
            scale,
            zero_point,
            signed,
        })
    }
}

/// The fusions in `graph`; convolutions over patches ([`patch_size`]) too when `patches` says
/// whether the graph's products are MatMuls (channels last) or, if `None`, not.
fn find_all(graph: &GraphProto, patches: Option<bool>) -> Vec<Match> {
    let ix = Index::new(graph);
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_onnx(n))
        .filter_map(|(i, n)| match_node(&ix, i, n, patches).or_else(|| match_dynamic(&ix, i, n)))
        .collect()
}

/// The output pair `Q → DQ` reading `name` alone, with the pair's node indices.
fn output_pair<'g>(
    ix: &Index<'g>,
    name: &str,
) -> Option<(usize, &'g NodeProto, usize, &'g NodeProto)> {
    let (qi, q) = ix.sole_consumer(name, "QuantizeLinear")?;
    let (dqi, dq) = ix.sole_consumer(&q.output[0], "DequantizeLinear")?;
    (ix.same_params(q, dq) && ix.act_quant(q).is_some()).then_some((qi, q, dqi, dq))
}

/// A `[cout]` f32 vector: an initializer, or the dequantization of one.
fn is_bias(ix: &Index, name: &str, cout: i64) -> bool {
    let dims_ok = |t: &TensorProto| t.dims == [cout];
    match ix.init(name) {
        Some(t) => t.data_type == FLOAT && dims_ok(t),
        None => ix
            .producer(name, "DequantizeLinear")
            .and_then(|(_, dq)| ix.init(arg(dq, 0)))
            .is_some_and(dims_ok),
    }
}

fn match_node(ix: &Index, node_ix: usize, op: &NodeProto, patches: Option<bool>) -> Option<Match> {
    let (channels_last, patch) = match op.op_type.as_str() {
        "Conv" if is_pointwise(op) => (false, 1),
        "Conv" if patches.is_some() => (false, patch_size(op)?),
        "MatMul" => (true, 1),
        _ => return None,
    };
    let (x_q_ix, x_q, x_dq_ix) = input_pair(ix, op)?;
    let (w_dq_ix, w_dq) = ix.producer(arg(op, 1), "DequantizeLinear")?;
    let w = ix.init(arg(w_dq, 0)).filter(|t| t.data_type == INT8)?;
    let (cout, channel_axes) = match (channels_last, &w.dims[..]) {
        (false, &[cout, _, kh, kw]) if kh == patch && kw == patch => (cout, [0, -4]),
        (true, &[_, cout]) => (cout, [1, -1]),
        _ => return None,
    };
    // Patches run on our own product alone; weights it cannot take exactly keep the float path.
    if patch > 1 {
        let w = ints(w)?.into_iter().map(|v| v as i8).collect::<Vec<_>>();
        if !crate::kernels::qconv::patches_pay(&w, patches == Some(true)) {
            return None;
        }
    }
    symmetric_weights(ix, w_dq, cout, &channel_axes)?;

    let bias = if channels_last { "" } else { arg(op, 2) };
    let mut node = NodeProto {
        name: op.name.clone(),
        op_type: FUSED_OP.into(),
        domain: DOMAIN.into(),
        input: [
            arg(x_q, 0),
            arg(x_q, 1),
            arg(x_q, 2),
            arg(w_dq, 0),
            arg(w_dq, 1),
            bias,
        ]
        .map(String::from)
        .to_vec(),
        output: op.output.clone(),
        attribute: vec![int_attr("channels_last", channels_last as i64)],
        ..Default::default()
    };
    if patch > 1 {
        node.attribute.push(int_attr(PATCH_ATTR, patch));
    }
    let mut remove = vec![];
    if let Some((qi, q, dqi, dq)) = output_pair(ix, op.output.first()?) {
        node.input.extend([arg(q, 1).into(), arg(q, 2).into()]);
        node.output = dq.output.clone();
        remove.extend([qi, dqi]);
        // PyTorch's Linear on a 4-D tensor exports as MatMul then Add(bias): fused as well
        // when the sum has its own pair.
        let add = ix
            .sole_consumer(&dq.output[0], "Add")
            .filter(|_| channels_last);
        if let Some((ai, add)) = add {
            let other = if arg(add, 0) == dq.output[0] {
                arg(add, 1)
            } else {
                arg(add, 0)
            };
            if is_bias(ix, other, cout) {
                if let Some((qi, q, dqi, dq)) = output_pair(ix, &add.output[0]) {
                    node.input[5] = other.into();
                    node.input.extend([arg(q, 1).into(), arg(q, 2).into()]);
                    node.output = dq.output.clone();
                    remove.extend([ai, qi, dqi]);
                }
            }
        }
    }
    // Only after an output pair: the GELU then reads a dequantized tensor, as in QDQ graphs.
    let gelu = (!remove.is_empty())
        .then(|| match_gelu(ix, &node.output[0]))
        .flatten();
    if let Some((gelu, nodes, out)) = gelu {
        node.attribute.extend(gelu_attributes(&gelu));
        node.output = vec![out];
        remove.extend(nodes);
    }
    let initializers = fill_defaults(&mut node, cout);
    Some(Match {
        conv: node_ix,
        node,
        reads: [x_q_ix, x_dq_ix, w_dq_ix],
        remove,
        initializers,
    })
}

/// The input pair `Q → DQ` a product reads (its quantize, the quantize's index, and the
/// dequantize's index): per-tensor, the two with the same parameters.
fn input_pair<'g>(ix: &Index<'g>, op: &NodeProto) -> Option<(usize, &'g NodeProto, usize)> {
    let (x_dq_ix, x_dq) = ix.producer(arg(op, 0), "DequantizeLinear")?;
    let (x_q_ix, x_q) = ix.producer(arg(x_dq, 0), "QuantizeLinear")?;
    if !ix.same_params(x_q, x_dq) {
        return None;
    }
    ix.act_quant(x_q)?;
    Some((x_q_ix, x_q, x_dq_ix))
}

/// Whether the weight dequantize `w_dq` is symmetric (zero point 0) with one f32 scale, or one
/// per output channel along one of `channel_axes`.
fn symmetric_weights(ix: &Index, w_dq: &NodeProto, cout: i64, channel_axes: &[i64]) -> Option<()> {
    let w_scale = ix.init(arg(w_dq, 1)).filter(|t| t.data_type == FLOAT)?;
    let per_channel = match w_scale.dims[..] {
        [] | [1] => false,
        [c] if c == cout => true,
        _ => return None,
    };
    let axis = int_attr_of(w_dq, "axis").unwrap_or(1);
    if per_channel && !channel_axes.contains(&axis) {
        return None;
    }
    match ix.init(arg(w_dq, 2)) {
        Some(zp) => ints(zp)?.iter().all(|&z| z == 0).then_some(()),
        None => arg(w_dq, 2).is_empty().then_some(()),
    }
}

/// See [`fuse_depthwise`].
fn match_depthwise(
    ix: &Index,
    node_ix: usize,
    op: &NodeProto,
    pays: &dyn Fn(usize, usize) -> bool,
) -> Option<Match> {
    if op.op_type != "Conv"
        || !all_ones(op, "strides")
        || !all_ones(op, "dilations")
        || !matches!(auto_pad(op), None | Some(b"NOTSET"))
    {
        return None;
    }
    let pads = match ints_attr_of(op, "pads") {
        None => [0; 4],
        Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => [t, l, b, r],
        Some(_) => return None,
    };
    let (x_q_ix, x_q, x_dq_ix) = input_pair(ix, op)?;
    let (w_dq_ix, w_dq) = ix.producer(arg(op, 1), "DequantizeLinear")?;
    let w = ix.init(arg(w_dq, 0)).filter(|t| t.data_type == INT8)?;
    let &[c, 1, kh, kw] = &w.dims[..] else {
        return None;
    };
    if int_attr_of(op, "group") != Some(c) || !pays(kh as usize, kw as usize) {
        return None;
    }
    symmetric_weights(ix, w_dq, c, &[0, -4])?;
    let mut node = NodeProto {
        name: op.name.clone(),
        op_type: FUSED_DEPTHWISE_OP.into(),
        domain: DOMAIN.into(),
        input: [
            arg(x_q, 0),
            arg(x_q, 1),
            arg(x_q, 2),
            arg(w_dq, 0),
            arg(w_dq, 1),
            arg(op, 2),
        ]
        .map(String::from)
        .to_vec(),
        output: op.output.clone(),
        attribute: vec![ints_attr("pads", &pads)],
        ..Default::default()
    };
    let initializers = fill_defaults(&mut node, c);
    Some(Match {
        conv: node_ix,
        node,
        reads: [x_q_ix, x_dq_ix, w_dq_ix],
        remove: vec![],
        initializers,
    })
}

/// Absent zero points and bias become explicit initializers (zeros), and a dynamic node's
/// unused input scale a 1: tract drops empty inputs, and the parser tells its inputs apart by
/// position. Returns the initializers to add.
fn fill_defaults(node: &mut NodeProto, cout: i64) -> Vec<TensorProto> {
    let mut initializers = vec![];
    for (slot, dt) in [(1, FLOAT), (2, UINT8), (5, FLOAT), (7, UINT8), (9, UINT8)] {
        if node.input.get(slot).is_some_and(|s| s.is_empty()) {
            let name = format!("{}::cxe_default_{slot}", node.name);
            let dims = if slot == 5 { vec![cout] } else { vec![] };
            let len = dims.iter().product::<i64>().max(1) as usize;
            let raw_data = match slot {
                1 => 1f32.to_le_bytes().to_vec(),
                _ if dt == FLOAT => vec![0; len * 4],
                _ => vec![0; len],
            };
            initializers.push(TensorProto {
                name: name.clone(),
                data_type: dt,
                dims,
                raw_data,
                ..Default::default()
            });
            node.input[slot] = name;
        }
    }
    initializers
}

/// Dynamic quantization's 1x1 products (onnxruntime's `quantize_dynamic`):
///
/// ```text
/// x ─ DynamicQuantizeLinear ─ ConvInteger(1x1) | MatMulInteger(W int8) ─ Cast(float)
///       └─ scale ─ Mul(W scale) ──────────────────────────────────────────┴─ Mul ─ [Add(bias)]
/// ```
///
/// becomes one [`FUSED_OP`] with the attribute [`DYNAMIC_ATTR`]: the input's scale and zero
/// point are computed from each input, as `DynamicQuantizeLinear` does. Same conditions on the
/// weights as the static pattern (int8, zero point 0, one scale or one per output channel).
fn match_dynamic(ix: &Index, node_ix: usize, op: &NodeProto) -> Option<Match> {
    let channels_last = match op.op_type.as_str() {
        "ConvInteger" if is_pointwise(op) => false,
        "MatMulInteger" => true,
        _ => return None,
    };
    let (dql_ix, dql) = ix.producer(arg(op, 0), "DynamicQuantizeLinear")?;
    if arg(op, 2) != dql.output.get(2)?.as_str() {
        return None;
    }
    let w = ix.init(arg(op, 1)).filter(|t| t.data_type == INT8)?;
    let cout = match (channels_last, &w.dims[..]) {
        (false, &[cout, _, 1, 1]) | (true, &[_, cout]) => cout,
        _ => return None,
    };
    if let Some(zp) = ix.init(arg(op, 3)) {
        if !ints(zp)?.iter().all(|&z| z == 0) {
            return None;
        }
    } else if !arg(op, 3).is_empty() {
        return None;
    }
    let (cast_ix, cast) = ix.sole_consumer(op.output.first()?, "Cast")?;
    if int_attr_of(cast, "to") != Some(FLOAT as i64) {
        return None;
    }
    let cast_out = cast.output.first()?;
    let (mul_ix, mul) = ix.sole_consumer(cast_out, "Mul")?;
    let mul_out = mul.output.first()?;
    let (scales_ix, scales) = ix.producer(other_input(mul, cast_out)?, "Mul")?;
    let w_scale_name = other_input(scales, dql.output.get(1)?)?;
    let w_scale = ix.init(w_scale_name).filter(|t| t.data_type == FLOAT)?;
    // Per channel only along the axis the product's output broadcasts it on.
    match w_scale.dims[..] {
        [] | [1] => {}
        [c] if c == cout && channels_last => {}
        _ => return None,
    }
    let mut node = NodeProto {
        name: op.name.clone(),
        op_type: FUSED_OP.into(),
        domain: DOMAIN.into(),
        input: [arg(dql, 0), "", "", arg(op, 1), w_scale_name, ""]
            .map(String::from)
            .to_vec(),
        output: mul.output.clone(),
        attribute: vec![
            int_attr("channels_last", channels_last as i64),
            int_attr(DYNAMIC_ATTR, 1),
        ],
        ..Default::default()
    };
    let mut remove = vec![cast_ix, mul_ix];
    let add = ix.sole_consumer(mul_out, "Add").filter(|_| channels_last);
    if let Some((add_ix, add)) = add {
        let bias = other_input(add, mul_out)?;
        if ix.init(bias).is_some() && is_bias(ix, bias, cout) {
            node.input[5] = bias.into();
            node.output = add.output.clone();
            remove.push(add_ix);
        }
    }
    let initializers = fill_defaults(&mut node, cout);
    Some(Match {
        conv: node_ix,
        node,
        reads: [dql_ix, scales_ix, node_ix],
        remove,
        initializers,
    })
}

/// Attribute of a fused node whose input quantization is computed per input.
const DYNAMIC_ATTR: &str = "dynamic";
/// Attribute of a [`FUSED_OP`] over non-overlapping patches: their side.
const PATCH_ATTR: &str = "patch";

/// The value of a scalar f32 initializer, or of the dequantization of a scalar one.
fn scalar(ix: &Index, name: &str) -> Option<f32> {
    if let Some(t) = ix.init(name) {
        return (t.data_type == FLOAT && is_scalar(t)).then(|| floats(t)?.first().copied())?;
    }
    let (_, dq) = ix.producer(name, "DequantizeLinear")?;
    let q = ix.init(arg(dq, 0)).filter(|t| is_scalar(t))?;
    let scale = ix
        .init(arg(dq, 1))
        .filter(|t| t.data_type == FLOAT && is_scalar(t))?;
    let zp = match arg(dq, 2) {
        "" => 0,
        zp => *ints(ix.init(zp)?)?.first()?,
    };
    Some((*ints(q)?.first()? - zp) as f32 * *floats(scale)?.first()?)
}

/// The other operand of a two-input node that reads `name`.
fn other_input<'n>(n: &'n NodeProto, name: &str) -> Option<&'n str> {
    match (arg(n, 0), arg(n, 1)) {
        (a, b) if a == name => Some(b),
        (a, b) if b == name => Some(a),
        _ => None,
    }
}

/// The output pair after `name` if there is one: its quantization, the dequantized name and
/// the pair's nodes; else `name` unchanged.
fn optional_pair(ix: &Index, name: &str) -> (Option<ActQuant>, String, Vec<usize>) {
    match output_pair(ix, name) {
        Some((qi, q, dqi, dq)) => (ix.act_quant(q), dq.output[0].clone(), vec![qi, dqi]),
        None => (None, name.to_owned(), vec![]),
    }
}

/// The exact GELU as exported (`x · (erf(x / c1) + c2) · c3`, [`QdqGelu`]) reading `y`, with
/// the nodes it spans and its final output.
fn match_gelu(ix: &Index, y: &str) -> Option<(QdqGelu, Vec<usize>, String)> {
    if ix.graph.output.iter().any(|o| o.name == y) {
        return None;
    }
    let readers = ix.consumers.get(y)?;
    let [r0, r1] = readers[..] else { return None };
    let node = |i: usize| &ix.graph.node[i];
    let (div_i, mul_i) = match (node(r0).op_type.as_str(), node(r1).op_type.as_str()) {
        ("Div", "Mul") => (r0, r1),
        ("Mul", "Div") => (r1, r0),
        _ => return None,
    };
    let div = node(div_i);
    if arg(div, 0) != y || !is_onnx(div) || !is_onnx(node(mul_i)) {
        return None;
    }
    let c1 = scalar(ix, arg(div, 1))?;
    let (qa, d, na) = optional_pair(ix, &div.output[0]);
    let (erf_i, erf) = ix.sole_consumer(&d, "Erf")?;
    let (qb, e, nb) = optional_pair(ix, &erf.output[0]);
    let (add_i, add) = ix.sole_consumer(&e, "Add")?;
    let c2 = scalar(ix, other_input(add, &e)?)?;
    let (qc, a, nc) = optional_pair(ix, &add.output[0]);
    let (m_i, m) = ix.sole_consumer(&a, "Mul")?;
    if m_i != mul_i || other_input(m, &a)? != y {
        return None;
    }
    let (qd, md, nd) = optional_pair(ix, &m.output[0]);
    let (m2_i, m2) = ix.sole_consumer(&md, "Mul")?;
    let c3 = scalar(ix, other_input(m2, &md)?)?;
    // The pair after the last product stays in the graph: it is the next product's input pair,
    // which that product's own fusion takes over.
    let mut nodes = vec![div_i, erf_i, add_i, mul_i, m2_i];
    for n in [na, nb, nc, nd] {
        nodes.extend(n);
    }
    let gelu = QdqGelu {
        c: [c1, c2, c3],
        quant: [qa, qb, qc, qd, None],
    };
    Some((gelu, nodes, m2.output[0].clone()))
}

const GELU_ATTR: &str = "gelu";
const GELU_QUANT_ATTR: &str = "gelu_quant";

/// `gelu` = the three constants, `gelu_quant` = per intermediate `[present, scale, zero point,
/// signed]`.
fn gelu_attributes(g: &QdqGelu) -> [AttributeProto; 2] {
    let quant = g.quant.iter().flat_map(|q| match q {
        Some(q) => [1.0, q.scale, q.zero_point as f32, q.signed as i32 as f32],
        None => [0.0; 4],
    });
    let floats = |name: &str, floats: Vec<f32>| AttributeProto {
        name: name.into(),
        r#type: ATTR_FLOATS,
        floats,
        ..Default::default()
    };
    [
        floats(GELU_ATTR, g.c.to_vec()),
        floats(GELU_QUANT_ATTR, quant.collect()),
    ]
}

/// The GELU a fused node carries, if any (see [`gelu_attributes`]).
fn gelu_of(node: &NodeProto) -> TractResult<Option<QdqGelu>> {
    let attr = |name| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.floats)
    };
    let (Some(c), Some(q)) = (attr(GELU_ATTR), attr(GELU_QUANT_ATTR)) else {
        return Ok(None);
    };
    ensure!(
        c.len() == 3 && q.len() == 20,
        "{FUSED_OP} {}: malformed GELU attributes",
        node.name
    );
    let mut quant = [None; 5];
    for (slot, v) in quant.iter_mut().zip(q.chunks(4)) {
        if v[0] != 0.0 {
            ensure!(
                v[1].is_finite() && v[1] > 0.0 && v[2].fract() == 0.0 && v[2].abs() <= 255.0,
                "{FUSED_OP} {}: malformed GELU quantization",
                node.name
            );
            *slot = Some(ActQuant {
                scale: v[1],
                zero_point: v[2] as i32,
                signed: v[3] != 0.0,
            });
        }
    }
    Ok(Some(QdqGelu {
        c: [c[0], c[1], c[2]],
        quant,
    }))
}

fn is_onnx(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

fn arg(n: &NodeProto, i: usize) -> &str {
    n.input.get(i).map(|s| s.as_str()).unwrap_or("")
}

/// The side `s` of a convolution over non-overlapping `s × s` patches (kernel = stride, no
/// padding or dilation, one group: ConvNeXt's stem and downsampling layers), a 1x1 product
/// over the patches.
fn patch_size(conv: &NodeProto) -> Option<i64> {
    let [kh, kw] = ints_attr_of(conv, "kernel_shape")? else {
        return None;
    };
    let square = kh == kw && *kh > 1;
    (square && ints_attr_of(conv, "strides") == Some(&[*kh, *kw][..]) && plain_window(conv))
        .then_some(*kh)
}

fn is_pointwise(conv: &NodeProto) -> bool {
    all_ones(conv, "strides") && all_ones(conv, "kernel_shape") && plain_window(conv)
}

/// One group, no dilation, no padding (explicit or automatic).
fn plain_window(conv: &NodeProto) -> bool {
    int_attr_of(conv, "group").unwrap_or(1) == 1
        && all_ones(conv, "dilations")
        && ints_attr_of(conv, "pads").is_none_or(|v| v.iter().all(|&x| x == 0))
        && matches!(auto_pad(conv), None | Some(b"NOTSET") | Some(b"VALID"))
}

/// Whether the ints attribute `name` is absent (1 by default) or all ones.
fn all_ones(conv: &NodeProto, name: &str) -> bool {
    ints_attr_of(conv, name).is_none_or(|v| v.iter().all(|&x| x == 1))
}

/// A convolution's `auto_pad`, if set.
fn auto_pad(conv: &NodeProto) -> Option<&[u8]> {
    let attr = conv.attribute.iter().find(|a| a.name == "auto_pad");
    attr.map(|a| a.s.as_slice())
}

fn is_scalar(t: &TensorProto) -> bool {
    t.dims.iter().product::<i64>() == 1
}

fn same_value(a: &TensorProto, b: &TensorProto) -> bool {
    a.data_type == b.data_type
        && a.dims == b.dims
        && a.raw_data == b.raw_data
        && a.float_data == b.float_data
        && a.int32_data == b.int32_data
}

/// The values of an f32 initializer stored in the file (not external data).
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    (t.raw_data.len().is_multiple_of(4) && t.data_location != Some(1)).then(|| {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// The values of a u8, i8 or i32 initializer stored in the file.
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    if !t.int32_data.is_empty() {
        return Some(t.int32_data.iter().map(|&v| v as i64).collect());
    }
    if t.data_location == Some(1) {
        return None;
    }
    match t.data_type {
        UINT8 => Some(t.raw_data.iter().map(|&b| b as i64).collect()),
        INT8 => Some(t.raw_data.iter().map(|&b| b as i8 as i64).collect()),
        INT32 if t.raw_data.len().is_multiple_of(4) => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        _ => None,
    }
}

fn parse(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let inputs = node.input.iter().filter(|s| !s.is_empty()).count();
    let emit_i8 = emit_of(node).is_some();
    let own = inputs - if emit_i8 { 2.min(inputs) } else { 0 };
    ensure!(
        matches!(own, 6 | 8 | 10) && (!emit_i8 || own > 6),
        "{FUSED_OP} {}: {inputs} inputs, expected 6, 8 or 10 (8 or 10, plus 2 with {EMIT_ATTR})",
        node.name
    );
    let layout = match node.get_attr_opt::<i64>("channels_last")? {
        Some(1) => Layout::ChannelsLast,
        _ => Layout::ChannelsFirst,
    };
    let gelu = gelu_of(node)?;
    let patch = int_attr_of(node, PATCH_ATTR).unwrap_or(1);
    ensure!(
        patch >= 1 && (patch == 1 || layout == Layout::ChannelsFirst),
        "{FUSED_OP} {}: patch {patch}",
        node.name
    );
    Ok((
        expand(Fused {
            inputs: own,
            emit_i8,
            dynamic: int_attr_of(node, DYNAMIC_ATTR).is_some_and(|d| d != 0),
            layout,
            gelu,
            patch: patch as usize,
        }),
        vec![],
    ))
}

/// The parsed [`FUSED_OP`] node, wired into a [`QPointwiseConv`] once its inputs are typed.
/// `inputs` counts its own inputs, without the two [`EMIT_ATTR`] adds.
#[derive(Debug, Clone, PartialEq)]
struct Fused {
    inputs: usize,
    emit_i8: bool,
    dynamic: bool,
    layout: Layout,
    gelu: Option<QdqGelu>,
    /// Side of the patches a convolution runs over (1: a 1x1 convolution).
    patch: usize,
}

fn konst<'m>(model: &'m TypedModel, outlet: OutletId, what: &str) -> TractResult<&'m Arc<Tensor>> {
    model
        .outlet_fact(outlet)?
        .konst
        .as_ref()
        .with_context(|| format!("{FUSED_OP}: {what} must be a constant"))
}

fn act_quant(model: &TypedModel, scale: OutletId, zp: OutletId) -> TractResult<ActQuant> {
    let scale = konst(model, scale, "scale")?;
    let zp = konst(model, zp, "zero point")?;
    ensure!(
        scale.len() == 1 && zp.len() == 1,
        "{FUSED_OP}: activation quantization must be per tensor"
    );
    let signed = match zp.datum_type() {
        DatumType::I8 => true,
        DatumType::U8 => false,
        dt => bail!("{FUSED_OP}: zero point of type {dt:?}"),
    };
    Ok(ActQuant {
        scale: scale.cast_to_scalar::<f32>()?,
        zero_point: zp.cast_to_scalar::<i32>()?,
        signed,
    })
}

impl Expansion for Fused {
    fn name(&self) -> StaticName {
        FUSED_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.inputs + if self.emit_i8 { 2 } else { 0 })?;
        check_output_arity(outputs, 1)?;
        let out_type = if self.emit_i8 {
            i8::datum_type()
        } else {
            f32::datum_type()
        };
        s.equals(&outputs[0].datum_type, out_type)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        match self.layout {
            Layout::ChannelsFirst => {
                s.equals(&inputs[3].rank, 4)?;
                s.equals(&outputs[0].shape[1], &inputs[3].shape[0])?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                let patch = self.patch as u64;
                s.given(&inputs[0].rank, move |s, rank| {
                    for axis in 2..rank as usize {
                        s.given(&inputs[0].shape[axis], move |s, d| {
                            s.equals(&outputs[0].shape[axis], d / patch)
                        })?;
                    }
                    Ok(())
                })
            }
            Layout::ChannelsLast => {
                s.equals(&inputs[3].rank, 2)?;
                s.given(&inputs[0].rank, move |s, rank| {
                    let last = rank as usize - 1;
                    s.equals(&outputs[0].shape[last], &inputs[3].shape[1])?;
                    for axis in 0..last {
                        s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
                    }
                    Ok(())
                })
            }
        }
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = act_quant(model, inputs[1], inputs[2])?;
        let w = konst(model, inputs[3], "the weight")?;
        ensure!(
            w.datum_type() == i8::datum_type(),
            "{FUSED_OP}: weights must be int8, got {w:?}"
        );
        // Canonical [Cout, Cin] whatever the layout.
        let w = match (self.layout, w.shape()) {
            (Layout::ChannelsFirst, &[cout, cin, kh, kw])
                if kh == self.patch && kw == self.patch =>
            {
                w.clone().into_tensor().into_shape(&[cout, cin * kh * kw])?
            }
            (Layout::ChannelsLast, &[_, _]) => w.clone().into_tensor().permute_axes(&[1, 0])?,
            (layout, shape) => bail!("{FUSED_OP}: {layout:?} weights of shape {shape:?}"),
        };
        let w_scales = konst(model, inputs[4], "the weight scale")?
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec();
        let pair = |i: usize| -> TractResult<Option<ActQuant>> {
            (self.inputs > i)
                .then(|| act_quant(model, inputs[i], inputs[i + 1]))
                .transpose()
        };
        let quants = match (pair(6)?, pair(8)?) {
            (first, None) => (None, first),
            (first, second) => (first, second),
        };
        let x_fact = model.outlet_fact(inputs[0])?;
        ensure!(
            matches!(x_fact.datum_type, DatumType::F32 | DatumType::I8),
            "{FUSED_OP}: input must be f32 (or i8 from a fused product), got {:?}",
            x_fact.datum_type
        );
        let positions = match self.layout {
            Layout::ChannelsFirst => x_fact
                .shape
                .iter()
                .skip(2)
                .map(|d| d.clone() / self.patch as u64)
                .product::<TDim>(),
            Layout::ChannelsLast => {
                let rank = x_fact.rank();
                let per_image = x_fact.shape.iter().take(rank.saturating_sub(1)).skip(1);
                per_image.product::<TDim>()
            }
        };
        let op = QPointwiseConv::new(
            w,
            self.layout,
            x,
            w_scales,
            quants,
            positions.to_usize().ok(),
        )?;
        let op = match self.patch {
            1 => op,
            s => op.over_patches(s)?,
        };
        let op = match self.gelu {
            Some(g) => op.with_gelu(g)?,
            None => op,
        };
        let op = match self.dynamic {
            true => op.with_dynamic_input()?,
            false => op,
        };
        let op = match self.emit_i8 {
            true => op.emitting_i8(act_quant(
                model,
                inputs[self.inputs],
                inputs[self.inputs + 1],
            )?)?,
            false => op,
        };
        model.wire_node(prefix, op, &[inputs[0], inputs[5]])
    }
}

fn parse_depthwise(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let inputs = node.input.iter().filter(|s| !s.is_empty()).count();
    ensure!(
        inputs == 6,
        "{FUSED_DEPTHWISE_OP} {}: {inputs} inputs, expected 6",
        node.name
    );
    let pads = match ints_attr_of(node, "pads") {
        Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
            [t, b, l, r].map(|p| p as usize)
        }
        pads => bail!("{FUSED_DEPTHWISE_OP} {}: pads {pads:?}", node.name),
    };
    Ok((expand(FusedDepthwise { pads }), vec![]))
}

/// The parsed [`FUSED_DEPTHWISE_OP`] node, wired into a [`QDepthwiseConv`] once its inputs are
/// typed; `pads` as `[top, bottom, left, right]`.
#[derive(Debug, Clone, PartialEq)]
struct FusedDepthwise {
    pads: [usize; 4],
}

impl Expansion for FusedDepthwise {
    fn name(&self) -> StaticName {
        FUSED_DEPTHWISE_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 6)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&inputs[3].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[0].shape[1])?;
        let [t, b, l, r] = self.pads;
        for (axis, pad) in [(2, t + b), (3, l + r)] {
            s.given_2(
                &inputs[0].shape[axis],
                &inputs[3].shape[axis],
                move |s, size, k| s.equals(&outputs[0].shape[axis], size + pad as i64 + 1 - k),
            )?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = act_quant(model, inputs[1], inputs[2])?;
        let w = konst(model, inputs[3], "the weight")?;
        let &[c, 1, kh, kw] = w.shape() else {
            bail!("{FUSED_DEPTHWISE_OP}: weights of shape {:?}", w.shape());
        };
        ensure!(
            w.datum_type() == i8::datum_type(),
            "{FUSED_DEPTHWISE_OP}: weights must be int8, got {w:?}"
        );
        let w = w.try_as_plain_ram()?.as_slice::<i8>()?.to_vec();
        let w_scales = konst(model, inputs[4], "the weight scale")?
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec();
        let op = QDepthwiseConv::new(&w, (c, kh, kw), self.pads, x, &w_scales)?;
        model.wire_node(prefix, op, &[inputs[0], inputs[5]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(name: &str, data_type: i32, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type,
            dims,
            raw_data: raw,
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    /// x → Q → DQ → Conv(1x1, DQ(W)) → Q → DQ → y
    fn graph(w_zero_point: u8) -> GraphProto {
        GraphProto {
            node: vec![
                node("QuantizeLinear", &["x", "s", "z"], "xq"),
                node("DequantizeLinear", &["xq", "s", "z"], "xd"),
                NodeProto {
                    attribute: vec![tract_onnx::pb::AttributeProto {
                        name: "axis".into(),
                        r#type: 2,
                        i: 0,
                        ..Default::default()
                    }],
                    ..node("DequantizeLinear", &["w", "ws", "wz"], "wd")
                },
                node("Conv", &["xd", "wd", "b"], "c"),
                node("QuantizeLinear", &["c", "s", "z"], "cq"),
                node("DequantizeLinear", &["cq", "s", "z"], "y"),
            ],
            initializer: vec![
                init("s", FLOAT, vec![], 0.5f32.to_le_bytes().to_vec()),
                init("z", UINT8, vec![], vec![128]),
                init("w", INT8, vec![2, 3, 1, 1], vec![1, 2, 3, 4, 5, 6]),
                floats_init("ws", &[0.1f32, 0.2]),
                init("wz", INT8, vec![2], vec![w_zero_point; 2]),
                init("b", FLOAT, vec![2], vec![0; 8]),
            ],
            output: vec![value("y")],
            ..Default::default()
        }
    }

    #[test]
    fn fuses_conv_with_both_pairs() {
        let mut g = graph(0);
        assert_eq!(fuse_pointwise(&mut g), 1);
        // The input pair and the weight's dequantize are read by nothing else: dropped.
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [FUSED_OP]);
        let fused = &g.node[0];
        assert_eq!(fused.input, ["x", "s", "z", "w", "ws", "b", "s", "z"]);
        assert_eq!(fused.output, ["y"]);
    }

    /// A 2x2 stride-2 convolution is a product over patches: fused where that pays (in a
    /// graph of convolutions: arm64), with the patch side for the op; elsewhere left to tract.
    #[test]
    fn fuses_a_convolution_over_patches_where_it_pays() {
        let ints = |name: &str, ints: &[i64]| tract_onnx::pb::AttributeProto {
            name: name.into(),
            r#type: 7,
            ints: ints.to_vec(),
            ..Default::default()
        };
        let mut g = graph(0);
        g.initializer[2] = init("w", INT8, vec![2, 3, 2, 2], (1..=24).collect());
        g.node[3]
            .attribute
            .extend([ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]);
        let pays = crate::kernels::qconv::patches_pay(&[1], false);
        assert_eq!(fuse_pointwise(&mut g), pays as usize);
        if pays {
            assert_eq!(int_attr_of(&g.node[0], PATCH_ATTR), Some(2));
        }
    }

    /// timm's ConvNeXt (MatMul form), where our product takes its weights: the stem and the
    /// downsampling run over patches, the downsampling channels last with the blocks — tract's
    /// layout change carried through them, one transpose left (after the stem, whose input is
    /// the model's).
    #[test]
    fn downsampling_of_a_matmul_form_graph_runs_channels_last_over_patches() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/fixtures/timm_v1_qdq_pc_u8.onnx");
        let model = crate::Model::load(&path, &crate::LoadOptions::threads(1)).unwrap();
        if !crate::kernels::qconv::patches_pay(&[1], true) || !crate::IntegerPath::Auto.enabled() {
            return;
        }
        let typed = model.typed_model();
        let infos = |name: &str| -> Vec<String> {
            let nodes = typed.nodes().iter().filter(|n| n.op().name() == name);
            nodes.map(|n| n.op().info().unwrap().join(" ")).collect()
        };
        let patches: Vec<_> = infos("QPointwiseConv")
            .into_iter()
            .filter(|i| i.contains("patches"))
            .collect();
        assert_eq!(patches.len(), 4, "{patches:?}");
        let last = patches.iter().filter(|i| i.contains("ChannelsLast"));
        assert_eq!(last.count(), 3, "{patches:?}");
        assert_eq!(infos("MoveAxis").len(), 1);
    }

    #[test]
    fn leaves_asymmetric_weights_and_strided_convs_alone() {
        let mut g = graph(3);
        assert_eq!(fuse_pointwise(&mut g), 0);
        let mut g = graph(0);
        g.node[3].attribute.push(tract_onnx::pb::AttributeProto {
            name: "strides".into(),
            r#type: 7,
            ints: vec![2, 2],
            ..Default::default()
        });
        assert_eq!(fuse_pointwise(&mut g), 0);
    }

    fn scalar_init(name: &str, v: f32) -> TensorProto {
        init(name, FLOAT, vec![], v.to_le_bytes().to_vec())
    }

    /// A 1-D f32 initializer.
    fn floats_init(name: &str, v: &[f32]) -> TensorProto {
        let raw = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        init(name, FLOAT, vec![v.len() as i64], raw)
    }

    /// A graph input or output by name; `elem_type` when tract needs its type.
    fn typed_value(name: &str, elem_type: Option<i32>) -> tract_onnx::pb::ValueInfoProto {
        use tract_onnx::pb::type_proto::{Tensor as TensorType, Value};
        tract_onnx::pb::ValueInfoProto {
            name: name.into(),
            r#type: elem_type.map(|elem_type| tract_onnx::pb::TypeProto {
                value: Some(Value::TensorType(TensorType {
                    elem_type,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn value(name: &str) -> tract_onnx::pb::ValueInfoProto {
        typed_value(name, None)
    }

    /// x → Q → DQ → MatMul(DQ(W)) → Q → DQ → Add(b) → Q → DQ → exact GELU with pairs → Q → DQ
    fn linear_gelu_graph() -> GraphProto {
        let pair = |x: &str, out: &str| {
            [
                node("QuantizeLinear", &[x, "s", "z"], &format!("{out}_q")),
                node("DequantizeLinear", &[&format!("{out}_q"), "s", "z"], out),
            ]
        };
        let mut nodes = vec![];
        nodes.extend(pair("x", "xd"));
        nodes.push(NodeProto {
            attribute: vec![int_attr("axis", 1)],
            ..node("DequantizeLinear", &["w", "ws", "wz"], "wd")
        });
        nodes.push(node("MatMul", &["xd", "wd"], "mm"));
        nodes.extend(pair("mm", "mmd"));
        nodes.push(node("Add", &["b", "mmd"], "add"));
        nodes.extend(pair("add", "y1"));
        nodes.push(node("Div", &["y1", "sqrt2"], "div"));
        nodes.push(node("Erf", &["div"], "erf"));
        nodes.extend(pair("erf", "erfd"));
        nodes.push(node("Add", &["erfd", "one"], "a"));
        nodes.extend(pair("a", "ad"));
        nodes.push(node("Mul", &["y1", "ad"], "m"));
        nodes.extend(pair("m", "md"));
        nodes.push(node("Mul", &["md", "half"], "m2"));
        nodes.extend(pair("m2", "y"));
        GraphProto {
            node: nodes,
            initializer: vec![
                scalar_init("s", 0.5),
                init("z", UINT8, vec![], vec![128]),
                init("w", INT8, vec![3, 2], vec![1, 2, 3, 4, 5, 6]),
                floats_init("ws", &[0.1f32, 0.2]),
                init("wz", INT8, vec![2], vec![0; 2]),
                init("b", FLOAT, vec![2], vec![0; 8]),
                scalar_init("sqrt2", std::f32::consts::SQRT_2),
                scalar_init("one", 1.0),
                scalar_init("half", 0.5),
            ],
            output: vec![value("y")],
            ..Default::default()
        }
    }

    #[test]
    fn fuses_linear_bias_and_gelu_and_leaves_the_last_pair() {
        let mut g = linear_gelu_graph();
        assert_eq!(fuse_pointwise(&mut g), 1);
        let fused = g.node.iter().find(|n| n.op_type == FUSED_OP).unwrap();
        assert_eq!(
            fused.input,
            ["x", "s", "z", "w", "ws", "b", "s", "z", "s", "z"]
        );
        assert_eq!(fused.output, ["m2"]);
        let gelu = gelu_of(fused).unwrap().unwrap();
        assert_eq!(gelu.c, [std::f32::consts::SQRT_2, 1.0, 0.5]);
        // pairs after Erf, Add and the first Mul; none after Div; the last one stays a node
        let present: Vec<bool> = gelu.quant.iter().map(|q| q.is_some()).collect();
        assert_eq!(present, [false, true, true, true, false]);
        let left: Vec<_> = g.node.iter().map(|n| n.output[0].as_str()).collect();
        assert_eq!(left, ["m2", "y_q", "y"]);
    }

    /// [`linear_gelu_graph`] followed by a second quantized MatMul reading its output.
    fn two_linears_graph() -> GraphProto {
        let mut g = linear_gelu_graph();
        g.node.push(NodeProto {
            attribute: vec![int_attr("axis", 1)],
            ..node("DequantizeLinear", &["w2", "ws2", "wz"], "wd2")
        });
        g.node.push(node("MatMul", &["y", "wd2"], "out"));
        g.initializer.extend([
            init("w2", INT8, vec![2, 2], vec![1, 2, 3, 4]),
            floats_init("ws2", &[0.3f32, 0.4]),
        ]);
        g.output[0].name = "out".into();
        g
    }

    #[test]
    fn a_product_read_only_by_another_writes_i8_for_it() {
        let mut g = two_linears_graph();
        assert_eq!(fuse_pointwise(&mut g), 2);
        let fused: Vec<_> = g.node.iter().filter(|n| n.op_type == FUSED_OP).collect();
        let [first, second] = fused[..] else {
            panic!("{fused:?}")
        };
        assert_eq!(second.input[0], first.output[0]);
        assert_eq!(emit_of(first), Some(1));
        assert_eq!(&first.input[10..], ["s", "z"]);
        assert_eq!(emit_of(second), None);
        assert_eq!(second.input.len(), 6);
    }

    #[test]
    fn a_product_with_another_reader_keeps_f32() {
        let mut g = two_linears_graph();
        g.node.push(node("Relu", &["m2"], "r"));
        g.output.push(value("r"));
        assert_eq!(fuse_pointwise(&mut g), 1 + 1);
        assert!(g.node.iter().all(|n| emit_of(n).is_none()));
    }

    /// x → DynamicQuantizeLinear → MatMulInteger(W) → Cast → Mul(x_scale · w_scale) → Add(b)
    fn dynamic_graph() -> GraphProto {
        let mut dql = node("DynamicQuantizeLinear", &["x"], "xq");
        dql.output.extend(["xs".into(), "xz".into()]);
        GraphProto {
            node: vec![
                dql,
                node("MatMulInteger", &["xq", "w", "xz", "wz"], "acc"),
                NodeProto {
                    attribute: vec![int_attr("to", FLOAT as i64)],
                    ..node("Cast", &["acc"], "accf")
                },
                node("Mul", &["xs", "ws"], "s"),
                node("Mul", &["accf", "s"], "m"),
                node("Add", &["b", "m"], "y"),
            ],
            initializer: vec![
                init("w", INT8, vec![3, 2], vec![1, 2, 3, 4, 5, 6]),
                init("wz", INT8, vec![], vec![0]),
                scalar_init("ws", 0.1),
                init("b", FLOAT, vec![2], vec![0; 8]),
            ],
            output: vec![value("y")],
            ..Default::default()
        }
    }

    #[test]
    fn fuses_a_dynamic_matmul_with_its_scale_and_bias() {
        let mut g = dynamic_graph();
        assert_eq!(fuse_pointwise(&mut g), 1);
        let [fused] = &g.node[..] else {
            panic!("{:?}", g.node)
        };
        assert_eq!(fused.op_type, FUSED_OP);
        assert_eq!(int_attr_of(fused, DYNAMIC_ATTR), Some(1));
        assert_eq!(fused.output, ["y"]);
        assert_eq!([&fused.input[0], &fused.input[3]], ["x", "w"]);
        assert_eq!(&fused.input[4..6], ["ws", "b"]);
        // Non-zero weight zero point: left alone.
        let mut g = dynamic_graph();
        g.initializer[1].raw_data = vec![3];
        assert_eq!(fuse_pointwise(&mut g), 0);
    }

    /// An input for [`run_graph`]: 18 values in ±4.
    fn sample_input() -> Vec<f32> {
        (0..18).map(|i| (i as f32 * 0.37).sin() * 4.0).collect()
    }

    /// Runs a one-input graph through tract on `x` (`[1, 2, 3, 3]` f32).
    fn run_graph(graph: GraphProto, x: &[f32]) -> Vec<f32> {
        let proto = tract_onnx::pb::ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let mut model = crate::model::onnx().parse(&proto, None).unwrap().model;
        let x = Tensor::from_shape(&[1, 2, 3, 3], x).unwrap();
        model
            .set_input_fact(0, f32::fact([1, 2, 3, 3]).into())
            .unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let y = plan.run(tvec!(x.into_tvalue())).unwrap().remove(0);
        let y = y.try_as_plain_ram().unwrap();
        y.as_slice::<f32>().unwrap().to_vec()
    }

    /// A graph of `node` from the f32 input `x` to the f32 output `y`.
    fn float_graph(node: Vec<NodeProto>, initializer: Vec<TensorProto>) -> GraphProto {
        let io = |name: &str| typed_value(name, Some(FLOAT));
        GraphProto {
            node,
            initializer,
            input: vec![io("x")],
            output: vec![io("y")],
            ..Default::default()
        }
    }

    /// x → DynamicQuantizeLinear → ConvInteger(2x2, per-channel weight zero points) → Cast
    fn conv_integer_graph() -> GraphProto {
        let mut dql = node("DynamicQuantizeLinear", &["x"], "xq");
        dql.output.extend(["xs".into(), "xz".into()]);
        let w: Vec<u8> = (0..3 * 2 * 2 * 2).map(|i| (i * 37 % 251) as u8).collect();
        float_graph(
            vec![
                dql,
                NodeProto {
                    attribute: vec![ints_attr("kernel_shape", &[2, 2])],
                    ..node("ConvInteger", &["xq", "w", "xz", "wz"], "acc")
                },
                NodeProto {
                    attribute: vec![int_attr("to", FLOAT as i64)],
                    ..node("Cast", &["acc"], "y")
                },
            ],
            vec![
                init("w", UINT8, vec![3, 2, 2, 2], w),
                init("wz", UINT8, vec![3], vec![0, 128, 255]),
            ],
        )
    }

    #[test]
    fn integer_ops_in_float_compute_the_same_sums() {
        let x = sample_input();
        let expected = run_graph(conv_integer_graph(), &x);
        let mut g = conv_integer_graph();
        assert_eq!(integer_ops_to_float(&mut g, true), 0);
        assert_eq!(integer_ops_to_float(&mut g, false), 1);
        assert!(g.node.iter().all(|n| n.op_type != "ConvInteger"));
        assert_eq!(run_graph(g, &x), expected);
        assert_eq!(expected.len(), 3 * 2 * 2);
    }

    #[test]
    fn grouped_integer_convolutions_go_to_float_on_every_cpu() {
        let x = sample_input();
        let grouped = || {
            let mut g = conv_integer_graph();
            let conv = g
                .node
                .iter_mut()
                .find(|n| n.op_type == "ConvInteger")
                .unwrap();
            conv.attribute.push(int_attr("group", 2));
            let w = g.initializer.iter_mut().find(|t| t.name == "w").unwrap();
            w.dims = vec![2, 1, 2, 2];
            w.raw_data.truncate(8);
            let wz = g.initializer.iter_mut().find(|t| t.name == "wz").unwrap();
            wz.dims = vec![2];
            wz.raw_data.truncate(2);
            g
        };
        let expected = run_graph(grouped(), &x);
        let mut g = grouped();
        assert_eq!(integer_ops_to_float(&mut g, true), 1);
        assert!(g.node.iter().all(|n| n.op_type != "ConvInteger"));
        assert_eq!(run_graph(g, &x), expected);
        assert_eq!(expected.len(), 2 * 2 * 2);
    }

    /// `x → Q → DQ → Conv(3x3 depthwise, 2 channels, padding 1 above and below, 2 on the
    /// right) → Q → DQ`.
    fn depthwise_graph() -> GraphProto {
        let w: Vec<u8> = (0..18).map(|i| (i * 29 % 255) as u8).collect();
        float_graph(
            vec![
                node("QuantizeLinear", &["x", "s", "z"], "xq"),
                node("DequantizeLinear", &["xq", "s", "z"], "xd"),
                NodeProto {
                    attribute: vec![int_attr("axis", 0)],
                    ..node("DequantizeLinear", &["w", "ws", "wz"], "wd")
                },
                NodeProto {
                    attribute: vec![
                        int_attr("group", 2),
                        ints_attr("kernel_shape", &[3, 3]),
                        ints_attr("pads", &[1, 0, 1, 2]),
                    ],
                    ..node("Conv", &["xd", "wd", "b"], "c")
                },
                node("QuantizeLinear", &["c", "ys", "z"], "cq"),
                node("DequantizeLinear", &["cq", "ys", "z"], "y"),
            ],
            vec![
                scalar_init("s", 0.05),
                init("z", UINT8, vec![], vec![128]),
                init("w", INT8, vec![2, 1, 3, 3], w),
                floats_init("ws", &[0.01, 0.02]),
                init("wz", INT8, vec![2], vec![0; 2]),
                floats_init("b", &[0.3, -0.2]),
                scalar_init("ys", 0.05),
            ],
        )
    }

    /// Fused where the integer op pays (asked of `pays`), into one node that computes what
    /// tract's float path computes on the same graph, within one output quantum (a sum on a
    /// rounding boundary may round either way).
    #[test]
    fn fused_depthwise_matches_the_float_path() {
        let x = sample_input();
        let expected = run_graph(depthwise_graph(), &x);
        let mut g = depthwise_graph();
        assert_eq!(fuse_depthwise(&mut g, |_, _| false), 0);
        assert_eq!(fuse_depthwise(&mut g, |kh, kw| (kh, kw) == (3, 3)), 1);
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [FUSED_DEPTHWISE_OP, "QuantizeLinear", "DequantizeLinear"]
        );
        assert_eq!(g.node[0].input, ["x", "s", "z", "w", "ws", "b"]);
        let got = run_graph(g, &x);
        assert_eq!(got.len(), expected.len());
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 0.05 * 1.01, "{a} vs {b}");
        }
    }

    #[test]
    fn strided_or_ungrouped_depthwise_stays_float() {
        let mut g = depthwise_graph();
        g.node[3].attribute.push(ints_attr("strides", &[2, 2]));
        assert_eq!(fuse_depthwise(&mut g, |_, _| true), 0);
        let mut g = depthwise_graph();
        g.node[3].attribute[0] = int_attr("group", 1);
        assert_eq!(fuse_depthwise(&mut g, |_, _| true), 0);
    }

    #[test]
    fn a_gelu_with_a_foreign_reader_is_not_fused() {
        let mut g = linear_gelu_graph();
        g.node.push(node("Relu", &["erf"], "r"));
        assert_eq!(fuse_pointwise(&mut g), 1);
        let fused = g.node.iter().find(|n| n.op_type == FUSED_OP).unwrap();
        assert!(gelu_of(fused).unwrap().is_none());
        assert_eq!(fused.output, ["y1"]);
    }

    #[test]
    fn output_pair_is_kept_when_the_conv_output_has_other_readers() {
        let mut g = graph(0);
        g.node.push(node("Relu", &["c"], "r"));
        assert_eq!(fuse_pointwise(&mut g), 1);
        let fused = g.node.iter().find(|n| n.op_type == FUSED_OP).unwrap();
        assert_eq!(fused.input.len(), 6);
        assert_eq!(fused.output, ["c"]);
        assert!(g.node.iter().any(|n| n.output == ["cq"]));
    }
}
