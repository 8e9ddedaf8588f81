//! The portable reference of the depthwise convolution: the definition, summed in f64, that
//! every variant (`plane_simd` at each x86 level, `avx512.rs`, channels last) is tested against.

pub(crate) fn reference(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    k: &[f32],
    (kh, kw): (usize, usize),
    bias: &[f32],
    [t, b, l, r]: [usize; 4],
) -> Vec<f32> {
    let (oh, ow) = (h + t + b - kh + 1, w + l + r - kw + 1);
    let mut out = vec![0f32; n * c * oh * ow];
    for p in 0..n * c {
        let ch = p % c;
        for y in 0..oh {
            for xo in 0..ow {
                let mut s = bias[ch] as f64;
                for i in 0..kh {
                    for j in 0..kw {
                        let (iy, ix) = (y + i, xo + j);
                        if iy < t || ix < l || iy - t >= h || ix - l >= w {
                            continue;
                        }
                        s += k[ch * kh * kw + i * kw + j] as f64
                            * x[p * h * w + (iy - t) * w + ix - l] as f64;
                    }
                }
                out[(p * oh + y) * ow + xo] = s as f32;
            }
        }
    }
    out
}

/// `[N, C, H, W]` data as `[N, H, W, C]`.
pub(crate) fn to_last(v: &[f32], (_, c, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for (i, value) in v.iter().enumerate() {
        let (b, ch, y, x) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
        out[((b * h + y) * w + x) * c + ch] = *value;
    }
    out
}
