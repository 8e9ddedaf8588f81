//! Integer 1x1 convolution for QDQ models: ConvNeXt's MLP (`fc1`/`fc2` as 1x1 convs, or
//! `Linear` over the channel axis once exported as a 1x1 conv) on tract-linalg's int8 kernels.
//!
//! One op, [`QPointwiseConv`], computes what a QDQ model writes as
//! `Q → DQ → Conv(1x1, DQ(W)) → [Q → DQ]`:
//!
//! 1. quantize the f32 input with the activation's scale and zero point (the same branch-free
//!    arithmetic as [`FastQuantize`]), straight to i8 — a u8 activation is stored as `q − 128`
//!    with its zero point shifted by 128, which is exact;
//! 2. `acc = Σ x_i8 · w_i8` on tract-linalg's i8×i8→i32 matmul kernels (AVX-512 VNNI or
//!    AVX-VNNI on x86) or our own [`product`] (x86 with AVX2 alone; arm64, SMULL or SDOT) or,
//!    channels last on Intel AMX, our [`amx`] product; weights packed once at load;
//! 3. an epilogue per output channel `y = (acc − zx·Σw) · (sx·sw) + bias`, all integer until the
//!    single conversion, then the output's fake quantization (the `Q → DQ` pair) in place;
//!    what the graph computes from that quantized value alone — the QDQ GELU, or the next
//!    product's input quantization when the op writes i8 for it — is one 256-entry table.
//!
//! Against the float graph it replaces, the only difference is where f32 rounding happens: the
//! integer sum is exact where the float graph rounds after each product (and onnxruntime also
//! accumulates in i32). Weights must be symmetric (zero point 0), which is what onnxruntime's
//! quantizer writes for int8 weights; other models keep the float path. For dynamic
//! quantization ([`QPointwiseConv::with_dynamic_input`]) the input's scale and zero point are
//! computed from each input, as `DynamicQuantizeLinear` does.
//!
//! tract internals used (tract-linalg 0.23.9): `MmmDispatch::native().pick` with
//! `Query::plain(I32, …)`, `MatMatMul::{packings, c_view, run}`, `MMMInputFormat::prepare_one`,
//! `FusedSpec::{AddMatMul, Store}`; and tract-core's `Op`/`EvalOp`/`TypedOp`.

use std::sync::Arc;

use tract_linalg::element_wise::ElementWise;
use tract_linalg::mmm::{
    AsInputValue, EagerPackedInput, FusedSpec, MMMInputValue, MatMatMul, PackedExoticFact, Query,
};
use tract_linalg::multithread::par_chunks_mut;
use tract_linalg::pack::PackedI8K4;
use tract_linalg::{Func, MmmDispatch};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::product;
use super::quantize::{FakeQuantize, FastQuantize, Fq};
use super::simd::multiversion;
pub use super::Layout;
use super::{Patches, Sums};

/// An activation's quantization: `q = clamp(round(x / scale) + zero_point)` to u8 or i8.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i32,
    pub signed: bool,
}

impl ActQuant {
    /// The quantizer to i8 this activation is stored as inside the op: u8 values shifted by
    /// −128 (so the zero point moves by −128 too).
    pub(crate) fn to_i8(self) -> FastQuantize {
        let shift = if self.signed { 0 } else { 128 };
        FastQuantize::new(1.0 / self.scale, self.zero_point - shift, true)
    }

    /// Its own quantizer (u8 or i8 as the model says).
    pub(crate) fn quantizer(self) -> FastQuantize {
        FastQuantize::new(1.0 / self.scale, self.zero_point, self.signed)
    }

    /// The dequantization of the quantized value `q`, as the fake quantization computes it.
    pub(crate) fn dequantize(self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// The in-place `Q → DQ` of this quantization.
    pub(crate) fn fake(self) -> FakeQuantize {
        FakeQuantize::new(self.quantizer(), self.scale, self.zero_point)
    }
}

/// The integer 1x1 convolution or channels-last matmul (see the module docs). Inputs: x (f32,
/// or i8 already quantized with the input quantization — what an op built
/// [`emitting_i8`](Self::emitting_i8) writes) and the bias `[Cout]` f32; output f32 (or i8)
/// with `Cout` channels in place of `Cin`.
///
/// `y` is the output's fake quantization. `mid`, when set, is a fake quantization applied
/// before the bias: a QDQ `MatMul → Q → DQ → Add(bias) → Q → DQ` chain, fused whole.
#[derive(Debug, Clone)]
pub struct QPointwiseConv {
    weights: Arc<Tensor>,
    layout: Layout,
    x: ActQuant,
    w_scales: Vec<f32>,
    mid: Option<ActQuant>,
    y: Option<ActQuant>,
    gelu: Option<QdqGelu>,
    emit: Option<ActQuant>,
    lookup: Option<Arc<Lookup>>,
    dynamic: bool,
    /// Side of the non-overlapping patches the input is read in (1: a 1x1 convolution).
    patch: usize,
    kernel: Kernel,
}

/// What follows the output's quantization when it depends on the quantized value alone (the
/// QDQ GELU, the quantization to the next product's input): its 256 results, indexed by the
/// quantized byte. The table is made by the same code the element-wise path ran (tract's erf
/// kernel included) on each of the 256 values, so a lookup is bit-identical to it — and
/// replaces the erf and six fake quantizations per element of ConvNeXt's widest tensor.
#[derive(Debug)]
struct Lookup {
    index: FastQuantize,
    table: Table,
}

#[derive(Debug)]
enum Table {
    F32(Box<[f32; 256]>),
    I8(Box<[i8; 256]>),
}

impl Lookup {
    /// `out = table[idx]`, `idx` the quantized bytes of the output values.
    fn gather<T: Emit>(&self, idx: &[u8], out: &mut [T]) -> TractResult<()> {
        let table = T::table(&self.table).context("integer 1x1 conv: output type mismatch")?;
        T::gather(table, idx, out);
        Ok(())
    }
}

/// An output element type: f32, or i8 for the next integer product.
trait Emit: Datum + Copy {
    fn table(t: &Table) -> Option<&[Self; 256]>;
    /// The row itself when the epilogue can write f32 into it directly.
    fn plain(row: &mut [Self]) -> Option<&mut [f32]>;
    /// The row and the table as bytes when the output is one byte a value: a lookup can
    /// then write the row directly.
    fn bytes<'a>(row: &'a mut [Self], table: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])>;
    /// `out[i] = table[idx[i]]`.
    fn gather(table: &[Self; 256], idx: &[u8], out: &mut [Self]) {
        for (o, &i) in out.iter_mut().zip(idx) {
            *o = table[i as usize];
        }
    }
}

impl Emit for f32 {
    fn table(t: &Table) -> Option<&[f32; 256]> {
        match t {
            Table::F32(t) => Some(t),
            Table::I8(_) => None,
        }
    }
    fn plain(row: &mut [f32]) -> Option<&mut [f32]> {
        Some(row)
    }
    fn bytes<'a>(_: &'a mut [f32], _: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])> {
        None
    }
}

impl Emit for i8 {
    fn table(t: &Table) -> Option<&[i8; 256]> {
        match t {
            Table::I8(t) => Some(t),
            Table::F32(_) => None,
        }
    }
    fn plain(_: &mut [i8]) -> Option<&mut [f32]> {
        None
    }
    fn bytes<'a>(row: &'a mut [i8], table: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])> {
        let table = Self::table(table)?;
        // SAFETY: i8 and u8 have the same size and alignment.
        unsafe {
            Some((
                std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut u8, row.len()),
                &*(table as *const [i8; 256] as *const [u8; 256]),
            ))
        }
    }
    fn gather(table: &[i8; 256], idx: &[u8], out: &mut [i8]) {
        gather_i8(table, idx, out)
    }
}

/// `out[i] = table[idx[i]]` for a 256-byte table; sixteen a step on aarch64
/// ([`super::neon::lookup16`]).
fn gather_i8(table: &[i8; 256], idx: &[u8], out: &mut [i8]) {
    let n = idx.len().min(out.len());
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the aarch64 baseline; each step reads idx[at..at + 16] and writes
    // out[at..at + 16] with at + 16 <= n; i8 and u8 share size and alignment.
    let done = unsafe {
        use std::arch::aarch64::{vld1q_u8, vst1q_u8};
        let bytes = &*(table as *const [i8; 256] as *const [u8; 256]);
        super::neon::blocks(n, |at| {
            let r = super::neon::lookup16(bytes, vld1q_u8(idx.as_ptr().add(at)));
            vst1q_u8(out.as_mut_ptr().add(at) as *mut u8, r);
        })
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    for (o, &i) in out[done..n].iter_mut().zip(&idx[done..n]) {
        *o = table[i as usize];
    }
}

/// The input of the product: f32 to quantize, or i8 already quantized (`ActQuant::to_i8`).
#[derive(Clone, Copy)]
enum Operand<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
}

impl<'a> Operand<'a> {
    fn len(self) -> usize {
        match self {
            Operand::F32(x) => x.len(),
            Operand::I8(x) => x.len(),
        }
    }

    fn slice(self, start: usize, len: usize) -> Operand<'a> {
        match self {
            Operand::F32(x) => Operand::F32(&x[start..][..len]),
            Operand::I8(x) => Operand::I8(&x[start..][..len]),
        }
    }
}

/// The exact GELU of a QDQ graph, `x · (erf(x / c1) + c2) · c3` with `c1 = √2`, `c2 = 1`,
/// `c3 = ½` as exported (the values are read from the model), each intermediate result
/// optionally fake-quantized as the graph does: after the division, the erf, the addition, the
/// product by `x` and the final product (`quant[0..5]`). Applied to the output of the product
/// in the epilogue, replacing ten element-wise ops on ConvNeXt's widest tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QdqGelu {
    pub c: [f32; 3],
    pub quant: [Option<ActQuant>; 5],
}

impl QdqGelu {
    /// Applies the chain to `xs` in place; `tmp` is scratch of the same length.
    fn apply(
        &self,
        xs: &mut [f32],
        tmp: &mut [f32],
        erf: &dyn ElementWise<f32>,
    ) -> TractResult<()> {
        let q = self.quant.map(|q| q.map(|q| q.fake().parts()));
        gelu_div(xs, tmp, self.c[0], q[0]);
        erf.run(tmp)?;
        gelu_finish(xs, tmp, self.c[1], self.c[2], [q[1], q[2], q[3], q[4]]);
        Ok(())
    }
}

