//! Exact i8 × i8 → i32 products on CPUs where tract-linalg's int8 kernels lose to its own f32
//! ones, blocked so that the epilogue reads each block of sums from cache.
//!
//! - **x86 with AVX2 but no VNNI.** tract-linalg's kernel (`avx2_mmm_i32_8x8`) broadcasts and
//!   widens one byte of the right operand at a time, far slower than its own f32 kernels. Here both operands
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
//!   kernel for its packing and blocking, with two k-steps a turn and a 4-lane tile for narrow
//!   last panels.
//! - **armv7 with NEON** (32-bit Pi OS on the Pi 2/3/4 and Zero 2): tract-linalg's kernel
//!   (`armv7neon_mmm_i32_8x4`) widens both operands and multiplies 4 lanes per `VMLAL.S16`,
//!   as its f32 kernel does per `VMLA.F32`. Here the `SMULL` scheme on 64-bit halves:
//!   `VMULL.S8` + `VMLAL.S8` + `VPADAL.S16`, a tile of 2 rows × 4 lanes in 8 accumulators.
//!
//! The product is `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`. Both operands are stored in
//! panels: the *lane* operand in panels of a tile's lanes, the *row* operand in panels of a
//! tile's rows, each panel step after step of a few values of k (2 on x86, 16 for `SMULL`, 4
//! for `SDOT`; zero-padded), each step holding the panel's vectors one after the other, so that
//! a tile reads both operands in order. The lane dimension is the output's contiguous one, so
//! tiles are stored as whole vectors.
//!
//! ```text
//! use convnext_edge::kernels::product::{available, product_into, LanePanels, RowSource, Rows};
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
//! ```
//!
//! Blocks and panels are split across the plan's threads (`kernels::threads`).

use crate::kernels::threads::{par_chunks_mut, par_chunks_mut_with};
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

use super::blocking::block_rows;
pub use super::Sums;
pub use arch::{available, exact_for};
use arch::{elem, Elem};

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/mod.rs"]
mod arch;
#[cfg(target_arch = "x86_64")]
pub use arch::{amx, vnni};
#[cfg(target_arch = "aarch64")]
#[path = "aarch64.rs"]
mod arch;
#[cfg(target_arch = "arm")]
#[path = "arm.rs"]
mod arch;
#[cfg(test)]
pub(crate) mod reference;
#[cfg(test)]
pub(crate) mod tests;

/// A tile kernel and the operand layout it reads. Both operands are stored in panels of
/// vectors (`lanes` vectors per panel of the lane operand, `rows` per tile of the row operand),
/// each panel step after step of `kstep` values of k (zero-padded), each step holding its
/// panel's vectors one after the other.
pub(crate) struct Kernel {
    name: &'static str,
    /// Whether this CPU runs it.
    available: fn() -> bool,
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
/// `panel`, from its values. `K` a constant: the steps are copied as whole words, where a variable
/// `K` copied byte by byte.
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

/// The lane operand: `lanes` vectors of `k` values, in panels (zero-padded) for `kernel`.
#[derive(Clone)]
pub struct LanePanels {
    data: Vec<Elem>,
    lanes: usize,
    k: usize,
    kernel: &'static Kernel,
}

/// The row operand: `rows` vectors of `k` values, in panels of a tile's rows (zero-padded) for
/// `kernel`.
#[derive(Clone)]
pub struct Rows {
    data: Vec<Elem>,
    rows: usize,
    k: usize,
    kernel: &'static Kernel,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Kernel) -> bool {
        std::ptr::eq(self, other)
    }
}

impl std::fmt::Debug for LanePanels {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LanePanels({} x {}, {:?})",
            self.lanes, self.k, self.kernel
        )
    }
}

impl PartialEq for LanePanels {
    fn eq(&self, other: &LanePanels) -> bool {
        (self.lanes, self.k, self.kernel) == (other.lanes, other.k, other.kernel)
            && self.data == other.data
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Rows({} x {}, {:?})", self.rows, self.k, self.kernel)
    }
}

impl LanePanels {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> LanePanels {
        Self::pack_for(arch::kernel(), lanes, k, at)
    }

