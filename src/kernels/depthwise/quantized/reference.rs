//! The portable reference of the quantized depthwise convolution: dequantize, convolve in f64.

use crate::kernels::qconv::ActQuant;

/// The QDQ definition in f64: the dequantized input and weights convolved, plus the bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    weights: &[i8],
    (kh, kw): (usize, usize),
    [t, b, l, r]: [usize; 4],
    xq: ActQuant,
    w_scales: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let q = xq.quantizer();
    let mut bytes = vec![0u8; x.len()];
    q.quantize_bytes(x, &mut bytes);
    let xd: Vec<f64> = bytes
        .iter()
        .map(|&b| xq.dequantize(q.value_of_byte(b)) as f64)
        .collect();
    let (oh, ow) = (h + t + b - kh + 1, w + l + r - kw + 1);
    let mut out = vec![0f32; n * c * oh * ow];
    for p in 0..n * c {
        let ch = p % c;
        let ws = w_scales[ch % w_scales.len()] as f64;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0f64;
                for i in 0..kh {
                    for j in 0..kw {
                        let (iy, ix) = (oy + i, ox + j);
                        if iy < t || ix < l || iy - t >= h || ix - l >= w {
                            continue;
                        }
                        s += weights[(ch * kh + i) * kw + j] as f64
                            * ws
                            * xd[p * h * w + (iy - t) * w + ix - l];
                    }
                }
                out[(p * oh + oy) * ow + ox] = (s + bias[ch] as f64) as f32;
            }
        }
    }
    out
}