/// `q(v)` when the graph quantizes this intermediate, else `v`.
#[inline(always)]
fn maybe(q: Option<Fq>, v: f32) -> f32 {
    match q {
        Some(q) => q.apply(v),
        None => v,
    }
}

multiversion! {
    fn gelu_div(xs: &[f32], tmp: &mut [f32], c1: f32, q: Option<Fq>) {
        for (t, x) in tmp.iter_mut().zip(xs) {
            *t = maybe(q, x / c1);
        }
    }
}

multiversion! {
    fn gelu_finish(xs: &mut [f32], erf: &[f32], c2: f32, c3: f32, q: [Option<Fq>; 4]) {
        for (x, e) in xs.iter_mut().zip(erf) {
            let a = maybe(q[1], maybe(q[0], *e) + c2);
            *x = maybe(q[3], maybe(q[2], *x * a) * c3);
        }
    }
}

/// Everything the epilogue applies after the integer sum, for one output channel `co`:
/// `v = (acc + offset[co]) · scale[co]`, then `mid`, `+ bias[co]`, then `y`.
#[derive(Debug, Clone, Copy)]
struct Epilogue {
    mid: Option<Fq>,
    y: Option<Fq>,
}

/// Everything derived from the weights, computed once when the op is built.
#[derive(Debug, Clone)]
struct Kernel {
    engine: Engine,
    /// The product width (positions per image) the engine was chosen for, if known.
    n: Option<usize>,
    /// `Σ_k w[co, k]`, for the input zero point's share of each output channel's sum.
    w_sums: Vec<i32>,
}

/// The input's quantization for one evaluation and what the epilogue derives from it.
struct InputQuant {
    /// To i8 (a u8 activation shifted by −128, see [`ActQuant::to_i8`]).
    quantizer: FastQuantize,
    /// `−zx_i8 · Σ_k w[co, k]`.
    offset: Vec<i32>,
    /// `sx · sw[co]`.
    scale: Vec<f32>,
}

/// The code computing the integer sums, with the weights packed for it.
#[derive(Debug, Clone)]
enum Engine {
    /// A tract-linalg kernel (VNNI on x86, SMLAL / SDOT on arm64).
    Tract {
        mmm: Box<dyn MatMatMul>,
        packing: usize,
        packed: Box<dyn MMMInputValue>,
    },
    /// Our own product ([`product`]) where tract's int8 kernels are slow: weights as lanes of
    /// a channels-last product (channels are the output's contiguous axis), as rows of a
    /// channels-first one.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    Own(OwnWeights),
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Debug, Clone)]
enum OwnWeights {
    Lanes(product::LanePanels),
    Rows(product::Rows),
    /// Channels last on AMX ([`amx`]).
    #[cfg(target_arch = "x86_64")]
    Amx(amx::Lanes),
}

impl Engine {
    /// The engine for `[cout, cin]` weights: ours where tract's would be slow or cannot
    /// gather the patches of a convolution `over_patches`, else the tract-linalg kernel for
    /// the product's shape.
    fn new(
        weights: &Tensor,
        layout: Layout,
        n: Option<usize>,
        over_patches: bool,
    ) -> TractResult<Engine> {
        let (cout, cin) = (weights.shape()[0], weights.shape()[1]);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let w = weights.try_as_plain_ram()?.as_slice::<i8>()?;
            #[cfg(target_arch = "x86_64")]
            if layout == Layout::ChannelsLast && amx::available() {
                let lanes = amx::Lanes::pack(cout, cin, |l, k| w[l * cin + k]);
                return Ok(Engine::Own(OwnWeights::Amx(lanes)));
            }
            if own_product_takes(w) || (over_patches && patches_run(w)) {
                return Ok(Engine::Own(match layout {
                    Layout::ChannelsLast => {
                        OwnWeights::Lanes(product::LanePanels::pack(cout, cin, |l, k| {
                            w[l * cin + k]
                        }))
                    }
                    Layout::ChannelsFirst => OwnWeights::Rows(product::Rows::pack(w, cout, cin)),
                }));
            }
        }
        let _ = (layout, over_patches);
        let (mmm, packing) = pick_kernel(cout, cin, n)?;
        let packed = mmm.packings()[packing].0.prepare_one(weights, 1, 0)?;
        Ok(Engine::Tract {
            mmm,
            packing,
            packed,
        })
    }

    fn name(&self) -> String {
        match self {
            Engine::Tract { mmm, .. } => mmm.name().to_string(),
            #[cfg(target_arch = "x86_64")]
            Engine::Own(OwnWeights::Amx(_)) => amx::kernel().to_string(),
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Engine::Own(_) => product::kernel().to_string(),
        }
    }
}

impl Eq for QPointwiseConv {}

impl PartialEq for QPointwiseConv {
    fn eq(&self, other: &Self) -> bool {
        self.weights == other.weights
            && self.layout == other.layout
            && self.x == other.x
            && self.mid == other.mid
            && self.gelu == other.gelu
            && self.emit == other.emit
            && self.dynamic == other.dynamic
            && self.w_scales == other.w_scales
            && self.y == other.y
            && self.patch == other.patch
    }
}

