//! Graph passes on the decluttered typed model, before tract's own optimisation.
//!
//! - **Fast activation quantization**: every `QuantizeLinearU8/I8` (what QDQ models' activation
//!   QuantizeLinear nodes become) is swapped for [`FastQuantize`], the same function computed
//!   branch-free (see `kernels::quantize`). Safe because the two are bit-identical on every
//!   finite input; the graph's shape and types do not change.
//!
//! - **Dynamic quantization**: tract's `DynamicQuantizeLinearU8` becomes our
//!   [`DynamicQuantizeU8`] (see `kernels::dynamic_quantize`): the same outputs bit for bit,
//!   vectorised and on every thread.
//!
//! - **Fused fake quantization**: such a quantize whose only consumer is a DequantizeLinear
//!   (the activation QDQ pairs of QDQ models, once tract has run the rest in float) becomes one
//!   in-place f32 op, [`FakeQuantize`]: the same arithmetic without the 8-bit intermediate
//!   tensor and its second pass. Reshapes between the two (the `Gemm` reshapes of onnxruntime's
//!   QOperator files) move after the fused op. Skipped when the quantized tensor is a model
//!   output or has other consumers.
//!
//! - **Quantize → lookup table → dequantize**: tract turns `DQ → element-wise → Q` stretches
//!   of QDQ graphs into a byte lookup table between the quantize and the next dequantize; the
//!   three become one in-place op, `y = table[quantize(x)]` with the dequantized table
//!   precomputed ([`QuantizeLookup`]): the same values, one pass instead of three. A table that
//!   maps every byte to itself (where a dequantize and a quantize of the same steps met, around
//!   a `Transpose` of onnxruntime's documented flow) is dropped first, so that its quantize and
//!   dequantize fuse into the arithmetic [`FakeQuantize`] instead of a table lookup per value.
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
//!   roundings, one value at a time; on f32, faster than tract's.
//!
//! - **Linear layers in f32**: an f32 product by a constant matrix, with the bias, GELU and layer
//!   scale that follow it, becomes our `LinearF32` (`kernels::linear`) on x86 CPUs with
//!   AVX-512; two in a row (an MLP), one `MlpF32` that keeps the hidden tensor in cache (see
//!   `passes/linear.rs`).
//!
//! After tract's optimisation:
//!
//! - **Element-wise products and sums**: an f32 `Mul` or `Add` by one constant per channel
//!   (channels last), or of two tensors of one shape (the residual adds), becomes our
//!   [`ChannelwiseF32`] or [`PairwiseF32`] (see `kernels::binary`): the same values, on every
//!   thread (tract's own ops run on the calling thread alone).
//!
//! - **Channels moved last**: tract's `MoveAxis` of an f32 `[N, C, H, W]` tensor to
//!   `[N, H, W, C]` becomes our [`ChannelsLastF32`] (see `kernels::transpose`), on every thread.
//!
//! - **Packed integer weights**: each [`QPointwiseConv`] packs its weights for this CPU's
//!   kernel and drops its unpacked copy, which it kept until here so that the layout changes of
//!   tract's optimisation could reorder them. With the plan built from a model the loader hands
//!   over whole (a fixed batch), the weights are then in memory once.
//!
//! tract internals used: `ElementWiseOp`, `TypedBinOp`, `QuantizeLinearU8/I8` field layout, `Conv` /
//! `PoolSpec` / `PaddingSpec` / `KernelFormat` fields, `TypedModelPatch::replace_single_op`,
//! `GeluExact` (tract-core 0.23.9).

mod binary;
mod casts;
mod conv;
mod depthwise;
mod gelu;
#[cfg(target_arch = "x86_64")]
mod linear;
mod quantize;
mod transpose;

use tract_onnx::prelude::*;

use crate::kernels::qconv::QPointwiseConv;

/// Applies every pass; returns how many nodes they changed.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    Ok(casts::fold_constant_casts(model)?
        + quantize::fast_quantize(model)?
        + quantize::fast_dynamic_quantize(model)?
        + quantize::drop_identity_lookups(model)?
        + quantize::fuse_quantize_lookup_dequantize(model)?
        + quantize::fuse_quantize_dequantize(model)?
        + quantize::drop_redundant_fake_quantize(model)?
        + depthwise::depthwise(model)?
        + gelu::gelu_in_f32(model)?
        + f32_linear(model)?)
}

/// The passes on the optimised model, before it is planned: where tract's optimisation left an
/// op on a slow path it could not see.
pub fn after_optimisation(model: &mut TypedModel) -> TractResult<usize> {
    let swapped = binary::binary(model)? + transpose::channels_last(model)?;
    pack_integer_weights(model)?;
    Ok(swapped)
}

/// Packs each integer product's weights for this CPU and drops the op's own copy of them: the
/// plan then holds the model's weights once. Before this, the ops keep them unpacked, so that
/// the layout changes of tract's optimisation can reorder them.
fn pack_integer_weights(model: &mut TypedModel) -> TractResult<()> {
    for node in &mut model.nodes {
        if let Some(op) = node.op_as::<QPointwiseConv>() {
            node.op = Box::new(op.packed()?);
        }
    }
    Ok(())
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
    return linear::fuse(model);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = model;
        Ok(0)
    }
}
