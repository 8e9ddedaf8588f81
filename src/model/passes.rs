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
//! - **Quantize → lookup table → dequantize**: tract turns `DQ → element-wise → Q` stretches
//!   of QDQ graphs into a byte lookup table between the quantize and the next dequantize; the
//!   three become one in-place op, `y = table[quantize(x)]` with the dequantized table
//!   precomputed ([`QuantizeLookup`]): the same values, one pass instead of three.
//!
//! - **Redundant fake quantizations**: a [`FakeQuantize`] is dropped where it cannot change
//!   what the graph computes: when each value its input can take is one it leaves as it is (the
//!   input comes from an op whose output is already quantized to the same steps: the pairs on
//!   both sides of a `Transpose` tract removed), or when each reader quantizes its input again to
//!   the same steps before anything else (our integer ops after a LayerNorm's output pair). Both
//!   conditions are checked on every code of the quantization, so the result is bit-identical.
//!
//! - **Constant casts**: a `Cast` of a constant becomes the cast constant (tract's own folding
//!   stops at 4 MiB, and an f16 model run in f32 has a cast after every weight).
//!
//! - **Depthwise convolution**: a float `Conv` with one group per channel, stride and dilation
//!   1, NCHW or NHWC (where tract has moved the channels last), f32 or f16, constant weights and
//!   bias, becomes our [`DepthwiseConv`] (see `kernels::depthwise`): the same sum per output, in
//!   the same order (in f32 for f16 tensors). Padding of every kind tract expresses is turned
//!   into explicit before/after amounts first.
//!
//! - **GELU in f32**: tract's `GeluExact` becomes [`GeluF32`] (see `kernels::gelu`): the same
//!   erf, vectorised; on an f16 tensor computed in f32 and rounded once instead of three f16
//!   roundings, one value at a time; on f32, a quarter faster than tract's (convnext_tiny's 21
//!   GELUs 9.3–9.7 → 6.8–7.6 ms per-node at 1 thread, alternating binaries).
//!
//! - **Linear layers in f32**: an f32 product by a constant matrix, with the bias, GELU and layer
//!   scale that follow it, becomes our `LinearF32` (`kernels::linear`) on x86 CPUs with
//!   AVX-512; two in a row (an MLP), one `MlpF32` that keeps the hidden tensor in cache (see
//!   `model::linear`).
//!
//! tract internals used: `ElementWiseOp`, `QuantizeLinearU8/I8` field layout, `Conv` /
//! `PoolSpec` / `PaddingSpec` / `KernelFormat` fields, `TypedModelPatch::replace_single_op`,
//! `GeluExact` (tract-core 0.23.9).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_onnx::tract_core::ops::quant::{
    DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8,
};

use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::{DataFormat, GeluExact};

use crate::kernels::depthwise::quantized::QDepthwiseConv;
use crate::kernels::depthwise::{self, DepthwiseConv};
use crate::kernels::gelu::GeluF32;
use crate::kernels::qconv::QPointwiseConv;
use crate::kernels::quantize::{FakeQuantize, FastQuantize, QuantizeLookup};
use crate::kernels::Layout;

/// Applies every pass; returns how many nodes they changed.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    Ok(fold_constant_casts(model)?
        + fast_quantize(model)?
        + fuse_quantize_lookup_dequantize(model)?
        + fuse_quantize_dequantize(model)?
        + drop_redundant_fake_quantize(model)?
        + depthwise(model)?
        + gelu_in_f32(model)?
        + f32_linear(model)?)
}

/// Casts of constants computed once here. Converting an f16 model to f32 puts a Cast after
/// every weight; tract folds constants only up to a size budget (4 MiB), so the large ones
/// (ConvNeXt-T's MLP weights) were converted again at every inference.
fn fold_constant_casts(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(cast) = node.op_as::<Cast>() else {
            continue;
        };
        let Some(konst) = model.outlet_fact(node.inputs[0])?.konst.clone() else {
            continue;
        };
        let value = konst.cast_to_dt(cast.to)?.into_owned();
        let mut patch = TypedModelPatch::default();
        let wire = patch.add_const(format!("{}.folded", node.name), value)?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
        patch.apply(model)?;
        folded += 1;
    }
    Ok(folded)
}

/// Our depthwise op for `node` when it is a convolution the module docs describe.
fn as_depthwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DepthwiseConv>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let c = spec.input_channels;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
    if conv.q_params.is_some()
        || conv.group != c
        || spec.output_channels != c
        || spec.kernel_shape.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::NHWC)
        || conv.kernel_fmt != KernelFormat::OIHW
        || !ones(&spec.strides)
        || !ones(&spec.dilations)
        || node.inputs.len() != 3
        || !depthwise::is_supported_float(model.outlet_fact(node.inputs[0])?.datum_type)
    {
        return Ok(None);
    }
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let Some(pads) = stride_one_pads(spec) else {
        return Ok(None);
    };
    let (Some(weights), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    if !depthwise::is_supported_float(weights.datum_type()) || weights.shape() != [c, 1, kh, kw] {
        return Ok(None);
    }
    let Some(bias) = per_channel_bias(&bias, c)? else {
        return Ok(None);
    };
    let weights = weights
        .cast_to::<f32>()?
        .into_owned()
        .into_shape(&[c, kh, kw])?;
    let layout = match spec.data_format {
        DataFormat::NHWC => Layout::ChannelsLast,
        _ => Layout::ChannelsFirst,
    };
    let bias = Tensor::from_shape(&[c], &bias)?;
    Ok(Some(DepthwiseConv::new(weights, bias, pads, layout)?))
}

