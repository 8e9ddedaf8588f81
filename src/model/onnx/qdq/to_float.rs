//! Integer products left after the fusions, restated in f32.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::index::Index;
use crate::model::onnx::proto::{arg, dt, int_attr, int_attr_of, is_onnx};

/// Rewrites each remaining `ConvInteger | MatMulInteger → Cast(float)` as
/// `Conv | MatMul` of the zero-point-corrected operands in f32
/// (`DequantizeLinear` with scale 1), for CPUs where tract-linalg's int8 kernel is much slower
/// than its f32 ones (x86 without VNNI, where dynamic-quantization models took seconds). The integer operands and their products are exact in f32; sums are exact up
/// to 2²⁴ in magnitude, past which f32 rounds where the integer op would not (a relative error
/// of 6e-8, the float model's own precision). With `grouped_only`, only grouped
/// (depthwise) `ConvInteger`s: tract has no integer depthwise kernel on any CPU, and runs them
/// as an im2col and a product per group (the bulk of a dynamic inference), where in f32 they
/// become our depthwise kernel. Returns how many.
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
        if int_attr_of(cast, "to") != Some(dt::FLOAT as i64) {
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
                    data_type: dt::FLOAT,
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
                    data_type: dt::FLOAT,
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
            attribute: vec![int_attr("to", dt::FLOAT as i64)],
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
