//! Our own compute kernels, wrapped as tract ops, for the spots where tract 0.23.9's kernels are
//! the bottleneck on ConvNeXt (see `convnext-edge profile`). Each is tested against the scalar
//! definition it replaces.

pub mod binary;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
pub(crate) mod blocking;
pub(crate) mod cpu;
pub mod depthwise;
pub mod dynamic_quantize;
pub mod gelu;
mod half_float;
pub mod layer_norm;
#[cfg(target_arch = "x86_64")]
pub mod linear;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "arm")]
mod neon32;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
pub mod product;
pub mod qconv;
pub mod quantize;
pub(crate) mod simd;
pub mod threads;
pub mod transpose;
#[cfg(target_arch = "x86_64")]
mod vbmi;

use std::borrow::Cow;
use std::marker::PhantomData;

use half::f16;
use tract_onnx::prelude::*;

/// Deterministic i8 values spread over the whole range, for the integer kernels' tests on every
/// architecture.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<i8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8 as i8)
        .collect()
}

/// Defines a test that runs its body once for each CPU variant this machine supports
/// ([`cpu::variants`]): every SIMD level our kernels dispatch to, down to the portable code.
/// The variant is printed before each run, so a failure names it.
#[cfg(test)]
macro_rules! for_each_variant {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            for (variant, bits) in $crate::kernels::cpu::variants() {
                eprintln!("CPU variant: {variant}");
                $crate::kernels::cpu::with_variant(bits, || $body);
            }
        }
    };
}
#[cfg(test)]
pub(crate) use for_each_variant;

/// Where the channels are: `[N, C, …]` (NCHW; a 1x1 conv) or `[…, C]` (NHWC; a MatMul by a
/// constant, PyTorch's `Linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[N, C, …]`.
    ChannelsFirst,
    /// `[…, C]`.
    ChannelsLast,
}

/// A block of rows of integer sums, row `i` at `data[i · ld..][..width]`: what a product hands
/// its epilogue.
#[derive(Clone, Copy)]
pub struct Sums<'a> {
    data: &'a [i32],
    ld: usize,
    width: usize,
}

impl<'a> Sums<'a> {
    pub(crate) fn new(data: &'a [i32], ld: usize, width: usize) -> Sums<'a> {
        Sums { data, ld, width }
    }

    /// Row `i` of the block.
    pub fn row(&self, i: usize) -> &'a [i32] {
        &self.data[i * self.ld..][..self.width]
    }
}

pub(crate) use threads::threads;

/// The geometry of a convolution over non-overlapping patches (kernel = stride = `side`, no
/// padding: ConvNeXt's stem and downsampling): their side and the input plane. The integer
/// (`qconv`) and f32 (`linear`) products each gather them their own way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patches {
    pub(crate) side: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
}

impl Patches {
    pub(crate) fn out_hw(self) -> (usize, usize) {
        (self.h / self.side, self.w / self.side)
    }

    /// Output positions: whole patches (a partial last row or column is dropped, as the
    /// convolution does).
    pub(crate) fn positions(self) -> usize {
        let (oh, ow) = self.out_hw();
        oh * ow
    }
}

/// An output buffer that the plan's threads write in disjoint ranges (columns of a
/// channels-first tensor, blocks of a product), which `par_chunks_mut` cannot hand out as
/// slices.
/// It holds the exclusive borrow of the buffer for as long as it lives.
pub(crate) struct SharedOut<'a>(*mut f32, usize, PhantomData<&'a mut [f32]>);

// SAFETY: the threads write disjoint ranges (see `slice`'s callers).
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub(crate) fn new(ys: &'a mut [f32]) -> SharedOut<'a> {
        SharedOut(ys.as_mut_ptr(), ys.len(), PhantomData)
    }

    /// `at..at + len`.
    ///
    /// # Safety
    /// No other thread reads or writes that range while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
        unsafe {
            assert!(at + len <= self.1, "write past the output");
            std::slice::from_raw_parts_mut(self.0.add(at), len)
        }
    }
}

/// `f` over `xs` in chunks split across the plan's threads: the element-wise passes, each a
/// few hundred microseconds on convnext_tiny's first stage.
pub(crate) fn par_elements<T: Send>(
    xs: &mut [T],
    f: impl Fn(&mut [T]) + Sync + Send,
) -> TractResult<()> {
    let len = xs.len();
    threads::par_chunks_mut(xs, 1, len, |_, chunk| {
        f(chunk);
        Ok(())
    })
}

/// The f32 tensor a float kernel computes on: `x` itself when f32, otherwise widened.
///
/// f16 goes through [`half_float::widen_into`] (FCVTL on aarch64, F16C on x86): tract's `cast_to`
/// converts one value per call.
pub(crate) fn widen(x: &Tensor) -> TractResult<Cow<'_, Tensor>> {
    if x.datum_type() != f16::datum_type() {
        return x.cast_to::<f32>();
    }
    // SAFETY: f32 has no invalid bit patterns, and the conversion writes every element.
    let mut out = unsafe { Tensor::uninitialized::<f32>(x.shape())? };
    let src = x.try_as_plain_ram()?;
    half_float::widen_into(
        src.as_slice::<f16>()?,
        out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
    );
    Ok(Cow::Owned(out))
}

/// An f32 result as `dt`, the inverse of [`widen`] (round to nearest even for f16).
pub(crate) fn narrow(x: Tensor, dt: DatumType) -> TractResult<Tensor> {
    if dt == f32::datum_type() {
        return Ok(x);
    }
    if dt != f16::datum_type() {
        return Ok(x.cast_to_dt(dt)?.into_owned());
    }
    // SAFETY: as in `widen`.
    let mut out = unsafe { Tensor::uninitialized::<f16>(x.shape())? };
    let src = x.try_as_plain_ram()?;
    half_float::narrow_into(
        src.as_slice::<f32>()?,
        out.try_as_plain_ram_mut()?.as_slice_mut::<f16>()?,
    );
    Ok(out)
}
