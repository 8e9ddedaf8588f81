//! Products by long constant weights split along their depth, on the ONNX graph.
//!
//! `MatMul(x, W)` with a constant `W` of shape `[K, N]` and `K` above [`LONG_K`] becomes
//! `MatMul(x[…, 0..K₁], W[0..K₁]) + MatMul(x[…, K₁..K₂], W[K₁..K₂]) + …`, parts of at most
//! [`PART_K`]. tract 0.23.9 blocks its products over rows and columns but runs each output
//! tile over the whole depth: with ConvNeXt-T's last-stage `fc2` (K = 3072, 49 positions) one
//! tile's two packed panels (16 + 6 rows of 3072 f32) are 270 KB, so on a 512 KB L2 its cache
//! blocking has no tile to reuse and each product runs at about half the speed of the others.
//! Split, each part runs at full speed, and tract fuses the sum of the parts into the second
//! product's epilogue, with the bias and layer scale that follow. With 2 threads tract's
//! per-thread chunks already fit and the split changes nothing.
//!
//! Applied only where tract runs these products: on x86 with AVX-512 they go to our
//! `LinearF32` (`model/passes/linear.rs`), which reads each weight panel slice by slice anyway.
//!
//! Exact in real arithmetic; in f32 the sum is associated differently (two partial sums added
//! instead of one running sum), a rounding-level difference like a change of kernel. The
//! weight halves are new initializers (a `Slice` of a 4.5 MB constant would not be folded by
//! tract and would run at every inference); the activation's slices are small copies.
//!
//! Relies on nothing inside tract: only on `tract_onnx::pb`.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::proto::{dt, input, op};

/// Depths above this are split (ConvNeXt-T/S/B's last-stage `fc2`: 3072, 4096).
pub const LONG_K: usize = 2048;
/// The deepest part: panels of one tile stay under a third of a 512 KB L2.
pub const PART_K: usize = 1536;

/// Splits every such product in `graph`; returns how many.
pub fn split(graph: &mut GraphProto) -> usize {
    let nodes = std::mem::take(&mut graph.node);
    let mut out = Vec::with_capacity(nodes.len());
    let mut done = 0;
    for node in nodes {
        match split_node(graph, &node) {
            Some(parts) => {
                out.extend(parts);
                done += 1;
            }
            None => out.push(node),
        }
    }
    graph.node = out;
    done
}

/// The nodes replacing `node` (adding their initializers to `graph`), or `None` to keep it.
fn split_node(graph: &mut GraphProto, node: &NodeProto) -> Option<Vec<NodeProto>> {
    if !matches!(node.domain.as_str(), "" | "ai.onnx") || node.op_type != "MatMul" {
        return None;
    }
    let w = graph
        .initializer
        .iter()
        .find(|t| t.name == input(node, 1))?;
    let [k, n] = <[i64; 2]>::try_from(w.dims.as_slice()).ok()?;
    let (k, n) = (usize::try_from(k).ok()?, usize::try_from(n).ok()?);
    if k <= LONG_K || n == 0 {
        return None;
    }
    let parts = k.div_ceil(PART_K);
    let part = k.div_ceil(parts);
    let bounds: Vec<(usize, usize)> = (0..k)
        .step_by(part)
        .map(|k0| (k0, (k0 + part).min(k)))
        .collect();
    let weights = bounds
        .iter()
        .map(|&(k0, k1)| rows(w, n, k0, k1))
        .collect::<Option<Vec<_>>>()?;
    let base = if node.name.is_empty() {
        node.output[0].clone()
    } else {
        node.name.clone()
    };
    let name = |what: &str, i: usize| format!("{base}::cxe_k{i}_{what}");
    let mut nodes = vec![];
    let mut sum: Option<String> = None;
    let axes = name("axes", 0);
    graph.initializer.push(int64s(&axes, &[-1]));
    for (i, ((k0, k1), w_part)) in bounds.into_iter().zip(weights).enumerate() {
        let (starts, ends) = (name("start", i), name("end", i));
        graph.initializer.push(int64s(&starts, &[k0 as i64]));
        graph.initializer.push(int64s(&ends, &[k1 as i64]));
        let (x, w, y) = (name("x", i), name("w", i), name("y", i));
        graph.initializer.push(TensorProto {
            name: w.clone(),
            ..w_part
        });
        let slice_inputs = vec![input(node, 0), starts, ends, axes.clone()];
        nodes.push(op("Slice", slice_inputs, vec![x.clone()], vec![]));
        nodes.push(op("MatMul", vec![x, w], vec![y.clone()], vec![]));
        sum = Some(match sum {
            None => y,
            Some(prev) => {
                let s = name("sum", i);
                nodes.push(op("Add", vec![prev, y], vec![s.clone()], vec![]));
                s
            }
        });
    }
    // The last sum takes the product's output name.
    nodes.last_mut()?.output = node.output.clone();
    Some(nodes)
}

