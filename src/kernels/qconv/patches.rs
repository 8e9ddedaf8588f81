//! The patches of a convolution over non-overlapping patches, as rows of a 1x1 product.

use crate::kernels::{Layout, Patches};

impl Patches {
    /// The quantized input `xq` (`c` channels, laid out as `layout`) as the `p` rows (channels
    /// last) or columns (channels first) of a 1x1 product over the patches: what tract's
    /// kernels multiply, where our own product gathers as it packs.
    pub(super) fn product_matrix(self, xq: &[i8], c: usize, layout: Layout, p: usize) -> Vec<i8> {
        let k = c * self.side * self.side;
        let mut rows = vec![0i8; k * p];
        match layout {
            Layout::ChannelsFirst => self.gather(xq, c, &mut rows),
            Layout::ChannelsLast => {
                let run = self.side * c;
                for (r, row) in rows.chunks_exact_mut(k).enumerate() {
                    for (dy, part) in row.chunks_exact_mut(run).enumerate() {
                        part.copy_from_slice(&xq[self.run_start(r, dy, c)..][..run]);
                    }
                }
            }
        }
        rows
    }

    /// Channels last (`x` is `[n, h, w, c]`): where patch `r`'s input row `dy` starts, a run of
    /// `side · c` contiguous values (the weights' `(kh, kw, ci)` order).
    pub(super) fn run_start(self, r: usize, dy: usize, c: usize) -> usize {
        let (s, (oh, ow)) = (self.side, self.out_hw());
        let (image, at) = (r / (oh * ow), r % (oh * ow));
        ((image * self.h + at / ow * s + dy) * self.w + at % ow * s) * c
    }

    /// Channels first: `x` (`c` planes of `h × w`) as the `c · side²` rows of a 1x1 product
    /// over the patches: row `(ci · side + dy) · side + dx` holds pixel `(dy, dx)` of every
    /// patch of plane `ci`, the order of the weights' `(ci, kh, kw)`.
    pub(super) fn gather(self, x: &[i8], c: usize, rows: &mut [i8]) {
        let (s, (oh, ow)) = (self.side, self.out_hw());
        let n = oh * ow;
        if n == 0 {
            return;
        }
        // Rows (ci, dy, 0..s) together: each input row segment is split into them at once.
        let groups = rows.chunks_exact_mut(s * n);
        let planes = x.chunks_exact(self.h * self.w).take(c);
        for (group, (plane, dy)) in groups.zip(planes.flat_map(|p| (0..s).map(move |dy| (p, dy)))) {
            for oy in 0..oh {
                let src = &plane[(oy * s + dy) * self.w..][..ow * s];
                deinterleave(src, s, group, oy * ow, n);
            }
        }
    }
}

/// `group[dx · n + at + i] = src[i · s + dx]` for every `dx < s` and `i < src.len() / s`: a
/// row of patches split by pixel column. On aarch64 with NEON for sides 2 and 4
/// ([`deinterleave_neon`]); the scalar loop for other sides and rows of fewer than 8 patches.
pub(super) fn deinterleave(src: &[i8], s: usize, group: &mut [i8], at: usize, n: usize) {
    let len = src.len() / s;
    #[cfg(target_arch = "aarch64")]
    if deinterleave_neon(src, s, group, at, n) {
        return;
    }
    for dx in 0..s {
        let dst = &mut group[dx * n + at..][..len];
        // `chunks`, not `step_by`: the compiler makes a plain loop of it, where `step_by`
        // cost many instructions a byte.
        for (d, pixels) in dst.iter_mut().zip(src[dx..].chunks(s)) {
            *d = pixels[0];
        }
    }
}

/// [`deinterleave`] for sides 2 and 4 and at least 8 patches: `LD2` / `LD4` de-interleave as
/// they load, 16 patches at a time, then 8, the last 8 ending at the row's end (over patches
/// already written, with the same values) so that no patch is left to a scalar loop. Returns
/// whether it did the row. ConvNeXt's downsampling rows are 7 to 28 patches long, so without
/// the 8-patch steps most of them went through the scalar loop.
#[cfg(target_arch = "aarch64")]
pub(super) fn deinterleave_neon(
    src: &[i8],
    s: usize,
    group: &mut [i8],
    at: usize,
    n: usize,
) -> bool {
    use std::arch::aarch64::{vld2_s8, vld2q_s8, vld4_s8, vld4q_s8, vst1_s8, vst1q_s8};
    let len = src.len() / s;
    if !matches!(s, 2 | 4) || len < 8 {
        return false;
    }
    // Patches `i .. i + width` (16 or 8).
    #[inline(always)]
    fn step(src: &[i8], s: usize, group: &mut [i8], at: usize, n: usize, i: usize, width: usize) {
        let from = src[i * s..][..width * s].as_ptr();
        let mut to = |dx: usize| group[dx * n + at + i..][..width].as_mut_ptr();
        // SAFETY: NEON; each load reads the `width · s` bytes at `from`, each store `width`
        // bytes at a checked slice.
        unsafe {
            match (s, width) {
                (2, 16) => {
                    let v = vld2q_s8(from);
                    vst1q_s8(to(0), v.0);
                    vst1q_s8(to(1), v.1);
                }
                (4, 16) => {
                    let v = vld4q_s8(from);
                    vst1q_s8(to(0), v.0);
                    vst1q_s8(to(1), v.1);
                    vst1q_s8(to(2), v.2);
                    vst1q_s8(to(3), v.3);
                }
                (2, _) => {
                    let v = vld2_s8(from);
                    vst1_s8(to(0), v.0);
                    vst1_s8(to(1), v.1);
                }
                _ => {
                    let v = vld4_s8(from);
                    vst1_s8(to(0), v.0);
                    vst1_s8(to(1), v.1);
                    vst1_s8(to(2), v.2);
                    vst1_s8(to(3), v.3);
                }
            }
        }
    }
    let mut i = 0;
    while i + 16 <= len {
        step(src, s, group, at, n, i, 16);
        i += 16;
    }
    while i < len {
        let last = i.min(len - 8);
        step(src, s, group, at, n, last, 8);
        i = last + 8;
    }
    true
}
