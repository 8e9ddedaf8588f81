//! f32 tensors multiplied or added element by element, on every thread: by one constant per
//! channel, channels last ([`ChannelwiseF32`], ConvNeXt's layer scale where a quantization tool
//! left it a `Mul` of its own), or by another tensor of the same shape ([`PairwiseF32`], the
//! residual add of every block).
//!
//! tract 0.23.9 runs such a `Mul` on its fast kernel (`OptBinUnicast`) only when the channel
//! count passes an alignment check that compares the vector width in bytes with a count of
//! elements: on AVX-512, a multiple of 64 channels. convnext_tiny's 96 and every
//! convnext_atto width (40 to 320) fail it and take tract's generic broadcasting loop. And
//! tract's ops run on the calling thread alone since our kernels have their own workers
//! (`kernels::threads`): its fast kernel too. These ops compute the same values, in place,
//! split across the workers.
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`.

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Mul,
    Add,
}

impl Arith {
    /// `x[i] ∘= v[i]` over the shorter of the two.
    fn apply(self, x: &mut [f32], v: &[f32]) {
        match self {
            Arith::Mul => x.iter_mut().zip(v).for_each(|(x, v)| *x *= v),
            Arith::Add => x.iter_mut().zip(v).for_each(|(x, v)| *x += v),
        }
    }
}

/// `y[.., c] = x[.., c] ∘ v[c]` for an f32 `x` (input 0) and `v` (input 1, `[C]` values, `C`
/// the last axis of `x`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelwiseF32 {
    pub op: Arith,
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
                self.op.apply(row, v);
            }
            Ok(())
        })
    }
}

/// `y = a ∘ b` for two f32 tensors of the same shape, in `a`'s storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairwiseF32 {
    pub op: Arith,
}

impl PairwiseF32 {
    /// `a ∘= b`.
    pub fn apply(&self, a: &mut [f32], b: &[f32]) -> TractResult<()> {
        ensure!(a.len() == b.len(), "{} values with {}", a.len(), b.len());
        let work = a.len();
        par_chunks_mut(a, 1, work, |first, chunk| {
            self.op.apply(chunk, &b[first..]);
            Ok(())
        })
    }
}

impl Op for PairwiseF32 {
    fn name(&self) -> StaticName {
        format!("{:?}F32", self.op).into()
    }

    op_as_typed_op!();
}

impl EvalOp for PairwiseF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let mut a = a.into_tensor();
        let b = b.try_as_plain_ram()?;
        self.apply(
            a.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
            b.as_slice::<f32>()?,
        )?;
        Ok(tvec!(a.into_tvalue()))
    }
}

impl TypedOp for PairwiseF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        ensure!(
            a.datum_type == f32::datum_type() && b.datum_type == f32::datum_type(),
            "{}: f32 only, got {a:?} and {b:?}",
            self.name()
        );
        ensure!(
            a.shape == b.shape,
            "{}: {a:?} and {b:?} differ in shape",
            self.name()
        );
        Ok(tvec!(a.datum_type.fact(a.shape.clone())))
    }

    as_op!();
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
        let op = ChannelwiseF32 { op: Arith::Mul };
        op.apply(&mut x, &[1.0, -2.0, 0.5]).unwrap();
        assert_eq!(x, [0., -2., 1., 3., -8., 2.5, 6., -14., 4., 9., -20., 5.5]);
        let add = ChannelwiseF32 { op: Arith::Add };
        add.apply(&mut x, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(x[..3], [1., 0., 4.]);
        assert!(op.apply(&mut x, &[1.0; 5]).is_err());
    }

    #[test]
    fn pairs_on_any_number_of_threads() {
        let b: Vec<f32> = (0..100_000).map(|i| (i % 977) as f32 * 0.5 - 3.0).collect();
        for op in [Arith::Mul, Arith::Add] {
            for threads in [1, 2, 3] {
                let mut a: Vec<f32> = (0..100_000).map(|i| (i % 313) as f32 * 0.25).collect();
                let expected: Vec<f32> = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| if op == Arith::Mul { a * b } else { a + b })
                    .collect();
                crate::kernels::threads::on_threads(threads, || {
                    PairwiseF32 { op }.apply(&mut a, &b)
                })
                .unwrap();
                assert_eq!(a, expected, "{op:?}, {threads} threads");
            }
        }
        assert!(PairwiseF32 { op: Arith::Add }
            .apply(&mut [0.0; 3], &[0.0; 2])
            .is_err());
    }
}
