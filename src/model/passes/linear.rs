//! f32 `Linear` layers onto our [`LinearF32`] (see `kernels::linear`), on the decluttered typed
//! model.
//!
//! ONNX `MatMul(x, W)` with a constant `[k, n]` `W` is a tract `EinSum` once decluttered, with
//! the transposes around a ConvNeXt MLP folded into its axes: `fc1` reads an NCHW tensor and
//! writes channels last, `fc2` the other way round. A 1x1 convolution (timm's `conv_mlp`,
//! convnext_atto) is an `EinSum` by its `[O, I]` = `[n, k]` weights once decluttered, NCHW in
//! and out. Such an `EinSum` becomes our op when:
//! - it is f32 and not quantized;
//! - the input's channels are its last axis, or only axes of size one come before them, so
//!   that the positions are one run of memory either way (likewise the output's channels);
//! - the positions keep their order from input to output.
//!
//! What follows is then fused into the op, each step only when the previous result has no
//! other reader and is not a model output:
//! - an `Add` of a constant with one value per output channel (the bias);
//! - our GELU (`GeluF32`);
//! - a `Mul` by such a constant (ConvNeXt's layer scale).
//!
//! Each fused step computes what the node it replaces computed, on the same f32 values.
//!
//! A `Conv` over non-overlapping `s × s` patches (kernel = stride = `s`, no padding, dilation
//! 1, one group, NCHW, batch 1: ConvNeXt's stem and downsampling layers) is the same product
//! over the patches, `k = C · s²`, with its bias; our op gathers each tile's patches once per
//! block (`LinearF32::over_patches`). tract ran these as an im2col copy and its own product,
//! neither split across threads.
//!
//! Last, an op whose output only another of ours reads (not a model output, not over patches,
//! the second's k the first's n: a ConvNeXt MLP's `fc1` with its GELU, then `fc2`) becomes the
//! two as one [`MlpF32`], which keeps the hidden tensor in cache. Its layout between them does
//! not matter: both enumerate the positions in the same order, and the fused op holds them
//! channels last.
//!
//! tract internals used (tract-core 0.23.9): `EinSum`'s fields and `AxesMapping`, `Conv` /
//! `PoolSpec` / `PaddingSpec` fields, `TypedBinOp` with the `Add`/`Mul` mini-ops,
//! `TypedModelPatch`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::kernels::gelu::GeluF32;
use crate::kernels::linear::{Geometry, LinearF32, MlpF32, OutAxis};
use crate::kernels::Layout;

use super::conv::{per_channel_bias, stride_one_pads};

/// Replaces every `Linear` the module docs describe; returns how many.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    if !LinearF32::available() {
        return Ok(0);
    }
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some((op, last)) = as_linear(model, id)?.or(as_patch_conv(model, id)?) else {
            continue;
        };
        replace(model, id, last, op)?;
        fused += 1;
    }
    Ok(fused + pair_mlps(model)?)
}

/// Replaces every `LinearF32` whose output only another `LinearF32` reads, over the same
/// positions, by the two as one [`MlpF32`]; returns how many.
fn pair_mlps(model: &mut TypedModel) -> TractResult<usize> {
    let mut paired = 0;
    for id in model.eval_order()? {
        let Some(fc1) = model.nodes()[id].op_as::<LinearF32>() else {
            continue;
        };
        let Some(next) = follower(model, id)? else {
            continue;
        };
        let Some(fc2) = next.op_as::<LinearF32>() else {
            continue;
        };
        if !MlpF32::chains(fc1, fc2) {
            continue;
        }
        let (op, last) = (MlpF32::new(fc1.clone(), fc2.clone())?, next.id);
        replace(model, id, last, op)?;
        paired += 1;
    }
    Ok(paired)
}

/// Nodes `first` to `last` (a chain, each the only reader of the one before) by `op` on
/// `first`'s input, under `last`'s name.
fn replace(model: &mut TypedModel, first: usize, last: usize, op: impl TypedOp) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, model.nodes()[first].inputs[0])?;
    let y = patch.wire_node(model.nodes()[last].name.clone(), op, &[x])?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), y)?;
    patch.apply(model)
}

