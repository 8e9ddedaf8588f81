//! A product's quantized weights, brought to the one form the fused ops read: int8 with zero
//! point 0, in the product's own orientation.
//!
//! Quantizers store them several ways for the same function: s8 or u8, symmetric or with zero
//! points (`WeightSymmetric=False`, `reduce_range`'s 7-bit u8), and a `Gemm`'s `transB`
//! weights as `[cout, cin]` behind a `Transpose`. Where `q − zero_point` fits in int8 for
//! every weight (always for s8 symmetric, 7-bit u8 and u8 around 128), the centred values are
//! the same weights exactly; full-range asymmetric ones keep zero points that the op applies.

use tract_onnx::pb::{NodeProto, TensorProto};

use super::index::Index;
use super::Miss;
use crate::model::onnx::proto::{arg, dt, int_attr_of, ints, ints_attr_of};

/// Where a product's output channels are in its weight tensor.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Orientation {
    /// A convolution's `[cout, cin / group, kh, kw]`.
    Conv,
    /// A MatMul's `[cin, cout]`.
    MatMul,
}

/// Weights as a fused node reads them.
pub(super) struct Weights {
    /// The int8 weight tensor: the file's, or `new`.
    pub(super) name: String,
    /// A centred, shifted or transposed copy, added to the graph with the fused node.
    pub(super) new: Option<TensorProto>,
    /// Zero points left for the op to subtract (see [`int8_copy`]); empty: none.
    pub(super) zero_points: Vec<i64>,
    /// The f32 scale: one, or one per output channel.
    pub(super) scale: String,
    pub(super) dims: Vec<i64>,
    /// The weights' `DequantizeLinear`.
    pub(super) dq: usize,
}

impl Weights {
    pub(super) fn cout(&self, orientation: Orientation) -> i64 {
        match orientation {
            Orientation::Conv => self.dims[0],
            Orientation::MatMul => self.dims[1],
        }
    }
}

/// The weights `name` a product reads: `DequantizeLinear` of an 8-bit constant, for a MatMul
/// maybe behind a 2-D `Transpose`; `fresh` names a copy if one is needed.
pub(super) fn weights(
    ix: &Index,
    name: &str,
    orientation: Orientation,
    fresh: &str,
) -> Result<Weights, Miss> {
    let DequantizedConstant {
        transposed,
        dq_ix,
        dq,
        w,
    } = dequantized_constant(ix, name).ok_or("weights are not a dequantized 8-bit constant")?;
    if transposed && (orientation != Orientation::MatMul || w.dims.len() != 2) {
        return Err("weights transposed other than as a Gemm's transB");
    }
    let cout_axis: i64 = match (orientation, transposed) {
        (Orientation::Conv, _) | (Orientation::MatMul, true) => 0,
        (Orientation::MatMul, false) => 1,
    };
    let rank = w.dims.len() as i64;
    let ok_rank = match orientation {
        Orientation::Conv => rank == 4,
        Orientation::MatMul => rank == 2,
    };
    if !ok_rank {
        return Err("weights of an unexpected rank");
    }
    let cout = w.dims[cout_axis as usize];
    let scale = ix
        .init(arg(dq, 1))
        .filter(|t| t.data_type == dt::FLOAT)
        .ok_or("weight scale is not an f32 constant")?;
    let per_channel = match scale.dims[..] {
        [] | [1] => false,
        [c] if c == cout => true,
        _ => return Err("weight scales neither per tensor nor per output channel"),
    };
    let axis = int_attr_of(dq, "axis").unwrap_or(1);
    if per_channel && axis != cout_axis && axis != cout_axis - rank {
        return Err("per-channel weight scales along the input channels");
    }
    let zero_points = match arg(dq, 2) {
        "" => None,
        zp => Some(ix.init(zp).ok_or("weight zero point is not a constant")?),
    };
    let int8 = int8_copy(w, zero_points, orientation, transposed, fresh)?;
    let (name, dims) = match &int8.copy {
        Some(t) => (t.name.clone(), t.dims.clone()),
        None => (w.name.clone(), w.dims.clone()),
    };
    Ok(Weights {
        name,
        dims,
        new: int8.copy,
        zero_points: int8.zero_points,
        scale: scale.name.clone(),
        dq: dq_ix,
    })
}

/// Weights in int8 for the fused op: the file's tensor or a copy, and the zero points left.
pub(super) struct Int8 {
    /// A copy (centred, shifted or transposed), `None` when the file's tensor is it.
    pub(super) copy: Option<TensorProto>,
    /// Zero points the op still subtracts (one, or one per output channel; empty: none).
    pub(super) zero_points: Vec<i64>,
}

