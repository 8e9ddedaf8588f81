//! The whole protobuf pipeline on graph shapes other tools write for the same network.

use tract_onnx::pb::{self, GraphProto, NodeProto, TensorProto, ValueInfoProto};

use super::proto::{dt, int_attr, op};
use super::qdq::FUSED_OP;
use super::{rewrite, run_graph};
use crate::IntegerPath;

fn node(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    let inputs = inputs.iter().map(|s| s.to_string()).collect();
    op(op_type, inputs, vec![output.into()], vec![])
}

fn tensor(name: &str, data_type: i32, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type,
        dims: dims.to_vec(),
        raw_data,
        ..Default::default()
    }
}

fn f32s(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    tensor(
        name,
        dt::FLOAT,
        dims,
        v.iter().flat_map(|f| f.to_le_bytes()).collect(),
    )
}

fn i64s(name: &str, v: &[i64]) -> TensorProto {
    let raw = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    tensor(name, dt::INT64, &[v.len() as i64], raw)
}

/// A graph input or output: f32, shape left to the run.
fn value(name: &str) -> ValueInfoProto {
    shaped(name, None)
}

/// An f32 graph input or output, with its shape if given.
fn shaped(name: &str, dims: Option<&[i64]>) -> ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use pb::type_proto::{Tensor, Value};
    let shape = dims.map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(Dim::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(Value::TensorType(Tensor {
                elem_type: dt::FLOAT,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pair(x: &str, out: &str, scale: &str) -> [NodeProto; 2] {
    let q = format!("{out}_q");
    [
        node("QuantizeLinear", &[x, scale, "z"], &q),
        node("DequantizeLinear", &[&q, scale, "z"], out),
    ]
}

/// What onnxruntime's `quant_pre_process` then `quantize_static` make of a `Linear` over the
/// channels of a `[1, 3, 4]` tensor: `Reshape → Gemm(transB) → Reshape`, the weights `[N, K]`
/// u8 with per-channel zero points (`weights`), the bias int32 behind its own dequantize.
fn gemm_graph(weights: Vec<u8>, zero_points: Vec<u8>) -> GraphProto {
    let w_scales = [0.02f32, 0.03];
    let mut nodes = vec![];
    nodes.extend(pair("x", "xd", "s"));
    nodes.push(node("Reshape", &["xd", "to_rows"], "r"));
    nodes.extend(pair("r", "rd", "s"));
    for (dq, inputs) in [("wd", ["w", "ws", "wz"]), ("bd", ["b", "bs", "bz"])] {
        let mut n = node("DequantizeLinear", &inputs, dq);
        n.attribute.push(int_attr("axis", 0));
        nodes.push(n);
    }
    let mut gemm = node("Gemm", &["rd", "wd", "bd"], "g");
    gemm.attribute.push(int_attr("transB", 1));
    nodes.push(gemm);
    nodes.extend(pair("g", "gd", "s2"));
    nodes.push(node("Reshape", &["gd", "back"], "y"));
    let bias: Vec<u8> = [700i32, -300]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    GraphProto {
        node: nodes,
        initializer: vec![
            f32s("s", &[], &[0.05]),
            f32s("s2", &[], &[0.04]),
            tensor("z", dt::UINT8, &[], vec![128]),
            i64s("to_rows", &[-1, 4]),
            i64s("back", &[1, 3, 2]),
            tensor("w", dt::UINT8, &[2, 4], weights),
            f32s("ws", &[2], &w_scales),
            tensor("wz", dt::UINT8, &[2], zero_points),
            tensor("b", dt::INT32, &[2], bias),
            f32s("bs", &[2], &w_scales.map(|s| s * 0.05)),
            tensor("bz", dt::INT32, &[2], vec![0; 8]),
        ],
        input: vec![value("x")],
        output: vec![value("y")],
        ..Default::default()
    }
}

fn model(graph: GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        graph: Some(graph),
        ..Default::default()
    }
}

const X: [f32; 12] = [
    0.3, -1.2, 2.1, 0.05, -0.7, 1.4, -2.3, 0.9, 1.1, -0.2, 0.6, -1.8,
];

/// 7-bit weights (`reduce_range`) with zero points, centred, fit in int8; full-range ones keep
/// their zero points, which the op applies. Both run fused and compute what the graph does.
#[test]
fn a_pre_processed_gemm_runs_fused_and_computes_the_same() {
    for (weights, zero_points) in [
        (vec![3, 90, 127, 0, 64, 10, 33, 120], vec![60, 70]),
        (vec![0, 255, 128, 7, 200, 1, 90, 250], vec![3, 250]),
    ] {
        let graph = gemm_graph(weights, zero_points);
        let expected = run_graph(graph.clone(), &[1, 3, 4], &X);
        let mut m = model(graph);
        let (_, coverage) = rewrite(&mut m, IntegerPath::Always).unwrap();
        assert_eq!(coverage.count(false), (1, 1), "{coverage}");
        let graph = m.graph.unwrap();
        assert!(graph.node.iter().any(|n| n.op_type == FUSED_OP));
        let got = run_graph(graph, &[1, 3, 4], &X);
        // The output is quantized with step 0.04: equal, or one step apart where the float
        // graph's rounding of the sum lands the other side of a tie.
        assert_eq!(got.len(), expected.len());
        assert!(expected.iter().any(|&v| v != 0.0));
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 0.0401, "{got:?} vs {expected:?}");
        }
    }
}

#[test]
fn the_float_path_reports_every_product_with_its_reason() {
    let graph = gemm_graph(vec![0; 8], vec![0; 2]);
    let (_, coverage) = rewrite(&mut model(graph), IntegerPath::Never).unwrap();
    assert_eq!(coverage.count(false), (0, 1));
    assert!(coverage.warning().unwrap().contains("--float-only"));
}

/// With the input's shape in the file (as `quant_pre_process` writes it), the reshapes around
/// the product go, and the pair the first one left after the input's own merges with it: the
/// product reads `[1, 3, 4]` directly and computes the same.
#[test]
fn the_reshapes_around_a_pre_processed_gemm_go() {
    let mut graph = gemm_graph(vec![3, 90, 127, 0, 64, 10, 33, 120], vec![60, 70]);
    let expected = run_graph(graph.clone(), &[1, 3, 4], &X);
    graph.input = vec![shaped("x", Some(&[1, 3, 4]))];
    let mut m = model(graph);
    let (log, coverage) = rewrite(&mut m, IntegerPath::Always).unwrap();
    assert_eq!(coverage.count(false), (1, 1));
    let count = |what: &str| {
        log.0
            .iter()
            .find(|(k, _)| k.contains(what))
            .map(|(_, n)| *n)
    };
    assert_eq!(count("Reshape pair"), Some(1), "{log:?}");
    assert_eq!(count("repeated"), Some(1), "{log:?}");
    let graph = m.graph.unwrap();
    assert!(graph.node.iter().all(|n| n.op_type != "Reshape"));
    assert_eq!(run_graph(graph, &[1, 3, 4], &X), expected);
}
