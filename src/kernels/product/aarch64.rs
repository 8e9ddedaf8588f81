//! The NEON kernels: `SMULL` on every arm64 CPU, `SDOT` where the dot-product extension is.

use std::arch::aarch64::*;

use super::{store_steps, Kernel};
use crate::kernels::cpu::{self, Feature};

/// Operands are stored as bytes: `SMULL` and `SDOT` multiply i8.
pub(super) type Elem = i8;

pub(super) fn elem(v: i8) -> i8 {
    v
}
/// `SMULL` + `SMLAL2` + `SADALP`: a tile of 4 rows × 4 lanes in 16 accumulators, each
/// holding 4 partial sums along k (steps of one 16-byte register).
static SMULL: Kernel = Kernel {
    name: "convnext_edge_neon_smull_i32_4x4",
    available,
    lanes: 4,
    rows: 4,
    kstep: 16,
    tile: tile_smull,
    store: store_steps::<16>,
    transpose: Some((transpose_steps, 4)),
    narrow: None,
};

/// `SDOT` by element: a tile of 8 rows × 12 lanes in 24 accumulators of 4 lanes each,
/// steps of 4 values of k (the 4 products one `SDOT` lane adds).
static SDOT: Kernel = Kernel {
    name: "convnext_edge_neon_sdot_i32_8x12",
    available: dot,
    lanes: 12,
    rows: 8,
    kstep: 4,
    tile: tile_sdot,
    store: store_steps::<4>,
    transpose: Some((zip_steps, 16)),
    narrow: Some((4, tile_sdot_4)),
};

/// The kernel for this CPU: `SDOT` where it has it, else `SMULL`.
pub(super) fn kernel() -> &'static Kernel {
    if dot() {
        &SDOT
    } else {
        &SMULL
    }
}

/// The dot-product extension (`SDOT`; Cortex-A55/A76 and later: Pi 5, Orin, Xavier).
fn dot() -> bool {
    cpu::has(Feature::DotProd)
}

/// Lane `j`'s 16 values of k from the table of [`transpose_step`]: byte 16·(k / 4) +
/// 4·(k % 4) + j.
const GATHER: [[u8; 16]; 4] = {
    let mut idx = [[0u8; 16]; 4];
    let mut j = 0;
    while j < 4 {
        let mut k = 0;
        while k < 16 {
            idx[j][k] = (16 * (k / 4) + 4 * (k % 4) + j) as u8;
            k += 1;
        }
        j += 1;
    }
    idx
};

/// The first `steps` steps (of `len` bytes) of a panel, each written by `step` from the
/// `kstep` rows of `src` (at `stride`) after the previous step's.
#[inline(always)]
fn each_step(
    (len, kstep): (usize, usize),
    (src, stride, steps): (*const i8, usize, usize),
    panel: &mut [i8],
    step: impl Fn(*const i8, &mut [i8]),
) {
    for (s, out) in panel.chunks_exact_mut(len).take(steps).enumerate() {
        step(src.wrapping_add(s * kstep * stride), out)
    }
}

/// [`transpose_step`] for the first `steps` steps of an [`SMULL`] panel.
///
/// # Safety
/// Reads `src[k · stride..][..4]` for `k < 16 · steps`.
unsafe fn transpose_steps(src: *const i8, stride: usize, steps: usize, panel: &mut [i8]) {
    // SAFETY: as the caller promises.
    each_step((64, 16), (src, stride, steps), panel, |p, out| unsafe {
        transpose_step(p, stride, out)
    })
}

/// [`zip_step`] for the first `steps` steps of an [`SDOT`] panel.
///
/// # Safety
/// Reads `src[k · stride..][..16]` for `k < 4 · steps`.
unsafe fn zip_steps(src: *const i8, stride: usize, steps: usize, panel: &mut [i8]) {
    // SAFETY: as the caller promises.
    each_step((48, 4), (src, stride, steps), panel, |p, out| unsafe {
        zip_step(p, stride, out)
    })
}

