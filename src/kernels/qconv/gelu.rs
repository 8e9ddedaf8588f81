//! The QDQ GELU the epilogue applies (through its lookup table) after a product.

use tract_linalg::element_wise::ElementWise;
use tract_onnx::prelude::*;

use super::ActQuant;
use crate::kernels::quantize::Fq;
use crate::kernels::simd::multiversion;

/// The exact GELU of a QDQ graph, `x · (erf(x / c1) + c2) · c3` with `c1 = √2`, `c2 = 1`,
/// `c3 = ½` as exported (the values are read from the model), each intermediate result
/// optionally fake-quantized as the graph does: after the division, the erf, the addition, the
/// product by `x` and the final product (`quant[0..5]`). Applied to the output of the product
/// in the epilogue, replacing ten element-wise ops on ConvNeXt's widest tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QdqGelu {
    pub c: [f32; 3],
    pub quant: [Option<ActQuant>; 5],
}

impl QdqGelu {
    /// Applies the chain to `xs` in place; `tmp` is scratch of the same length.
    pub(super) fn apply(
        &self,
        xs: &mut [f32],
        tmp: &mut [f32],
        erf: &dyn ElementWise<f32>,
    ) -> TractResult<()> {
        let q = self.quant.map(|q| q.map(|q| q.fake().parts()));
        gelu_div(xs, tmp, self.c[0], q[0]);
        erf.run(tmp)?;
        gelu_finish(xs, tmp, self.c[1], self.c[2], [q[1], q[2], q[3], q[4]]);
        Ok(())
    }
}

/// `q(v)` when the graph quantizes this intermediate, else `v`.
#[inline(always)]
pub(super) fn maybe(q: Option<Fq>, v: f32) -> f32 {
    match q {
        Some(q) => q.apply(v),
        None => v,
    }
}

multiversion! {
    pub(super) fn gelu_div(xs: &[f32], tmp: &mut [f32], c1: f32, q: Option<Fq>) {
        for (t, x) in tmp.iter_mut().zip(xs) {
            *t = maybe(q, x / c1);
        }
    }
}

multiversion! {
    pub(super) fn gelu_finish(xs: &mut [f32], erf: &[f32], c2: f32, c3: f32, q: [Option<Fq>; 4]) {
        for (x, e) in xs.iter_mut().zip(erf) {
            let a = maybe(q[1], maybe(q[0], *e) + c2);
            *x = maybe(q[3], maybe(q[2], *x * a) * c3);
        }
    }
}
