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
//! and output quantization whose quantize and dequantize agree; 8-bit weights with one scale
//! per output channel or one for all (their zero points are centred away or kept for the op,
//! `weights.rs`). Anything else keeps the float path, and [`Coverage`] says why.
//!
//! A convolution over non-overlapping `s × s` patches (kernel = stride = s, no padding:
//! ConvNeXt's stem and downsampling layers) is a 1x1 product over the patches, and is fused
//! the same way: the op gathers the patches for whichever product kernel runs it.
//!
//! Quantized depthwise convolutions (ConvNeXt's 7x7 `conv_dw`) are fused the same way into
//! [`FUSED_DEPTHWISE_OP`] ([`fuse_depthwise`]) where our integer depthwise pays: on arm64 with
//! SDOT.
//!
//! tract internals used (tract-onnx 0.23.9): the op registry (`Onnx::op_register`) and
//! `tract_hir`'s `Expansion`.

mod canonical;
mod coverage;
mod fused;
mod index;
mod matcher;
mod ops;
mod to_float;
mod weights;

use tract_onnx::pb::{GraphProto, NodeProto};

use crate::model::onnx::proto::{arg, int_attr, int_attr_of, is_onnx};
pub use canonical::{
    constants_to_initializers, repeated_pairs, reshapes_around_products, reshapes_before_quantize,
};
pub(crate) use coverage::{outcome, survey};
pub use coverage::{Coverage, Product};
use fused::{emit_of, DOMAIN, DYNAMIC_ATTR, EMIT_ATTR};
pub use fused::{FUSED_DEPTHWISE_OP, FUSED_OP};
use index::Index;
use matcher::{find_all, match_depthwise, Match};
pub use to_float::integer_ops_to_float;

/// Why a product stays on the float path, for `info`.
pub type Miss = &'static str;

/// Registers the parsers of [`FUSED_OP`] and [`FUSED_DEPTHWISE_OP`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(FUSED_OP, ops::parse);
    onnx.op_register
        .insert(FUSED_DEPTHWISE_OP, ops::parse_depthwise);
}

