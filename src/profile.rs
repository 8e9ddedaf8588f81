//! `convnext-edge profile`: where the time of one inference goes, per node of the optimised
//! plan and per op type, so hot spots are visible.
//!
//! Each node's evaluation is timed through tract's `run_plan_with_eval` hook (the plan runs as
//! usual, node by node, with a timer around each op); times are averaged over several runs
//! after one warm-up run. The sum over nodes is slightly below a plain run's latency: the hook
//! does not time the plan's own bookkeeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

use crate::error::Result;
use crate::model::Model;

/// Mean time of one node of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTime {
    /// The node's id.
    pub node: usize,
    /// The node's name.
    pub name: String,
    /// Its op.
    pub op: String,
    /// Mean time per inference, ms.
    pub ms: f64,
}

/// Total time of all nodes of one op type.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// The op.
    pub op: String,
    /// How many nodes run it.
    pub nodes: usize,
    /// Mean time per inference, ms.
    pub ms: f64,
    /// Share of the total.
    pub share: f64,
}

/// A profile of one inference.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Inferences timed.
    pub runs: usize,
    /// Sum of the nodes' mean times, ms.
    pub total_ms: f64,
    /// Slowest first.
    pub nodes: Vec<NodeTime>,
    /// Slowest first.
    pub ops: Vec<OpTime>,
}

/// Profiles `model` on `input` over `runs` runs (after one warm-up).
///
/// ```
/// use convnext_edge::{profile, LoadOptions, Model};
/// let model = Model::load("models/digits/convnext_digits_f32.onnx".as_ref(), &LoadOptions::default()).unwrap();
/// let x = tract_onnx::prelude::Tensor::zero::<f32>(&[1, 3, 32, 32]).unwrap();
/// let p = profile::profile(&model, x, 3).unwrap();
/// assert!(p.total_ms > 0.0 && !p.ops.is_empty());
/// ```
pub fn profile(model: &Model, input: Tensor, runs: usize) -> Result<Profile> {
    let runs = runs.max(1);
    let (plan, input) = model.prepare(input)?;
    let times = model.on_workers(|| time_nodes(model, &plan, input, runs))?;
    let graph = plan.model();
    let mut nodes: Vec<NodeTime> = times
        .into_iter()
        .map(|(id, d)| {
            let node = &graph.nodes()[id];
            NodeTime {
                node: id,
                name: node.name.clone(),
                op: node.op.name().to_string(),
                ms: d.as_secs_f64() * 1e3 / runs as f64,
            }
        })
        .collect();
    nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total_ms: f64 = nodes.iter().map(|n| n.ms).sum();
    let mut by_op: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for n in &nodes {
        let e = by_op.entry(&n.op).or_default();
        e.0 += 1;
        e.1 += n.ms;
    }
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (count, ms))| OpTime {
            op: op.to_owned(),
            nodes: count,
            ms,
            share: if total_ms > 0.0 { ms / total_ms } else { 0.0 },
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(Profile {
        runs,
        total_ms,
        nodes,
        ops,
    })
}

impl Profile {
    /// Per-op-type table and the `top` slowest nodes, as text.
    pub fn render(&self, top: usize) -> String {
        let mut s = format!(
            "{:.2} ms per inference (sum over nodes, mean of {} runs)\n\n",
            self.total_ms, self.runs
        );
        s.push_str(&format!(
            "{:<28} {:>6} {:>10} {:>7}\n",
            "op type", "nodes", "ms", "share"
        ));
        for o in &self.ops {
            s.push_str(&format!(
                "{:<28} {:>6} {:>10.3} {:>6.1}%\n",
                o.op,
                o.nodes,
                o.ms,
                o.share * 100.0
            ));
        }
        s.push_str(&format!("\n{:<6} {:<28} {:>10}  node\n", "id", "op", "ms"));
        for n in self.nodes.iter().take(top) {
            s.push_str(&format!(
                "{:<6} {:<28} {:>10.3}  {}\n",
                n.node, n.op, n.ms, n.name
            ));
        }
        s
    }
}

/// Total time per node over `runs` runs of `plan` on `input`, after one untimed run.
fn time_nodes(
    model: &Model,
    plan: &Arc<TypedRunnableModel>,
    input: TValue,
    runs: usize,
) -> Result<BTreeMap<usize, Duration>> {
    let mut state = plan.spawn().map_err(|e| model.run_error(e))?;
    let mut times: BTreeMap<usize, Duration> = BTreeMap::new();
    for run in 0..=runs {
        let out = state
            .run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                if run > 0 {
                    *times.entry(node.id).or_default() += t.elapsed();
                }
                out
            })
            .map_err(|e| model.run_error(e))?;
        model.logits(&out[0])?;
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoadOptions;

    #[test]
    fn shares_add_up_and_nodes_are_sorted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/digits/convnext_digits_int8.onnx");
        let model = Model::load(&path, &LoadOptions::threads(1)).unwrap();
        let p = profile(&model, Tensor::zero::<f32>(&[1, 3, 32, 32]).unwrap(), 2).unwrap();
        let share: f64 = p.ops.iter().map(|o| o.share).sum();
        assert!((share - 1.0).abs() < 1e-9);
        assert!(p.nodes.windows(2).all(|w| w[0].ms >= w[1].ms));
        assert_eq!(p.ops.iter().map(|o| o.nodes).sum::<usize>(), p.nodes.len());
        // Products show up: int8 ones on our op, f32 ones (where the CPU has no int8 kernel
        // that pays) on ours or tract's.
        let products = ["QPointwiseConv", "OptMatMul", "LinearF32", "MlpF32"];
        assert!(p.ops.iter().any(|o| products.contains(&o.op.as_str())));
        let text = p.render(5);
        assert!(text.contains("op type") && text.lines().count() > 8);
    }
}
