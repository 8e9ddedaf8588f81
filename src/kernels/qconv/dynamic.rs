//! Dynamic quantization: the input's own scale and zero point, as `DynamicQuantizeLinear`
//! computes them.

use super::ActQuant;
use crate::kernels::simd::multiversion;

/// `DynamicQuantizeLinear`'s parameters for `x`: u8 over the range of the values widened to
/// include zero, `scale = (max − min) / 255`, `zero_point = round(−min / scale)`. Returns the
/// quantization to apply and the scale the product is multiplied by — the same unless all
/// values are zero (or not finite), where the graph's scale is 0 (or not finite) and any
/// quantization gives the same zero sums.
pub(super) fn dynamic_quant(x: &[f32]) -> (ActQuant, f32) {
    let mut range = [0f32; 2];
    min_max(x, &mut range);
    let [min, max] = range;
    let scale = (max - min) / 255.0;
    if !(scale.is_finite() && scale > 0.0) {
        let zero = ActQuant {
            scale: 1.0,
            zero_point: 0,
            signed: false,
        };
        return (zero, scale);
    }
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let q = ActQuant {
        scale,
        zero_point,
        signed: false,
    };
    (q, scale)
}

multiversion! {
    /// `[min(0, x…), max(0, x…)]` into `out`, ignoring NaN as tract's and onnxruntime's loops do.
    pub(crate) fn min_max(xs: &[f32], out: &mut [f32; 2]) {
        let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
        let chunks = xs.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
                hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            }
        }
        for (i, v) in tail.iter().enumerate() {
            lo[i] = if *v < lo[i] { *v } else { lo[i] };
            hi[i] = if *v > hi[i] { *v } else { hi[i] };
        }
        out[0] = lo.iter().fold(0f32, |a, &b| if b < a { b } else { a });
        out[1] = hi.iter().fold(0f32, |a, &b| if b > a { b } else { a });
    }
}
