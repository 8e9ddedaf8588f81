//! Activation quantization `q = clamp(round_half_even(x · inv_scale) + zero_point)` to u8/i8.
//!
//! tract's `QuantizeLinearU8/I8` evaluate this one element at a time through a branchy
//! rounding function, which took a large share of an int8 QDQ ConvNeXt's run time. This version clamps
//! in float first (the bounds are integers, so clamping before rounding gives the same result)
//! and rounds with the add-and-subtract 1.5·2²³ trick, which rounds half to even under the
//! default rounding mode for |v| < 2²² — so the loop is branch-free and the compiler vectorises
//! it on every target (SSE2, AVX2, NEON) without runtime dispatch. Results are bit-identical to
//! tract's wherever |x · inv_scale| < 2³¹ (beyond that tract's i32 addition overflows; this
//! version saturates); NaN maps to the zero point as in tract.
//!
//! tract internals used: `ElementWiseMiniOp` / `ElementWiseOp` (tract-core 0.23.9).

use anyhow::Context;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseMiniOp;

use super::simd::multiversion;

/// 1.5 · 2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to an integer, ties to
/// even.
const ROUNDER: f32 = 12_582_912.0;
const ROUNDER_BITS: i32 = 0x4B40_0000;

/// Branch-free quantization of f32 activations (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FastQuantize {
    /// Bits of the f32 multiplier (1 / ONNX scale); bits, so the op can be `Eq`.
    inv_scale_bits: u32,
    zero_point: i32,
    signed: bool,
}

impl FastQuantize {
    /// To u8 (`signed = false`) or i8, multiplying by `inv_scale`.
    pub fn new(inv_scale: f32, zero_point: i32, signed: bool) -> Self {
        FastQuantize {
            inv_scale_bits: inv_scale.to_bits(),
            zero_point,
            signed,
        }
    }

    pub(crate) fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// Quantizes `xs` into `ys` (an i8 quantizer).
    pub(crate) fn quantize_i8(&self, xs: &[f32], ys: &mut [i8]) {
        debug_assert!(self.signed);
        quantize_i8(self.rounder(), xs, ys)
    }

    /// Quantizes `xs` into `ys` (a u8 quantizer).
    fn quantize_u8(&self, xs: &[f32], ys: &mut [u8]) {
        debug_assert!(!self.signed);
        quantize_u8(self.rounder(), xs, ys)
    }

    /// Quantizes `xs` into the bytes of the quantized values (two's complement for an i8
    /// quantizer): an index into a 256-entry table of whatever follows the quantization.
    pub(crate) fn quantize_bytes(&self, xs: &[f32], ys: &mut [u8]) {
        quantize_u8(self.rounder(), xs, ys)
    }

    /// The value whose quantized byte is `b` (the inverse of [`Self::quantize_bytes`]).
    pub(crate) fn value_of_byte(&self, b: u8) -> i32 {
        if self.signed {
            b as i8 as i32
        } else {
            b as i32
        }
    }

    /// This quantization sixteen values at a time in NEON registers.
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn sixteen(&self) -> Quantize16 {
        Quantize16::new(self.rounder())
    }

    fn rounder(&self) -> Rounder {
        let (lo, hi) = self.float_bounds();
        Rounder {
            inv_scale: f32::from_bits(self.inv_scale_bits),
            lo,
            hi,
            zero_point: self.zero_point,
        }
    }

    fn bounds(&self) -> (i32, i32) {
        if self.signed {
            (-128, 127)
        } else {
            (0, 255)
        }
    }

    /// Float bounds of the rounded value (the integer range minus the zero point).
    fn float_bounds(&self) -> (f32, f32) {
        let (lo, hi) = self.bounds();
        ((lo - self.zero_point) as f32, (hi - self.zero_point) as f32)
    }