/// A 2-D convolution's padding as `[top, bottom, left, right]`, the `Same` kinds worked out
/// for stride 1; `None` for a padding tract expresses otherwise.
pub(super) fn stride_one_pads(spec: &PoolSpec) -> Option<[usize; 4]> {
    let same = |k: usize, upper: bool| {
        let small = (k - 1) / 2;
        if upper {
            [small, k - 1 - small]
        } else {
            [k - 1 - small, small]
        }
    };
    match &spec.padding {
        PaddingSpec::Valid => Some([0; 4]),
        PaddingSpec::Explicit(before, after) | PaddingSpec::ExplicitOnnxPool(before, after, _)
            if before.len() == 2 && after.len() == 2 =>
        {
            Some([before[0], after[0], before[1], after[1]])
        }
        PaddingSpec::SameUpper | PaddingSpec::SameLower if spec.kernel_shape.len() == 2 => {
            let upper = matches!(spec.padding, PaddingSpec::SameUpper);
            let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
            let ([t, b], [l, r]) = (same(kh, upper), same(kw, upper));
            Some([t, b, l, r])
        }
        _ => None,
    }
}

/// A convolution's constant bias as `c` f32 values: one per channel, or one for all; `None`
/// for any other length.
pub(super) fn per_channel_bias(bias: &Tensor, c: usize) -> TractResult<Option<Vec<f32>>> {
    Ok(match bias.len() {
        1 => Some(vec![bias.cast_to_scalar::<f32>()?; c]),
        n if n == c => Some(
            bias.cast_to::<f32>()?
                .try_as_plain_ram()?
                .as_slice::<f32>()?
                .to_vec(),
        ),
        _ => None,
    })
}

fn depthwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = as_depthwise(model, node)? else {
            continue;
        };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

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

/// A FastQuantize node whose only consumer is a DequantizeLinearF32, and the fused op.
fn next_fake_quantize(model: &TypedModel) -> TractResult<Option<(usize, usize, FakeQuantize)>> {
    for (id, q) in inner_mini_ops::<FastQuantize>(model)? {
        let Some(succ) = model.single_succ(id)? else {
            continue;
        };
        if let Some(dq) = succ.op_as::<DequantizeLinearF32>() {
            return Ok(Some((
                id,
                succ.id,
                FakeQuantize::new(*q, dq.scale, dq.zero_point),
            )));
        }
    }
    Ok(None)
}

/// A FastQuantize → LookupTable → DequantizeLinearF32 chain (each the only reader of the
/// previous) and its fused op.
fn next_quantize_lookup(model: &TypedModel) -> TractResult<Option<(usize, usize, QuantizeLookup)>> {
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
            return Ok(Some((id, dq.id, op)));
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
fn drop_redundant_fake_quantize(model: &mut TypedModel) -> TractResult<usize> {
    let mut dropped = 0;
    while let Some(id) = next_redundant_fake_quantize(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes()[id].inputs[0])?;
        patch.shunt_outside(model, OutletId::new(id, 0), input)?;
        patch.apply(model)?;
        dropped += 1;
    }
    Ok(dropped)
}

fn fuse_quantize_lookup_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    fuse_chains(model, next_quantize_lookup)
}

fn fuse_quantize_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    fuse_chains(model, next_fake_quantize)
}

/// Replaces, one at a time, each chain `next` finds (from its first node's input to its last
/// node's output) by the element-wise op it gives.
fn fuse_chains<O: ElementWiseMiniOp>(
    model: &mut TypedModel,
    next: impl Fn(&TypedModel) -> TractResult<Option<(usize, usize, O)>>,
) -> TractResult<usize> {
    let mut fused = 0;
    while let Some((first, last, op)) = next(model)? {
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes()[first].inputs[0])?;
        let name = model.nodes()[last].name.clone();
        let out = patch.wire_node(name, ElementWiseOp(Box::new(op), None), &[input])?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), out)?;
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

/// Whether f32 `Linear` layers run on our op on this CPU.
pub(crate) fn own_f32_linear() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::linear::LinearF32::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn f32_linear(model: &mut TypedModel) -> TractResult<usize> {
    #[cfg(target_arch = "x86_64")]
    return super::linear::fuse(model);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = model;
        Ok(0)
    }
}

fn gelu_in_f32(model: &mut TypedModel) -> TractResult<usize> {
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
}