impl QPointwiseConv {
    /// `weights` is `[Cout, Cin]` i8 (symmetric), `w_scales` one per output channel or one for
    /// all; `n` is the matmul width the kernel is chosen for (positions per image), if known.
    pub fn new(
        weights: Tensor,
        layout: Layout,
        x: ActQuant,
        w_scales: Vec<f32>,
        (mid, y): (Option<ActQuant>, Option<ActQuant>),
        n: Option<usize>,
    ) -> TractResult<QPointwiseConv> {
        ensure!(
            weights.datum_type() == i8::datum_type() && weights.rank() == 2,
            "integer 1x1 conv: weights must be a 2D i8 tensor, got {:?}",
            weights
        );
        let (cout, cin) = (weights.shape()[0], weights.shape()[1]);
        ensure!(cout > 0 && cin > 0, "integer 1x1 conv: empty weights");
        let w_scales = match w_scales.len() {
            1 => vec![w_scales[0]; cout],
            l if l == cout => w_scales,
            l => bail!("integer 1x1 conv: {l} weight scales for {cout} output channels"),
        };
        for s in std::iter::once(x.scale)
            .chain(w_scales.iter().copied())
            .chain(mid.map(|q| q.scale))
            .chain(y.map(|y| y.scale))
        {
            ensure!(
                s.is_finite() && s > 0.0,
                "integer 1x1 conv: scale {s} is not positive and finite"
            );
        }
        let engine = Engine::new(&weights, layout, n, false)?;
        let w = weights.try_as_plain_ram()?.as_slice::<i8>()?;
        let w_sums = w
            .chunks(cin)
            .map(|row| row.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        Ok(QPointwiseConv {
            weights: Arc::new(weights),
            layout,
            x,
            w_scales,
            mid,
            y,
            gelu: None,
            emit: None,
            lookup: None,
            dynamic: false,
            patch: 1,
            kernel: Kernel { engine, n, w_sums },
        })
    }

    /// The convolution over non-overlapping `side × side` patches (kernel = stride = `side`, no
    /// padding) whose `[Cout, Cin · side²]` weights this op holds, `(ci, kh, kw)` along the
    /// second axis (ONNX's order): a 1x1 product over the patches, on our own product. Built
    /// channels first, as ONNX lays convolutions out; tract's axis changes may move it
    /// channels last.
    pub fn over_patches(mut self, side: usize) -> TractResult<QPointwiseConv> {
        ensure!(
            side >= 1 && self.layout == Layout::ChannelsFirst,
            "integer conv over {side}x{side} patches: built channels first"
        );
        ensure!(
            self.cin().is_multiple_of(side * side),
            "integer conv over {side}x{side} patches: {} weights per output channel",
            self.cin()
        );
        self.patch = side;
        if side > 1 && !self.runs_on_own_product() {
            self.kernel.engine = Engine::new(&self.weights, self.layout, self.kernel.n, true)?;
        }
        self.check_engine()?;
        Ok(self)
    }

    /// Patches are gathered by our own product only.
    fn check_engine(&self) -> TractResult<()> {
        let s = self.patch;
        ensure!(
            s == 1 || self.runs_on_own_product(),
            "integer conv over {s}x{s} patches needs our own product on this CPU"
        );
        Ok(())
    }

    /// The same op channels last: what tract's axis changes ask for when they move the
    /// channels of a stretch of the network last. Over patches, the weights' second axis is
    /// reordered from `(ci, kh, kw)` to `(kh, kw, ci)`: a patch is then `side` runs of
    /// `side · Cin` contiguous values.
    fn channels_last(&self) -> TractResult<QPointwiseConv> {
        if self.layout == Layout::ChannelsLast {
            return Ok(self.clone());
        }
        let (cout, k, s, c) = (self.cout(), self.cin(), self.patch, self.in_channels());
        let w = self.weights.try_as_plain_ram()?;
        let mut reordered = vec![0i8; cout * k];
        for (src, dst) in w
            .as_slice::<i8>()?
            .chunks_exact(k)
            .zip(reordered.chunks_exact_mut(k))
        {
            for (ci, pixels) in src.chunks_exact(s * s).enumerate() {
                for (pixel, &v) in pixels.iter().enumerate() {
                    dst[pixel * c + ci] = v;
                }
            }
        }
        let weights = Tensor::from_shape(&[cout, k], &reordered)?;
        let engine = Engine::new(
            &weights,
            Layout::ChannelsLast,
            self.kernel.n,
            self.patch > 1,
        )?;
        let op = QPointwiseConv {
            weights: Arc::new(weights),
            layout: Layout::ChannelsLast,
            kernel: Kernel {
                engine,
                ..self.kernel.clone()
            },
            ..self.clone()
        };
        op.check_engine()?;
        Ok(op)
    }

    fn runs_on_own_product(&self) -> bool {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            matches!(self.kernel.engine, Engine::Own(_))
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// The axes of a rank-`rank` input a convolution over patches divides by their side.
    fn spatial_axes(&self, rank: usize) -> std::ops::Range<usize> {
        match self.layout {
            Layout::ChannelsFirst => 2..rank,
            Layout::ChannelsLast => 1..rank.saturating_sub(1),
        }
    }

    /// Channels of the input: `Cin`, or `Cin / side²` over patches.
    fn in_channels(&self) -> usize {
        self.cin() / (self.patch * self.patch)
    }

    /// The name of the integer matmul kernel this op runs on.
    pub fn kernel_name(&self) -> String {
        self.kernel.engine.name()
    }

    /// The channel axis of a rank-`rank` input.
    fn channel_axis(&self, rank: usize) -> TractResult<usize> {
        ensure!(
            self.patch == 1 || rank == 4,
            "integer conv over patches: rank {rank} input"
        );
        match self.layout {
            Layout::ChannelsFirst if rank >= 3 => Ok(1),
            Layout::ChannelsLast if rank >= 1 => Ok(rank - 1),
            _ => bail!("integer 1x1 conv: rank {rank} input for {:?}", self.layout),
        }
    }

    fn cin(&self) -> usize {
        self.weights.shape()[1]
    }

    fn cout(&self) -> usize {
        self.weights.shape()[0]
    }

    /// The same op with a QDQ GELU applied to its (quantized) output.
    pub fn with_gelu(self, gelu: QdqGelu) -> TractResult<QPointwiseConv> {
        QPointwiseConv {
            gelu: Some(gelu),
            ..self
        }
        .with_lookup()
    }

    /// The same op writing i8 for another integer product whose input quantization is `next`:
    /// the values that product would compute from this op's f32 output, without the f32
    /// tensor between them (a quarter of the memory traffic, no quantization pass).
    pub fn emitting_i8(self, next: ActQuant) -> TractResult<QPointwiseConv> {
        ensure!(
            next.scale.is_finite() && next.scale > 0.0,
            "integer 1x1 conv: scale {} is not positive and finite",
            next.scale
        );
        QPointwiseConv {
            emit: Some(next),
            ..self
        }
        .with_lookup()
    }

    /// The same op quantizing its input as `DynamicQuantizeLinear` does, with a scale and
    /// zero point computed from each input (u8, the range of the values and zero): dynamic
    /// quantization's `ConvInteger | MatMulInteger → Cast → Mul(scales)`. The static input
    /// quantization given to [`Self::new`] is then unused.
    pub fn with_dynamic_input(self) -> TractResult<QPointwiseConv> {
        ensure!(
            self.mid.is_none() && self.y.is_none() && self.gelu.is_none() && self.emit.is_none(),
            "integer 1x1 conv: a dynamic input quantization has no output quantization"
        );
        Ok(QPointwiseConv {
            dynamic: true,
            ..self
        })
    }

    /// The input quantization for `x`, and the epilogue's constants.
    fn input_quant(&self, x: Operand) -> InputQuant {
        let (q, sx) = match (self.dynamic, x) {
            (true, Operand::F32(x)) => dynamic_quant(x),
            _ => (self.x, self.x.scale),
        };
        let quantizer = q.to_i8();
        let zx = quantizer.zero_point();
        InputQuant {
            quantizer,
            offset: self.kernel.w_sums.iter().map(|s| -zx * s).collect(),
            scale: self.w_scales.iter().map(|sw| sx * sw).collect(),
        }
    }

    /// The quantization the op applies to an f32 input before anything else; `None` when it
    /// depends on the input (dynamic quantization).
    pub(crate) fn input_quantizer(&self) -> Option<FastQuantize> {
        (!self.dynamic).then(|| self.x.to_i8())
    }

    /// Every value the op can output when that is a short list (its output is quantized and
    /// f32): the output quantization's values, or the lookup table that follows it.
    pub(crate) fn outputs(&self) -> Option<Vec<f32>> {
        match (&self.lookup, self.y) {
            (Some(lookup), _) => match &lookup.table {
                Table::F32(t) => Some(t.to_vec()),
                Table::I8(_) => None,
            },
            (None, Some(y)) => Some(y.fake().outputs()),
            (None, None) => None,
        }
    }

    /// The datum type of the output.
    fn output_type(&self) -> DatumType {
        match self.emit {
            Some(_) => i8::datum_type(),
            None => f32::datum_type(),
        }
    }

    /// Builds the [`Lookup`] for what follows the output quantization.
    fn with_lookup(self) -> TractResult<QPointwiseConv> {
        if self.gelu.is_none() && self.emit.is_none() {
            return Ok(QPointwiseConv {
                lookup: None,
                ..self
            });
        }
        let y = self
            .y
            .context("integer 1x1 conv: a GELU or an i8 output needs the output's quantization")?;
        let index = y.quantizer();
        let mut v: Vec<f32> = (0..=255u8)
            .map(|b| y.dequantize(index.value_of_byte(b)))
            .collect();
        if let Some(gelu) = &self.gelu {
            let mut tmp = vec![0f32; v.len()];
            gelu.apply(&mut v, &mut tmp, &*Func::Erf.ew_f32()?)?;
        }
        let table = match self.emit {
            Some(next) => {
                let mut t = Box::new([0i8; 256]);
                next.to_i8().quantize_i8(&v, &mut t[..]);
                Table::I8(t)
            }
            None => {
                let mut t = Box::new([0f32; 256]);
                t.copy_from_slice(&v);
                Table::F32(t)
            }
        };
        Ok(QPointwiseConv {
            lookup: Some(Arc::new(Lookup { index, table })),
            ..self
        })
    }

    /// The arithmetic part of the epilogue; the output quantization only when no lookup
    /// takes its place.
    fn epilogue(&self) -> Epilogue {
        Epilogue {
            mid: self.mid.map(|q| q.fake().parts()),
            y: self
                .y
                .filter(|_| self.lookup.is_none())
                .map(|q| q.fake().parts()),
        }
    }

    /// `x` quantized (unless it is i8 already) straight into the VNNI kernels' packing
    /// (`PackedI8K4`: panels of `r` positions, each `k` in groups of four consecutive values
    /// per position), one panel per task across the plan's threads. Bit-identical to
    /// quantizing then `prepare_one`, without the intermediate tensor and the byte-by-byte
    /// strided pack.
    fn pack_input(
        &self,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
        format: &PackedI8K4,
    ) -> TractResult<EagerPackedInput> {
        let (cin, r) = (self.cin(), format.r);
        let kp = cin.div_ceil(4) * 4;
        let panel_bytes = kp * r;
        let panels = p.div_ceil(r);
        let mut blob =
            unsafe { Blob::new_for_size_and_align(panels * panel_bytes, format.alignment()) };
        let layout = self.layout;
        par_chunks_mut(blob.as_bytes_mut(), panel_bytes, x.len(), |first, chunk| {
            let mut rows = vec![0i8; kp * r];
            let mut block = vec![0i8; 4 * r];
            for (pi, panel) in chunk.chunks_mut(panel_bytes).enumerate() {
                let m0 = (first + pi) * r;
                let width = r.min(p - m0);
                match layout {
                    Layout::ChannelsLast => {
                        // `rows` holds the panel's values position-major, `kp` per position.
                        rows.fill(0);
                        for (lm, row) in rows.chunks_mut(kp).take(width).enumerate() {
                            match x.slice((m0 + lm) * cin, cin) {
                                Operand::F32(src) => quantizer.quantize_i8(src, &mut row[..cin]),
                                Operand::I8(src) => row[..cin].copy_from_slice(src),
                            }
                        }
                        interleave_k4(&rows, kp, r, panel);
                    }
                    Layout::ChannelsFirst => {
                        // Four channels at a time into `block` (channel-major, `r` positions
                        // each), then written as the panel's four-byte words: no byte-wise
                        // scatter and no second pass.
                        for (kb, words) in panel.chunks_exact_mut(4 * r).enumerate() {
                            block.fill(0);
                            for (d, dst) in block.chunks_exact_mut(r).enumerate() {
                                let kk = kb * 4 + d;
                                if kk >= cin {
                                    break;
                                }
                                match x.slice(kk * p + m0, width) {
                                    Operand::F32(src) => {
                                        quantizer.quantize_i8(src, &mut dst[..width])
                                    }
                                    Operand::I8(src) => dst[..width].copy_from_slice(src),
                                }
                            }
                            zip4(&block, words);
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(EagerPackedInput {
            fact: PackedExoticFact {
                format: Box::new(format.clone()),
                mn: p.to_dim(),
                k: cin,
            },
            packed: Arc::new(blob),
            panel_bytes,
            mn: p,
        })
    }

    /// [`Self::run_matrix`] on our own product: the epilogue runs on each block of sums as
    /// soon as it is computed.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[allow(clippy::too_many_arguments)]
    fn own_product<T: Emit>(
        &self,
        w: &OwnWeights,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
        patches: Option<Patches>,
        out: &mut [T],
        finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
    ) -> TractResult<()> {
        let cin = self.cin();
        let put = |start: usize, row: &mut [i8]| match x.slice(start, row.len()) {
            Operand::F32(src) => quantizer.quantize_i8(src, row),
            Operand::I8(src) => row.copy_from_slice(src),
        };
        // Row `r` of a channels-last product: a position, or a patch of `side` runs.
        let fill = |r: usize, row: &mut [i8]| match patches {
            None => put(r * cin, row),
            Some(g) => {
                let run = g.side * self.in_channels();
                for (dy, part) in row.chunks_exact_mut(run).enumerate() {
                    put(g.run_start(r, dy, self.in_channels()), part);
                }
            }
        };
        match w {
            OwnWeights::Lanes(w) => {
                let rows = product::RowSource::Fill {
                    rows: p,
                    k: cin,
                    fill: &fill,
                };
                product::product_into(w, rows, out, finish)
            }
            #[cfg(target_arch = "x86_64")]
            OwnWeights::Amx(w) => amx::product_into(w, p, &fill, out, finish),
            OwnWeights::Rows(w) => {
                let quantized;
                let xq = match x {
                    Operand::F32(x) => {
                        let mut q = vec![0i8; x.len()];
                        quantizer.quantize_i8(x, &mut q);
                        quantized = q;
                        &quantized[..]
                    }
                    Operand::I8(x) => x,
                };
                let rows;
                let xq = match patches {
                    Some(g) => {
                        let mut r = vec![0i8; self.cin() * p];
                        g.gather(xq, self.in_channels(), &mut r);
                        rows = r;
                        &rows[..]
                    }
                    None => xq,
                };
                let x = product::LanePanels::pack_transposed(xq, self.cin(), p, p)?;
                product::product_into(&x, product::RowSource::Packed(w), out, finish)
            }
        }
    }

    /// The integer sums of `x` on a tract-linalg kernel, laid out like `x` with `Cout`
    /// channels.
    fn tract_product(
        &self,
        mmm: &dyn MatMatMul,
        packing: usize,
        packed: &dyn MMMInputValue,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
    ) -> TractResult<Tensor> {
        let (cin, cout) = (self.cin(), self.cout());
        let (x_shape, k_axis, acc_shape, m_axis) = match self.layout {
            Layout::ChannelsFirst => ([cin, p], 0, [cout, p], 0),
            Layout::ChannelsLast => ([p, cin], 1, [p, cout], 1),
        };
        let (_, b_format) = &mmm.packings()[packing];
        let packed_x: Box<dyn MMMInputValue> = match b_format.downcast_ref::<PackedI8K4>() {
            Some(format) => Box::new(self.pack_input(x, quantizer, p, format)?),
            None => {
                let xq = match x {
                    Operand::F32(x) => {
                        let mut xq = unsafe { Tensor::uninitialized::<i8>(&x_shape)? };
                        quantizer.quantize_i8(x, xq.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?);
                        xq
                    }
                    Operand::I8(x) => Tensor::from_shape(&x_shape, x)?,
                };
                b_format.prepare_one(&xq, k_axis, 1 - k_axis)?
            }
        };
        let mut acc = unsafe { Tensor::uninitialized::<i32>(&acc_shape)? };
        unsafe {
            let store = mmm
                .c_view(Some(m_axis), Some(1 - m_axis))
                .wrap(&acc.view_mut());
            mmm.run(
                cout,
                p,
                &[
                    FusedSpec::AddMatMul {
                        a: AsInputValue::Borrowed(packed),
                        b: AsInputValue::Borrowed(&*packed_x),
                        packing,
                    },
                    FusedSpec::Store(store),
                ],
            )?;
        }
        Ok(acc)
    }

    /// One matrix of `p` positions (an image channels first, the whole tensor channels last).
    fn run_matrix<T: Emit>(
        &self,
        x: Operand,
        q: &InputQuant,
        bias: &[f32],
        p: usize,
        patches: Option<Patches>,
        out: &mut [T],
    ) -> TractResult<()> {
        // Rows are output channels (channels first) or positions (channels last); either way
        // whole rows are split across the plan's threads.
        let row_len = match self.layout {
            Layout::ChannelsFirst => p,
            Layout::ChannelsLast => self.cout(),
        };
        let finish = |first: usize, sums: Sums, out: &mut [T]| {
            self.finish_rows(q, bias, first, sums, row_len, out)
        };
        match &self.kernel.engine {
            Engine::Tract {
                mmm,
                packing,
                packed,
            } => {
                ensure!(patches.is_none(), "integer conv: patches on tract's kernel");
                let acc = self.tract_product(&**mmm, *packing, &**packed, x, q.quantizer, p)?;
                let acc = acc.try_as_plain_ram()?;
                let acc = acc.as_slice::<i32>()?;
                par_chunks_mut(out, row_len, acc.len(), |first, chunk| {
                    finish(
                        first,
                        Sums::new(&acc[first * row_len..], row_len, row_len),
                        chunk,
                    )
                })
            }
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Engine::Own(w) => self.own_product(w, x, q.quantizer, p, patches, out, finish),
        }
    }

    /// The epilogue of the output rows `first..` (`out`, `row_len` values each) from their
    /// integer sums (row `i` of `sums` for row `first + i`).
    fn finish_rows<T: Emit>(
        &self,
        q: &InputQuant,
        bias: &[f32],
        first: usize,
        sums: Sums,
        row_len: usize,
        out: &mut [T],
    ) -> TractResult<()> {
        let e = self.epilogue();
        let scratch_len = if self.lookup.is_some() { row_len } else { 0 };
        let mut values = vec![0f32; scratch_len];
        let mut idx = vec![0u8; scratch_len];
        for (i, o) in out.chunks_mut(row_len).enumerate() {
            let a = sums.row(i);
            let r = first + i;
            // Channels first, the row is an output channel.
            let channel = || Row {
                offset: q.offset[r],
                scale: q.scale[r],
                bias: bias[r],
            };
            let row = |o: &mut [f32]| match self.layout {
                Layout::ChannelsFirst => channel_row(a, o, channel(), e),
                Layout::ChannelsLast => position_row(a, o, &q.offset, &q.scale, bias, e),
            };
            match &self.lookup {
                Some(lookup) => {
                    let index = lookup.index;
                    match (self.layout, T::bytes(o, &lookup.table)) {
                        (Layout::ChannelsFirst, Some((out, table))) => {
                            channel_codes(a, out, channel(), e, index, &mut values, Some(table))
                        }
                        (Layout::ChannelsFirst, None) => {
                            channel_codes(a, &mut idx, channel(), e, index, &mut values, None);
                            lookup.gather(&idx, o)?;
                        }
                        (Layout::ChannelsLast, _) => {
                            row(&mut values);
                            index.quantize_bytes(&values, &mut idx);
                            lookup.gather(&idx, o)?;
                        }
                    }
                }
                None => row(T::plain(o).context("integer 1x1 conv: i8 output without table")?),
            }
        }
        Ok(())
    }

    /// The whole product of `x` (shape `shape`) into a new tensor of `T`.
    fn run<T: Emit>(&self, x: Operand, shape: &[usize], bias: &[f32]) -> TractResult<Tensor> {
        let c_axis = self.channel_axis(shape.len())?;
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[c_axis] = self.cout();
        for axis in self.spatial_axes(shape.len()) {
            out_shape[axis] /= self.patch;
        }
        let mut out = unsafe { Tensor::uninitialized::<T>(&out_shape)? };
        let mut out_view = out.try_as_plain_ram_mut()?;
        let ys = out_view.as_slice_mut::<T>()?;
        let positions = out_shape.iter().product::<usize>() / self.cout();
        if positions > 0 {
            // One quantization for the whole tensor, as the graph's quantize computes it.
            let q = self.input_quant(x);
            match self.layout {
                Layout::ChannelsFirst => {
                    let p_in = shape[2..].iter().product::<usize>();
                    let patches = (self.patch > 1).then(|| Patches {
                        side: self.patch,
                        h: shape[2],
                        w: shape[3..].iter().product(),
                    });
                    let p = patches.map_or(p_in, |g| g.positions());
                    let (xn, yn) = (self.in_channels() * p_in, self.cout() * p);
                    for (n, y1) in ys.chunks_mut(yn).enumerate() {
                        self.run_matrix(x.slice(n * xn, xn), &q, bias, p, patches, y1)?;
                    }
                }
                Layout::ChannelsLast => {
                    let patches = (self.patch > 1).then(|| Patches {
                        side: self.patch,
                        h: shape[1],
                        w: shape[2],
                    });
                    self.run_matrix(x, &q, bias, positions, patches, ys)?
                }
            }
        }
        Ok(out)
    }
}

/// `DynamicQuantizeLinear`'s parameters for `x`: u8 over the range of the values widened to
/// include zero, `scale = (max − min) / 255`, `zero_point = round(−min / scale)`. Returns the
/// quantization to apply and the scale the product is multiplied by — the same unless all
/// values are zero (or not finite), where the graph's scale is 0 (or not finite) and any
/// quantization gives the same zero sums.
fn dynamic_quant(x: &[f32]) -> (ActQuant, f32) {
    let mut range = [0f32; 2];
    min_max(x, &mut range);
    let [min, max] = range;
    let scale = (max - min) / 255.0;
    if !(scale.is_finite() && scale > 0.0) {
        let zero = ActQuant {
            scale: 1.0,
            zero_point: 0,
            signed: false,
        };
        return (zero, scale);
    }
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let q = ActQuant {
        scale,
        zero_point,
        signed: false,
    };
    (q, scale)
}

multiversion! {
    /// `[min(0, x…), max(0, x…)]` into `out`, ignoring NaN as tract's and onnxruntime's loops do.
    fn min_max(xs: &[f32], out: &mut [f32; 2]) {
        let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
        let chunks = xs.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
                hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            }
        }
        for (i, v) in tail.iter().enumerate() {
            lo[i] = if *v < lo[i] { *v } else { lo[i] };
            hi[i] = if *v > hi[i] { *v } else { hi[i] };
        }
        out[0] = lo.iter().fold(0f32, |a, &b| if b < a { b } else { a });
        out[1] = hi.iter().fold(0f32, |a, &b| if b > a { b } else { a });
    }
}

/// Whether this CPU has int8 product kernels that beat tract's f32 ones, so that quantized
/// models gain from the integer path: on x86, tract-linalg's VNNI kernels (AVX-512 VNNI,
/// AVX-VNNI) or, with AVX2 alone, our [`product`] — tract's own AVX2 int8 kernel widens
/// one byte at a time and ran convnext_atto's products 35x slower than its f32 kernels on an
/// AVX2-only AMD EPYC; on arm64, our product. Elsewhere quantized models keep the float path.
pub fn integer_kernels_pay() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_vnni() || product::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

/// Whether tract-linalg's own int8 matmul kernel is much slower than its f32 ones here: x86
/// without VNNI (see [`integer_kernels_pay`]).
pub fn tract_int8_kernels_slow() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !has_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a convolution over patches with weights `w` (i8) gains from running on our own
/// product here, in a graph whose products are MatMuls (`matmul_form`: tract moves such graphs
/// channels last, and [`QPointwiseConv::change_axes`] this op with them) or convolutions: where
/// [`own_product_takes`] the weights, on arm64 and in MatMul-form graphs. convnext_atto's stem
/// and downsampling under qemu: cortex-a76 132.5 → 125.7 M instructions per inference,
/// cortex-a72 196.0 → 193.7 M. Channels first on x86 (AVX2, no VNNI) they ran no faster than
/// tract's f32 im2col and GEMM (2.7 against 2.5 ms in alternating profiles): products of
/// 6–10 M multiply-adds, where quantizing, gathering and packing the input cost as much as
/// they save; channels last a patch is `side` contiguous runs, quantized straight into the
/// product's rows. On AMX, in MatMul-form graphs, they run channels last on [`amx`].
pub(crate) fn patches_pay(w: &[i8], matmul_form: bool) -> bool {
    let own = (cfg!(target_arch = "aarch64") || matmul_form) && own_product_takes(w);
    own || (matmul_form && has_amx() && patches_run(w))
}

/// Whether our [`amx`] product runs here.
fn has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a convolution over patches with weights `w` can run here: our own [`product`]
/// gathers the patches (channels first; channels last on AMX, [`amx`]).
fn patches_run(w: &[i8]) -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        product::available() && product::exact_for(w)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = w;
        false
    }
}

/// Whether weights `w` (`[Cout, Cin]` i8) run on our own [`product`] here: where it beats
/// tract-linalg's int8 kernels, and computes these weights exactly ([`product::exact_for`]).
/// It beats them on x86 without VNNI (see [`integer_kernels_pay`]) and on arm64, where
/// tract's SMLAL kernel spent more instructions on convnext_atto's products than its f32
/// kernel (171 M against 153 M under qemu's cortex-a72; ours 120 M) and, with SDOT, tract's
/// kernel and its packing cost 69 M against our 60 M (cortex-a76).
fn own_product_takes(w: &[i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !has_vnni() && product::available() && product::exact_for(w)
    }
    #[cfg(target_arch = "aarch64")]
    {
        product::exact_for(w)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = w;
        false
    }
}

/// AVX-512 VNNI or AVX-VNNI: tract-linalg has fast int8 kernels for them.
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    super::cpu::has(super::cpu::Feature::Vnni)
}

/// The i8×i8→i32 kernel for a `m × k` by `k × n` product: tract's pick, unless it leaves a
/// larger tile unused on a wide product (`n` ≥ 16, every ConvNeXt stage at 224). tract's
/// choice among VNNI kernels follows its probe of FMA units, which classes Zen 4 as
/// single-unit and picks the 8x8 VNNI kernel where the 16x16 one runs the same sums
/// (bit-identical, i32) faster. Where tract picks a tile as large as any (AMX's 16x16 on
/// Sapphire Rapids), its pick stands.
fn pick_kernel(m: usize, k: usize, n: Option<usize>) -> TractResult<(Box<dyn MatMatMul>, usize)> {
    let dispatch = MmmDispatch::native();
    let query = Query::plain(DatumType::I32, Some(m), Some(k), n);
    let picked = dispatch
        .pick(&query)
        .context("no integer matmul kernel on this CPU")?;
    let tile = |mmm: &dyn MatMatMul| mmm.mr() * mmm.nr();
    let widest = dispatch
        .suitable(&query)
        .into_iter()
        .filter(|(mmm, _, extractor)| extractor.is_none() && mmm.arch().is_some())
        .max_by_key(|(mmm, _, _)| tile(&**mmm));
    let chosen = match widest {
        Some(w) if n.is_some_and(|n| n >= 16) && tile(&*w.0) > tile(&*picked.0) => w,
        _ => picked,
    };
    let (mmm, packing, extractor) = chosen;
    ensure!(
        extractor.is_none(),
        "integer matmul kernel {} needs a panel extractor",
        mmm.name()
    );
    Ok((mmm, packing))
}

impl Patches {
    /// Channels last (`x` is `[n, h, w, c]`): where patch `r`'s input row `dy` starts, a run of
    /// `side · c` contiguous values (the weights' `(kh, kw, ci)` order).
    fn run_start(self, r: usize, dy: usize, c: usize) -> usize {
        let (s, (oh, ow)) = (self.side, self.out_hw());
        let (image, at) = (r / (oh * ow), r % (oh * ow));
        ((image * self.h + at / ow * s + dy) * self.w + at % ow * s) * c
    }

    /// Channels first: `x` (`c` planes of `h × w`) as the `c · side²` rows of a 1x1 product
    /// over the patches: row `(ci · side + dy) · side + dx` holds pixel `(dy, dx)` of every
    /// patch of plane `ci`, the order of the weights' `(ci, kh, kw)`.
    fn gather(self, x: &[i8], c: usize, rows: &mut [i8]) {
        let (s, (oh, ow)) = (self.side, self.out_hw());
        let n = oh * ow;
        if n == 0 {
            return;
        }
        // Rows (ci, dy, 0..s) together: each input row segment is split into them at once.
        let groups = rows.chunks_exact_mut(s * n);
        let planes = x.chunks_exact(self.h * self.w).take(c);
        for (group, (plane, dy)) in groups.zip(planes.flat_map(|p| (0..s).map(move |dy| (p, dy)))) {
            for oy in 0..oh {
                let src = &plane[(oy * s + dy) * self.w..][..ow * s];
                deinterleave(src, s, group, oy * ow, n);
            }
        }
    }
}

/// `group[dx · n + at + i] = src[i · s + dx]` for every `dx < s` and `i < src.len() / s`: a
/// row of patches split by pixel column. On aarch64 with NEON for sides 2 and 4
/// ([`deinterleave_neon`]); the scalar loop for other sides and rows of fewer than 8 patches.
fn deinterleave(src: &[i8], s: usize, group: &mut [i8], at: usize, n: usize) {
    let len = src.len() / s;
    #[cfg(target_arch = "aarch64")]
    if deinterleave_neon(src, s, group, at, n) {
        return;
    }
    for dx in 0..s {
        let dst = &mut group[dx * n + at..][..len];
        // `chunks`, not `step_by`: the compiler makes a plain loop of it (step_by cost ~20
        // instructions a byte here).
        for (d, pixels) in dst.iter_mut().zip(src[dx..].chunks(s)) {
            *d = pixels[0];
        }
    }
}

/// [`deinterleave`] for sides 2 and 4 and at least 8 patches: `LD2` / `LD4` de-interleave as
/// they load, 16 patches at a time, then 8, the last 8 ending at the row's end (over patches
/// already written, with the same values) so that no patch is left to a scalar loop. Returns
/// whether it did the row. ConvNeXt's downsampling rows are 7 to 28 patches long, so without
/// the 8-patch steps most of them went through the scalar loop.
#[cfg(target_arch = "aarch64")]
fn deinterleave_neon(src: &[i8], s: usize, group: &mut [i8], at: usize, n: usize) -> bool {
    use std::arch::aarch64::{vld2_s8, vld2q_s8, vld4_s8, vld4q_s8, vst1_s8, vst1q_s8};
    let len = src.len() / s;
    if !matches!(s, 2 | 4) || len < 8 {
        return false;
    }
    // Patches `i .. i + width` (16 or 8).
    #[inline(always)]
    fn step(src: &[i8], s: usize, group: &mut [i8], at: usize, n: usize, i: usize, width: usize) {
        let from = src[i * s..][..width * s].as_ptr();
        let mut to = |dx: usize| group[dx * n + at + i..][..width].as_mut_ptr();
        // SAFETY: NEON; each load reads the `width · s` bytes at `from`, each store `width`
        // bytes at a checked slice.
        unsafe {
            match (s, width) {
                (2, 16) => {
                    let v = vld2q_s8(from);
                    vst1q_s8(to(0), v.0);
                    vst1q_s8(to(1), v.1);
                }
                (4, 16) => {
                    let v = vld4q_s8(from);
                    vst1q_s8(to(0), v.0);
                    vst1q_s8(to(1), v.1);
                    vst1q_s8(to(2), v.2);
                    vst1q_s8(to(3), v.3);
                }
                (2, _) => {
                    let v = vld2_s8(from);
                    vst1_s8(to(0), v.0);
                    vst1_s8(to(1), v.1);
                }
                _ => {
                    let v = vld4_s8(from);
                    vst1_s8(to(0), v.0);
                    vst1_s8(to(1), v.1);
                    vst1_s8(to(2), v.2);
                    vst1_s8(to(3), v.3);
                }
            }
        }
    }
    let mut i = 0;
    while i + 16 <= len {
        step(src, s, group, at, n, i, 16);
        i += 16;
    }
    while i < len {
        let last = i.min(len - 8);
        step(src, s, group, at, n, last, 8);
        i = last + 8;
    }
    true
}

/// One output channel's epilogue constants.
#[derive(Debug, Clone, Copy)]
struct Row {
    offset: i32,
    scale: f32,
    bias: f32,
}

/// A panel of `r` positions × `kp` values (position-major, `rows`) into `PackedI8K4` order:
/// `panel[(k / 4) · 4r + m · 4 + k % 4] = rows[m · kp + k]`.
fn interleave_k4(rows: &[i8], kp: usize, r: usize, panel: &mut [u8]) {
    for (m, row) in rows.chunks_exact(kp).enumerate() {
        for (kb, group) in row.chunks_exact(4).enumerate() {
            // Four bytes moved as one word, not one by one.
            let word = [
                group[0] as u8,
                group[1] as u8,
                group[2] as u8,
                group[3] as u8,
            ];
            let at = kb * 4 * r + m * 4;
            panel[at..at + 4].copy_from_slice(&word);
        }
    }
}

/// Four rows of `r` bytes (`block`, row-major) into `r` four-byte words, word `m` holding the
/// rows' `m`-th bytes: `words[4m + d] = block[d · r + m]`.
fn zip4(block: &[i8], words: &mut [u8]) {
    let r = block.len() / 4;
    #[cfg(target_arch = "aarch64")]
    let done = {
        use std::arch::aarch64::{uint8x8x4_t, vld1_u8, vst4_u8};
        let ptr = block.as_ptr() as *const u8;
        let mut done = 0;
        while done + 8 <= r {
            // SAFETY: NEON is in the aarch64 baseline; the four loads read block[d · r + done
            // ..][..8] with done + 8 <= r, the store a checked 32-byte slice of `words`.
            unsafe {
                let rows = uint8x8x4_t(
                    vld1_u8(ptr.add(done)),
                    vld1_u8(ptr.add(r + done)),
                    vld1_u8(ptr.add(2 * r + done)),
                    vld1_u8(ptr.add(3 * r + done)),
                );
                vst4_u8(words[4 * done..4 * done + 32].as_mut_ptr(), rows);
            }
            done += 8;
        }
        done
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    for m in done..r {
        for d in 0..4 {
            words[4 * m + d] = block[d * r + m] as u8;
        }
    }
}

/// One output value from its integer sum (see [`Epilogue`]).
#[inline(always)]
fn finish(acc: i32, offset: i32, scale: f32, bias: f32, e: Epilogue) -> f32 {
    let mut v = (acc + offset) as f32 * scale;
    if let Some(q) = e.mid {
        v = q.apply(v);
    }
    v += bias;
    match e.y {
        Some(q) => q.apply(v),
        None => v,
    }
}

multiversion! {
    /// One output channel of a channels-first product.
    fn channel_row(acc: &[i32], out: &mut [f32], row: Row, e: Epilogue) {
        let done = channel_row_prefix(acc, out, row, e);
        for (a, y) in acc[done..].iter().zip(out[done..].iter_mut()) {
            *y = finish(*a, row.offset, row.scale, row.bias, e);
        }
    }
}

/// One output channel's values (as [`channel_row`] computes them) quantized by `index` into
/// `idx`, or with a `table`, the table's bytes for them: in one pass on aarch64; `values` is
/// scratch of the same length.
fn channel_codes(
    acc: &[i32],
    idx: &mut [u8],
    row: Row,
    e: Epilogue,
    index: FastQuantize,
    values: &mut [f32],
    table: Option<&[u8; 256]>,
) {
    let done = channel_codes_prefix(acc, idx, row, e, index, table);
    let rest = acc.len().min(idx.len()) - done;
    channel_row(&acc[done..], &mut values[..rest], row, e);
    let idx = &mut idx[done..][..rest];
    index.quantize_bytes(&values[..rest], idx);
    if let Some(table) = table {
        for b in idx.iter_mut() {
            *b = table[*b as usize];
        }
    }
}

/// `(acc + offset) · scale + bias` of one output channel, four values at a time in NEON
/// registers: the scalar [`finish`]'s operations in its order, so the same values.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
struct Affine4 {
    offset: std::arch::aarch64::int32x4_t,
    scale: std::arch::aarch64::float32x4_t,
    bias: std::arch::aarch64::float32x4_t,
}

#[cfg(target_arch = "aarch64")]
impl Affine4 {
    #[inline(always)]
    fn new(row: Row) -> Affine4 {
        use std::arch::aarch64::{vdupq_n_f32, vdupq_n_s32};
        // SAFETY: NEON is in the aarch64 baseline.
        unsafe {
            Affine4 {
                offset: vdupq_n_s32(row.offset),
                scale: vdupq_n_f32(row.scale),
                bias: vdupq_n_f32(row.bias),
            }
        }
    }

    /// The sixteen values of the sums at `p`.
    ///
    /// # Safety
    /// `p` points to sixteen readable i32.
    #[inline(always)]
    unsafe fn values(&self, p: *const i32) -> [std::arch::aarch64::float32x4_t; 4] {
        use std::arch::aarch64::*;
        unsafe {
            let a = vld1q_s32_x4(p);
            [a.0, a.1, a.2, a.3].map(|a| {
                let v = vcvtq_f32_s32(vaddq_s32(a, self.offset));
                vaddq_f32(vmulq_f32(v, self.scale), self.bias)
            })
        }
    }
}

/// [`channel_row`] of the leading values, sixteen at a time on aarch64 where the epilogue has
/// no `mid` quantization; returns how many.
#[inline(always)]
fn channel_row_prefix(acc: &[i32], out: &mut [f32], row: Row, e: Epilogue) -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        use super::quantize::Fq4;
        use std::arch::aarch64::{float32x4_t, float32x4x4_t, vst1q_f32_x4};
        if e.mid.is_some() {
            return 0;
        }
        let f = Affine4::new(row);
        let n = acc.len().min(out.len());
        // SAFETY: NEON is in the aarch64 baseline; each step reads acc[at..at + 16] and writes
        // out[at..at + 16] with at + 16 <= n.
        let run = |post: &dyn Fn(float32x4_t) -> float32x4_t| unsafe {
            super::neon::blocks(n, |at| {
                let [a, b, c, d] = f.values(acc.as_ptr().add(at)).map(post);
                vst1q_f32_x4(out.as_ptr().add(at) as *mut f32, float32x4x4_t(a, b, c, d));
            })
        };
        match e.y.map(Fq4::new) {
            Some(y) => run(&|v| y.apply(v)),
            None => run(&|v| v),
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (acc, out, row, e);
        0
    }
}

/// [`channel_codes`] of the leading values, sixteen at a time on aarch64 where the epilogue
/// has neither `mid` nor `y` (a lookup's index is the output quantization); returns how many.
#[inline(always)]
fn channel_codes_prefix(
    acc: &[i32],
    idx: &mut [u8],
    row: Row,
    e: Epilogue,
    index: FastQuantize,
    table: Option<&[u8; 256]>,
) -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        if e.mid.is_some() || e.y.is_some() {
            return 0;
        }
        let (f, q) = (Affine4::new(row), index.sixteen());
        let n = acc.len().min(idx.len());
        // SAFETY: NEON is in the aarch64 baseline; each step reads acc[at..at + 16] and writes
        // idx[at..at + 16] with at + 16 <= n.
        unsafe {
            let codes = |at: usize| q.bytes_of(f.values(acc.as_ptr().add(at)));
            let out = idx.as_mut_ptr();
            match table {
                Some(t) => super::neon::blocks(n, |at| {
                    let bytes = super::neon::lookup16(t, codes(at));
                    std::arch::aarch64::vst1q_u8(out.add(at), bytes);
                }),
                None => super::neon::blocks(n, |at| {
                    std::arch::aarch64::vst1q_u8(out.add(at), codes(at));
                }),
            }
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (acc, idx, row, e, index, table);
        0
    }
}

multiversion! {
    /// One position of a channels-last product: every output channel.
    fn position_row(
        acc: &[i32],
        out: &mut [f32],
        offset: &[i32],
        scale: &[f32],
        bias: &[f32],
        e: Epilogue,
    ) {
        let it = acc.iter().zip(offset).zip(scale).zip(bias);
        for ((((a, o), s), b), y) in it.zip(out.iter_mut()) {
            *y = finish(*a, *o, *s, *b, e);
        }
    }
}

impl Op for QPointwiseConv {
    fn name(&self) -> StaticName {
        "QPointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let patches = match self.patch {
            1 => String::new(),
            p => format!(", over {p}x{p} patches"),
        };
        Ok(vec![format!(
            "{}x{} i8, {:?}, kernel {}{}{}{}{patches}",
            self.cout(),
            self.cin(),
            self.layout,
            self.kernel.engine.name(),
            if self.gelu.is_some() { ", GELU" } else { "" },
            if self.emit.is_some() { ", i8 out" } else { "" },
            if self.dynamic { ", dynamic input" } else { "" },
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QPointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, bias) = args_2!(inputs);
        let shape = x.shape();
        let c_axis = self.channel_axis(shape.len())?;
        ensure!(
            shape[c_axis] == self.in_channels(),
            "integer 1x1 conv: input shape {shape:?}, expected {} channels on axis {c_axis}",
            self.in_channels()
        );
        let bias = bias.cast_to::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            bias.len() == self.cout(),
            "integer 1x1 conv: bias length {}",
            bias.len()
        );
        let x_f32 = match x.datum_type() {
            DatumType::I8 => None,
            _ => Some(x.cast_to::<f32>()?),
        };
        let x_ram = match &x_f32 {
            Some(x) => x.try_as_plain_ram()?,
            None => x.try_as_plain_ram()?,
        };
        let operand = match x_f32 {
            Some(_) => Operand::F32(x_ram.as_slice::<f32>()?),
            None => Operand::I8(x_ram.as_slice::<i8>()?),
        };
        let out = match self.emit {
            Some(_) => self.run::<i8>(operand, shape, bias)?,
            None => self.run::<f32>(operand, shape, bias)?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QPointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let c_axis = self.channel_axis(x.rank())?;
        ensure!(
            x.shape[c_axis] == self.in_channels().to_dim(),
            "integer 1x1 conv: input {x:?}, expected {} channels on axis {c_axis}",
            self.in_channels()
        );
        let mut shape = x.shape.to_tvec();
        shape[c_axis] = self.cout().to_dim();
        for axis in self.spatial_axes(x.rank()) {
            shape[axis] = shape[axis].clone() / self.patch as u64;
        }
        Ok(tvec!(self.output_type().fact(shape)))
    }

    /// Moving the channels of the input (or output) from axis 1 to the last axis switches the
    /// op channels last, the other wire moving the same way: how tract's `ChangeAxes` carries
    /// the channels-last layout it suggests for its depthwise convolutions through the network
    /// instead of stopping at this op with transposes around it. Not the other way: tract
    /// then pushed convnext_tiny's one transpose (after the stem) through every block instead,
    /// and the whole network ran channels first, slower.
    fn change_axes(
        &self,
        _model: &TypedModel,
        node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        let rank = node.outputs[0].fact.rank();
        if !matches!(io, InOut::In(0) | InOut::Out(0)) || rank < 3 {
            return Ok(None);
        }
        let to_last = AxisOp::Move(1, rank - 1);
        if self.layout != Layout::ChannelsFirst || *change != to_last {
            return Ok(None);
        }
        Ok(Some(AxisChangeConsequence {
            substitute_op: Some(Box::new(self.channels_last()?)),
            wire_changes: tvec!(
                (InOut::In(0), change.clone()),
                (InOut::Out(0), change.clone())
            ),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = inputs[0];
        let macs = x.shape.iter().product::<TDim>() * self.cout();
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::for_each_variant;

    /// A small deterministic generator, so the tests need no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f32(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * (self.next() as f32 / (1u64 << 31) as f32)
        }
        fn i8(&mut self) -> i8 {
            ((self.next() % 255) as i32 - 127) as i8
        }
    }

    /// The unfused definition: quantize, dequantize, float conv in f64, then quantize and
    /// dequantize the output.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        w: &[i8],
        cin: usize,
        cout: usize,
        p: usize,
        xq: ActQuant,
        w_scales: &[f32],
        bias: &[f32],
        y: Option<ActQuant>,
    ) -> Vec<f32> {
        let qdq = |v: f32, q: ActQuant| {
            let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
            let r = ((v / q.scale).round_ties_even() as i32 + q.zero_point).clamp(lo, hi);
            (r - q.zero_point) as f32 * q.scale
        };
        let xd: Vec<f32> = x.iter().map(|&v| qdq(v, xq)).collect();
        let mut out = vec![0f32; cout * p];
        for co in 0..cout {
            for i in 0..p {
                let mut s = 0f64;
                for ci in 0..cin {
                    s += xd[ci * p + i] as f64 * (w[co * cin + ci] as f32 * w_scales[co]) as f64;
                }
                let v = s as f32 + bias[co];
                out[co * p + i] = match y {
                    Some(q) => qdq(v, q),
                    None => v,
                };
            }
        }
        out
    }

    fn check(cin: usize, cout: usize, h: usize, w: usize, signed: bool, with_y: bool, seed: u64) {
        let mut rng = Lcg(seed);
        let weights: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
        check_weights(&weights, (cin, cout, h, w), signed, with_y, rng);
    }

    fn check_weights(
        weights: &[i8],
        (cin, cout, h, w): (usize, usize, usize, usize),
        signed: bool,
        with_y: bool,
        mut rng: Lcg,
    ) {
        let p = h * w;
        let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
        let xq = ActQuant {
            scale: 0.05,
            zero_point: if signed { -3 } else { 131 },
            signed,
        };
        let yq = with_y.then_some(ActQuant {
            scale: 0.1,
            zero_point: if signed { 2 } else { 120 },
            signed,
        });
        let x: Vec<f32> = (0..2 * cin * p).map(|_| rng.f32(-7.0, 7.0)).collect();
        let op = QPointwiseConv::new(
            Tensor::from_shape(&[cout, cin], weights).unwrap(),
            Layout::ChannelsFirst,
            xq,
            w_scales.clone(),
            (None, yq),
            Some(p),
        )
        .unwrap();
        let input = Tensor::from_shape(&[2, cin, h, w], &x).unwrap();
        let b = Tensor::from_shape(&[cout], &bias).unwrap();
        let out = op
            .eval_out_of_plan(tvec!(input.into_tvalue(), b.into_tvalue()))
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape(), &[2, cout, h, w]);
        let got = out[0].try_as_plain_ram().unwrap();
        let got = got.as_slice::<f32>().unwrap();
        for n in 0..2 {
            let expected = reference(
                &x[n * cin * p..(n + 1) * cin * p],
                weights,
                cin,
                cout,
                p,
                xq,
                &w_scales,
                &bias,
                yq,
            );
            let got = &got[n * cout * p..(n + 1) * cout * p];
            assert_close(got, &expected, yq, &format!("{cin}x{cout} {h}x{w}"));
        }
    }

    /// Exact but for f32 rounding: with an output quantization a value on a rounding boundary
    /// may land one step away.
    fn assert_close(got: &[f32], expected: &[f32], y: Option<ActQuant>, what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        let step = y.map(|q| q.scale).unwrap_or(0.0);
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            let tol = 1e-4 * e.abs().max(1.0) + step * 1.001;
            assert!((g - e).abs() <= tol, "{what} #{i}: {g} vs {e}");
        }
    }

    for_each_variant! {
        /// A convolution over `s × s` patches (stem- and downsampling-like, with a partial last
        /// row and column dropped, rows of 8 to 32 patches for the NEON split, with and without
        /// an overlapping last step, and rows too short for it) against the 1x1 reference on the patches
        /// gathered in f32, channels first and channels last.
        fn patches_match_the_product_of_the_gathered_input() {
            for (i, &(c, cout, h, w, s)) in [
                (3, 8, 9, 11, 4),
                (5, 7, 6, 6, 2),
                (16, 33, 7, 5, 2),
                (2, 5, 6, 38, 2),
                (3, 4, 8, 70, 4),
                (3, 5, 8, 64, 4),
                (4, 6, 4, 64, 2),
                (2, 3, 5, 24, 2),
                (3, 4, 4, 32, 4),
            ]
            .iter()
            .enumerate()
            {
                let mut rng = Lcg(i as u64 + 40);
                let k = c * s * s;
                let weights: Vec<i8> = (0..cout * k).map(|_| rng.i8()).collect();
                if !patches_run(&weights) {
                    return;
                }
                // The op runs patches wherever our product does; the fusion picks them on arm64
                // and in MatMul-form graphs (`patches_pay`).
                let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
                let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
                let xq = ActQuant {
                    scale: 0.05,
                    zero_point: 131,
                    signed: false,
                };
                let yq = Some(ActQuant {
                    scale: 0.1,
                    zero_point: 120,
                    signed: false,
                });
                let x: Vec<f32> = (0..2 * c * h * w).map(|_| rng.f32(-7.0, 7.0)).collect();
                let op = QPointwiseConv::new(
                    Tensor::from_shape(&[cout, k], &weights).unwrap(),
                    Layout::ChannelsFirst,
                    xq,
                    w_scales.clone(),
                    (None, yq),
                    None,
                )
                .unwrap()
                .over_patches(s)
                .unwrap();
                let input = Tensor::from_shape(&[2, c, h, w], &x).unwrap();
                let out = eval(&op, input, &bias);
                let (oh, ow) = (h / s, w / s);
                assert_eq!(out.shape(), &[2, cout, oh, ow]);
                let got = out.try_as_plain_ram().unwrap();
                let got = got.as_slice::<f32>().unwrap();
                for (n, got) in got.chunks_exact(cout * oh * ow).enumerate() {
                    // Row (ci, dy, dx), column (oy, ox): the weights' (ci, kh, kw) order.
                    let mut patches = vec![0f32; k * oh * ow];
                    for (r, row) in patches.chunks_exact_mut(oh * ow).enumerate() {
                        let (ci, dy, dx) = (r / (s * s), r / s % s, r % s);
                        for (o, v) in row.iter_mut().enumerate() {
                            let (y, xx) = ((o / ow) * s + dy, (o % ow) * s + dx);
                            *v = x[((n * c + ci) * h + y) * w + xx];
                        }
                    }
                    let expected = reference(
                        &patches,
                        &weights,
                        k,
                        cout,
                        oh * ow,
                        xq,
                        &w_scales,
                        &bias,
                        yq,
                    );
                    assert_close(got, &expected, yq, &format!("{c}x{h}x{w} over {s}x{s}"));
                }
                // Channels last, on the same input: the same values, bit for bit.
                let last = op.channels_last().unwrap();
                let nhwc = Tensor::from_shape(&[2, c, h, w], &x)
                    .unwrap()
                    .permute_axes(&[0, 2, 3, 1])
                    .unwrap();
                let got = eval(&last, nhwc, &bias)
                    .permute_axes(&[0, 3, 1, 2])
                    .unwrap();
                assert_eq!(got, out, "{c}x{h}x{w} over {s}x{s}, channels last");
            }
        }
    }

    /// A channels-first op between transposes to and from channels last (convnext_tiny's
    /// downsampling once tract has moved its blocks channels last): decluttering switches the
    /// op channels last and drops both transposes. A channels-last op between the reverse
    /// transposes stays as it is, transposes included.
    #[test]
    fn axis_changes_move_the_op_channels_last_only() {
        let (c, cout, h, w, s) = (8, 16, 6, 4, 2);
        let mut rng = Lcg(77);
        let weights: Vec<i8> = (0..cout * c * s * s).map(|_| rng.i8()).collect();
        if !patches_run(&weights) {
            return;
        }
        let xq = ActQuant {
            scale: 0.05,
            zero_point: 3,
            signed: true,
        };
        let new_op = |patch: usize| {
            let op = QPointwiseConv::new(
                Tensor::from_shape(
                    &[cout, c * patch * patch],
                    &weights[..cout * c * patch * patch],
                )
                .unwrap(),
                Layout::ChannelsFirst,
                xq,
                vec![0.01],
                (None, None),
                None,
            )
            .unwrap();
            op.over_patches(patch).unwrap()
        };
        let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
        let x: Vec<f32> = (0..c * h * w).map(|_| rng.f32(-4.0, 4.0)).collect();
        let build = |input: [usize; 4], moves: [AxisOp; 2], op: QPointwiseConv| {
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact(input)).unwrap();
            let b = model
                .add_const("bias", Tensor::from_shape(&[cout], &bias).unwrap())
                .unwrap();
            let t = model.wire_node("in", moves[0].clone(), &[src]).unwrap();
            let y = model.wire_node("op", op, &[t[0], b]).unwrap();
            let y = model.wire_node("out", moves[1].clone(), &y).unwrap();
            model.select_output_outlets(&y).unwrap();
            model
        };
        let count =
            |m: &TypedModel, name: &str| m.nodes().iter().filter(|n| n.op().name() == name).count();
        let layouts = |m: &TypedModel| {
            m.nodes()
                .iter()
                .filter_map(|n| n.op_as::<QPointwiseConv>().map(|op| op.layout))
                .collect::<Vec<_>>()
        };
        let run = |m: TypedModel, input: Tensor| {
            let out = m
                .into_runnable()
                .unwrap()
                .run(tvec!(input.into_tvalue()))
                .unwrap();
            out[0].clone().into_tensor()
        };
        let nhwc = Tensor::from_shape(&[1, c, h, w], &x)
            .unwrap()
            .permute_axes(&[0, 2, 3, 1])
            .unwrap();
        let model = build(
            [1, h, w, c],
            [AxisOp::Move(3, 1), AxisOp::Move(1, 3)],
            new_op(s),
        );
        let expected = run(model.clone(), nhwc.clone());
        let decluttered = model.into_decluttered().unwrap();
        assert_eq!(layouts(&decluttered), [Layout::ChannelsLast]);
        assert_eq!(count(&decluttered, "MoveAxis"), 0);
        assert_eq!(run(decluttered, nhwc), expected);

        let last = new_op(1).channels_last().unwrap();
        let model = build([1, c, h, w], [AxisOp::Move(1, 3), AxisOp::Move(3, 1)], last);
        let decluttered = model.into_decluttered().unwrap();
        assert_eq!(layouts(&decluttered), [Layout::ChannelsLast]);
        assert_eq!(count(&decluttered, "MoveAxis"), 2);
    }

    /// `Q → DQ` in f64 arithmetic after the f32 division, as the graph computes it.
    fn qdq(v: f32, q: ActQuant) -> f32 {
        let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
        let r = ((v / q.scale).round_ties_even() as i32 + q.zero_point).clamp(lo, hi);
        (r - q.zero_point) as f32 * q.scale
    }

    fn maybe_qdq(v: f32, q: Option<ActQuant>) -> f32 {
        q.map_or(v, |q| qdq(v, q))
    }

    /// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), in f64.
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.3275911 * x.abs());
        let poly = t
            * (0.254829592
                + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
        (1.0 - poly * (-x * x).exp()).copysign(x)
    }