    /// [`Self::pack`] for a given kernel.
    pub(crate) fn pack_for(
        kernel: &'static Kernel,
        lanes: usize,
        k: usize,
        at: impl Fn(usize, usize) -> i8,
    ) -> LanePanels {
        let data = kernel.pack(lanes, k, kernel.lanes, |l, values| {
            for (kk, v) in values.iter_mut().enumerate() {
                *v = at(l, kk);
            }
        });
        LanePanels {
            data,
            lanes,
            k,
            kernel,
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
        Self::pack_transposed_for(arch::kernel(), src, k, lanes, stride)
    }

    /// [`Self::pack_transposed`] for a given kernel.
    pub(crate) fn pack_transposed_for(
        kernel: &'static Kernel,
        src: &[i8],
        k: usize,
        lanes: usize,
        stride: usize,
    ) -> TractResult<LanePanels> {
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
        Ok(LanePanels {
            data,
            lanes,
            k,
            kernel,
        })
    }
}

impl Rows {
    /// Packs `rows` rows of `k` i8 values (row-major in `src`).
    pub fn pack(src: &[i8], rows: usize, k: usize) -> Rows {
        Self::pack_for(arch::kernel(), src, rows, k)
    }

    /// [`Self::pack`] for a given kernel.
    pub(crate) fn pack_for(kernel: &'static Kernel, src: &[i8], rows: usize, k: usize) -> Rows {
        let data = kernel.pack(rows, k, kernel.rows, |r, values| {
            values.copy_from_slice(&src[r * k..][..k])
        });
        Rows {
            data,
            rows,
            k,
            kernel,
        }
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
    let kernel = lanes.kernel;
    let row_bytes = lanes.lanes.div_ceil(kernel.lanes) * kernel.lanes * 4;
    let block = block_rows(rows.rows(), kernel.rows, row_bytes, MIN_BLOCK_TILES);
    run_blocks(lanes, rows, out, block, finish)
}

/// `body(scratch, first_row, out_rows)` for each block of `block_rows` rows of `out` (rows of
/// `width` values), blocks split across the plan's threads (`work`: the cost estimate that
/// decides whether to split), with `scratch()` made once per thread.
pub(crate) fn par_blocks<T: Send, S: Send>(
    out: &mut [T],
    width: usize,
    block_rows: usize,
    work: usize,
    scratch: impl Fn() -> S + Sync,
    body: impl Fn(&mut S, usize, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let mut blocks: Vec<&mut [T]> = out.chunks_mut(block_rows * width).collect();
    par_chunks_mut_with(&mut blocks, 1, work, scratch, |s, first, chunk| {
        for (b, out) in chunk.iter_mut().enumerate() {
            body(s, (first + b) * block_rows, out)?;
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
    let kernel = lanes.kernel;
    let (k, width) = (rows.k(), lanes.lanes);
    ensure!(lanes.k == k, "operands of different depth");
    if let RowSource::Packed(r) = rows {
        ensure!(r.kernel == kernel, "operands packed for different kernels");
    }
    ensure!(k > 0, "empty product");
    ensure!(out.len() == rows.rows() * width, "output of the wrong size");
    ensure!(
        (kernel.available)(),
        "the int8 product {} does not run on this CPU",
        kernel.name
    );
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
            // What every tile call below relies on, checked once per block: whole steps in
            // each lane panel and in the block's row tiles, and room in `sums` for the block's
            // tiles of every panel.
            let panel_len = kernel.panel_len(kernel.lanes, k);
            assert!(
                lanes.data.len() == width.div_ceil(kernel.lanes) * panel_len
                    && panel_len >= steps * kernel.kstep * kernel.lanes
                    && src.len() >= tiles * tile_len
                    && tile_len >= steps * kernel.kstep * tile_rows
                    && sums.len() >= tiles * tile_rows * ld
                    && ld >= width.div_ceil(kernel.lanes) * kernel.lanes,
                "int8 product: operands do not fit the block"
            );
            let panels = lanes.data.chunks_exact(panel_len);
            for (p, panel) in panels.enumerate() {
                let tile = match kernel.narrow {
                    Some((n, narrow)) if width - p * kernel.lanes <= n => narrow,
                    _ => kernel.tile,
                };
                for t in 0..tiles {
                    // SAFETY: `kernel.available` checked the CPU; as asserted for the block, the
                    // panel holds `steps` steps of its lanes, `src` whole tiles from `t`, and
                    // `sums` from
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
