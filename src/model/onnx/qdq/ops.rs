//! The parsers of our fused nodes: each builds the integer op from the node's constant inputs.
//!
//! tract internals used (tract-onnx 0.23.9): the op registry's parser signature and
//! `tract_hir`'s `Expansion`.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::{expand, Expansion};

use super::fused::{
    emit_of, gelu_of, DYNAMIC_ATTR, EMIT_ATTR, FUSED_DEPTHWISE_OP, FUSED_OP, PATCH_ATTR,
    WEIGHT_ZERO_ATTR,
};
use crate::kernels::depthwise::quantized::QDepthwiseConv;
use crate::kernels::qconv::{ActQuant, Layout, QPointwiseConv, QdqGelu};
use crate::model::onnx::proto::{int_attr_of, ints_attr_of};

pub(super) fn parse(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let inputs = node.input.iter().filter(|s| !s.is_empty()).count();
    let emit_i8 = emit_of(node).is_some();
    let own = inputs - if emit_i8 { 2.min(inputs) } else { 0 };
    ensure!(
        matches!(own, 6 | 8 | 10) && (!emit_i8 || own > 6),
        "{FUSED_OP} {}: {inputs} inputs, expected 6, 8 or 10 (8 or 10, plus 2 with {EMIT_ATTR})",
        node.name
    );
    let layout = match node.get_attr_opt::<i64>("channels_last")? {
        Some(1) => Layout::ChannelsLast,
        _ => Layout::ChannelsFirst,
    };
    let gelu = gelu_of(node)?;
    let patch = int_attr_of(node, PATCH_ATTR).unwrap_or(1);
    ensure!(
        patch >= 1 && (patch == 1 || layout == Layout::ChannelsFirst),
        "{FUSED_OP} {}: patch {patch}",
        node.name
    );
    Ok((
        expand(Fused {
            inputs: own,
            emit_i8,
            dynamic: int_attr_of(node, DYNAMIC_ATTR).is_some_and(|d| d != 0),
            layout,
            gelu,
            patch: patch as usize,
            weight_zero_points: ints_attr_of(node, WEIGHT_ZERO_ATTR)
                .unwrap_or_default()
                .iter()
                .map(|&z| i32::try_from(z))
                .collect::<Result<_, _>>()?,
        }),
        vec![],
    ))
}

/// The parsed [`FUSED_OP`] node, wired into a [`QPointwiseConv`] once its inputs are typed.
/// `inputs` counts its own inputs, without the two [`EMIT_ATTR`] adds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Fused {
    inputs: usize,
    emit_i8: bool,
    dynamic: bool,
    layout: Layout,
    gelu: Option<QdqGelu>,
    /// Side of the patches a convolution runs over (1: a 1x1 convolution).
    patch: usize,
    /// See [`WEIGHT_ZERO_ATTR`]; empty: none.
    weight_zero_points: Vec<i32>,
}

pub(super) fn konst<'m>(
    model: &'m TypedModel,
    outlet: OutletId,
    what: &str,
) -> TractResult<&'m Arc<Tensor>> {
    model
        .outlet_fact(outlet)?
        .konst
        .as_ref()
        .with_context(|| format!("{FUSED_OP}: {what} must be a constant"))
}

pub(super) fn act_quant(
    model: &TypedModel,
    scale: OutletId,
    zp: OutletId,
) -> TractResult<ActQuant> {
    let scale = konst(model, scale, "scale")?;
    let zp = konst(model, zp, "zero point")?;
    ensure!(
        scale.len() == 1 && zp.len() == 1,
        "{FUSED_OP}: activation quantization must be per tensor"
    );
    let signed = match zp.datum_type() {
        DatumType::I8 => true,
        DatumType::U8 => false,
        dt => bail!("{FUSED_OP}: zero point of type {dt:?}"),
    };
    Ok(ActQuant {
        scale: scale.cast_to_scalar::<f32>()?,
        zero_point: zp.cast_to_scalar::<i32>()?,
        signed,
    })
}