    /// Channels last with the bias between two fake quantizations, and optionally the QDQ
    /// GELU, against the unfused chain.
    fn check_channels_last(cin: usize, cout: usize, positions: usize, gelu: bool, seed: u64) {
        let mut rng = Lcg(seed);
        let weights: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
        let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
        let q = |scale: f32, zero_point: i32| ActQuant {
            scale,
            zero_point,
            signed: false,
        };
        let (xq, mid, yq) = (q(0.05, 131), q(0.08, 128), q(0.07, 120));
        let g = QdqGelu {
            c: [std::f32::consts::SQRT_2, 1.0, 0.5],
            quant: [
                Some(q(0.03, 128)),
                Some(q(0.008, 128)),
                Some(q(0.008, 0)),
                None,
                Some(q(0.05, 10)),
            ],
        };
        let x: Vec<f32> = (0..positions * cin).map(|_| rng.f32(-7.0, 7.0)).collect();
        // Weights given as [Cout, Cin]: the canonical layout the op takes.
        let mut op = QPointwiseConv::new(
            Tensor::from_shape(&[cout, cin], &weights).unwrap(),
            Layout::ChannelsLast,
            xq,
            w_scales.clone(),
            (Some(mid), Some(yq)),
            Some(positions),
        )
        .unwrap();
        if gelu {
            op = op.with_gelu(g).unwrap();
        }
        let input = Tensor::from_shape(&[1, positions, cin], &x).unwrap();
        let b = Tensor::from_shape(&[cout], &bias).unwrap();
        let out = op
            .eval_out_of_plan(tvec!(input.into_tvalue(), b.into_tvalue()))
            .unwrap()
            .unwrap();
        assert_eq!(out[0].shape(), &[1, positions, cout]);
        let got = out[0].try_as_plain_ram().unwrap();
        let got = got.as_slice::<f32>().unwrap();
        let mut off = 0;
        for p in 0..positions {
            for co in 0..cout {
                let s: f64 = (0..cin)
                    .map(|ci| {
                        qdq(x[p * cin + ci], xq) as f64
                            * (weights[co * cin + ci] as f32 * w_scales[co]) as f64
                    })
                    .sum();
                let mut e = qdq(qdq(s as f32, mid) + bias[co], yq);
                if gelu {
                    let d = maybe_qdq(e / g.c[0], g.quant[0]);
                    let er = maybe_qdq(erf(d as f64) as f32, g.quant[1]);
                    let a = maybe_qdq(er + g.c[1], g.quant[2]);
                    e = maybe_qdq(maybe_qdq(e * a, g.quant[3]) * g.c[2], g.quant[4]);
                }
                let v = got[p * cout + co];
                if (v - e).abs() > 1e-4 * e.abs().max(1.0) {
                    off += 1;
                    // A value on a rounding boundary may land a step or two away.
                    assert!((v - e).abs() <= 0.3, "p{p} c{co}: {v} vs {e}");
                }
            }
        }
        assert!(
            off * 100 <= positions * cout,
            "{off} of {} off",
            positions * cout
        );
    }