    /// Whether `other` rounds every input to the same step as this one: the same multiplier
    /// and the same range around the zero point, so that the two codes differ by the
    /// difference of the zero points alone (a u8 quantizer and its i8 form, `q − 128`).
    fn same_steps(&self, other: &FastQuantize) -> bool {
        self.inv_scale_bits == other.inv_scale_bits && self.float_bounds() == other.float_bounds()
    }

    /// The scalar loop, narrowing with the caller's function (the tests' reference shape).
    #[cfg(test)]
    fn run<T: Copy>(&self, xs: &[f32], ys: &mut [T], narrow: impl Fn(i32) -> T) {
        let r = self.rounder();
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            *y = narrow(r.quantize(*x));
        }
    }
}

/// The parameters of one quantization, unpacked for the loops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounder {
    inv_scale: f32,
    lo: f32,
    hi: f32,
    zero_point: i32,
}

impl Rounder {
    /// `clamp(round_half_even(x · inv_scale) + zero_point)`.
    #[inline(always)]
    pub(crate) fn quantize(self, x: f32) -> i32 {
        round_clamped(x * self.inv_scale, self.lo, self.hi) + self.zero_point
    }

    /// The constants of the armv7 NEON loops for the code less `minus` (a dequantization's
    /// zero point, or 0).
    #[cfg(target_arch = "arm")]
    fn neon32(self, minus: i32) -> super::neon32::RoundConsts {
        super::neon32::RoundConsts {
            inv_scale: [self.inv_scale; 4],
            lo: [self.lo; 4],
            hi: [self.hi; 4],
            rounder: [ROUNDER; 4],
            shift: [ROUNDER_BITS
                .wrapping_sub(self.zero_point)
                .wrapping_add(minus); 4],
        }
    }
}

/// A fake quantization unpacked for fused loops (see [`FakeQuantize`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fq {
    rounder: Rounder,
    dq_zero_point: i32,
    dq_scale: f32,
}

impl Fq {
    #[inline(always)]
    pub(crate) fn apply(self, x: f32) -> f32 {
        (self.rounder.quantize(x) - self.dq_zero_point) as f32 * self.dq_scale
    }

    /// [`Self::apply`] to each of `xs`, in place.
    pub(crate) fn apply_all(self, xs: &mut [f32]) {
        fake_quantize(self, xs)
    }
}

multiversion! {
    fn quantize_i8(r: Rounder, xs: &[f32], ys: &mut [i8]) {
        // SAFETY: i8 and u8 have the same size and alignment; the bytes are two's complement.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ys.as_mut_ptr() as *mut u8, ys.len()) };
        let done = quantize_prefix(r, xs, bytes);
        for (x, y) in xs[done..].iter().zip(ys[done..].iter_mut()) {
            *y = r.quantize(*x) as i8;
        }
    }
}

multiversion! {
    fn quantize_u8(r: Rounder, xs: &[f32], ys: &mut [u8]) {
        let done = quantize_prefix(r, xs, ys);
        for (x, y) in xs[done..].iter().zip(ys[done..].iter_mut()) {
            *y = r.quantize(*x) as u8;
        }
    }
}

/// Quantizes the leading values of `xs` into `ys` (as bytes, two's complement for i8) sixteen
/// at a time on aarch64 ([`Quantize16`]), eight on armv7 with NEON, and returns how many;
/// elsewhere none, the portable loop vectorises.
#[inline(always)]
fn quantize_prefix(r: Rounder, xs: &[f32], ys: &mut [u8]) -> usize {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the aarch64 baseline; each step reads xs[at..at + 16] and writes
    // ys[at..at + 16] with at + 16 <= both lengths.
    unsafe {
        let q = Quantize16::new(r);
        super::neon::blocks(xs.len().min(ys.len()), |at| {
            let bytes = q.bytes(xs.as_ptr().add(at));
            std::arch::aarch64::vst1q_u8(ys.as_mut_ptr().add(at), bytes);
        })
    }
    #[cfg(target_arch = "arm")]
    if super::neon32::available() {
        // SAFETY: the CPU has NEON.
        return unsafe { super::neon32::quantize_bytes(&r.neon32(0), xs, ys) };
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (r, xs, ys);
        0
    }
}

