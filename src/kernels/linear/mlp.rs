//! Two [`LinearF32`] in a row — a ConvNeXt MLP, `fc1` (with its bias and GELU) then `fc2` —
//! as one op, [`MlpF32`], whose hidden tensor never leaves the cache.
//!
//! Apart, `fc1` writes its hidden tensor (four times the block's channels: 4.8 MB per block of
//! convnext_tiny's first stage, 34 MB per inference) to memory and `fc2` reads it back, in
//! whatever layout tract left between them (channels first for a 1x1-convolution MLP, so
//! `fc1` transposes it on the way out). Here each block of positions goes through both: `fc1`'s
//! sums for the block, its epilogue in place, then `fc2` reads those rows where they lie,
//! channels last, as its input tiles.
//!
//! Each output is the same as from the two ops run one after the other, bit for bit: the hidden
//! values are the same sums with the same epilogue, and `fc2` sums them in the same order.
//!
//! With fewer blocks of positions than threads (a last stage's 7 × 7 positions on 2 threads),
//! the two run apart: there each op splits its weight panels between the threads, so that each
//! thread reads half the weights rather than all of them, and that is worth more than the
//! hidden tensor (a fifth of the weights' size there).
//!
//! ```text
//! use convnext_edge::kernels::linear::{LinearF32, MlpF32};
//! use tract_onnx::prelude::*;
//! use tract_onnx::tract_core::internal::{EvalContext, EvalOp};
//! if LinearF32::available() {
//!     // One position of two channels, through 2 → 3 (+ bias) → 1.
//!     let fc1 = LinearF32::channels_last(&tensor2(&[[1f32, 0.0, 1.0], [0.0, 1.0, 1.0]]))?
//!         .with_bias(&[0.0, 0.0, -1.0])?;
//!     let fc2 = LinearF32::channels_last(&tensor2(&[[1f32], [1.0], [1.0]]))?;
//!     let mlp = MlpF32::new(fc1, fc2)?;
//!     let y = mlp.eval(&EvalContext::out_of_plan(), tvec!(tensor2(&[[2f32, 3.0]]).into_tvalue()))?;
//!     assert_eq!(y[0].try_as_plain_ram()?.as_slice::<f32>()?, &[9.0]);
//! }
//! ```

use crate::kernels::threads::par_chunks_mut_with;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{output, LinearF32, Source, LANES, MIN_BLOCK_TILES, ROWS};
use crate::kernels::blocking::blocks_needed;
use crate::kernels::{threads, SharedOut};

/// `fc2(fc1(x))`, the hidden tensor kept per block (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpF32 {
    fc1: LinearF32,
    fc2: LinearF32,
}

impl MlpF32 {
    /// `fc2` after `fc1`: both over positions (not patches), `fc2` reading `fc1`'s channels.
    pub fn new(fc1: LinearF32, fc2: LinearF32) -> TractResult<MlpF32> {
        ensure!(
            MlpF32::chains(&fc1, &fc2),
            "MLP: {} → {} then {} → {}, expected the second to read the first's channels, \
             neither over patches",
            fc1.k(),
            fc1.weights.n,
            fc2.k(),
            fc2.weights.n
        );
        Ok(MlpF32 { fc1, fc2 })
    }

    /// Whether `fc2` after `fc1` makes an [`MlpF32`].
    pub fn chains(fc1: &LinearF32, fc2: &LinearF32) -> bool {
        fc1.patch == 1 && fc2.patch == 1 && fc1.weights.n == fc2.k()
    }

    /// `ys` from `xs`, `positions` rows of `fc1`'s k.
    fn run(&self, xs: &[f32], positions: usize, ys: &mut [f32]) -> TractResult<()> {
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        let (ld1, ld2) = (fc1.weights.ld(), fc2.weights.ld());
        let needed = blocks_needed(positions, ROWS, (ld1 + ld2) * 4, MIN_BLOCK_TILES).max(1);
        if needed < threads() {
            let mut hidden = vec![0f32; positions * fc1.weights.n];
            fc1.run(xs, positions, None, &mut hidden)?;
            return fc2.run(&hidden, positions, None, ys);
        }
        ensure!(
            xs.len() == positions * fc1.k() && ys.len() == positions * fc2.weights.n,
            "MLP: {} input values for {positions} positions of {}",
            xs.len(),
            fc1.k()
        );
        ensure!(LinearF32::available(), "Linear in f32 needs AVX-512");
        let block_rows = positions.div_ceil(ROWS).div_ceil(needed) * ROWS;
        let out = SharedOut::new(ys);
        let mut starts: Vec<usize> = (0..positions).step_by(block_rows).collect();
        let cost = positions * (fc1.k() * ld1 + fc2.k() * ld2);
        let scratch = || {
            let hidden = vec![0f32; block_rows * ld1];
            let sums = vec![0f32; block_rows * ld2];
            let tail = vec![0f32; ROWS * fc1.k()];
            (hidden, sums, tail, vec![0f32; block_rows])
        };
        par_chunks_mut_with(&mut starts, 1, cost, scratch, |s, _, chunk| {
            let (hidden, sums, tail, column) = s;
            for &p0 in chunk.iter() {
                let block = (p0, block_rows.min(positions - p0), positions);
                let sources = fc1.sources(xs, block, None, &mut [], tail);
                fc1.products(&sources, 0..ld1 / LANES, hidden);
                fc1.epilogue(hidden, block.1, 0..fc1.weights.n);
                let sources: Vec<Source> = hidden
                    .chunks(ROWS * ld1)
                    .take(block.1.div_ceil(ROWS))
                    .map(|tile| Source::rows(tile, ld1))
                    .collect();
                fc2.products(&sources, 0..ld2 / LANES, sums);
                fc2.finish(sums, block, 0..fc2.weights.n, column, &out);
            }
            Ok(())
        })
    }
}

