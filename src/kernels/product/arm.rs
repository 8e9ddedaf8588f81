//! The 32-bit NEON kernel (armv7 boards: Pi 2/3/4 on 32-bit Pi OS, Zero 2): `VMULL.S8` +
//! `VMLAL.S8` + `VPADAL.S16`, the scheme of arm64's `SMULL` kernel on half-width registers.
//!
//! Written as assembly: the armv7 targets are built without NEON (`-neon`, for the boards
//! that lack it), the NEON intrinsics and `#[target_feature(enable = "neon")]` are not stable
//! Rust on 32-bit ARM, and `.fpu neon` lets the assembler take the instructions in a binary
//! that only runs them after [`available`] has found NEON.

use super::{store_steps, Kernel};
use crate::kernels::cpu::{self, Feature};

/// Operands are stored as bytes: `VMULL.S8` multiplies i8.
pub(super) type Elem = i8;

pub(super) fn elem(v: i8) -> i8 {
    v
}

/// A tile of 2 rows × 4 lanes in 8 accumulators (`q8`–`q15`), each holding 4 partial sums
/// along k; steps of 16 bytes, one row or lane in a `q` register.
static SMULL: Kernel = Kernel {
    name: "convnext_edge_neon32_smull_i32_2x4",
    available,
    lanes: 4,
    rows: 2,
    kstep: 16,
    tile,
    store: store_steps::<16>,
    transpose: Some((transpose_steps, 4)),
    narrow: None,
};

/// The kernel for this CPU.
pub(super) fn kernel() -> &'static Kernel {
    &SMULL
}

/// Whether this CPU runs the product (NEON).
pub fn available() -> bool {
    cpu::has(Feature::Neon)
}

/// Whether the product of `values` by any i8 operand is exact: `VMLAL.S8` adds two products
/// in i16, which overflows only for two products of −128 by −128.
pub fn exact_for(values: &[i8]) -> bool {
    !values.contains(&i8::MIN)
}

/// The first `steps` steps of a panel (16 values of k for its 4 lanes each) from the rows of
/// four bytes at `src + k · stride`: per step, 16 words loaded into `q0`–`q3`, the lanes'
/// bytes separated by two rounds of `VUZP.8`, instead of 64 byte moves.
///
/// # Safety
/// A CPU with NEON; reads `src[k · stride..][..4]` for `k < 16 · steps`; `panel` holds
/// `steps` steps.
unsafe fn transpose_steps(src: *const i8, stride: usize, steps: usize, panel: &mut [i8]) {
    assert!(panel.len() >= steps * 64);
    // SAFETY: the reads as the caller promises, the writes within `panel` (checked).
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "cmp {steps}, #0",
            "beq 2f",
            "1:",
            "vld1.32 {{d0[0]}}, [{src}], {stride}", "vld1.32 {{d0[1]}}, [{src}], {stride}",
            "vld1.32 {{d1[0]}}, [{src}], {stride}", "vld1.32 {{d1[1]}}, [{src}], {stride}",
            "vld1.32 {{d2[0]}}, [{src}], {stride}", "vld1.32 {{d2[1]}}, [{src}], {stride}",
            "vld1.32 {{d3[0]}}, [{src}], {stride}", "vld1.32 {{d3[1]}}, [{src}], {stride}",
            "vld1.32 {{d4[0]}}, [{src}], {stride}", "vld1.32 {{d4[1]}}, [{src}], {stride}",
            "vld1.32 {{d5[0]}}, [{src}], {stride}", "vld1.32 {{d5[1]}}, [{src}], {stride}",
            "vld1.32 {{d6[0]}}, [{src}], {stride}", "vld1.32 {{d6[1]}}, [{src}], {stride}",
            "vld1.32 {{d7[0]}}, [{src}], {stride}", "vld1.32 {{d7[1]}}, [{src}], {stride}",
            // Bytes 0 and 2 of each word, then 1 and 3; then each pair split again.
            "vuzp.8 q0, q1",
            "vuzp.8 q2, q3",
            "vuzp.8 q0, q2",
            "vuzp.8 q1, q3",
            "vst1.8 {{d0-d3}}, [{panel}]!",
            "vst1.8 {{d4-d7}}, [{panel}]!",
            "subs {steps}, {steps}, #1",
            "bne 1b",
            "2:",
            src = inout(reg) src => _,
            stride = in(reg) stride,
            steps = inout(reg) steps => _,
            panel = inout(reg) panel.as_mut_ptr() => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            options(nostack),
        );
    }
}