/// [`Rounder::quantize`] of sixteen values at a time in NEON registers.
///
/// FCVTNS rounds half to even, saturates, and gives 0 for NaN, as [`round_clamped`] does. The
/// clamp is done by the saturating narrows: to i16, then the zero point added with saturation,
/// then to i8 or u8, whose saturation is exactly the code range. A value past i16's range stays
/// past the code range on the same side after the zero point is added, so this gives the same
/// bytes as clamping first. ~1 instruction a value; the compiler's form of the portable loop
/// takes ~4.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
pub(crate) struct Quantize16 {
    inv_scale: std::arch::aarch64::float32x4_t,
    zero_point: std::arch::aarch64::int16x8_t,
    signed: bool,
}

#[cfg(target_arch = "aarch64")]
impl Quantize16 {
    #[inline(always)]
    fn new(r: Rounder) -> Self {
        use std::arch::aarch64::{vdupq_n_f32, vdupq_n_s16};
        // SAFETY: NEON is in the aarch64 baseline. Zero points are within the codes' range, so
        // they fit in i16; the lowest code is below zero for i8 alone.
        unsafe {
            Quantize16 {
                inv_scale: vdupq_n_f32(r.inv_scale),
                zero_point: vdupq_n_s16(r.zero_point as i16),
                signed: r.lo as i32 + r.zero_point < 0,
            }
        }
    }

    /// The quantized bytes of the sixteen values at `p`.
    ///
    /// # Safety
    /// `p` points to sixteen readable f32.
    #[inline(always)]
    unsafe fn bytes(&self, p: *const f32) -> std::arch::aarch64::uint8x16_t {
        use std::arch::aarch64::vld1q_f32;
        // SAFETY: NEON is in the aarch64 baseline; `p` holds sixteen f32, as the caller promises.
        unsafe { self.bytes_of([0, 4, 8, 12].map(|at| vld1q_f32(p.add(at)))) }
    }

    /// The quantized bytes (two's complement for i8) of sixteen values in registers.
    #[inline(always)]
    pub(crate) fn bytes_of(
        &self,
        v: [std::arch::aarch64::float32x4_t; 4],
    ) -> std::arch::aarch64::uint8x16_t {
        use std::arch::aarch64::*;
        // SAFETY: NEON is in the aarch64 baseline; no memory access.
        unsafe {
            let r = v.map(|v| vcvtnq_s32_f32(vmulq_f32(v, self.inv_scale)));
            let half = |a, b| vqaddq_s16(vqmovn_high_s32(vqmovn_s32(a), b), self.zero_point);
            let (ab, cd) = (half(r[0], r[1]), half(r[2], r[3]));
            if self.signed {
                vreinterpretq_u8_s8(vqmovn_high_s16(vqmovn_s16(ab), cd))
            } else {
                vqmovun_high_s16(vqmovun_s16(ab), cd)
            }
        }
    }
}

/// [`Fq::apply`] of four values at a time in NEON registers: FCVTNS (see [`Quantize16`]), the
/// clamp in integers, the code back to f32. The same values as the scalar form.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
pub(crate) struct Fq4 {
    inv_scale: std::arch::aarch64::float32x4_t,
    lo: std::arch::aarch64::int32x4_t,
    hi: std::arch::aarch64::int32x4_t,
    /// The quantize's zero point minus the dequantize's.
    shift: std::arch::aarch64::int32x4_t,
    dq_scale: std::arch::aarch64::float32x4_t,
}

#[cfg(target_arch = "aarch64")]
impl Fq4 {
    #[inline(always)]
    pub(crate) fn new(fq: Fq) -> Self {
        use std::arch::aarch64::{vdupq_n_f32, vdupq_n_s32};
        let r = fq.rounder;
        // SAFETY: NEON is in the aarch64 baseline.
        unsafe {
            Fq4 {
                inv_scale: vdupq_n_f32(r.inv_scale),
                lo: vdupq_n_s32(r.lo as i32),
                hi: vdupq_n_s32(r.hi as i32),
                shift: vdupq_n_s32(r.zero_point - fq.dq_zero_point),
                dq_scale: vdupq_n_f32(fq.dq_scale),
            }
        }
    }

