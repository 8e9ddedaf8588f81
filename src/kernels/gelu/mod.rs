//! Exact GELU, `y = x/2 · (1 + erf(x/√2))`, on f32 and f16 tensors, computed in f32.
//!
//! tract 0.23.9's `GeluExact` on f16 multiplies and adds one value at a time in f16 through
//! `half` (rounding three intermediates to f16) around its f32 erf, which it calls on a scratch
//! copy: on the Pi 5 profile, over half of a convnext_atto f16 inference. This op widens a block of values to f32, applies GELU in f32 and rounds once, as
//! onnxruntime does for f16 models on CPUs without f16 kernels. On f32 tensors it takes the
//! place of tract's `GeluExact` too: one vectorised pass instead of tract's erf on a scratch
//! copy followed by a second pass for the products.
//!
//! The erf is the approximation tract uses for its f32 `Erf` (Abramowitz & Stegun 7.1.28,
//! absolute error below 3·10⁻⁷) in the same operation order, written branch-free so that it
//! vectorises (`multiversion!` in `kernels::simd`): the same f32 numbers as tract's portable
//! erf (its AVX2 and AVX-512 ones fuse the multiply-adds, a few ulp apart) before the final
//! rounding. On AVX-512 the polynomial is in fused multiply-adds too and the division a
//! reciprocal estimate with a Newton step (`gelu_avx512`), within the same tolerance.
//!
//! tract internals used (tract-core 0.23.9): `ElementWiseMiniOp` (the pass in `model::passes`
//! swaps it in for `GeluExact`).

use half::f16;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;
use tract_onnx::tract_core::ops::element_wise::ElementWiseMiniOp;

use super::simd::multiversion;

/// Values widened to f32 at a time: a block that stays in L1.
const BLOCK: usize = 1024;

/// Exact GELU on f16 (or f32) tensors with f32 arithmetic, in place.
///
/// ```text
/// use convnext_edge::kernels::gelu::GeluF32;
/// use tract_onnx::prelude::*;
/// use tract_onnx::tract_core::ops::element_wise::ElementWiseMiniOp;
/// let mut t = tensor1(&[f16::from_f32(-1.0), f16::from_f32(0.0), f16::from_f32(2.0)]);
/// GeluF32.eval_in_place(&mut t, None).unwrap();
/// let y: Vec<f32> = t.to_plain_array_view::<f16>().unwrap().iter().map(|v| v.to_f32()).collect();
/// let expected = [-0.158_655_26f32, 0.0, 1.954_5];
/// assert_eq!(y, expected.map(|v| f16::from_f32(v).to_f32()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GeluF32;

impl ElementWiseMiniOp for GeluF32 {
    fn name(&self) -> String {
        "GeluF32".into()
    }

    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let dt = t.datum_type();
        let mut view = t.try_as_plain_ram_mut()?;
        // Split across the plan's threads: on one thread at 2, they took longer than tract's
        // split across both.
        if dt == f32::datum_type() {
            let xs = view.as_slice_mut::<f32>()?;
            super::par_elements(xs, gelu)
        } else if dt == f16::datum_type() {
            let xs = view.as_slice_mut::<f16>()?;
            super::par_elements(xs, |chunk| {
                let mut wide = [0f32; BLOCK];
                for block in chunk.chunks_mut(BLOCK) {
                    let wide = &mut wide[..block.len()];
                    super::half_float::widen_into(block, wide);
                    gelu(wide);
                    super::half_float::narrow_into(wide, block);
                }
            })
        } else {
            bail!("GeluF32: {dt:?} input, expected f32 or f16");
        }
    }
}

/// `x/2 · (1 + erf(x/√2))` in place: [`gelu_avx512`] where the CPU has AVX-512, else
/// [`gelu_simd`].
pub(crate) fn gelu(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu::has(super::cpu::Feature::Avx512) {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { gelu_avx512(xs) };
    }
    gelu_simd(xs)
}

multiversion! {
    below_avx512:
    /// [`gelu`] with tract's f32 operation order.
    fn gelu_simd(xs: &mut [f32]) {
        // Spelt as tract spells it, so the same f32 constant.
        let c = 2f32.sqrt().recip();
        for x in xs.iter_mut() {
            *x = (*x * 0.5) * (erf(*x * c) + 1.0);
        }
    }
}

/// [`erf`]'s polynomial, `a₁ … a₆`.
#[allow(clippy::excessive_precision)]
const A: [f32; 6] = [
    0.0705230784,
    0.0422820123,
    0.0092705272,
    0.0001520143,
    0.0002765672,
    0.0000430638,
];

/// Abramowitz & Stegun 7.1.28: `1 − 1 / (1 + a₁|x| + … + a₆|x|⁶)¹⁶`, with the sign of `x`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let mut y = A[5] * a;
    for k in A[..5].iter().rev() {
        y = (k + y) * a;
    }
    let y2 = (y + 1.0) * (y + 1.0);
    let y4 = y2 * y2;
    let y8 = y4 * y4;
    (1.0 - (y8 * y8).recip()).copysign(x)
}

