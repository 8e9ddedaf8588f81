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
//! use convnext_edge::kernels::madd::{available, product, LanePanels, Rows};
//! # fn main() -> tract_onnx::prelude::TractResult<()> {
//! if available() {
//!     // Two lanes and three rows of k = 3 values.
//!     let lanes = LanePanels::pack(2, 3, |l, k| [[1, 2, 3], [-1, 0, 127]][l][k]);
//!     let rows = Rows::pack(&[1, 1, 1, 2, 0, 0, -128, 0, 1], 3, 3)?;
//!     let out = product(&lanes, &rows, 2)?;
//!     let out = out.try_as_plain_ram()?;
//!     assert_eq!(&out.as_slice::<i32>()?[..6], &[6, 126, 2, -2, -125, 255]);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! tract internals used (tract-linalg 0.23.9): `multithread::{par_chunks_mut,
//! current_tract_executor, Executor}`, to run on the plan's thread pool.

use tract_linalg::multithread::{current_tract_executor, par_chunks_mut, Executor};
use tract_onnx::prelude::{Tensor, TractResult};

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
    pub fn pack(src: &[i8], rows: usize, k: usize) -> TractResult<Rows> {
        Rows::pack_with(rows, k, |r, row| row.copy_from_slice(&src[r * k..][..k]))
    }

    /// `rows` rows of `k` values, row `r` written as i8 by `fill(r, row)` (a quantizer, say),
    /// across the plan's threads.
    pub fn pack_with(
        rows: usize,
        k: usize,
        fill: impl Fn(usize, &mut [i8]) + Sync + Send,
    ) -> TractResult<Rows> {
        let kpairs = k.div_ceil(2);
        let mut data = vec![0i16; rows.div_ceil(ROWS) * ROWS * kpairs * 2];
        if k > 0 && rows > 0 {
            let filled = &mut data[..rows * kpairs * 2];
            par_chunks_mut(filled, kpairs * 2, rows * k, |first, chunk| {
                let mut bytes = vec![0i8; k];
                for (i, row) in chunk.chunks_mut(kpairs * 2).enumerate() {
                    fill(first + i, &mut bytes);
                    for (d, v) in row.iter_mut().zip(&bytes) {
                        *d = *v as i16;
                    }
                }
                Ok(())
            })?;
        }
        Ok(Rows { data, rows, kpairs })
    }
}

/// `out[r · ld + l] = Σ_k rows[r][k] · lanes[l][k]` for every row and lane, in a new
/// `[R, ld]` tensor with `R ≥ rows` (rows past the operand's are padding, to be ignored).
///
/// The rows are split in one run of whole tiles per thread: a thread streams the whole lane
/// operand once, so fewer, longer runs keep the traffic down where the lane operand is large
/// and the rows few (convnext_tiny's last stage: 49 positions, 4.7 MB of i16 weights).
pub fn product(lanes: &LanePanels, rows: &Rows, ld: usize) -> TractResult<Tensor> {
    assert_eq!(lanes.kpairs, rows.kpairs, "operands of different depth");
    assert!(ld >= lanes.lanes);
    assert!(available(), "the madd product needs AVX2");
    let kpairs = rows.kpairs;
    let tiles = rows.rows.div_ceil(ROWS);
    let per_run = tiles.div_ceil(threads()).max(1);
    let runs = tiles.div_ceil(per_run).max(1);
    let run_len = per_run * ROWS * ld;
    let mut acc = unsafe { Tensor::uninitialized::<i32>(&[runs * per_run * ROWS, ld])? };
    let mut view = acc.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<i32>()?;
    let work = rows.rows * lanes.lanes * kpairs;
    par_chunks_mut(out, run_len, work, |first, chunk| {
        for (i, run) in chunk.chunks_mut(run_len).enumerate() {
            let t0 = (first + i) * per_run;
            let n = tiles.saturating_sub(t0).min(per_run);
            for (p, panel) in lanes.data.chunks(kpairs * 2 * LANES).enumerate() {
                let l0 = p * LANES;
                let width = LANES.min(lanes.lanes - l0);
                for t in 0..n {
                    let src = &rows.data[(t0 + t) * ROWS * kpairs * 2..][..ROWS * kpairs * 2];
                    tile(
                        panel,
                        src,
                        kpairs,
                        &mut run[t * ROWS * ld + l0..],
                        ld,
                        width,
                    );
                }
            }
        }
        Ok(())
    })?;
    Ok(acc)
}

/// The threads of the executor tract runs the plan on.
fn threads() -> usize {
    match current_tract_executor() {
        Executor::SingleThread => 1,
        Executor::MultiThread(pool) => pool.current_num_threads(),
        Executor::RayonGlobal => rayon::current_num_threads(),
    }
}

/// One tile of [`ROWS`] rows × [`LANES`] lanes, `width` lanes stored: whole tiles straight
/// into `out`, a narrower last panel through a scratch tile.
fn tile(panel: &[i16], rows: &[i16], kpairs: usize, out: &mut [i32], ld: usize, width: usize) {
    // SAFETY (both calls): `product` checked AVX2; the slices cover `kpairs` pairs of the
    // panel and of `ROWS` rows, and the output holds `ROWS` rows of `LANES` values at stride
    // `ld` (`tile_avx2` touches nothing else).
    if width == LANES && out.len() >= (ROWS - 1) * ld + LANES {
        unsafe { tile_avx2::<ROWS>(panel, rows, kpairs, out, ld) };
        return;
    }
    let mut scratch = [0i32; ROWS * LANES];
    unsafe { tile_avx2::<ROWS>(panel, rows, kpairs, &mut scratch, LANES) };
    for (r, acc) in scratch.chunks(LANES).enumerate() {
        if let Some(o) = out.get_mut(r * ld..r * ld + width) {
            o.copy_from_slice(&acc[..width]);
        }
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

    /// Both packings against the plain triple loop, on odd sizes and the extreme values.
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
            let rows = Rows::pack(&b, n, k).unwrap();
            let lanes = LanePanels::pack(m, k, |l, kk| a[l * k + kk]);
            let out = product(&lanes, &rows, m + 3).unwrap();
            assert!(out.shape()[0] >= n && out.shape()[1] == m + 3);
            let out = out.try_as_plain_ram().unwrap();
            let out = out.as_slice::<i32>().unwrap();
            for r in 0..n {
                assert_eq!(&out[r * (m + 3)..][..m], &expected[r * m..][..m]);
            }
            // The same lanes from a k × m (transposed) source.
            let at: Vec<i8> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let transposed = LanePanels::pack_transposed(&at, k, m, m).unwrap();
            assert_eq!(transposed, lanes);
        }
    }
}
