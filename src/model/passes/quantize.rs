//! The quantization passes: fast activation quantization, fused fake quantization, quantize →
//! lookup → dequantize, and redundant fake quantizations dropped (see the parent module's docs).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_onnx::tract_core::ops::quant::{
    DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8,
};

use crate::kernels::depthwise::quantized::QDepthwiseConv;
use crate::kernels::dynamic_quantize::DynamicQuantizeU8;
use crate::kernels::qconv::QPointwiseConv;
use crate::kernels::quantize::{FakeQuantize, FastQuantize, QuantizeLookup};

/// The element-wise op of `node` when it is a `T`.
fn mini_op<T: ElementWiseMiniOp>(node: &TypedNode) -> Option<&T> {
    node.op_as::<ElementWiseOp>()
        .and_then(|ew| ew.0.downcast_ref::<T>())
}

/// The nodes whose element-wise op is a `T` and whose output is not a model output (a pass
/// may replace them), in evaluation order, with their op.
fn inner_mini_ops<T: ElementWiseMiniOp>(model: &TypedModel) -> TractResult<Vec<(usize, &T)>> {
    let outputs = model.output_outlets()?;
    Ok(model
        .eval_order()?
        .into_iter()
        .filter(|&id| !outputs.contains(&OutletId::new(id, 0)))
        .filter_map(|id| mini_op::<T>(&model.nodes()[id]).map(|op| (id, op)))
        .collect())
}

/// A FastQuantize node whose only consumer is a DequantizeLinearF32, directly or through
/// reshapes (`IntoShape`, `AxisOp`) each the only reader of the last: the quantize, the fused
/// op and the reshapes between.
fn next_fake_quantize(model: &TypedModel) -> TractResult<Option<Chain<FakeQuantize>>> {
    let outputs = model.output_outlets()?;
    for (id, q) in inner_mini_ops::<FastQuantize>(model)? {
        let mut reshapes = vec![];
        let mut succ = model.single_succ(id)?;
        while let Some(node) = succ.filter(|n| n.op_is::<IntoShape>() || n.op_is::<AxisOp>()) {
            if outputs.contains(&OutletId::new(node.id, 0)) {
                break;
            }
            reshapes.push(node.id);
            succ = model.single_succ(node.id)?;
        }
        let Some(succ) = succ else {
            continue;
        };
        if let Some(dq) = succ.op_as::<DequantizeLinearF32>() {
            let op = FakeQuantize::new(*q, dq.scale, dq.zero_point);
            return Ok(Some((id, succ.id, op, reshapes)));
        }
    }
    Ok(None)
}

/// A chain to fuse: its first node, its last node, the op replacing them, and the reshapes
/// between them that move after it.
type Chain<O> = (usize, usize, O, Vec<usize>);

/// A FastQuantize → LookupTable → DequantizeLinearF32 chain (each the only reader of the
/// previous) and its fused op.
fn next_quantize_lookup(model: &TypedModel) -> TractResult<Option<Chain<QuantizeLookup>>> {
    let outputs = model.output_outlets()?;
    for (id, q) in inner_mini_ops::<FastQuantize>(model)? {
        let Some(lut_node) = model.single_succ(id)? else {
            continue;
        };
        let Some(lut) = mini_op::<LookupTable>(lut_node) else {
            continue;
        };
        let Some(dq) = model.single_succ(lut_node.id)? else {
            continue;
        };
        let Some(dq_op) = dq.op_as::<DequantizeLinearF32>() else {
            continue;
        };
        if outputs.contains(&OutletId::new(lut_node.id, 0)) {
            continue;
        }
        let signed =
            model.outlet_fact(OutletId::new(lut_node.id, 0))?.datum_type == i8::datum_type();
        let table = lut.table.table();
        if let Some(op) = QuantizeLookup::new(*q, table, signed, dq_op.scale, dq_op.zero_point) {
            return Ok(Some((id, dq.id, op, vec![])));
        }
    }
    Ok(None)
}

/// Every value `node`'s output can take, when it is one of a short list: the output of a
/// fake quantization, a quantized lookup, or an integer op with a quantized f32 output.
fn possible_outputs(node: &TypedNode) -> Option<Vec<f32>> {
    if let Some(fq) = mini_op::<FakeQuantize>(node) {
        return Some(fq.outputs());
    }
    if let Some(lookup) = mini_op::<QuantizeLookup>(node) {
        return Some(lookup.outputs());
    }
    node.op_as::<QPointwiseConv>().and_then(|op| op.outputs())
}