    for_each_variant! {
        fn channels_last_with_bias_between_quantizations() {
            check_channels_last(24, 96, 49, false, 3);
            check_channels_last(17, 40, 13, false, 4);
        }
    }

    for_each_variant! {
        fn fused_gelu_matches_the_unfused_chain() {
            check_channels_last(24, 96, 49, true, 5);
            check_channels_last(33, 72, 20, true, 6);
        }
    }

    fn eval(op: &QPointwiseConv, x: Tensor, bias: &[f32]) -> Tensor {
        let b = Tensor::from_shape(&[bias.len()], bias).unwrap();
        let out = op.eval_out_of_plan(tvec!(x.into_tvalue(), b.into_tvalue()));
        out.unwrap().unwrap().remove(0).into_tensor()
    }

    for_each_variant! {
        /// A product writing i8 for the next one gives the next one exactly the input it would
        /// have quantized from the f32 output, in both layouts, with and without the GELU.
        fn an_i8_link_equals_the_f32_chain() {
            let q = |scale: f32, zero_point: i32, signed: bool| ActQuant {
                scale,
                zero_point,
                signed,
            };
            let gelu = QdqGelu {
                c: [std::f32::consts::SQRT_2, 1.0, 0.5],
                quant: [None, Some(q(0.008, 128, false)), None, None, None],
            };
            for (seed, layout, with_gelu) in [
                (11, Layout::ChannelsLast, true),
                (12, Layout::ChannelsLast, false),
                (13, Layout::ChannelsFirst, true),
                (14, Layout::ChannelsFirst, false),
            ] {
                let mut rng = Lcg(seed);
                let (c0, c1, c2) = (19, 40, 7);
                let mut weights = |cout: usize, cin: usize| {
                    let w: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
                    Tensor::from_shape(&[cout, cin], &w).unwrap()
                };
                let (w1, w2) = (weights(c1, c0), weights(c2, c1));
                let next_x = q(0.04, 200, false);
                let first = QPointwiseConv::new(
                    w1,
                    layout,
                    q(0.05, -3, true),
                    vec![0.01],
                    (None, Some(q(0.07, 120, false))),
                    Some(30),
                )
                .unwrap();
                let first = match with_gelu {
                    true => first.with_gelu(gelu).unwrap(),
                    false => first,
                };
                let linked = first.clone().emitting_i8(next_x).unwrap();
                let second =
                    QPointwiseConv::new(w2, layout, next_x, vec![0.02], (None, None), Some(30))
                        .unwrap();
                let shape: &[usize] = match layout {
                    Layout::ChannelsLast => &[1, 30, c0],
                    Layout::ChannelsFirst => &[2, c0, 5, 6],
                };
                let n = shape.iter().product::<usize>();
                let x: Vec<f32> = (0..n).map(|_| rng.f32(-5.0, 5.0)).collect();
                let x = Tensor::from_shape(shape, &x).unwrap();
                let (b1, b2) = (vec![0.25; c1], vec![-0.5; c2]);

                let mid_f32 = eval(&first, x.clone(), &b1);
                let mid_i8 = eval(&linked, x, &b1);
                assert_eq!(mid_i8.datum_type(), i8::datum_type());
                assert_eq!(mid_i8.shape(), mid_f32.shape());
                let f = mid_f32.try_as_plain_ram().unwrap();
                let mut expected = vec![0i8; f.len()];
                next_x
                    .to_i8()
                    .quantize_i8(f.as_slice::<f32>().unwrap(), &mut expected);
                let got = mid_i8.try_as_plain_ram().unwrap();
                assert_eq!(got.as_slice::<i8>().unwrap(), &expected[..]);

                let via_f32 = eval(&second, mid_f32, &b2);
                let via_i8 = eval(&second, mid_i8, &b2);
                assert_eq!(via_f32, via_i8, "{layout:?} gelu {with_gelu}");
            }
        }
    }

