//! NEON building blocks shared by the aarch64 paths of the byte-table kernels.

use std::arch::aarch64::{
    int8x16_t, uint8x16_t, vdupq_n_u8, vld1q_u8_x4, vqtbl4q_u8, vqtbx4q_u8, vreinterpretq_s16_s8,
    vreinterpretq_s8_s16, vsubq_u8, vzip1q_s16, vzip1q_s8, vzip2q_s16, vzip2q_s8,
};

/// `table[i]` for each of the sixteen bytes of `i`: TBL on the table's first 64-byte quarter,
/// then TBX on the other three with the index moved down by 64 each time (TBX keeps the lanes
/// whose index is outside its quarter), instead of a load, a dependent load and a store per
/// byte. Where a loop calls it with one table, the compiler keeps the table in registers.
///
/// # Safety
/// NEON only, which every aarch64 CPU has; the loads read the table's 256 bytes.
#[inline(always)]
pub(crate) unsafe fn lookup16(table: &[u8; 256], i: uint8x16_t) -> uint8x16_t {
    // SAFETY: NEON is in the aarch64 baseline; the loads read the table's 256 bytes.
    unsafe {
        let t = table.as_ptr();
        let quarter = vdupq_n_u8(64);
        let mut i = i;
        let mut r = vqtbl4q_u8(vld1q_u8_x4(t), i);
        for q in [64, 128, 192] {
            i = vsubq_u8(i, quarter);
            r = vqtbx4q_u8(r, vld1q_u8_x4(t.add(q)), i);
        }
        r
    }
}

/// Values per step of the NEON loops.
pub(crate) const STEP: usize = 16;

/// Calls `step(at)` for each whole block of [`STEP`] values in `0..n` and returns how many
/// values that covered; the caller finishes the rest with its portable loop.
#[inline(always)]
pub(crate) fn blocks(n: usize, mut step: impl FnMut(usize)) -> usize {
    let done = n / STEP * STEP;
    (0..done).step_by(STEP).for_each(&mut step);
    done
}

/// Four registers of 16 bytes interleaved by byte: lane `i`'s four bytes `r0[i], r1[i], r2[i],
/// r3[i]` side by side, lanes 0–3 in the first register, 4–7 in the second and so on. What
/// `SDOT` reads: four values of k for each of its four i32 lanes.
#[inline(always)]
pub(crate) fn interleave4(
    r0: int8x16_t,
    r1: int8x16_t,
    r2: int8x16_t,
    r3: int8x16_t,
) -> [int8x16_t; 4] {
    // SAFETY: NEON only, which every aarch64 CPU has; no memory access.
    unsafe {
        let (low01, low23) = (vzip1q_s8(r0, r1), vzip1q_s8(r2, r3));
        let (high01, high23) = (vzip2q_s8(r0, r1), vzip2q_s8(r2, r3));
        let pairs = |a: int8x16_t, b: int8x16_t| {
            let (a, b) = (vreinterpretq_s16_s8(a), vreinterpretq_s16_s8(b));
            [
                vreinterpretq_s8_s16(vzip1q_s16(a, b)),
                vreinterpretq_s8_s16(vzip2q_s16(a, b)),
            ]
        };
        let [q0, q1] = pairs(low01, low23);
        let [q2, q3] = pairs(high01, high23);
        [q0, q1, q2, q3]
    }
}
