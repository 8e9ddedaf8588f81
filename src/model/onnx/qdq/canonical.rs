//! Graph shapes that compute the same as the pattern the fusions match, brought to it.

use tract_onnx::pb::GraphProto;

use super::index::Index;
use crate::model::onnx::proto::is_onnx;

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
