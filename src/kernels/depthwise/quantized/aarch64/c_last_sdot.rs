//! Channels last on `SDOT`: sixteen channels a step, each pixel's window rows expanded so
//! that one `SDOT` multiplies four taps of four channels (see the parent module's docs).

use std::arch::aarch64::*;

use crate::kernels::threads::par_chunks_mut;
use tract_onnx::prelude::TractResult;

use super::{has_sdot, CLast, Geometry, QDepthwiseConv};
use crate::kernels::neon::interleave4;

/// Channels per step: four `SDOT` of 4 channels.
const CHANNELS: usize = 16;

/// A channels-last batch expanded for `SDOT` (see the module docs), with the weights in
/// the same order.
pub(super) struct Plan<'a> {
    op: &'a QDepthwiseConv,
    g: Geometry,
    c: usize,
    /// Per padded row, pixel `x` (`0 ..= ow + 3`) and channel: the channel's values at
    /// pixels `x .. x + 4`.
    expanded: Vec<i8>,
    /// Per kernel row, taps 0–3 then 4–6 (and a zero) of each channel.
    weights: Vec<i8>,
}

impl<'a> Plan<'a> {
    /// The plan where `SDOT` runs the op: 7x7 kernels, whole steps of channels.
    pub(super) fn new(
        op: &'a QDepthwiseConv,
        g: Geometry,
        padded: &[i8],
    ) -> TractResult<Option<Plan<'a>>> {
        let c = op.channels();
        if (g.kh, g.kw) != (7, 7) || !c.is_multiple_of(CHANNELS) || !has_sdot() {
            return Ok(None);
        }
        let mut weights = vec![0i8; 7 * 2 * c * 4];
        for (ch, w) in op.weights.chunks_exact(49).enumerate() {
            for (ky, row) in w.chunks_exact(7).enumerate() {
                for (kx, &v) in row.iter().enumerate() {
                    weights[((ky * 2 + kx / 4) * c + ch) * 4 + kx % 4] = v;
                }
            }
        }
        let image = CLast::new(g, c);
        let pixels = g.ow + 4;
        let mut expanded = vec![0i8; padded.len() / image.len() * g.ph * pixels * c * 4];
        par_chunks_mut(
            &mut expanded,
            pixels * c * 4,
            padded.len(),
            |first, chunk| {
                for (i, dst) in chunk.chunks_exact_mut(pixels * c * 4).enumerate() {
                    let (img, y) = ((first + i) / g.ph, (first + i) % g.ph);
                    let src = &padded[img * image.len() + image.at(y, 0)..][..image.pw * c];
                    expand(src, c, dst);
                }
                Ok(())
            },
        )?;
        Ok(Some(Plan {
            op,
            g,
            c,
            expanded,
            weights,
        }))
    }

    /// Output row `y` of image `img`.
    pub(super) fn row(&self, img: usize, y: usize, bias: &[f32], out: &mut [f32]) {
        let (g, c) = (self.g, self.c);
        let pixels = g.ow + 4;
        let rows = &self.expanded[(img * g.ph + y) * pixels * c * 4..][..7 * pixels * c * 4];
        assert!(out.len() == g.ow * c && bias.len() == c);
        // SAFETY: the CPU has SDOT (checked by `new`); the reads stay inside the 7 rows
        // (pixel `x + 4 ≤ ow + 3`), the weights (7 × 2 × c × 4) and the per-channel
        // vectors; the stores inside `out` (all asserted above or sized by `new`).
        unsafe { self.row_sdot(rows, bias, out) }
    }

    /// [`Self::row`] on `rows`, the 7 expanded rows under it.
    ///
    /// # Safety
    /// As `row` checks.
    #[target_feature(enable = "dotprod")]
    unsafe fn row_sdot(&self, rows: &[i8], bias: &[f32], out: &mut [f32]) {
        let (g, c) = (self.g, self.c);
        let row_len = (g.ow + 4) * c * 4;
        // SAFETY: as `row` checked.
        unsafe {
            for x in 0..g.ow {
                for cb in (0..c).step_by(CHANNELS) {
                    let offsets = self.op.offsets.as_ptr().add(cb);
                    let mut acc: [int32x4_t; 4] =
                        std::array::from_fn(|q| vld1q_s32(offsets.add(4 * q)));
                    for ky in 0..7 {
                        for half in 0..2 {
                            let at = ky * row_len + ((x + 4 * half) * c + cb) * 4;
                            let v = vld1q_s8_x4(rows.as_ptr().add(at));
                            let w = vld1q_s8_x4(
                                self.weights.as_ptr().add(((ky * 2 + half) * c + cb) * 4),
                            );
                            sdot!(acc[0], v.0, w.0);
                            sdot!(acc[1], v.1, w.1);
                            sdot!(acc[2], v.2, w.2);
                            sdot!(acc[3], v.3, w.3);
                        }
                    }
                    for (q, acc) in acc.into_iter().enumerate() {
                        let ch = cb + 4 * q;
                        let v = vmulq_f32(
                            vcvtq_f32_s32(acc),
                            vld1q_f32(self.op.scales.as_ptr().add(ch)),
                        );
                        let v = vaddq_f32(v, vld1q_f32(bias.as_ptr().add(ch)));
                        vst1q_f32(out.as_mut_ptr().add(x * c + ch), v);
                    }
                }
            }
        }
    }
}

/// One padded row (pixels of `c` channels, `dst.len() / (4c)` + 3 of them) expanded.
fn expand(src: &[i8], c: usize, dst: &mut [i8]) {
    let pixels = dst.len() / (4 * c);
    assert!(src.len() >= (pixels + 3) * c && c.is_multiple_of(CHANNELS));
    for x in 0..pixels {
        for cb in (0..c).step_by(CHANNELS) {
            // SAFETY: NEON; reads pixels `x .. x + 4` of `src`, writes 64 bytes of pixel
            // `x` of `dst` (asserted above).
            unsafe {
                let at = |j: usize| vld1q_s8(src.as_ptr().add((x + j) * c + cb));
                let [q0, q1, q2, q3] = interleave4(at(0), at(1), at(2), at(3));
                vst1q_s8_x4(
                    dst.as_mut_ptr().add((x * c + cb) * 4),
                    int8x16x4_t(q0, q1, q2, q3),
                );
            }
        }
    }
}