/// One whole step of an [`SMULL`] panel (16 values of k for its 4 lanes) from the 16 rows
/// of four bytes at `src + k · stride`: the rows' words loaded into four registers, then
/// each lane's bytes gathered from them by one `TBL`, instead of 64 byte moves.
///
/// # Safety
/// Reads `src[k · stride..][..4]` for `k < 16`.
#[inline(always)]
unsafe fn transpose_step(src: *const i8, stride: usize, step: &mut [i8]) {
    assert_eq!(step.len(), 64);
    // SAFETY: the reads as the caller promises, the store into `step` (checked).
    unsafe {
        let word = |k: usize| (src.add(k * stride) as *const u32).read_unaligned();
        let quad = |k: usize| {
            let v = vsetq_lane_u32::<0>(word(k), vdupq_n_u32(0));
            let v = vsetq_lane_u32::<1>(word(k + 1), v);
            let v = vsetq_lane_u32::<2>(word(k + 2), v);
            vreinterpretq_u8_u32(vsetq_lane_u32::<3>(word(k + 3), v))
        };
        let table = uint8x16x4_t(quad(0), quad(4), quad(8), quad(12));
        let lane = |j: usize| vqtbl4q_u8(table, vld1q_u8(GATHER[j].as_ptr()));
        let lanes = uint8x16x4_t(lane(0), lane(1), lane(2), lane(3));
        vst1q_u8_x4(step.as_mut_ptr() as *mut u8, lanes);
    }
}

/// One whole step of an [`SDOT`] panel (4 values of k for its 12 lanes) from the 4 rows
/// of 16 bytes at `src + k · stride`, interleaved so that each lane's 4 bytes are adjacent.
///
/// # Safety
/// Reads `src[k · stride..][..16]` for `k < 4`.
#[inline(always)]
unsafe fn zip_step(src: *const i8, stride: usize, step: &mut [i8]) {
    assert_eq!(step.len(), 48);
    // SAFETY: the reads as the caller promises, the store into `step` (checked).
    unsafe {
        let row = |k: usize| vld1q_s8(src.add(k * stride));
        let [q0, q1, q2, _] = crate::kernels::neon::interleave4(row(0), row(1), row(2), row(3));
        vst1q_s8_x3(step.as_mut_ptr(), int8x16x3_t(q0, q1, q2));
    }
}

/// Whether this CPU runs the product: every aarch64 CPU has NEON.
pub fn available() -> bool {
    true
}

/// Whether the product of `values` by any i8 operand is exact: `SDOT` adds in i32, but
/// `SMLAL2` adds two products in i16, which overflows only for two products of −128 by
/// −128.
pub fn exact_for(values: &[i8]) -> bool {
    dot() || !values.contains(&i8::MIN)
}

/// One [`SMULL`] tile: `SMULL` + `SMLAL2` multiply 16 bytes of a row by 16 of a lane into
/// 8 i16 sums of two products, `SADALP` adds those into 4 i32; each output's four partial
/// sums are added at the end.
///
/// # Safety
/// `panel` and `rows` hold `steps` whole steps, `out` the tile; the lanes or the rows are
/// [`exact_for`].
unsafe fn tile_smull(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
    debug_assert!(panel.len() >= steps * 64 && rows.len() >= steps * 64);
    debug_assert!(out.len() >= 3 * ld + 4);
    // SAFETY: all pointer reads and writes are within the lengths the caller promises (the
    // driver asserts them once per block; checked again here in debug builds).
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 4]; 4];
        for s in 0..steps {
            let l = vld1q_s8_x4(panel.as_ptr().add(s * 64));
            let x = vld1q_s8_x4(rows.as_ptr().add(s * 64));
            for (acc, x) in acc.iter_mut().zip([x.0, x.1, x.2, x.3]) {
                for (acc, lane) in acc.iter_mut().zip([l.0, l.1, l.2, l.3]) {
                    let pairs = vmlal_high_s8(vmull_s8(vget_low_s8(x), vget_low_s8(lane)), x, lane);
                    *acc = vpadalq_s16(*acc, pairs);
                }
            }
        }
        for (r, [a0, a1, a2, a3]) in acc.into_iter().enumerate() {
            let sums = vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
            vst1q_s32(out.as_mut_ptr().add(r * ld), sums);
        }
    }
}

