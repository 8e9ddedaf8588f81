//! Exact i8 × i8 → i32 products on CPUs where tract-linalg's int8 kernels lose to its own f32
//! ones, blocked so that the epilogue reads each block of sums from cache.
//!
//! - **x86 with AVX2 but no VNNI.** tract-linalg's kernel (`avx2_mmm_i32_8x8`) broadcasts and
//!   widens one byte of the right operand at a time; on an AVX2-only AMD EPYC it ran
//!   convnext_atto's 1x1 convolutions 35x slower than its own f32 kernels. Here both operands
//!   are widened to i16 once, when they are packed, and pairs are multiplied with `vpmaddwd`:
//!   16 products and 8 additions per instruction, with no saturation for i8 values (a pair sums
//!   to at most 2 · 128² = 32768, which `vpmaddwd` adds in i32). A tile is 6 rows × 16 lanes:
//!   12 accumulators, two lane loads and six broadcasts per k-pair.
//! - **arm64** — without the dot-product extension (Pi 3/4, Zero 2, Jetson Nano), tract-linalg's
//!   kernel (`arm64simd_mmm_i32_8x8`) widens both operands to i16 and multiplies 4 lanes per
//!   `SMLAL`, as many as `FMLA` does in f32, so convnext_atto's int8 products cost more
//!   instructions than its f32 ones. Here `SMULL` + `SMLAL2` multiply 16 bytes of a row by 16
//!   of a lane into 8 i16 sums of two products, and `SADALP` adds those pairs into 4 i32:
//!   16 products in 3 instructions, a tile of 4 rows × 4 lanes in 16 accumulators, reduced
//!   across their 4 partial sums once at the end. Two products fit i16 unless both are
//!   (−128)², so one operand must not hold −128 ([`exact_for`]); onnxruntime's quantizer
//!   writes symmetric int8 weights in [−127, 127]. With the dot-product extension (Pi 5, Orin,
//!   Xavier) the same tile runs on `SDOT`, 16 products in one instruction, in i32; it replaces
//!   tract's SDOT kernel for its packing and blocking (convnext_atto's int8 products and their
//!   packing: 69 → 60 M instructions under qemu's cortex-a76).
//!
//! The product is `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`. Both operands are stored in
//! steps of [`KSTEP`] values of k (2 on x86, 16 on arm64; zero-padded): the *lane* operand in
//! panels of [`LANES`] lanes, step after step, each step holding the lanes' values one lane
//! after the other; the *row* operand row-major. The lane dimension is the output's contiguous
//! one, so tiles are stored as whole vectors.
//!
//! ```
//! use convnext_edge::kernels::product::{available, product_into, LanePanels, RowSource, Rows};
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
//! tract internals used (tract-linalg 0.23.9): `multithread::par_chunks_mut`, to run on the
//! plan's thread pool.

use tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

use super::block_rows;
pub use super::Sums;
pub use arch::{available, exact_for, kernel, KSTEP, LANES};
use arch::{elem, tile_kernel, Elem, ROWS};

/// The lane operand: `lanes` vectors of `k` values, in panels of [`LANES`] (zero-padded).
#[derive(Debug, Clone, PartialEq)]
pub struct LanePanels {
    data: Vec<Elem>,
    lanes: usize,
    k: usize,
}

/// The row operand: `rows` vectors of `k` values, row-major, `k` padded to whole steps and the
/// rows to a multiple of the tile's, with zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    data: Vec<Elem>,
    rows: usize,
    k: usize,
}

/// Values of one panel: `steps` steps of [`LANES`] × [`KSTEP`].
fn panel_len(steps: usize) -> usize {
    steps * LANES * KSTEP
}

impl LanePanels {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> LanePanels {
        let steps = k.div_ceil(KSTEP);
        let mut data = vec![0; lanes.div_ceil(LANES) * panel_len(steps)];
        for (p, panel) in data.chunks_mut(panel_len(steps)).enumerate() {
            for (s, step) in panel.chunks_mut(LANES * KSTEP).enumerate() {
                for (j, lane) in step.chunks_mut(KSTEP).enumerate() {
                    let l = p * LANES + j;
                    if l < lanes {
                        for (d, kk) in lane.iter_mut().zip(s * KSTEP..k.min((s + 1) * KSTEP)) {
                            *d = elem(at(l, kk));
                        }
                    }
                }
            }
        }
        LanePanels { data, lanes, k }
    }

