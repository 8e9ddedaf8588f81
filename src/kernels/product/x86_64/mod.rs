//! The AVX2 kernel: both operands widened to i16 when packed, pairs multiplied by `vpmaddwd`.

use std::arch::x86_64::*;

use super::{store_steps, Kernel};
use crate::kernels::cpu::{self, Feature};

pub mod amx;
mod filled;
pub mod vnni;

/// Operands are stored widened: `vpmaddwd` multiplies i16.
pub(super) type Elem = i16;

pub(super) fn elem(v: i8) -> i16 {
    v as i16
}
/// Lanes per panel (two registers of 8 i32).
const LANES: usize = 16;
/// Values of k per step: the pair `vpmaddwd` adds.
const KSTEP: usize = 2;
/// Rows per tile.
const ROWS: usize = 6;
static MADD: Kernel = Kernel {
    name: "convnext_edge_avx2_madd_i32_6x16",
    available,
    lanes: LANES,
    rows: ROWS,
    kstep: KSTEP,
    tile,
    store: store_steps::<KSTEP>,
    transpose: None,
    narrow: None,
};

/// The kernel for this CPU.
pub(super) fn kernel() -> &'static Kernel {
    &MADD
}

/// Whether this CPU runs the product (AVX2).
pub fn available() -> bool {
    cpu::has(Feature::Avx2)
}

/// Whether the product of `values` by any i8 operand is exact: always, in i32.
pub fn exact_for(_values: &[i8]) -> bool {
    true
}

/// One tile: `ROWS` rows (a panel of `steps` pairs) by the panel's `LANES` lanes into
/// `out` (`ROWS` rows at stride `ld`).
///
/// # Safety
/// AVX2; `panel` and `rows` hold `steps` whole steps, `out` the tile.
#[target_feature(enable = "avx2")]
unsafe fn tile(panel: &[i16], rows: &[i16], steps: usize, out: &mut [i32], ld: usize) {
    debug_assert!(panel.len() >= steps * KSTEP * LANES && rows.len() >= steps * KSTEP * ROWS);
    debug_assert!(out.len() >= (ROWS - 1) * ld + LANES);
    let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
    let lp = panel.as_ptr();
    let rp = rows.as_ptr();
    // SAFETY: all pointer reads and writes are within the lengths the caller promises (the
    // driver asserts them once per block; checked again here in debug builds).
    unsafe {
        for s in 0..steps {
            let v0 = _mm256_loadu_si256(lp.add(s * KSTEP * LANES) as *const __m256i);
            let v1 = _mm256_loadu_si256(lp.add(s * KSTEP * LANES + LANES) as *const __m256i);
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (rp.add((s * ROWS + r) * KSTEP) as *const i32).read_unaligned();
                let b = _mm256_set1_epi32(pair);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(v0, b));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(v1, b));
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = out.as_mut_ptr().add(r * ld);
            _mm256_storeu_si256(o as *mut __m256i, acc[0]);
            _mm256_storeu_si256(o.add(8) as *mut __m256i, acc[1]);
        }
    }
}
