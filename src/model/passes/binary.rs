//! f32 element-wise products and sums left to tract's ops, after tract's optimisation: by one
//! constant per channel (channels last), or by another tensor of the same shape. They become our
//! [`ChannelwiseF32`] and [`PairwiseF32`] (see `kernels::binary`), which split the work across
//! our workers: tract's run on the calling thread alone, its generic broadcasting loop (where
//! its fast one refused the channel count) or its fast one alike.

use tract_linalg::BinOp;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::binary::{OptBinUnicast, TypedBinOp};

use crate::kernels::binary::{Arith, ChannelwiseF32, PairwiseF32};

/// What a node becomes: the channelwise op with its constant, or the pairwise one.
enum Swap {
    Channels(OutletId, Tensor),
    Pairs,
}

pub(super) fn binary(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let binop = node
            .op_as::<TypedBinOp>()
            .map(|b| &b.0)
            .or_else(|| node.op_as::<OptBinUnicast>().map(|b| &b.binop));
        let Some(op) = binop.and_then(|b| match b.as_linalg_binop() {
            Some(BinOp::Mul) => Some(Arith::Mul),
            Some(BinOp::Add) => Some(Arith::Add),
            _ => None,
        }) else {
            continue;
        };
        let (name, facts) = (node.name.clone(), model.node_input_facts(id)?);
        let output = &node.outputs[0].fact;
        let f32_in = |f: &TypedFact| f.datum_type == f32::datum_type();
        if !(f32_in(facts[0]) && f32_in(facts[1]) && f32_in(output)) {
            continue;
        }
        let pairs = facts[0].shape == facts[1].shape && facts[0].shape == output.shape;
        // Either operand may be the constant: both operations commute.
        let swap = if pairs {
            Some(Swap::Pairs)
        } else {
            (0..2).find_map(|i| {
                let (x, v) = (facts[i], facts[1 - i]);
                let values = v.konst.as_ref()?;
                let channels = x.shape.last()?.to_usize().ok()?;
                let per_channel = values.rank() == x.rank()
                    && values.len() == channels
                    && values.shape().last() == Some(&channels)
                    && x.shape == output.shape;
                per_channel.then(|| Swap::Channels(node.inputs[i], values.clone().into_tensor()))
            })
        };
        let inputs = [node.inputs[0], node.inputs[1]];
        drop(facts);
        let Some(swap) = swap else {
            continue;
        };
        let patch = match swap {
            Swap::Pairs => {
                let node = &model.nodes()[id];
                TypedModelPatch::replace_single_op(model, node, &inputs, PairwiseF32 { op })?
            }
            Swap::Channels(x, values) => {
                let mut patch = TypedModelPatch::default();
                let channels = values.len();
                let x = patch.tap_model(model, x)?;
                let values =
                    patch.add_const(format!("{name}.values"), values.into_shape(&[channels])?)?;
                let y = patch.wire_node(&name, ChannelwiseF32 { op }, &[x, values])?[0];
                patch.shunt_outside(model, id.into(), y)?;
                patch
            }
        };
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
    /// tract: 40 channels (convnext_atto's first stage, on tract's generic loop) and 64 (on its
    /// fast op) are swapped alike; the outputs do not change.
    #[test]
    fn swaps_per_channel_products() {
        for (channels, const_first) in [(40, false), (40, true), (64, false)] {
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
            assert_eq!(binary(&mut after).unwrap(), 1, "{channels}");
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

    /// `a + b` and `a · b` on two inputs of one shape: both ops swapped, the outputs unchanged.
    #[test]
    fn swaps_pairs_of_tensors() {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([1, 3, 5, 40])).unwrap();
        let b = model.add_source("b", f32::fact([1, 3, 5, 40])).unwrap();
        let s = model.wire_node("add", math::add(), &[a, b]).unwrap()[0];
        let p = model.wire_node("mul", math::mul(), &[a, b]).unwrap()[0];
        model.select_output_outlets(&[s, p]).unwrap();
        let before = model.into_optimized().unwrap();
        let mut after = before.clone();
        let names = |m: &TypedModel| m.nodes().iter().map(|n| n.op().name()).collect::<Vec<_>>();
        assert_eq!(binary(&mut after).unwrap(), 2, "{:?}", names(&before));
        let values = |k: f32| tensor1(&(0..600).map(|i| i as f32 * k - 7.0).collect::<Vec<_>>());
        let inputs = [values(0.1), values(-0.03)].map(|v| v.into_shape(&[1, 3, 5, 40]).unwrap());
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            let inputs = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
            let out = plan.run(inputs).unwrap();
            out.into_iter().map(|t| t.into_tensor()).collect::<Vec<_>>()
        };
        assert_eq!(run(&after), run(&before));
    }
}