impl Op for MlpF32 {
    fn name(&self) -> StaticName {
        "MlpF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok([self.fc1.info()?, self.fc2.info()?].concat())
    }

    op_as_typed_op!();
}

impl EvalOp for MlpF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        self.fc1.check_input(&x)?;
        let xs = x.try_as_plain_ram()?;
        let shape = self.fc2.out_shape(&self.fc1.out_shape(x.shape()));
        output(&shape, self.fc2.weights.n, |ys, positions| {
            self.run(xs.as_slice::<f32>()?, positions, ys)
        })
    }
}

impl TypedOp for MlpF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.fc1.check_fact(inputs[0])?;
        let shape = self.fc2.out_shape(&self.fc1.out_shape(&inputs[0].shape));
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let positions = inputs[0].shape.iter().product::<TDim>() / self.fc1.k();
        let per_position = self.fc1.k() * self.fc1.weights.n + self.fc2.k() * self.fc2.weights.n;
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            positions * per_position
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::super::tests::values;
    use super::super::{Geometry, OutAxis};
    use super::*;
    use crate::kernels::for_each_variant;
    use crate::kernels::threads::on_threads;
    use crate::kernels::Layout;

    fn weights(k: usize, n: usize, seed: u64) -> Tensor {
        Tensor::from_shape(&[k, n], &values(k * n, seed)).unwrap()
    }

    /// The geometry of a product over `[1, C, h, w]` (channels first) or `[1, h, w, C]`.
    fn geometry(input: Layout, output: Layout) -> Geometry {
        let k_axis = if input == Layout::ChannelsFirst { 1 } else { 3 };
        let spatial = |a: usize| OutAxis::Input(if k_axis == 1 { a + 1 } else { a });
        let out_axes = match output {
            Layout::ChannelsFirst => tvec!(OutAxis::One, OutAxis::Channels, spatial(1), spatial(2)),
            Layout::ChannelsLast => tvec!(OutAxis::One, spatial(1), spatial(2), OutAxis::Channels),
        };
        Geometry {
            rank: 4,
            k_axis,
            input,
            output,
            out_axes,
        }
    }

    fn eval(op: &dyn EvalOp, x: &Tensor, threads: usize) -> Tensor {
        let run = || op.eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()));
        let y = match threads {
            1 => run(),
            n => on_threads(n, run),
        };
        y.unwrap().remove(0).into_tensor()
    }

    for_each_variant! {
        /// The fused op against its two ops run one after the other, bit for bit: channels first
        /// to channels last and back (a `Linear` MLP), channels first throughout (a 1x1-convolution
        /// MLP) and channels last throughout; positions that leave a tail tile, channel counts off
        /// the panel's 32, one block or several, 1 and 2 threads (with a single block on 2 threads,
        /// the two run apart).
        fn matches_its_two_products_run_apart() {
            if !LinearF32::available() {
                eprintln!("skipped: MlpF32 needs AVX-512");
                return;
            }
            use Layout::{ChannelsFirst as Cf, ChannelsLast as Cl};
            let cases = [
                (Cf, Cl, Cf, 3, 8, 40, 5),
                (Cf, Cf, Cf, 5, 12, 33, 12),
                (Cl, Cl, Cl, 17, 20, 96, 20),
                (Cf, Cl, Cf, 28, 24, 96, 24),
                (Cl, Cf, Cl, 11, 7, 130, 9),
            ];
            for (seed, (input, hidden, out, side, k, n1, n2)) in cases.into_iter().enumerate() {
                let seed = seed as u64 * 8;
                let fc1 = LinearF32::new(&weights(k, n1, seed), geometry(input, hidden))
                    .unwrap()
                    .with_bias(&values(n1, seed + 1))
                    .unwrap()
                    .with_gelu()
                    .unwrap();
                let fc2 = LinearF32::new(&weights(n1, n2, seed + 2), geometry(hidden, out))
                    .unwrap()
                    .with_bias(&values(n2, seed + 3))
                    .unwrap()
                    .with_scale(&values(n2, seed + 4))
                    .unwrap();
                let mlp = MlpF32::new(fc1.clone(), fc2.clone()).unwrap();
                let shape = match input {
                    Cf => [1, k, side, side],
                    Cl => [1, side, side, k],
                };
                let x = Tensor::from_shape(&shape, &values(k * side * side, seed + 5)).unwrap();
                let fact = mlp.output_facts(&[&f32::fact(shape)]).unwrap().remove(0);
                for threads in [1, 2] {
                    let apart = eval(&fc2, &eval(&fc1, &x, threads), threads);
                    let fused = eval(&mlp, &x, threads);
                    assert_eq!(fact.shape.as_concrete().unwrap(), fused.shape());
                    assert_eq!(
                        apart, fused,
                        "{input:?} → {hidden:?} → {out:?}, {side}x{side}x{k} → {n1} → {n2}, \
                         {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_products_that_do_not_chain() {
        let fc1 = LinearF32::channels_last(&weights(4, 6, 1)).unwrap();
        let fc2 = LinearF32::channels_last(&weights(5, 2, 2)).unwrap();
        assert!(MlpF32::new(fc1.clone(), fc2).is_err());
        let patches = LinearF32::over_patches(&weights(8, 6, 3), 2).unwrap();
        assert!(MlpF32::new(patches, fc1).is_err());
    }
}
