//! f32 products by a constant matrix — PyTorch's `Linear`, ConvNeXt's MLP (`fc1`, `fc2`) — on
//! AVX-512, with the bias, GELU and layer scale that follow them fused in: one op,
//! [`LinearF32`].
//!
//! tract 0.23.9 runs these on its `avx512_mmm_f32_16x12` kernel: per value of k, one load of
//! 16 weights and 12 broadcasts for 12 FMAs, so the loads, not the multiplies, bound it.
//! Together with the packing of the input before every product, convnext_tiny's products ran
//! at about 20 GMAC/s on one core of a Sapphire Rapids Xeon whose FMA units do 70. Here a tile is
//! 14 positions × 32 output channels: 28 accumulators, and per value of k two loads of weights
//! and 14 broadcasts of the input folded into the FMAs (`vfmadd231ps zmm, zmm, m32{1to16}`),
//! 28 FMAs for 16 loads.
//!
//! The product is `y[p][n] = Σ_k x[p][k] · w[k][n]` over the positions `p` (every axis of the
//! input but the channels). The weights are packed once, at load, in panels of 32 output
//! channels, k after k. The input is read where it lies, without packing: channels last, a
//! position's k values are one row; channels first (where tract has moved the transposes of a
//! `Linear` away and an NCHW tensor comes in), a value of k holds the 14 positions of a tile
//! side by side. The tile's sums go to a buffer for a block of positions × every channel, and
//! the epilogue reads them from cache: `+ bias`, GELU, `× scale`, written channels last or,
//! transposed, channels first. Blocks of positions are split across the plan's threads.
//!
//! Over patches (`LinearF32::over_patches`: a convolution whose kernel is its stride, ConvNeXt's
//! stem and downsampling layers), each tile's patches are gathered channels last once per block
//! and read as above, which beats tract's im2col and product.
//!
//! Two such products in a row, a ConvNeXt MLP, run as one op block by block ([`MlpF32`], in
//! `mlp.rs`), so that the hidden tensor between them stays in cache.
//!
//! Every output is the same sum of products as a plain loop over k, in k order from zero, with
//! the bias added after it as onnxruntime's `MatMul` then `Add` does; the FMA rounds once per
//! step where a multiply then an add rounds twice, which is the only difference.
//!
//! ```text
//! use convnext_edge::kernels::linear::LinearF32;
//! use tract_onnx::prelude::*;
//! use tract_onnx::tract_core::internal::{EvalContext, EvalOp};
//! if LinearF32::available() {
//!     // Two positions of three channels, channels last, times a 3 × 2 matrix, plus a bias.
//!     let w = tensor2(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]]);
//!     let op = LinearF32::channels_last(&w)?.with_bias(&[0.5, -0.5])?;
//!     let x = tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
//!     let y = op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))?;
//!     assert_eq!(y[0].try_as_plain_ram()?.as_slice::<f32>()?, &[4.5, 4.5, 10.5, 10.5]);
//! }
//! ```
//!
//! tract internals used (tract 0.23.9): `Op`/`EvalOp`/`TypedOp`.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use crate::kernels::threads::par_chunks_mut_with;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::blocking::blocks_needed;
use super::gelu;
use super::simd::multiversion;
use super::{threads, Layout, Patches, SharedOut};

mod mlp;
pub use mlp::MlpF32;

/// Output channels per weight panel (two AVX-512 vectors).
const LANES: usize = 32;
/// Positions per tile.
const ROWS: usize = 14;
/// Fewest tiles per block: a weight panel brought into L1 serves at least this many.
const MIN_BLOCK_TILES: usize = 8;
/// Values of k ahead of the tile's that it prefetches the weights of (16 × 128 bytes): the
/// nearest distance that hid the weights' latency (benches/HISTORY.md).
const PREFETCH: usize = 16;

/// Where an output axis's size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutAxis {
    /// The input's axis of this index (a position axis).
    Input(usize),
    /// The output channels.
    Channels,
    /// Size one.
    One,
}

/// How the op's input and output hold their positions and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// The input's rank.
    pub rank: usize,
    /// The input's channel axis.
    pub k_axis: usize,
    /// Channels last, or the positions after the channel axis with no axis of size above one
    /// before it.
    pub input: Layout,
    /// Likewise for the output.
    pub output: Layout,
    /// Where each output axis's size comes from.
    pub out_axes: TVec<OutAxis>,
}

