//! ONNX `DynamicQuantizeLinear` (f32 to u8 with the input's own scale and zero point), on every
//! thread and vectorised: what dynamic-quantization files (onnxruntime's `quantize_dynamic`)
//! run before each product and depthwise convolution that is not fused with our integer ops.
//!
//! tract 0.23.9's op folds the range with ndarray and divides one value at a time on the
//! calling thread: 15 ms of a 64 ms convnext_tiny inference at 2 threads. This one computes the
//! same values, bit for bit: the range widened to include zero (NaN ignored),
//! `scale = (max − min) / 255`, `zero_point = round(−min / scale)` clamped to the byte range,
//! and each value `clamp(round(x / scale) + zero_point)`, rounding half to even and dividing
//! (a multiplication by `1 / scale` rounds some values to the other integer).
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`; the pass in
//! `model::passes` finds tract's op by its name, `DynamicQuantizeLinearU8` (tract-onnx keeps
//! its type private).

use crate::kernels::simd::multiversion;
use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Parts the range of a tensor is split into, so that the threads share its reading.
const RANGE_PARTS: usize = 32;

/// `y, scale, zero_point = DynamicQuantizeLinear(x)` for an f32 `x`, u8 `y`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DynamicQuantizeU8;

impl DynamicQuantizeU8 {
    /// The scale and zero point of `xs`, as `DynamicQuantizeLinear` defines them.
    pub fn parameters(xs: &[f32]) -> TractResult<(f32, u8)> {
        let mut parts = [[0f32; 2]; RANGE_PARTS];
        let len = xs.len();
        par_chunks_mut(&mut parts, 1, len, |first, parts| {
            for (j, range) in parts.iter_mut().enumerate() {
                let part = first + j;
                let xs = &xs[part * len / RANGE_PARTS..(part + 1) * len / RANGE_PARTS];
                crate::kernels::qconv::min_max(xs, range);
            }
            Ok(())
        })?;
        let min = parts
            .iter()
            .fold(0f32, |a, r| if r[0] < a { r[0] } else { a });
        let max = parts
            .iter()
            .fold(0f32, |a, r| if r[1] > a { r[1] } else { a });
        let scale = (max - min) / 255.0;
        // A NaN (all values zero: 0 / 0) casts to 0, as tract's `max(0).min(255)` gives 0.
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        Ok((scale, zero_point))
    }

    /// `ys` = `xs` quantized with `scale` and `zero_point`.
    pub fn quantize(xs: &[f32], scale: f32, zero_point: u8, ys: &mut [u8]) -> TractResult<()> {
        ensure!(
            xs.len() == ys.len(),
            "{} values into {}",
            xs.len(),
            ys.len()
        );
        let work = ys.len();
        par_chunks_mut(ys, 1, work, |first, ys| {
            quantize_u8(&xs[first..][..ys.len()], scale, zero_point, ys);
            Ok(())
        })
    }
}

multiversion! {
    /// `ys[i] = clamp(round_half_even(xs[i] / scale) + zero_point, 0, 255)`.
    fn quantize_u8(xs: &[f32], scale: f32, zero_point: u8, ys: &mut [u8]) {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            *y = (((x / scale).round_ties_even() as i32) + zero_point as i32).clamp(0, 255) as u8;
        }
    }
}

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "DynamicQuantizeU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let (scale, zero_point) = Self::parameters(xs)?;
        // SAFETY: u8 has no invalid bit patterns, and `quantize` writes every value.
        let mut y = unsafe { Tensor::uninitialized::<u8>(x.shape())? };
        Self::quantize(
            xs,
            scale,
            zero_point,
            y.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        )?;
        Ok(tvec!(
            y.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "{}: f32 input only, got {x:?}",
            self.name()
        );
        Ok(tvec!(
            u8::fact(x.shape.clone()),
            f32::fact([0usize; 0]),
            u8::fact([0usize; 0])
        ))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::threads::on_threads;

    /// tract 0.23.9's `DynamicQuantizeLinearU8`, restated one value at a time as tract writes it.
    #[allow(clippy::manual_clamp)]
    fn reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (mut min, mut max) = (0f32, 0f32);
        for &v in xs {
            if v < min {
                min = v;
            } else if v > max {
                max = v;
            }
        }
        let scale = (max - min) / 255.0;
        let zero_point = (-min / scale).round_ties_even().max(0.0).min(255.0) as u8;
        let ys = xs
            .iter()
            .map(|x| {
                (((x / scale).round_ties_even() as i32) + zero_point as i32).clamp(0, 255) as u8
            })
            .collect();
        (ys, scale, zero_point)
    }

    fn check(xs: &[f32]) {
        let (expected, scale, zero_point) = reference(xs);
        for threads in [1, 2, 3] {
            let (s, z) = on_threads(threads, || DynamicQuantizeU8::parameters(xs)).unwrap();
            assert_eq!(
                (s.to_bits(), z),
                (scale.to_bits(), zero_point),
                "{threads} threads"
            );
            let mut ys = vec![0u8; xs.len()];
            on_threads(threads, || DynamicQuantizeU8::quantize(xs, s, z, &mut ys)).unwrap();
            assert_eq!(ys, expected, "{threads} threads");
        }
    }

    crate::kernels::for_each_variant! {
        fn matches_tract_bit_for_bit() {
            let spread: Vec<f32> = (0..70_001).map(|i| ((i * 7919) % 20011) as f32 * 0.0137 - 91.3).collect();
            check(&spread);
            let positive: Vec<f32> = spread.iter().map(|v| v.abs() + 1.0).collect();
            check(&positive);
            let mut special = spread.clone();
            special[..6].copy_from_slice(&[f32::NAN, -0.0, 1e-30, f32::MAX, -1e38, 0.5]);
            check(&special);
            check(&vec![0.0; 40_000]);
            check(&[2.5, -1.0, 0.0]);
        }
    }
}