/// A row's products (its halves `$lo` and `$hi`) with the four lanes (`q0`–`q3`) into its
/// accumulators `$a0`–`$a3`, two lanes at a time through `q6` and `q7` so that each multiply's result is not read by the next
/// instruction (the A7 and A53 are in order).
macro_rules! row_products {
    ($lo:literal, $hi:literal, $a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
        concat!(
            "vmull.s8 q6, ",
            $lo,
            ", d0\n",
            "vmull.s8 q7, ",
            $lo,
            ", d2\n",
            "vmlal.s8 q6, ",
            $hi,
            ", d1\n",
            "vmlal.s8 q7, ",
            $hi,
            ", d3\n",
            "vpadal.s16 ",
            $a0,
            ", q6\n",
            "vpadal.s16 ",
            $a1,
            ", q7\n",
            "vmull.s8 q6, ",
            $lo,
            ", d4\n",
            "vmull.s8 q7, ",
            $lo,
            ", d6\n",
            "vmlal.s8 q6, ",
            $hi,
            ", d5\n",
            "vmlal.s8 q7, ",
            $hi,
            ", d7\n",
            "vpadal.s16 ",
            $a2,
            ", q6\n",
            "vpadal.s16 ",
            $a3,
            ", q7\n",
        )
    };
}

/// A row's four accumulators (each given as its two halves) reduced to its 4 sums and stored at `{out}`, which moves on a
/// row.
macro_rules! row_store {
    ($a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
        concat!(
            "vpadd.i32 d12, ",
            $a0,
            "\n",
            "vpadd.i32 d13, ",
            $a1,
            "\n",
            "vpadd.i32 d14, ",
            $a2,
            "\n",
            "vpadd.i32 d15, ",
            $a3,
            "\n",
            "vpadd.i32 d12, d12, d13\n",
            "vpadd.i32 d13, d14, d15\n",
            "vst1.32 {{d12, d13}}, [{out}], {ld}\n",
        )
    };
}

/// One tile: per step, 2 rows × 4 lanes of 16 bytes, 128 products in 24 multiply-adds and 3
/// loads. `VMULL.S8` and `VMLAL.S8` multiply 8 bytes of a row by 8 of a lane into 8 i16 sums
/// of two products, `VPADAL.S16` adds those into 4 i32.
///
/// # Safety
/// A CPU with NEON; `panel` and `rows` hold `steps` whole steps, `out` the tile; the lanes or
/// the rows are [`exact_for`].
unsafe fn tile(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
    debug_assert!(panel.len() >= steps * 64 && rows.len() >= steps * 32);
    debug_assert!(out.len() >= ld + 4);
    // SAFETY: reads `steps` steps of `panel` and `rows`, writes 2 rows of 4 values of `out`
    // at stride `ld`: within the lengths asserted above. `d0`–`d15` are declared; `d16`–`d31`
    // cannot be (a build without NEON has no such registers, and one with it may keep values
    // there), so they are saved on the stack and restored.
    unsafe {
        std::arch::asm!(
            ".fpu neon",
            "vpush {{d16-d31}}",
            "vmov.i32 q8, #0", "vmov.i32 q9, #0", "vmov.i32 q10, #0", "vmov.i32 q11, #0",
            "vmov.i32 q12, #0", "vmov.i32 q13, #0", "vmov.i32 q14, #0", "vmov.i32 q15, #0",
            "cmp {steps}, #0",
            "beq 2f",
            "1:",
            "vld1.8 {{d0-d3}}, [{panel}]!",
            "vld1.8 {{d4-d7}}, [{panel}]!",
            "vld1.8 {{d8-d11}}, [{rows}]!",
            row_products!("d8", "d9", "q8", "q9", "q10", "q11"),
            row_products!("d10", "d11", "q12", "q13", "q14", "q15"),
            "subs {steps}, {steps}, #1",
            "bne 1b",
            "2:",
            row_store!("d16, d17", "d18, d19", "d20, d21", "d22, d23"),
            row_store!("d24, d25", "d26, d27", "d28, d29", "d30, d31"),
            "vpop {{d16-d31}}",
            panel = inout(reg) panel.as_ptr() => _,
            rows = inout(reg) rows.as_ptr() => _,
            steps = inout(reg) steps => _,
            out = inout(reg) out.as_mut_ptr() => _,
            ld = in(reg) ld * 4,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _, out("d4") _, out("d5") _,
            out("d6") _, out("d7") _, out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
        );
    }
}