/// The weights `[k, n]`, in panels of [`LANES`] output channels, k after k, zero-padded.
#[derive(Debug, PartialEq)]
struct Panels {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl Panels {
    fn pack(w: &[f32], k: usize, n: usize) -> Panels {
        let mut data = vec![0f32; n.div_ceil(LANES) * LANES * k];
        for (p, panel) in data.chunks_mut(LANES * k).enumerate() {
            let width = LANES.min(n - p * LANES);
            for (kk, step) in panel.chunks_mut(LANES).enumerate() {
                step[..width].copy_from_slice(&w[kk * n + p * LANES..][..width]);
            }
        }
        Panels { data, k, n }
    }

    /// The buffer's row length: channels padded to whole panels.
    fn ld(&self) -> usize {
        self.n.div_ceil(LANES) * LANES
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * LANES * self.k..][..LANES * self.k]
    }
}

/// `y = x · w (+ bias) (→ GELU) (× scale)` over the channel axis of `x` (see the module docs).
/// Input and output f32; the output has the weights' `n` channels in place of `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearF32 {
    weights: Arc<Panels>,
    bias: Option<Arc<[f32]>>,
    gelu: bool,
    scale: Option<Arc<[f32]>>,
    geometry: Geometry,
    /// Side of the non-overlapping square patches the input is read in (1: positions).
    patch: usize,
}

/// A tile's patches for [`LinearF32`]: the input is one channels-first image `[C, h, w]`.
impl Patches {
    /// Patches `first..` copied channels last into `rows` (`[ROWS, k]`, k in the weights'
    /// `(c, dy, dx)` order), zeros past the last one.
    fn tile_rows(&self, xs: &[f32], first: usize, k: usize, rows: &mut [f32]) {
        // With the side a constant, each run is a few moves, not a call to memcpy.
        match self.side {
            2 => self.tile_rows_side::<2>(xs, first, k, rows),
            4 => self.tile_rows_side::<4>(xs, first, k, rows),
            _ => self.tile_rows_side::<0>(xs, first, k, rows),
        }
    }

    /// [`Patches::tile_rows`] for patches of side `S` (0: `self.side`).
    #[inline(always)]
    fn tile_rows_side<const S: usize>(&self, xs: &[f32], first: usize, k: usize, rows: &mut [f32]) {
        let s = if S == 0 { self.side } else { S };
        let (ow, count) = (self.out_hw().1, self.positions());
        for (p, row) in (first..).zip(rows.chunks_exact_mut(k)) {
            if p >= count {
                row.fill(0.0);
                continue;
            }
            let (y, x) = (p / ow * s, p % ow * s);
            for (c, patch) in row.chunks_exact_mut(s * s).enumerate() {
                for (dy, run) in patch.chunks_exact_mut(s).enumerate() {
                    run.copy_from_slice(&xs[(c * self.h + y + dy) * self.w + x..][..s]);
                }
            }
        }
    }
}

impl LinearF32 {
    /// Whether this CPU runs the op (AVX-512).
    pub fn available() -> bool {
        crate::kernels::cpu::has(crate::kernels::cpu::Feature::Avx512)
    }

    /// The product by `w` (`[k, n]`, f32) of an input laid out as `geometry` says.
    pub fn new(w: &Tensor, geometry: Geometry) -> TractResult<LinearF32> {
        ensure!(
            w.rank() == 2 && w.datum_type() == f32::datum_type(),
            "Linear weights: {w:?}, expected [k, n] f32"
        );
        ensure!(
            geometry
                .out_axes
                .iter()
                .filter(|a| **a == OutAxis::Channels)
                .count()
                == 1
                && geometry.k_axis < geometry.rank,
            "Linear: {geometry:?}, expected one output channel axis, input channels in the rank"
        );
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let w = w.try_as_plain_ram()?;
        Ok(LinearF32 {
            weights: Arc::new(Panels::pack(w.as_slice::<f32>()?, k, n)),
            bias: None,
            gelu: false,
            scale: None,
            geometry,
            patch: 1,
        })
    }

