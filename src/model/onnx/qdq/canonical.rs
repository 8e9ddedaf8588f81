//! Graph shapes that compute the same as the pattern the fusions match, brought to it.

use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::{type_proto, GraphProto, NodeProto};

use super::index::Index;
use super::weights::dequantized_constant;
use crate::model::onnx::proto::{arg, ints, is_onnx};

/// Moves each `Reshape` or `Flatten` that alone reads a `QuantizeLinear`'s output before that
/// quantize: `Q(x) → Reshape → DQ` becomes `Reshape(x) → Q → DQ`, the same values since a
/// per-tensor or per-axis-kept quantization is element-wise and a reshape only renames
/// positions. onnxruntime's QOperator files reshape quantized tensors this way before each
/// `QGemm` that `quant_pre_process` made of a `MatMul + Add`; in QDQ form the product's input
/// pair is then whole. Returns how many.
pub fn reshapes_before_quantize(graph: &mut GraphProto) -> usize {
    let mut moved = 0;
    while let Some((qi, ri)) = next_move(graph) {
        let quantized = graph.node[ri].output[0].clone();
        let reshaped = format!("{quantized}::cxe_float");
        let x = graph.node[qi].input[0].clone();
        let r = &mut graph.node[ri];
        r.input[0] = x;
        r.output[0] = reshaped.clone();
        let q = &mut graph.node[qi];
        q.input[0] = reshaped;
        q.output[0] = quantized;
        // Keep the order topological: the quantize now follows its reshape.
        let q = graph.node.remove(qi);
        graph.node.insert(ri, q);
        moved += 1;
    }
    moved
}

/// The first quantize and reshape (their indices) [`reshapes_before_quantize`] swaps.
fn next_move(graph: &GraphProto) -> Option<(usize, usize)> {
    let ix = Index::new(graph);
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_onnx(n) && matches!(n.op_type.as_str(), "Reshape" | "Flatten"))
        .find_map(|(ri, r)| {
            let (qi, q) = ix.producer(r.input.first()?, "QuantizeLinear")?;
            // Per-tensor only: a per-axis scale would follow its axis through the reshape.
            let scale = q.input.get(1).and_then(|s| ix.init(s));
            let per_tensor = scale.is_some_and(|t| t.dims.iter().product::<i64>() == 1);
            ix.sole_consumer(&q.output[0], &r.op_type)
                .filter(|_| per_tensor && r.output.len() == 1 && qi < ri)
                .map(|_| (qi, ri))
        })
}

/// Takes out the `Reshape`s that `quant_pre_process` puts around each product over the
/// channels of an N-D tensor (`Reshape([-1, K]) → Q → DQ → Gemm → Q → DQ → Reshape(S')`),
/// where the file's shape information says the input is `[…, K]` and the second reshape only
/// restores its leading axes: the product then reads the N-D tensor, as the export wrote it,
/// and what follows it (ConvNeXt's GELU, the next product) reads the product's output
/// directly, which the fusions need. The chain between must be the only reader of each of its
/// tensors, quantized per tensor. Returns how many pairs.
pub fn reshapes_around_products(graph: &mut GraphProto) -> usize {
    let mut removed = 0;
    while let Some(pair) = next_pair(graph) {
        let Pair {
            reshape_in,
            reshape_out,
            chain,
        } = pair;
        let x = graph.node[reshape_in].input[0].clone();
        let flat = graph.node[reshape_in].output[0].clone();
        let first = chain[0];
        for i in graph.node[first].input.iter_mut().filter(|i| **i == flat) {
            *i = x.clone();
        }
        let y = graph.node[reshape_out].output[0].clone();
        let last = *chain.last().expect("a chain holds the product");
        let stale: Vec<String> = chain
            .iter()
            .flat_map(|&i| graph.node[i].output.clone())
            .collect();
        graph.node[last].output[0] = y;
        graph.value_info.retain(|v| !stale.contains(&v.name));
        let mut gone = [reshape_in, reshape_out];
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            graph.node.remove(i);
        }
        removed += 1;
    }
    removed
}

/// A reshape pair [`reshapes_around_products`] takes out, and the nodes between them in order.
struct Pair {
    reshape_in: usize,
    reshape_out: usize,
    chain: Vec<usize>,
}

