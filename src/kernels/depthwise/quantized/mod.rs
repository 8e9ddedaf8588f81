//! Depthwise convolution on int8: a QDQ model's `Q → DQ → Conv(depthwise, int8 weights)`,
//! fused by `model::qdq` where SDOT runs it (arm64 with the dot-product extension:
//! Pi 5, Orin, Xavier), in place of the float depthwise on the dequantized input.
//!
//! Each channel is quantized to i8 once into a padded copy whose padding holds the input's
//! zero point (the quantization of 0.0). An output is the exact integer sum `Σ (q − zp) · w`
//! over its taps, computed as `Σ q · w − zp · Σ w` and scaled once by `x_scale · w_scale[c]`,
//! plus the bias: the arithmetic of onnxruntime's integer convolutions, one rounding per output
//! where the float path rounds once per tap. The output's own `Q → DQ`, where the model has
//! one, stays in the graph: the model's passes merge it with the element-wise ops after it
//! into one lookup (`kernels::quantize::QuantizeLookup`), cheaper than a second pass here. u8
//! activations are stored as `q − 128` (with the zero point moved by −128), so that both
//! operands are i8.
//!
//! With SDOT (7x7 kernels), each padded row is first expanded into overlapping windows of four
//! bytes (`p[x], p[x+1], p[x+2], p[x+3]` for every `x`): one 16-byte load then holds four
//! outputs' windows of four taps, and one `SDOT` against those taps' four weights (the same in
//! every lane) adds 16 products. Per kernel row, 8 outputs take one load of three registers
//! and four `SDOT`; the float kernel takes a fused multiply-add per tap and 4 outputs.
//! Channels last (where tract moves a MatMul-form network's channels last: timm's exports),
//! each padded row is expanded the other way: for each pixel and channel, the 4 values of that
//! channel at the pixel and the 3 after it, so that one 64-byte load holds 16 channels' taps
//! 0–3 (or 4–7) and four `SDOT` against the same taps' weights add 256 products.
//! Elsewhere the sums are a plain loop: the reference the SDOT loops are tested against, and
//! the op's path on CPUs it is not fused for.
//!
//! tract internals used (tract-core 0.23.9): `Op`/`EvalOp`/`TypedOp`.

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::kernels::qconv::ActQuant;
use crate::kernels::quantize::FastQuantize;
use crate::kernels::Layout;

/// Whether the integer depthwise pays on this CPU: it needs SDOT, and takes 7x7 kernels.
pub fn pays(kh: usize, kw: usize) -> bool {
    (kh, kw) == (7, 7) && has_sdot()
}

fn has_sdot() -> bool {
    cfg!(target_arch = "aarch64") && crate::kernels::cpu::has(crate::kernels::cpu::Feature::DotProd)
}

/// `acc += Σ` of the four products in each i32 lane of `x` and `w` (i8): one `SDOT`, for the
/// functions with the dot-product extension enabled. Written as assembly: the intrinsic is not
/// stable Rust yet.
#[cfg(target_arch = "aarch64")]
macro_rules! sdot {
    ($acc:expr, $x:expr, $w:expr) => {
        std::arch::asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
            acc = inout(vreg) $acc,
            x = in(vreg) $x,
            w = in(vreg) $w,
            options(pure, nomem, nostack),
        )
    };
}

/// Outputs per block of the SDOT loop (a row's last block may run past the row).
const BLOCK: usize = 8;
/// Windows written per load by the expansion (a 16-byte load holds 12 whole windows).
const WINDOWS_PER_LOAD: usize = 12;