    /// The convolution by `w` (`[k, n]`, `k = C · side²` in the weights' `(c, dy, dx)` order)
    /// over non-overlapping `side × side` patches (kernel = stride = `side`, no padding:
    /// ConvNeXt's stem and downsampling layers) of a channels-first `[1, C, H, W]` image, giving
    /// `[1, n, H / side, W / side]` (rounded down).
    pub fn over_patches(w: &Tensor, side: usize) -> TractResult<LinearF32> {
        let geometry = Geometry {
            rank: 4,
            k_axis: 1,
            input: Layout::ChannelsFirst,
            output: Layout::ChannelsFirst,
            out_axes: tvec!(
                OutAxis::Input(0),
                OutAxis::Channels,
                OutAxis::Input(2),
                OutAxis::Input(3)
            ),
        };
        let mut op = LinearF32::new(w, geometry)?;
        ensure!(
            side >= 1 && op.k().is_multiple_of(side * side),
            "Linear over {side}x{side} patches: k = {} is not a multiple of {}",
            op.k(),
            side * side
        );
        op.patch = side;
        Ok(op)
    }

    /// The product by `w` of a `[positions, k]` matrix, giving `[positions, n]`.
    pub fn channels_last(w: &Tensor) -> TractResult<LinearF32> {
        let geometry = Geometry {
            rank: 2,
            k_axis: 1,
            input: Layout::ChannelsLast,
            output: Layout::ChannelsLast,
            out_axes: tvec!(OutAxis::Input(0), OutAxis::Channels),
        };
        LinearF32::new(w, geometry)
    }

    fn per_channel(&self, v: &[f32], what: &str) -> TractResult<Arc<[f32]>> {
        ensure!(
            v.len() == self.weights.n,
            "Linear {what}: {} values for {} channels",
            v.len(),
            self.weights.n
        );
        Ok(v.into())
    }

    /// Adds `bias` (one per output channel) to the product.
    pub fn with_bias(mut self, bias: &[f32]) -> TractResult<LinearF32> {
        ensure!(
            !self.gelu && self.scale.is_none(),
            "Linear: bias after GELU or scale"
        );
        self.bias = Some(self.per_channel(bias, "bias")?);
        Ok(self)
    }

    /// Applies the exact GELU (`kernels::gelu`) after the bias.
    pub fn with_gelu(mut self) -> TractResult<LinearF32> {
        ensure!(self.scale.is_none(), "Linear: GELU after scale");
        self.gelu = true;
        Ok(self)
    }

    /// Multiplies each output channel by its `scale` last (ConvNeXt's layer scale).
    pub fn with_scale(mut self, scale: &[f32]) -> TractResult<LinearF32> {
        self.scale = Some(self.per_channel(scale, "scale")?);
        Ok(self)
    }

    fn k(&self) -> usize {
        self.weights.k
    }

    /// Channels of the input: `k`, or `k / side²` over patches.
    fn in_channels(&self) -> usize {
        self.k() / (self.patch * self.patch)
    }

    fn out_shape<D: DimLike>(&self, x: &[D]) -> TVec<D> {
        self.geometry
            .out_axes
            .iter()
            .map(|a| match a {
                OutAxis::Input(i) if *i > self.geometry.k_axis => x[*i].clone() / self.patch,
                OutAxis::Input(i) => x[*i].clone(),
                OutAxis::Channels => self.weights.n.into(),
                OutAxis::One => 1.into(),
            })
            .collect()
    }

    /// Bias, GELU and scale on channels `cs` of the first `rows` rows of `sums` (rows of ld),
    /// in place.
    fn epilogue(&self, sums: &mut [f32], rows: usize, cs: Range<usize>) {
        for row in sums.chunks_mut(self.weights.ld()).take(rows) {
            let row = &mut row[cs.clone()];
            if let Some(b) = &self.bias {
                add(row, &b[cs.clone()]);
            }
            if self.gelu {
                gelu::gelu(row);
            }
            if let Some(s) = &self.scale {
                mul(row, &s[cs.clone()]);
            }
        }
    }

