//! Depthwise convolution (ConvNeXt's 7x7 `conv_dw`) over NCHW or NHWC, stride 1, f32 — and f16,
//! widened to f32 on the way in and rounded back on the way out.
//!
//! tract 0.23.9 runs it one output point at a time through its zone walker on x86 (its
//! vectorised kernel covers the interior rows only, without FMA), several times slower than
//! onnxruntime's. This op copies each channel into a zero-padded plane once, so that every
//! output row is a border-free sum of `kh · kw` shifted input rows, and keeps 16 outputs of a
//! row in registers across all taps: per tap one broadcast weight, one unaligned load, one
//! multiply and one add per vector, compiled for AVX-512, AVX2 or the baseline at run time
//! (`multiversion!` in `kernels::simd`). Channels are split across the plan's threads (`kernels::threads`).
//!
//! Channels last (where a MatMul-form network's channels have been moved last: convnext_tiny int8),
//! each row is copied once between zero columns, taps above and below the image are skipped,
//! and four output pixels of 16 channels are computed together, one block of channels down
//! all of a thread's rows at a time so that the input rows under the kernel stay in L1. Output
//! rows are split across the threads. In the padded copy one pixel is an odd number of cache
//! lines from the next (`pixel_stride`): at 384 or 768 channels the pixels under a kernel
//! otherwise share a handful of L1's sets.
//!
//! On AVX-512 both layouts run on the `avx512` submodule's tiles instead: 12–14 independent sums and a
//! fused multiply-add per tap, faster in both layouts.
//!
//! On aarch64 a 7x7 kernel computes four output rows at once, so that each input vector loaded
//! serves every output row it feeds, with the taps in registers and a fused multiply-add per
//! tap by lane.
//!
//! Summation order per output is the bias, then the taps row by row (the order of tract's
//! scalar walk). On AVX2 and the x86 baseline with a multiply and an add per tap, so results
//! match tract's to the bit where tract is not using FMA; on AVX-512 and aarch64 with FMA (one
//! rounding per tap instead of two, as onnxruntime's kernels do).
//!
//! QDQ models' depthwise convolutions run on int8 where the CPU has SDOT ([`quantized`]).
//!
//! f16 tensors are computed in f32: tract 0.23.9 has no f16 depthwise kernel (its generic loop
//! calls `half`'s scalar multiply and add per tap: most of a convnext_atto f16 inference on the
//! Pi 5 profile), and f32 sums are what onnxruntime computes for
//! f16 convolutions on CPUs without an f16 kernel. Weights and bias are held in f32.
//!
//! tract internals used (tract-core 0.23.9): `Conv` / `PoolSpec` / `PaddingSpec` fields (read
//! by the pass in `model::passes`), `Op`/`EvalOp`/`TypedOp`.

use std::sync::Arc;

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::simd::multiversion;
use super::Layout;

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;
pub mod quantized;

/// Outputs of one row kept in registers across the taps.
const LANES: usize = 16;

/// A depthwise convolution with `kh × kw` kernels, stride and dilation 1, explicit padding.
/// Input `[N, C, H, W]` (or `[N, H, W, C]` channels last), output the same layout with
/// `H + top + bottom − kh + 1` rows and `W + left + right − kw + 1` columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseConv {
    /// `[C, kh, kw]` f32.
    weights: Arc<Tensor>,
    /// `[kh, kw, C]`: the same weights tap-major, for the channels-last loop.
    taps_c: Arc<Tensor>,
    layout: Layout,
    /// `[C]` f32.
    bias: Arc<Tensor>,
    /// Padding before and after along H, then along W.
    pads: [usize; 4],
}

