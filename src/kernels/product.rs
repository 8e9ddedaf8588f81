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
//!   Xavier) a tile is 8 rows × 12 lanes on `SDOT` by element: a row's 4 bytes times 4 lanes'
//!   4 bytes, 16 products into 4 outputs per instruction, in i32. It replaces tract's SDOT
//!   kernel for its packing and blocking (convnext_atto's int8 products and their packing,
//!   under qemu's cortex-a76: tract's 69 M instructions, a 4 × 4 `SDOT` tile's 60 M, this
//!   tile's 42 M; 38.6 M with two k-steps a turn and a 4-lane tile for narrow last panels).
//!
//! The product is `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`. Both operands are stored in
//! panels: the *lane* operand in panels of a tile's lanes, the *row* operand in panels of a
//! tile's rows, each panel step after step of a few values of k (2 on x86, 16 for `SMULL`, 4
//! for `SDOT`; zero-padded), each step holding the panel's vectors one after the other, so that
//! a tile reads both operands in order. The lane dimension is the output's contiguous one, so
//! tiles are stored as whole vectors.
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
pub use arch::{available, exact_for};
use arch::{elem, Elem};

/// A tile kernel and the operand layout it reads. Both operands are stored in panels of
/// vectors (`lanes` vectors per panel of the lane operand, `rows` per tile of the row operand),
/// each panel step after step of `kstep` values of k (zero-padded), each step holding its
/// panel's vectors one after the other.
pub(crate) struct Kernel {
    name: &'static str,
    lanes: usize,
    rows: usize,
    kstep: usize,
    tile: Tile,
    /// [`store_steps`] for `kstep`.
    store: StoreVector,
    /// Whole steps of a lane panel from `kstep` rows each of a `k × lanes` source, faster than
    /// byte by byte, with how many bytes of each row it reads.
    transpose: Option<(Transpose, usize)>,
    /// A tile of the same rows computing only the first lanes of a panel, and how many: for a
    /// last panel that holds no more (convnext_atto's 49, 196 and 784 positions leave 1 or 4
    /// lanes of 12), where the whole tile would multiply zeros.
    narrow: Option<(usize, Tile)>,
}

/// A tile kernel: `rows` rows (`steps` steps) by one panel of `lanes` lanes into `rows` rows
/// of sums at a stride.
type Tile = unsafe fn(&[Elem], &[Elem], usize, &mut [i32], usize);

/// See [`Kernel::transpose`]: `(src, stride, steps, panel)`, the first `steps` steps of
/// `panel` from `src`'s rows, one call per panel (a call per step cost as much as the step).
type Transpose = unsafe fn(*const i8, usize, usize, &mut [Elem]);

/// See [`store_steps`].
type StoreVector = fn(&[i8], &mut [Elem], usize, usize);

/// Writes vector `j` of the panel of `width` vectors, in steps of `K` values, that starts
/// `panel`, from its values. `K` a constant: the steps are copied as whole words (convnext_tiny
/// on the Pi 5 profile spent 5.7 instructions a byte packing its rows with `K` a variable).
fn store_steps<const K: usize>(values: &[i8], panel: &mut [Elem], width: usize, j: usize) {
    let whole = values.chunks_exact(K);
    let tail = whole.remainder();
    let steps = whole.len();
    for (s, chunk) in whole.enumerate() {
        let dst: &mut [Elem; K] = (&mut panel[(s * width + j) * K..][..K]).try_into().unwrap();
        for (d, v) in dst.iter_mut().zip(chunk) {
            *d = elem(*v);
        }
    }
    if !tail.is_empty() {
        store(tail, &mut panel[(steps * width + j) * K..]);
    }
}

impl Kernel {
    /// Values in a panel of `width` vectors of `k` values.
    fn panel_len(&self, width: usize, k: usize) -> usize {
        k.div_ceil(self.kstep) * width * self.kstep
    }

    /// Writes vector `j` of the panel of `width` vectors that starts `panel`, from its values.
    fn store_vector(&self, values: &[i8], panel: &mut [Elem], width: usize, j: usize) {
        (self.store)(values, panel, width, j)
    }

