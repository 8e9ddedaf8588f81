//! Graph passes on the decluttered typed model, before tract's own optimisation.
//!
//! - **Fast activation quantization**: every `QuantizeLinearU8/I8` (what QDQ models' activation
//!   QuantizeLinear nodes become) is swapped for [`FastQuantize`], the same function computed
//!   branch-free (see `kernels::quantize`). Safe because the two are bit-identical on every
//!   finite input; the graph's shape and types do not change.
//!
//! tract internals used: `ElementWiseOp`, `QuantizeLinearU8/I8` field layout,
//! `TypedModelPatch::replace_single_op` (tract-core 0.23.9).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{QuantizeLinearI8, QuantizeLinearU8};

use crate::kernels::quantize::FastQuantize;

/// Applies every pass; returns how many nodes each changed.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    fast_quantize(model)
}

fn fast_quantize(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(ew) = node.op_as::<ElementWiseOp>() else {
            continue;
        };
        let fast = if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
            FastQuantize::new(q.scale, q.zero_point as i32, false)
        } else if let Some(q) = ew.0.downcast_ref::<QuantizeLinearI8>() {
            FastQuantize::new(q.scale, q.zero_point as i32, true)
        } else {
            continue;
        };
        if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
            continue;
        }
        let op = ElementWiseOp(Box::new(fast), ew.1);
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}