    /// The epilogue of one block: channels `cs` of `sums` (`rows × ld`) plus bias, GELU and
    /// scale, written to `out` at positions `p0..p0 + rows` of `positions` (`column`: scratch
    /// of `rows`).
    fn finish(
        &self,
        sums: &mut [f32],
        (p0, rows, positions): (usize, usize, usize),
        cs: Range<usize>,
        column: &mut [f32],
        out: &SharedOut,
    ) {
        self.epilogue(sums, rows, cs.clone());
        let (n, ld) = (self.weights.n, self.weights.ld());
        match self.geometry.output {
            Layout::ChannelsLast => {
                for (r, row) in sums.chunks(ld).take(rows).enumerate() {
                    // SAFETY: this block alone writes channels cs of positions p0..p0 + rows.
                    unsafe { out.slice((p0 + r) * n + cs.start, cs.len()) }
                        .copy_from_slice(&row[cs.clone()]);
                }
            }
            Layout::ChannelsFirst => {
                let column = &mut column[..rows];
                for c in cs {
                    for (r, v) in column.iter_mut().enumerate() {
                        *v = sums[r * ld + c];
                    }
                    // SAFETY: as above; channel c's row holds the block's positions here.
                    unsafe { out.slice(c * positions + p0, rows) }.copy_from_slice(column);
                }
            }
        }
    }

    /// Where each tile of positions `p0..p0 + rows` reads its input: in `xs` (`positions`
    /// rows of k), or, over `patches` or for the last positions, in a copy in `gathered`
    /// (`rows × k`) or `tail` (`ROWS × k`).
    fn sources<'a>(
        &self,
        xs: &'a [f32],
        (p0, rows, positions): (usize, usize, usize),
        patches: Option<Patches>,
        gathered: &'a mut [f32],
        tail: &'a mut [f32],
    ) -> Vec<Source<'a>> {
        let k = self.k();
        let mut gathered = gathered.chunks_exact_mut(ROWS * k);
        // Only the last tile of the block can be short.
        let mut tail = Some(tail);
        (p0..p0 + rows)
            .step_by(ROWS)
            .map(|first| match (patches, gathered.next()) {
                (Some(g), Some(rows)) => {
                    g.tile_rows(xs, first, k, rows);
                    Source::of(Layout::ChannelsLast, rows, 0, ROWS, k)
                }
                _ if first + ROWS <= positions => {
                    Source::of(self.geometry.input, xs, first, positions, k)
                }
                _ => {
                    let tail = tail.take().expect("one short tile per block");
                    Source::tail(self.geometry.input, xs, first, positions, k, tail)
                }
            })
            .collect()
    }

    /// The sums of every tile of `sources` by the weight panels `group`, into `sums` (tile
    /// after tile of ROWS rows of ld).
    fn products(&self, sources: &[Source], group: Range<usize>, sums: &mut [f32]) {
        let (k, ld) = (self.k(), self.weights.ld());
        // Panels outside, tiles inside: a panel stays in L1 for the whole block.
        for p in group {
            let panel = self.weights.panel(p);
            for (t, source) in sources.iter().enumerate() {
                // SAFETY: AVX-512 F (checked by the callers); each source reads ROWS positions
                // of k values inside its buffer; the panel holds k · LANES values; `sums`
                // holds ROWS rows of ld from this tile's first, ld ≥ (p + 1) · LANES.
                unsafe { source.tile(panel, k, &mut sums[(t * ROWS * ld) + p * LANES..], ld) };
            }
        }
    }

    /// `ys` from `xs`: `positions` rows of `k`, or `patches` of one image.
    fn run(
        &self,
        xs: &[f32],
        positions: usize,
        patches: Option<Patches>,
        ys: &mut [f32],
    ) -> TractResult<()> {
        let (k, ld) = (self.k(), self.weights.ld());
        ensure!(
            (patches.is_some() || xs.len() == positions * k)
                && ys.len() == positions * self.weights.n,
            "Linear: {} input values for {positions} positions of {k}",
            xs.len()
        );
        ensure!(LinearF32::available(), "Linear in f32 needs AVX-512");
        let (panels, tiles, threads) = (ld / LANES, positions.div_ceil(ROWS), threads());
        // Blocks of positions as the sums buffer allows, split across the threads; with fewer
        // blocks than threads (few positions, wide weights: the last stage), each block's
        // panels are split between threads instead, so that each reads its share of the
        // weights rather than all of them.
        let needed = blocks_needed(positions, ROWS, ld * 4, MIN_BLOCK_TILES).max(1);
        let block_rows = tiles.div_ceil(needed) * ROWS;
        let groups = threads.div_ceil(needed).min(panels);
        let per_group = panels.div_ceil(groups);
        let out = SharedOut::new(ys);
        let mut work: Vec<(usize, usize)> = (0..positions)
            .step_by(block_rows)
            .flat_map(|p0| (0..panels).step_by(per_group).map(move |p| (p0, p)))
            .collect();
        let scratch = || Scratch {
            sums: vec![0f32; block_rows * ld],
            tail: vec![0f32; ROWS * k],
            column: vec![0f32; block_rows],
            // Over patches, every tile's are gathered channels last here, once per block.
            gathered: vec![0f32; if patches.is_some() { block_rows * k } else { 0 }],
        };
        par_chunks_mut_with(&mut work, 1, positions * k * ld, scratch, |s, _, chunk| {
            let Scratch {
                sums,
                tail,
                column,
                gathered,
            } = s;
            for &(p0, first_panel) in chunk.iter() {
                let group = first_panel..panels.min(first_panel + per_group);
                let block = (p0, block_rows.min(positions - p0), positions);
                let sources = self.sources(xs, block, patches, gathered, tail);
                self.products(&sources, group.clone(), sums);
                let cs = group.start * LANES..self.weights.n.min(group.end * LANES);
                self.finish(sums, block, cs, column, &out);
            }
            Ok(())
        })
    }
}