/// Our op for the `EinSum` node `id` and what follows it, and the last node it replaces.
fn as_linear(model: &TypedModel, id: usize) -> TractResult<Option<(LinearF32, usize)>> {
    let node = &model.nodes()[id];
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let f32_dt = f32::datum_type();
    if einsum.q_params.is_some() || einsum.operating_dt != f32_dt || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    let (Some(xs), Some(ys)) = (
        x.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    if x.datum_type != f32_dt || w.datum_type() != f32_dt || w.rank() != 2 {
        return Ok(None);
    }
    let Some(Axes {
        k: k_axis,
        n: n_axis,
        out: out_axes,
        transposed,
    }) = geometry(einsum, xs, ys)
    else {
        return Ok(None);
    };
    let transposed_w;
    let w = if transposed {
        transposed_w = w.as_ref().clone().permute_axes(&[1, 0])?;
        &transposed_w
    } else {
        w.as_ref()
    };
    let (Some(input), Some(output)) = (layout(xs, k_axis), layout(ys, n_axis)) else {
        return Ok(None);
    };
    if xs[k_axis] != w.shape()[0] || ys[n_axis] != w.shape()[1] {
        return Ok(None);
    }
    let op = LinearF32::new(
        w,
        Geometry {
            rank: xs.len(),
            k_axis,
            input,
            output,
            out_axes,
        },
    )?;
    with_followers(model, op, id, ys, n_axis).map(Some)
}

/// Our op for the `Conv` node `id` when it runs over patches as the module docs describe, and
/// the last node it replaces.
fn as_patch_conv(model: &TypedModel, id: usize) -> TractResult<Option<(LinearF32, usize)>> {
    let node = &model.nodes()[id];
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let f32_dt = f32::datum_type();
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(xs), Some(ys)) = (
        x.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let side = spec.kernel_shape.first().copied().unwrap_or(0);
    if conv.q_params.is_some()
        || conv.group != 1
        || x.datum_type != f32_dt
        || spec.data_format != DataFormat::NCHW
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || spec.kernel_shape[1] != side
        || side < 2
        || spec
            .strides
            .as_ref()
            .is_none_or(|s| s.iter().any(|&d| d != side))
        || spec
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&d| d != 1))
        || stride_one_pads(spec) != Some([0; 4])
        || node.inputs.len() != 3
        || xs.len() != 4
        || xs[0] != 1
    {
        return Ok(None);
    }
    let (Some(w), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let (cout, k) = (ys[1], xs[1] * side * side);
    if w.datum_type() != f32_dt || w.shape() != [cout, xs[1], side, side] {
        return Ok(None);
    }
    let Some(bias) = per_channel_bias(&bias, cout)? else {
        return Ok(None);
    };
    let w = w
        .as_ref()
        .clone()
        .into_shape(&[cout, k])?
        .permute_axes(&[1, 0])?;
    let op = LinearF32::over_patches(&w, side)?.with_bias(&bias)?;
    if op.output_facts(&[x])?[0].shape.as_concrete() != Some(ys) {
        return Ok(None);
    }
    Ok(Some((op, id)))
}

/// `op` for node `id` with the bias, GELU and scale after it fused in, and the last node it
/// replaces.
fn with_followers(
    model: &TypedModel,
    mut op: LinearF32,
    id: usize,
    ys: &[usize],
    n_axis: usize,
) -> TractResult<(LinearF32, usize)> {
    let mut last = id;
    if let Some((next, bias)) = per_channel_follower::<Add>(model, last, ys, n_axis)? {
        op = op.with_bias(&bias)?;
        last = next;
    }
    if let Some(next) = follower(model, last)?.filter(|n| is_gelu(n)) {
        op = op.with_gelu()?;
        last = next.id;
    }
    if let Some((next, scale)) = per_channel_follower::<Mul>(model, last, ys, n_axis)? {
        op = op.with_scale(&scale)?;
        last = next;
    }
    Ok((op, last))
}

/// Where the product's axes are.
struct Axes {
    /// The input's channel axis.
    k: usize,
    /// The output's.
    n: usize,
    /// Where each output axis comes from.
    out: TVec<OutAxis>,
    /// Whether the weights are `[n, k]` (a 1x1 convolution's `[O, I]`) rather than `[k, n]`.
    transposed: bool,
}