/// Where one plane's padded copy and its output live.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    kh: usize,
    kw: usize,
    /// Padded plane height and row stride (with room to over-read a partial last chunk).
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl DepthwiseConv {
    /// `weights` `[C, kh, kw]`, `bias` `[C]`, `pads` = `[top, bottom, left, right]`.
    pub fn new(
        weights: Tensor,
        bias: Tensor,
        pads: [usize; 4],
        layout: Layout,
    ) -> TractResult<DepthwiseConv> {
        ensure!(
            weights.datum_type() == f32::datum_type() && weights.rank() == 3,
            "depthwise conv: weights must be [C, kh, kw] f32, got {weights:?}"
        );
        let c = weights.shape()[0];
        ensure!(
            bias.datum_type() == f32::datum_type() && bias.len() == c,
            "depthwise conv: bias must be [{c}] f32, got {bias:?}"
        );
        ensure!(
            weights.shape()[1] > 0 && weights.shape()[2] > 0,
            "depthwise conv: empty kernel"
        );
        Ok(DepthwiseConv {
            taps_c: Arc::new(weights.clone().permute_axes(&[1, 2, 0])?),
            layout,
            weights: Arc::new(weights),
            bias: Arc::new(bias.into_shape(&[c])?),
            pads,
        })
    }

    fn channels(&self) -> usize {
        self.weights.shape()[0]
    }

    /// Axes of (C, H, W) in the rank-4 input.
    fn axes(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::ChannelsFirst => (1, 2, 3),
            Layout::ChannelsLast => (3, 1, 2),
        }
    }

    fn output_hw(&self, h: TDim, w: TDim) -> (TDim, TDim) {
        let (kh, kw) = (self.weights.shape()[1], self.weights.shape()[2]);
        let [t, b, l, r] = self.pads;
        (h + t + b - kh + 1, w + l + r - kw + 1)
    }

    fn geometry(&self, h: usize, w: usize) -> TractResult<Geometry> {
        let (kh, kw) = (self.weights.shape()[1], self.weights.shape()[2]);
        let [t, b, l, r] = self.pads;
        ensure!(
            h + t + b >= kh && w + l + r >= kw,
            "depthwise conv: {h}x{w} input smaller than the {kh}x{kw} kernel"
        );
        Ok(Geometry {
            kh,
            kw,
            ph: h + t + b,
            pw: w + l + r + LANES,
            oh: h + t + b + 1 - kh,
            ow: w + l + r + 1 - kw,
        })
    }
}

impl DepthwiseConv {
    /// `ys` (`[n, oh, ow, C]`) from the channels-last `xs` (`[n, h, w, C]`): each row padded
    /// once, then output rows split across the threads.
    fn run_c_last(
        &self,
        xs: &[f32],
        (n, h, w): (usize, usize, usize),
        g: Geometry,
        bias: &[f32],
        ys: &mut [f32],
    ) -> TractResult<()> {
        let c = self.channels();
        let taps_c = self.taps_c.try_as_plain_ram()?;
        let taps_c = taps_c.as_slice::<f32>()?;
        let [t, _, l, r] = self.pads;
        let (pw, stride) = (l + w + r, pixel_stride(c));
        // SAFETY: f32 has no invalid bit patterns, and `pad_c_last` writes every element.
        let mut padded = unsafe { Tensor::uninitialized::<f32>(&[n * h * pw * stride])? };
        let mut padded_view = padded.try_as_plain_ram_mut()?;
        let padded = padded_view.as_slice_mut::<f32>()?;
        par_chunks_mut(padded, pw * stride, xs.len(), |first, rows| {
            pad_c_last(&xs[first * w * c..], (w, c), [l, r], stride, rows);
            Ok(())
        })?;
        let row = g.ow * c;
        par_chunks_mut(ys, row, xs.len() * g.kh * g.kw, |first, chunk| {
            // The chunk's rows, one image at a time.
            let (mut r, mut rest) = (first, chunk);
            while !rest.is_empty() {
                let (n, y) = (r / g.oh, r % g.oh);
                let count = (g.oh - y).min(rest.len() / row);
                let (now, later) = rest.split_at_mut(count * row);
                let image = Image {
                    padded: &padded[n * h * pw * stride..][..h * pw * stride],
                    hpc: (h, pw, c),
                    stride,
                    t,
                    g,
                };
                rows_c_last(image, y..y + count, taps_c, bias, now);
                (r, rest) = (r + count, later);
            }
            Ok(())
        })
    }
}

