//! The ONNX backend node tests (onnx/backend/test/data/node, shipped in the `onnx` package)
//! for the op types ConvNeXt graphs use in any precision we support, run through our load
//! pipeline (rewrites, precision handling, graph passes) and compared with the expected outputs.
//! A failing test is run again through plain tract: if that fails too the failure is tract's
//! own and listed with its reason; a failure only our pipeline has is a bug in our passes and
//! fails this test.
//!
//! Parameters that ConvNeXt graphs always hold as constants (scales, zero points, axes,
//! shapes) are graph inputs in many node tests, and tract needs them constant: a test that fails
//! that way in both pipelines is run again with its inputs folded into initializers.
//!
//! Needs the data: `models/onnx_node_tests.sh` fetches it and runs this with a report;
//! without `ONNX_NODE_TESTS_DIR` the test says it is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use convnext_edge::model::graph::Graph;
use prost::Message;
use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb::TensorProto;
use tract_onnx::prelude::*;

/// Op types in ConvNeXt graphs (f32, f16 and int8; timm, torchvision, HF; both exporters),
/// as the node tests name them.
const OPS: &[&str] = &[
    "conv",
    "convinteger",
    "matmul",
    "matmulinteger",
    "gemm",
    "add",
    "mul",
    "div",
    "sub",
    "pow",
    "sqrt",
    "erf",
    "gelu",
    "tanh",
    "layer_normalization",
    "reduce_mean",
    "reduce_l2",
    "transpose",
    "reshape",
    "flatten",
    "globalaveragepool",
    "quantizelinear",
    "dequantizelinear",
    "dynamicquantizelinear",
    "qlinearconv",
    "qlinearmatmul",
    "cast",
    "concat",
    "identity",
    "softmax",
    "shape",
    "gather",
    "unsqueeze",
    "squeeze",
    "constant",
    "slice",
    "expand",
    "where",
    "equal",
    "range",
    "reciprocal",
];

fn op_of(test: &str) -> Option<&'static str> {
    let name = test.strip_prefix("test_")?;
    OPS.iter()
        .filter(|op| name == **op || name.starts_with(&format!("{op}_")))
        .max_by_key(|op| op.len())
        .copied()
}

fn read_tensor(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let proto = TensorProto::decode(&*bytes).map_err(|e| e.to_string())?;
    tract_onnx::tensor::load_tensor(&FopenDataResolver, &proto, None).map_err(|e| format!("{e:#}"))
}

/// Reads `input_N.pb` or `output_N.pb` in order.
fn read_set(dir: &Path, kind: &str) -> Result<Vec<Tensor>, String> {
    let mut out = vec![];
    loop {
        let p = dir.join(format!("{kind}_{}.pb", out.len()));
        if !p.exists() {
            return Ok(out);
        }
        let t =
            read_tensor(&p).map_err(|e| format!("{} is not a plain tensor ({e})", p.display()))?;
        out.push(t);
    }
}

fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    // tract keeps shapes as symbolic dimensions: a Shape output is TDim where ONNX says int64.
    let got = if got.datum_type() == TDim::datum_type() && want.datum_type() == i64::datum_type() {
        &got.cast_to::<i64>()
            .map_err(|e| e.to_string())?
            .into_owned()
    } else {
        got
    };
    if got.datum_type() != want.datum_type() {
        return Err(format!(
            "type {:?}, expected {:?}",
            got.datum_type(),
            want.datum_type()
        ));
    }
    let dt = want.datum_type();
    if dt == bool::datum_type() {
        let (g, w) = (
            got.to_plain_array_view::<bool>().unwrap(),
            want.to_plain_array_view::<bool>().unwrap(),
        );
        return if g == w {
            Ok(())
        } else {
            Err("booleans differ".into())
        };
    }
    let (rtol, atol) = match dt {
        DatumType::F16 => (1e-2, 1e-3),
        DatumType::F32 | DatumType::F64 => (1e-3, 1e-5),
        _ => (0.0, 0.0),
    };
    let g = got.cast_to::<f64>().map_err(|e| e.to_string())?;
    let w = want.cast_to::<f64>().map_err(|e| e.to_string())?;
    let g = g.to_plain_array_view::<f64>().unwrap();
    let w = w.to_plain_array_view::<f64>().unwrap();
    for (i, (a, b)) in g.iter().zip(w.iter()).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= atol + rtol * b.abs() || a == b;
        if !ok {
            return Err(format!("element {i}: {a}, expected {b}"));
        }
    }
    Ok(())
}

/// How a test's inputs reach the graph.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// As graph inputs, as the test declares.
    Inputs,
    /// Folded into the model as initializers: scales, zero points, axes and shapes are constants
    /// in real ConvNeXt graphs, and tract requires them to be.
    Constants,
}