fn next_pair(graph: &GraphProto) -> Option<Pair> {
    let ix = Index::new(graph);
    // The file's static shape of `name`, or of the tensor it quantizes or dequantizes (the
    // quantizer's new tensors have no shape information; the ones they copy do).
    let known_shape = |name: &str| -> Option<Vec<i64>> {
        let mut name = name.to_owned();
        loop {
            let info = graph.value_info.iter().chain(&graph.input);
            let t = info
                .filter(|v| v.name == name.as_str())
                .find_map(|v| v.r#type.as_ref()?.value.as_ref());
            if let Some(type_proto::Value::TensorType(t)) = t {
                let dims = t.shape.as_ref()?.dim.iter().map(|d| match d.value {
                    Some(Dim::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                });
                return dims.collect();
            }
            let (_, n) = ix
                .producer(&name, "DequantizeLinear")
                .or_else(|| ix.producer(&name, "QuantizeLinear"))?;
            name = arg(n, 0).to_owned();
        }
    };
    let shape_of = |n: &NodeProto| ix.init(arg(n, 1)).and_then(ints);
    graph.node.iter().enumerate().find_map(|(ri, r)| {
        if !is_onnx(r) || r.op_type != "Reshape" {
            return None;
        }
        let [_, k] = shape_of(r)?[..] else {
            return None;
        };
        let x_shape = known_shape(arg(r, 0))?;
        if x_shape.len() < 3 || x_shape.last() != Some(&k) {
            return None;
        }
        let mut chain = vec![];
        let mut at = r.output.first()?.as_str();
        let mut outputs = None;
        loop {
            let (i, n) = only_reader(&ix, at)?;
            match n.op_type.as_str() {
                "QuantizeLinear" | "DequantizeLinear" => {
                    ix.init(arg(n, 1))
                        .filter(|s| s.dims.iter().product::<i64>() == 1)?;
                }
                "MatMul" if outputs.is_none() && arg(n, 0) == at => {
                    outputs = Some(product_width(&ix, arg(n, 1), k)?);
                }
                // A bias only: a constant of at most one axis broadcasts the same either way.
                "Add" if outputs.is_some() => {
                    let other = if arg(n, 0) == at {
                        arg(n, 1)
                    } else {
                        arg(n, 0)
                    };
                    let constant = ix.init(other).or_else(|| {
                        let (_, dq) = ix.producer(other, "DequantizeLinear")?;
                        ix.init(arg(dq, 0))
                    });
                    constant.filter(|t| t.dims.len() <= 1)?;
                }
                "Reshape" if outputs.is_some() => {
                    let mut restored = x_shape.clone();
                    *restored.last_mut()? = outputs?;
                    return (shape_of(n)? == restored).then_some(Pair {
                        reshape_in: ri,
                        reshape_out: i,
                        chain,
                    });
                }
                _ => return None,
            }
            chain.push(i);
            at = n.output.first()?.as_str();
        }
    })
}

/// The one ONNX node reading `name`.
fn only_reader<'g>(ix: &Index<'g>, name: &str) -> Option<(usize, &'g NodeProto)> {
    if ix.graph.output.iter().any(|o| o.name == name) {
        return None;
    }
    let [i] = ix.consumers.get(name)?[..] else {
        return None;
    };
    let n = &ix.graph.node[i];
    is_onnx(n).then_some((i, n))
}

/// The output width of a MatMul by quantized `[k, N]` weights (or `[N, k]` transposed).
fn product_width(ix: &Index, weights: &str, k: i64) -> Option<i64> {
    let w = dequantized_constant(ix, weights)?;
    match (&w.w.dims[..], w.transposed) {
        (&[rows, n], false) if rows == k => Some(n),
        (&[n, cols], true) if cols == k => Some(n),
        _ => None,
    }
}

/// Turns `Constant` nodes holding a tensor (`value`) into initializers: the legacy exporter
/// writes the GELU's constants as nodes, which the matchers read as initializers (onnxruntime's
/// `quant_pre_process` folds them the same way). Returns how many.
pub fn constants_to_initializers(graph: &mut GraphProto) -> usize {
    let mut moved = 0;
    let mut i = 0;
    while i < graph.node.len() {
        let n = &graph.node[i];
        let output = graph
            .output
            .iter()
            .any(|o| Some(&o.name) == n.output.first());
        let value = (is_onnx(n) && n.op_type == "Constant" && n.output.len() == 1 && !output)
            .then(|| n.attribute.iter().find(|a| a.name == "value")?.t.clone())
            .flatten();
        match value {
            Some(mut t) => {
                t.name = n.output[0].clone();
                graph.initializer.push(t);
                graph.node.remove(i);
                moved += 1;
            }
            None => i += 1,
        }
    }
    moved
}

/// Drops the second of two identical quantize–dequantize pairs in a row
/// (`Q → DQ → Q → DQ` with the same scale and zero point), which compute the same values as
/// one: `quant_pre_process`'s reshapes left one pair on each side, and once they are gone the
/// product's output pair must be the one its GELU reads. Returns how many.
pub fn repeated_pairs(graph: &mut GraphProto) -> usize {
    let mut dropped = 0;
    while let Some((first_dq, second_dq, remove)) = next_repeat(graph) {
        let kept = graph.node[first_dq].output[0].clone();
        let gone = graph.node[second_dq].output[0].clone();
        for n in graph.node.iter_mut() {
            for input in n.input.iter_mut().filter(|i| **i == gone) {
                *input = kept.clone();
            }
        }
        for i in remove.into_iter().rev() {
            graph.node.remove(i);
        }
        dropped += 1;
    }
    dropped
}

/// A first pair's dequantize, the second pair's dequantize, and the second pair's nodes.
fn next_repeat(graph: &GraphProto) -> Option<(usize, usize, [usize; 2])> {
    let ix = Index::new(graph);
    graph.node.iter().enumerate().find_map(|(i, dq1)| {
        if !is_onnx(dq1) || dq1.op_type != "DequantizeLinear" {
            return None;
        }
        let (_, q1) = ix.producer(arg(dq1, 0), "QuantizeLinear")?;
        let (qi, q2) = ix.sole_consumer(dq1.output.first()?, "QuantizeLinear")?;
        let (dqi, dq2) = ix.sole_consumer(q2.output.first()?, "DequantizeLinear")?;
        // The graph's output keeps its name.
        if ix
            .graph
            .output
            .iter()
            .any(|o| Some(&o.name) == dq2.output.first())
        {
            return None;
        }
        let same = ix.same_params(q1, dq1) && ix.same_params(q2, dq1) && ix.same_params(q2, dq2);
        let mut remove = [qi, dqi];
        remove.sort_unstable();
        same.then_some((i, dqi, remove))
    })
}
