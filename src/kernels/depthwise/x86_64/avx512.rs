//! The depthwise loops on AVX-512F, with fused multiply-adds and a dozen independent sums.
//!
//! The portable loops keep one vector of sums per output row chunk (channels first) or four
//! (channels last) and do a separate multiply and add per tap: one to four dependent chains of
//! 4-cycle adds. On convnext_tiny's channels-first planes that ran at ~9 GMAC/s, where the
//! core's two FMA units do ~70. Here every tile keeps 12–14 sums in registers and issues one
//! FMA per tap and vector, reading the input straight from memory: a load per FMA is within
//! what the load ports do alongside two FMAs a cycle. Per output: bias, then the taps in row
//! order, one rounding each (onnxruntime's kernels fuse them too).
//!
//! - Channels first ([`plane`]): a tile is `R` output rows × `V` vectors of 16 columns, `R · V`
//!   = 12; per tap one broadcast of its weight and `R · V` FMAs. Columns past the row's end are
//!   computed in the plane's zero padding and not stored.
//! - Channels last ([`rows_c_last`]): a tile is 16 channels (one register) × up to [`PIXELS`]
//!   pixels of an output row; per tap one load of its 16 weights and one FMA per pixel.

use std::arch::x86_64::*;
use std::ops::Range;

// `LANES` (16): the values of a register here, channels or columns, and the padding that
// `Geometry` leaves after each row of a plane for a register read past its end.
use super::{Geometry, Image, LANES};

/// Pixels of a row computed together: 14 sums and a tap in 15 of the 32 registers.
const PIXELS: usize = 14;

/// [`super::rows_c_last`] for channels `0..c / 16 * 16`; returns where it stopped, so that the
/// caller finishes the last `c % 16` channels.
///
/// # Safety
/// The CPU has AVX-512F, and the slices are sized as [`super::rows_c_last`]
/// documents (checked below).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows_c_last(
    image: Image,
    ys: Range<usize>,
    taps_c: &[f32],
    bias: &[f32],
    out: &mut [f32],
) -> usize {
    // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
    unsafe {
        let Image {
            padded,
            hpc: (h, pw, c),
            stride,
            t,
            g,
        } = image;
        assert!(
            padded.len() >= h * pw * stride
                && stride >= c
                && pw + 1 >= g.ow + g.kw
                && taps_c.len() >= g.kh * g.kw * c
                && bias.len() >= c
                && out.len() >= ys.len() * g.ow * c
                && ys.end <= g.oh
        );
        let blocks = c / LANES;
        for c0 in (0..blocks).map(|b| b * LANES) {
            let b = _mm512_loadu_ps(bias.as_ptr().add(c0));
            for (y, out) in ys.clone().zip(out.chunks_exact_mut(g.ow * c)) {
                // Kernel rows i0..i1 fall on image rows y + i − t.
                let (i0, i1) = (t.saturating_sub(y), g.kh.min(h + t - y));
                let at = Tile {
                    input: padded.as_ptr().add((y + i0 - t) * pw * stride + c0),
                    row: pw * stride,
                    stride,
                    c,
                    kernel: (i1 - i0, g.kw),
                    taps: taps_c.as_ptr().add(i0 * g.kw * c + c0),
                    bias: b,
                    out: out.as_mut_ptr().add(c0),
                };
                let mut x = 0;
                while x + PIXELS <= g.ow {
                    at.run::<PIXELS>(x);
                    x += PIXELS;
                }
                if x + PIXELS / 2 <= g.ow {
                    at.run::<{ PIXELS / 2 }>(x);
                    x += PIXELS / 2;
                }
                for x in x..g.ow {
                    at.run::<1>(x);
                }
            }
        }
        blocks * LANES
    }
}

/// One output row of one block of channels.
#[derive(Clone, Copy)]
struct Tile {
    /// Pixel 0 of the first image row under the kernel, at the block's first channel.
    input: *const f32,
    /// Floats per image row.
    row: usize,
    /// Floats from one input pixel to the next.
    stride: usize,
    /// Channels: floats from one tap, or output pixel, to the next.
    c: usize,
    /// Kernel rows that fall on the image, and columns.
    kernel: (usize, usize),
    /// The first of those kernel rows' taps, at the block's first channel.
    taps: *const f32,
    bias: __m512,
    /// Pixel 0 of the output row, at the block's first channel.
    out: *mut f32,
}