/// [`gelu_simd`]'s formula with the polynomial in fused multiply-adds and the reciprocal as
/// `rcp14` and a Newton step (relative error ~2⁻²⁸, below f32's rounding) instead of a
/// division, which is faster. |x|/√2 is capped at 8, where erf is already 1 in f32, so that
/// `(1 + y)¹⁶` stays finite for the Newton step.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
    unsafe {
        use std::arch::x86_64::*;
        let c = _mm512_set1_ps(2f32.sqrt().recip());
        let (half, one, two, cap) = (
            _mm512_set1_ps(0.5),
            _mm512_set1_ps(1.0),
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(8.0),
        );
        let gelu = |x: __m512| {
            let z = _mm512_mul_ps(x, c);
            let a = _mm512_min_ps(_mm512_abs_ps(z), cap);
            let mut p = _mm512_set1_ps(A[5]);
            for k in A[..5].iter().rev() {
                p = _mm512_fmadd_ps(p, a, _mm512_set1_ps(*k));
            }
            let y1 = _mm512_fmadd_ps(p, a, one);
            let y2 = _mm512_mul_ps(y1, y1);
            let y4 = _mm512_mul_ps(y2, y2);
            let y8 = _mm512_mul_ps(y4, y4);
            let y16 = _mm512_mul_ps(y8, y8);
            let r = _mm512_rcp14_ps(y16);
            let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(y16, r, two));
            // erf(z) + 1: 2 − r for z ≥ 0, r below.
            let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(z, _mm512_setzero_ps());
            let e1 = _mm512_mask_blend_ps(negative, _mm512_sub_ps(two, r), r);
            _mm512_mul_ps(_mm512_mul_ps(x, half), e1)
        };
        let mut chunks = xs.chunks_exact_mut(16);
        for v in &mut chunks {
            let p = v.as_mut_ptr();
            _mm512_storeu_ps(p, gelu(_mm512_loadu_ps(p)));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let (p, mask) = (rest.as_mut_ptr(), (1u16 << rest.len()) - 1);
            _mm512_mask_storeu_ps(p, mask, gelu(_mm512_maskz_loadu_ps(mask, p)));
        }
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::reference::reference_gelu;
    use super::*;
    use crate::kernels::for_each_variant;
    use tract_onnx::tract_core::ops::nn::GeluExact;

    fn floats<T: Datum + Copy>(t: &Tensor) -> Vec<T> {
        t.to_plain_array_view::<T>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (0..3001).map(|i| (i as f32 - 1500.0) / 250.0).collect();
        v.extend([0.0, -0.0, 1e-8, -1e-8, 30.0, -30.0, 1e4, -1e4]);
        v
    }

    /// How far apart two f32 evaluations of the erf may be: A&S 7.1.28's 3e-7, plus f32
    /// rounding of `1 + y`, which the 16th power magnifies 16-fold (so an FMA in the polynomial
    /// moves the result by up to ~1e-6). A wrong coefficient is off by 1e-4 or more.
    const ERF_TOL: f32 = 2e-6;

    for_each_variant! {
        /// Against the definition with an f64 erf: within [`ERF_TOL`] on erf (times |x|/2) plus f32
        /// rounding.
        fn matches_the_definition() {
            let xs = values();
            let mut ys = xs.clone();
            gelu(&mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                let e = reference_gelu(*x as f64);
                let tol = ERF_TOL as f64 * x.abs() as f64 * 0.5 + 4.0 * f32::EPSILON as f64 * e.abs();
                assert!((*y as f64 - e).abs() <= tol, "{x}: {y} vs {e}");
            }
        }
    }

    for_each_variant! {
        /// The AVX-512 form (where this CPU runs it) against the portable one, every tail length.
        /// They round differently (fused multiply-adds; the sixteenth power multiplies the
        /// polynomial's rounding by 16), within the erf tolerance of the other tests.
        fn every_length_matches_the_portable_form() {
            let close = |x: f32, a: f32, b: f32| {
                (a - b).abs() <= ERF_TOL * x.abs() * 0.5 + 4.0 * f32::EPSILON * b.abs()
            };
            let xs = values();
            for len in 0..=33 {
                let mut ours = xs[1400..1400 + len].to_vec();
                let mut portable = ours.clone();
                gelu(&mut ours);
                gelu_simd(&mut portable);
                for ((x, a), b) in xs[1400..].iter().zip(&ours).zip(&portable) {
                    assert!(close(*x, *a, *b), "{len} {x}: {a} vs {b}");
                }
            }
            let mut ours = xs.clone();
            let mut portable = xs.clone();
            gelu(&mut ours);
            gelu_simd(&mut portable);
            for ((x, a), b) in xs.iter().zip(&ours).zip(&portable) {
                assert!(close(*x, *a, *b), "{x}: {a} vs {b}");
            }
        }
    }

    /// tract's f32 `GeluExact`, whose erf this one restates: bit-identical to its portable erf;
    /// its x86 erfs fuse multiply-adds, hence [`ERF_TOL`].
    #[test]
    fn matches_tract_f32() {
        let xs = values();
        let mut ours = tensor1(&xs);
        GeluF32.eval_in_place(&mut ours, None).unwrap();
        let mut theirs = tensor1(&xs);
        GeluExact {}.eval_in_place(&mut theirs, None).unwrap();
        let (ours, theirs) = (floats::<f32>(&ours), floats::<f32>(&theirs));
        for ((x, a), b) in xs.iter().zip(ours).zip(theirs) {
            let tol = ERF_TOL * x.abs() * 0.5 + 4.0 * f32::EPSILON * b.abs();
            assert!((a - b).abs() <= tol, "{x}: {a} vs {b}");
        }
    }

    /// f16 values: the f32 result rounded once, over odd lengths across the block boundary.
    #[test]
    fn f16_is_the_f32_result_rounded() {
        for len in [1, 7, BLOCK - 1, BLOCK + 3] {
            let xs: Vec<f16> = values()
                .iter()
                .cycle()
                .take(len)
                .map(|v| f16::from_f32(*v))
                .collect();
            let mut t = tensor1(&xs);
            GeluF32.eval_in_place(&mut t, None).unwrap();
            for (x, y) in xs.iter().zip(floats::<f16>(&t)) {
                let mut wide = [x.to_f32()];
                gelu(&mut wide);
                assert_eq!(y.to_bits(), f16::from_f32(wide[0]).to_bits(), "{x}");
            }
        }
    }
}
