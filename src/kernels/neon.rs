//! NEON building blocks shared by the aarch64 paths of the byte-table kernels.

use std::arch::aarch64::{uint8x16_t, vdupq_n_u8, vld1q_u8_x4, vqtbl4q_u8, vqtbx4q_u8, vsubq_u8};

/// `table[i]` for each of the sixteen bytes of `i`: TBL on the table's first 64-byte quarter,
/// then TBX on the other three with the index moved down by 64 each time (TBX keeps the lanes
/// whose index is outside its quarter), instead of a load, a dependent load and a store per
/// byte. Where a loop calls it with one table, the compiler keeps the table in registers.
///
/// # Safety
/// NEON only, which every aarch64 CPU has; the loads read the table's 256 bytes.
#[inline(always)]
pub(crate) unsafe fn lookup16(table: &[u8; 256], i: uint8x16_t) -> uint8x16_t {
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
