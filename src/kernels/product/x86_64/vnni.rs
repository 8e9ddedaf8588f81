//! Exact i8 × i8 → i32 products on AVX-512 VNNI (Ice Lake and later Xeons, AMD Zen 4 and 5),
//! for integer convolutions: `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`. Channels last, rows
//! are positions and lanes output channels; channels first, rows are output channels (the
//! weights) and lanes an image's positions, packed once per product
//! ([`Lanes::pack_transposed`]), so that either way the sums come out in the output's layout.
//!
//! tract-linalg 0.23.9's kernel for these CPUs (`avx512vnni_mmm_i32_16x16`) runs convnext_tiny's
//! products at about a third of what `VPDPBUSD` allows, and needs the activations packed in a
//! pass of their own. Here, as on AMX ([`super::amx`]):
//!
//! - a tile is 8 rows by 3 vectors of 16 lanes: 24 accumulators, each `VPDPBUSD` adding 4
//!   products into each of 16 sums, three lane loads and eight broadcasts per 4 values of k;
//!   48 lanes divide every ConvNeXt width from convnext_tiny up, and a last panel of 1 or 2
//!   vectors serves the others (convnext_atto's 40, 80, …) without multiplying padding;
//! - the rows are written by the caller (the input's quantizer) straight into the row-major
//!   buffer the tiles read, and each block's sums go to the epilogue from cache;
//! - within a block, a lane panel is loaded once for all its row tiles: the weights stream
//!   from memory once per block, not once per tile.
//!
//! `VPDPBUSD` multiplies unsigned by signed bytes. The rows are made unsigned by adding 128
//! (flipping their top bit) as they are written, and each lane's sums start at
//! `−128 · Σ_k lanes[l][k]`, which takes that back exactly: every product of a u8 by an i8
//! and every sum of 4 fit the instruction's i32 intermediates, so any i8 weights, −128 included,
//! are exact.
//!
//! Layouts: rows row-major with `k` padded to [`KSTEP`]; lanes in columns of 16, columns in
//! panels of [`COLUMNS`] (the last one narrower), each panel step after step of 4 values of k,
//! each step holding its columns' 64 bytes one after the other, a column's bytes being
//! `k = 4s … 4s + 3` of each lane in turn, zero past `k` and past the last lane.
//!
//! ```text
//! use convnext_edge::kernels::product::vnni::{available, product_into, Lanes};
//! if available() {
//!     // Two lanes and three rows of k = 3 values.
//!     let lanes = Lanes::pack(2, 3, |l, k| [[1, 2, 3], [-1, 0, 127]][l][k]);
//!     let rows = [[1i8, 1, 1], [2, 0, 0], [-128, 0, 1]];
//!     let mut out = [0i32; 6];
//!     let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&rows[r]);
//!     product_into(&lanes, 3, &fill, &mut out, |first, sums, out| {
//!         for (i, o) in out.chunks_mut(2).enumerate() {
//!             o.copy_from_slice(sums.row(i));
//!         }
//!         Ok(())
//!     })?;
//!     assert_eq!(out, [6, 126, 2, -2, -125, 255]);
//! }
//! ```

use std::arch::x86_64::*;

use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

use super::filled::{self, Geometry};
use crate::kernels::cpu;
use crate::kernels::Sums;

/// Values of k per step: the 4 bytes `VPDPBUSD` adds into each sum.
pub const KSTEP: usize = 4;
/// Lanes per column: one register of 16 i32 sums.
const COLUMN: usize = 16;
/// Columns per panel, the tile's width in registers.
const COLUMNS: usize = 3;
/// Rows per tile.
const ROWS: usize = 8;

/// Whether this CPU runs the product: AVX-512 (F, BW) with its VNNI extension.
pub fn available() -> bool {
    cpu::has_avx512_vnni()
}

/// The kernel's name in profiles.
pub fn kernel() -> &'static str {
    "convnext_edge_avx512vnni_i32_8x48"
}

/// The lane operand: `lanes` vectors of `k` values (see the module docs), with each lane's
/// correction for the rows' offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Lanes {
    data: Vec<i8>,
    /// `−128 · Σ_k lanes[l][k]`, zero past the last lane.
    start: Vec<i32>,
    lanes: usize,
    k: usize,
}

