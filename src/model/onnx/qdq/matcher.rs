//! The patterns the fusions replace (see the parent module's docs), found on an [`Index`].

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::fused::{
    gelu_attributes, DOMAIN, DYNAMIC_ATTR, FUSED_DEPTHWISE_OP, FUSED_OP, PATCH_ATTR,
    WEIGHT_ZERO_ATTR,
};
use super::index::{all_ones, auto_pad, is_pointwise, patch_size, scalar, Index};
use super::weights::{int8_copy, weights, Orientation};
use super::Miss;
use crate::kernels::qconv::{ActQuant, QdqGelu};
use crate::model::onnx::proto::{arg, dt, int_attr, int_attr_of, ints_attr, ints_attr_of, is_onnx};

/// One match: the conv's index, the new node, the nodes it reads (the input pair, the weight
/// dequantize) and the output pair's nodes, which it removes.
pub(super) struct Match {
    pub(super) conv: usize,
    pub(super) node: NodeProto,
    pub(super) reads: [usize; 3],
    pub(super) remove: Vec<usize>,
    pub(super) initializers: Vec<TensorProto>,
}

/// The fusions in `graph`.
pub(super) fn find_all(graph: &GraphProto) -> Vec<Match> {
    let ix = Index::new(graph);
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_onnx(n))
        .filter_map(|(i, n)| {
            match_node(&ix, i, n)
                .ok()
                .or_else(|| match_dynamic(&ix, i, n))
        })
        .collect()
}

/// The output pair `Q → DQ` reading `name` alone, with the pair's node indices.
pub(super) fn output_pair<'g>(
    ix: &Index<'g>,
    name: &str,
) -> Option<(usize, &'g NodeProto, usize, &'g NodeProto)> {
    let (qi, q) = ix.sole_consumer(name, "QuantizeLinear")?;
    let (dqi, dq) = ix.sole_consumer(&q.output[0], "DequantizeLinear")?;
    (ix.same_params(q, dq) && ix.act_quant(q).is_some()).then_some((qi, q, dqi, dq))
}

/// A `[cout]` f32 vector: an initializer, or the dequantization of one.
pub(super) fn is_bias(ix: &Index, name: &str, cout: i64) -> bool {
    let dims_ok = |t: &TensorProto| t.dims == [cout];
    match ix.init(name) {
        Some(t) => t.data_type == dt::FLOAT && dims_ok(t),
        None => ix
            .producer(name, "DequantizeLinear")
            .and_then(|(_, dq)| ix.init(arg(dq, 0)))
            .is_some_and(dims_ok),
    }
}

