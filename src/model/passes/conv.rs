//! What the passes read off a tract convolution: its padding and its bias.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

/// A 2-D convolution's padding as `[top, bottom, left, right]`, the `Same` kinds worked out
/// for stride 1; `None` for a padding tract expresses otherwise.
pub(crate) fn stride_one_pads(spec: &PoolSpec) -> Option<[usize; 4]> {
    let same = |k: usize, upper: bool| {
        let small = (k - 1) / 2;
        if upper {
            [small, k - 1 - small]
        } else {
            [k - 1 - small, small]
        }
    };
    match &spec.padding {
        PaddingSpec::Valid => Some([0; 4]),
        PaddingSpec::Explicit(before, after) | PaddingSpec::ExplicitOnnxPool(before, after, _)
            if before.len() == 2 && after.len() == 2 =>
        {
            Some([before[0], after[0], before[1], after[1]])
        }
        PaddingSpec::SameUpper | PaddingSpec::SameLower if spec.kernel_shape.len() == 2 => {
            let upper = matches!(spec.padding, PaddingSpec::SameUpper);
            let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
            let ([t, b], [l, r]) = (same(kh, upper), same(kw, upper));
            Some([t, b, l, r])
        }
        _ => None,
    }
}

/// A convolution's constant bias as `c` f32 values: one per channel, or one for all; `None`
/// for any other length.
pub(crate) fn per_channel_bias(bias: &Tensor, c: usize) -> TractResult<Option<Vec<f32>>> {
    Ok(match bias.len() {
        1 => Some(vec![bias.cast_to_scalar::<f32>()?; c]),
        n if n == c => Some(
            bias.cast_to::<f32>()?
                .try_as_plain_ram()?
                .as_slice::<f32>()?
                .to_vec(),
        ),
        _ => None,
    })
}
