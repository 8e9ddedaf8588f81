//! Helpers over ONNX's protobuf types (`tract_onnx::pb`): building nodes and attributes, reading
//! attributes and initializers, and the data types by name.
//!
//! Relies on nothing inside tract: only on the generated protobuf types.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

/// `TensorProto.data_type` values, by name.
pub(crate) mod dt {
    use super::DataType;

    pub(crate) const FLOAT: i32 = DataType::Float as i32;
    pub(crate) const UINT8: i32 = DataType::Uint8 as i32;
    pub(crate) const INT8: i32 = DataType::Int8 as i32;
    pub(crate) const INT32: i32 = DataType::Int32 as i32;
    pub(crate) const INT64: i32 = DataType::Int64 as i32;
    pub(crate) const FLOAT16: i32 = DataType::Float16 as i32;
}

/// `TensorProto.data_location` of a tensor whose values are in an external file.
const EXTERNAL: i32 = 1;

/// The node's input `i`, or "" when absent (an omitted optional input).
pub(crate) fn arg(n: &NodeProto, i: usize) -> &str {
    n.input.get(i).map(|s| s.as_str()).unwrap_or("")
}

/// [`arg`], owned.
pub(crate) fn input(node: &NodeProto, i: usize) -> String {
    arg(node, i).to_owned()
}

/// Whether the node is a standard ONNX op (the default domain).
pub(crate) fn is_onnx(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// A node of the default domain, unnamed.
pub(crate) fn op(
    op_type: &str,
    input: Vec<String>,
    output: Vec<String>,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input,
        output,
        op_type: op_type.to_owned(),
        attribute,
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: kind as i32,
        ..Default::default()
    }
}

pub(crate) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        i,
        ..attr(name, AttributeType::Int)
    }
}

pub(crate) fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: ints.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

pub(crate) fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        f,
        ..attr(name, AttributeType::Float)
    }
}

pub(crate) fn floats_attr(name: &str, floats: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats,
        ..attr(name, AttributeType::Floats)
    }
}

fn attr_of<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn int_attr_of(node: &NodeProto, name: &str) -> Option<i64> {
    attr_of(node, name).map(|a| a.i)
}

pub(crate) fn ints_attr_of<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
    attr_of(node, name).map(|a| a.ints.as_slice())
}

pub(crate) fn float_attr_of(node: &NodeProto, name: &str) -> Option<f32> {
    attr_of(node, name).map(|a| a.f)
}

pub(crate) fn floats_attr_of<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [f32]> {
    attr_of(node, name).map(|a| a.floats.as_slice())
}

pub(crate) fn is_scalar(t: &TensorProto) -> bool {
    t.dims.iter().product::<i64>() == 1
}

pub(crate) fn same_value(a: &TensorProto, b: &TensorProto) -> bool {
    a.data_type == b.data_type
        && a.dims == b.dims
        && a.raw_data == b.raw_data
        && a.float_data == b.float_data
        && a.int32_data == b.int32_data
}

/// The values of an f32 initializer stored in the file (not external data).
pub(crate) fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    (t.raw_data.len().is_multiple_of(4) && t.data_location != Some(EXTERNAL)).then(|| {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// The values of a u8, i8, i32 or i64 initializer stored in the file.
pub(crate) fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    if !t.int32_data.is_empty() {
        return Some(t.int32_data.iter().map(|&v| v as i64).collect());
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    if t.data_location == Some(EXTERNAL) {
        return None;
    }
    match t.data_type {
        dt::UINT8 => Some(t.raw_data.iter().map(|&b| b as i64).collect()),
        dt::INT8 => Some(t.raw_data.iter().map(|&b| b as i8 as i64).collect()),
        dt::INT64 if t.raw_data.len().is_multiple_of(8) => Some(
            t.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
                .collect(),
        ),
        dt::INT32 if t.raw_data.len().is_multiple_of(4) => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        _ => None,
    }
}