/// Rows `k0..k1` of the `[K, n]` initializer `w`, stored as `w` stores its values; `None` for
/// external data or a storage this does not read.
fn rows(w: &TensorProto, n: usize, k0: usize, k1: usize) -> Option<TensorProto> {
    let k = usize::try_from(w.dims[0]).ok()?;
    let mut part = TensorProto {
        dims: vec![(k1 - k0) as i64, n as i64],
        data_type: w.data_type,
        ..Default::default()
    };
    if w.data_location == Some(1) {
        return None;
    }
    if !w.raw_data.is_empty() {
        let row = w.raw_data.len() / k;
        (row * k == w.raw_data.len()).then_some(())?;
        part.raw_data = w.raw_data[k0 * row..k1 * row].to_vec();
    } else if !w.float_data.is_empty() {
        part.float_data = w.float_data.get(k0 * n..k1 * n)?.to_vec();
    } else if !w.int32_data.is_empty() {
        part.int32_data = w.int32_data.get(k0 * n..k1 * n)?.to_vec();
    } else {
        return None;
    }
    Some(part)
}

fn int64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: vec![v.len() as i64],
        data_type: dt::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::type_proto::{Tensor as TensorType, Value};
    use tract_onnx::pb::{TypeProto, ValueInfoProto};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// `x [2, 3, k] → MatMul(W [k, n])`, W stored raw or as float_data.
    fn graph(k: usize, n: usize, raw: bool) -> GraphProto {
        let w = values(k * n, 2);
        let mut init = TensorProto {
            name: "w".into(),
            dims: vec![k as i64, n as i64],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        if raw {
            init.raw_data = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        } else {
            init.float_data = w;
        }
        let io = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(Value::TensorType(TensorType {
                    elem_type: dt::FLOAT,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        GraphProto {
            node: vec![op(
                "MatMul",
                vec!["x".into(), "w".into()],
                vec!["y".into()],
                vec![],
            )],
            initializer: vec![init],
            input: vec![io("x")],
            output: vec![io("y")],
            ..Default::default()
        }
    }

    fn run(graph: GraphProto, k: usize) -> Vec<f32> {
        crate::model::onnx::run_graph(graph, &[2, 3, k], &values(6 * k, 1))
    }

    /// Two and three parts (uneven depth), both storages: the products of the unsplit graph,
    /// up to f32 rounding of the re-associated sum.
    #[test]
    fn split_products_match_the_whole() {
        for (k, n, raw, parts) in [(3072, 5, true, 2), (4099, 3, false, 3)] {
            let mut g = graph(k, n, raw);
            assert_eq!(split(&mut g), 1);
            let matmuls = g.node.iter().filter(|n| n.op_type == "MatMul").count();
            assert_eq!(matmuls, parts);
            assert_eq!(g.node.last().unwrap().output, ["y"]);
            let (whole, split) = (run(graph(k, n, raw), k), run(g, k));
            assert_eq!(whole.len(), 6 * n);
            for (a, b) in whole.iter().zip(&split) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn short_or_non_constant_products_are_kept() {
        let mut g = graph(LONG_K, 4, true);
        assert_eq!(split(&mut g), 0);
        let mut g = graph(3000, 4, true);
        g.initializer.clear();
        assert_eq!(split(&mut g), 0);
        assert_eq!(g.node.len(), 1);
    }
}
