//! The 7x7 sums of one channels-first plane on `SDOT`: four windows of a row per register,
//! a row of weights against them (see the parent module's docs).

use std::arch::aarch64::*;

use super::{span, windows_per_row, Geometry, BLOCK, WINDOWS_PER_LOAD};

/// Byte `i` of window `j` (of the 4 a register holds) is byte `j + i` of the row.
const WINDOW: [u8; 16] = [0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6];

/// Expands every padded row into its windows (see the module docs), 12 per 16-byte load.
///
/// # Safety
/// None beyond the checked sizes: `padded` holds `g.ph` rows of `g.row` bytes, `windows`
/// `g.ph` rows of windows.
#[inline(always)]
unsafe fn expand(padded: &[i8], g: Geometry, windows: &mut [i8]) {
    let n = windows_per_row(span(g.ow));
    assert!(padded.len() >= g.ph * g.row && windows.len() >= g.ph * n * 4);
    assert!(n + 16 - WINDOWS_PER_LOAD <= g.row);
    // SAFETY: loads of 16 bytes from `x ≤ n − 12` in a row of at least `n + 4` bytes,
    // stores of 48 within a row of windows (asserted above).
    unsafe {
        let idx = vld1q_u8(WINDOW.as_ptr());
        let (idx4, idx8) = (vaddq_u8(idx, vdupq_n_u8(4)), vaddq_u8(idx, vdupq_n_u8(8)));
        for y in 0..g.ph {
            let src = padded.as_ptr().add(y * g.row);
            let dst = windows.as_mut_ptr().add(y * n * 4);
            for x in (0..n).step_by(WINDOWS_PER_LOAD) {
                let v = vld1q_s8(src.add(x));
                let w = int8x16x3_t(vqtbl1q_s8(v, idx), vqtbl1q_s8(v, idx4), vqtbl1q_s8(v, idx8));
                vst1q_s8_x3(dst.add(x * 4), w);
            }
        }
    }
}

/// The sums of one block of [`BLOCK`] outputs in each of `ROWS` consecutive output rows,
/// from the windows at `src` (the first row's first input row): input row `r` is loaded
/// once and feeds kernel row `r − o` of output row `o`.
///
/// # Safety
/// A CPU with SDOT; `src` holds `6 + ROWS` rows of windows at `stride`, 12 from `src`
/// in each.
#[inline(always)]
unsafe fn block<const ROWS: usize>(
    src: *const i8,
    stride: usize,
    taps: &[[int8x16_t; 2]; 7],
    offset: i32,
) -> [[int32x4_t; 2]; ROWS] {
    // SAFETY: as the caller promises.
    unsafe {
        let mut acc = [[vdupq_n_s32(offset); 2]; ROWS];
        for r in 0..6 + ROWS {
            let v = vld1q_s8_x3(src.add(r * stride));
            for (o, [low, high]) in acc.iter_mut().enumerate() {
                if let Some([t0, t4]) = r.checked_sub(o).and_then(|ky| taps.get(ky)) {
                    sdot!(*low, v.0, *t0);
                    sdot!(*low, v.1, *t4);
                    sdot!(*high, v.1, *t0);
                    sdot!(*high, v.2, *t4);
                }
            }
        }
        acc
    }
}

/// The 8 sums of a block at `out`.
///
/// # Safety
/// `out` has room for 8 i32.
#[inline(always)]
unsafe fn store(out: *mut i32, [low, high]: [int32x4_t; 2]) {
    // SAFETY: as the caller promises.
    unsafe {
        vst1q_s32(out, low);
        vst1q_s32(out.add(4), high);
    }
}

/// [`super::sums_scalar`] for 7x7 kernels on `SDOT`.
///
/// # Safety
/// A CPU with SDOT; `padded`, `windows` and `sums` sized by `g`; `weights` holds 49.
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn sums_7x7(
    padded: &[i8],
    g: Geometry,
    weights: &[i8],
    offset: i32,
    windows: &mut [i8],
    sums: &mut [i32],
) {
    assert!(weights.len() == 49 && sums.len() >= g.oh * g.ow + BLOCK && g.ph >= g.oh + 6);
    // SAFETY: as the caller promises; a block's loads read windows `x .. x + 12` of a row
    // with `x + 12 ≤ span + 4 ≤ windows_per_row(span)`, its stores `BLOCK` sums from
    // `y · ow + x` with `x + BLOCK ≤ span < ow + BLOCK`.
    unsafe {
        expand(padded, g, windows);
        // Taps 0–3 and 4–6 of each kernel row (and a zero), the same in every lane.
        let taps: [[int8x16_t; 2]; 7] = std::array::from_fn(|ky| {
            let row = &weights[ky * 7..][..7];
            let four = |t: &[i8]| {
                let mut b = [0u8; 4];
                for (b, &v) in b.iter_mut().zip(t) {
                    *b = v as u8;
                }
                vreinterpretq_s8_u32(vdupq_n_u32(u32::from_le_bytes(b)))
            };
            [four(&row[..4]), four(&row[4..])]
        });
        let stride = windows_per_row(span(g.ow)) * 4;
        // Two output rows at a time share their input rows' loads (8 loads for 56 SDOT
        // instead of 7 for 28). Blocks go right to left: a row's last block runs past the
        // row into the next one's first sums, which must be written after it.
        let mut y = 0;
        while y < g.oh {
            let out = sums.as_mut_ptr().add(y * g.ow);
            let src = windows.as_ptr().add(y * stride);
            let blocks = (0..span(g.ow)).step_by(BLOCK).rev();
            if y + 1 < g.oh {
                for x in blocks {
                    let [a, b] = block::<2>(src.add(x * 4), stride, &taps, offset);
                    store(out.add(x), a);
                    store(out.add(g.ow + x), b);
                }
                y += 2;
            } else {
                for x in blocks {
                    let [a] = block::<1>(src.add(x * 4), stride, &taps, offset);
                    store(out.add(x), a);
                }
                y += 1;
            }
        }
    }
}
