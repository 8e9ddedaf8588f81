//! An f32 tensor times (or plus) one constant per channel, channels last: ConvNeXt's layer
//! scale where a quantization tool left it a `Mul` of its own (onnxruntime's documented flow
//! quantizes its output).
//!
//! tract 0.23.9 runs such a `Mul` on its fast kernel (`OptBinUnicast`) only when the channel
//! count passes an alignment check that compares the vector width in bytes with a count of
//! elements: on AVX-512, a multiple of 64 channels. convnext_tiny's 96 and every
//! convnext_atto width (40 to 320) fail it and take tract's generic broadcasting loop, which is
//! not split across threads either: a tenth of convnext_atto's time in such files. This op
//! computes the same products, rows across the plan's threads, in place.
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`.

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// The operation with each row's channel values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channelwise {
    Mul,
    Add,
}

/// `y[.., c] = x[.., c] ∘ v[c]` for an f32 `x` (input 0) and `v` (input 1, `[C]` values, `C`
/// the last axis of `x`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelwiseF32 {
    pub op: Channelwise,
}

impl ChannelwiseF32 {
    /// `x` (rows of `v.len()` values) combined with `v` in place.
    pub fn apply(&self, x: &mut [f32], v: &[f32]) -> TractResult<()> {
        ensure!(
            !v.is_empty() && x.len().is_multiple_of(v.len()),
            "{} values per row for a tensor of {}",
            v.len(),
            x.len()
        );
        let work = x.len();
        par_chunks_mut(x, v.len(), work, |_, chunk| {
            for row in chunk.chunks_exact_mut(v.len()) {
                match self.op {
                    Channelwise::Mul => row.iter_mut().zip(v).for_each(|(x, v)| *x *= v),
                    Channelwise::Add => row.iter_mut().zip(v).for_each(|(x, v)| *x += v),
                }
            }
            Ok(())
        })
    }
}

impl Op for ChannelwiseF32 {
    fn name(&self) -> StaticName {
        format!("Channel{:?}F32", self.op).into()
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelwiseF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, v) = args_2!(inputs);
        let mut x = x.into_tensor();
        let v = v.try_as_plain_ram()?;
        self.apply(
            x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
            v.as_slice::<f32>()?,
        )?;
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for ChannelwiseF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, v) = (inputs[0], inputs[1]);
        ensure!(
            x.datum_type == f32::datum_type() && v.datum_type == f32::datum_type(),
            "{}: f32 only, got {x:?} and {v:?}",
            self.name()
        );
        ensure!(
            v.rank() == 1 && x.shape.last() == v.shape.last(),
            "{}: {v:?} is not one value per channel of {x:?}",
            self.name()
        );
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_gets_its_own_value() {
        let mut x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let op = ChannelwiseF32 {
            op: Channelwise::Mul,
        };
        op.apply(&mut x, &[1.0, -2.0, 0.5]).unwrap();
        assert_eq!(x, [0., -2., 1., 3., -8., 2.5, 6., -14., 4., 9., -20., 5.5]);
        let add = ChannelwiseF32 {
            op: Channelwise::Add,
        };
        add.apply(&mut x, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(x[..3], [1., 0., 4.]);
        assert!(op.apply(&mut x, &[1.0; 5]).is_err());
    }
}
