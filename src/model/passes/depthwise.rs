//! Depthwise convolution: a float `Conv` with one group per channel becomes our
//! [`DepthwiseConv`].

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::conv::{per_channel_bias, stride_one_pads};
use crate::kernels::depthwise::{self, DepthwiseConv};
use crate::kernels::Layout;

/// Our depthwise op for `node` when it is a convolution the module docs describe.
fn as_depthwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DepthwiseConv>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let c = spec.input_channels;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
    if conv.q_params.is_some()
        || conv.group != c
        || spec.output_channels != c
        || spec.kernel_shape.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::NHWC)
        || conv.kernel_fmt != KernelFormat::OIHW
        || !ones(&spec.strides)
        || !ones(&spec.dilations)
        || node.inputs.len() != 3
        || !depthwise::is_supported_float(model.outlet_fact(node.inputs[0])?.datum_type)
    {
        return Ok(None);
    }
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let Some(pads) = stride_one_pads(spec) else {
        return Ok(None);
    };
    let (Some(weights), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    if !depthwise::is_supported_float(weights.datum_type()) || weights.shape() != [c, 1, kh, kw] {
        return Ok(None);
    }
    let Some(bias) = per_channel_bias(&bias, c)? else {
        return Ok(None);
    };
    let weights = weights
        .cast_to::<f32>()?
        .into_owned()
        .into_shape(&[c, kh, kw])?;
    let layout = match spec.data_format {
        DataFormat::NHWC => Layout::ChannelsLast,
        _ => Layout::ChannelsFirst,
    };
    let bias = Tensor::from_shape(&[c], &bias)?;
    Ok(Some(DepthwiseConv::new(weights, bias, pads, layout)?))
}

pub(super) fn depthwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = as_depthwise(model, node)? else {
            continue;
        };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}
