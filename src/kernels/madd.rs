//! Exact i8 × i8 → i32 products for x86 CPUs with AVX2 but no VNNI.
//!
//! tract-linalg's int8 kernel for these CPUs (`avx2_mmm_i32_8x8`) broadcasts and widens one
//! byte of the right operand at a time; on an AVX2-only AMD EPYC it ran convnext_atto's 1x1
//! convolutions 35x slower than its own f32 kernels. This product widens both operands to i16
//! once, when they are packed, and multiplies pairs of them with `vpmaddwd`: 16 products and
//! 8 additions per instruction, with no saturation for i8 values (a pair sums to at most
//! 2 · 128² = 32768, which `vpmaddwd` adds in i32). Results are exact, as with tract's kernels.
//!
//! The product is `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`:
//! - the *lane* operand is packed in panels of 16 lanes (two registers of 8 i32), each k-pair
//!   holding `(v[l][k], v[l][k+1])` as i16 for the 16 lanes;
//! - the *row* operand is row-major i16, one broadcast of `(v[r][k], v[r][k+1])` per k-pair;
//! - a tile is 6 rows × 16 lanes: 12 accumulators, two lane loads and six broadcasts per
//!   k-pair, 12 `vpmaddwd` — all in registers.
//!
//! The lane dimension is the output's contiguous one, so tiles are stored as whole vectors.
//!
//! ```
//! use convnext_edge::kernels::madd::{available, product_into, LanePanels, RowSource, Rows};
//! # fn main() -> tract_onnx::prelude::TractResult<()> {
//! if available() {
//!     // Two lanes and three rows of k = 3 values.
//!     let lanes = LanePanels::pack(2, 3, |l, k| [[1, 2, 3], [-1, 0, 127]][l][k]);
//!     let rows = Rows::pack(&[1, 1, 1, 2, 0, 0, -128, 0, 1], 3, 3);
//!     let mut out = [0i32; 6];
//!     product_into(&lanes, RowSource::Packed(&rows), &mut out, |_first, sums, out| {
//!         for (i, o) in out.chunks_mut(2).enumerate() {
//!             o.copy_from_slice(sums.row(i));
//!         }
//!         Ok(())
//!     })?;
//!     assert_eq!(out, [6, 126, 2, -2, -125, 255]);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! tract internals used (tract-linalg 0.23.9): `multithread::{par_chunks_mut,
//! current_tract_executor, Executor}`, to run on the plan's thread pool.

use tract_linalg::multithread::{current_tract_executor, par_chunks_mut, Executor};
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

pub use super::Sums;

/// Lanes per panel of the lane operand.
pub const LANES: usize = 16;
/// Rows per tile.
const ROWS: usize = 6;

/// Whether this CPU runs the product (AVX2).
pub fn available() -> bool {
    super::simd::has_avx2()
}

/// The lane operand: `lanes` vectors of `k` values, in panels of [`LANES`] (zero-padded).
#[derive(Debug, Clone, PartialEq)]
pub struct LanePanels {
    data: Vec<i16>,
    lanes: usize,
    kpairs: usize,
}

/// The row operand: `rows` vectors of `k` values, row-major, `k` padded to even and the rows
/// to a multiple of the tile's, with zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    data: Vec<i16>,
    rows: usize,
    kpairs: usize,
}

impl LanePanels {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> LanePanels {
        let kpairs = k.div_ceil(2);
        let mut data = vec![0i16; lanes.div_ceil(LANES) * kpairs * 2 * LANES];
        for (p, panel) in data.chunks_mut(kpairs * 2 * LANES).enumerate() {
            for (kp, group) in panel.chunks_mut(2 * LANES).enumerate() {
                for (j, pair) in group.chunks_mut(2).enumerate() {
                    let l = p * LANES + j;
                    if l < lanes {
                        for (d, kk) in pair.iter_mut().zip(2 * kp..k.min(2 * kp + 2)) {
                            *d = at(l, kk) as i16;
                        }
                    }
                }
            }
        }
        LanePanels {
            data,
            lanes,
            kpairs,
        }
    }

