//! Constant casts: a `Cast` of a constant becomes the cast constant.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cast::Cast;

/// Casts of constants computed once here. Converting an f16 model to f32 puts a Cast after
/// every weight; tract folds constants only up to a size budget (4 MiB), so the large ones
/// (ConvNeXt-T's MLP weights) were converted again at every inference.
pub(super) fn fold_constant_casts(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(cast) = node.op_as::<Cast>() else {
            continue;
        };
        let Some(konst) = model.outlet_fact(node.inputs[0])?.konst.clone() else {
            continue;
        };
        let value = konst.cast_to_dt(cast.to)?.into_owned();
        let mut patch = TypedModelPatch::default();
        let wire = patch.add_const(format!("{}.folded", node.name), value)?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
        patch.apply(model)?;
        folded += 1;
    }
    Ok(folded)
}