    #[inline(always)]
    pub(crate) fn apply(
        &self,
        v: std::arch::aarch64::float32x4_t,
    ) -> std::arch::aarch64::float32x4_t {
        use std::arch::aarch64::*;
        // SAFETY: NEON is in the aarch64 baseline; no memory access.
        unsafe {
            let r = vcvtnq_s32_f32(vmulq_f32(v, self.inv_scale));
            let q = vaddq_s32(vminq_s32(vmaxq_s32(r, self.lo), self.hi), self.shift);
            vmulq_f32(vcvtq_f32_s32(q), self.dq_scale)
        }
    }
}

multiversion! {
    /// `(quantize(x) − dq_zero_point) · dq_scale` in place.
    fn fake_quantize(fq: Fq, xs: &mut [f32]) {
        let done = fake_quantize_prefix(fq, xs);
        for x in xs[done..].iter_mut() {
            *x = fq.apply(*x);
        }
    }
}

/// [`fake_quantize`] of the leading values of `xs`, sixteen at a time on aarch64 ([`Fq4`]),
/// eight on armv7 with NEON, and how many; elsewhere none, the portable loop vectorises.
#[inline(always)]
fn fake_quantize_prefix(fq: Fq, xs: &mut [f32]) -> usize {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the aarch64 baseline; each step reads and then writes
    // xs[at..at + 16] with at + 16 <= xs.len().
    unsafe {
        use std::arch::aarch64::{float32x4x4_t, vld1q_f32_x4, vst1q_f32_x4};
        let f = Fq4::new(fq);
        let p = xs.as_mut_ptr();
        super::neon::blocks(xs.len(), |at| {
            let v = vld1q_f32_x4(p.add(at));
            let y = float32x4x4_t(f.apply(v.0), f.apply(v.1), f.apply(v.2), f.apply(v.3));
            vst1q_f32_x4(p.add(at), y);
        })
    }
    #[cfg(target_arch = "arm")]
    if super::neon32::available() {
        let k = fq.rounder.neon32(fq.dq_zero_point);
        // SAFETY: the CPU has NEON.
        return unsafe { super::neon32::fake_quantize(&k, fq.dq_scale, xs) };
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (fq, xs);
        0
    }
}

/// `v` rounded half to even and clamped to the integer bounds `[lo_f, hi_f]`; NaN gives 0.
#[inline(always)]
fn round_clamped(v: f32, lo_f: f32, hi_f: f32) -> i32 {
    // Written as selects so that they compile to SIMD compare/blend, min and max.
    let v = if v.is_nan() { 0.0 } else { v };
    let v = if v < lo_f { lo_f } else { v };
    let v = if v > hi_f { hi_f } else { v };
    // For |v| < 2^22, v + ROUNDER has a fixed exponent: its low mantissa bits are the rounded
    // integer, read back with integer arithmetic only.
    (v + ROUNDER).to_bits() as i32 - ROUNDER_BITS
}

/// A QuantizeLinear immediately followed by its DequantizeLinear (QDQ models' activation
/// "fake quantization"), computed in one pass in place: `(q − dq_zero_point) · dq_scale` with `q`
/// as [`FastQuantize`] computes it — the same arithmetic as the two ops, so bit-identical, without
/// the intermediate 8-bit tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FakeQuantize {
    quantize: FastQuantize,
    dq_zero_point: i32,
    dq_scale_bits: u32,
}

impl FakeQuantize {
    pub fn new(quantize: FastQuantize, dq_scale: f32, dq_zero_point: i32) -> Self {
        FakeQuantize {
            quantize,
            dq_zero_point,
            dq_scale_bits: dq_scale.to_bits(),
        }
    }

