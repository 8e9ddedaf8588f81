//! NEON loops of the armv7 build: the element-wise steps around the integer product (the
//! epilogue's `(acc + offset) · scale + bias`, quantization to bytes, fake quantization) and
//! the depthwise convolution's 16 outputs of a row.
//! The build targets armv7 without NEON, where the compiler keeps these loops scalar (VFP), so
//! they are assembly behind [`available`] (see `product/arm.rs` for why not intrinsics).
//!
//! Each computes what the portable loop computes, bit for bit: the same operations in the same
//! order, each rounded to nearest even as VFP does, and the quantization by the same
//! `v + 1.5 · 2²³` rounding. NEON flushes subnormal results to zero where VFP keeps them; a
//! subnormal only ever meets that rounding constant, which absorbs it either way.
//!
//! Each handles whole steps of [`STEP`] values and returns how many; the caller's portable loop
//! does the rest.

use crate::kernels::cpu::{self, Feature};

/// Values per step.
pub(crate) const STEP: usize = 8;

/// Whether this CPU has NEON.
pub(crate) fn available() -> bool {
    cpu::has(Feature::Neon)
}

/// Constants of the rounding step, four copies each, as the loops load them: `x · inv_scale`
/// (NaN to 0), clamped to `[lo, hi]`, plus `1.5 · 2²³`, whose bits less `shift` are the code
/// (the zero point and the constant's bits folded into `shift`).
#[repr(C)]
pub(crate) struct RoundConsts {
    pub(crate) inv_scale: [f32; 4],
    pub(crate) lo: [f32; 4],
    pub(crate) hi: [f32; 4],
    pub(crate) rounder: [f32; 4],
    pub(crate) shift: [i32; 4],
}

/// A step's 8 values in `q0`, `q1` rounded to their codes, in place (uses `q2`, `q3`, and the
/// constants in `q11`–`q15`).
macro_rules! round_codes {
    () => {
        concat!(
            "vmul.f32 q0, q0, q11\n",
            "vmul.f32 q1, q1, q11\n",
            "vceq.f32 q2, q0, q0\n",
            "vceq.f32 q3, q1, q1\n",
            "vand q0, q0, q2\n",
            "vand q1, q1, q3\n",
            "vmax.f32 q0, q0, q12\n",
            "vmax.f32 q1, q1, q12\n",
            "vmin.f32 q0, q0, q13\n",
            "vmin.f32 q1, q1, q13\n",
            "vadd.f32 q0, q0, q14\n",
            "vadd.f32 q1, q1, q14\n",
            "vsub.i32 q0, q0, q15\n",
            "vsub.i32 q1, q1, q15\n",
        )
    };
}

/// Loads the [`RoundConsts`] at `{k}` into `q11`–`q15`.
macro_rules! load_round_consts {
    () => {
        concat!(
            "vld1.32 {{d22-d25}}, [{k}]!\n",
            "vld1.32 {{d26-d29}}, [{k}]!\n",
            "vld1.32 {{d30-d31}}, [{k}]\n",
        )
    };
}

/// `ys[i]` = the byte of the code of `xs[i]` (two's complement for a signed one) for the leading
/// whole steps; returns how many.
///
/// # Safety
/// A CPU with NEON ([`available`]).
pub(crate) unsafe fn quantize_bytes(k: &RoundConsts, xs: &[f32], ys: &mut [u8]) -> usize {
    let steps = xs.len().min(ys.len()) / STEP;
    // SAFETY: reads `steps` steps of `xs` and the constants, writes `steps` steps of `ys`.
    // d16-d31 cannot be declared clobbered in a build without NEON: saved and restored.
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "vpush {{d16-d31}}",
            load_round_consts!(),
            "cmp {steps}, #0",
            "beq 2f",
            "1:",
            "vld1.32 {{d0-d3}}, [{xs}]!",
            round_codes!(),
            "vmovn.i32 d0, q0",
            "vmovn.i32 d1, q1",
            "vmovn.i16 d0, q0",
            "vst1.8 {{d0}}, [{ys}]!",
            "subs {steps}, {steps}, #1",
            "bne 1b",
            "2:",
            "vpop {{d16-d31}}",
            k = inout(reg) k as *const RoundConsts => _,
            xs = inout(reg) xs.as_ptr() => _,
            ys = inout(reg) ys.as_mut_ptr() => _,
            steps = inout(reg) steps => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
        );
    }
    steps * STEP
}

/// `x = (code(x) − dq_zero_point) · dq_scale` in place for the leading whole steps, with
/// `k.shift` holding the dequantization's zero point as well; returns how many.
///
/// # Safety
/// A CPU with NEON ([`available`]).
pub(crate) unsafe fn fake_quantize(k: &RoundConsts, dq_scale: f32, xs: &mut [f32]) -> usize {
    let steps = xs.len() / STEP;
    // SAFETY: reads and writes `steps` steps of `xs`, reads the constants; d16-d31 saved and
    // restored as in `quantize_bytes`.
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "vpush {{d16-d31}}",
            load_round_consts!(),
            "vdup.32 q10, {dq}",
            "cmp {steps}, #0",
            "beq 2f",
            "1:",
            "vld1.32 {{d0-d3}}, [{xs}]",
            round_codes!(),
            "vcvt.f32.s32 q0, q0",
            "vcvt.f32.s32 q1, q1",
            "vmul.f32 q0, q0, q10",
            "vmul.f32 q1, q1, q10",
            "vst1.32 {{d0-d3}}, [{xs}]!",
            "subs {steps}, {steps}, #1",
            "bne 1b",
            "2:",
            "vpop {{d16-d31}}",
            k = inout(reg) k as *const RoundConsts => _,
            xs = inout(reg) xs.as_mut_ptr() => _,
            steps = inout(reg) steps => _,
            dq = in(reg) dq_scale.to_bits(),
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
        );
    }
    steps * STEP
}

