//! Rewrites of the ONNX protobuf graph, applied before tract parses it.
//!
//! They keep exporter and quantizer quirks at the edge, in ONNX's own terms, so that tract
//! sees only standard ONNX ops it implements. Each rewrite is exact (it restates the op's
//! definition with standard ops), which is why the results still match onnxruntime:
//!
//! - **com.microsoft quantized ops** that onnxruntime's QOperator quantizer emits (QGemm,
//!   QLinearAdd, QLinearMul, QLinearGlobalAveragePool) become
//!   `DequantizeLinear → float op → QuantizeLinear`, the definition onnxruntime's contrib-op
//!   documentation gives. tract has no parser for them.
//! - **QLinearConv / QLinearMatMul** with constant scales and zero points become
//!   `DequantizeLinear → Conv / MatMul → QuantizeLinear`, their definition in the ONNX operator
//!   documentation: tract's own quantized path runs every
//!   conv through im2col (the 7x7 depthwise one channel at a time) and leaves per-channel
//!   requantization unfused; in QDQ form our fusions and kernels take them over.
//!   A tensor already dequantized the same way (by the graph or an earlier rewrite) is read
//!   from that `DequantizeLinear` rather than dequantized again, so that the graph reads like
//!   its QDQ form and gets the same fusions.
//! - **Gemm on f16 tensors** (onnxconverter-common's f16 models) becomes `MatMul` (+ `Add`):
//!   tract's Gemm builds its alpha/beta constants as f32 and then fails the f16 graph's type
//!   check. Only the plain case (alpha = beta = 1, no transposed A) is rewritten.
//! - **Gemm on quantized weights** (a `DequantizeLinear` output, or a QGemm) becomes
//!   `MatMul(A, [Transpose](B))` (+ `Add(C)`) too: the one form of a quantized product our QDQ
//!   fusion matches. onnxruntime's `quant_pre_process` writes each `MatMul + Add` over a 4-D
//!   tensor as `Reshape → Gemm → Reshape`, and a classifier head is a `Gemm` with `transB`.
//!
//! Relies on nothing inside tract: only on `tract_onnx::pb`, the generated protobuf types.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{self, GraphProto, NodeProto, TensorProto};

use super::proto::{
    dt, float_attr, float_attr_of, floats, input, int_attr, int_attr_of, ints, ints_attr, op,
};
use super::Rewrites;

const MS_DOMAIN: &str = "com.microsoft";

/// Applies every rewrite to the model's main graph. Errors name the node that cannot be
/// expressed (for example a QLinearGlobalAveragePool over channels-last data).
pub fn apply(model: &mut pb::ModelProto) -> Result<Rewrites, String> {
    let mut done = Rewrites::default();
    let Some(graph) = model.graph.as_mut() else {
        return Ok(done);
    };
    let mut ed = Editor::new(graph);
    let nodes = std::mem::take(&mut ed.graph.node);
    let dequantized: HashSet<String> = nodes
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let replaced = match (node.domain.as_str(), node.op_type.as_str()) {
            (MS_DOMAIN, "QGemm") => Some(ed.qgemm(&node)?),
            (MS_DOMAIN, "QLinearAdd") => Some(ed.qlinear_binary(&node, "Add")),
            (MS_DOMAIN, "QLinearMul") => Some(ed.qlinear_binary(&node, "Mul")),
            (MS_DOMAIN, "QLinearGlobalAveragePool") => Some(ed.qlinear_global_avg_pool(&node)?),
            ("" | "ai.onnx", "QLinearConv") if ed.constant_params(&node) => {
                Some(ed.qlinear_conv(&node))
            }
            ("" | "ai.onnx", "QLinearMatMul") if ed.constant_params(&node) => {
                Some(ed.qlinear_matmul(&node))
            }
            ("" | "ai.onnx", "Gemm")
                if ed.is_plain_f16_gemm(&node)
                    || (is_plain_gemm(&node) && dequantized.contains(&input(&node, 1))) =>
            {
                Some(ed.gemm_as_matmul(&node))
            }
            _ => None,
        };
        match replaced {
            Some(new_nodes) => {
                done.add(&node.op_type);
                for mut n in new_nodes {
                    n.name = ed.name(&node.name, &n.op_type);
                    out.push(n);
                }
            }
            None => {
                ed.note_dequantize(&node);
                out.push(node);
            }
        }
    }
    ed.graph.node = out;
    Ok(done)
}

