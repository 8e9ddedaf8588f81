//! GELU in f32: tract's `GeluExact` becomes [`GeluF32`].

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::GeluExact;

use crate::kernels::gelu::GeluF32;

pub(super) fn gelu_in_f32(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let is_gelu = node
            .op_as::<ElementWiseOp>()
            .is_some_and(|ew| ew.0.is::<GeluExact>());
        if !is_gelu {
            continue;
        }
        let op = ElementWiseOp(Box::new(GeluF32), None);
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}