pub(super) fn match_node(ix: &Index, node_ix: usize, op: &NodeProto) -> Result<Match, Miss> {
    let (channels_last, patch) = match op.op_type.as_str() {
        "Conv" if is_pointwise(op) => (false, 1),
        "Conv" => (
            false,
            patch_size(op).ok_or("a convolution other than 1x1 or over patches")?,
        ),
        "MatMul" => (true, 1),
        "Gemm" => return Err("a Gemm with alpha or beta other than 1, or A transposed"),
        _ => return Err("not a product"),
    };
    let (x_q_ix, x_q, x_dq_ix) =
        input_pair(ix, op).ok_or("its input is not quantized per tensor (Q → DQ)")?;
    let orientation = match channels_last {
        true => Orientation::MatMul,
        false => Orientation::Conv,
    };
    let w = weights(ix, arg(op, 1), orientation, &op.name)?;
    if !channels_last && w.dims[2..] != [patch, patch] {
        return Err("a convolution other than 1x1 or over patches");
    }
    let cout = w.cout(orientation);
    let bias = if channels_last { "" } else { arg(op, 2) };
    let mut node = NodeProto {
        name: op.name.clone(),
        op_type: FUSED_OP.into(),
        domain: DOMAIN.into(),
        input: [
            arg(x_q, 0),
            arg(x_q, 1),
            arg(x_q, 2),
            &w.name,
            &w.scale,
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
    if !w.zero_points.is_empty() {
        node.attribute
            .push(ints_attr(WEIGHT_ZERO_ATTR, &w.zero_points));
    }
    let mut remove = vec![];
    let mut y = op.output.first().ok_or("no output")?.clone();
    // A Gemm's bias (a MatMul, then Add before any quantization).
    if let Some((ai, add)) = bias_add(ix, &y, cout).filter(|_| channels_last) {
        node.input[5] = other_input(add, &y).unwrap_or_default().into();
        node.output = add.output.clone();
        y = add.output[0].clone();
        remove.push(ai);
    }
    if let Some((qi, q, dqi, dq)) = output_pair(ix, &y) {
        node.input.extend([arg(q, 1).into(), arg(q, 2).into()]);
        node.output = dq.output.clone();
        remove.extend([qi, dqi]);
        // PyTorch's Linear on a 4-D tensor exports as MatMul then Add(bias): fused as well
        // when the sum has its own pair (the op then quantizes twice, as the graph does).
        let y = dq.output[0].clone();
        let add = bias_add(ix, &y, cout).filter(|_| channels_last && arg(&node, 5).is_empty());
        if let Some((ai, add)) = add {
            if let Some((qi, q, dqi, dq)) = output_pair(ix, &add.output[0]) {
                node.input[5] = other_input(add, &y).unwrap_or_default().into();
                node.input.extend([arg(q, 1).into(), arg(q, 2).into()]);
                node.output = dq.output.clone();
                remove.extend([ai, qi, dqi]);
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
    let mut initializers = fill_defaults(&mut node, cout);
    initializers.extend(w.new);
    Ok(Match {
        conv: node_ix,
        node,
        reads: [x_q_ix, x_dq_ix, w.dq],
        remove,
        initializers,
    })
}

/// The `Add` of a `[cout]` bias that alone reads `y`.
fn bias_add<'g>(ix: &Index<'g>, y: &str, cout: i64) -> Option<(usize, &'g NodeProto)> {
    let (ai, add) = ix.sole_consumer(y, "Add")?;
    is_bias(ix, other_input(add, y)?, cout).then_some((ai, add))
}

/// The input pair `Q → DQ` a product reads (its quantize, the quantize's index, and the
/// dequantize's index): per-tensor, the two with the same parameters.
pub(super) fn input_pair<'g>(
    ix: &Index<'g>,
    op: &NodeProto,
) -> Option<(usize, &'g NodeProto, usize)> {
    let (x_dq_ix, x_dq) = ix.producer(arg(op, 0), "DequantizeLinear")?;
    let (x_q_ix, x_q) = ix.producer(arg(x_dq, 0), "QuantizeLinear")?;
    if !ix.same_params(x_q, x_dq) {
        return None;
    }
    ix.act_quant(x_q)?;
    Some((x_q_ix, x_q, x_dq_ix))
}

/// See [`fuse_depthwise`].
pub(super) fn match_depthwise(
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
    let w = weights(ix, arg(op, 1), Orientation::Conv, &op.name)
        .ok()
        .filter(|w| w.zero_points.is_empty())?;
    let &[c, 1, kh, kw] = &w.dims[..] else {
        return None;
    };
    if int_attr_of(op, "group") != Some(c) || !pays(kh as usize, kw as usize) {
        return None;
    }
    let mut node = NodeProto {
        name: op.name.clone(),
        op_type: FUSED_DEPTHWISE_OP.into(),
        domain: DOMAIN.into(),
        input: [
            arg(x_q, 0),
            arg(x_q, 1),
            arg(x_q, 2),
            &w.name,
            &w.scale,
            arg(op, 2),
        ]
        .map(String::from)
        .to_vec(),
        output: op.output.clone(),
        attribute: vec![ints_attr("pads", &pads)],
        ..Default::default()
    };
    let mut initializers = fill_defaults(&mut node, c);
    initializers.extend(w.new);
    Some(Match {
        conv: node_ix,
        node,
        reads: [x_q_ix, x_dq_ix, w.dq],
        remove: vec![],
        initializers,
    })
}

/// Absent zero points and bias become explicit initializers (zeros), and a dynamic node's
/// unused input scale a 1: tract drops empty inputs, and the parser tells its inputs apart by
/// position. Returns the initializers to add.
pub(super) fn fill_defaults(node: &mut NodeProto, cout: i64) -> Vec<TensorProto> {
    let mut initializers = vec![];
    for (slot, dt) in [
        (1, dt::FLOAT),
        (2, dt::UINT8),
        (5, dt::FLOAT),
        (7, dt::UINT8),
        (9, dt::UINT8),
    ] {
        if node.input.get(slot).is_some_and(|s| s.is_empty()) {
            let name = format!("{}::cxe_default_{slot}", node.name);
            let dims = if slot == 5 { vec![cout] } else { vec![] };
            let len = dims.iter().product::<i64>().max(1) as usize;
            let raw_data = match slot {
                1 => 1f32.to_le_bytes().to_vec(),
                _ if dt == dt::FLOAT => vec![0; len * 4],
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

/// Dynamic quantization's 1x1 and patch products (onnxruntime's `quantize_dynamic`):
///
/// ```text
/// x ─ DynamicQuantizeLinear ─ ConvInteger(1x1, patches) | MatMulInteger(W 8-bit) ─ Cast(float)
///       └─ scale ─ Mul(W scale) ──────────────────────────────────────────┴─ Mul ─ [Add(bias)]
/// ```
///
/// becomes one [`FUSED_OP`] with the attribute [`DYNAMIC_ATTR`]: the input's scale and zero
/// point are computed from each input, as `DynamicQuantizeLinear` does. The weights as in the
/// static pattern (8-bit, their zero points handled by [`int8_copy`]; one scale, or one per
/// output channel channels last).
pub(super) fn match_dynamic(ix: &Index, node_ix: usize, op: &NodeProto) -> Option<Match> {
    let (channels_last, patch) = match op.op_type.as_str() {
        "ConvInteger" if is_pointwise(op) => (false, 1),
        "ConvInteger" => (false, patch_size(op)?),
        "MatMulInteger" => (true, 1),
        _ => return None,
    };
    let (dql_ix, dql) = ix.producer(arg(op, 0), "DynamicQuantizeLinear")?;
    if arg(op, 2) != dql.output.get(2)?.as_str() {
        return None;
    }
    let w = ix.init(arg(op, 1))?;
    let cout = match (channels_last, &w.dims[..]) {
        (false, &[cout, _, kh, kw]) if kh == patch && kw == patch => cout,
        (true, &[_, cout]) => cout,
        _ => return None,
    };
    let orientation = match channels_last {
        true => Orientation::MatMul,
        false => Orientation::Conv,
    };
    let zero_point = match arg(op, 3) {
        "" => None,
        zp => Some(ix.init(zp)?),
    };
    let int8 = int8_copy(w, zero_point, orientation, false, &op.name).ok()?;
    let (cast_ix, cast) = ix.sole_consumer(op.output.first()?, "Cast")?;
    if int_attr_of(cast, "to") != Some(dt::FLOAT as i64) {
        return None;
    }
    let cast_out = cast.output.first()?;
    let (mul_ix, mul) = ix.sole_consumer(cast_out, "Mul")?;
    let mul_out = mul.output.first()?;
    let (scales_ix, scales) = ix.producer(other_input(mul, cast_out)?, "Mul")?;
    let w_scale_name = other_input(scales, dql.output.get(1)?)?;
    let w_scale = ix.init(w_scale_name).filter(|t| t.data_type == dt::FLOAT)?;
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
        input: [
            arg(dql, 0),
            "",
            "",
            int8.copy.as_ref().map_or(arg(op, 1), |t| &t.name),
            w_scale_name,
            "",
        ]
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
    if !int8.zero_points.is_empty() {
        node.attribute
            .push(ints_attr(WEIGHT_ZERO_ATTR, &int8.zero_points));
    }
    if patch > 1 {
        node.attribute.push(int_attr(PATCH_ATTR, patch));
    }
    let mut initializers = fill_defaults(&mut node, cout);
    initializers.extend(int8.copy);
    Some(Match {
        conv: node_ix,
        node,
        reads: [dql_ix, scales_ix, node_ix],
        remove,
        initializers,
    })
}

/// The other operand of a two-input node that reads `name`.
pub(super) fn other_input<'n>(n: &'n NodeProto, name: &str) -> Option<&'n str> {
    match (arg(n, 0), arg(n, 1)) {
        (a, b) if a == name => Some(b),
        (a, b) if b == name => Some(a),
        _ => None,
    }
}

/// The output pair after `name` if there is one: its quantization, the dequantized name and
/// the pair's nodes; else `name` unchanged.
pub(super) fn optional_pair(ix: &Index, name: &str) -> (Option<ActQuant>, String, Vec<usize>) {
    match output_pair(ix, name) {
        Some((qi, q, dqi, dq)) => (ix.act_quant(q), dq.output[0].clone(), vec![qi, dqi]),
        None => (None, name.to_owned(), vec![]),
    }
}

/// The exact GELU as exported (`x · (erf(x / c1) + c2) · c3`, [`QdqGelu`]) reading `y`, with
/// the nodes it spans and its final output.
pub(super) fn match_gelu(ix: &Index, y: &str) -> Option<(QdqGelu, Vec<usize>, String)> {
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
