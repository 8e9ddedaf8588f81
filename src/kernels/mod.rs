//! Our own compute kernels, wrapped as tract ops, for the spots where tract 0.23.9's kernels are
//! the bottleneck on ConvNeXt (see `convnext-edge profile`). Each is tested against the scalar
//! definition it replaces.

pub mod depthwise;
pub mod layer_norm;
#[cfg(target_arch = "x86_64")]
pub mod madd;
pub mod qconv;
pub mod quantize;
pub(crate) mod simd;

/// Where the channels are: `[N, C, …]` (NCHW; a 1x1 conv) or `[…, C]` (NHWC; a MatMul by a
/// constant, PyTorch's `Linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    ChannelsFirst,
    ChannelsLast,
}