    for_each_variant! {
        /// A dynamic input quantization is the static one with `DynamicQuantizeLinear`'s
        /// parameters, computed over the whole tensor (both images of the batch).
        fn a_dynamic_input_is_quantized_with_its_own_range() {
            let mut rng = Lcg(21);
            let (cin, cout) = (13, 24);
            let w: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
            let w = Tensor::from_shape(&[cout, cin], &w).unwrap();
            let x: Vec<f32> = (0..2 * cin * 15).map(|_| rng.f32(-1.5, 6.0)).collect();
            let (lo, hi) = x
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let scale = (hi - lo) / 255.0;
            let static_x = ActQuant {
                scale,
                zero_point: (-lo / scale).round_ties_even() as i32,
                signed: false,
            };
            let ignored = ActQuant {
                scale: 1.0,
                zero_point: 0,
                signed: false,
            };
            let op = |q: ActQuant| {
                QPointwiseConv::new(
                    w.clone(),
                    Layout::ChannelsFirst,
                    q,
                    vec![0.02],
                    (None, None),
                    None,
                )
                .unwrap()
            };
            let dynamic = op(ignored).with_dynamic_input().unwrap();
            let x = Tensor::from_shape(&[2, cin, 3, 5], &x).unwrap();
            let bias = vec![0.5; cout];
            assert_eq!(
                eval(&dynamic, x.clone(), &bias),
                eval(&op(static_x), x, &bias)
            );
            // All zeros: scale 0 in the graph, the bias alone here.
            let zeros = Tensor::zero::<f32>(&[1, cin, 2, 2]).unwrap();
            let out = eval(&dynamic, zeros, &bias);
            let out = out.try_as_plain_ram().unwrap();
            assert!(out.as_slice::<f32>().unwrap().iter().all(|&v| v == 0.5));
        }
    }

