//! An f32 `[N, C, H, W]` tensor with its channels moved last, `[N, H, W, C]`: where a
//! channels-first stem hands over to the channels-last blocks (tract's `MoveAxis` after
//! convnext_tiny's stem in onnxruntime's documented flow). tract's op runs on the calling
//! thread alone, since our kernels have their own workers (`kernels::threads`); this one splits
//! the output positions across them.
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`.

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// `y[n, h, w, c] = x[n, c, h, w]`, f32.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelsLastF32;

impl ChannelsLastF32 {
    /// `ys` (images of `[positions, c]`) from `xs` (images of `[c, positions]`).
    pub fn apply(xs: &[f32], c: usize, positions: usize, ys: &mut [f32]) -> TractResult<()> {
        let image = c * positions;
        ensure!(
            xs.len() == ys.len() && image > 0 && xs.len().is_multiple_of(image),
            "{} values for images of {c} channels by {positions} positions",
            xs.len()
        );
        par_chunks_mut(ys, c, ys.len(), |first, rows| {
            // One image at a time; each channel's positions are read in order.
            let (mut r, mut rest) = (first, rows);
            while !rest.is_empty() {
                let (n, p0) = (r / positions, r % positions);
                let count = (positions - p0).min(rest.len() / c);
                let (now, later) = rest.split_at_mut(count * c);
                let x = &xs[n * image..][..image];
                for (ch, plane) in x.chunks_exact(positions).enumerate() {
                    for (y, &v) in now.iter_mut().skip(ch).step_by(c).zip(&plane[p0..]) {
                        *y = v;
                    }
                }
                (r, rest) = (r + count, later);
            }
            Ok(())
        })
    }
}

impl Op for ChannelsLastF32 {
    fn name(&self) -> StaticName {
        "ChannelsLastF32".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelsLastF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(
            shape.len() == 4,
            "{}: input of shape {shape:?}",
            self.name()
        );
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        // SAFETY: f32 has no invalid bit patterns, and `apply` writes every value.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[n, h, w, c])? };
        if y.len() > 0 {
            let xs = x.try_as_plain_ram()?;
            Self::apply(
                xs.as_slice::<f32>()?,
                c,
                h * w,
                y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
            )?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ChannelsLastF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type() && x.rank() == 4,
            "{}: f32 [N, C, H, W] only, got {x:?}",
            self.name()
        );
        let s = &x.shape;
        Ok(tvec!(f32::fact([
            s[0].clone(),
            s[2].clone(),
            s[3].clone(),
            s[1].clone()
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_move_last_on_any_number_of_threads() {
        let (n, c, positions) = (2, 7, 3001);
        let xs: Vec<f32> = (0..n * c * positions).map(|i| i as f32).collect();
        let mut expected = vec![];
        for image in xs.chunks(c * positions) {
            for p in 0..positions {
                expected.extend((0..c).map(|ch| image[ch * positions + p]));
            }
        }
        for threads in [1, 2, 3] {
            let mut ys = vec![0f32; xs.len()];
            crate::kernels::threads::on_threads(threads, || {
                ChannelsLastF32::apply(&xs, c, positions, &mut ys)
            })
            .unwrap();
            assert_eq!(ys, expected, "{threads} threads");
        }
        assert!(ChannelsLastF32::apply(&xs, 5, positions, &mut vec![0f32; xs.len()]).is_err());
    }
}