/// One step of [`tile_sdot`]: 3 registers of lanes, 2 of rows, 24 `SDOT`.
macro_rules! sdot_step {
    () => {
        concat!(
            "ld1 {{v0.16b, v1.16b, v2.16b}}, [{panel}], #48\n",
            "ld1 {{v3.16b, v4.16b}}, [{rows}], #32\n",
            "sdot v8.4s, v0.16b, v3.4b[0]\n",
            "sdot v9.4s, v1.16b, v3.4b[0]\n",
            "sdot v10.4s, v2.16b, v3.4b[0]\n",
            "sdot v11.4s, v0.16b, v3.4b[1]\n",
            "sdot v12.4s, v1.16b, v3.4b[1]\n",
            "sdot v13.4s, v2.16b, v3.4b[1]\n",
            "sdot v14.4s, v0.16b, v3.4b[2]\n",
            "sdot v15.4s, v1.16b, v3.4b[2]\n",
            "sdot v16.4s, v2.16b, v3.4b[2]\n",
            "sdot v17.4s, v0.16b, v3.4b[3]\n",
            "sdot v18.4s, v1.16b, v3.4b[3]\n",
            "sdot v19.4s, v2.16b, v3.4b[3]\n",
            "sdot v20.4s, v0.16b, v4.4b[0]\n",
            "sdot v21.4s, v1.16b, v4.4b[0]\n",
            "sdot v22.4s, v2.16b, v4.4b[0]\n",
            "sdot v23.4s, v0.16b, v4.4b[1]\n",
            "sdot v24.4s, v1.16b, v4.4b[1]\n",
            "sdot v25.4s, v2.16b, v4.4b[1]\n",
            "sdot v26.4s, v0.16b, v4.4b[2]\n",
            "sdot v27.4s, v1.16b, v4.4b[2]\n",
            "sdot v28.4s, v2.16b, v4.4b[2]\n",
            "sdot v29.4s, v0.16b, v4.4b[3]\n",
            "sdot v30.4s, v1.16b, v4.4b[3]\n",
            "sdot v31.4s, v2.16b, v4.4b[3]\n",
        )
    };
}

/// One [`SDOT`] tile. A step is 3 registers of lanes (4 lanes × 4 bytes each) and 2 of
/// rows (4 rows × 4 bytes); `SDOT` by element multiplies a lane register by one row's 4
/// bytes, adding 16 products into 4 outputs: 24 `SDOT` and 2 loads per 384 products, where
/// a 4 × 4 tile with one output per accumulator took 16 and 5 per 256, and reduced each
/// accumulator at the end. Accumulator `v(8 + 3·r + q)` holds row `r`'s lanes `4q..4q + 4`.
/// The loop does two steps (an odd one first), so that its count and branch are paid once
/// per 48 `SDOT`. Written as assembly: the intrinsic is not stable Rust yet, and with an
/// accumulator per `asm!` the compiler spilled a third of them.
///
/// # Safety
/// A CPU with SDOT; `panel` and `rows` hold `steps` whole steps, `out` the tile.
#[target_feature(enable = "dotprod")]
unsafe fn tile_sdot(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
    debug_assert!(panel.len() >= steps * 48 && rows.len() >= steps * 32);
    debug_assert!(out.len() >= 7 * ld + 12);
    // SAFETY: reads `steps` steps of `panel` and `rows`, writes 8 rows of 12 values of
    // `out` at stride `ld`: within the lengths asserted above.
    unsafe {
        std::arch::asm!(
            "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
            "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
            "movi v16.4s, #0", "movi v17.4s, #0", "movi v18.4s, #0", "movi v19.4s, #0",
            "movi v20.4s, #0", "movi v21.4s, #0", "movi v22.4s, #0", "movi v23.4s, #0",
            "movi v24.4s, #0", "movi v25.4s, #0", "movi v26.4s, #0", "movi v27.4s, #0",
            "movi v28.4s, #0", "movi v29.4s, #0", "movi v30.4s, #0", "movi v31.4s, #0",
            "cbz {steps}, 2f",
            "tbz {steps}, #0, 1f",
            sdot_step!(),
            "subs {steps}, {steps}, #1",
            "b.eq 2f",
            "1:",
            sdot_step!(),
            sdot_step!(),
            "subs {steps}, {steps}, #2",
            "b.ne 1b",
            "2:",
            "st1 {{v8.4s, v9.4s, v10.4s}}, [{out}], {ld}",
            "st1 {{v11.4s, v12.4s, v13.4s}}, [{out}], {ld}",
            "st1 {{v14.4s, v15.4s, v16.4s}}, [{out}], {ld}",
            "st1 {{v17.4s, v18.4s, v19.4s}}, [{out}], {ld}",
            "st1 {{v20.4s, v21.4s, v22.4s}}, [{out}], {ld}",
            "st1 {{v23.4s, v24.4s, v25.4s}}, [{out}], {ld}",
            "st1 {{v26.4s, v27.4s, v28.4s}}, [{out}], {ld}",
            "st1 {{v29.4s, v30.4s, v31.4s}}, [{out}], {ld}",
            panel = inout(reg) panel.as_ptr() => _,
            rows = inout(reg) rows.as_ptr() => _,
            steps = inout(reg) steps => _,
            out = inout(reg) out.as_mut_ptr() => _,
            ld = in(reg) ld * 4,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _,
            out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _,
            out("v23") _, out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        );
    }
}