/// An int8 depthwise convolution with `kh × kw` kernels, stride and dilation 1, explicit
/// padding, over `[N, C, H, W]` f32 (quantized on the way in; `[N, H, W, C]` once tract has
/// moved the channels last); the bias `[C]` f32 is its second input. Output f32 in the input's
/// layout with `H + top + bottom − kh + 1` rows and `W + left + right − kw + 1` columns.
///
/// ```text
/// use convnext_edge::kernels::depthwise::quantized::QDepthwiseConv;
/// use convnext_edge::kernels::qconv::ActQuant;
/// use tract_onnx::prelude::*;
/// use tract_onnx::tract_core::internal::{EvalContext, EvalOp};
/// let x = ActQuant { scale: 0.5, zero_point: 0, signed: true };
/// // One channel, a 1x3 kernel of weights 1, 2, 1 (scale 1), a column of padding each side.
/// let op = QDepthwiseConv::new(&[1, 2, 1], (1, 1, 3), [0, 0, 1, 1], x, &[1.0])?;
/// let input = Tensor::from_shape(&[1, 1, 1, 3], &[1f32, 2.0, 3.0])?;
/// let bias = tensor1(&[0f32]);
/// let y = op.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue(), bias.into_tvalue()))?;
/// assert_eq!(y[0].try_as_plain_ram()?.as_slice::<f32>()?, &[4.0, 8.0, 8.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QDepthwiseConv {
    /// `[C, kh · kw]`.
    weights: Vec<i8>,
    kernel: (usize, usize),
    /// Padding before and after along H, then along W.
    pads: [usize; 4],
    /// The input's quantization, to i8.
    x: FastQuantize,
    /// `−zp · Σ w` per channel: the sums' correction for the zero point.
    offsets: Vec<i32>,
    /// `x_scale · w_scale` per channel.
    scales: Vec<f32>,
    layout: Layout,
}

impl Eq for QDepthwiseConv {}

/// Where one plane's padded copy, windows and sums live.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
    /// Padded plane rows and their length (with room for the expansion's loads), and the
    /// padded width.
    ph: usize,
    row: usize,
    pw: usize,
}

impl QDepthwiseConv {
    /// `weights` `[C, kh, kw]` i8 (row-major), `w_scales` one per channel or one for all, `x`
    /// the input's quantization; `pads` = `[top, bottom, left, right]`.
    pub fn new(
        weights: &[i8],
        (channels, kh, kw): (usize, usize, usize),
        pads: [usize; 4],
        x: ActQuant,
        w_scales: &[f32],
    ) -> TractResult<QDepthwiseConv> {
        let taps = kh * kw;
        ensure!(
            taps > 0 && weights.len() == channels * taps,
            "int8 depthwise conv: {} weights for {channels} channels of {kh}x{kw}",
            weights.len()
        );
        ensure!(
            w_scales.len() == 1 || w_scales.len() == channels,
            "int8 depthwise conv: {} weight scales for {channels} channels",
            w_scales.len()
        );
        let scales = (0..channels)
            .map(|c| x.scale * w_scales[c % w_scales.len()])
            .collect();
        let x = x.to_i8();
        let zero = x.zero_point();
        let offsets = weights
            .chunks(taps)
            .map(|w| -zero * w.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        Ok(QDepthwiseConv {
            weights: weights.to_vec(),
            kernel: (kh, kw),
            pads,
            x,
            offsets,
            scales,
            layout: Layout::ChannelsFirst,
        })
    }

    /// The quantization the op applies to its input before anything else.
    pub(crate) fn input_quantizer(&self) -> FastQuantize {
        self.x
    }

    /// Axes of (C, H, W) in the rank-4 input.
    fn axes(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::ChannelsFirst => (1, 2, 3),
            Layout::ChannelsLast => (3, 1, 2),
        }
    }

    fn channels(&self) -> usize {
        self.offsets.len()
    }

    fn output_hw(&self, h: TDim, w: TDim) -> (TDim, TDim) {
        let (kh, kw) = self.kernel;
        let [t, b, l, r] = self.pads;
        (h + t + b - kh + 1, w + l + r - kw + 1)
    }

    fn geometry(&self, h: usize, w: usize) -> TractResult<Geometry> {
        let (kh, kw) = self.kernel;
        let [top, bottom, left, right] = self.pads;
        let (ph, pw) = (h + top + bottom, w + left + right);
        ensure!(
            ph >= kh && pw >= kw,
            "int8 depthwise conv: {h}x{w} input smaller than its {kh}x{kw} kernel"
        );
        let (oh, ow) = (ph - kh + 1, pw - kw + 1);
        Ok(Geometry {
            h,
            w,
            kh,
            kw,
            top,
            left,
            oh,
            ow,
            ph,
            row: pw.max(windows_per_row(span(ow)) + 16 - WINDOWS_PER_LOAD),
            pw,
        })
    }