struct Editor<'a> {
    graph: &'a mut GraphProto,
    fresh: usize,
    /// The output of each `DequantizeLinear` emitted so far (the graph's own and ours), by
    /// what it computes ([`Editor::dequantize_key`]).
    dequantized: HashMap<DequantizeKey, String>,
}

/// A dequantization's tensor, scale and zero point, and its axis where the scale has several
/// values (with one, the axis changes nothing: ours carry one, the quantizer's do not).
type DequantizeKey = (String, String, String, Option<i64>);

impl<'a> Editor<'a> {
    fn new(graph: &'a mut GraphProto) -> Self {
        Editor {
            graph,
            fresh: 0,
            dequantized: HashMap::new(),
        }
    }

    fn dequantize_key(&self, inputs: &[String], axis: i64) -> DequantizeKey {
        let arg = |i: usize| inputs.get(i).cloned().unwrap_or_default();
        let per_tensor = self
            .initializer(&arg(1))
            .is_some_and(|t| t.dims.iter().product::<i64>() == 1);
        (arg(0), arg(1), arg(2), (!per_tensor).then_some(axis))
    }

    /// Records a `DequantizeLinear` of the graph's for [`Editor::dequantize`] to reuse.
    fn note_dequantize(&mut self, node: &NodeProto) {
        let onnx = matches!(node.domain.as_str(), "" | "ai.onnx");
        if node.op_type != "DequantizeLinear" || !onnx || node.output.len() != 1 {
            return;
        }
        let axis = int_attr_of(node, "axis").unwrap_or(1);
        let key = self.dequantize_key(&node.input, axis);
        self.dequantized
            .entry(key)
            .or_insert_with(|| node.output[0].clone());
    }

    fn name(&mut self, base: &str, what: &str) -> String {
        self.fresh += 1;
        format!("{base}::cxe_{what}_{}", self.fresh)
    }

    fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph.initializer.iter().find(|t| t.name == name)
    }

    /// `DequantizeLinear(x, scale, zero_point)` with the zero point omitted when absent and a
    /// per-axis scale applied along `axis` — or the output of an earlier, identical one: each
    /// QLinear op dequantizes its inputs, and reading one dequantized tensor twice keeps the
    /// graph in its QDQ form (the exact GELU reads the dequantized `fc1` output twice, which
    /// the QDQ fusion recognises).
    fn dequantize(
        &mut self,
        nodes: &mut Vec<NodeProto>,
        node: &NodeProto,
        x: usize,
        axis: i64,
    ) -> String {
        let mut inputs = vec![input(node, x), input(node, x + 1)];
        if !input(node, x + 2).is_empty() {
            inputs.push(input(node, x + 2));
        }
        let key = self.dequantize_key(&inputs, axis);
        if let Some(earlier) = self.dequantized.get(&key) {
            return earlier.clone();
        }
        let out = self.name(&node.name, "dq");
        self.dequantized.insert(key, out.clone());
        nodes.push(op(
            "DequantizeLinear",
            inputs,
            vec![out.clone()],
            vec![int_attr("axis", axis)],
        ));
        out
    }

    /// `QuantizeLinear(x, scale, zero_point)` into the node's original output name.
    fn quantize(&mut self, nodes: &mut Vec<NodeProto>, node: &NodeProto, x: String, scale: usize) {
        let mut inputs = vec![x, input(node, scale)];
        if !input(node, scale + 1).is_empty() {
            inputs.push(input(node, scale + 1));
        }
        nodes.push(op("QuantizeLinear", inputs, node.output.clone(), vec![]));
    }

    /// Whether a QLinearConv / QLinearMatMul's scales and zero points (inputs 1, 2, 4, 5, 6, 7)
    /// are initializers or absent: DequantizeLinear in tract needs them constant, while tract's
    /// own QLinear ops also take them as graph inputs, so such nodes are left to tract.
    fn constant_params(&self, node: &NodeProto) -> bool {
        [1, 2, 4, 5, 6, 7].iter().all(|&i| {
            let name = input(node, i);
            name.is_empty() || self.initializer(&name).is_some()
        })
    }

    /// `Cast(bias int32 → f32) · (x_scale · w_scale)`: a quantized op's bias in float, from the
    /// inputs at `bias`, `x_scale` and `w_scale`.
    fn float_bias(
        &mut self,
        nodes: &mut Vec<NodeProto>,
        node: &NodeProto,
        [bias, x_scale, w_scale]: [usize; 3],
    ) -> String {
        if let Some(values) = self.constant_bias(node, [bias, x_scale, w_scale]) {
            let name = self.name(&node.name, "bias");
            self.graph.initializer.push(TensorProto {
                name: name.clone(),
                data_type: dt::FLOAT,
                dims: vec![values.len() as i64],
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            });
            return name;
        }
        let bias_scale = self.name(&node.name, "bias_scale");
        nodes.push(op(
            "Mul",
            vec![input(node, x_scale), input(node, w_scale)],
            vec![bias_scale.clone()],
            vec![],
        ));
        let bias_f = self.name(&node.name, "bias_f32");
        nodes.push(op(
            "Cast",
            vec![input(node, bias)],
            vec![bias_f.clone()],
            vec![int_attr("to", 1)],
        ));
        let out = self.name(&node.name, "bias");
        nodes.push(op(
            "Mul",
            vec![bias_f, bias_scale],
            vec![out.clone()],
            vec![],
        ));
        out
    }

    /// [`Editor::float_bias`] computed here when its inputs are initializers, with the same
    /// f32 operations in the same order: a constant bias is what the QDQ fusion takes over.
    fn constant_bias(
        &self,
        node: &NodeProto,
        [bias, x_scale, w_scale]: [usize; 3],
    ) -> Option<Vec<f32>> {
        let bias = ints(self.initializer(&input(node, bias))?)?;
        let x_scale = floats(self.initializer(&input(node, x_scale))?)?;
        let w_scale = floats(self.initializer(&input(node, w_scale))?)?;
        let [x_scale] = x_scale[..] else { return None };
        if w_scale.len() != 1 && w_scale.len() != bias.len() {
            return None;
        }
        let scale = |i: usize| x_scale * w_scale[if w_scale.len() == 1 { 0 } else { i }];
        Some(
            bias.iter()
                .enumerate()
                .map(|(i, &b)| b as i32 as f32 * scale(i))
                .collect(),
        )
    }

    /// QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, [B]) as
    /// `DQ(x) → Conv(DQ(w) per output channel, B in float) → Q`, the op's definition. Our QDQ
    /// fusion (`qdq.rs`) then runs 1x1 ones on integer kernels, and the depthwise ones run on
    /// our float depthwise op instead of tract's per-channel im2col.
    fn qlinear_conv(&mut self, node: &NodeProto) -> Vec<NodeProto> {
        let mut nodes = vec![];
        let x = self.dequantize(&mut nodes, node, 0, 1);
        let w = self.dequantize(&mut nodes, node, 3, 0);
        let mut conv_inputs = vec![x, w];
        if !input(node, 8).is_empty() {
            conv_inputs.push(self.float_bias(&mut nodes, node, [8, 1, 4]));
        }
        let y = self.name(&node.name, "conv");
        nodes.push(op(
            "Conv",
            conv_inputs,
            vec![y.clone()],
            node.attribute.clone(),
        ));
        self.quantize(&mut nodes, node, y, 6);
        nodes
    }

    /// QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) as
    /// `DQ(a) → MatMul(DQ(b) per column) → Q`, the op's definition.
    fn qlinear_matmul(&mut self, node: &NodeProto) -> Vec<NodeProto> {
        let mut nodes = vec![];
        let a = self.dequantize(&mut nodes, node, 0, 1);
        let b = self.dequantize(&mut nodes, node, 3, 1);
        let y = self.name(&node.name, "matmul");
        nodes.push(op("MatMul", vec![a, b], vec![y.clone()], vec![]));
        self.quantize(&mut nodes, node, y, 6);
        nodes
    }

    /// QGemm(A, a_scale, a_zp, B, b_scale, b_zp, [C], [y_scale], [y_zp]):
    /// Y = alpha · A'B' + C, where C is int32 at scale a_scale · b_scale; quantized output
    /// when y_scale is given, float otherwise.
    fn qgemm(&mut self, node: &NodeProto) -> Result<Vec<NodeProto>, String> {
        let trans_a = int_attr_of(node, "transA").unwrap_or(0);
        let trans_b = int_attr_of(node, "transB").unwrap_or(0);
        let alpha = float_attr_of(node, "alpha").unwrap_or(1.0);
        let mut nodes = vec![];
        let a = self.dequantize(&mut nodes, node, 0, 1);
        let b = self.dequantize(&mut nodes, node, 3, if trans_b != 0 { 0 } else { 1 });
        let mut gemm_inputs = vec![a, b];
        if !input(node, 6).is_empty() {
            gemm_inputs.push(self.float_bias(&mut nodes, node, [6, 1, 4]));
        }
        let mut gemm = op(
            "Gemm",
            gemm_inputs,
            node.output.clone(),
            vec![
                int_attr("transA", trans_a),
                int_attr("transB", trans_b),
                float_attr("alpha", alpha),
                float_attr("beta", 1.0),
            ],
        );
        gemm.name = node.name.clone();
        let mut quantize = vec![];
        if !input(node, 7).is_empty() {
            let y = self.name(&node.name, "gemm");
            gemm.output = vec![y.clone()];
            self.quantize(&mut quantize, node, y, 7);
        }
        match is_plain_gemm(&gemm) {
            true => nodes.extend(self.gemm_as_matmul(&gemm)),
            false => nodes.push(gemm),
        }
        nodes.extend(quantize);
        Ok(nodes)
    }

    /// QLinearAdd / QLinearMul(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp).
    fn qlinear_binary(&mut self, node: &NodeProto, float_op: &str) -> Vec<NodeProto> {
        let mut nodes = vec![];
        let a = self.dequantize(&mut nodes, node, 0, 1);
        let b = self.dequantize(&mut nodes, node, 3, 1);
        let y = self.name(&node.name, float_op);
        nodes.push(op(float_op, vec![a, b], vec![y.clone()], vec![]));
        self.quantize(&mut nodes, node, y, 6);
        nodes
    }

    /// QLinearGlobalAveragePool(X, x_scale, x_zp, y_scale, y_zp), channels-first only.
    fn qlinear_global_avg_pool(&mut self, node: &NodeProto) -> Result<Vec<NodeProto>, String> {
        if int_attr_of(node, "channels_last").unwrap_or(0) != 0 {
            return Err(format!(
                "node {:?}: channels_last QLinearGlobalAveragePool is not supported",
                node.name
            ));
        }
        let mut nodes = vec![];
        let x = self.dequantize(&mut nodes, node, 0, 1);
        let y = self.name(&node.name, "gap");
        nodes.push(op("GlobalAveragePool", vec![x], vec![y.clone()], vec![]));
        self.quantize(&mut nodes, node, y, 3);
        Ok(nodes)
    }

    fn is_plain_f16_gemm(&self, node: &NodeProto) -> bool {
        is_plain_gemm(node)
            && node
                .input
                .iter()
                .filter_map(|i| self.initializer(i))
                .any(|t| t.data_type == dt::FLOAT16)
    }

    /// Gemm(A, B, [C]) with alpha = beta = 1 and A not transposed: MatMul(A, B or Bᵀ) + C.
    fn gemm_as_matmul(&mut self, node: &NodeProto) -> Vec<NodeProto> {
        let mut nodes = vec![];
        let mut b = input(node, 1);
        if int_attr_of(node, "transB").unwrap_or(0) != 0 {
            let bt = self.name(&node.name, "bt");
            nodes.push(op(
                "Transpose",
                vec![b],
                vec![bt.clone()],
                vec![ints_attr("perm", &[1, 0])],
            ));
            b = bt;
        }
        let c = input(node, 2);
        if c.is_empty() {
            nodes.push(op(
                "MatMul",
                vec![input(node, 0), b],
                node.output.clone(),
                vec![],
            ));
        } else {
            let ab = self.name(&node.name, "matmul");
            nodes.push(op(
                "MatMul",
                vec![input(node, 0), b],
                vec![ab.clone()],
                vec![],
            ));
            nodes.push(op("Add", vec![ab, c], node.output.clone(), vec![]));
        }
        nodes
    }
}