    /// `n` vectors of `k` values in panels of `width`, vector `i` written by `at(i, values)`.
    fn pack(
        &self,
        n: usize,
        k: usize,
        width: usize,
        mut at: impl FnMut(usize, &mut [i8]),
    ) -> Vec<Elem> {
        let len = self.panel_len(width, k);
        let mut data = vec![0; n.div_ceil(width) * len];
        let mut values = vec![0; k];
        for i in 0..n {
            at(i, &mut values);
            self.store_vector(&values, &mut data[i / width * len..], width, i % width);
        }
        data
    }
}

/// The name of this CPU's kernel, for profiles.
pub fn kernel() -> &'static str {
    arch::kernel().name
}

/// The lane operand: `lanes` vectors of `k` values, in panels (zero-padded).
#[derive(Debug, Clone, PartialEq)]
pub struct LanePanels {
    data: Vec<Elem>,
    lanes: usize,
    k: usize,
}

/// The row operand: `rows` vectors of `k` values, in panels of a tile's rows (zero-padded).
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    data: Vec<Elem>,
    rows: usize,
    k: usize,
}

impl LanePanels {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> LanePanels {
        let kernel = arch::kernel();
        let data = kernel.pack(lanes, k, kernel.lanes, |l, values| {
            for (kk, v) in values.iter_mut().enumerate() {
                *v = at(l, kk);
            }
        });
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
        let kernel = arch::kernel();
        let (width, kstep) = (kernel.lanes, kernel.kstep);
        let len = kernel.panel_len(width, k);
        let mut data = vec![0; lanes.div_ceil(width) * len];
        par_chunks_mut(&mut data, len, src.len(), |first, chunk| {
            for (pi, panel) in chunk.chunks_mut(len).enumerate() {
                let l0 = (first + pi) * width;
                let here = width.min(lanes - l0);
                let whole = match kernel.transpose {
                    Some((transpose, reads)) if here == width => {
                        let inside = |s: usize| (s * kstep + kstep - 1) * stride + l0 + reads;
                        let whole = (0..k / kstep)
                            .take_while(|&s| inside(s) <= src.len())
                            .count();
                        // SAFETY: the kernel's CPU (it is this CPU's); the reads are inside
                        // `src` (`inside`), the panel holds `k / kstep` whole steps.
                        unsafe { transpose(src[l0..].as_ptr(), stride, whole, panel) };
                        whole
                    }
                    _ => 0,
                };
                for kk in whole * kstep..k {
                    let step = &mut panel[(kk / kstep * width) * kstep + kk % kstep..];
                    let row = &src[kk * stride + l0..][..here];
                    for (d, v) in step.iter_mut().step_by(kstep).zip(row) {
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
        let kernel = arch::kernel();
        let data = kernel.pack(rows, k, kernel.rows, |r, values| {
            values.copy_from_slice(&src[r * k..][..k])
        });
        Rows { data, rows, k }
    }
}

/// `src` as the operands' element type into the first `src.len()` values of `dst`.
fn store(src: &[i8], dst: &mut [Elem]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d = elem(*v);
    }
}

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
    let kernel = arch::kernel();
    let row_bytes = lanes.lanes.div_ceil(kernel.lanes) * kernel.lanes * 4;
    let block = block_rows(rows.rows(), kernel.rows, row_bytes, MIN_BLOCK_TILES);
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

/// [`product_into`] in blocks of `block_rows` rows (a multiple of the tile's).
fn run_blocks<T: Send>(
    lanes: &LanePanels,
    rows: RowSource,
    out: &mut [T],
    block_rows: usize,
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let kernel = arch::kernel();
    let (k, width) = (rows.k(), lanes.lanes);
    ensure!(lanes.k == k, "operands of different depth");
    ensure!(k > 0, "empty product");
    ensure!(out.len() == rows.rows() * width, "output of the wrong size");
    ensure!(available(), "the int8 product needs {}", arch::NEEDS);
    if out.is_empty() {
        return Ok(());
    }
    let (tile_rows, steps) = (kernel.rows, k.div_ceil(kernel.kstep));
    let tile_len = kernel.panel_len(tile_rows, k);
    let ld = width.div_ceil(kernel.lanes) * kernel.lanes;
    let work = rows.rows() * width * steps;
    let scratch = || (vec![0i32; block_rows * ld], Vec::new(), Vec::new());
    par_blocks(
        out,
        width,
        block_rows,
        work,
        scratch,
        |(sums, packed, bytes), r0, out| {
            let tiles = (out.len() / width).div_ceil(tile_rows);
            let src = match rows {
                RowSource::Packed(p) => &p.data[r0 / tile_rows * tile_len..][..tiles * tile_len],
                RowSource::Fill { fill, .. } => {
                    // Rows past the block's keep stale values: their sums are computed, never
                    // read.
                    packed.resize(block_rows / tile_rows * tile_len, 0);
                    bytes.resize(k, 0);
                    for i in 0..out.len() / width {
                        fill(r0 + i, bytes);
                        let panel = &mut packed[i / tile_rows * tile_len..];
                        kernel.store_vector(bytes, panel, tile_rows, i % tile_rows);
                    }
                    &packed[..]
                }
            };
            let panels = lanes.data.chunks_exact(kernel.panel_len(kernel.lanes, k));
            for (p, panel) in panels.enumerate() {
                let tile = match kernel.narrow {
                    Some((n, narrow)) if width - p * kernel.lanes <= n => narrow,
                    _ => kernel.tile,
                };
                for t in 0..tiles {
                    // SAFETY: `available()` checked the CPU; the panel holds `steps` steps
                    // of its lanes, `src` whole tiles from `t`, and `sums` from
                    // `t · rows · ld + p · lanes` holds a tile's rows of a panel's lanes at
                    // stride `ld` (`ld` covers every panel).
                    unsafe {
                        tile(
                            panel,
                            &src[t * tile_len..],
                            steps,
                            &mut sums[t * tile_rows * ld + p * kernel.lanes..],
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

    use super::{store_steps, Kernel};
    use crate::kernels::cpu::{self, Feature};

    /// Operands are stored widened: `vpmaddwd` multiplies i16.
    pub(super) type Elem = i16;

    pub(super) fn elem(v: i8) -> i16 {
        v as i16
    }
    /// Lanes per panel (two registers of 8 i32).
    const LANES: usize = 16;
    /// Values of k per step: the pair `vpmaddwd` adds.
    const KSTEP: usize = 2;
    /// Rows per tile.
    const ROWS: usize = 6;
    pub(super) const NEEDS: &str = "AVX2";

    static MADD: Kernel = Kernel {
        name: "convnext_edge_avx2_madd_i32_6x16",
        lanes: LANES,
        rows: ROWS,
        kstep: KSTEP,
        tile,
        store: store_steps::<KSTEP>,
        transpose: None,
        narrow: None,
    };

    /// The kernel for this CPU.
    pub(super) fn kernel() -> &'static Kernel {
        &MADD
    }

    /// Whether this CPU runs the product (AVX2).
    pub fn available() -> bool {
        cpu::has(Feature::Avx2)
    }

    /// Whether the product of `values` by any i8 operand is exact: always, in i32.
    pub fn exact_for(_values: &[i8]) -> bool {
        true
    }

    /// One tile: `ROWS` rows (a panel of `steps` pairs) by the panel's `LANES` lanes into
    /// `out` (`ROWS` rows at stride `ld`).
    ///
    /// # Safety
    /// AVX2; `panel` and `rows` hold `steps` whole steps, `out` the tile.
    #[target_feature(enable = "avx2")]
    unsafe fn tile(panel: &[i16], rows: &[i16], steps: usize, out: &mut [i32], ld: usize) {
        debug_assert!(panel.len() >= steps * KSTEP * LANES && rows.len() >= steps * KSTEP * ROWS);
        debug_assert!(out.len() >= (ROWS - 1) * ld + LANES);
        let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
        let lp = panel.as_ptr();
        let rp = rows.as_ptr();
        // SAFETY (all pointer reads and writes): within the lengths asserted above.
        unsafe {
            for s in 0..steps {
                let v0 = _mm256_loadu_si256(lp.add(s * KSTEP * LANES) as *const __m256i);
                let v1 = _mm256_loadu_si256(lp.add(s * KSTEP * LANES + LANES) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = (rp.add((s * ROWS + r) * KSTEP) as *const i32).read_unaligned();
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

    use super::{store_steps, Kernel};
    use crate::kernels::cpu::{self, Feature};

    /// Operands are stored as bytes: `SMULL` and `SDOT` multiply i8.
    pub(super) type Elem = i8;

    pub(super) fn elem(v: i8) -> i8 {
        v
    }
    pub(super) const NEEDS: &str = "NEON";

    /// `SMULL` + `SMLAL2` + `SADALP`: a tile of 4 rows × 4 lanes in 16 accumulators, each
    /// holding 4 partial sums along k (steps of one 16-byte register).
    static SMULL: Kernel = Kernel {
        name: "convnext_edge_neon_smull_i32_4x4",
        lanes: 4,
        rows: 4,
        kstep: 16,
        tile: tile_smull,
        store: store_steps::<16>,
        transpose: Some((transpose_steps, 4)),
        narrow: None,
    };

    /// `SDOT` by element: a tile of 8 rows × 12 lanes in 24 accumulators of 4 lanes each,
    /// steps of 4 values of k (the 4 products one `SDOT` lane adds).
    static SDOT: Kernel = Kernel {
        name: "convnext_edge_neon_sdot_i32_8x12",
        lanes: 12,
        rows: 8,
        kstep: 4,
        tile: tile_sdot,
        store: store_steps::<4>,
        transpose: Some((zip_steps, 16)),
        narrow: Some((4, tile_sdot_4)),
    };

    /// The kernel for this CPU: `SDOT` where it has it, else `SMULL`.
    pub(super) fn kernel() -> &'static Kernel {
        if dot() {
            &SDOT
        } else {
            &SMULL
        }
    }

    /// The dot-product extension (`SDOT`; Cortex-A55/A76 and later: Pi 5, Orin, Xavier).
    fn dot() -> bool {
        cpu::has(Feature::DotProd)
    }

    /// Lane `j`'s 16 values of k from the table of [`transpose_step`]: byte 16·(k / 4) +
    /// 4·(k % 4) + j.
    const GATHER: [[u8; 16]; 4] = {
        let mut idx = [[0u8; 16]; 4];
        let mut j = 0;
        while j < 4 {
            let mut k = 0;
            while k < 16 {
                idx[j][k] = (16 * (k / 4) + 4 * (k % 4) + j) as u8;
                k += 1;
            }
            j += 1;
        }
        idx
    };

    /// The first `steps` steps (of `len` bytes) of a panel, each written by `step` from the
    /// `kstep` rows of `src` (at `stride`) after the previous step's.
    #[inline(always)]
    fn each_step(
        (len, kstep): (usize, usize),
        (src, stride, steps): (*const i8, usize, usize),
        panel: &mut [i8],
        step: impl Fn(*const i8, &mut [i8]),
    ) {
        for (s, out) in panel.chunks_exact_mut(len).take(steps).enumerate() {
            step(src.wrapping_add(s * kstep * stride), out)
        }
    }

    /// [`transpose_step`] for the first `steps` steps of an [`SMULL`] panel.
    ///
    /// # Safety
    /// Reads `src[k · stride..][..4]` for `k < 16 · steps`.
    unsafe fn transpose_steps(src: *const i8, stride: usize, steps: usize, panel: &mut [i8]) {
        // SAFETY: as the caller promises.
        each_step((64, 16), (src, stride, steps), panel, |p, out| unsafe {
            transpose_step(p, stride, out)
        })
    }

    /// [`zip_step`] for the first `steps` steps of an [`SDOT`] panel.
    ///
    /// # Safety
    /// Reads `src[k · stride..][..16]` for `k < 4 · steps`.
    unsafe fn zip_steps(src: *const i8, stride: usize, steps: usize, panel: &mut [i8]) {
        // SAFETY: as the caller promises.
        each_step((48, 4), (src, stride, steps), panel, |p, out| unsafe {
            zip_step(p, stride, out)
        })
    }

    /// One whole step of an [`SMULL`] panel (16 values of k for its 4 lanes) from the 16 rows
    /// of four bytes at `src + k · stride`: the rows' words loaded into four registers, then
    /// each lane's bytes gathered from them by one `TBL`, instead of 64 byte moves.
    ///
    /// # Safety
    /// Reads `src[k · stride..][..4]` for `k < 16`.
    #[inline(always)]
    unsafe fn transpose_step(src: *const i8, stride: usize, step: &mut [i8]) {
        assert_eq!(step.len(), 64);
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

    /// One whole step of an [`SDOT`] panel (4 values of k for its 12 lanes) from the 4 rows
    /// of 16 bytes at `src + k · stride`, interleaved so that each lane's 4 bytes are adjacent.
    ///
    /// # Safety
    /// Reads `src[k · stride..][..16]` for `k < 4`.
    #[inline(always)]
    unsafe fn zip_step(src: *const i8, stride: usize, step: &mut [i8]) {
        assert_eq!(step.len(), 48);
        // SAFETY: the reads as the caller promises, the store into `step` (checked).
        unsafe {
            let row = |k: usize| vld1q_s8(src.add(k * stride));
            let [q0, q1, q2, _] = super::super::neon::interleave4(row(0), row(1), row(2), row(3));
            vst1q_s8_x3(step.as_mut_ptr(), int8x16x3_t(q0, q1, q2));
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

    /// One [`SMULL`] tile: `SMULL` + `SMLAL2` multiply 16 bytes of a row by 16 of a lane into
    /// 8 i16 sums of two products, `SADALP` adds those into 4 i32; each output's four partial
    /// sums are added at the end.
    ///
    /// # Safety
    /// `panel` and `rows` hold `steps` whole steps, `out` the tile; the lanes or the rows are
    /// [`exact_for`].
    unsafe fn tile_smull(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
        debug_assert!(panel.len() >= steps * 64 && rows.len() >= steps * 64);
        debug_assert!(out.len() >= 3 * ld + 4);
        // SAFETY (all pointer reads and writes): within the lengths asserted above.
        unsafe {
            let mut acc = [[vdupq_n_s32(0); 4]; 4];
            for s in 0..steps {
                let l = vld1q_s8_x4(panel.as_ptr().add(s * 64));
                let x = vld1q_s8_x4(rows.as_ptr().add(s * 64));
                for (acc, x) in acc.iter_mut().zip([x.0, x.1, x.2, x.3]) {
                    for (acc, lane) in acc.iter_mut().zip([l.0, l.1, l.2, l.3]) {
                        let pairs =
                            vmlal_high_s8(vmull_s8(vget_low_s8(x), vget_low_s8(lane)), x, lane);
                        *acc = vpadalq_s16(*acc, pairs);
                    }
                }
            }
            for (r, [a0, a1, a2, a3]) in acc.into_iter().enumerate() {
                let sums = vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
                vst1q_s32(out.as_mut_ptr().add(r * ld), sums);
            }
        }
    }

    /// One step of [`tile_sdot`]: 3 registers of lanes, 2 of rows, 24 `SDOT`.
    macro_rules! sdot_step {
        () => {
            concat!(
                "ld1 {{v0.16b, v1.16b, v2.16b}}, [{panel}], #48\n",
                "ld1 {{v3.16b, v4.16b}}, [{rows}], #32\n",
                "sdot v8.4s, v0.16b, v3.4b[0]\n",
                "sdot v9.4s, v1.16b, v3.4b[0]\n",
                "sdot v10.4s, v2.16b, v3.4b[0]\n",
                "sdot v11.4s, v0.16b, v3.4b[1]\n",
                "sdot v12.4s, v1.16b, v3.4b[1]\n",
                "sdot v13.4s, v2.16b, v3.4b[1]\n",
                "sdot v14.4s, v0.16b, v3.4b[2]\n",
                "sdot v15.4s, v1.16b, v3.4b[2]\n",
                "sdot v16.4s, v2.16b, v3.4b[2]\n",
                "sdot v17.4s, v0.16b, v3.4b[3]\n",
                "sdot v18.4s, v1.16b, v3.4b[3]\n",
                "sdot v19.4s, v2.16b, v3.4b[3]\n",
                "sdot v20.4s, v0.16b, v4.4b[0]\n",
                "sdot v21.4s, v1.16b, v4.4b[0]\n",
                "sdot v22.4s, v2.16b, v4.4b[0]\n",
                "sdot v23.4s, v0.16b, v4.4b[1]\n",
                "sdot v24.4s, v1.16b, v4.4b[1]\n",
                "sdot v25.4s, v2.16b, v4.4b[1]\n",
                "sdot v26.4s, v0.16b, v4.4b[2]\n",
                "sdot v27.4s, v1.16b, v4.4b[2]\n",
                "sdot v28.4s, v2.16b, v4.4b[2]\n",
                "sdot v29.4s, v0.16b, v4.4b[3]\n",
                "sdot v30.4s, v1.16b, v4.4b[3]\n",
                "sdot v31.4s, v2.16b, v4.4b[3]\n",
            )
        };
    }

    /// One [`SDOT`] tile. A step is 3 registers of lanes (4 lanes × 4 bytes each) and 2 of
    /// rows (4 rows × 4 bytes); `SDOT` by element multiplies a lane register by one row's 4
    /// bytes, adding 16 products into 4 outputs: 24 `SDOT` and 2 loads per 384 products, where
    /// a 4 × 4 tile with one output per accumulator took 16 and 5 per 256, and reduced each
    /// accumulator at the end. Accumulator `v(8 + 3·r + q)` holds row `r`'s lanes `4q..4q + 4`.
    /// The loop does two steps (an odd one first), so that its count and branch are paid once
    /// per 48 `SDOT`. Written as assembly: the intrinsic is not stable Rust yet, and with an
    /// accumulator per `asm!` the compiler spilled a third of them.
    ///
    /// # Safety
    /// A CPU with SDOT; `panel` and `rows` hold `steps` whole steps, `out` the tile.
    #[target_feature(enable = "dotprod")]
    unsafe fn tile_sdot(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
        debug_assert!(panel.len() >= steps * 48 && rows.len() >= steps * 32);
        debug_assert!(out.len() >= 7 * ld + 12);
        // SAFETY: reads `steps` steps of `panel` and `rows`, writes 8 rows of 12 values of
        // `out` at stride `ld`: within the lengths asserted above.
        unsafe {
            std::arch::asm!(
                "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
                "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
                "movi v16.4s, #0", "movi v17.4s, #0", "movi v18.4s, #0", "movi v19.4s, #0",
                "movi v20.4s, #0", "movi v21.4s, #0", "movi v22.4s, #0", "movi v23.4s, #0",
                "movi v24.4s, #0", "movi v25.4s, #0", "movi v26.4s, #0", "movi v27.4s, #0",
                "movi v28.4s, #0", "movi v29.4s, #0", "movi v30.4s, #0", "movi v31.4s, #0",
                "cbz {steps}, 2f",
                "tbz {steps}, #0, 1f",
                sdot_step!(),
                "subs {steps}, {steps}, #1",
                "b.eq 2f",
                "1:",
                sdot_step!(),
                sdot_step!(),
                "subs {steps}, {steps}, #2",
                "b.ne 1b",
                "2:",
                "st1 {{v8.4s, v9.4s, v10.4s}}, [{out}], {ld}",
                "st1 {{v11.4s, v12.4s, v13.4s}}, [{out}], {ld}",
                "st1 {{v14.4s, v15.4s, v16.4s}}, [{out}], {ld}",
                "st1 {{v17.4s, v18.4s, v19.4s}}, [{out}], {ld}",
                "st1 {{v20.4s, v21.4s, v22.4s}}, [{out}], {ld}",
                "st1 {{v23.4s, v24.4s, v25.4s}}, [{out}], {ld}",
                "st1 {{v26.4s, v27.4s, v28.4s}}, [{out}], {ld}",
                "st1 {{v29.4s, v30.4s, v31.4s}}, [{out}], {ld}",
                panel = inout(reg) panel.as_ptr() => _,
                rows = inout(reg) rows.as_ptr() => _,
                steps = inout(reg) steps => _,
                out = inout(reg) out.as_mut_ptr() => _,
                ld = in(reg) ld * 4,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _,
                out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
                out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _,
                out("v23") _, out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
        }
    }

    /// [`tile_sdot`] for the first 4 lanes of its panel alone (the panel's first register of
    /// each step): 8 `SDOT` and 2 loads per step, where the whole tile takes 24 and 2. Only
    /// those 4 lanes of each row of `out` are written.
    ///
    /// # Safety
    /// As [`tile_sdot`].
    #[target_feature(enable = "dotprod")]
    unsafe fn tile_sdot_4(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
        debug_assert!(panel.len() >= steps * 48 && rows.len() >= steps * 32);
        debug_assert!(out.len() >= 7 * ld + 4);
        // SAFETY: reads the first 16 bytes of each of `steps` steps of `panel` and `steps`
        // steps of `rows`, writes 8 rows of 4 values of `out` at stride `ld`: within the
        // lengths asserted above.
        unsafe {
            std::arch::asm!(
                "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
                "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
                "cbz {steps}, 2f",
                "1:",
                "ld1 {{v0.16b}}, [{panel}], {step}",
                "ld1 {{v3.16b, v4.16b}}, [{rows}], #32",
                "sdot v8.4s, v0.16b, v3.4b[0]",
                "sdot v9.4s, v0.16b, v3.4b[1]",
                "sdot v10.4s, v0.16b, v3.4b[2]",
                "sdot v11.4s, v0.16b, v3.4b[3]",
                "sdot v12.4s, v0.16b, v4.4b[0]",
                "sdot v13.4s, v0.16b, v4.4b[1]",
                "sdot v14.4s, v0.16b, v4.4b[2]",
                "sdot v15.4s, v0.16b, v4.4b[3]",
                "subs {steps}, {steps}, #1",
                "b.ne 1b",
                "2:",
                "st1 {{v8.4s}}, [{out}], {ld}",
                "st1 {{v9.4s}}, [{out}], {ld}",
                "st1 {{v10.4s}}, [{out}], {ld}",
                "st1 {{v11.4s}}, [{out}], {ld}",
                "st1 {{v12.4s}}, [{out}], {ld}",
                "st1 {{v13.4s}}, [{out}], {ld}",
                "st1 {{v14.4s}}, [{out}], {ld}",
                "st1 {{v15.4s}}, [{out}], {ld}",
                panel = inout(reg) panel.as_ptr() => _,
                rows = inout(reg) rows.as_ptr() => _,
                steps = inout(reg) steps => _,
                out = inout(reg) out.as_mut_ptr() => _,
                ld = in(reg) ld * 4,
                step = in(reg) 48usize,
                out("v0") _, out("v3") _, out("v4") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _,
                out("v13") _, out("v14") _, out("v15") _,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::for_each_variant;
    use crate::kernels::test_values as values;

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
            Some(b) => run_blocks(lanes, rows, &mut out, b * arch::kernel().rows, finish).unwrap(),
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

    for_each_variant! {
        /// Odd sizes (k across steps, odd and even numbers of them; lanes and rows across tiles,
        /// last panels of 1 to 4 lanes for a narrow tile and of more for the whole one) with
        /// weights as onnxruntime writes them ([−127, 127], which `exact_for` requires on arm64)
        /// and rows holding −128.
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
                (12, 8, 3),
                (25, 13, 17),
                (49, 28, 16),
            ] {
                let a: Vec<i8> = values(m * k, 1).iter().map(|&v| v.max(-127)).collect();
                let mut b = values(n * k, 2);
                b[0] = -128;
                assert!(exact_for(&a));
                check_all(&a, &b, m, k, n);
            }
        }
    }

    for_each_variant! {
        /// The largest sums: every product ±127 · −128, two of them 32512 (arm64 adds pairs in
        /// i16), and on x86, where `exact_for` holds for any bytes, −128 · −128 too.
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
                crate::kernels::cpu::has(crate::kernels::cpu::Feature::DotProd)
            );
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