    #[test]
    fn an_i8_output_or_a_gelu_needs_the_output_quantization() {
        let w = Tensor::from_shape(&[2, 3], &[1i8, 2, 3, 4, 5, 6]).unwrap();
        let x = ActQuant {
            scale: 0.1,
            zero_point: 0,
            signed: false,
        };
        let op = QPointwiseConv::new(w, Layout::ChannelsLast, x, vec![1.0], (None, None), None);
        assert!(op.unwrap().emitting_i8(x).is_err());
    }

    for_each_variant! {
        fn matches_unfused_reference_on_odd_shapes() {
            for (i, &(cin, cout, h, w)) in [
                (1, 1, 1, 1),
                (3, 5, 7, 7),
                (40, 160, 7, 9),
                (17, 33, 5, 3),
                (96, 384, 14, 14),
                (160, 40, 1, 13),
            ]
            .iter()
            .enumerate()
            {
                for (signed, with_y) in [(false, true), (true, true), (false, false)] {
                    check(cin, cout, h, w, signed, with_y, i as u64 * 7 + 1);
                }
            }
        }
    }

    for_each_variant! {
        /// −128 in the weights, which our arm64 product cannot take exactly (it falls back to
        /// tract's kernel there), against both u8 and i8 activations holding their extremes.
        fn weights_of_minus_128_are_exact() {
            let mut rng = Lcg(5);
            let (cin, cout) = (37, 9);
            let weights: Vec<i8> = (0..cout * cin)
                .map(|i| if i % 3 == 0 { -128 } else { rng.i8() })
                .collect();
            for signed in [false, true] {
                check_weights(&weights, (cin, cout, 3, 5), signed, true, Lcg(9));
            }
        }
    }