/// The axes of `einsum`; `None` unless it is a product over the channels by a `[k, n]` or
/// `[n, k]` matrix with the positions in order.
fn geometry(einsum: &EinSum, xs: &[usize], ys: &[usize]) -> Option<Axes> {
    let (mut k, mut n) = (None, None);
    let mut out = tvec![OutAxis::One; ys.len()];
    let mut positions = vec![];
    for axis in einsum.axes.iter_all_axes() {
        match (&*axis.inputs[0], &*axis.inputs[1], &*axis.outputs[0]) {
            ([a], [w], []) => k = Some((*a, *w)),
            ([], [w], [b]) => {
                n = Some((*b, *w));
                out[*b] = OutAxis::Channels;
            }
            ([a], [], [b]) => {
                out[*b] = OutAxis::Input(*a);
                if xs[*a] > 1 {
                    positions.push((*a, *b));
                }
            }
            ([a], [], []) if xs[*a] == 1 => {}
            ([], [], [b]) if ys[*b] == 1 => {}
            _ => return None,
        }
    }
    positions.sort_unstable();
    let in_order = positions.windows(2).all(|p| p[0].1 < p[1].1);
    let ((k, k_w), (n, n_w)) = (k?, n?);
    (in_order && k_w != n_w).then_some(Axes {
        k,
        n,
        out,
        transposed: k_w == 1,
    })
}

/// How a tensor of `shape` holds its channels on `axis`: last, or first with only axes of size
/// one before them; `None` otherwise.
fn layout(shape: &[usize], axis: usize) -> Option<Layout> {
    if shape[axis + 1..].iter().all(|&d| d == 1) {
        Some(Layout::ChannelsLast)
    } else if shape[..axis].iter().all(|&d| d == 1) {
        Some(Layout::ChannelsFirst)
    } else {
        None
    }
}

/// The only reader of node `id`'s output, unless that output is also a model output.
fn follower(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    if model.output_outlets()?.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    model.single_succ(id)
}

fn is_gelu(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|ew| ew.0.is::<GeluF32>())
}