/// The quantization `node` applies to its first input before anything else, if it does.
fn input_quantizer(node: &TypedNode) -> Option<FastQuantize> {
    if let Some(q) = mini_op::<FastQuantize>(node) {
        return Some(*q);
    }
    if let Some(fq) = mini_op::<FakeQuantize>(node) {
        return Some(fq.quantizer());
    }
    if let Some(lookup) = mini_op::<QuantizeLookup>(node) {
        return Some(lookup.quantizer());
    }
    if let Some(op) = node.op_as::<QDepthwiseConv>() {
        return Some(op.input_quantizer());
    }
    node.op_as::<QPointwiseConv>()
        .and_then(|op| op.input_quantizer())
}

/// A [`FakeQuantize`] node that cannot change the result (see the module docs).
fn next_redundant_fake_quantize(model: &TypedModel) -> TractResult<Option<usize>> {
    for (id, fq) in inner_mini_ops::<FakeQuantize>(model)? {
        let node = &model.nodes()[id];
        let input = node.inputs[0];
        let input_fixed = input.slot == 0
            && possible_outputs(&model.nodes()[input.node]).is_some_and(|vs| fq.fixes(&vs));
        let readers = &node.outputs[0].successors;
        let readers_requantize = !readers.is_empty()
            && readers.iter().all(|inlet| {
                inlet.slot == 0
                    && input_quantizer(&model.nodes()[inlet.node])
                        .is_some_and(|q| fq.invisible_to(&q))
            });
        if input_fixed || readers_requantize {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Removes, one at a time, the fake quantizations that cannot change the result.
pub(super) fn drop_redundant_fake_quantize(model: &mut TypedModel) -> TractResult<usize> {
    bypass_each(model, next_redundant_fake_quantize)
}

/// Removes, one at a time, each lookup table that maps every byte to itself (tract leaves one
/// where a dequantize and a quantize of the same steps meet), so that the quantize and
/// dequantize around it fuse into a [`FakeQuantize`] rather than a [`QuantizeLookup`].
pub(super) fn drop_identity_lookups(model: &mut TypedModel) -> TractResult<usize> {
    bypass_each(model, next_identity_lookup)
}

/// Removes, one at a time, each node `next` finds, its readers reading its input instead.
fn bypass_each(
    model: &mut TypedModel,
    next: impl Fn(&TypedModel) -> TractResult<Option<usize>>,
) -> TractResult<usize> {
    let mut dropped = 0;
    while let Some(id) = next(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes()[id].inputs[0])?;
        patch.shunt_outside(model, OutletId::new(id, 0), input)?;
        patch.apply(model)?;
        dropped += 1;
    }
    Ok(dropped)
}

fn next_identity_lookup(model: &TypedModel) -> TractResult<Option<usize>> {
    for (id, lut) in inner_mini_ops::<LookupTable>(model)? {
        let node = &model.nodes()[id];
        let same_type = model.outlet_fact(node.inputs[0])?.datum_type
            == model.outlet_fact(OutletId::new(id, 0))?.datum_type;
        let identity = lut
            .table
            .table()
            .iter()
            .enumerate()
            .all(|(i, &b)| b as usize == i);
        if same_type && identity {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

pub(super) fn fuse_quantize_lookup_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    fuse_chains(model, next_quantize_lookup)
}

pub(super) fn fuse_quantize_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    fuse_chains(model, next_fake_quantize)
}

/// Replaces, one at a time, each chain `next` finds (from its first node's input to its last
/// node's output) by the element-wise op it gives, followed by the chain's reshapes.
fn fuse_chains<O: ElementWiseMiniOp>(
    model: &mut TypedModel,
    next: impl Fn(&TypedModel) -> TractResult<Option<Chain<O>>>,
) -> TractResult<usize> {
    let mut fused = 0;
    while let Some((first, last, op, reshapes)) = next(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes()[first].inputs[0])?;
        let name = model.nodes()[last].name.clone();
        let mut wire = patch.wire_node(name, ElementWiseOp(Box::new(op), None), &[input])?;
        for id in reshapes {
            let node = &model.nodes()[id];
            wire = patch.wire_node(&node.name, node.op.clone(), &wire)?;
        }
        patch.shunt_outside(model, OutletId::new(last, 0), wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

pub(super) fn fast_quantize(model: &mut TypedModel) -> TractResult<usize> {
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

/// tract's `DynamicQuantizeLinearU8` (found by name: tract-onnx keeps the type private) of an
/// f32 tensor becomes our [`DynamicQuantizeU8`]: the same three outputs, bit for bit.
pub(super) fn fast_dynamic_quantize(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        if node.op().name() != "DynamicQuantizeLinearU8"
            || node.inputs.len() != 1
            || node.outputs.len() != 3
            || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type()
        {
            continue;
        }
        let patch =
            TypedModelPatch::replace_single_op(model, node, &node.inputs, DynamicQuantizeU8)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x` through the element-wise `ops` in a row.
    fn chain(ops: Vec<Box<dyn ElementWiseMiniOp>>) -> TypedModel {
        let mut model = TypedModel::default();
        let mut wire = model.add_source("x", f32::fact([512])).unwrap();
        for (i, op) in ops.into_iter().enumerate() {
            wire = model
                .wire_node(format!("op{i}"), ElementWiseOp(op, None), &[wire])
                .unwrap()[0];
        }
        model.select_output_outlets(&[wire]).unwrap();
        model
    }

    fn output(model: &TypedModel) -> Tensor {
        let x: Vec<f32> = (0..512).map(|i| (i as f32 - 256.0) * 0.037).collect();
        let plan = model.clone().into_runnable().unwrap();
        let out = plan.run(tvec!(tensor1(&x).into_tvalue())).unwrap();
        out[0].clone().into_tensor()
    }

    fn fake_quantizations(model: &TypedModel) -> usize {
        let order = model.eval_order().unwrap();
        order
            .iter()
            .filter(|&&id| mini_op::<FakeQuantize>(&model.nodes()[id]).is_some())
            .count()
    }

    /// A repeated pair and a pair before a quantizer of the same steps go; pairs of other
    /// steps stay; the outputs do not change.
    #[test]
    fn drops_only_fake_quantizations_that_change_nothing() {
        let act = FastQuantize::new(20.0, 131, false);
        let fq = || Box::new(FakeQuantize::new(act, 0.05, 131));
        let other = || {
            Box::new(FakeQuantize::new(
                FastQuantize::new(10.0, 128, false),
                0.1,
                128,
            ))
        };
        let i8_form = || Box::new(FastQuantize::new(20.0, 3, true));
        let cases: [(Vec<Box<dyn ElementWiseMiniOp>>, usize); 4] = [
            (vec![fq(), fq()], 1),
            (vec![fq(), i8_form()], 1),
            (vec![other(), fq()], 0),
            (vec![fq(), Box::new(FastQuantize::new(16.0, 131, false))], 0),
        ];
        for (i, (ops, dropped)) in cases.into_iter().enumerate() {
            let before = chain(ops);
            let mut after = before.clone();
            assert_eq!(
                drop_redundant_fake_quantize(&mut after).unwrap(),
                dropped,
                "case {i}"
            );
            assert_eq!(
                fake_quantizations(&after),
                fake_quantizations(&before) - dropped,
                "case {i}"
            );
            assert_eq!(output(&after), output(&before), "case {i}");
        }
    }

    /// `x` quantized, through `between`, and dequantized.
    fn dequantized_after(between: Box<dyn TypedOp>) -> TypedModel {
        let mut model = chain(vec![Box::new(FastQuantize::new(20.0, 131, false))]);
        let quantized = model.output_outlets().unwrap()[0];
        let wire = model.wire_node("between", between, &[quantized]).unwrap();
        let dq = DequantizeLinearF32 {
            scale: 0.05,
            zero_point: 131,
        };
        let out = model.wire_node("dq", dq, &wire).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    /// `x` quantized, looked up in `table` and dequantized.
    fn through_table(table: &[u8]) -> TypedModel {
        let lut = LookupTable {
            table: tract_linalg::routines::lut_u8(table).unwrap(),
        };
        dequantized_after(Box::new(ElementWiseOp(Box::new(lut), None)))
    }

    /// An identity table goes and the chain becomes a fake quantization; any other table
    /// stays and becomes a quantized lookup; the outputs do not change.
    #[test]
    fn drops_only_identity_lookups() {
        let identity: Vec<u8> = (0..=255).collect();
        let mut swapped = identity.clone();
        swapped.swap(3, 200);
        for (table, dropped) in [(identity, 1), (swapped, 0)] {
            let before = through_table(&table);
            let mut after = before.clone();
            assert_eq!(drop_identity_lookups(&mut after).unwrap(), dropped);
            fuse_quantize_lookup_dequantize(&mut after).unwrap();
            fuse_quantize_dequantize(&mut after).unwrap();
            assert_eq!(fake_quantizations(&after), dropped);
            assert_eq!(output(&after), output(&before));
        }
    }

    /// A quantize and a dequantize with a reshape between fuse, the reshape moved after the
    /// fake quantization; the output does not change.
    #[test]
    fn fuses_quantize_and_dequantize_across_a_reshape() {
        let before = dequantized_after(Box::new(AxisOp::Add(0)));
        let mut after = before.clone();
        assert_eq!(fuse_quantize_dequantize(&mut after).unwrap(), 1);
        assert_eq!(fake_quantizations(&after), 1);
        assert_eq!(output(&after), output(&before));
    }
}