    /// Packs the `k` rows of `src` (`k × lanes`, row stride `stride`, lanes contiguous) as
    /// lanes: how a channels-first activation is laid out. Panels across the plan's threads.
    pub fn pack_transposed(
        src: &[i8],
        k: usize,
        lanes: usize,
        stride: usize,
    ) -> TractResult<LanePanels> {
        let kpairs = k.div_ceil(2);
        let panel_len = kpairs * 2 * LANES;
        let mut data = vec![0i16; lanes.div_ceil(LANES) * panel_len];
        par_chunks_mut(&mut data, panel_len, src.len(), |first, chunk| {
            for (pi, panel) in chunk.chunks_mut(panel_len).enumerate() {
                let l0 = (first + pi) * LANES;
                let width = LANES.min(lanes - l0);
                for (kp, group) in panel.chunks_mut(2 * LANES).enumerate() {
                    let row = |kk: usize| (kk < k).then(|| &src[kk * stride + l0..][..width]);
                    if let Some(r0) = row(2 * kp) {
                        for (d, v) in group.iter_mut().step_by(2).zip(r0) {
                            *d = *v as i16;
                        }
                    }
                    if let Some(r1) = row(2 * kp + 1) {
                        for (d, v) in group.iter_mut().skip(1).step_by(2).zip(r1) {
                            *d = *v as i16;
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(LanePanels {
            data,
            lanes,
            kpairs,
        })
    }
}

impl Rows {
    /// Widens `rows` rows of `k` i8 values (row-major in `src`).
    pub fn pack(src: &[i8], rows: usize, k: usize) -> Rows {
        let kpairs = k.div_ceil(2);
        let mut data = vec![0i16; rows.div_ceil(ROWS) * ROWS * kpairs * 2];
        for (row, src) in data
            .chunks_mut(kpairs * 2)
            .zip(src.chunks(k.max(1)).take(rows))
        {
            widen(src, row);
        }
        Rows { data, rows, kpairs }
    }
}

/// `src` as i16 into the first `src.len()` values of `dst`.
fn widen(src: &[i8], dst: &mut [i16]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = *v as i16;
    }
}

/// Where the row operand of [`product_into`] comes from.
#[derive(Clone, Copy)]
pub enum RowSource<'a> {
    /// Packed in advance (weights).
    Packed(&'a Rows),
    /// `rows` rows of `k` values, row `r` written as i8 by `fill(r, row)` (a quantizer, say),
    /// packed a block at a time as the product reaches them: the widened rows never make a
    /// round trip through memory.
    Fill {
        rows: usize,
        k: usize,
        fill: &'a (dyn Fn(usize, &mut [i8]) + Sync),
    },
}

impl RowSource<'_> {
    fn rows(&self) -> usize {
        match self {
            RowSource::Packed(r) => r.rows,
            RowSource::Fill { rows, .. } => *rows,
        }
    }

    fn kpairs(&self) -> usize {
        match self {
            RowSource::Packed(r) => r.kpairs,
            RowSource::Fill { k, .. } => k.div_ceil(2),
        }
    }
}

/// Accumulators a block of rows keeps before they are handed on, in bytes: a quarter of the
/// 512 KiB L2 of the AVX2 server cores this runs on, so that the epilogue reads them from cache.
/// Writing every sum of convnext_tiny's first stage (4.8 MB) before reading it back made those
/// products run half as fast again as the same number of products in the third stage.
const BLOCK_SUMS_BYTES: usize = 128 * 1024;
/// Fewest tiles per block: a lane panel brought into L1 serves at least this many tiles
/// (where the lanes are wide, the panels are weights streamed from L3 once per block).
const MIN_BLOCK_TILES: usize = 8;

/// `Σ_k rows[r][k] · lanes[l][k]` for every row and lane, a block of rows at a time: each
/// block's sums go to `finish(first_row, sums, out_rows)` while they are still in cache, with
/// `out_rows` the block's rows of `out` (`out` holds `rows × lanes` values, row-major).
///
/// Blocks are split across the plan's threads; a thread streams the whole lane operand once
/// per block (convnext_tiny's last stage: 49 positions, 4.7 MB of i16 weights, one block per
/// thread).
pub fn product_into<T: Send>(
    lanes: &LanePanels,
    rows: RowSource,
    out: &mut [T],
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let tiles = rows.rows().div_ceil(ROWS);
    let tile_bytes = ROWS * lanes.lanes.div_ceil(LANES) * LANES * 4;
    let per_block = (BLOCK_SUMS_BYTES / tile_bytes.max(1)).max(MIN_BLOCK_TILES);
    let blocks = tiles.div_ceil(per_block).max(threads().min(tiles));
    run_blocks(lanes, rows, out, tiles.div_ceil(blocks.max(1)), finish)
}

/// [`product_into`] in blocks of `per_block` tiles.
fn run_blocks<T: Send>(
    lanes: &LanePanels,
    rows: RowSource,
    out: &mut [T],
    per_block: usize,
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let (kpairs, width) = (rows.kpairs(), lanes.lanes);
    ensure!(lanes.kpairs == kpairs, "operands of different depth");
    ensure!(kpairs > 0, "empty product");
    ensure!(out.len() == rows.rows() * width, "output of the wrong size");
    ensure!(available(), "the madd product needs AVX2");
    if out.is_empty() {
        return Ok(());
    }
    let ld = width.div_ceil(LANES) * LANES;
    let block_rows = per_block.max(1) * ROWS;
    let mut blocks: Vec<&mut [T]> = out.chunks_mut(block_rows * width).collect();
    let work = rows.rows() * width * kpairs;
    par_chunks_mut(&mut blocks, 1, work, |first, chunk| {
        let mut sums = vec![0i32; block_rows * ld];
        let mut packed = Vec::new();
        let mut bytes = Vec::new();
        for (b, out) in chunk.iter_mut().enumerate() {
            let r0 = (first + b) * block_rows;
            let n = out.len() / width;
            let src = match rows {
                RowSource::Packed(p) => {
                    &p.data[r0 * kpairs * 2..][..n.div_ceil(ROWS) * ROWS * kpairs * 2]
                }
                RowSource::Fill { k, fill, .. } => {
                    // Rows past `n` keep stale values: their sums are computed, never read.
                    packed.resize(block_rows * kpairs * 2, 0);
                    bytes.resize(k, 0);
                    for (i, row) in packed.chunks_mut(kpairs * 2).take(n).enumerate() {
                        fill(r0 + i, &mut bytes);
                        widen(&bytes, row);
                    }
                    &packed[..]
                }
            };
            for (p, panel) in lanes.data.chunks_exact(kpairs * 2 * LANES).enumerate() {
                for t in 0..n.div_ceil(ROWS) {
                    // SAFETY: `available()` checked AVX2; the panel holds `kpairs` pairs of
                    // LANES lanes, `src` whole tiles of ROWS rows from `t`, and `sums` from
                    // `t · ROWS · ld + p · LANES` holds ROWS rows of LANES values at stride
                    // `ld` (`ld` covers every panel).
                    unsafe {
                        tile_avx2::<ROWS>(
                            panel,
                            &src[t * ROWS * kpairs * 2..],
                            kpairs,
                            &mut sums[t * ROWS * ld + p * LANES..],
                            ld,
                        )
                    };
                }
            }
            finish(r0, Sums::new(&sums, ld, width), out)?;
        }
        Ok(())
    })
}

/// The threads of the executor tract runs the plan on.
fn threads() -> usize {
    match current_tract_executor() {
        Executor::SingleThread => 1,
        Executor::MultiThread(pool) => pool.current_num_threads(),
        Executor::RayonGlobal => rayon::current_num_threads(),
    }
}

#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const R: usize>(
    panel: &[i16],
    rows: &[i16],
    kpairs: usize,
    out: &mut [i32],
    ld: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(panel.len() >= kpairs * 2 * LANES && rows.len() >= R * kpairs * 2);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let lp = panel.as_ptr();
    let rp = rows.as_ptr();
    for kp in 0..kpairs {
        let v0 = _mm256_loadu_si256(lp.add(kp * 2 * LANES) as *const __m256i);
        let v1 = _mm256_loadu_si256(lp.add(kp * 2 * LANES + LANES) as *const __m256i);
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = (rp.add(r * kpairs * 2 + kp * 2) as *const i32).read_unaligned();
            let b = _mm256_set1_epi32(pair);
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(v0, b));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(v1, b));
        }
    }
    debug_assert!(out.len() >= (R - 1) * ld + LANES);
    for (r, acc) in acc.iter().enumerate() {
        let o = out.as_mut_ptr().add(r * ld);
        _mm256_storeu_si256(o as *mut __m256i, acc[0]);
        _mm256_storeu_si256(o.add(8) as *mut __m256i, acc[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<i8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8 as i8)
            .collect()
    }

    /// Checks the product against `expected` (row-major, `lanes` sums per row): each block's
    /// sums as `finish` is handed them, and that every row of the output was handed over.
    fn check(lanes: &LanePanels, rows: RowSource, per_block: Option<usize>, expected: &[i32]) {
        let width = lanes.lanes;
        let mut out = vec![i32::MIN; rows.rows() * width];
        let finish = |first: usize, sums: Sums, out: &mut [i32]| {
            for (i, o) in out.chunks_mut(width).enumerate() {
                assert_eq!(sums.row(i), &expected[(first + i) * width..][..width]);
                o.copy_from_slice(sums.row(i));
            }
            Ok(())
        };
        match per_block {
            Some(b) => run_blocks(lanes, rows, &mut out, b, finish).unwrap(),
            None => product_into(lanes, rows, &mut out, finish).unwrap(),
        }
        assert_eq!(out, expected);
    }

    /// Both row sources and both lane packings against the plain triple loop, on odd sizes,
    /// the extreme values and blocks of one tile, a few tiles and all.
    #[test]
    fn matches_the_scalar_product() {
        if !available() {
            return;
        }
        for (m, k, n) in [
            (1, 1, 1),
            (16, 2, 6),
            (40, 19, 50),
            (17, 96, 13),
            (7, 3, 33),
            (33, 5, 700),
        ] {
            let a = values(m * k, 1); // lanes: m vectors of k
            let mut b = values(n * k, 2); // rows: n vectors of k
            b[0] = -128;
            let expected: Vec<i32> = (0..n)
                .flat_map(|r| {
                    let (a, b) = (&a, &b);
                    (0..m).map(move |l| {
                        (0..k)
                            .map(|kk| a[l * k + kk] as i32 * b[r * k + kk] as i32)
                            .sum()
                    })
                })
                .collect();
            let lanes = LanePanels::pack(m, k, |l, kk| a[l * k + kk]);
            let packed = Rows::pack(&b, n, k);
            let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&b[r * k..][..k]);
            let filled = RowSource::Fill {
                rows: n,
                k,
                fill: &fill,
            };
            for per_block in [None, Some(1), Some(3)] {
                check(&lanes, RowSource::Packed(&packed), per_block, &expected);
                check(&lanes, filled, per_block, &expected);
            }
            // The same lanes from a k × m (transposed) source.
            let at: Vec<i8> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let transposed = LanePanels::pack_transposed(&at, k, m, m).unwrap();
            assert_eq!(transposed, lanes);
        }
    }

    /// Operands that do not fit are an error, not a wrong answer.
    #[test]
    fn mismatched_operands_are_refused() {
        if !available() {
            return;
        }
        let lanes = LanePanels::pack(4, 3, |_, _| 1);
        let rows = Rows::pack(&[1; 10], 2, 5);
        let mut out = [0i32; 8];
        assert!(
            product_into(&lanes, RowSource::Packed(&rows), &mut out, |_, _, _| Ok(())).is_err()
        );
        let rows = Rows::pack(&[1; 6], 2, 3);
        let mut short = [0i32; 7];
        assert!(
            product_into(&lanes, RowSource::Packed(&rows), &mut short, |_, _, _| Ok(
                ()
            ))
            .is_err()
        );
    }
}