impl Tile {
    /// Output pixels `x..x + P`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const P: usize>(self, x: usize) {
        // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
        unsafe {
            let Tile { c, stride, .. } = self;
            let (kh, kw) = self.kernel;
            let mut acc = [self.bias; P];
            for i in 0..kh {
                let input = self.input.add(i * self.row + x * stride);
                let taps = self.taps.add(i * kw * c);
                for j in 0..kw {
                    let k = _mm512_loadu_ps(taps.add(j * c));
                    let src = input.add(j * stride);
                    for (p, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(k, _mm512_loadu_ps(src.add(p * stride)), *acc);
                    }
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(self.out.add((x + p) * c), *acc);
            }
        }
    }
}

/// One channel's output plane `out` (`oh × ow`) from its zero-padded copy `padded` (`ph × pw`
/// with `pw ≥ ow + kw − 1 + 16`, so that a tile may read one register past the row's end).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn plane(padded: &[f32], g: Geometry, taps: &[f32], bias: f32, out: &mut [f32]) {
    // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
    unsafe {
        assert!(
            g.pw + 1 >= g.ow + g.kw + LANES
                && padded.len() >= (g.oh + g.kh - 1) * g.pw
                && taps.len() >= g.kh * g.kw
                && out.len() >= g.oh * g.ow
        );
        let at = Plane {
            padded: padded.as_ptr(),
            g,
            taps: taps.as_ptr(),
            bias: _mm512_set1_ps(bias),
            out: out.as_mut_ptr(),
        };
        for x0 in (0..g.ow).step_by(4 * LANES) {
            match (g.ow - x0).div_ceil(LANES) {
                1 => at.columns::<12, 1>(x0),
                2 => at.columns::<6, 2>(x0),
                3 => at.columns::<4, 3>(x0),
                _ => at.columns::<3, 4>(x0),
            }
        }
    }
}

/// [`plane`]'s operands.
#[derive(Clone, Copy)]
struct Plane {
    padded: *const f32,
    g: Geometry,
    taps: *const f32,
    bias: __m512,
    out: *mut f32,
}

impl Plane {
    /// Every output row's columns `x0..x0 + 16 V` (those before `ow`), `R` rows at a time.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn columns<const R: usize, const V: usize>(self, x0: usize) {
        // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
        unsafe {
            let mut y = 0;
            while y + R <= self.g.oh {
                self.tile::<R, V>(y, x0);
                y += R;
            }
            for y in y..self.g.oh {
                self.tile::<1, V>(y, x0);
            }
        }
    }

    /// Output rows `y..y + R`, columns `x0..x0 + 16 V`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize>(self, y: usize, x0: usize) {
        // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
        unsafe {
            let Geometry { kh, kw, pw, ow, .. } = self.g;
            let mut acc = [[self.bias; V]; R];
            for i in 0..kh {
                let rows = self.padded.add((y + i) * pw + x0);
                for j in 0..kw {
                    let k = _mm512_set1_ps(*self.taps.add(i * kw + j));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let src = rows.add(r * pw + j);
                        for (v, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm512_fmadd_ps(k, _mm512_loadu_ps(src.add(v * LANES)), *acc);
                        }
                    }
                }
            }
            let last = ow - x0 - (V - 1) * LANES;
            let mask: __mmask16 = if last >= LANES { !0 } else { (1 << last) - 1 };
            for (r, acc) in acc.iter().enumerate() {
                let out = self.out.add((y + r) * ow + x0);
                for (v, acc) in acc[..V - 1].iter().enumerate() {
                    _mm512_storeu_ps(out.add(v * LANES), *acc);
                }
                _mm512_mask_storeu_ps(out.add((V - 1) * LANES), mask, acc[V - 1]);
            }
        }
    }
}