    /// Quantizes and dequantizes `xs` in place.
    #[inline(always)]
    pub(crate) fn apply(&self, xs: &mut [f32]) {
        self.parts().apply_all(xs)
    }

    /// The quantization this op starts with.
    pub(crate) fn quantizer(&self) -> FastQuantize {
        self.quantize
    }

    /// The same computation as a value for fused loops.
    pub(crate) fn parts(&self) -> Fq {
        Fq {
            rounder: self.quantize.rounder(),
            dq_zero_point: self.dq_zero_point,
            dq_scale: f32::from_bits(self.dq_scale_bits),
        }
    }

    /// Every code of the quantization with the value it dequantizes to: all this op can output.
    fn codes(&self) -> impl Iterator<Item = (i32, f32)> + '_ {
        let (lo, hi) = self.quantize.bounds();
        let dq = |q: i32| (q - self.dq_zero_point) as f32 * f32::from_bits(self.dq_scale_bits);
        (lo..=hi).map(move |q| (q, dq(q)))
    }

    /// The values this op can output.
    pub(crate) fn outputs(&self) -> Vec<f32> {
        self.codes().map(|(_, v)| v).collect()
    }

    /// Whether this op leaves each of `values` unchanged, bit for bit.
    pub(crate) fn fixes(&self, values: &[f32]) -> bool {
        let fq = self.parts();
        values.iter().all(|v| fq.apply(*v).to_bits() == v.to_bits())
    }

    /// Whether quantizing with `next` after this op gives, for every input, what `next` gives
    /// alone: `next` rounds to the same steps, and each of this op's outputs quantizes back to
    /// the code it came from. Checked on all the codes, so exact, not approximate.
    pub(crate) fn invisible_to(&self, next: &FastQuantize) -> bool {
        let shift = next.zero_point - self.quantize.zero_point;
        let r = next.rounder();
        self.quantize.same_steps(next) && self.codes().all(|(q, v)| r.quantize(v) == q + shift)
    }
}

/// A quantize, a byte-to-byte lookup table and a dequantize in a row — what tract makes of
/// `Q → DQ → (element-wise ops) → Q → DQ` in QDQ graphs — as one in-place f32 op:
/// `y = table[quantize(x)]` with the table holding the dequantized lookup results.
/// Bit-identical to the three ops.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizeLookup {
    quantize: FastQuantize,
    /// f32 bits of `dequantize(lut[b])` for every byte `b` (an i8 code as its two's-complement
    /// byte).
    table: Vec<u32>,
}

impl QuantizeLookup {
    /// `lut` maps quantized bytes to quantized bytes; the dequantize reads its output as i8
    /// when `signed_out`.
    pub fn new(
        quantize: FastQuantize,
        lut: &[u8],
        signed_out: bool,
        dq_scale: f32,
        dq_zero_point: i32,
    ) -> Option<QuantizeLookup> {
        (lut.len() == 256).then(|| QuantizeLookup {
            quantize,
            table: lut
                .iter()
                .map(|&b| {
                    let q = if signed_out { b as i8 as i32 } else { b as i32 };
                    ((q - dq_zero_point) as f32 * dq_scale).to_bits()
                })
                .collect(),
        })
    }
}

impl QuantizeLookup {
    /// The quantization this op starts with.
    pub(crate) fn quantizer(&self) -> FastQuantize {
        self.quantize
    }

    /// The values this op can output (its table).
    pub(crate) fn outputs(&self) -> Vec<f32> {
        self.table.iter().map(|b| f32::from_bits(*b)).collect()
    }
}

multiversion! {
    fn quantize_lookup(r: Rounder, table: &[u32], xs: &mut [f32]) {
        let table: &[u32; 256] = table.try_into().expect("256 entries");
        let done = lookup_prefix(r, table, xs);
        for x in xs[done..].iter_mut() {
            *x = f32::from_bits(table[(r.quantize(*x) as u8) as usize]);
        }
    }
}

