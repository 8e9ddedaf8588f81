//! LayerNorm over one axis, f32: `y = (x − mean) / √(var + ε) · γ + β`, mean and variance over
//! that axis (variance as the mean of squared deviations, the two-pass form tract and ONNX's
//! function body use).
//!
//! The arithmetic is f32 whatever the tensor type: an f16 model (or an f32 model run in f16)
//! keeps its normalisation in f32, converting on the way in and out.
//!
//! tract 0.23.9 expands ONNX `LayerNormalization` into a dozen reduce and broadcast ops; in
//! ConvNeXt the normalised axis is the channel axis of an NCHW tensor once tract has moved the
//! surrounding transposes away, so each of those ops walks the tensor with a stride of H·W
//! (~10x onnxruntime's time). This op does it in three streaming passes whichever axis it is:
//! along the axis when it is the innermost one, otherwise across it, vectorising over the
//! positions that share a channel (for NCHW: sum the C planes into one mean plane, then the
//! squared deviations into one variance plane, then write every plane). The loops are compiled
//! for AVX-512, AVX2 or the baseline at run time (`multiversion!` in `kernels::simd`).
//!
//! Both forms are split across the plan's threads: rows, or across the axis ranges of at most
//! 256 positions (so that their planes stay in L2 over the three passes). Two threads do not
//! halve the time: each thread reads the channels that the other thread's share of the
//! depthwise convolution before them wrote.
//!
//! It implements `axes_mapping` / `change_axes`, so tract's axis-change passes move transposes
//! through it as they do through their own normalisation ops.
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`, `AxesMapping`, `Axis`,
//! `AxisChangeConsequence`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::Axis;
use tract_onnx::tract_core::internal::*;

use crate::kernels::threads::par_chunks_mut;

use std::ops::Range;

use super::simd::multiversion;
use super::SharedOut;

/// LayerNorm over `axis` of an f32 tensor; inputs `x`, `γ` and `β` (`[dim(axis)]` each).
#[derive(Debug, Clone, PartialEq, Hash)]
pub struct LayerNorm {
    pub axis: usize,
    epsilon_bits: u32,
}

impl Eq for LayerNorm {}

impl LayerNorm {
    pub fn new(axis: usize, epsilon: f32) -> LayerNorm {
        LayerNorm {
            axis,
            epsilon_bits: epsilon.to_bits(),
        }
    }

    fn epsilon(&self) -> f32 {
        f32::from_bits(self.epsilon_bits)
    }
}

/// `Σ f(v)` with 16 partial sums (so that the loop vectorises; float addition is not
/// reassociated by the compiler), then those summed.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| f(*v)).sum::<f32>()
}

multiversion! {
    /// Rows of `c` contiguous values (the normalised axis innermost).
    fn rows(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let c = gamma.len();
        for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            let mean = lane_sum(xr, |v| v) / c as f32;
            let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / c as f32;
            let r = 1.0 / (var + eps).sqrt();
            for (((o, v), g), b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                *o = (v - mean) * r * g + b;
            }
        }
    }
}

multiversion! {
    /// Columns `cols` of one `c × inner` block `x` (at `y.1` in the output `y.0`) normalised
    /// across its rows, vectorised along the columns: sixteen at a time, their sums kept in
    /// registers through the rows (one load and one add per row and vector in the first pass),
    /// then the rest one at a time.
    fn planes(
        x: &[f32],
        y: (&SharedOut, usize),
        cols: Range<usize>,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let whole = cols.start + cols.len() / 16 * 16;
        for c0 in (cols.start..whole).step_by(16) {
            columns::<16>(x, y, c0, gamma, beta, eps);
        }
        for c0 in whole..cols.end {
            columns::<1>(x, y, c0, gamma, beta, eps);
        }
    }
}

/// Columns `c0..c0 + W` of [`planes`]' block: the mean, then the mean of squared deviations,
/// then the output, each over the rows in order. Written with row indices: the iterator form
/// kept its state on the stack and added a dozen instructions to each row.
#[inline(always)]
fn columns<const W: usize>(
    x: &[f32],
    (y, at): (&SharedOut, usize),
    c0: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let c = gamma.len().min(beta.len());
    let inner = x.len() / gamma.len();
    let n = 1.0 / gamma.len() as f32;
    let row = |k: usize| -> &[f32; W] { x[k * inner + c0..][..W].try_into().expect("W values") };
    let mut mean = [0f32; W];
    for k in 0..c {
        let v = row(k);
        for j in 0..W {
            mean[j] += v[j];
        }
    }
    let mean = mean.map(|m| m * n);
    let mut rstd = [0f32; W];
    for k in 0..c {
        let v = row(k);
        for j in 0..W {
            rstd[j] += (v[j] - mean[j]) * (v[j] - mean[j]);
        }
    }
    let rstd = rstd.map(|s| 1.0 / (s * n + eps).sqrt());
    for k in 0..c {
        let (v, g, b) = (row(k), gamma[k], beta[k]);
        // Computed in registers, then stored: the compiler cannot tell that the output does
        // not overlap the input, and would otherwise check at every row.
        let values: [f32; W] = std::array::from_fn(|j| (v[j] - mean[j]) * rstd[j] * g + b);
        // SAFETY: this call alone writes these columns of this block.
        unsafe { y.slice(at + k * inner + c0, W) }.copy_from_slice(&values);
    }
}

/// Columns of a channels-first block normalised together: split across the plan's threads,
/// and at most this many, so that their rows stay in L2 across the three passes over them
/// (a whole plane of convnext_tiny's first stage is 1.2 MB).
const PLANE_COLUMNS: usize = 256;

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis {}, epsilon {}",
            self.axis,
            self.epsilon()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, gamma, beta) = args_3!(inputs);
        let shape = x.shape();
        ensure!(
            self.axis < shape.len(),
            "LayerNorm: axis {} of {shape:?}",
            self.axis
        );
        let c = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        let gamma = gamma.cast_to::<f32>()?;
        let beta = beta.cast_to::<f32>()?;
        let (g, b) = (gamma.try_as_plain_ram()?, beta.try_as_plain_ram()?);
        let (g, b) = (g.as_slice::<f32>()?, b.as_slice::<f32>()?);
        ensure!(
            g.len() == c && b.len() == c,
            "LayerNorm: scale and bias must have {c} values, got {} and {}",
            g.len(),
            b.len()
        );
        let dt = x.datum_type();
        let x = super::widen(&x)?;
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        // SAFETY: f32 has no invalid bit patterns, and every row or plane is normalised into it.
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        if !xs.is_empty() {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            if inner == 1 {
                // Rows are independent: split across the plan's threads.
                par_chunks_mut(ys, c, xs.len(), |first, chunk| {
                    rows(&xs[first * c..][..chunk.len()], chunk, g, b, self.epsilon());
                    Ok(())
                })?;
            } else {
                // Columns are independent: split across the plan's threads.
                let step = inner
                    .div_ceil(super::threads())
                    .min(PLANE_COLUMNS)
                    .next_multiple_of(16);
                let mut work: Vec<(usize, usize)> = (0..xs.len())
                    .step_by(c * inner)
                    .flat_map(|at| (0..inner).step_by(step).map(move |c0| (at, c0)))
                    .collect();
                let y = SharedOut::new(ys);
                par_chunks_mut(&mut work, 1, xs.len(), |_, chunk| {
                    for &(at, c0) in chunk.iter() {
                        let cols = c0..inner.min(c0 + step);
                        let block = &xs[at..at + c * inner];
                        planes(block, (&y, at), cols, g, b, self.epsilon());
                    }
                    Ok(())
                })?;
            }
        }
        Ok(tvec!(super::narrow(out, dt)?.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type.is_float() && self.axis < x.rank(),
            "LayerNorm: input {x:?}, axis {}",
            self.axis
        );
        for p in &inputs[1..] {
            ensure!(
                p.rank() == 1,
                "LayerNorm: scale and bias must be 1-D, got {p:?}"
            );
        }
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        _outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        let axes = (0..inputs[0].rank())
            .zip('a'..)
            .map(|(i, repr)| {
                let axis = Axis::new(repr, 3, 1).input(0, i).output(0, i);
                if i == self.axis {
                    axis.input(1, 0).input(2, 0)
                } else {
                    axis
                }
            })
            .collect::<Vec<_>>();
        AxesMapping::new(3, 1, axes)
    }

    fn change_axes(
        &self,
        _model: &TypedModel,
        _node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        if !matches!(io, InOut::In(0) | InOut::Out(0)) {
            return Ok(None);
        }
        let Some(axis) = change.transform_axis(self.axis) else {
            return Ok(None);
        };
        Ok(Some(AxisChangeConsequence {
            substitute_op: Some(Box::new(LayerNorm {
                axis,
                ..self.clone()
            })),
            wire_changes: tvec!(
                (InOut::In(0), change.clone()),
                (InOut::Out(0), change.clone())
            ),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let points = inputs[0].shape.iter().product::<TDim>();
        Ok(tvec!((Cost::FMA(f32::datum_type()), points * 4)))
    }

    as_op!();
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::reference::reference;
    use super::*;
    use crate::kernels::for_each_variant;
    use crate::kernels::threads::on_threads;

    fn check(shape: &[usize], axis: usize) {
        let len: usize = shape.iter().product();
        let c = shape[axis];
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.07 + 3.0)
            .collect();
        let g: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * -0.02).collect();
        let op = LayerNorm::new(axis, 1e-6);
        let eval = || {
            op.eval_out_of_plan(tvec!(
                Tensor::from_shape(shape, &x).unwrap().into_tvalue(),
                Tensor::from_shape(&[c], &g).unwrap().into_tvalue(),
                Tensor::from_shape(&[c], &b).unwrap().into_tvalue(),
            ))
            .unwrap()
            .unwrap()
        };
        let expected = reference(&x, shape, axis, &g, &b);
        for threads in [1, 3] {
            let out = on_threads(threads, eval);
            let got = out[0].try_as_plain_ram().unwrap();
            let got = got.as_slice::<f32>().unwrap();
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() <= 2e-5 * e.abs().max(1.0),
                    "{shape:?}/{axis}, {threads} threads, #{i}: {g} vs {e}"
                );
            }
        }
    }

    for_each_variant! {
        fn matches_reference_on_every_axis_kind() {
            check(&[1, 40, 56, 56], 1);
            check(&[2, 17, 5, 3], 1);
            check(&[1, 7, 7, 33], 3);
            check(&[3, 1], 1);
            check(&[1, 5, 1, 1], 1);
            check(&[4, 9, 2], 0);
            check(&[2, 3, 20, 30], 1);
        }
    }
}
