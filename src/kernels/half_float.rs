//! f16 ↔ f32 conversion of slices, for the kernels that compute f16 tensors in f32.
//!
//! On aarch64 sixteen values per step go through FCVTL / FCVTN, which every arm64 CPU has (they
//! are base Advanced SIMD, not the fp16-arithmetic extension), written as inline assembly
//! because Rust's f16 vector types are not stable; `half`'s slice conversion, which this
//! replaces there, converts four values per call through a copy and a feature check, several
//! times the instructions a value. Elsewhere, and for the last values of a slice,
//! `half`'s conversion runs (F16C on x86). Both round to nearest, ties to even.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Runs the assembly `steps` (sixteen values from `{s}` to `{d}`, in v0–v5) over the whole
/// blocks of the equal-length slices `src` and `dst`; evaluates to the tails left to convert.
#[cfg(target_arch = "aarch64")]
macro_rules! neon_steps {
    ($src:ident, $dst:ident, $($step:literal),+) => {{
        let (s, d) = ($src.as_ptr(), $dst.as_mut_ptr());
        // SAFETY: each step reads sixteen values at `s + at` and writes sixteen at `d + at`,
        // inside the equal-length slices; the clobbered vector registers are declared.
        let done = super::neon::blocks($src.len(), |at| unsafe {
            std::arch::asm!(
                $($step),+,
                s = in(reg) s.add(at),
                d = in(reg) d.add(at),
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                options(nostack, preserves_flags),
            );
        });
        (&$src[done..], &mut $dst[done..])
    }};
}

/// `dst[i] = src[i]` as f32; the slices have the same length.
pub(crate) fn widen_into(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_into: lengths differ");
    #[cfg(target_arch = "aarch64")]
    let (src, dst) = neon_steps!(
        src,
        dst,
        "ld1 {{v0.8h, v1.8h}}, [{s}]",
        "fcvtl v2.4s, v0.4h",
        "fcvtl2 v3.4s, v0.8h",
        "fcvtl v4.4s, v1.4h",
        "fcvtl2 v5.4s, v1.8h",
        "st1 {{v2.4s, v3.4s, v4.4s, v5.4s}}, [{d}]"
    );
    src.convert_to_f32_slice(dst);
}

/// `dst[i] = src[i]` rounded to f16 (nearest, ties to even); the slices have the same length.
pub(crate) fn narrow_into(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "narrow_into: lengths differ");
    // FCVTN rounds by FPCR, which Rust leaves at round-to-nearest-even.
    #[cfg(target_arch = "aarch64")]
    let (src, dst) = neon_steps!(
        src,
        dst,
        "ld1 {{v0.4s, v1.4s, v2.4s, v3.4s}}, [{s}]",
        "fcvtn v4.4h, v0.4s",
        "fcvtn2 v4.8h, v1.4s",
        "fcvtn v5.4h, v2.4s",
        "fcvtn2 v5.8h, v3.4s",
        "st1 {{v4.8h, v5.8h}}, [{d}]"
    );
    dst.convert_from_f32_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 value, in a slice whose length is not a multiple of the step.
    #[test]
    fn widens_every_f16_as_half_does() {
        let all: Vec<f16> = (0..=u16::MAX)
            .map(f16::from_bits)
            .chain([f16::ONE])
            .collect();
        let mut got = vec![0f32; all.len()];
        widen_into(&all, &mut got);
        for (h, g) in all.iter().zip(&got) {
            let e = h.to_f32();
            assert!(
                g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
                "{h:?}"
            );
        }
    }

    /// Halfway cases, subnormals, overflow to infinity, and every f16 value widened, odd length.
    #[test]
    fn narrows_as_half_does() {
        let mut xs: Vec<f32> = (0..=u16::MAX)
            .map(|b| f16::from_bits(b).to_f32())
            .filter(|v| !v.is_nan())
            .collect();
        // Each f16's next f32 up and down, and the midpoints between neighbouring f16s.
        let near: Vec<f32> = xs
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [
                    f32::from_bits(b.wrapping_add(1)),
                    f32::from_bits(b.wrapping_sub(1)),
                ]
            })
            .filter(|v| v.is_finite())
            .collect();
        let mids: Vec<f32> = xs.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        xs.extend(near);
        xs.extend(mids);
        xs.extend([
            65520.0,
            65519.99,
            1e-8,
            -1e-8,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0,
        ]);
        let mut got = vec![f16::ZERO; xs.len()];
        narrow_into(&xs, &mut got);
        for (x, g) in xs.iter().zip(&got) {
            assert_eq!(g.to_bits(), f16::from_f32(*x).to_bits(), "{x:e}");
        }
    }
}