/// `table[quantize(x)]` in place for the leading values of `xs`, sixteen at a time on aarch64,
/// and how many; elsewhere none. The table's four byte planes are each looked up with
/// [`super::neon::lookup16`] and interleaved back into f32 bits by one `vst4` (little-endian:
/// plane 0 is the low byte), instead of a scalar load per value.
#[inline(always)]
fn lookup_prefix(r: Rounder, table: &[u32; 256], xs: &mut [f32]) -> usize {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the aarch64 baseline; each step reads and then writes
    // xs[at..at + 16] with at + 16 <= xs.len().
    unsafe {
        use std::arch::aarch64::{uint8x16x4_t, vst4q_u8};
        if xs.len() < super::neon::STEP {
            return 0;
        }
        let planes: [[u8; 256]; 4] =
            std::array::from_fn(|b| std::array::from_fn(|i| table[i].to_le_bytes()[b]));
        let q = Quantize16::new(r);
        let xp = xs.as_mut_ptr();
        super::neon::blocks(xs.len(), |at| {
            let p = xp.add(at);
            let i = q.bytes(p);
            let [b0, b1, b2, b3] = planes.each_ref().map(|t| super::neon::lookup16(t, i));
            vst4q_u8(p as *mut u8, uint8x16x4_t(b0, b1, b2, b3));
        })
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (r, table, xs);
        0
    }
}

impl ElementWiseMiniOp for QuantizeLookup {
    fn name(&self) -> String {
        "QuantizeLookup".into()
    }

    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let mut view = t.to_plain_array_view_mut::<f32>()?;
        let xs = view.as_slice_mut().context("input is not contiguous")?;
        let rounder = self.quantize.rounder();
        super::par_elements(xs, |xs| quantize_lookup(rounder, &self.table, xs))
    }
}

impl ElementWiseMiniOp for FakeQuantize {
    fn name(&self) -> String {
        format!(
            "FakeQuantize{}",
            if self.quantize.signed { "I8" } else { "U8" }
        )
    }

    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let mut view = t.to_plain_array_view_mut::<f32>()?;
        let xs = view.as_slice_mut().context("input is not contiguous")?;
        super::par_elements(xs, |xs| self.apply(xs))
    }
}

impl ElementWiseMiniOp for FastQuantize {
    fn name(&self) -> String {
        format!("FastQuantize{}", if self.signed { "I8" } else { "U8" })
    }

    fn output_type(&self, _input_type: DatumType) -> Option<DatumType> {
        Some(if self.signed {
            i8::datum_type()
        } else {
            u8::datum_type()
        })
    }

