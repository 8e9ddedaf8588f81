//! Our own compute kernels, wrapped as tract ops, for the spots where tract 0.23.9's kernels are
//! the bottleneck on ConvNeXt (see `convnext-edge profile`). Each is tested against the scalar
//! definition it replaces.

pub mod depthwise;
pub mod layer_norm;
pub mod qconv;
pub mod quantize;
pub(crate) mod simd;
