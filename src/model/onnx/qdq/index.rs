//! A graph indexed for the matchers: producers, consumers and initializers by name, and what
//! a node's attributes say about its window.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use crate::kernels::qconv::ActQuant;
use crate::model::onnx::proto::{
    arg, dt, floats, int_attr_of, ints, ints_attr_of, is_onnx, is_scalar, same_value,
};

pub(super) struct Index<'g> {
    pub(super) graph: &'g GraphProto,
    pub(super) producer: HashMap<&'g str, usize>,
    pub(super) consumers: HashMap<&'g str, Vec<usize>>,
    pub(super) initializer: HashMap<&'g str, &'g TensorProto>,
}

impl<'g> Index<'g> {
    pub(super) fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        let initializer = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        Index {
            graph,
            producer,
            consumers,
            initializer,
        }
    }

    pub(super) fn producer(&self, name: &str, op_type: &str) -> Option<(usize, &'g NodeProto)> {
        let i = *self.producer.get(name)?;
        let n = &self.graph.node[i];
        (is_onnx(n) && n.op_type == op_type).then_some((i, n))
    }

    /// The one node reading `name`, when it is of `op_type` and `name` is not a graph output.
    pub(super) fn sole_consumer(
        &self,
        name: &str,
        op_type: &str,
    ) -> Option<(usize, &'g NodeProto)> {
        if self.graph.output.iter().any(|o| o.name == name) {
            return None;
        }
        match self.consumers.get(name)?.as_slice() {
            [i] => {
                let n = &self.graph.node[*i];
                (is_onnx(n) && n.op_type == op_type).then_some((*i, n))
            }
            _ => None,
        }
    }

    pub(super) fn init(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializer.get(name).copied()
    }

    /// Whether the scale and zero point inputs of a quantize `q` and a dequantize `dq` are the
    /// same tensors (by name, or by value).
    pub(super) fn same_params(&self, q: &NodeProto, dq: &NodeProto) -> bool {
        (1..3).all(|i| {
            let (a, b) = (arg(q, i), arg(dq, i));
            a == b
                || match (self.init(a), self.init(b)) {
                    (Some(x), Some(y)) => same_value(x, y),
                    _ => false,
                }
        })
    }

    /// A per-tensor activation quantization: an f32 scalar scale and a u8/i8 scalar zero point
    /// (absent means u8 0, unless the node asks for another output type).
    pub(super) fn act_quant(&self, q: &NodeProto) -> Option<ActQuant> {
        if int_attr_of(q, "output_dtype")
            .is_some_and(|t| t != dt::UINT8 as i64 && t != dt::INT8 as i64)
        {
            return None;
        }
        let scale = self
            .init(arg(q, 1))
            .filter(|t| t.data_type == dt::FLOAT && is_scalar(t))?;
        let scale = *floats(scale)?.first()?;
        let (zero_point, signed) = match arg(q, 2) {
            "" => (0, int_attr_of(q, "output_dtype") == Some(dt::INT8 as i64)),
            zp => {
                let t = self.init(zp).filter(|t| is_scalar(t))?;
                (*ints(t)?.first()? as i32, t.data_type == dt::INT8)
            }
        };
        Some(ActQuant {
            scale,
            zero_point,
            signed,
        })
    }
}

/// The value of a scalar f32 initializer, or of the dequantization of a scalar one, or of its
/// quantization and dequantization.
pub(super) fn scalar(ix: &Index, name: &str) -> Option<f32> {
    if let Some(t) = ix.init(name) {
        return (t.data_type == dt::FLOAT && is_scalar(t)).then(|| floats(t)?.first().copied())?;
    }
    let (_, dq) = ix.producer(name, "DequantizeLinear")?;
    // A constant quantized in the graph (the legacy exporter's `Constant` nodes): its value
    // after the round trip.
    if let Some((_, q)) = ix.producer(arg(dq, 0), "QuantizeLinear") {
        let quant = ix.act_quant(q).filter(|_| ix.same_params(q, dq))?;
        let (lo, hi) = if quant.signed { (-128, 127) } else { (0, 255) };
        let v = scalar(ix, arg(q, 0))? / quant.scale;
        let code = (v.round_ties_even() as i32 + quant.zero_point).clamp(lo, hi);
        return Some(quant.dequantize(code));
    }
    let q = ix.init(arg(dq, 0)).filter(|t| is_scalar(t))?;
    let scale = ix
        .init(arg(dq, 1))
        .filter(|t| t.data_type == dt::FLOAT && is_scalar(t))?;
    let zp = match arg(dq, 2) {
        "" => 0,
        zp => *ints(ix.init(zp)?)?.first()?,
    };
    Some((*ints(q)?.first()? - zp) as f32 * *floats(scale)?.first()?)
}

/// The side `s` of a convolution over non-overlapping `s × s` patches (kernel = stride, no
/// padding or dilation, one group: ConvNeXt's stem and downsampling layers), a 1x1 product
/// over the patches.
pub(super) fn patch_size(conv: &NodeProto) -> Option<i64> {
    let [kh, kw] = ints_attr_of(conv, "kernel_shape")? else {
        return None;
    };
    let square = kh == kw && *kh > 1;
    (square && ints_attr_of(conv, "strides") == Some(&[*kh, *kw][..]) && plain_window(conv))
        .then_some(*kh)
}

pub(super) fn is_pointwise(conv: &NodeProto) -> bool {
    all_ones(conv, "strides") && all_ones(conv, "kernel_shape") && plain_window(conv)
}

/// One group, no dilation, no padding (explicit or automatic).
pub(super) fn plain_window(conv: &NodeProto) -> bool {
    int_attr_of(conv, "group").unwrap_or(1) == 1
        && all_ones(conv, "dilations")
        && ints_attr_of(conv, "pads").is_none_or(|v| v.iter().all(|&x| x == 0))
        && matches!(auto_pad(conv), None | Some(b"NOTSET") | Some(b"VALID"))
}

/// Whether the ints attribute `name` is absent (1 by default) or all ones.
pub(super) fn all_ones(conv: &NodeProto, name: &str) -> bool {
    ints_attr_of(conv, name).is_none_or(|v| v.iter().all(|&x| x == 1))
}

/// A convolution's `auto_pad`, if set.
pub(super) fn auto_pad(conv: &NodeProto) -> Option<&[u8]> {
    let attr = conv.attribute.iter().find(|a| a.name == "auto_pad");
    attr.map(|a| a.s.as_slice())
}