impl Expansion for Fused {
    fn name(&self) -> StaticName {
        FUSED_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.inputs + if self.emit_i8 { 2 } else { 0 })?;
        check_output_arity(outputs, 1)?;
        let out_type = if self.emit_i8 {
            i8::datum_type()
        } else {
            f32::datum_type()
        };
        s.equals(&outputs[0].datum_type, out_type)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        match self.layout {
            Layout::ChannelsFirst => {
                s.equals(&inputs[3].rank, 4)?;
                s.equals(&outputs[0].shape[1], &inputs[3].shape[0])?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                let patch = self.patch as u64;
                s.given(&inputs[0].rank, move |s, rank| {
                    for axis in 2..rank as usize {
                        s.given(&inputs[0].shape[axis], move |s, d| {
                            s.equals(&outputs[0].shape[axis], d / patch)
                        })?;
                    }
                    Ok(())
                })
            }
            Layout::ChannelsLast => {
                s.equals(&inputs[3].rank, 2)?;
                s.given(&inputs[0].rank, move |s, rank| {
                    let last = rank as usize - 1;
                    s.equals(&outputs[0].shape[last], &inputs[3].shape[1])?;
                    for axis in 0..last {
                        s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
                    }
                    Ok(())
                })
            }
        }
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = act_quant(model, inputs[1], inputs[2])?;
        let w = konst(model, inputs[3], "the weight")?;
        ensure!(
            w.datum_type() == i8::datum_type(),
            "{FUSED_OP}: weights must be int8, got {w:?}"
        );
        // Canonical [Cout, Cin] whatever the layout.
        let w = match (self.layout, w.shape()) {
            (Layout::ChannelsFirst, &[cout, cin, kh, kw])
                if kh == self.patch && kw == self.patch =>
            {
                w.clone().into_tensor().into_shape(&[cout, cin * kh * kw])?
            }
            (Layout::ChannelsLast, &[_, _]) => w.clone().into_tensor().permute_axes(&[1, 0])?,
            (layout, shape) => bail!("{FUSED_OP}: {layout:?} weights of shape {shape:?}"),
        };
        let w_scales = konst(model, inputs[4], "the weight scale")?
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec();
        let pair = |i: usize| -> TractResult<Option<ActQuant>> {
            (self.inputs > i)
                .then(|| act_quant(model, inputs[i], inputs[i + 1]))
                .transpose()
        };
        let quants = match (pair(6)?, pair(8)?) {
            (first, None) => (None, first),
            (first, second) => (first, second),
        };
        let x_fact = model.outlet_fact(inputs[0])?;
        ensure!(
            matches!(x_fact.datum_type, DatumType::F32 | DatumType::I8),
            "{FUSED_OP}: input must be f32 (or i8 from a fused product), got {:?}",
            x_fact.datum_type
        );
        let positions = match self.layout {
            Layout::ChannelsFirst => x_fact
                .shape
                .iter()
                .skip(2)
                .map(|d| d.clone() / self.patch as u64)
                .product::<TDim>(),
            Layout::ChannelsLast => {
                let rank = x_fact.rank();
                let per_image = x_fact.shape.iter().take(rank.saturating_sub(1)).skip(1);
                per_image.product::<TDim>()
            }
        };
        let op = QPointwiseConv::new(
            w,
            self.layout,
            x,
            w_scales,
            quants,
            positions.to_usize().ok(),
        )?;
        let op = match self.weight_zero_points.is_empty() {
            true => op,
            false => op.with_weight_zero_points(&self.weight_zero_points)?,
        };
        let op = match self.patch {
            1 => op,
            s => op.over_patches(s)?,
        };
        let op = match self.gelu {
            Some(g) => op.with_gelu(g)?,
            None => op,
        };
        let op = match self.dynamic {
            true => op.with_dynamic_input()?,
            false => op,
        };
        let op = match self.emit_i8 {
            true => op.emitting_i8(act_quant(
                model,
                inputs[self.inputs],
                inputs[self.inputs + 1],
            )?)?,
            false => op,
        };
        model.wire_node(prefix, op, &[inputs[0], inputs[5]])
    }
}

pub(super) fn parse_depthwise(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let inputs = node.input.iter().filter(|s| !s.is_empty()).count();
    ensure!(
        inputs == 6,
        "{FUSED_DEPTHWISE_OP} {}: {inputs} inputs, expected 6",
        node.name
    );
    let pads = match ints_attr_of(node, "pads") {
        Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
            [t, b, l, r].map(|p| p as usize)
        }
        pads => bail!("{FUSED_DEPTHWISE_OP} {}: pads {pads:?}", node.name),
    };
    Ok((expand(FusedDepthwise { pads }), vec![]))
}

/// The parsed [`FUSED_DEPTHWISE_OP`] node, wired into a [`QDepthwiseConv`] once its inputs are
/// typed; `pads` as `[top, bottom, left, right]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FusedDepthwise {
    pads: [usize; 4],
}

impl Expansion for FusedDepthwise {
    fn name(&self) -> StaticName {
        FUSED_DEPTHWISE_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 6)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&inputs[3].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[0].shape[1])?;
        let [t, b, l, r] = self.pads;
        for (axis, pad) in [(2, t + b), (3, l + r)] {
            s.given_2(
                &inputs[0].shape[axis],
                &inputs[3].shape[axis],
                move |s, size, k| s.equals(&outputs[0].shape[axis], size + pad as i64 + 1 - k),
            )?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = act_quant(model, inputs[1], inputs[2])?;
        let w = konst(model, inputs[3], "the weight")?;
        let &[c, 1, kh, kw] = w.shape() else {
            bail!("{FUSED_DEPTHWISE_OP}: weights of shape {:?}", w.shape());
        };
        ensure!(
            w.datum_type() == i8::datum_type(),
            "{FUSED_DEPTHWISE_OP}: weights must be int8, got {w:?}"
        );
        let w = w.try_as_plain_ram()?.as_slice::<i8>()?.to_vec();
        let w_scales = konst(model, inputs[4], "the weight scale")?
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec();
        let op = QDepthwiseConv::new(&w, (c, kh, kw), self.pads, x, &w_scales)?;
        model.wire_node(prefix, op, &[inputs[0], inputs[5]])
    }
}
