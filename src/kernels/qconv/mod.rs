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

mod dynamic;
mod engine;
mod epilogue;
mod gelu;
mod op;
mod pack;
mod patches;
mod run;
#[cfg(test)]
mod tests;
mod zero_points;

use std::sync::Arc;

use tract_linalg::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::quantize::{FakeQuantize, FastQuantize};
pub use super::Layout;
use dynamic::dynamic_quant;
pub(crate) use dynamic::min_max;
pub(crate) use engine::{integer_kernels_pay, tract_int8_kernels_slow};
use engine::{Engine, Kernel};
use epilogue::{Epilogue, InputQuant, Lookup, Table};
pub use gelu::QdqGelu;

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
    /// `[Cout, Cin]`; `None` once the plan is built and the engine holds the weights packed
    /// ([`Self::packed`]): a model's weights in memory once, not twice.
    weights: Option<Arc<Tensor>>,
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
    /// The weights' zero points per output channel, when they keep some
    /// ([`QPointwiseConv::with_weight_zero_points`]).
    w_zero: Option<Arc<[i32]>>,
    /// Shared by the op's clones: tract clones ops as it rewrites the graph, and the packed
    /// weights are the model's size.
    kernel: Arc<Kernel>,
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

impl Eq for QPointwiseConv {}

impl PartialEq for QPointwiseConv {
    fn eq(&self, other: &Self) -> bool {
        let weights = match (&self.weights, &other.weights) {
            (Some(a), Some(b)) => a == b,
            _ => Arc::ptr_eq(&self.kernel, &other.kernel),
        };
        weights
            && self.layout == other.layout
            && self.x == other.x
            && self.mid == other.mid
            && self.gelu == other.gelu
            && self.emit == other.emit
            && self.dynamic == other.dynamic
            && self.w_scales == other.w_scales
            && self.y == other.y
            && self.patch == other.patch
            && self.w_zero == other.w_zero
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
        let kernel = Arc::new(Kernel::of(&weights, n)?);
        Ok(QPointwiseConv {
            weights: Some(Arc::new(weights)),
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
            w_zero: None,
            kernel,
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
        Ok(self)
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
        let w = self.weights()?.try_as_plain_ram()?;
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
        Ok(QPointwiseConv {
            kernel: Arc::new(Kernel::of(&weights, self.kernel.n)?),
            weights: Some(Arc::new(weights)),
            layout: Layout::ChannelsLast,
            ..self.clone()
        })
    }

    /// The weights, `[Cout, Cin]`, while the op has them (see [`Self::packed`]).
    fn weights(&self) -> TractResult<&Arc<Tensor>> {
        self.weights
            .as_ref()
            .context("integer 1x1 conv: the weights were released when the plan was built")
    }

    /// The weights packed for this CPU's kernel, packed on the first call (by the op or by
    /// any clone of it).
    fn engine(&self) -> TractResult<&Engine> {
        if let Some(engine) = self.kernel.engine.get() {
            return Ok(engine);
        }
        let engine = Engine::new(self.weights()?, self.layout, self.kernel.n, self.patch > 1)?;
        Ok(self.kernel.engine.get_or_init(|| engine))
    }

    /// Whether the op still holds its unpacked weights.
    #[cfg(test)]
    pub(crate) fn holds_weights(&self) -> bool {
        self.weights.is_some()
    }

    /// The op with its weights packed and its own copy of them released: what the plan
    /// keeps (see [`crate::model::passes::after_optimisation`]). It can no longer change
    /// layout.
    pub fn packed(&self) -> TractResult<QPointwiseConv> {
        self.engine()?;
        Ok(QPointwiseConv {
            weights: None,
            ..self.clone()
        })
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
    pub fn kernel_name(&self) -> TractResult<String> {
        Ok(self.engine()?.name())
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
        self.kernel.cin
    }

    fn cout(&self) -> usize {
        self.kernel.w_sums.len()
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
            // With weight zero points z, `+ z·K·zx` too (see `zero_points`).
            offset: match &self.w_zero {
                None => self.kernel.w_sums.iter().map(|s| -zx * s).collect(),
                Some(z) => (self.kernel.w_sums.iter().zip(z.iter()))
                    .map(|(s, z)| -zx * s + z * self.cin() as i32 * zx)
                    .collect(),
            },
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
}