/// `out[i] = (acc[i] + offset) as f32 · scale + bias` for the leading whole steps; returns how
/// many.
///
/// # Safety
/// A CPU with NEON ([`available`]).
pub(crate) unsafe fn affine(
    acc: &[i32],
    out: &mut [f32],
    offset: i32,
    scale: f32,
    bias: f32,
) -> usize {
    let steps = acc.len().min(out.len()) / STEP;
    // SAFETY: reads `steps` steps of `acc`, writes `steps` steps of `out`; only `d0`-`d15`,
    // declared.
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "vdup.32 q4, {offset}",
            "vdup.32 q5, {scale}",
            "vdup.32 q6, {bias}",
            "cmp {steps}, #0",
            "beq 2f",
            "1:",
            "vld1.32 {{d0-d3}}, [{acc}]!",
            "vadd.i32 q0, q0, q4",
            "vadd.i32 q1, q1, q4",
            "vcvt.f32.s32 q0, q0",
            "vcvt.f32.s32 q1, q1",
            "vmul.f32 q0, q0, q5",
            "vmul.f32 q1, q1, q5",
            "vadd.f32 q0, q0, q6",
            "vadd.f32 q1, q1, q6",
            "vst1.32 {{d0-d3}}, [{out}]!",
            "subs {steps}, {steps}, #1",
            "bne 1b",
            "2:",
            acc = inout(reg) acc.as_ptr() => _,
            out = inout(reg) out.as_mut_ptr() => _,
            steps = inout(reg) steps => _,
            offset = in(reg) offset,
            scale = in(reg) scale.to_bits(),
            bias = in(reg) bias.to_bits(),
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _, out("d12") _, out("d13") _,
            options(nostack),
        );
    }
    steps * STEP
}

/// 16 outputs of a depthwise row: `bias` plus each of the `kh × kw` taps (row-major in `taps`)
/// times its input window, in that order, each product rounded and then added as the portable
/// loop does (`VMLA` is not fused). `rows` starts at the first output's first input, a row every
/// `stride` values.
///
/// # Safety
/// A CPU with NEON ([`available`]); `kh, kw ≥ 1`, `taps` holds `kh · kw` values and `rows`
/// `(kh − 1) · stride + kw − 1 + 16`.
pub(crate) unsafe fn depthwise16(
    rows: &[f32],
    stride: usize,
    (kh, kw): (usize, usize),
    taps: &[f32],
    bias: f32,
) -> [f32; 16] {
    debug_assert!(kh >= 1 && kw >= 1 && taps.len() >= kh * kw);
    debug_assert!(rows.len() >= (kh - 1) * stride + kw - 1 + 16);
    let mut out = [0f32; 16];
    // SAFETY: reads `kh · kw` taps and, per tap, 16 values of `rows` at its row and column
    // (within the length the caller promises); writes the 16 of `out`. Only `d0`-`d15`,
    // declared.
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "vdup.32 q4, {bias}",
            "vmov q5, q4",
            "vmov q6, q4",
            "vmov q7, q4",
            "1:",
            "mov {col}, {row}",
            "mov {j}, {kw}",
            "2:",
            "vld1.32 {{d0[0]}}, [{taps}]!",
            "vld1.32 {{d2-d5}}, [{col}]!",
            "vmla.f32 q4, q1, d0[0]",
            "vmla.f32 q5, q2, d0[0]",
            "vld1.32 {{d2-d5}}, [{col}]",
            "vmla.f32 q6, q1, d0[0]",
            "vmla.f32 q7, q2, d0[0]",
            "sub {col}, {col}, #28",
            "subs {j}, {j}, #1",
            "bne 2b",
            "add {row}, {row}, {stride}",
            "subs {kh}, {kh}, #1",
            "bne 1b",
            "vst1.32 {{d8-d11}}, [{out}]!",
            "vst1.32 {{d12-d15}}, [{out}]",
            row = inout(reg) rows.as_ptr() => _,
            taps = inout(reg) taps.as_ptr() => _,
            kh = inout(reg) kh => _,
            out = inout(reg) out.as_mut_ptr() => _,
            kw = in(reg) kw,
            stride = in(reg) stride * 4,
            bias = in(reg) bias.to_bits(),
            col = out(reg) _,
            j = out(reg) _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _, out("d4") _, out("d5") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _, out("d12") _, out("d13") _,
            out("d14") _, out("d15") _,
            options(nostack),
        );
    }
    out
}