/// One channel: copies `input` (`h × w`) into `padded`, then writes `out` (`oh × ow`), on
/// [`avx512::plane`] where the CPU has AVX-512.
#[allow(clippy::too_many_arguments)]
fn plane(
    input: &[f32],
    (h, w): (usize, usize),
    [t, _, l, _]: [usize; 4],
    g: Geometry,
    taps: &[f32],
    bias: f32,
    padded: &mut [f32],
    out: &mut [f32],
) {
    padded.fill(0.0);
    for (y, row) in input.chunks(w).enumerate().take(h) {
        let start = (y + t) * g.pw + l;
        padded[start..start + w].copy_from_slice(row);
    }
    #[cfg(target_arch = "x86_64")]
    if super::cpu::has(super::cpu::Feature::Avx512) {
        // SAFETY: the CPU has AVX-512F; `padded` and `out` are sized by `g` (checked there).
        return unsafe { avx512::plane(padded, g, taps, bias, out) };
    }
    plane_simd(padded, g, taps, bias, out)
}

multiversion! {
    below_avx512:
    /// `out` (`oh × ow`) from one channel's padded plane.
    fn plane_simd(padded: &[f32], g: Geometry, taps: &[f32], bias: f32, out: &mut [f32]) {
        #[cfg(target_arch = "aarch64")]
        let done = if (g.kh, g.kw) == (7, 7) {
            row_blocks_7x7(padded, g, taps, bias, out)
        } else {
            0
        };
        #[cfg(not(target_arch = "aarch64"))]
        let done = 0;
        for (y, out_row) in out.chunks_mut(g.ow).enumerate().skip(done) {
            let rows = &padded[y * g.pw..(y + g.kh) * g.pw];
            for x0 in (0..g.ow).step_by(LANES) {
                let n = LANES.min(g.ow - x0);
                let acc = chunk(rows, g.pw, x0, g.kh, g.kw, taps, bias);
                out_row[x0..x0 + n].copy_from_slice(&acc[..n]);
            }
        }
    }
}

/// `LANES` outputs of one row starting at column `x0`: bias, then every tap in row order.
///
/// On aarch64 the sums are kept in NEON registers, written out because LLVM vectorises the
/// portable loop across the taps there (a vector multiply, then scalar adds: far more
/// instructions), with a fused multiply-add per tap as in [`row_blocks_7x7`]; elsewhere a multiply
/// and an add (Rust does not contract them), the bits of tract's own loop.
#[inline(always)]
fn chunk(
    rows: &[f32],
    stride: usize,
    x0: usize,
    kh: usize,
    kw: usize,
    taps: &[f32],
    bias: f32,
) -> [f32; LANES] {
    #[cfg(target_arch = "arm")]
    if crate::kernels::neon32::available() {
        let rows = &rows[..(kh - 1) * stride + x0 + kw - 1 + LANES];
        // SAFETY: the CPU has NEON; the reads are inside `rows` (sliced to them above) and
        // `taps` (kh · kw values, as the geometry gives them).
        return unsafe {
            crate::kernels::neon32::depthwise16(
                &rows[x0..],
                stride,
                (kh, kw),
                &taps[..kh * kw],
                bias,
            )
        };
    }
    #[cfg(not(target_arch = "aarch64"))]
    let acc = {
        let mut acc = [bias; LANES];
        for i in 0..kh {
            let row = &rows[i * stride + x0..];
            for j in 0..kw {
                let k = taps[i * kw + j];
                let src: &[f32; LANES] = row[j..j + LANES].try_into().expect("padded row");
                for (a, s) in acc.iter_mut().zip(src) {
                    *a += k * s;
                }
            }
        }
        acc
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the baseline of every aarch64 target; every load and store is of four
    // floats at v * 4 (v < LANES / 4) into a slice of LANES floats.
    let acc = unsafe {
        use std::arch::aarch64::{vdupq_n_f32, vfmaq_f32, vld1q_f32, vst1q_f32};
        let mut acc = [vdupq_n_f32(bias); LANES / 4];
        for (i, taps_row) in taps.chunks_exact(kw).take(kh).enumerate() {
            let row = &rows[i * stride + x0..i * stride + x0 + kw - 1 + LANES];
            // Zipped windows: no index to check per tap.
            for (src, &k) in row.windows(LANES).zip(taps_row) {
                let k = vdupq_n_f32(k);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, k, vld1q_f32(src.as_ptr().add(v * 4)));
                }
            }
        }
        let mut out = [0.0; LANES];
        for (v, a) in acc.iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(v * 4), *a);
        }
        out
    };
    acc
}