    for_each_variant! {
        /// Every index, over lengths around the 16-byte step.
        fn gather_i8_looks_up_every_byte() {
            let table: [i8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(167) as i8);
            for n in [0, 1, 15, 16, 17, 256, 300] {
                let idx: Vec<u8> = (0..n).map(|i| (i * 89 + 7) as u8).collect();
                let mut out = vec![0i8; n];
                gather_i8(&table, &idx, &mut out);
                let expected: Vec<i8> = idx.iter().map(|&i| table[i as usize]).collect();
                assert_eq!(out, expected, "n = {n}");
            }
        }
    }

    for_each_variant! {
        fn zip4_interleaves_four_rows() {
            for r in [1, 7, 8, 16, 19] {
                let block: Vec<i8> = (0..4 * r).map(|i| (i * 37 % 251) as u8 as i8).collect();
                let mut words = vec![0u8; 4 * r];
                zip4(&block, &mut words);
                for m in 0..r {
                    for d in 0..4 {
                        assert_eq!(
                            words[4 * m + d],
                            block[d * r + m] as u8,
                            "r {r} m {m} d {d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_bad_parameters() {
        let w = Tensor::from_shape(&[2, 3], &[1i8, 2, 3, 4, 5, 6]).unwrap();
        let x = ActQuant {
            scale: 0.1,
            zero_point: 0,
            signed: false,
        };
        let cf = Layout::ChannelsFirst;
        assert!(QPointwiseConv::new(w.clone(), cf, x, vec![1.0; 3], (None, None), None).is_err());
        assert!(QPointwiseConv::new(w.clone(), cf, x, vec![0.0], (None, None), None).is_err());
        let nan = ActQuant {
            scale: f32::NAN,
            ..x
        };
        assert!(QPointwiseConv::new(w, cf, nan, vec![1.0], (None, None), None).is_err());
    }
}
