//! Any ONNX graph through the classifier load pipeline minus the classifier contract:
//! protobuf size checks → [`onnx::rewrite`](super::onnx) (the same rewrites as
//! classifier loading) → tract parse and typing → precision
//! handling → our typed-graph passes → optimisation. This is how the ONNX backend node
//! tests (a suite no one here wrote) check that our rewrites and passes keep each op's meaning;
//! [`Graph::load_plain`] gives plain tract on the same file, to tell tract's own failures from
//! ours.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{
    check_axes, check_tensor_sizes, decode, onnx, plan_for, stage_error, stage_error_str,
    IntegerPath, DEFAULT_MAX_TENSOR_BYTES,
};
use crate::error::{catch_panic, Error, Result};
use crate::precision::{self, Precision};

/// A runnable graph with however many inputs and outputs it declares.
#[derive(Debug, Clone)]
pub struct Graph {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
}

impl Graph {
    /// Loads `path` through our pipeline (rewrites, precision conversion, graph passes).
    pub fn load(path: &Path) -> Result<Graph> {
        let plan = guarded(path, "loading", || {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let mut proto = decode(path, &bytes)?;
            check_tensor_sizes(path, &proto, DEFAULT_MAX_TENSOR_BYTES)?;
            check_axes(path, &proto)?;
            onnx::rewrite(&mut proto, IntegerPath::Auto)
                .map_err(stage_error_str(path, "graph rewrite"))?;
            let dir = path.parent().and_then(|d| d.to_str());
            let typed = onnx::parser()
                .parse(&proto, dir)
                .and_then(|p| p.model.into_typed())
                .map_err(stage_error(path, "ONNX parsing and typing"))?;
            let stored = precision::of_graph(proto.graph.as_ref().expect("decode checks it"));
            let typed = precision::convert(typed, stored, Precision::Auto)
                .map_err(stage_error_str(path, "precision conversion"))?;
            plan_for(path, typed, None, &Default::default())
        })?;
        Ok(Graph {
            path: path.to_owned(),
            plan,
        })
    }

    /// Loads `path` with tract alone (`model_for_path` → `into_optimized`), for comparison.
    pub fn load_plain(path: &Path) -> Result<Graph> {
        let plan = guarded(path, "loading", || {
            tract_onnx::onnx()
                .model_for_path(path)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(stage_error(path, "plain tract"))
        })?;
        Ok(Graph {
            path: path.to_owned(),
            plan,
        })
    }

    /// Runs the graph on `inputs`, in the order the file declares them.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into_tvalue()).collect();
        let out = guarded(&self.path, "inference", || {
            self.plan
                .run(inputs)
                .map_err(stage_error(&self.path, "inference"))
        })?;
        Ok(out.into_iter().map(|v| v.into_tensor()).collect())
    }
}

fn guarded<T>(path: &Path, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_panic(f).map_err(stage_error_str(path, stage))?
}