/// A thread's buffers for its blocks of a product.
struct Scratch {
    sums: Vec<f32>,
    tail: Vec<f32>,
    column: Vec<f32>,
    gathered: Vec<f32>,
}

/// Where a tile's ROWS positions are read: from a pointer, `stride` between positions and
/// `step` between values of k.
/// It borrows what it reads for as long as it lives.
struct Source<'a> {
    at: *const f32,
    stride: usize,
    step: usize,
    source: PhantomData<&'a [f32]>,
}

impl<'a> Source<'a> {
    /// Positions `first..first + ROWS` of `xs`, all inside it.
    fn of(layout: Layout, xs: &'a [f32], first: usize, positions: usize, k: usize) -> Source<'a> {
        match layout {
            Layout::ChannelsLast => Source::rows(&xs[first * k..], k),
            Layout::ChannelsFirst => Source {
                at: xs[first..].as_ptr(),
                stride: 1,
                step: positions,
                source: PhantomData,
            },
        }
    }

    /// Rows of `stride` values from the start of `xs`.
    pub(super) fn rows(xs: &'a [f32], stride: usize) -> Source<'a> {
        Source {
            at: xs.as_ptr(),
            stride,
            step: 1,
            source: PhantomData,
        }
    }

    /// The last positions from `first`, copied channels last into `tail` (`ROWS × k`) with
    /// zeros after them.
    fn tail(
        layout: Layout,
        xs: &[f32],
        first: usize,
        positions: usize,
        k: usize,
        tail: &'a mut [f32],
    ) -> Source<'a> {
        tail.fill(0.0);
        for (r, row) in tail.chunks_mut(k).take(positions - first).enumerate() {
            match layout {
                Layout::ChannelsLast => row.copy_from_slice(&xs[(first + r) * k..][..k]),
                Layout::ChannelsFirst => {
                    for (kk, v) in row.iter_mut().enumerate() {
                        *v = xs[kk * positions + first + r];
                    }
                }
            }
        }
        Source::rows(tail, k)
    }

    /// ROWS × LANES sums of the product by `panel` into `sums` (row stride `ld`).
    ///
    /// # Safety
    /// AVX-512 F; the source's ROWS positions of `k` values are readable; `panel` holds
    /// `k · LANES` values and `sums` ROWS rows of `ld` with LANES values each.
    unsafe fn tile(&self, panel: &[f32], k: usize, sums: &mut [f32], ld: usize) {
        assert!(panel.len() >= k * LANES && sums.len() >= (ROWS - 1) * ld + LANES);
        // SAFETY: the CPU and the source as the caller promises; `panel` and `sums` as
        // asserted.
        unsafe {
            if self.step == 1 {
                tile_avx512::<false>(
                    self.at,
                    self.stride,
                    panel.as_ptr(),
                    k,
                    sums.as_mut_ptr(),
                    ld,
                )
            } else {
                tile_avx512::<true>(self.at, self.step, panel.as_ptr(), k, sums.as_mut_ptr(), ld)
            }
        }
    }
}

/// One tile. `CF`: positions are consecutive values and `dist` separates values of k
/// (channels first); otherwise `dist` separates positions and values of k are consecutive.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const CF: bool>(
    x: *const f32,
    dist: usize,
    w: *const f32,
    k: usize,
    sums: *mut f32,
    ld: usize,
) {
    // SAFETY: what this unsafe fn's callers guarantee (its `# Safety` section).
    unsafe {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        for kk in 0..k {
            // The panel is read from L2 (from memory the first time) by every tile; asking for
            // it ahead keeps the FMAs from waiting on it. Past the panel's end this touches the
            // next one or nothing: a prefetch never faults.
            let ahead = w.wrapping_add((kk + PREFETCH) * LANES).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let w0 = _mm512_loadu_ps(w.add(kk * LANES));
            let w1 = _mm512_loadu_ps(w.add(kk * LANES + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = if CF { kk * dist + r } else { r * dist + kk };
                let v = _mm512_set1_ps(*x.add(at));
                acc[0] = _mm512_fmadd_ps(v, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(v, w1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(sums.add(r * ld), acc[0]);
            _mm512_storeu_ps(sums.add(r * ld + 16), acc[1]);
        }
    }
}

multiversion! {
    fn add(xs: &mut [f32], b: &[f32]) {
        for (x, b) in xs.iter_mut().zip(b) {
            *x += b;
        }
    }
}

multiversion! {
    fn mul(xs: &mut [f32], s: &[f32]) {
        for (x, s) in xs.iter_mut().zip(s) {
            *x *= s;
        }
    }
}

impl Eq for LinearF32 {}

impl Op for LinearF32 {
    fn name(&self) -> StaticName {
        "LinearF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let after = [
            self.bias.as_ref().map(|_| "+ bias"),
            self.gelu.then_some("GELU"),
            self.scale.as_ref().map(|_| "× scale"),
        ];
        Ok(vec![format!(
            "{}x{}, {:?} → {:?}, {}",
            self.k(),
            self.weights.n,
            self.geometry.input,
            self.geometry.output,
            after
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )])
    }

    op_as_typed_op!();
}

impl LinearF32 {
    /// Checks that `x` is an input this op reads; its patches when it reads patches.
    fn check_input(&self, x: &Tensor) -> TractResult<Option<Patches>> {
        let shape = x.shape();
        let k_axis = self.geometry.k_axis;
        ensure!(
            x.datum_type() == f32::datum_type()
                && shape.len() == self.geometry.rank
                && shape[k_axis] == self.in_channels()
                && (self.patch == 1 || shape[0] == 1),
            "Linear: input {:?} {shape:?}, expected f32 with {} channels on axis {k_axis}{}",
            x.datum_type(),
            self.in_channels(),
            if self.patch > 1 { ", batch 1" } else { "" }
        );
        Ok((self.patch > 1).then(|| Patches {
            side: self.patch,
            h: shape[2],
            w: shape[3],
        }))
    }

    /// Likewise for the fact of the input.
    fn check_fact(&self, x: &TypedFact) -> TractResult<()> {
        let k_axis = self.geometry.k_axis;
        ensure!(
            x.datum_type == f32::datum_type()
                && x.rank() == self.geometry.rank
                && x.shape[k_axis] == self.in_channels().to_dim(),
            "Linear: input {x:?}, expected f32 with {} channels on axis {k_axis}",
            self.in_channels()
        );
        Ok(())
    }
}

/// A new f32 tensor of `shape` whose last op's output has `channels` per position, filled by
/// `fill(ys, positions)` (not called when there are no positions).
fn output(
    shape: &[usize],
    channels: usize,
    fill: impl FnOnce(&mut [f32], usize) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let positions = shape.iter().product::<usize>() / channels.max(1);
    // SAFETY: f32 has no invalid bit patterns, and `fill` writes every value.
    let mut y = unsafe { Tensor::uninitialized::<f32>(shape)? };
    if positions > 0 {
        fill(y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?, positions)?;
    }
    Ok(tvec!(y.into_tvalue()))
}

impl EvalOp for LinearF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let patches = self.check_input(&x)?;
        let xs = x.try_as_plain_ram()?;
        output(
            &self.out_shape(x.shape()),
            self.weights.n,
            |ys, positions| self.run(xs.as_slice::<f32>()?, positions, patches, ys),
        )
    }
}

impl TypedOp for LinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.check_fact(inputs[0])?;
        Ok(tvec!(f32::fact(self.out_shape(&inputs[0].shape))))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let points = inputs[0].shape.iter().product::<TDim>();
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            points * self.weights.n
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::for_each_variant;
    use crate::kernels::threads::on_threads;

    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// What the op computes, one output at a time, the sum in f64; and the bound on the
    /// difference that f32 rounding of the sum allows.
    struct Case {
        positions: usize,
        k: usize,
        n: usize,
        input: Layout,
        output: Layout,
        bias: bool,
        gelu: bool,
        scale: bool,
        threads: usize,
    }

    impl Case {
        fn check(&self, seed: u64) {
            let Case {
                positions, k, n, ..
            } = *self;
            let x = values(positions * k, seed);
            let w = values(k * n, seed + 1);
            let bias = values(n, seed + 2);
            let scale = values(n, seed + 3);
            let at_x = |p: usize, kk: usize| match self.input {
                Layout::ChannelsLast => x[p * k + kk],
                Layout::ChannelsFirst => x[kk * positions + p],
            };
            let mut expected = vec![0f32; positions * n];
            let mut bound = vec![0f32; positions * n];
            for p in 0..positions {
                let mut row: Vec<f32> = (0..n)
                    .map(|c| {
                        let s: f64 = (0..k)
                            .map(|kk| at_x(p, kk) as f64 * w[kk * n + c] as f64)
                            .sum();
                        s as f32 + if self.bias { bias[c] } else { 0.0 }
                    })
                    .collect();
                if self.gelu {
                    gelu::gelu(&mut row);
                }
                for (c, v) in row.iter().enumerate() {
                    let s = if self.scale { scale[c] } else { 1.0 };
                    let at = match self.output {
                        Layout::ChannelsLast => p * n + c,
                        Layout::ChannelsFirst => c * positions + p,
                    };
                    expected[at] = v * s;
                    let magnitude: f32 = (0..k).map(|kk| (at_x(p, kk) * w[kk * n + c]).abs()).sum();
                    bound[at] = 1e-6 * (magnitude + 1.0) * 4.0;
                }
            }
            let (x_shape, out_axes) = match self.input {
                Layout::ChannelsLast => (vec![positions, k], tvec!(OutAxis::Input(0))),
                Layout::ChannelsFirst => (vec![1, k, positions], tvec!(OutAxis::Input(2))),
            };
            let mut out_axes = out_axes;
            match self.output {
                Layout::ChannelsLast => out_axes.push(OutAxis::Channels),
                Layout::ChannelsFirst => {
                    out_axes.insert(0, OutAxis::Channels);
                    out_axes.insert(0, OutAxis::One);
                }
            }
            let wt = Tensor::from_shape(&[k, n], &w).unwrap();
            let geometry = Geometry {
                rank: x_shape.len(),
                k_axis: 1,
                input: self.input,
                output: self.output,
                out_axes,
            };
            let mut op = LinearF32::new(&wt, geometry).unwrap();
            if self.bias {
                op = op.with_bias(&bias).unwrap();
            }
            if self.gelu {
                op = op.with_gelu().unwrap();
            }
            if self.scale {
                op = op.with_scale(&scale).unwrap();
            }
            let xt = Tensor::from_shape(&x_shape, &x).unwrap();
            let fact = op.output_facts(&[&f32::fact(&x_shape)]).unwrap().remove(0);
            let eval = || op.eval(&EvalContext::out_of_plan(), tvec!(xt.clone().into_tvalue()));
            let y = match self.threads {
                1 => eval(),
                n => on_threads(n, eval),
            };
            let y = y.unwrap().remove(0);
            assert_eq!(fact.shape.as_concrete().unwrap(), y.shape());
            let got = y.try_as_plain_ram().unwrap();
            let got = got.as_slice::<f32>().unwrap();
            for (i, ((g, e), b)) in got.iter().zip(&expected).zip(&bound).enumerate() {
                assert!(
                    (g - e).abs() <= b * if self.gelu { 2.0 } else { 1.0 },
                    "{positions}x{k}x{n} {:?}→{:?} at {i}: {g} vs {e}",
                    self.input,
                    self.output
                );
            }
        }
    }

    for_each_variant! {
        /// Odd sizes against the plain loop: positions around the tile's 14, in one block or
        /// several, k of one, channels below, at and above the panel's 32; every layout and
        /// epilogue, on one thread or several.
        fn matches_the_plain_loop_on_odd_shapes() {
            if !LinearF32::available() {
                eprintln!("skipped: LinearF32 needs AVX-512");
                return;
            }
            let shapes = [
                (1, 1, 1),
                (13, 3, 33),
                (14, 96, 32),
                (15, 7, 65),
                (29, 130, 96),
                (200, 40, 100),
                (600, 5, 20),
                (300, 1000, 40),
            ];
            let layouts = [Layout::ChannelsLast, Layout::ChannelsFirst];
            let epilogues = [
                (false, false, false, 1),
                (true, true, false, 3),
                (true, false, true, 1),
                (true, true, true, 2),
            ];
            let mut seed = 0;
            for (positions, k, n) in shapes {
                for input in layouts {
                    for output in layouts {
                        for (bias, gelu, scale, threads) in epilogues {
                            seed += 4;
                            let case = Case {
                                positions,
                                k,
                                n,
                                input,
                                output,
                                bias,
                                gelu,
                                scale,
                                threads,
                            };
                            case.check(seed);
                        }
                    }
                }
            }
        }
    }

    for_each_variant! {
        /// A convolution over patches against its plain loop: sides 2, 3 and 4, images whose sides
        /// are not multiples of the patch, more or fewer patches than a tile, 1 and 2 threads.
        fn over_patches_matches_the_plain_convolution() {
            if !LinearF32::available() {
                eprintln!("skipped: LinearF32 needs AVX-512");
                return;
            }
            for (seed, (c, h, w, side, n, threads)) in [
                (3, 9, 11, 2, 5, 1),
                (3, 16, 12, 4, 40, 2),
                (20, 14, 30, 2, 33, 2),
                (2, 4, 4, 4, 3, 1),
                (4, 9, 10, 3, 7, 1),
            ]
            .into_iter()
            .enumerate()
            {
                let k = c * side * side;
                let (oh, ow) = (h / side, w / side);
                let x = values(c * h * w, seed as u64 * 8);
                let wt = values(k * n, seed as u64 * 8 + 1);
                let bias = values(n, seed as u64 * 8 + 2);
                let op = LinearF32::over_patches(&Tensor::from_shape(&[k, n], &wt).unwrap(), side)
                    .unwrap()
                    .with_bias(&bias)
                    .unwrap();
                let xt = Tensor::from_shape(&[1, c, h, w], &x).unwrap();
                let fact = op
                    .output_facts(&[&f32::fact([1, c, h, w])])
                    .unwrap()
                    .remove(0);
                let eval = || op.eval(&EvalContext::out_of_plan(), tvec!(xt.clone().into_tvalue()));
                let y = on_threads(threads, eval)
                    .unwrap()
                    .remove(0);
                assert_eq!(y.shape(), [1, n, oh, ow]);
                assert_eq!(fact.shape.as_concrete().unwrap(), y.shape());
                let got = y.try_as_plain_ram().unwrap();
                let got = got.as_slice::<f32>().unwrap();
                for o in 0..n {
                    for (oy, ox) in (0..oh).flat_map(|y| (0..ow).map(move |x| (y, x))) {
                        let (mut sum, mut magnitude) = (bias[o] as f64, 0f64);
                        for (ci, dy, dx) in (0..c).flat_map(|ci| {
                            (0..side).flat_map(move |dy| (0..side).map(move |dx| (ci, dy, dx)))
                        }) {
                            let v = x[(ci * h + oy * side + dy) * w + ox * side + dx] as f64
                                * wt[((ci * side + dy) * side + dx) * n + o] as f64;
                            sum += v;
                            magnitude += v.abs();
                        }
                        let g = got[(o * oh + oy) * ow + ox] as f64;
                        assert!(
                            (g - sum).abs() <= 4e-6 * (magnitude + 1.0),
                            "{c}x{h}x{w} over {side}: channel {o} at {oy},{ox}: {g} vs {sum}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_a_wrong_input() {
        let w = Tensor::from_shape(&[3, 2], &[0f32; 6]).unwrap();
        let op = LinearF32::channels_last(&w).unwrap();
        let x = Tensor::from_shape(&[2, 4], &[0f32; 8]).unwrap();
        let err = op
            .eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("expected f32 with 3 channels"),
            "{err:?}"
        );
        assert!(op.clone().with_bias(&[1.0]).is_err());
    }
}