    /// One channel's outputs (`oh × ow`) from its input plane.
    fn plane(
        &self,
        x: &[f32],
        c: usize,
        bias: f32,
        g: Geometry,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        let taps = g.kh * g.kw;
        let weights = &self.weights[c * taps..][..taps];
        // The whole plane in one call: rows of ConvNeXt's later stages (7 or 14 values) are
        // shorter than the quantizer's 16-value blocks.
        scratch.quantized.resize(x.len(), 0);
        self.x.quantize_i8(x, &mut scratch.quantized);
        scratch.padded.clear();
        scratch
            .padded
            .resize(g.ph * g.row, self.x.zero_point() as i8);
        for (y, src) in scratch.quantized.chunks_exact(g.w).enumerate() {
            let at = (y + g.top) * g.row + g.left;
            scratch.padded[at..][..g.w].copy_from_slice(src);
        }
        scratch.sums.resize(g.oh * g.ow + BLOCK, 0);
        sums(
            &scratch.padded,
            g,
            weights,
            self.offsets[c],
            &mut scratch.windows,
            &mut scratch.sums,
        );
        let scale = self.scales[c];
        for (o, &s) in out.iter_mut().zip(&scratch.sums) {
            *o = s as f32 * scale + bias;
        }
    }

    /// Every output row of a channels-last batch (`n` images), rows split across the threads.
    fn run_c_last(
        &self,
        xs: &[f32],
        n: usize,
        g: Geometry,
        bias: &[f32],
        ys: &mut [f32],
    ) -> TractResult<()> {
        let c = self.channels();
        // One pixel more than the padding: the expansion's last pixel reads 3 past itself.
        let image = CLast::new(g, c);
        let mut padded = vec![self.x.zero_point() as i8; n * image.len()];
        // Rows of `w · c` values, quantized straight into the padded copy.
        for (src, dst) in xs
            .chunks_exact(g.h * g.w * c)
            .zip(padded.chunks_exact_mut(image.len()))
        {
            for (y, row) in src.chunks_exact(g.w * c).enumerate() {
                let at = image.at(y + g.top, g.left);
                self.x.quantize_i8(row, &mut dst[at..][..g.w * c]);
            }
        }
        #[cfg(target_arch = "aarch64")]
        let sdot = c_last_sdot::Plan::new(self, g, &padded)?;
        par_chunks_mut(ys, g.ow * c, xs.len() * g.kh * g.kw, |first, chunk| {
            for (i, out) in chunk.chunks_mut(g.ow * c).enumerate() {
                let (img, y) = ((first + i) / g.oh, (first + i) % g.oh);
                #[cfg(target_arch = "aarch64")]
                if let Some(sdot) = &sdot {
                    sdot.row(img, y, bias, out);
                    continue;
                }
                let padded = &padded[img * image.len()..][..image.len()];
                self.row_c_last(padded, image, y, g, bias, out);
            }
            Ok(())
        })
    }

    /// Output row `y` of one channels-last image from its padded copy: the plain loop.
    fn row_c_last(
        &self,
        padded: &[i8],
        image: CLast,
        y: usize,
        g: Geometry,
        bias: &[f32],
        out: &mut [f32],
    ) {
        let (c, taps) = (image.c, g.kh * g.kw);
        for (x, pixel) in out.chunks_exact_mut(c).enumerate() {
            for (ch, o) in pixel.iter_mut().enumerate() {
                let w = &self.weights[ch * taps..][..taps];
                let mut sum = self.offsets[ch];
                for (ky, w) in w.chunks_exact(g.kw).enumerate() {
                    let at = image.at(y + ky, x) + ch;
                    for (kx, &w) in w.iter().enumerate() {
                        sum += padded[at + kx * c] as i32 * w as i32;
                    }
                }
                *o = sum as f32 * self.scales[ch] + bias[ch];
            }
        }
    }
}

/// A channels-last padded image: `g.ph` rows of `g.pw + 1` pixels of `c` channels.
#[derive(Debug, Clone, Copy)]
struct CLast {
    c: usize,
    ph: usize,
    pw: usize,
}

impl CLast {
    fn new(g: Geometry, c: usize) -> CLast {
        CLast {
            c,
            ph: g.ph,
            pw: g.pw + 1,
        }
    }

    fn len(&self) -> usize {
        self.ph * self.pw * self.c
    }

    /// Where pixel `x` of row `y` starts.
    fn at(&self, y: usize, x: usize) -> usize {
        (y * self.pw + x) * self.c
    }
}

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/c_last_sdot.rs"]
mod c_last_sdot;