/// Output rows computed together by [`row_blocks_7x7`].
#[cfg(target_arch = "aarch64")]
const ROW_BLOCK: usize = 4;
/// Outputs of a row computed together by [`row_blocks_7x7`]: two NEON vectors.
#[cfg(target_arch = "aarch64")]
const COLS: usize = 8;

/// The whole blocks of [`ROW_BLOCK`] output rows of one padded plane, for ConvNeXt's 7x7
/// kernel (aarch64); returns how many rows it wrote. Each input vector is loaded once for
/// every output row it feeds — up to four — where [`chunk`] loads it again for each, and the
/// taps are multiplied from registers by lane (`FMLA v, x, t.s[j]`). Per output: bias, then
/// the taps in row order with a fused multiply-add each, the same order as [`chunk`].
#[cfg(target_arch = "aarch64")]
fn row_blocks_7x7(padded: &[f32], g: Geometry, taps: &[f32], bias: f32, out: &mut [f32]) -> usize {
    use std::arch::aarch64::{vdupq_n_f32, vst1q_f32};
    assert!(g.kh == 7 && g.kw == 7 && taps.len() == 49);
    // Tap rows padded to eight, two registers each.
    let mut rows8 = [0f32; 7 * 8];
    for (dst, src) in rows8.chunks_exact_mut(8).zip(taps.chunks_exact(7)) {
        dst[..7].copy_from_slice(src);
    }
    let blocks = g.oh / ROW_BLOCK;
    for (b, out_rows) in out
        .chunks_exact_mut(ROW_BLOCK * g.ow)
        .take(blocks)
        .enumerate()
    {
        let rows = &padded[b * ROW_BLOCK * g.pw..][..(ROW_BLOCK + 6) * g.pw];
        for x0 in (0..g.ow).step_by(COLS) {
            // SAFETY: NEON is in the aarch64 baseline.
            let mut acc = [[unsafe { vdupq_n_f32(bias) }; 2]; ROW_BLOCK];
            // Input row r feeds output rows y with 0 ≤ r − y < 7: the first and last three
            // rows feed fewer than four, whose ranges are constants so that every index into
            // `acc` is one. The row's 14 inputs from x0 lie inside the padded row (its LANES
            // of slack cover a partial last block).
            let src = |r: usize| -> &[f32; 14] { rows[r * g.pw + x0..][..14].try_into().unwrap() };
            input_row::<0, 1>(src(0), &rows8, 0, &mut acc);
            input_row::<0, 2>(src(1), &rows8, 1, &mut acc);
            input_row::<0, 3>(src(2), &rows8, 2, &mut acc);
            for r in 3..7 {
                input_row::<0, 4>(src(r), &rows8, r, &mut acc);
            }
            input_row::<1, 4>(src(7), &rows8, 7, &mut acc);
            input_row::<2, 4>(src(8), &rows8, 8, &mut acc);
            input_row::<3, 4>(src(9), &rows8, 9, &mut acc);
            let n = COLS.min(g.ow - x0);
            for (y, acc) in acc.iter().enumerate() {
                let dst = &mut out_rows[y * g.ow + x0..][..n];
                let mut v = [0f32; COLS];
                // Whole blocks straight into the output, a partial one through `v`.
                let whole = n == COLS;
                let at = if whole {
                    dst.as_mut_ptr()
                } else {
                    v.as_mut_ptr()
                };
                // SAFETY: NEON; eight floats into `dst` (n = 8) or `v`.
                unsafe {
                    vst1q_f32(at, acc[0]);
                    vst1q_f32(at.add(4), acc[1]);
                }
                if !whole {
                    dst.copy_from_slice(&v[..n]);
                }
            }
        }
    }
    blocks * ROW_BLOCK
}