    /// Packs the `k` rows of `src` (`k × lanes`, row stride `stride`, lanes contiguous) as
    /// lanes: how a channels-first activation is laid out. Panels across the plan's threads.
    pub fn pack_transposed(
        src: &[i8],
        k: usize,
        lanes: usize,
        stride: usize,
    ) -> TractResult<LanePanels> {
        let steps = k.div_ceil(KSTEP);
        let len = panel_len(steps);
        let mut data = vec![0; lanes.div_ceil(LANES) * len];
        par_chunks_mut(&mut data, len, src.len(), |first, chunk| {
            for (pi, panel) in chunk.chunks_mut(len).enumerate() {
                let l0 = (first + pi) * LANES;
                let width = LANES.min(lanes - l0);
                #[cfg(target_arch = "aarch64")]
                let whole = {
                    let whole = if width == LANES { k / KSTEP } else { 0 };
                    for (s, step) in panel
                        .chunks_exact_mut(LANES * KSTEP)
                        .take(whole)
                        .enumerate()
                    {
                        let at = s * KSTEP * stride + l0;
                        assert!(at + (KSTEP - 1) * stride + LANES <= src.len());
                        // SAFETY: NEON; the reads are inside `src` (checked above).
                        unsafe { arch::transpose_step(src[at..].as_ptr(), stride, step) };
                    }
                    whole
                };
                #[cfg(not(target_arch = "aarch64"))]
                let whole = 0;
                for kk in whole * KSTEP..k {
                    let step = &mut panel[kk / KSTEP * LANES * KSTEP + kk % KSTEP..];
                    let row = &src[kk * stride + l0..][..width];
                    for (d, v) in step.iter_mut().step_by(KSTEP).zip(row) {
                        *d = elem(*v);
                    }
                }
            }
            Ok(())
        })?;
        Ok(LanePanels { data, lanes, k })
    }
}

impl Rows {
    /// Packs `rows` rows of `k` i8 values (row-major in `src`).
    pub fn pack(src: &[i8], rows: usize, k: usize) -> Rows {
        let steps = k.div_ceil(KSTEP);
        let mut data = vec![0; rows.div_ceil(ROWS) * ROWS * steps * KSTEP];
        for (row, src) in data
            .chunks_mut(steps * KSTEP)
            .zip(src.chunks(k.max(1)).take(rows))
        {
            store(src, row);
        }
        Rows { data, rows, k }
    }
}

/// `src` as the operands' element type into the first `src.len()` values of `dst`.
fn store(src: &[i8], dst: &mut [Elem]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = elem(*v);
    }
}

/// A tile kernel: `ROWS` rows (`steps` steps each) by one panel of `LANES` lanes into
/// `ROWS` rows of sums at a stride.
type Tile = unsafe fn(&[Elem], &[Elem], usize, &mut [i32], usize);

/// Where the row operand of [`product_into`] comes from.
#[derive(Clone, Copy)]
pub enum RowSource<'a> {
    /// Packed in advance (weights).
    Packed(&'a Rows),
    /// `rows` rows of `k` values, row `r` written as i8 by `fill(r, row)` (a quantizer, say),
    /// packed a block at a time as the product reaches them: the packed rows never make a
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

    fn k(&self) -> usize {
        match self {
            RowSource::Packed(r) => r.k,
            RowSource::Fill { k, .. } => *k,
        }
    }
}

/// Fewest tiles per block: a lane panel brought into L1 serves at least this many tiles
/// (where the lanes are wide, the panels are weights streamed from L3 once per block).
const MIN_BLOCK_TILES: usize = 8;

