//! ONNX `LayerNormalization` onto our [`LayerNorm`] op.
//!
//! Our parser replaces tract's for this op type and keeps tract's as the fallback: the node
//! becomes our single op when it is the common case — f32 or f16 input, normalised over the last axis
//! only, a 1-D scale (and bias), no mean / inverse-std-dev outputs; anything else is wired by
//! tract's own expansion, unchanged. Both compute the same function (module docs of the
//! kernel); only the speed differs.
//!
//! tract internals used (tract-onnx / tract-hir 0.23.9): the op registry and its builder type,
//! `Expansion::wire_with_inference_model_and_node`, and that `expand()` boxes a
//! `Box<dyn Expansion>` (how the fallback is reached).

use std::sync::OnceLock;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::downcast_rs::Downcast;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::{expand, Expansion};

use crate::kernels::layer_norm::LayerNorm;

const OP: &str = "LayerNormalization";

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own parser for the op, kept for the cases ours does not take.
fn tract_builder() -> Builder {
    static BUILDER: OnceLock<Builder> = OnceLock::new();
    *BUILDER.get_or_init(|| {
        *tract_onnx::onnx()
            .op_register
            .0
            .get(OP)
            .expect("tract-onnx registers LayerNormalization")
    })
}

/// Registers our parser in place of tract's.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    tract_builder();
    onnx.op_register.insert(OP, parse);
}

fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let (op, extra) = tract_builder()(ctx, node)?;
    let fallback = Downcast::as_any(&*op)
        .downcast_ref::<Box<dyn Expansion>>()
        .context("tract's LayerNormalization is not an expansion")?
        .clone();
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(-1);
    let epsilon: f32 = node.get_attr_opt("epsilon")?.unwrap_or(1e-5);
    let outputs = node.output.iter().filter(|o| !o.is_empty()).count();
    let inputs = node.input.iter().filter(|i| !i.is_empty()).count();
    let ours = (outputs == 1 && inputs == 3).then_some((axis, epsilon));
    Ok((expand(OurLayerNorm { ours, fallback }), extra))
}

/// Our op where it applies (`ours` = axis and epsilon), else tract's expansion.
#[derive(Debug, Clone)]
struct OurLayerNorm {
    ours: Option<(i64, f32)>,
    fallback: Box<dyn Expansion>,
}

impl OurLayerNorm {
    /// Our op for these inputs, if it applies.
    fn ours(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<Option<LayerNorm>> {
        let Some((axis, epsilon)) = self.ours else {
            return Ok(None);
        };
        let x = model.outlet_fact(inputs[0])?;
        let rank = x.rank() as i64;
        let params_ok = inputs[1..]
            .iter()
            .map(|i| model.outlet_fact(*i))
            .collect::<TractResult<Vec<_>>>()?
            .iter()
            .all(|f| f.rank() == 1 && f.datum_type == x.datum_type);
        let last = axis == -1 || axis == rank - 1;
        Ok((x.datum_type.is_float() && rank >= 1 && last && params_ok)
            .then(|| LayerNorm::new(rank as usize - 1, epsilon)))
    }
}

impl Expansion for OurLayerNorm {
    fn name(&self) -> StaticName {
        "LayerNormalization".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Expansion::nboutputs(&*self.fallback)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.fallback.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        match self.ours(model, inputs)? {
            Some(op) => model.wire_node(prefix, op, inputs),
            None => self.fallback.wire(prefix, model, inputs),
        }
    }

    fn wire_with_inference_model_and_node(
        &self,
        prefix: &str,
        source: &InferenceModel,
        node: &InferenceNode,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        match self.ours(model, inputs)? {
            Some(op) => model.wire_node(prefix, op, inputs),
            None => self
                .fallback
                .wire_with_inference_model_and_node(prefix, source, node, model, inputs),
        }
    }
}