/// Input row `r`'s contribution to the output rows `Y0..Y1` of a block of [`row_blocks_7x7`]:
/// output row y takes tap row `r − y`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn input_row<const Y0: usize, const Y1: usize>(
    src: &[f32; 14],
    rows8: &[f32; 56],
    r: usize,
    acc: &mut [[std::arch::aarch64::float32x4_t; 2]; ROW_BLOCK],
) {
    use std::arch::aarch64::{float32x4_t, vld1q_f32};
    // SAFETY: NEON; the loads read 4 floats inside `rows8`.
    let t: [[float32x4_t; 2]; ROW_BLOCK] = std::array::from_fn(|y| unsafe {
        let row = if (Y0..Y1).contains(&y) { r - y } else { 0 };
        [
            vld1q_f32(rows8[row * 8..].as_ptr()),
            vld1q_f32(rows8[row * 8 + 4..].as_ptr()),
        ]
    });
    tap::<0, 0, Y0, Y1>(src, &t, acc);
    tap::<1, 1, Y0, Y1>(src, &t, acc);
    tap::<2, 2, Y0, Y1>(src, &t, acc);
    tap::<3, 3, Y0, Y1>(src, &t, acc);
    tap::<4, 0, Y0, Y1>(src, &t, acc);
    tap::<5, 1, Y0, Y1>(src, &t, acc);
    tap::<6, 2, Y0, Y1>(src, &t, acc);
}

/// Tap column `J` (lane `L` = `J` mod 4 of the tap registers) of [`input_row`].
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn tap<const J: usize, const L: i32, const Y0: usize, const Y1: usize>(
    src: &[f32; 14],
    t: &[[std::arch::aarch64::float32x4_t; 2]; ROW_BLOCK],
    acc: &mut [[std::arch::aarch64::float32x4_t; 2]; ROW_BLOCK],
) {
    use std::arch::aarch64::{vfmaq_laneq_f32, vld1q_f32};
    // SAFETY: NEON; the loads read src[J..J + 8] (J ≤ 6).
    unsafe {
        let x = [
            vld1q_f32(src[J..].as_ptr()),
            vld1q_f32(src[J + 4..].as_ptr()),
        ];
        for y in Y0..Y1 {
            let t = t[y][J / 4];
            acc[y][0] = vfmaq_laneq_f32::<L>(acc[y][0], x[0], t);
            acc[y][1] = vfmaq_laneq_f32::<L>(acc[y][1], x[1], t);
        }
    }
}

/// Channels of a channels-last row computed together, their sums kept in registers across the
/// taps (two AVX2 vectors per output pixel). Sweeping a whole row one block of channels at a
/// time keeps that block's taps (7 · 7 · 16 · 4 B = 3 KiB) and the input window it slides over
/// in L1: one pixel at a time over all 96 channels of convnext_tiny's first stage touched
/// 37 KiB per output pixel, more than the L1, and ran from L2 at a third of the speed.
const C_BLOCK: usize = 16;

/// Output pixels of a channels-last row computed together: each tap's weights are loaded once
/// for all of them, and their sums ([`C_BLOCK`] channels each: eight AVX2 vectors) stay in
/// registers.
const X_BLOCK: usize = 4;

/// `image` (`[h, w, c]`) into `padded` (`[h, l + w + r, c]`), as many rows as `padded` holds:
/// each row between `l` and `r` pixels of zeros. Rows are not padded: [`rows_c_last`] skips the taps above and below the
/// image instead.
fn pad_c_last(
    image: &[f32],
    (w, c): (usize, usize),
    [l, r]: [usize; 2],
    stride: usize,
    padded: &mut [f32],
) {
    let row = (l + w + r) * stride;
    for (src, dst) in image.chunks_exact(w * c).zip(padded.chunks_exact_mut(row)) {
        let (left, rest) = dst.split_at_mut(l * stride);
        let (mid, right) = rest.split_at_mut(w * stride);
        left.fill(0.0);
        for (src, dst) in src.chunks_exact(c).zip(mid.chunks_exact_mut(stride)) {
            dst[..c].copy_from_slice(src);
        }
        right.fill(0.0);
    }
}

/// Values between one pixel and the next in [`pad_c_last`]'s copy: the channels, rounded up to
/// whole cache lines, and an odd number of them. At a power-of-two multiple of 64 bytes (384
/// or 768 channels) the pixels under a kernel fell in a few of L1's 64 sets and evicted each
/// other.
fn pixel_stride(c: usize) -> usize {
    let lines = c.div_ceil(16);
    (lines | 1) * 16
}

