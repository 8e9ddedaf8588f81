//! Per-channel constants left to tract's generic broadcasting loop: after tract's optimisation,
//! an f32 `Mul` or `Add` of a channels-last tensor by one constant per channel that tract did
//! not turn into its fast op becomes our [`ChannelwiseF32`] (see `kernels::channelwise`).

use tract_linalg::BinOp;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

use crate::kernels::channelwise::{Channelwise, ChannelwiseF32};

pub(super) fn channelwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = node
            .op_as::<TypedBinOp>()
            .and_then(|b| match b.0.as_linalg_binop() {
                Some(BinOp::Mul) => Some(Channelwise::Mul),
                Some(BinOp::Add) => Some(Channelwise::Add),
                _ => None,
            })
        else {
            continue;
        };
        let (name, facts) = (node.name.clone(), model.node_input_facts(id)?);
        let output = &node.outputs[0].fact;
        // Either operand may be the constant: both operations commute.
        let found = (0..2).find_map(|i| {
            let (x, v) = (facts[i], facts[1 - i]);
            let values = v.konst.as_ref()?;
            let channels = x.shape.last()?.to_usize().ok()?;
            let per_channel = x.datum_type == f32::datum_type()
                && values.datum_type() == f32::datum_type()
                && values.rank() == x.rank()
                && values.len() == channels
                && values.shape().last() == Some(&channels)
                && x.shape == output.shape;
            per_channel.then(|| (node.inputs[i], values.clone()))
        });
        drop(facts);
        let Some((x, values)) = found else {
            continue;
        };
        let channels = values.len();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, x)?;
        let values = patch.add_const(
            format!("{name}.values"),
            values.into_tensor().into_shape(&[channels])?,
        )?;
        let y = patch.wire_node(&name, ChannelwiseF32 { op }, &[x, values])?[0];
        patch.shunt_outside(model, id.into(), y)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// `x · v` with `v` one value per channel, the constant on either side, optimised by
    /// tract: 40 channels (convnext_atto's first stage) stay on tract's generic loop and are
    /// swapped; 64 are on tract's fast op and stay; the outputs do not change.
    #[test]
    fn swaps_per_channel_products_tract_left_generic() {
        for (channels, const_first, swapped) in [(40, false, 1), (40, true, 1), (64, false, 0)] {
            let mut model = TypedModel::default();
            let x = model
                .add_source("x", f32::fact([1, 3, 5, channels]))
                .unwrap();
            let v: Vec<f32> = (0..channels).map(|c| c as f32 * 0.25 - 3.0).collect();
            let v = tensor1(&v).into_shape(&[1, 1, 1, channels]).unwrap();
            let v = model.add_const("v", v).unwrap();
            let inputs = if const_first { [v, x] } else { [x, v] };
            let y = model.wire_node("mul", math::mul(), &inputs).unwrap()[0];
            model.select_output_outlets(&[y]).unwrap();
            let before = model.into_optimized().unwrap();
            let mut after = before.clone();
            assert_eq!(channelwise(&mut after).unwrap(), swapped, "{channels}");
            let input: Vec<f32> = (0..15 * channels).map(|i| i as f32 * 0.1 - 7.0).collect();
            let input = tensor1(&input).into_shape(&[1, 3, 5, channels]).unwrap();
            let run = |m: &TypedModel| {
                let plan = m.clone().into_runnable().unwrap();
                plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
                    .clone()
                    .into_tensor()
            };
            assert_eq!(run(&after), run(&before), "{channels}");
        }
    }
}