    fn eval_out_of_place(&self, t: &Tensor, _out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let t = t.cast_to::<f32>()?;
        let view = t.to_plain_array_view::<f32>()?;
        let xs = view.as_slice().context("input is not contiguous")?;
        if self.signed {
            let mut out = vec![0i8; xs.len()];
            self.quantize_i8(xs, &mut out);
            Tensor::from_shape(t.shape(), &out)
        } else {
            let mut out = vec![0u8; xs.len()];
            self.quantize_u8(xs, &mut out);
            Tensor::from_shape(t.shape(), &out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::for_each_variant;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// Special values first, so that the SIMD steps see them, not only the scalar tails.
    fn samples() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e9,
            -1e9,
            f32::NAN,
            2e8,
            -2e8,
            3.4999998,
            2.5000002,
            f32::NAN,
        ];
        v.extend((-3000..3000).map(|i| i as f32 * 0.0625));
        // exact ties at every half step, both signs, and values beyond the clamp range
        v.extend((-600..600).map(|i| i as f32 + 0.5));
        v
    }

    for_each_variant! {
        fn matches_tract_scalar_definition() {
            let xs = samples();
            for (inv_scale, zp) in [
                (1.0f32, 0i32),
                (2.0, 128),
                (7.3, 128),
                (0.37, 3),
                (1.0, 255),
                (1.0, 17),
            ] {
                let mut ours = vec![0u8; xs.len()];
                FastQuantize::new(inv_scale, zp, false).run(&xs, &mut ours, |v| v as u8);
                let in_range = |x: &f32| (x * inv_scale).abs() < 2f32.powi(31) || x.is_nan();
                for (x, q) in xs.iter().zip(&ours).filter(|(x, _)| in_range(x)) {
                    assert_eq!(
                        *q,
                        quantize_linear_f32_u8(*x, inv_scale, zp),
                        "u8 x={x} s={inv_scale} zp={zp}"
                    );
                }
                let zp8 = zp.clamp(-128, 127) - 64;
                let mut ours = vec![0i8; xs.len()];
                FastQuantize::new(inv_scale, zp8, true).run(&xs, &mut ours, |v| v as i8);
                for (x, q) in xs.iter().zip(&ours).filter(|(x, _)| in_range(x)) {
                    assert_eq!(
                        *q,
                        quantize_linear_f32_i8(*x, inv_scale, zp8),
                        "i8 x={x} s={inv_scale} zp={zp8}"
                    );
                }
            }
        }
    }

    for_each_variant! {
        /// The slice quantizers (NEON on aarch64) against the scalar loop, over an odd length.
        fn slice_quantizers_match_the_scalar_loop() {
            let xs = samples();
            let xs = &xs[..xs.len() / 16 * 16 + 7];
            let quantizers = [
                (7.3f32, 128, false),
                (0.37, 3, false),
                (2.0, -64, true),
                (1.0, 255, false),
                (1.0, 0, false),
                (0.5, 127, true),
                (0.5, -128, true),
            ];
            for (inv_scale, zp, signed) in quantizers {
                let q = FastQuantize::new(inv_scale, zp, signed);
                let mut expected = vec![0u8; xs.len()];
                q.run(xs, &mut expected, |v| v as u8);
                let mut bytes = vec![0u8; xs.len()];
                q.quantize_bytes(xs, &mut bytes);
                assert_eq!(bytes, expected, "bytes s={inv_scale} zp={zp}");
                if signed {
                    let mut i8s = vec![0i8; xs.len()];
                    q.quantize_i8(xs, &mut i8s);
                    let as_bytes: Vec<u8> = i8s.iter().map(|&v| v as u8).collect();
                    assert_eq!(as_bytes, expected, "i8 s={inv_scale} zp={zp}");
                }
            }
        }
    }

    for_each_variant! {
        fn fake_quantize_equals_quantize_then_dequantize() {
            let xs = samples();
            for (inv_scale, zp, signed, dq_zp) in [
                (7.3f32, 128, false, 128),
                (0.37, 3, true, 3),
                (2.0, 0, true, 5),
                (1.0, 255, false, 0),
                (0.5, -128, true, 127),
            ] {
                let q = FastQuantize::new(inv_scale, zp, signed);
                let mut fused = xs.clone();
                FakeQuantize::new(q, 0.137, dq_zp).apply(&mut fused);
                let mut ints = vec![0i32; xs.len()];
                q.run(&xs, &mut ints, |v| v);
                for ((x, f), i) in xs.iter().zip(&fused).zip(&ints) {
                    let expected = (i - dq_zp) as f32 * 0.137;
                    assert_eq!(f.to_bits(), expected.to_bits(), "x={x}");
                }
            }
        }
    }

    /// The checks the graph passes drop a fake quantization on hold for every input where they
    /// say so: a u8 pair is invisible to its own quantizer and to its i8 form, not to one with
    /// another scale or range, nor when its dequantize disagrees with its quantize; it leaves
    /// its own outputs as they are, not another pair's.
    #[test]
    fn redundancy_checks_hold_on_every_input() {
        let xs = samples();
        let act = FastQuantize::new(20.0, 131, false);
        let fq = FakeQuantize::new(act, 0.05, 131);
        let twice: Vec<f32> = {
            let mut v = xs.clone();
            fq.apply(&mut v);
            v
        };
        let quantizers = [
            (act, true),
            (FastQuantize::new(20.0, 3, true), true),
            (FastQuantize::new(16.0, 131, false), false),
            (FastQuantize::new(20.0, 100, true), false),
        ];
        for (next, invisible) in quantizers {
            assert_eq!(fq.invisible_to(&next), invisible, "{next:?}");
            let (mut direct, mut after) = (vec![0i32; xs.len()], vec![0i32; xs.len()]);
            next.run(&xs, &mut direct, |v| v);
            next.run(&twice, &mut after, |v| v);
            assert_eq!(direct == after, invisible, "{next:?}");
        }
        assert!(!FakeQuantize::new(act, 0.07, 131).invisible_to(&act));
        assert!(fq.fixes(&fq.outputs()));
        let other = FakeQuantize::new(FastQuantize::new(10.0, 128, false), 0.1, 128);
        assert!(!fq.fixes(&other.outputs()));
    }

    for_each_variant! {
        fn quantize_lookup_equals_quantize_table_dequantize() {
            let xs = samples();
            // an arbitrary byte permutation as the table
            let lut: Vec<u8> = (0..=255u8)
                .map(|b| b.wrapping_mul(37).wrapping_add(11))
                .collect();
            for (signed_in, zp, signed_out, dq_zp) in [
                (false, 128, false, 128),
                (true, -3, true, 5),
                (false, 7, true, -1),
            ] {
                let q = FastQuantize::new(3.7, zp, signed_in);
                let mut t = tensor1(&xs);
                QuantizeLookup::new(q, &lut, signed_out, 0.071, dq_zp)
                    .unwrap()
                    .eval_in_place(&mut t, None)
                    .unwrap();
                let fused = t
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                let mut codes = vec![0i32; xs.len()];
                q.run(&xs, &mut codes, |v| v);
                for ((x, f), c) in xs.iter().zip(&fused).zip(&codes) {
                    let byte = lut[(*c as u8) as usize];
                    let v = if signed_out {
                        byte as i8 as i32
                    } else {
                        byte as i32
                    };
                    let expected = (v - dq_zp) as f32 * 0.071;
                    assert_eq!(f.to_bits(), expected.to_bits(), "x={x}");
                }
            }
        }
    }

    /// On a plan's two threads (the values split between them) the in-place ops give the
    /// values of the one-thread loop.
    #[test]
    fn threads_split_rows_to_the_same_values() {
        use crate::kernels::threads::on_threads;
        let (rows, row) = (700, 97);
        let xs: Vec<f32> = (0..rows * row)
            .map(|i| (i % 1013) as f32 * 0.37 - 150.0)
            .collect();
        let q = FastQuantize::new(0.5, 120, false);
        let lut: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(5)).collect();
        let fake = FakeQuantize::new(q, 0.25, 120);
        let lookup = QuantizeLookup::new(q, &lut, false, 0.25, 3).unwrap();
        let ops: [&dyn ElementWiseMiniOp; 2] = [&fake, &lookup];
        for op in ops {
            let mut one = Tensor::from_shape(&[rows, row], &xs).unwrap();
            op.eval_in_place(&mut one, None).unwrap();
            let mut two = Tensor::from_shape(&[rows, row], &xs).unwrap();
            on_threads(2, || op.eval_in_place(&mut two, None)).unwrap();
            assert_eq!(one, two, "{}", op.name());
        }
    }

    #[test]
    fn nan_maps_to_zero_point() {
        let mut out = [0u8; 1];
        FastQuantize::new(2.0, 10, false).run(&[f32::NAN], &mut out, |v| v as u8);
        assert_eq!(out[0], quantize_linear_f32_u8(f32::NAN, 2.0, 10));
    }
}

#[cfg(test)]
mod saturation {
    use super::*;

    #[test]
    fn huge_inputs_saturate() {
        let mut out = [0i8; 2];
        FastQuantize::new(1.0, -64, true).run(&[f32::MIN, f32::MAX], &mut out, |v| v as i8);
        assert_eq!(out, [-128, 127]);
    }
}