/// Output rows `ys` (`out`) of a channels-last image padded along its rows (`[h, pw, c]`,
/// see [`pad_c_last`]; `t` rows of padding above): every column, every channel, bias then the
/// taps that fall on the image's rows, in row order. On AVX-512 the whole blocks of 16
/// channels run on [`avx512::rows_c_last`].
fn rows_c_last(
    image: Image,
    ys: std::ops::Range<usize>,
    taps_c: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu::has(super::cpu::Feature::Avx512) {
        // SAFETY: the CPU has AVX-512F; the slices are the ones `eval` sized for the image.
        let done = unsafe { avx512::rows_c_last(image, ys.clone(), taps_c, bias, out) };
        return channels_c_last(image, ys, done, taps_c, bias, out);
    }
    channels_c_last(image, ys, 0, taps_c, bias, out)
}

multiversion! {
    /// [`rows_c_last`] for channels `from..c`.
    fn channels_c_last(
        image: Image,
        ys: std::ops::Range<usize>,
        from: usize,
        taps_c: &[f32],
        bias: &[f32],
        out: &mut [f32],
    ) {
        // One block of channels at a time over all the rows: the block's input rows under
        // the kernel stay in L1 from one output row to the next (sweeping every channel of a
        // row first evicted them).
        let c = image.hpc.2;
        let mut c0 = from;
        while c0 + C_BLOCK <= c {
            channel_block::<C_BLOCK>(image, ys.clone(), c0, taps_c, bias, out);
            c0 += C_BLOCK;
        }
        while c0 + 8 <= c {
            channel_block::<8>(image, ys.clone(), c0, taps_c, bias, out);
            c0 += 8;
        }
        for c0 in c0..c {
            channel_block::<1>(image, ys.clone(), c0, taps_c, bias, out);
        }
    }
}

/// [`rows_c_last`]'s input.
#[derive(Clone, Copy)]
struct Image<'a> {
    padded: &'a [f32],
    hpc: (usize, usize, usize),
    /// Values from one pixel of `padded` to the next (see [`pixel_stride`]).
    stride: usize,
    t: usize,
    g: Geometry,
}

/// Channels `c0..c0 + N` of [`rows_c_last`]'s rows, [`X_BLOCK`] pixels at a time.
#[inline(always)]
fn channel_block<const N: usize>(
    Image {
        padded,
        hpc: (h, pw, c),
        stride,
        t,
        g,
    }: Image,
    ys: std::ops::Range<usize>,
    c0: usize,
    taps_c: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let bias: &[f32; N] = bias[c0..c0 + N].try_into().unwrap();
    for (y, out) in ys.zip(out.chunks_exact_mut(g.ow * c)) {
        // Kernel rows i0..i1 fall on image rows y + i − t.
        let (i0, i1) = (t.saturating_sub(y), g.kh.min(h + t - y));
        let rows = &padded[(y + i0 - t) * pw * stride..(y + i1 - t) * pw * stride];
        let taps = &taps_c[i0 * g.kw * c..i1 * g.kw * c];
        let kernel = (i1 - i0, g.kw);
        let mut x = 0;
        while x + X_BLOCK <= g.ow {
            let acc = pixels::<N, X_BLOCK>(rows, (pw, stride, c), kernel, x, c0, taps, bias);
            out[x * c..][..X_BLOCK * c]
                .chunks_exact_mut(c)
                .zip(&acc)
                .for_each(|(o, a)| o[c0..c0 + N].copy_from_slice(a));
            x += X_BLOCK;
        }
        for x in x..g.ow {
            let [acc] = pixels::<N, 1>(rows, (pw, stride, c), kernel, x, c0, taps, bias);
            out[x * c + c0..][..N].copy_from_slice(&acc);
        }
    }
}