/// Outputs the SDOT loop computes per row of `ow`: whole blocks.
fn span(ow: usize) -> usize {
    ow.div_ceil(BLOCK) * BLOCK
}

/// Windows per row of the SDOT loop's expansion for rows of `span` outputs: a block's last
/// load reads the windows at `span − 8 .. span + 4`, and the expansion writes 12 at a time.
fn windows_per_row(span: usize) -> usize {
    (span + 4).div_ceil(WINDOWS_PER_LOAD) * WINDOWS_PER_LOAD
}

/// A thread's buffers, reused from plane to plane.
#[derive(Default)]
struct Scratch {
    quantized: Vec<i8>,
    padded: Vec<i8>,
    windows: Vec<i8>,
    sums: Vec<i32>,
}

/// The integer sums of one padded plane: `sums[y · ow + x] = offset + Σ padded · weights`
/// over the kernel at `(y, x)`. `sums` holds `BLOCK` values past the plane's: a row's last
/// block may write past the row (into the next row's, written after it).
fn sums(
    padded: &[i8],
    g: Geometry,
    weights: &[i8],
    offset: i32,
    windows: &mut Vec<i8>,
    sums: &mut [i32],
) {
    #[cfg(target_arch = "aarch64")]
    if (g.kh, g.kw) == (7, 7) && has_sdot() {
        windows.resize(g.ph * windows_per_row(span(g.ow)) * 4, 0);
        // SAFETY: the CPU has SDOT; the buffers are sized by `g` (checked there).
        return unsafe { sdot::sums_7x7(padded, g, weights, offset, windows, sums) };
    }
    let _ = windows;
    sums_scalar(padded, g, weights, offset, sums)
}