impl Lanes {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> Lanes {
        let steps = k.div_ceil(KSTEP);
        let columns = lanes.div_ceil(COLUMN);
        let mut data = vec![0; columns * steps * KSTEP * COLUMN];
        for l in 0..lanes {
            let (column, n) = (l / COLUMN, l % COLUMN);
            for kk in 0..k {
                let (s, b) = (kk / KSTEP, kk % KSTEP);
                data[column_at(column, columns, steps, s) + n * KSTEP + b] = at(l, kk);
            }
        }
        let start = (0..columns * COLUMN)
            .map(|l| match l < lanes {
                true => (0..k).map(|kk| -128 * at(l, kk) as i32).sum(),
                false => 0,
            })
            .collect();
        Lanes {
            data,
            start,
            lanes,
            k,
        }
    }

    /// Packs `lanes` vectors of `k` values stored the other way round: value `(l, k)` at
    /// `src[k · stride + l]`, as a channels-first activation is, lanes being its positions.
    /// Done once per product on the activations, so four rows of sixteen lanes are interleaved
    /// into a column's step at a time.
    pub fn pack_transposed(src: &[i8], k: usize, lanes: usize, stride: usize) -> Lanes {
        let steps = k.div_ceil(KSTEP);
        let columns = lanes.div_ceil(COLUMN);
        let mut data = vec![0; columns * steps * KSTEP * COLUMN];
        for column in 0..columns {
            let l0 = column * COLUMN;
            let here = COLUMN.min(lanes - l0);
            for s in 0..steps {
                let step = &mut data[column_at(column, columns, steps, s)..][..KSTEP * COLUMN];
                let row = |b: usize| &src[(s * KSTEP + b) * stride + l0..][..here];
                if here == COLUMN && (s + 1) * KSTEP <= k {
                    zip4(std::array::from_fn(row), step);
                    continue;
                }
                for b in 0..KSTEP.min(k - s * KSTEP) {
                    for (n, &v) in row(b).iter().enumerate() {
                        step[n * KSTEP + b] = v;
                    }
                }
            }
        }
        let mut start = vec![0; columns * COLUMN];
        for kk in 0..k {
            for (st, &v) in start.iter_mut().zip(&src[kk * stride..][..lanes]) {
                *st -= 128 * v as i32;
            }
        }
        Lanes {
            data,
            start,
            lanes,
            k,
        }
    }
}

/// Where the bytes of step `s` of lane column `column` start in [`Lanes::data`].
fn column_at(column: usize, columns: usize, steps: usize, s: usize) -> usize {
    let (first, width) = panel_of(column, columns);
    (first * steps + s * width + column - first) * KSTEP * COLUMN
}

/// One step of a column: four rows of sixteen lanes interleaved into `step`, lane by lane.
fn zip4(rows: [&[i8]; KSTEP], step: &mut [i8]) {
    assert!(rows.iter().all(|r| r.len() == COLUMN) && step.len() == KSTEP * COLUMN);
    // SAFETY: SSE2 is in the x86_64 baseline; the loads read each row's 16 bytes, the stores
    // write the step's 64 (both checked above).
    unsafe {
        let [a0, a1, a2, a3] = rows.map(|r| _mm_loadu_si128(r.as_ptr() as *const __m128i));
        let (low01, high01) = (_mm_unpacklo_epi8(a0, a1), _mm_unpackhi_epi8(a0, a1));
        let (low23, high23) = (_mm_unpacklo_epi8(a2, a3), _mm_unpackhi_epi8(a2, a3));
        let lanes = [
            _mm_unpacklo_epi16(low01, low23),
            _mm_unpackhi_epi16(low01, low23),
            _mm_unpacklo_epi16(high01, high23),
            _mm_unpackhi_epi16(high01, high23),
        ];
        for (i, v) in lanes.into_iter().enumerate() {
            _mm_storeu_si128(step.as_mut_ptr().add(16 * i) as *mut __m128i, v);
        }
    }
}

/// The first column of the panel holding `column`, and the panel's width in columns.
fn panel_of(column: usize, columns: usize) -> (usize, usize) {
    let first = column / COLUMNS * COLUMNS;
    (first, COLUMNS.min(columns - first))
}