/// `model.onnx` with its graph inputs replaced by `inputs` as initializers, in a temp dir.
fn with_constant_inputs(model: &Path, set: &Path, tmp: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let mut proto = tract_onnx::pb::ModelProto::decode(&*bytes).map_err(|e| e.to_string())?;
    let graph = proto.graph.as_mut().ok_or("no graph")?;
    let inits: Vec<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let inputs: Vec<_> = graph
        .input
        .drain(..)
        .filter(|i| !inits.contains(&i.name))
        .collect();
    for (n, input) in inputs.iter().enumerate() {
        let pb = set.join(format!("input_{n}.pb"));
        let data = std::fs::read(&pb).map_err(|e| format!("{}: {e}", pb.display()))?;
        let mut t = TensorProto::decode(&*data)
            .map_err(|e| format!("{} is not a plain tensor ({e})", pb.display()))?;
        t.name = input.name.clone();
        graph.initializer.push(t);
    }
    let out = tmp.join("model.onnx");
    std::fs::write(&out, proto.encode_to_vec()).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs one node test directory through a loader; `Ok` when every data set matches.
fn check(
    dir: &Path,
    load: fn(&Path) -> convnext_edge::Result<Graph>,
    feed: Feed,
) -> Result<(), String> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut graph = None;
    for set in sets {
        let (g, inputs) = match feed {
            Feed::Inputs => {
                if graph.is_none() {
                    graph = Some(load(&dir.join("model.onnx")).map_err(|e| e.to_string())?);
                }
                (graph.clone().unwrap(), read_set(&set, "input")?)
            }
            Feed::Constants => {
                let model = with_constant_inputs(&dir.join("model.onnx"), &set, tmp.path())?;
                (load(&model).map_err(|e| e.to_string())?, vec![])
            }
        };
        let expected = read_set(&set, "output")?;
        let outputs = g.run(inputs).map_err(|e| e.to_string())?;
        if outputs.len() < expected.len() {
            return Err(format!(
                "{} outputs, expected {}",
                outputs.len(),
                expected.len()
            ));
        }
        for (i, (got, want)) in outputs.iter().zip(&expected).enumerate() {
            compare(got, want).map_err(|e| format!("output {i}: {e}"))?;
        }
    }
    Ok(())
}

/// Inputs as declared first; if both loaders fail that way, inputs folded into constants.
fn outcome(dir: &Path) -> Outcome {
    let mut last = String::new();
    for feed in [Feed::Inputs, Feed::Constants] {
        match check(dir, Graph::load, feed) {
            Ok(()) => return Outcome::Passed,
            Err(e) if e.contains("not a plain tensor") => return Outcome::Skipped(e),
            Err(ours) => match check(dir, Graph::load_plain, feed) {
                Ok(()) => return Outcome::Ours(ours),
                Err(plain) => last = plain,
            },
        }
    }
    Outcome::Tract(last)
}

enum Outcome {
    Passed,
    /// The data are not plain tensors (sequences, optionals).
    Skipped(String),
    /// Plain tract fails too.
    Tract(String),
    /// Only our pipeline fails.
    Ours(String),
}

#[test]
fn onnx_backend_node_tests_through_our_pipeline() {
    let Some(root) = std::env::var_os("ONNX_NODE_TESTS_DIR").map(PathBuf::from) else {
        eprintln!("skipped: set ONNX_NODE_TESTS_DIR (models/onnx_node_tests.sh does)");
        return;
    };
    let mut tests: Vec<(String, &str)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            op_of(&name).map(|op| (name, op))
        })
        .collect();
    tests.sort();
    assert!(
        tests.len() > 100,
        "only {} node tests found in {}",
        tests.len(),
        root.display()
    );

    let mut per_op: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut details = vec![];
    for (name, op) in &tests {
        let dir = root.join(name);
        let outcome = outcome(&dir);
        let counts = per_op.entry(op).or_default();
        let (slot, line) = match &outcome {
            Outcome::Passed => (0, None),
            Outcome::Skipped(why) => (1, Some(format!("skipped  {name}: {why}"))),
            Outcome::Tract(why) => (2, Some(format!("tract    {name}: {why}"))),
            Outcome::Ours(why) => (3, Some(format!("OURS     {name}: {why}"))),
        };
        counts[slot] += 1;
        details.extend(line);
    }

    let mut report = String::from(
        "| op | passed | skipped | failed (tract) | failed (our passes) |\n|---|---|---|---|---|\n",
    );
    let mut total = [0usize; 4];
    for (op, c) in &per_op {
        report += &format!("| {op} | {} | {} | {} | {} |\n", c[0], c[1], c[2], c[3]);
        for i in 0..4 {
            total[i] += c[i];
        }
    }
    report += &format!(
        "| **all** | {} | {} | {} | {} |\n",
        total[0], total[1], total[2], total[3]
    );
    let full = format!("{report}\n```\n{}\n```\n", details.join("\n"));
    if let Some(out) = std::env::var_os("ONNX_NODE_TESTS_REPORT") {
        std::fs::write(&out, &full).unwrap();
    }
    println!("{full}");
    assert_eq!(
        total[3], 0,
        "our pipeline breaks node tests that plain tract passes:\n{full}"
    );
}