/// `Σ_k rows[r][k] · lanes[l][k]` for every row and lane, a block of rows at a time: each
/// block's sums go to `finish(first_row, sums, out_rows)` while they are still in cache, with
/// `out_rows` the block's rows of `out` (`out` holds `rows × lanes` values, row-major).
///
/// Blocks are split across the plan's threads; a thread streams the whole lane operand once
/// per block (convnext_tiny's last stage: 49 positions, 4.7 MB of i16 weights on x86, one block
/// per thread).
pub fn product_into<T: Send>(
    lanes: &LanePanels,
    rows: RowSource,
    out: &mut [T],
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let row_bytes = lanes.lanes.div_ceil(LANES) * LANES * 4;
    let block = block_rows(rows.rows(), ROWS, row_bytes, MIN_BLOCK_TILES);
    run_blocks(lanes, rows, out, block, finish)
}

/// `body(scratch, first_row, out_rows)` for each block of `block_rows` rows of `out` (rows of
/// `width` values), blocks split across the plan's threads (`work`: the cost estimate that
/// decides whether to split), with `scratch()` made once per thread's share.
pub(crate) fn par_blocks<T: Send, S>(
    out: &mut [T],
    width: usize,
    block_rows: usize,
    work: usize,
    scratch: impl Fn() -> S + Sync,
    body: impl Fn(&mut S, usize, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let mut blocks: Vec<&mut [T]> = out.chunks_mut(block_rows * width).collect();
    par_chunks_mut(&mut blocks, 1, work, |first, chunk| {
        let mut s = scratch();
        for (b, out) in chunk.iter_mut().enumerate() {
            body(&mut s, (first + b) * block_rows, out)?;
        }
        Ok(())
    })
}

/// [`product_into`] in blocks of `block_rows` rows.
fn run_blocks<T: Send>(
    lanes: &LanePanels,
    rows: RowSource,
    out: &mut [T],
    block_rows: usize,
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let (k, width) = (rows.k(), lanes.lanes);
    ensure!(lanes.k == k, "operands of different depth");
    ensure!(k > 0, "empty product");
    let steps = k.div_ceil(KSTEP);
    ensure!(out.len() == rows.rows() * width, "output of the wrong size");
    ensure!(available(), "the int8 product needs {}", arch::NEEDS);
    if out.is_empty() {
        return Ok(());
    }
    let ld = width.div_ceil(LANES) * LANES;
    let tile = tile_kernel();
    let work = rows.rows() * width * steps;
    let scratch = || (vec![0i32; block_rows * ld], Vec::new(), Vec::new());
    par_blocks(
        out,
        width,
        block_rows,
        work,
        scratch,
        |(sums, packed, bytes), r0, out| {
            let n = out.len() / width;
            let src = match rows {
                RowSource::Packed(p) => {
                    &p.data[r0 * steps * KSTEP..][..n.div_ceil(ROWS) * ROWS * steps * KSTEP]
                }
                RowSource::Fill { fill, .. } => {
                    // Rows past `n` keep stale values: their sums are computed, never read.
                    packed.resize(block_rows * steps * KSTEP, 0);
                    bytes.resize(k, 0);
                    for (i, row) in packed.chunks_mut(steps * KSTEP).take(n).enumerate() {
                        fill(r0 + i, bytes);
                        store(bytes, row);
                    }
                    &packed[..]
                }
            };
            for (p, panel) in lanes.data.chunks_exact(steps * KSTEP * LANES).enumerate() {
                for t in 0..n.div_ceil(ROWS) {
                    // SAFETY: `available()` checked the CPU; the panel holds `steps` steps
                    // of LANES lanes, `src` whole tiles of ROWS rows from `t`, and `sums` from
                    // `t · ROWS · ld + p · LANES` holds ROWS rows of LANES values at stride
                    // `ld` (`ld` covers every panel).
                    unsafe {
                        tile(
                            panel,
                            &src[t * ROWS * steps * KSTEP..],
                            steps,
                            &mut sums[t * ROWS * ld + p * LANES..],
                            ld,
                        )
                    };
                }
            }
            finish(r0, Sums::new(sums, ld, width), out)
        },
    )
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use std::arch::x86_64::*;

    /// Operands are stored widened: `vpmaddwd` multiplies i16.
    pub(super) type Elem = i16;

    pub(super) fn elem(v: i8) -> i16 {
        v as i16
    }
    /// Lanes per panel of the lane operand (two registers of 8 i32).
    pub const LANES: usize = 16;
    /// Values of k per step: the pair `vpmaddwd` adds.
    pub const KSTEP: usize = 2;
    /// Rows per tile.
    pub(super) const ROWS: usize = 6;
    pub(super) const NEEDS: &str = "AVX2";
    /// The kernel's name in profiles.
    pub fn kernel() -> &'static str {
        "convnext_edge_avx2_madd_i32_6x16"
    }

    /// Whether this CPU runs the product (AVX2).
    pub fn available() -> bool {
        crate::kernels::simd::has_avx2()
    }

    /// Whether the product of `values` by any i8 operand is exact: always, in i32.
    pub fn exact_for(_values: &[i8]) -> bool {
        true
    }

    /// The tile kernel for this CPU.
    pub(super) fn tile_kernel() -> super::Tile {
        tile
    }

    /// One tile: `ROWS` rows (`rows`, `steps` pairs each) by the panel's `LANES` lanes into
    /// `out` (`ROWS` rows at stride `ld`).
    ///
    /// # Safety
    /// AVX2; `panel` and `rows` hold `steps` whole steps, `out` the tile.
    #[target_feature(enable = "avx2")]
    unsafe fn tile(panel: &[i16], rows: &[i16], steps: usize, out: &mut [i32], ld: usize) {
        debug_assert!(panel.len() >= steps * 2 * LANES && rows.len() >= ROWS * steps * 2);
        debug_assert!(out.len() >= (ROWS - 1) * ld + LANES);
        let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
        let lp = panel.as_ptr();
        let rp = rows.as_ptr();
        // SAFETY (all pointer reads and writes): within the lengths asserted above.
        unsafe {
            for s in 0..steps {
                let v0 = _mm256_loadu_si256(lp.add(s * 2 * LANES) as *const __m256i);
                let v1 = _mm256_loadu_si256(lp.add(s * 2 * LANES + LANES) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = (rp.add(r * steps * 2 + s * 2) as *const i32).read_unaligned();
                    let b = _mm256_set1_epi32(pair);
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(v0, b));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(v1, b));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let o = out.as_mut_ptr().add(r * ld);
                _mm256_storeu_si256(o as *mut __m256i, acc[0]);
                _mm256_storeu_si256(o.add(8) as *mut __m256i, acc[1]);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use std::arch::aarch64::*;

    /// Operands are stored as bytes: `SMULL` multiplies i8.
    pub(super) type Elem = i8;

    pub(super) fn elem(v: i8) -> i8 {
        v
    }
    /// Lanes per panel of the lane operand.
    pub const LANES: usize = 4;
    /// Values of k per step: one 16-byte register.
    pub const KSTEP: usize = 16;
    /// Rows per tile: 4 × 4 accumulators, 4 lane registers and a row leave room for the
    /// products in the 32 NEON registers.
    pub(super) const ROWS: usize = 4;
    pub(super) const NEEDS: &str = "NEON";
    /// The kernel's name in profiles.
    pub fn kernel() -> &'static str {
        if dot() {
            "convnext_edge_neon_sdot_i32_4x4"
        } else {
            "convnext_edge_neon_smull_i32_4x4"
        }
    }

    /// The dot-product extension (`SDOT`; Cortex-A55/A76 and later: Pi 5, Orin, Xavier).
    fn dot() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    /// Lane `j`'s 16 values of k from the table of [`transpose_step`]: byte 16·(k / 4) +
    /// 4·(k % 4) + j.
    const GATHER: [[u8; 16]; LANES] = {
        let mut idx = [[0u8; 16]; LANES];
        let mut j = 0;
        while j < LANES {
            let mut k = 0;
            while k < 16 {
                idx[j][k] = (16 * (k / 4) + 4 * (k % 4) + j) as u8;
                k += 1;
            }
            j += 1;
        }
        idx
    };

    /// One whole step of a panel (`KSTEP` values of k for its `LANES` lanes) from the `KSTEP`
    /// rows of four bytes at `src + k · stride`: the rows' words loaded into four registers,
    /// then each lane's bytes gathered from them by one `TBL`, instead of 64 byte moves.
    ///
    /// # Safety
    /// Reads `src[k · stride..][..LANES]` for `k < KSTEP`.
    pub(super) unsafe fn transpose_step(src: *const i8, stride: usize, step: &mut [i8]) {
        assert_eq!(step.len(), LANES * KSTEP);
        // SAFETY: the reads as the caller promises, the store into `step` (checked).
        unsafe {
            let word = |k: usize| (src.add(k * stride) as *const u32).read_unaligned();
            let quad = |k: usize| {
                let v = vsetq_lane_u32::<0>(word(k), vdupq_n_u32(0));
                let v = vsetq_lane_u32::<1>(word(k + 1), v);
                let v = vsetq_lane_u32::<2>(word(k + 2), v);
                vreinterpretq_u8_u32(vsetq_lane_u32::<3>(word(k + 3), v))
            };
            let table = uint8x16x4_t(quad(0), quad(4), quad(8), quad(12));
            let lane = |j: usize| vqtbl4q_u8(table, vld1q_u8(GATHER[j].as_ptr()));
            let lanes = uint8x16x4_t(lane(0), lane(1), lane(2), lane(3));
            vst1q_u8_x4(step.as_mut_ptr() as *mut u8, lanes);
        }
    }

    /// Whether this CPU runs the product: every aarch64 CPU has NEON.
    pub fn available() -> bool {
        true
    }

    /// Whether the product of `values` by any i8 operand is exact: `SDOT` adds in i32, but
    /// `SMLAL2` adds two products in i16, which overflows only for two products of −128 by
    /// −128.
    pub fn exact_for(values: &[i8]) -> bool {
        dot() || !values.contains(&i8::MIN)
    }

    /// The tile kernel for this CPU: `SDOT` where it has it, else `SMULL`.
    pub(super) fn tile_kernel() -> super::Tile {
        if dot() {
            tile_sdot
        } else {
            tile_smull
        }
    }

    /// One tile: `ROWS` rows (`rows`, `steps` steps each) by the panel's `LANES` lanes into
    /// `out` (`ROWS` rows at stride `ld`).
    ///
    /// # Safety
    /// `panel` and `rows` hold `steps` whole steps, `out` the tile; the lanes or the rows are
    /// [`exact_for`].
    unsafe fn tile_smull(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
        // SAFETY: as the caller promises.
        unsafe {
            tile_with(panel, rows, steps, out, ld, |acc, x, lane| {
                let pairs = vmlal_high_s8(vmull_s8(vget_low_s8(x), vget_low_s8(lane)), x, lane);
                vpadalq_s16(acc, pairs)
            })
        }
    }

    /// [`tile_smull`] with `SDOT`: four products added into each i32 lane, one instruction for
    /// the three of `SMULL` + `SMLAL2` + `SADALP`, in i32 (no −128 restriction). Written as
    /// assembly: the intrinsic is not stable Rust yet.
    ///
    /// # Safety
    /// As [`tile_smull`], on a CPU with SDOT.
    #[target_feature(enable = "dotprod")]
    unsafe fn tile_sdot(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
        // SAFETY: as the caller promises.
        unsafe {
            tile_with(panel, rows, steps, out, ld, |mut acc, x, lane| {
                std::arch::asm!(
                    "sdot {acc:v}.4s, {x:v}.16b, {lane:v}.16b",
                    acc = inout(vreg) acc,
                    x = in(vreg) x,
                    lane = in(vreg) lane,
                    options(pure, nomem, nostack),
                );
                acc
            })
        }
    }

    /// The tile's loop, with `mac(acc, x, lane)` adding the products of 16 bytes of a row and
    /// a lane into the four i32 of `acc`; each output's four partial sums are added at the end.
    ///
    /// # Safety
    /// As [`tile_smull`].
    #[inline(always)]
    unsafe fn tile_with(
        panel: &[i8],
        rows: &[i8],
        steps: usize,
        out: &mut [i32],
        ld: usize,
        mac: impl Fn(int32x4_t, int8x16_t, int8x16_t) -> int32x4_t,
    ) {
        debug_assert!(panel.len() >= steps * KSTEP * LANES && rows.len() >= ROWS * steps * KSTEP);
        debug_assert!(out.len() >= (ROWS - 1) * ld + LANES);
        let row_len = steps * KSTEP;
        // SAFETY (all pointer reads and writes): within the lengths asserted above.
        unsafe {
            let mut acc = [[vdupq_n_s32(0); LANES]; ROWS];
            for s in 0..steps {
                let l = vld1q_s8_x4(panel.as_ptr().add(s * KSTEP * LANES));
                let lanes = [l.0, l.1, l.2, l.3];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = vld1q_s8(rows.as_ptr().add(r * row_len + s * KSTEP));
                    for (acc, lane) in acc.iter_mut().zip(lanes) {
                        *acc = mac(*acc, x, lane);
                    }
                }
            }
            for (r, [a0, a1, a2, a3]) in acc.into_iter().enumerate() {
                let sums = vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
                vst1q_s32(out.as_mut_ptr().add(r * ld), sums);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn values(n: usize, seed: u32) -> Vec<i8> {
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
            Some(b) => run_blocks(lanes, rows, &mut out, b * ROWS, finish).unwrap(),
            None => product_into(lanes, rows, &mut out, finish).unwrap(),
        }
        assert_eq!(out, expected);
    }

    /// `Σ_k b[r][k] · a[l][k]` for the `n` rows of `b` and the `m` lanes of `a`, row-major.
    pub(crate) fn triple_loop(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
        (0..n)
            .flat_map(|r| {
                (0..m).map(move |l| {
                    (0..k)
                        .map(|kk| a[l * k + kk] as i32 * b[r * k + kk] as i32)
                        .sum()
                })
            })
            .collect()
    }

    /// `m` lanes (`a`) by `n` rows (`b`) of `k` values: both row sources, both lane packings,
    /// blocks of one tile, a few tiles and all, against the plain triple loop.
    fn check_all(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) {
        let expected = triple_loop(a, b, m, k, n);
        let lanes = LanePanels::pack(m, k, |l, kk| a[l * k + kk]);
        let packed = Rows::pack(b, n, k);
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

    /// Odd sizes (k across steps, lanes and rows across tiles) with weights as onnxruntime
    /// writes them ([−127, 127], which `exact_for` requires on arm64) and rows holding −128.
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
            (5, 40, 9),
            (33, 5, 700),
        ] {
            let a: Vec<i8> = values(m * k, 1).iter().map(|&v| v.max(-127)).collect();
            let mut b = values(n * k, 2);
            b[0] = -128;
            assert!(exact_for(&a));
            check_all(&a, &b, m, k, n);
        }
    }

    /// The largest sums: every product ±127 · −128, two of them 32512 (arm64 adds pairs in
    /// i16), and on x86, where `exact_for` holds for any bytes, −128 · −128 too.
    #[test]
    fn extreme_values_are_exact() {
        if !available() {
            return;
        }
        let (m, k, n) = (5, 37, 7);
        let b = vec![-128i8; n * k];
        for lane in [-127i8, 127] {
            check_all(&vec![lane; m * k], &b, m, k, n);
        }
        let alternating: Vec<i8> = (0..m * k)
            .map(|i| if i % 3 == 0 { 127 } else { -127 })
            .collect();
        check_all(&alternating, &b, m, k, n);
        assert!(exact_for(&[-127, 0, 127]));
        if exact_for(&[-128]) {
            check_all(&vec![-128; m * k], &b, m, k, n);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            exact_for(&[1, -128]),
            std::arch::is_aarch64_feature_detected!("dotprod")
        );
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