/// `w` as int8 in the orientation the product reads (`[cin, cout]` if `transposed`), named
/// after `fresh`. Centred (`w − zero_point`) where that fits in int8, with no zero point
/// left; otherwise, for full-range asymmetric weights, u8 values shifted by −128 (s8 ones as
/// they are) with the zero points shifted alike, which the op subtracts through the input's
/// row sums (`QPointwiseConv::with_weight_zero_points`).
pub(super) fn int8_copy(
    w: &TensorProto,
    zero_point: Option<&TensorProto>,
    orientation: Orientation,
    transposed: bool,
    fresh: &str,
) -> Result<Int8, Miss> {
    let zero_points = match zero_point {
        None => vec![0],
        Some(zp) => ints(zp).ok_or("weight zero point is not a constant")?,
    };
    if w.data_type == dt::INT8 && zero_points.iter().all(|&z| z == 0) && !transposed {
        return Ok(Int8 {
            copy: None,
            zero_points: vec![],
        });
    }
    let values = ints(w).ok_or("weights kept in external data need re-centring or transposing")?;
    let cout = match (orientation, transposed) {
        (Orientation::Conv, _) | (Orientation::MatMul, true) => w.dims[0],
        (Orientation::MatMul, false) => *w.dims.last().ok_or("scalar weights")?,
    } as usize;
    if cout == 0 || (zero_points.len() != 1 && zero_points.len() != cout) {
        return Err("weight zero points neither per tensor nor per output channel");
    }
    let channel = |i: usize| match (orientation, transposed) {
        (Orientation::Conv, _) | (Orientation::MatMul, true) => i / (values.len() / cout),
        (Orientation::MatMul, false) => i % cout,
    };
    let zero_point = |i: usize| {
        zero_points[if zero_points.len() == 1 {
            0
        } else {
            channel(i)
        }]
    };
    let centred: Vec<i64> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| v - zero_point(i))
        .collect();
    let (stored, left) = if centred.iter().all(|&v| i8::try_from(v).is_ok()) {
        (centred, vec![])
    } else {
        let shift = if w.data_type == dt::UINT8 { 128 } else { 0 };
        let left = zero_points.iter().map(|&z| z - shift).collect();
        if shift == 0 && !transposed {
            return Ok(Int8 {
                copy: None,
                zero_points: left,
            });
        }
        (values.iter().map(|&v| v - shift).collect(), left)
    };
    let (dims, raw) = if transposed {
        let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
        let raw = (0..rows * cols)
            .map(|i| stored[(i % rows) * cols + i / rows] as i8 as u8)
            .collect();
        (vec![w.dims[1], w.dims[0]], raw)
    } else {
        (
            w.dims.clone(),
            stored.iter().map(|&v| v as i8 as u8).collect(),
        )
    };
    Ok(Int8 {
        copy: Some(TensorProto {
            name: format!("{fresh}::cxe_weights"),
            data_type: dt::INT8,
            dims,
            raw_data: raw,
            ..Default::default()
        }),
        zero_points: left,
    })
}

/// Weights as a quantizer stores them: an 8-bit constant `w`, its `DequantizeLinear` (and that
/// node's index), maybe behind a 2-D `Transpose` (a `Gemm`'s `transB`).
pub(super) struct DequantizedConstant<'g> {
    pub(super) transposed: bool,
    pub(super) dq_ix: usize,
    pub(super) dq: &'g NodeProto,
    pub(super) w: &'g TensorProto,
}

/// The [`DequantizedConstant`] the tensor `name` is, if it is one.
pub(super) fn dequantized_constant<'g>(
    ix: &Index<'g>,
    name: &str,
) -> Option<DequantizedConstant<'g>> {
    let transpose = ix
        .producer(name, "Transpose")
        .filter(|(_, t)| ints_attr_of(t, "perm").is_none_or(|p| p == [1, 0]));
    let dq_of = transpose.map_or(name, |(_, t)| arg(t, 0));
    let (dq_ix, dq) = ix.producer(dq_of, "DequantizeLinear")?;
    let w = ix.init(arg(dq, 0))?;
    (w.data_type == dt::INT8 || w.data_type == dt::UINT8).then_some(DequantizedConstant {
        transposed: transpose.is_some(),
        dq_ix,
        dq,
        w,
    })
}

/// Whether `node` is a product reading quantized weights (see [`weights`] for what
/// counts), with how it groups its input channels: 1 for a full product, C for depthwise.
pub(super) fn quantized_product(ix: &Index, node: &NodeProto) -> Option<i64> {
    let orientation = match node.op_type.as_str() {
        "Conv" => Orientation::Conv,
        "MatMul" => Orientation::MatMul,
        "Gemm" => Orientation::MatMul,
        "ConvInteger" | "MatMulInteger" => {
            ix.init(arg(node, 1))?;
            return Some(int_attr_of(node, "group").unwrap_or(1));
        }
        _ => return None,
    };
    dequantized_constant(ix, arg(node, 1))?;
    Some(match orientation {
        Orientation::Conv => int_attr_of(node, "group").unwrap_or(1),
        Orientation::MatMul => 1,
    })
}