/// [`tile_sdot`] for the first 4 lanes of its panel alone (the panel's first register of
/// each step): 8 `SDOT` and 2 loads per step, where the whole tile takes 24 and 2. Only
/// those 4 lanes of each row of `out` are written.
///
/// # Safety
/// As [`tile_sdot`].
#[target_feature(enable = "dotprod")]
unsafe fn tile_sdot_4(panel: &[i8], rows: &[i8], steps: usize, out: &mut [i32], ld: usize) {
    debug_assert!(panel.len() >= steps * 48 && rows.len() >= steps * 32);
    debug_assert!(out.len() >= 7 * ld + 4);
    // SAFETY: reads the first 16 bytes of each of `steps` steps of `panel` and `steps`
    // steps of `rows`, writes 8 rows of 4 values of `out` at stride `ld`: within the
    // lengths asserted above.
    unsafe {
        std::arch::asm!(
            "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
            "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
            "cbz {steps}, 2f",
            "1:",
            "ld1 {{v0.16b}}, [{panel}], {step}",
            "ld1 {{v3.16b, v4.16b}}, [{rows}], #32",
            "sdot v8.4s, v0.16b, v3.4b[0]",
            "sdot v9.4s, v0.16b, v3.4b[1]",
            "sdot v10.4s, v0.16b, v3.4b[2]",
            "sdot v11.4s, v0.16b, v3.4b[3]",
            "sdot v12.4s, v0.16b, v4.4b[0]",
            "sdot v13.4s, v0.16b, v4.4b[1]",
            "sdot v14.4s, v0.16b, v4.4b[2]",
            "sdot v15.4s, v0.16b, v4.4b[3]",
            "subs {steps}, {steps}, #1",
            "b.ne 1b",
            "2:",
            "st1 {{v8.4s}}, [{out}], {ld}",
            "st1 {{v9.4s}}, [{out}], {ld}",
            "st1 {{v10.4s}}, [{out}], {ld}",
            "st1 {{v11.4s}}, [{out}], {ld}",
            "st1 {{v12.4s}}, [{out}], {ld}",
            "st1 {{v13.4s}}, [{out}], {ld}",
            "st1 {{v14.4s}}, [{out}], {ld}",
            "st1 {{v15.4s}}, [{out}], {ld}",
            panel = inout(reg) panel.as_ptr() => _,
            rows = inout(reg) rows.as_ptr() => _,
            steps = inout(reg) steps => _,
            out = inout(reg) out.as_mut_ptr() => _,
            ld = in(reg) ld * 4,
            step = in(reg) 48usize,
            out("v0") _, out("v3") _, out("v4") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _,
            out("v13") _, out("v14") _, out("v15") _,
            options(nostack),
        );
    }
}
