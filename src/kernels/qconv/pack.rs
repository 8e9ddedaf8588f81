//! An input quantized straight into tract-linalg's VNNI packing (`PackedI8K4`).

use std::sync::Arc;

use crate::kernels::threads::par_chunks_mut;
use tract_linalg::mmm::{EagerPackedInput, PackedExoticFact};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;

use super::{Operand, QPointwiseConv};
use crate::kernels::quantize::FastQuantize;
use crate::kernels::Layout;

impl QPointwiseConv {
    /// `x` quantized (unless it is i8 already) straight into the VNNI kernels' packing
    /// (`PackedI8K4`: panels of `r` positions, each `k` in groups of four consecutive values
    /// per position), one panel per task across the plan's threads. Bit-identical to
    /// quantizing then `prepare_one`, without the intermediate tensor and the byte-by-byte
    /// strided pack.
    pub(super) fn pack_input(
        &self,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
        format: &PackedI8K4,
    ) -> TractResult<EagerPackedInput> {
        let (cin, r) = (self.cin(), format.r);
        let kp = cin.div_ceil(4) * 4;
        let panel_bytes = kp * r;
        let panels = p.div_ceil(r);
        // SAFETY: bytes have no invalid values, and every panel is written whole below.
        let mut blob =
            unsafe { Blob::new_for_size_and_align(panels * panel_bytes, format.alignment()) };
        let layout = self.layout;
        par_chunks_mut(blob.as_bytes_mut(), panel_bytes, x.len(), |first, chunk| {
            let mut rows = vec![0i8; kp * r];
            let mut block = vec![0i8; 4 * r];
            for (pi, panel) in chunk.chunks_mut(panel_bytes).enumerate() {
                let m0 = (first + pi) * r;
                let width = r.min(p - m0);
                match layout {
                    Layout::ChannelsLast => {
                        // `rows` holds the panel's values position-major, `kp` per position.
                        rows.fill(0);
                        for (lm, row) in rows.chunks_mut(kp).take(width).enumerate() {
                            match x.slice((m0 + lm) * cin, cin) {
                                Operand::F32(src) => quantizer.quantize_i8(src, &mut row[..cin]),
                                Operand::I8(src) => row[..cin].copy_from_slice(src),
                            }
                        }
                        interleave_k4(&rows, kp, r, panel);
                    }
                    Layout::ChannelsFirst => {
                        // Four channels at a time into `block` (channel-major, `r` positions
                        // each), then written as the panel's four-byte words: no byte-wise
                        // scatter and no second pass.
                        for (kb, words) in panel.chunks_exact_mut(4 * r).enumerate() {
                            block.fill(0);
                            for (d, dst) in block.chunks_exact_mut(r).enumerate() {
                                let kk = kb * 4 + d;
                                if kk >= cin {
                                    break;
                                }
                                match x.slice(kk * p + m0, width) {
                                    Operand::F32(src) => {
                                        quantizer.quantize_i8(src, &mut dst[..width])
                                    }
                                    Operand::I8(src) => dst[..width].copy_from_slice(src),
                                }
                            }
                            zip4(&block, words);
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(EagerPackedInput {
            fact: PackedExoticFact {
                format: Box::new(format.clone()),
                mn: p.to_dim(),
                k: cin,
            },
            packed: Arc::new(blob),
            panel_bytes,
            mn: p,
        })
    }
}

/// A panel of `r` positions × `kp` values (position-major, `rows`) into `PackedI8K4` order:
/// `panel[(k / 4) · 4r + m · 4 + k % 4] = rows[m · kp + k]`.
pub(super) fn interleave_k4(rows: &[i8], kp: usize, r: usize, panel: &mut [u8]) {
    for (m, row) in rows.chunks_exact(kp).enumerate() {
        for (kb, group) in row.chunks_exact(4).enumerate() {
            // Four bytes moved as one word, not one by one.
            let word = [
                group[0] as u8,
                group[1] as u8,
                group[2] as u8,
                group[3] as u8,
            ];
            let at = kb * 4 * r + m * 4;
            panel[at..at + 4].copy_from_slice(&word);
        }
    }
}

/// Four rows of `r` bytes (`block`, row-major) into `r` four-byte words, word `m` holding the
/// rows' `m`-th bytes: `words[4m + d] = block[d · r + m]`.
pub(super) fn zip4(block: &[i8], words: &mut [u8]) {
    let r = block.len() / 4;
    #[cfg(target_arch = "aarch64")]
    let done = {
        use std::arch::aarch64::{uint8x8x4_t, vld1_u8, vst4_u8};
        let ptr = block.as_ptr() as *const u8;
        let mut done = 0;
        while done + 8 <= r {
            // SAFETY: NEON is in the aarch64 baseline; the four loads read block[d · r + done
            // ..][..8] with done + 8 <= r, the store a checked 32-byte slice of `words`.
            unsafe {
                let rows = uint8x8x4_t(
                    vld1_u8(ptr.add(done)),
                    vld1_u8(ptr.add(r + done)),
                    vld1_u8(ptr.add(2 * r + done)),
                    vld1_u8(ptr.add(3 * r + done)),
                );
                vst4_u8(words[4 * done..4 * done + 32].as_mut_ptr(), rows);
            }
            done += 8;
        }
        done
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    for m in done..r {
        for d in 0..4 {
            words[4 * m + d] = block[d * r + m] as u8;
        }
    }
}
