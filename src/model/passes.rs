//! Graph passes on the decluttered typed model, before tract's own optimisation.
//!
//! - **Fast activation quantization**: every `QuantizeLinearU8/I8` (what QDQ models' activation
//!   QuantizeLinear nodes become) is swapped for [`FastQuantize`], the same function computed
//!   branch-free (see `kernels::quantize`). Safe because the two are bit-identical on every
//!   finite input; the graph's shape and types do not change.
//!
//! - **Fused fake quantization**: such a quantize whose only consumer is a DequantizeLinear
//!   (the activation QDQ pairs of QDQ models, once tract has run the rest in float) becomes one
//!   in-place f32 op, [`FakeQuantize`]: the same arithmetic without the 8-bit intermediate
//!   tensor and its second pass. Skipped when the quantized tensor is a model output or has other
//!   consumers.
//!
//! tract internals used: `ElementWiseOp`, `QuantizeLinearU8/I8` field layout,
//! `TypedModelPatch::replace_single_op` (tract-core 0.23.9).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

use crate::kernels::quantize::{FakeQuantize, FastQuantize};

/// Applies every pass; returns how many nodes they changed.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    Ok(fast_quantize(model)? + fuse_quantize_dequantize(model)?)
}

/// A FastQuantize node whose only consumer is a DequantizeLinearF32, and the fused op.
fn next_fake_quantize(model: &TypedModel) -> TractResult<Option<(usize, usize, FakeQuantize)>> {
    let outputs = model.output_outlets()?;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(q) = node
            .op_as::<ElementWiseOp>()
            .and_then(|ew| ew.0.downcast_ref::<FastQuantize>())
        else {
            continue;
        };
        if outputs.contains(&OutletId::new(id, 0)) {
            continue;
        }
        let Some(succ) = model.single_succ(id)? else {
            continue;
        };
        if let Some(dq) = succ.op_as::<DequantizeLinearF32>() {
            return Ok(Some((
                id,
                succ.id,
                FakeQuantize::new(q.clone(), dq.scale, dq.zero_point),
            )));
        }
    }
    Ok(None)
}

fn fuse_quantize_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    while let Some((q, dq, op)) = next_fake_quantize(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes()[q].inputs[0])?;
        let name = model.nodes()[dq].name.clone();
        let out = patch.wire_node(name, ElementWiseOp(Box::new(op), None), &[input])?[0];
        patch.shunt_outside(model, OutletId::new(dq, 0), out)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
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