/// The sums of channels `c0..c0 + N` of `X` output pixels from column `x`.
#[inline(always)]
fn pixels<const N: usize, const X: usize>(
    rows: &[f32],
    (pw, stride, c): (usize, usize, usize),
    (kh, kw): (usize, usize),
    x: usize,
    c0: usize,
    taps_c: &[f32],
    bias: &[f32; N],
) -> [[f32; N]; X] {
    assert!(c0 + N <= c);
    // SAFETY (both reads below): `from` is a window of whole pixels (`stride` values apart,
    // `c` used) or taps (`c` apart) and `at` is `c0` into one of them, so `at + N ≤ from.len()`.
    let vector = |from: &[f32], at: usize| -> [f32; N] {
        debug_assert!(at + N <= from.len());
        // SAFETY: `at + N <= from.len()`, as the comment above shows; any bytes are an f32.
        unsafe { std::ptr::read_unaligned(from.as_ptr().add(at) as *const [f32; N]) }
    };
    let mut acc = [*bias; X];
    for i in 0..kh {
        // Columns x .. x + X + kw − 1 of the row, and the row's taps: pixels p + j, j < kw.
        let window = &rows[(i * pw + x) * stride..][..(X + kw - 1) * stride];
        let taps = &taps_c[i * kw * c..][..kw * c];
        for j in 0..kw {
            let k = vector(taps, j * c + c0);
            for (p, acc) in acc.iter_mut().enumerate() {
                let v = vector(window, (p + j) * stride + c0);
                for ((a, v), k) in acc.iter_mut().zip(v).zip(k) {
                    *a += k * v;
                }
            }
        }
    }
    acc
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        "DepthwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let s = self.weights.shape();
        Ok(vec![format!(
            "{} channels, {}x{}, pads {:?}",
            s[0], s[1], s[2], self.pads
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let dt = x.datum_type();
        let x = super::widen(&x)?;
        let shape = x.shape();
        let c = self.channels();
        let (ca, ha, wa) = self.axes();
        ensure!(
            shape.len() == 4 && shape[ca] == c,
            "depthwise conv: input shape {shape:?}, expected {c} channels on axis {ca}"
        );
        let (h, w) = (shape[ha], shape[wa]);
        let g = self.geometry(h, w)?;
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let bias = self.bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        let mut out_shape = [shape[0], 0, 0, 0];
        (out_shape[ca], out_shape[ha], out_shape[wa]) = (c, g.oh, g.ow);
        // SAFETY: f32 has no invalid bit patterns, and each output plane is written whole.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let plane_out = g.oh * g.ow;
        let taps = g.kh * g.kw;
        if plane_out > 0 {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let n = shape[0];
            match self.layout {
                Layout::ChannelsFirst => {
                    let weights = self.weights.try_as_plain_ram()?;
                    let weights = weights.as_slice::<f32>()?;
                    par_chunks_mut(ys, plane_out, xs.len() * taps, |first, chunk| {
                        let mut padded = vec![0f32; g.ph * g.pw];
                        for (i, out_plane) in chunk.chunks_mut(plane_out).enumerate() {
                            let p = first + i;
                            let ch = p % c;
                            plane(
                                &xs[p * h * w..(p + 1) * h * w],
                                (h, w),
                                self.pads,
                                g,
                                &weights[ch * taps..(ch + 1) * taps],
                                bias[ch],
                                &mut padded,
                                out_plane,
                            );
                        }
                        Ok(())
                    })?;
                }
                Layout::ChannelsLast => self.run_c_last(xs, (n, h, w), g, bias, ys)?,
            }
        }
        Ok(tvec!(super::narrow(out, dt)?.into_tvalue()))
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let (ca, ha, wa) = self.axes();
        ensure!(
            is_supported_float(x.datum_type)
                && x.rank() == 4
                && x.shape[ca] == self.channels().to_dim(),
            "depthwise conv: input {x:?}, expected {} channels on axis {ca}, f32 or f16",
            self.channels()
        );
        let (oh, ow) = self.output_hw(x.shape[ha].clone(), x.shape[wa].clone());
        let mut shape = x.shape.to_tvec();
        (shape[ha], shape[wa]) = (oh, ow);
        Ok(tvec!(x.datum_type.fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let taps = self.weights.shape()[1] * self.weights.shape()[2];
        let points = inputs[0].shape.iter().product::<TDim>();
        Ok(tvec!((Cost::FMA(inputs[0].datum_type), points * taps)))
    }

    as_op!();
}

/// The float types the op takes (activations) and reads its weights from: f32 and f16.
pub fn is_supported_float(dt: DatumType) -> bool {
    dt == f32::datum_type() || dt == f16::datum_type()
}

#[cfg(test)]
pub(crate) mod reference;

#[cfg(test)]
pub(crate) mod tests {
    use super::reference::{reference, to_last};
    use super::*;
    use crate::kernels::for_each_variant;

    fn check(n: usize, c: usize, h: usize, w: usize, kh: usize, kw: usize, pads: [usize; 4]) {
        check_layout(n, c, h, w, kh, kw, pads, Layout::ChannelsFirst);
        check_layout(n, c, h, w, kh, kw, pads, Layout::ChannelsLast);
    }

    #[allow(clippy::too_many_arguments)]
    fn check_layout(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        pads: [usize; 4],
        layout: Layout,
    ) {
        let gen = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
                .collect()
        };
        let x = gen(n * c * h * w, 1);
        let k = gen(c * kh * kw, 2);
        let bias = gen(c, 3);
        let op = DepthwiseConv::new(
            Tensor::from_shape(&[c, kh, kw], &k).unwrap(),
            Tensor::from_shape(&[c], &bias).unwrap(),
            pads,
            layout,
        )
        .unwrap();
        let last = layout == Layout::ChannelsLast;
        let input = if last {
            Tensor::from_shape(&[n, h, w, c], &to_last(&x, (n, c, h, w))).unwrap()
        } else {
            Tensor::from_shape(&[n, c, h, w], &x).unwrap()
        };
        let out = op
            .eval_out_of_plan(tvec!(input.into_tvalue()))
            .unwrap()
            .unwrap();
        let got = out[0].try_as_plain_ram().unwrap();
        let got = got.as_slice::<f32>().unwrap();
        let expected = reference(&x, (n, c, h, w), &k, (kh, kw), &bias, pads);
        let [t, b, l, r] = pads;
        let (oh, ow) = (h + t + b + 1 - kh, w + l + r + 1 - kw);
        let expected = if last {
            to_last(&expected, (n, c, oh, ow))
        } else {
            expected
        };
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "#{i}: {g} vs {e}");
        }
    }

    for_each_variant! {
        fn matches_scalar_reference() {
            check(1, 40, 56, 56, 7, 7, [3, 3, 3, 3]);
            check(2, 3, 7, 7, 7, 7, [3, 3, 3, 3]);
            check(1, 5, 1, 1, 7, 7, [3, 3, 3, 3]);
            check(1, 17, 13, 33, 3, 3, [1, 1, 1, 1]);
            check(1, 2, 9, 17, 5, 3, [0, 2, 1, 0]);
            check(2, 1, 4, 4, 1, 1, [0, 0, 0, 0]);
            check(1, 101, 9, 8, 7, 7, [3, 3, 3, 3]);
            check(1, 3, 5, 150, 7, 7, [3, 3, 2, 1]);
            check(1, 64, 6, 9, 7, 7, [3, 3, 3, 3]);
        }
    }

    for_each_variant! {
        /// An f16 input gives the f32 computation on the same values, rounded once at the end.
        fn f16_is_the_f32_computation_rounded() {
            let (c, h, w) = (19, 11, 23);
            let x: Vec<f16> = (0..c * h * w)
                .map(|i| f16::from_f32(((i * 7919 % 2003) as f32 / 1001.5) - 1.0))
                .collect();
            let k: Vec<f32> = (0..c * 49).map(|i| (i % 13) as f32 / 6.5 - 1.0).collect();
            let op = DepthwiseConv::new(
                Tensor::from_shape(&[c, 7, 7], &k).unwrap(),
                Tensor::from_shape(&[c], &vec![0.25f32; c]).unwrap(),
                [3, 3, 3, 3],
                Layout::ChannelsFirst,
            )
            .unwrap();
            let run = |t: Tensor| {
                op.eval_out_of_plan(tvec!(t.into_tvalue()))
                    .unwrap()
                    .unwrap()
            };
            let half = run(Tensor::from_shape(&[1, c, h, w], &x).unwrap());
            let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let full = run(Tensor::from_shape(&[1, c, h, w], &wide).unwrap());
            assert_eq!(half[0].datum_type(), f16::datum_type());
            let expected = full[0].cast_to::<f16>().unwrap();
            assert_eq!(&*half[0], &*expected);
        }
    }

    #[test]
    fn refuses_inputs_smaller_than_the_kernel() {
        let op = DepthwiseConv::new(
            Tensor::zero::<f32>(&[1, 7, 7]).unwrap(),
            Tensor::zero::<f32>(&[1]).unwrap(),
            [0; 4],
            Layout::ChannelsFirst,
        )
        .unwrap();
        let input = Tensor::zero::<f32>(&[1, 1, 3, 3]).unwrap();
        assert!(op.eval_out_of_plan(tvec!(input.into_tvalue())).is_err());
    }
}