fn sums_scalar(padded: &[i8], g: Geometry, weights: &[i8], offset: i32, sums: &mut [i32]) {
    for (y, row) in sums.chunks_mut(g.ow).enumerate().take(g.oh) {
        for (x, sum) in row.iter_mut().enumerate() {
            *sum = offset;
            for (ky, taps) in weights.chunks(g.kw).enumerate() {
                let src = &padded[(y + ky) * g.row + x..][..g.kw];
                *sum += src
                    .iter()
                    .zip(taps)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/sdot.rs"]
mod sdot;

impl Op for QDepthwiseConv {
    fn name(&self) -> StaticName {
        "QDepthwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (kh, kw) = self.kernel;
        let sums = if pays(kh, kw) { "SDOT" } else { "scalar" };
        Ok(vec![format!(
            "{} channels, {kh}x{kw} i8, {:?}, pads {:?}, {sums}",
            self.channels(),
            self.layout,
            self.pads
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QDepthwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, bias) = args_2!(inputs);
        let shape = x.shape();
        let c = self.channels();
        let (ca, ha, wa) = self.axes();
        ensure!(
            shape.len() == 4 && shape[ca] == c && x.datum_type() == f32::datum_type(),
            "int8 depthwise conv: input {:?} {shape:?}, expected f32 with {c} channels on axis {ca}",
            x.datum_type()
        );
        let bias = bias.cast_to::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        ensure!(
            bias.len() == c,
            "int8 depthwise conv: bias length {}",
            bias.len()
        );
        let g = self.geometry(shape[ha], shape[wa])?;
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let mut out_shape = [shape[0], 0, 0, 0];
        (out_shape[ca], out_shape[ha], out_shape[wa]) = (c, g.oh, g.ow);
        let mut out = Tensor::zero::<f32>(&out_shape)?;
        let plane_out = g.oh * g.ow;
        if plane_out > 0 {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            match self.layout {
                Layout::ChannelsFirst => {
                    par_chunks_mut(ys, plane_out, xs.len() * g.kh * g.kw, |first, chunk| {
                        let mut scratch = Scratch::default();
                        for (i, out) in chunk.chunks_mut(plane_out).enumerate() {
                            let p = first + i;
                            let x = &xs[p * g.h * g.w..][..g.h * g.w];
                            self.plane(x, p % c, bias[p % c], g, &mut scratch, out);
                        }
                        Ok(())
                    })?;
                }
                Layout::ChannelsLast => self.run_c_last(xs, shape[0], g, &bias, ys)?,
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QDepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let (ca, ha, wa) = self.axes();
        ensure!(
            x.datum_type == f32::datum_type()
                && x.rank() == 4
                && x.shape[ca] == self.channels().to_dim(),
            "int8 depthwise conv: input {x:?}, expected f32 with {} channels on axis {ca}",
            self.channels()
        );
        let mut shape = x.shape.to_tvec();
        (shape[ha], shape[wa]) = self.output_hw(x.shape[ha].clone(), x.shape[wa].clone());
        Ok(tvec!(f32::datum_type().fact(shape)))
    }

    /// Moving the channels of the input (or output) from axis 1 to the last switches the op
    /// channels last, the other wire moving the same way: how tract's `ChangeAxes` carries a
    /// MatMul-form network's channels-last layout through it (as `QPointwiseConv` does)
    /// instead of stopping at this op with transposes around it.
    fn change_axes(
        &self,
        _model: &TypedModel,
        _node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        if !matches!(io, InOut::In(0) | InOut::Out(0))
            || self.layout != Layout::ChannelsFirst
            || *change != AxisOp::Move(1, 3)
        {
            return Ok(None);
        }
        let channels_last = QDepthwiseConv {
            layout: Layout::ChannelsLast,
            ..self.clone()
        };
        Ok(Some(AxisChangeConsequence {
            substitute_op: Some(Box::new(channels_last)),
            wire_changes: tvec!(
                (InOut::In(0), change.clone()),
                (InOut::Out(0), change.clone())
            ),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (kh, kw) = self.kernel;
        let macs = inputs[0].shape.iter().product::<TDim>() * (kh * kw);
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs)))
    }

    as_op!();
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::reference::reference;
    use super::*;
    use crate::kernels::for_each_variant;
    use crate::kernels::test_values as values;

    /// `len` f32 inputs in ±7.7 from a seed.
    fn inputs(len: usize, seed: u32) -> Vec<f32> {
        values(len, seed).iter().map(|&v| v as f32 * 0.06).collect()
    }

    fn run(op: &QDepthwiseConv, x: Tensor, bias: &[f32]) -> Vec<f32> {
        let out = op
            .eval(
                &EvalContext::out_of_plan(),
                tvec!(x.into_tvalue(), tensor1(bias).into_tvalue()),
            )
            .unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    for_each_variant! {
        /// Against the f64 definition, with u8 and i8 inputs (zero points inside and at the edge
        /// of the range), per-channel and per-tensor weight scales, odd plane sizes and
        /// asymmetric padding, within f32 rounding.
        fn matches_the_dequantized_convolution() {
            let u8_in = ActQuant {
                scale: 0.05,
                zero_point: 131,
                signed: false,
            };
            let i8_in = ActQuant {
                scale: 0.03,
                zero_point: -128,
                signed: true,
            };
            for (i, (n, c, h, w, kh, kw, pads)) in [
                (1, 3, 9, 13, 7, 7, [3, 3, 3, 3]),
                (2, 2, 7, 5, 7, 7, [3, 3, 3, 3]),
                (1, 2, 1, 1, 7, 7, [3, 3, 3, 3]),
                (1, 1, 16, 21, 7, 7, [1, 2, 0, 4]),
                (1, 2, 6, 6, 3, 3, [1, 1, 1, 1]),
                (1, 1, 4, 9, 2, 5, [0, 0, 2, 1]),
            ]
            .into_iter()
            .enumerate()
            {
                let x = inputs(n * c * h * w, i as u32);
                let weights = values(c * kh * kw, 7 + i as u32);
                let bias: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.3 - 0.2).collect();
                let per_channel: Vec<f32> = (0..c).map(|ch| 0.01 + ch as f32 * 0.002).collect();
                for (xq, w_scales) in [
                    (u8_in, &per_channel[..]),
                    (i8_in, &per_channel[..]),
                    (u8_in, &[0.02][..]),
                ] {
                    let op = QDepthwiseConv::new(&weights, (c, kh, kw), pads, xq, w_scales).unwrap();
                    let x = Tensor::from_shape(&[n, c, h, w], &x).unwrap();
                    let got = run(&op, x.clone(), &bias);
                    let want = reference(
                        x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                        (n, c, h, w),
                        &weights,
                        (kh, kw),
                        pads,
                        xq,
                        w_scales,
                        &bias,
                    );
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{n}x{c}x{h}x{w} {kh}x{kw} {pads:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    for_each_variant! {
        /// Channels last computes what channels first does, bit for bit (the same integer sums
        /// and float epilogue), with channel counts a whole number of SDOT steps and not, batches,
        /// and a 1-pixel-wide plane.
        fn channels_last_matches_channels_first() {
            use crate::kernels::depthwise::reference::to_last;
            let xq = ActQuant {
                scale: 0.05,
                zero_point: 131,
                signed: false,
            };
            for (i, (n, c, h, w)) in [(1, 16, 9, 13), (2, 32, 7, 7), (1, 5, 6, 11), (1, 48, 4, 1)]
                .into_iter()
                .enumerate()
            {
                for (kh, kw, pads) in [(7, 7, [3; 4]), (3, 3, [1, 0, 2, 1])] {
                    let x = inputs(n * c * h * w, i as u32);
                    let weights = values(c * kh * kw, 3 + i as u32);
                    let bias: Vec<f32> = (0..c).map(|ch| ch as f32 * 0.1 - 0.7).collect();
                    let scales: Vec<f32> = (0..c).map(|ch| 0.01 + ch as f32 * 0.001).collect();
                    let op = QDepthwiseConv::new(&weights, (c, kh, kw), pads, xq, &scales).unwrap();
                    let first = run(&op, Tensor::from_shape(&[n, c, h, w], &x).unwrap(), &bias);
                    let last_op = QDepthwiseConv {
                        layout: Layout::ChannelsLast,
                        ..op.clone()
                    };
                    let x_last = Tensor::from_shape(&[n, h, w, c], &to_last(&x, (n, c, h, w)));
                    let last = run(&last_op, x_last.unwrap(), &bias);
                    let (oh, ow) = (
                        h + pads[0] + pads[1] + 1 - kh,
                        w + pads[2] + pads[3] + 1 - kw,
                    );
                    assert_eq!(
                        last,
                        to_last(&first, (n, c, oh, ow)),
                        "{n}x{c}x{h}x{w} {kh}x{kw}"
                    );
                }
            }
        }
    }

    for_each_variant! {
        /// The SDOT sums (where the CPU has them) against the scalar loop, bit for bit, with the
        /// extreme bytes on both sides and planes whose rows end mid-block.
        fn sdot_sums_match_the_scalar_loop() {
            let x = ActQuant {
                scale: 1.0,
                zero_point: 0,
                signed: true,
            };
            for (h, w) in [(1, 1), (7, 8), (9, 13), (56, 56), (14, 17)] {
                let mut weights = values(49, h as u32);
                weights[0] = -128;
                weights[48] = 127;
                let op = QDepthwiseConv::new(&weights, (1, 7, 7), [3; 4], x, &[1.0]).unwrap();
                let g = op.geometry(h, w).unwrap();
                let mut padded = values(g.ph * g.row, w as u32);
                padded[0] = -128;
                let len = g.oh * g.ow + BLOCK;
                let (mut want, mut got) = (vec![0; len], vec![0; len]);
                sums_scalar(&padded, g, &weights, 17, &mut want);
                sums(&padded, g, &weights, 17, &mut vec![], &mut got);
                assert_eq!(got[..g.oh * g.ow], want[..g.oh * g.ow], "{h}x{w}");
            }
        }
    }

    #[test]
    fn refuses_mismatched_weights_and_inputs() {
        let x = ActQuant {
            scale: 1.0,
            zero_point: 0,
            signed: true,
        };
        assert!(QDepthwiseConv::new(&[1; 10], (2, 2, 3), [0; 4], x, &[1.0]).is_err());
        assert!(QDepthwiseConv::new(&[1; 12], (2, 2, 3), [0; 4], x, &[1.0; 3]).is_err());
        let op = QDepthwiseConv::new(&[1; 12], (2, 2, 3), [0; 4], x, &[1.0]).unwrap();
        let wrong_channels = Tensor::zero::<f32>(&[1, 3, 4, 4]).unwrap();
        let result = op.eval(
            &EvalContext::out_of_plan(),
            tvec!(
                wrong_channels.into_tvalue(),
                tensor1(&[0f32; 2]).into_tvalue()
            ),
        );
        assert!(result.is_err());
        let too_small = Tensor::zero::<f32>(&[1, 2, 1, 1]).unwrap();
        let result = op.eval(
            &EvalContext::out_of_plan(),
            tvec!(too_small.into_tvalue(), tensor1(&[0f32; 2]).into_tvalue()),
        );
        assert!(result.is_err());
    }
}
