//! [`QPointwiseConv`] as a tract op.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{Operand, QPointwiseConv};
use crate::kernels::Layout;

impl Op for QPointwiseConv {
    fn name(&self) -> StaticName {
        "QPointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let patches = match self.patch {
            1 => String::new(),
            p => format!(", over {p}x{p} patches"),
        };
        Ok(vec![format!(
            "{}x{} i8, {:?}, kernel {}{}{}{}{patches}",
            self.cout(),
            self.cin(),
            self.layout,
            self.kernel_name()?,
            if self.gelu.is_some() { ", GELU" } else { "" },
            if self.emit.is_some() { ", i8 out" } else { "" },
            if self.dynamic { ", dynamic input" } else { "" },
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QPointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, bias) = args_2!(inputs);
        let shape = x.shape();
        let c_axis = self.channel_axis(shape.len())?;
        ensure!(
            shape[c_axis] == self.in_channels(),
            "integer 1x1 conv: input shape {shape:?}, expected {} channels on axis {c_axis}",
            self.in_channels()
        );
        let bias = bias.cast_to::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            bias.len() == self.cout(),
            "integer 1x1 conv: bias length {}",
            bias.len()
        );
        let x_f32 = match x.datum_type() {
            DatumType::I8 => None,
            _ => Some(x.cast_to::<f32>()?),
        };
        let x_ram = match &x_f32 {
            Some(x) => x.try_as_plain_ram()?,
            None => x.try_as_plain_ram()?,
        };
        let operand = match x_f32 {
            Some(_) => Operand::F32(x_ram.as_slice::<f32>()?),
            None => Operand::I8(x_ram.as_slice::<i8>()?),
        };
        let out = match self.emit {
            Some(_) => self.run::<i8>(operand, shape, bias)?,
            None => self.run::<f32>(operand, shape, bias)?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QPointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let c_axis = self.channel_axis(x.rank())?;
        ensure!(
            x.shape[c_axis] == self.in_channels().to_dim(),
            "integer 1x1 conv: input {x:?}, expected {} channels on axis {c_axis}",
            self.in_channels()
        );
        let mut shape = x.shape.to_tvec();
        shape[c_axis] = self.cout().to_dim();
        for axis in self.spatial_axes(x.rank()) {
            shape[axis] = shape[axis].clone() / self.patch as u64;
        }
        Ok(tvec!(self.output_type().fact(shape)))
    }

    /// Moving the channels of the input (or output) from axis 1 to the last axis switches the
    /// op channels last, the other wire moving the same way: how tract's `ChangeAxes` carries
    /// the channels-last layout it suggests for its depthwise convolutions through the network
    /// instead of stopping at this op with transposes around it. Not the other way: tract
    /// then pushed convnext_tiny's one transpose (after the stem) through every block instead,
    /// and the whole network ran channels first, slower.
    fn change_axes(
        &self,
        _model: &TypedModel,
        node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        let rank = node.outputs[0].fact.rank();
        if !matches!(io, InOut::In(0) | InOut::Out(0)) || rank < 3 {
            return Ok(None);
        }
        let to_last = AxisOp::Move(1, rank - 1);
        if self.layout != Layout::ChannelsFirst || *change != to_last {
            return Ok(None);
        }
        Ok(Some(AxisChangeConsequence {
            substitute_op: Some(Box::new(self.channels_last()?)),
            wire_changes: tvec!(
                (InOut::In(0), change.clone()),
                (InOut::Out(0), change.clone())
            ),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = inputs[0];
        let macs = x.shape.iter().product::<TDim>() * self.cout();
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs)))
    }

    as_op!();
}
