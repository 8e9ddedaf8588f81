//! tract's `MoveAxis` of an f32 `[N, C, H, W]` tensor's channels to the end becomes our
//! [`ChannelsLastF32`] (see `kernels::transpose`): the same values, on every thread.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;

use crate::kernels::transpose::ChannelsLastF32;

pub(super) fn channels_last(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        if node.op_as::<AxisOp>() != Some(&AxisOp::Move(1, 3)) {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?;
        if !(input.rank() == 4 && input.datum_type == f32::datum_type()) {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, ChannelsLastF32)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_move_of_channels_last_only() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 5, 3, 4])).unwrap();
        let last = model.wire_node("last", AxisOp::Move(1, 3), &[x]).unwrap()[0];
        let other = model.wire_node("other", AxisOp::Move(3, 1), &[x]).unwrap()[0];
        model.select_output_outlets(&[last, other]).unwrap();
        let before = model.clone();
        assert_eq!(channels_last(&mut model).unwrap(), 1);
        let input = tensor1(&(0..60).map(|i| i as f32).collect::<Vec<_>>())
            .into_shape(&[1, 5, 3, 4])
            .unwrap();
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            let out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
            out.into_iter().map(|t| t.into_tensor()).collect::<Vec<_>>()
        };
        assert_eq!(run(&model), run(&before));
    }
}