/// Replaces every quantized 1x1 convolution matching the module docs' pattern; returns how many.
pub fn fuse_pointwise(graph: &mut GraphProto) -> usize {
    let mut fused = 0;
    loop {
        let matches = non_overlapping(find_all(graph));
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

/// Makes each fused product whose output quantization is known and whose only reader is
/// another fused product's input write i8 for it
/// ([`QPointwiseConv::emitting_i8`]): ConvNeXt's `fc1 → GELU → fc2`, where the f32 tensor
/// between them is the widest of the block. Safe because the reader would quantize that f32
/// tensor with exactly the parameters handed over, and nothing else reads it. `Reshape`s in
/// between, each the only reader of the last (the `Gemm` reshapes of onnxruntime's
/// QOperator files), pass the i8 values through as they passed the f32 ones.
fn link_integer_chains(graph: &mut GraphProto) {
    let ix = Index::new(graph);
    let is_fused = |n: &NodeProto| n.op_type == FUSED_OP && n.domain == DOMAIN;
    let is_output = |name: &str| graph.output.iter().any(|o| o.name == name);
    let only_reader = |name: &str| match ix.consumers.get(name).map(|c| &c[..]) {
        Some(&[r]) if !is_output(name) => Some(&graph.node[r]),
        _ => None,
    };
    let links: Vec<(usize, [String; 2], Vec<String>)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_fused(n) && matches!(n.input.len(), 8 | 10) && emit_of(n).is_none())
        .filter_map(|(i, n)| {
            let mut passed = vec![n.output.first()?.clone()];
            let mut reader = only_reader(&passed[0])?;
            while reader.op_type == "Reshape" && reader.domain.is_empty() {
                if arg(reader, 0) != passed.last()? {
                    return None;
                }
                passed.push(reader.output.first()?.clone());
                reader = only_reader(passed.last()?)?;
            }
            let out = passed.last()?;
            let static_input = int_attr_of(reader, DYNAMIC_ATTR).is_none_or(|d| d == 0);
            (is_fused(reader)
                && static_input
                && arg(reader, 0) == out
                && !reader.input[1..].contains(out))
            .then(|| {
                let quant = [arg(reader, 1).to_owned(), arg(reader, 2).to_owned()];
                (i, quant, passed)
            })
        })
        .collect();
    for (i, quant, passed) in links {
        let node = &mut graph.node[i];
        node.input.extend(quant);
        node.attribute.push(int_attr(EMIT_ATTR, 1));
        // The exporter's shape inference recorded these tensors as f32.
        graph.value_info.retain(|v| !passed.contains(&v.name));
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

#[cfg(test)]
mod tests {
    use super::fused::{gelu_of, PATCH_ATTR, WEIGHT_ZERO_ATTR};
    use super::*;
    use crate::model::onnx::proto::{dt, ints_attr, ints_attr_of};
    use tract_onnx::pb::TensorProto;

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
                init("s", dt::FLOAT, vec![], 0.5f32.to_le_bytes().to_vec()),
                init("z", dt::UINT8, vec![], vec![128]),
                init("w", dt::INT8, vec![2, 3, 1, 1], vec![1, 2, 3, 4, 5, 6]),
                floats_init("ws", &[0.1f32, 0.2]),
                init("wz", dt::INT8, vec![2], vec![w_zero_point; 2]),
                init("b", dt::FLOAT, vec![2], vec![0; 8]),
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

    /// A 2x2 stride-2 convolution is a product over patches: fused, with the patch side for
    /// the op.
    #[test]
    fn fuses_a_convolution_over_patches() {
        let ints = |name: &str, ints: &[i64]| tract_onnx::pb::AttributeProto {
            name: name.into(),
            r#type: 7,
            ints: ints.to_vec(),
            ..Default::default()
        };
        let mut g = graph(0);
        g.initializer[2] = init("w", dt::INT8, vec![2, 3, 2, 2], (1..=24).collect());
        g.node[3]
            .attribute
            .extend([ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]);
        assert_eq!(fuse_pointwise(&mut g), 1);
        assert_eq!(int_attr_of(&g.node[0], PATCH_ATTR), Some(2));
    }

    /// timm's ConvNeXt (MatMul form): the stem and the downsampling run over patches, the downsampling channels last with the blocks — tract's
    /// layout change carried through them, one transpose left (after the stem, whose input is
    /// the model's; our `ChannelsLastF32` in the plan).
    #[test]
    fn downsampling_of_a_matmul_form_graph_runs_channels_last_over_patches() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/fixtures/timm_v1_qdq_pc_u8.onnx");
        let model = crate::Model::load(&path, &crate::LoadOptions::threads(1)).unwrap();
        if !crate::IntegerPath::Auto.enabled() {
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
        assert_eq!(infos("ChannelsLastF32").len() + infos("MoveAxis").len(), 1);
    }

    /// Weights with zero points are the same weights centred, where those fit in int8: the
    /// fused node reads a centred copy. Full-range ones keep their zero points, for the op.
    /// Strided convolutions keep the float path.
    #[test]
    fn centres_asymmetric_weights_where_they_fit_and_leaves_strided_convs_alone() {
        let mut g = graph(3);
        assert_eq!(fuse_pointwise(&mut g), 1);
        let w = &g.node[0].input[3];
        let centred = g.initializer.iter().find(|t| &t.name == w).unwrap();
        assert_eq!(centred.raw_data, [-2i8, -1, 0, 1, 2, 3].map(|v| v as u8));
        // Around −128, 1..6 are 129..134 away: the weights stay as stored, the zero point
        // goes to the op.
        let mut g = graph(128);
        assert_eq!(fuse_pointwise(&mut g), 1);
        assert_eq!(g.node[0].input[3], "w");
        assert_eq!(
            ints_attr_of(&g.node[0], WEIGHT_ZERO_ATTR),
            Some(&[-128, -128][..])
        );
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
        init(name, dt::FLOAT, vec![], v.to_le_bytes().to_vec())
    }

    /// A 1-D f32 initializer.
    fn floats_init(name: &str, v: &[f32]) -> TensorProto {
        let raw = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        init(name, dt::FLOAT, vec![v.len() as i64], raw)
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
                init("z", dt::UINT8, vec![], vec![128]),
                init("w", dt::INT8, vec![3, 2], vec![1, 2, 3, 4, 5, 6]),
                floats_init("ws", &[0.1f32, 0.2]),
                init("wz", dt::INT8, vec![2], vec![0; 2]),
                init("b", dt::FLOAT, vec![2], vec![0; 8]),
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
            init("w2", dt::INT8, vec![2, 2], vec![1, 2, 3, 4]),
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
                    attribute: vec![int_attr("to", dt::FLOAT as i64)],
                    ..node("Cast", &["acc"], "accf")
                },
                node("Mul", &["xs", "ws"], "s"),
                node("Mul", &["accf", "s"], "m"),
                node("Add", &["b", "m"], "y"),
            ],
            initializer: vec![
                init("w", dt::INT8, vec![3, 2], vec![1, 2, 3, 4, 5, 6]),
                init("wz", dt::INT8, vec![], vec![0]),
                scalar_init("ws", 0.1),
                init("b", dt::FLOAT, vec![2], vec![0; 8]),
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
        // A weight zero point: centred where the weights fit in int8, else kept for the op.
        let mut g = dynamic_graph();
        g.initializer[1].raw_data = vec![3];
        assert_eq!(fuse_pointwise(&mut g), 1);
        assert_eq!(g.node[0].input[3], "acc::cxe_weights");
        assert_eq!(ints_attr_of(&g.node[0], WEIGHT_ZERO_ATTR), None);
        let mut g = dynamic_graph();
        g.initializer[1].raw_data = vec![-125i8 as u8];
        assert_eq!(fuse_pointwise(&mut g), 1);
        assert_eq!(
            ints_attr_of(&g.node[0], WEIGHT_ZERO_ATTR),
            Some(&[-125][..])
        );
    }

    /// An input for [`run_graph`]: 18 values in ±4.
    fn sample_input() -> Vec<f32> {
        (0..18).map(|i| (i as f32 * 0.37).sin() * 4.0).collect()
    }

    /// Runs a one-input graph through tract on `x` (`[1, 2, 3, 3]` f32).
    fn run_graph(graph: GraphProto, x: &[f32]) -> Vec<f32> {
        crate::model::onnx::run_graph(graph, &[1, 2, 3, 3], x)
    }

    /// A graph of `node` from the f32 input `x` to the f32 output `y`.
    fn float_graph(node: Vec<NodeProto>, initializer: Vec<TensorProto>) -> GraphProto {
        let io = |name: &str| typed_value(name, Some(dt::FLOAT));
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
                    attribute: vec![int_attr("to", dt::FLOAT as i64)],
                    ..node("Cast", &["acc"], "y")
                },
            ],
            vec![
                init("w", dt::UINT8, vec![3, 2, 2, 2], w),
                init("wz", dt::UINT8, vec![3], vec![0, 128, 255]),
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
                init("z", dt::UINT8, vec![], vec![128]),
                init("w", dt::INT8, vec![2, 1, 3, 3], w),
                floats_init("ws", &[0.01, 0.02]),
                init("wz", dt::INT8, vec![2], vec![0; 2]),
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

    /// fc1 → Reshape → Reshape → fc2: fc1 writes i8 for fc2 through the reshapes, whose f32
    /// types are forgotten; with a second reader of a reshape, it does not.
    #[test]
    fn links_products_through_reshapes() {
        let fused = |inputs: [&str; 8], output: &str| NodeProto {
            domain: DOMAIN.into(),
            ..node(FUSED_OP, &inputs, output)
        };
        let info = |name: &str| tract_onnx::pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        for shared in [false, true] {
            let mut g = GraphProto {
                node: vec![
                    fused(["x", "xs", "xz", "w1", "ws1", "b1", "ys", "yz"], "a"),
                    node("Reshape", &["a", "shape"], "r"),
                    node("Reshape", &["r", "shape"], "r2"),
                    fused(["r2", "hs", "hz", "w2", "ws2", "b2", "ys2", "yz2"], "y"),
                ],
                output: vec![info("y")],
                value_info: vec![info("a"), info("r"), info("r2")],
                ..Default::default()
            };
            if shared {
                g.node.push(node("Identity", &["r"], "other"));
                g.output.push(info("other"));
            }
            link_integer_chains(&mut g);
            let fc1 = &g.node[0];
            if shared {
                assert!(emit_of(fc1).is_none());
                assert_eq!(g.value_info.len(), 3);
            } else {
                assert_eq!(emit_of(fc1), Some(1));
                assert_eq!(fc1.input[8..], ["hs", "hz"]);
                assert!(g.value_info.is_empty());
            }
            assert!(emit_of(&g.node[3]).is_none());
        }
    }
}
