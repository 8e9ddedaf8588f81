//! The format of our fused nodes in the protobuf: their op types, domain and attributes,
//! written by the matchers and read back by the parsers ([`super::ops`]).

use anyhow::ensure;
use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::prelude::*;

use crate::kernels::qconv::{ActQuant, QdqGelu};
use crate::model::onnx::proto::{floats_attr, floats_attr_of, int_attr_of};

/// The node type the fusion emits: inputs `x, x_scale, x_zero_point, w_int8, w_scale, bias`
/// and optionally `y_scale, y_zero_point`; output f32.
pub const FUSED_OP: &str = "ConvNextEdgeQPointwiseConv";
pub(super) const DOMAIN: &str = "convnext_edge";

/// The node type the depthwise fusion emits: inputs `x, x_scale, x_zero_point, w_int8,
/// w_scale, bias`; attribute `pads` as ONNX orders them; output f32.
pub const FUSED_DEPTHWISE_OP: &str = "ConvNextEdgeQDepthwiseConv";

/// Attribute of a fused node that writes i8 for the fused node reading it; its last two
/// inputs are then that reader's input scale and zero point.
pub(super) const EMIT_ATTR: &str = "emit_i8";

/// Attribute of a fused node whose input quantization is computed per input.
pub(super) const DYNAMIC_ATTR: &str = "dynamic";
/// Attribute of a [`FUSED_OP`] whose weights keep zero points (one, or one per output
/// channel) that it subtracts itself: full-range asymmetric weights.
pub(super) const WEIGHT_ZERO_ATTR: &str = "weight_zero_points";
/// Attribute of a [`FUSED_OP`] over non-overlapping patches: their side.
pub(super) const PATCH_ATTR: &str = "patch";

/// Whether a fused node writes i8 (see [`EMIT_ATTR`]).
pub(super) fn emit_of(node: &NodeProto) -> Option<i64> {
    int_attr_of(node, EMIT_ATTR).filter(|&v| v != 0)
}

pub(super) const GELU_ATTR: &str = "gelu";
pub(super) const GELU_QUANT_ATTR: &str = "gelu_quant";

/// `gelu` = the three constants, `gelu_quant` = per intermediate `[present, scale, zero point,
/// signed]`.
pub(super) fn gelu_attributes(g: &QdqGelu) -> [AttributeProto; 2] {
    let quant = g.quant.iter().flat_map(|q| match q {
        Some(q) => [1.0, q.scale, q.zero_point as f32, q.signed as i32 as f32],
        None => [0.0; 4],
    });
    [
        floats_attr(GELU_ATTR, g.c.to_vec()),
        floats_attr(GELU_QUANT_ATTR, quant.collect()),
    ]
}

/// The GELU a fused node carries, if any (see [`gelu_attributes`]).
pub(super) fn gelu_of(node: &NodeProto) -> TractResult<Option<QdqGelu>> {
    let attr = |name| floats_attr_of(node, name);
    let (Some(c), Some(q)) = (attr(GELU_ATTR), attr(GELU_QUANT_ATTR)) else {
        return Ok(None);
    };
    ensure!(
        c.len() == 3 && q.len() == 20,
        "{FUSED_OP} {}: malformed GELU attributes",
        node.name
    );
    let mut quant = [None; 5];
    for (slot, v) in quant.iter_mut().zip(q.chunks(4)) {
        if v[0] != 0.0 {
            ensure!(
                v[1].is_finite() && v[1] > 0.0 && v[2].fract() == 0.0 && v[2].abs() <= 255.0,
                "{FUSED_OP} {}: malformed GELU quantization",
                node.name
            );
            *slot = Some(ActQuant {
                scale: v[1],
                zero_point: v[2] as i32,
                signed: v[3] != 0.0,
            });
        }
    }
    Ok(Some(QdqGelu {
        c: [c[0], c[1], c[2]],
        quant,
    }))
}
