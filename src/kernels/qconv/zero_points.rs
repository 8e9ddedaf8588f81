//! Weights that keep a zero point: full-range asymmetric weights (onnxruntime's
//! `WeightSymmetric=False`, u8 weights), whose `w − zw` spans up to 511 values and does not fit
//! in int8.
//!
//! The op holds `w8` (u8 weights shifted by −128, s8 ones as they are) and `z = zw − shift`
//! per output channel, so that `w − zw = w8 − z`. For a product row of input values `x`
//! (zero point `zx`, `K` of them):
//!
//! ```text
//! Σ (x − zx)(w8 − z) = [Σ x·w8 − zx·Σ w8] + z·K·zx − z·Σ x
//! ```
//!
//! The bracket is what the op computes for symmetric weights; `z·K·zx` joins the per-channel
//! offset; `z·Σ x` needs the row sums of the quantized input, one pass over it, subtracted
//! from each block of sums before the epilogue. All in integers: exact, as onnxruntime is.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{Operand, QPointwiseConv};
use crate::kernels::quantize::FastQuantize;
use crate::kernels::{Layout, Patches, Sums};

impl QPointwiseConv {
    /// This op with weights `w8 − z` rather than `w8` (see the module docs): `zero_points` one
    /// for all output channels or one each.
    pub fn with_weight_zero_points(mut self, zero_points: &[i32]) -> TractResult<QPointwiseConv> {
        let cout = self.cout();
        let z = match zero_points.len() {
            1 => vec![zero_points[0]; cout],
            l if l == cout => zero_points.to_vec(),
            l => bail!("integer 1x1 conv: {l} weight zero points for {cout} output channels"),
        };
        ensure!(
            z.iter().all(|v| (-256..=256).contains(v)),
            "integer 1x1 conv: weight zero points {z:?} beyond what 8-bit weights need"
        );
        self.w_zero = z.iter().any(|&v| v != 0).then(|| z.into());
        Ok(self)
    }

    /// `Σ x` of each product row of the quantized input (a position or patch channels last, a
    /// column channels first), when the weights keep zero points.
    pub(super) fn input_row_sums(
        &self,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
        patches: Option<Patches>,
    ) -> Option<Vec<i32>> {
        self.w_zero.as_ref()?;
        let xq = self.quantized(x, quantizer);
        let c = self.in_channels();
        let xq = match patches {
            Some(g) => g.product_matrix(&xq, c, self.layout, p).into(),
            None => xq,
        };
        let k = self.cin();
        Some(match self.layout {
            Layout::ChannelsLast => xq
                .chunks_exact(k)
                .take(p)
                .map(|row| row.iter().map(|&v| v as i32).sum())
                .collect(),
            Layout::ChannelsFirst => {
                let mut sums = vec![0i32; p];
                for row in xq.chunks_exact(p) {
                    for (s, &v) in sums.iter_mut().zip(row) {
                        *s += v as i32;
                    }
                }
                sums
            }
        })
    }

    /// The block `sums` (output rows `first..`, `width` each) less `z · Σ x`, in `scratch`.
    pub(super) fn less_weight_zero_points<'s>(
        &self,
        sums: Sums,
        first: usize,
        rows: usize,
        width: usize,
        row_sums: &[i32],
        scratch: &'s mut Vec<i32>,
    ) -> Sums<'s> {
        let z = self.w_zero.as_deref().unwrap_or(&[]);
        scratch.clear();
        for i in 0..rows {
            let row = sums.row(i).iter().enumerate();
            match self.layout {
                // A row is a position: its sum, times each channel's zero point.
                Layout::ChannelsLast => {
                    let r = row_sums[first + i];
                    scratch.extend(row.map(|(n, &s)| s - z[n] * r));
                }
                // A row is an output channel: its zero point, times each column's sum.
                Layout::ChannelsFirst => {
                    let z = z[first + i];
                    scratch.extend(row.map(|(j, &s)| s - z * row_sums[j]));
                }
            }
        }
        Sums::new(scratch, width, width)
    }
}