/// The node after `id` when it is the binary op `B` of that output and an f32 constant with
/// one value per channel on `n_axis` of `shape` (size one elsewhere), and those values.
fn per_channel_follower<B: BinMiniOp>(
    model: &TypedModel,
    id: usize,
    shape: &[usize],
    n_axis: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let Some(next) = follower(model, id)? else {
        return Ok(None);
    };
    let is_b = next
        .op_as::<TypedBinOp>()
        .is_some_and(|b| b.0.is::<B>() && b.1.is_none());
    if !is_b || next.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(other) = next.inputs.iter().find(|i| i.node != id) else {
        return Ok(None);
    };
    let Some(c) = model.outlet_fact(*other)?.konst.clone() else {
        return Ok(None);
    };
    let per_channel = c.rank() == shape.len()
        && c.shape()
            .iter()
            .enumerate()
            .all(|(i, &d)| d == if i == n_axis { shape[n_axis] } else { 1 });
    if !per_channel || c.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let values = c.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some((next.id, values)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    fn konst(shape: &[usize], seed: usize) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0)
            .collect();
        Tensor::from_shape(shape, &v).unwrap()
    }

    /// A ConvNeXt MLP as tract declutters it. `Linear` form: `fc1` NCHW in and channels last
    /// out, bias, GELU, `fc2` back to NCHW, bias, layer scale. 1x1-convolution form: the same,
    /// NCHW throughout with `[O, I]` weights. `wired_w`: `fc2`'s weights an input.
    fn mlp(conv_form: bool, wired_w: bool) -> TypedModel {
        let (fc1, fc2, w1, w2, b1) = if conv_form {
            ("NIHW,OI->OHW", "IHW,OI->NOHW", [12, 8], [8, 12], [12, 1, 1])
        } else {
            ("akbm,kn->bmn", "bmk,kn->anbm", [8, 12], [12, 8], [1, 1, 12])
        };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 8, 5, 5])).unwrap();
        let w2 = if wired_w {
            m.add_source("w2", f32::fact(w2)).unwrap()
        } else {
            m.add_const("w2", konst(&w2, 2)).unwrap()
        };
        let w1 = m.add_const("w1", konst(&w1, 1)).unwrap();
        let b1 = m.add_const("b1", konst(&b1, 3)).unwrap();
        let b2 = m.add_const("b2", konst(&[1, 8, 1, 1], 4)).unwrap();
        let s2 = m.add_const("s2", konst(&[1, 8, 1, 1], 5)).unwrap();
        let einsum = |f: &str| EinSum::new(f.parse().unwrap(), f32::datum_type());
        let bin = |op: Box<dyn BinMiniOp>| TypedBinOp(op, None);
        let y = m.wire_node("fc1", einsum(fc1), &[x, w1]).unwrap();
        let y = m
            .wire_node("add1", bin(Box::new(Add)), &[y[0], b1])
            .unwrap();
        let y = m
            .wire_node("gelu", ElementWiseOp(Box::new(GeluF32), None), &y)
            .unwrap();
        let y = m.wire_node("fc2", einsum(fc2), &[y[0], w2]).unwrap();
        let y = m
            .wire_node("add2", bin(Box::new(Add)), &[y[0], b2])
            .unwrap();
        let y = m
            .wire_node("mul2", bin(Box::new(Mul)), &[y[0], s2])
            .unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    fn run(m: TypedModel, inputs: TVec<TValue>) -> Vec<f32> {
        let y = m.into_runnable().unwrap().run(inputs).unwrap().remove(0);
        let y = y.try_as_plain_ram().unwrap();
        y.as_slice::<f32>().unwrap().to_vec()
    }

    /// Our ops' output against tract's: the same sums, rounded apart (FMA, summation order).
    fn assert_close(expected: &[f32], got: &[f32]) {
        assert_eq!(expected.len(), got.len());
        for (e, g) in expected.iter().zip(got) {
            assert!((e - g).abs() <= 1e-5 * e.abs().max(1.0), "{e} vs {g}");
        }
    }

    fn count(m: &TypedModel, name: &str) -> usize {
        let order = m.eval_order().unwrap();
        order
            .iter()
            .filter(|&&n| m.nodes()[n].op().name() == name)
            .count()
    }

    #[test]
    fn fuses_an_mlp_with_its_bias_gelu_and_scale() {
        if !LinearF32::available() {
            eprintln!("skipped: LinearF32 needs AVX-512");
            return;
        }
        for conv_form in [false, true] {
            let mut fused = mlp(conv_form, false);
            let products = |m: &TypedModel| count(m, "EinSum") + count(m, "Add") + count(m, "Mul");
            assert_eq!(products(&fused), 5);
            // Two products, then the two as one MLP.
            assert_eq!(fuse(&mut fused).unwrap(), 3);
            assert_eq!(
                (count(&fused, "LinearF32"), count(&fused, "MlpF32")),
                (0, 1)
            );
            assert_eq!(products(&fused), 0);
            let x = || tvec!(konst(&[1, 8, 5, 5], 9).into_tvalue());
            assert_close(&run(mlp(conv_form, false), x()), &run(fused, x()));
        }
    }

    /// A 2x2 stride-2 convolution (a downsampling layer) on 5x6 (the last row and column
    /// unread), then its `Add`: our op over patches against tract's own convolution.
    #[test]
    fn runs_a_convolution_over_patches() {
        if !LinearF32::available() {
            return;
        }
        let conv = || {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, 3, 5, 6])).unwrap();
            let w = m.add_const("w", konst(&[7, 3, 2, 2], 1)).unwrap();
            let b = m.add_const("b", konst(&[7], 2)).unwrap();
            let pool_spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(2, 2),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec!(2, 2)),
                input_channels: 3,
                output_channels: 7,
            };
            let op = Conv {
                pool_spec,
                kernel_fmt: KernelFormat::OIHW,
                group: 1,
                q_params: None,
            };
            let y = m.wire_node("conv", op, &[x, w, b]).unwrap();
            m.select_output_outlets(&y).unwrap();
            m
        };
        let mut fused = conv();
        assert_eq!(fuse(&mut fused).unwrap(), 1);
        assert_eq!((count(&fused, "LinearF32"), count(&fused, "Conv")), (1, 0));
        let x = || tvec!(konst(&[1, 3, 5, 6], 3).into_tvalue());
        let expected = run(conv(), x());
        assert_eq!(expected.len(), 7 * 2 * 3);
        assert_close(&expected, &run(fused, x()));
    }

    /// With the hidden tensor a model output as well, the two products stay apart.
    #[test]
    fn keeps_an_mlp_apart_when_its_hidden_tensor_is_read() {
        if !LinearF32::available() {
            return;
        }
        let mut m = mlp(false, false);
        let hidden = OutletId::new(m.node_by_name("gelu").unwrap().id, 0);
        let y = m.output_outlets().unwrap()[0];
        m.select_output_outlets(&[hidden, y]).unwrap();
        fuse(&mut m).unwrap();
        assert_eq!((count(&m, "LinearF32"), count(&m, "MlpF32")), (2, 0));
    }

    #[test]
    fn leaves_a_product_by_wired_weights() {
        if !LinearF32::available() {
            return;
        }
        let mut m = mlp(false, true);
        assert_eq!(fuse(&mut m).unwrap(), 1);
        assert_eq!(count(&m, "EinSum"), 1);
    }
}