/// Gemm with alpha = beta = 1 and A not transposed: a MatMul (+ Add).
fn is_plain_gemm(node: &NodeProto) -> bool {
    int_attr_of(node, "transA").unwrap_or(0) == 0
        && float_attr_of(node, "alpha").unwrap_or(1.0) == 1.0
        && float_attr_of(node, "beta").unwrap_or(1.0) == 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(name: &str, data_type: i32) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type,
            raw_data: vec![1, 0, 0, 0],
            ..Default::default()
        }
    }

    fn dq(name: &str, inputs: [&str; 3], output: &str, axis: Option<i64>) -> NodeProto {
        let attributes = axis.map(|a| int_attr("axis", a)).into_iter().collect();
        let mut n = op(
            "DequantizeLinear",
            inputs.map(String::from).to_vec(),
            vec![output.into()],
            attributes,
        );
        n.name = name.into();
        n
    }

    fn qlinear_mul(name: &str, a: [&str; 3], b: [&str; 3], y: &str) -> NodeProto {
        let inputs = a
            .iter()
            .chain(&b)
            .chain(&["ys", "zp"])
            .map(|s| s.to_string());
        let mut n = op("QLinearMul", inputs.collect(), vec![y.into()], vec![]);
        n.domain = MS_DOMAIN.into();
        n.name = name.into();
        n
    }

    /// A QLinear input the graph (or an earlier rewrite) already dequantized the same way reads
    /// that dequantization (its `axis` aside, with one scale); one with another scale gets its
    /// own, and the graph's own nodes are left as they are.
    #[test]
    fn reuses_an_identical_dequantization() {
        let mut model = pb::ModelProto {
            graph: Some(GraphProto {
                initializer: ["s", "s2", "ys"]
                    .map(|n| scalar(n, 1))
                    .into_iter()
                    .chain([scalar("zp", 2)])
                    .collect(),
                node: vec![
                    dq("orig", ["q", "s", "zp"], "y", None),
                    dq("theirs", ["q", "s", "zp"], "y3", None),
                    qlinear_mul("m1", ["q", "s", "zp"], ["q", "s2", "zp"], "m"),
                    qlinear_mul("m2", ["q", "s2", "zp"], ["q", "s", "zp"], "m3"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut model).unwrap();
        let graph = model.graph.unwrap();
        let dqs: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear")
            .collect();
        // The graph's two, and one for the other scale, shared by both products.
        assert_eq!(dqs.len(), 3);
        assert_eq!(dqs[0].name, "orig");
        assert_eq!(dqs[1].name, "theirs");
        assert_eq!(dqs[2].input, ["q", "s2", "zp"]);
        let other = &dqs[2].output[0];
        let products: Vec<&NodeProto> = graph.node.iter().filter(|n| n.op_type == "Mul").collect();
        assert_eq!(products[0].input, ["y".to_string(), other.clone()]);
        assert_eq!(products[1].input, [other.clone(), "y".to_string()]);
    }
}