/// `Σ_k rows[r][k] · lanes[l][k]` for `rows` rows, row `r` written as i8 by `fill(r, row)` (a
/// quantizer, say) into the buffer the kernel reads, a block of rows at a time: each block's
/// sums go to `finish(first_row, sums, out_rows)` while they are still in cache, with
/// `out_rows` the block's rows of `out` (`rows × lanes` values, row-major). Blocks are split
/// across the plan's threads.
pub fn product_into<T: Send>(
    lanes: &Lanes,
    rows: usize,
    fill: &(dyn Fn(usize, &mut [i8]) + Sync),
    out: &mut [T],
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    ensure!(available(), "the int8 product needs AVX-512 VNNI");
    let k = lanes.k;
    let steps = k.div_ceil(KSTEP);
    let kp = steps * KSTEP;
    let columns = lanes.lanes.div_ceil(COLUMN);
    let ld = columns * COLUMN;
    let geometry = Geometry {
        k,
        kp,
        width: lanes.lanes,
        ld,
        tile_rows: ROWS,
    };
    filled::product_into(geometry, rows, fill, out, finish, |a, n, sums| {
        for row in a.chunks_exact_mut(kp).take(n) {
            for v in &mut row[..k] {
                *v ^= i8::MIN;
            }
        }
        for first in (0..columns).step_by(COLUMNS) {
            let (_, width) = panel_of(first, columns);
            let panel =
                &lanes.data[first * steps * KSTEP * COLUMN..][..width * steps * KSTEP * COLUMN];
            let start = &lanes.start[first * COLUMN..][..width * COLUMN];
            let tile = match width {
                3 => tile::<3>,
                2 => tile::<2>,
                _ => tile::<1>,
            };
            for t in 0..n.div_ceil(ROWS) {
                // SAFETY: AVX-512 VNNI (checked above); the row buffer holds whole tiles of
                // ROWS rows of `kp` bytes, the panel `steps` steps of `width` columns, `start`
                // `width` columns, and `sums` ROWS rows of `ld` sums for every row tile, of
                // which the panel's columns start at `first · COLUMN`.
                unsafe {
                    tile(
                        a[t * ROWS * kp..][..ROWS * kp].as_ptr(),
                        kp,
                        panel.as_ptr(),
                        steps,
                        start.as_ptr(),
                        sums[t * ROWS * ld + first * COLUMN..].as_mut_ptr(),
                        ld,
                    )
                };
            }
        }
    })
}

/// One tile: `ROWS` rows from `rows` (unsigned bytes at stride `kp`) by a panel of `W`
/// columns, `steps` steps of 4 values of k, into `ROWS` rows of `W · 16` sums at `out` (row
/// stride `ld`), starting from `start`.
///
/// # Safety
/// AVX-512 F, BW and VNNI; `rows` holds `ROWS` rows of `steps · 4` bytes at stride `kp`, `panel`
/// `steps · W · 64` bytes, `start` `W · 16` values, `out` `ROWS` rows of `W · 16` at stride `ld`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const W: usize>(
    rows: *const i8,
    kp: usize,
    panel: *const i8,
    steps: usize,
    start: *const i32,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: within the buffers the caller vouches for.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); W]; ROWS];
        for c in 0..W {
            let s = _mm512_loadu_si512(start.add(c * COLUMN) as *const __m512i);
            for row in acc.iter_mut() {
                row[c] = s;
            }
        }
        for s in 0..steps {
            let mut w = [_mm512_setzero_si512(); W];
            for (c, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(panel.add((s * W + c) * KSTEP * COLUMN) as *const __m512i);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = (rows.add(r * kp + s * KSTEP) as *const i32).read_unaligned();
                let x = _mm512_set1_epi32(x);
                for (a, w) in row.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, x, *w);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm512_storeu_si512(out.add(r * ld + c * COLUMN) as *mut __m512i, *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::for_each_variant;

    for_each_variant! {
        fn matches_the_scalar_product_on_odd_shapes() {
            if !available() {
                eprintln!("skipped: no AVX-512 VNNI here");
                return;
            }
            filled::check_odd_shapes(|w, lanes, k, rows, fill, out, finish| {
                let packed = Lanes::pack(lanes, k, |l, kk| w[l * k + kk]);
                product_into(&packed, rows, fill, out, finish)
            });
        }
    }

    /// The transposed packing (whole columns and steps interleaved at once, the rest one
    /// value at a time) gives the lanes and corrections of the plain one.
    #[test]
    fn packs_transposed_lanes_alike() {
        for (lanes, k, stride) in [
            (1, 1, 1),
            (16, 4, 16),
            (17, 65, 20),
            (48, 8, 50),
            (130, 7, 130),
        ] {
            let src = crate::kernels::test_values(k * stride, 3);
            let transposed = Lanes::pack_transposed(&src, k, lanes, stride);
            let plain = Lanes::pack(lanes, k, |l, kk| src[kk * stride + l]);
            assert_eq!(transposed, plain, "{lanes} lanes, k {k}, stride {stride}");
        }
    }
}
