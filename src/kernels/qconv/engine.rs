//! The code computing the integer sums and the CPU policy choosing it: tract-linalg's int8
//! kernels, our own [`product`] (x86 with AVX2 alone, ARM) or, on x86, our [`vnni`] product
//! on AVX-512 VNNI and, channels last, our [`amx`] one on Intel AMX (channels first there,
//! tract's AMX kernel).

use std::sync::OnceLock;

use tract_linalg::mmm::{MMMInputValue, MatMatMul, Query};
use tract_linalg::MmmDispatch;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
use crate::kernels::product;
#[cfg(target_arch = "x86_64")]
use crate::kernels::product::{amx, vnni};
use crate::kernels::Layout;

/// Everything derived from the weights: the sums when the op is built, the packed weights
/// when first needed (see [`QPointwiseConv::engine`](super::QPointwiseConv)), so that the
/// ops tract makes and drops while it rewrites the graph never pack theirs.
#[derive(Debug)]
pub(super) struct Kernel {
    pub(super) engine: OnceLock<Engine>,
    /// The product width (positions per image) the engine is chosen for, if known.
    pub(super) n: Option<usize>,
    /// `Σ_k w[co, k]`, for the input zero point's share of each output channel's sum: one
    /// per output channel.
    pub(super) w_sums: Vec<i32>,
    /// Values per output channel.
    pub(super) cin: usize,
}

impl Kernel {
    /// The sums of `[Cout, Cin]` i8 weights, for a product `n` wide.
    pub(super) fn of(weights: &Tensor, n: Option<usize>) -> TractResult<Kernel> {
        let cin = weights.shape()[1];
        let w = weights.try_as_plain_ram()?.as_slice::<i8>()?;
        let w_sums = w
            .chunks(cin)
            .map(|row| row.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        Ok(Kernel {
            engine: OnceLock::new(),
            n,
            w_sums,
            cin,
        })
    }
}

/// The code computing the integer sums, with the weights packed for it.
#[derive(Debug)]
pub(super) enum Engine {
    /// A tract-linalg kernel (VNNI on x86; on ARM, for weights our product cannot take).
    Tract {
        mmm: Box<dyn MatMatMul>,
        packing: usize,
        packed: Box<dyn MMMInputValue>,
    },
    /// Our own product ([`product`]) where tract's int8 kernels are slow: weights as lanes of
    /// a channels-last product (channels are the output's contiguous axis), as rows of a
    /// channels-first one.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
    Own(OwnWeights),
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
#[derive(Debug)]
pub(super) enum OwnWeights {
    Lanes(product::LanePanels),
    Rows(product::Rows),
    /// Channels last on AMX ([`amx`]).
    #[cfg(target_arch = "x86_64")]
    Amx(amx::Lanes),
    /// Channels last on AVX-512 VNNI ([`vnni`]).
    #[cfg(target_arch = "x86_64")]
    Vnni(vnni::Lanes),
    /// Channels first on AVX-512 VNNI: the weights, `[Cout, Cin]` (the op's own, shared), are
    /// the product's rows and each image's positions its lanes, packed as it comes.
    #[cfg(target_arch = "x86_64")]
    VnniRows(Arc<Tensor>),
}

impl Engine {
    /// The engine for `[cout, cin]` weights: ours where tract's would be slow or cannot
    /// gather the patches of a convolution `over_patches`, else the tract-linalg kernel for
    /// the product's shape.
    pub(super) fn new(
        weights: &Arc<Tensor>,
        layout: Layout,
        n: Option<usize>,
        over_patches: bool,
    ) -> TractResult<Engine> {
        let (cout, cin) = (weights.shape()[0], weights.shape()[1]);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
        {
            let w = weights.try_as_plain_ram()?.as_slice::<i8>()?;
            #[cfg(target_arch = "x86_64")]
            if layout == Layout::ChannelsLast {
                let at = |l: usize, k: usize| w[l * cin + k];
                if amx::available() {
                    return Ok(Engine::Own(OwnWeights::Amx(amx::Lanes::pack(
                        cout, cin, at,
                    ))));
                }
                if vnni::available() {
                    return Ok(Engine::Own(OwnWeights::Vnni(vnni::Lanes::pack(
                        cout, cin, at,
                    ))));
                }
            } else if vnni::available() && !amx::available() {
                return Ok(Engine::Own(OwnWeights::VnniRows(weights.clone())));
            }
            if own_product_takes(w) || (over_patches && patches_run(w)) {
                return Ok(Engine::Own(match layout {
                    Layout::ChannelsLast => {
                        OwnWeights::Lanes(product::LanePanels::pack(cout, cin, |l, k| {
                            w[l * cin + k]
                        }))
                    }
                    Layout::ChannelsFirst => OwnWeights::Rows(product::Rows::pack(w, cout, cin)),
                }));
            }
        }
        let _ = (layout, over_patches);
        let (mmm, packing) = pick_kernel(cout, cin, n)?;
        let packed = mmm.packings()[packing].0.prepare_one(weights, 1, 0)?;
        Ok(Engine::Tract {
            mmm,
            packing,
            packed,
        })
    }

    pub(super) fn name(&self) -> String {
        match self {
            Engine::Tract { mmm, .. } => mmm.name().to_string(),
            #[cfg(target_arch = "x86_64")]
            Engine::Own(OwnWeights::Amx(_)) => amx::kernel().to_string(),
            #[cfg(target_arch = "x86_64")]
            Engine::Own(OwnWeights::Vnni(_) | OwnWeights::VnniRows(_)) => {
                vnni::kernel().to_string()
            }
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
            Engine::Own(_) => product::kernel().to_string(),
        }
    }
}

/// Whether this CPU has int8 product kernels that beat tract's f32 ones, so that quantized
/// models gain from the integer path: on x86, tract-linalg's VNNI kernels (AVX-512 VNNI,
/// AVX-VNNI) or, with AVX2 alone, our [`product`] — tract's own AVX2 int8 kernel widens
/// one byte at a time, far slower than its f32 kernels; on ARM, our product (on armv7, where
/// the CPU has NEON). Elsewhere quantized models keep the float path.
pub fn integer_kernels_pay() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_vnni() || product::available()
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    {
        product::available()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
    {
        false
    }
}

/// Whether tract-linalg's own int8 matmul kernel is much slower than its f32 ones here: x86
/// without VNNI (see [`integer_kernels_pay`]).
pub fn tract_int8_kernels_slow() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !has_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether our own [`product`] can run a convolution over patches with weights `w`, gathering
/// the patches as it packs; elsewhere tract's kernel multiplies them gathered beforehand.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
pub(super) fn patches_run(w: &[i8]) -> bool {
    product::available() && product::exact_for(w)
}

/// Whether weights `w` (`[Cout, Cin]` i8) run on our own [`product`] here: where it beats
/// tract-linalg's int8 kernels, and computes these weights exactly ([`product::exact_for`]).
/// It beats them on x86 without VNNI (see [`integer_kernels_pay`]) and on ARM, where
/// tract's SMLAL / VMLAL kernels spend as many instructions on int8 products as its f32 kernels
/// do, and with SDOT tract's kernel and its packing cost more than ours.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
pub(super) fn own_product_takes(w: &[i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !has_vnni() && product::available() && product::exact_for(w)
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    {
        product::available() && product::exact_for(w)
    }
}
/// AVX-512 VNNI or AVX-VNNI: tract-linalg has fast int8 kernels for them.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_vnni() -> bool {
    crate::kernels::cpu::has(crate::kernels::cpu::Feature::Vnni)
}

/// The i8×i8→i32 kernel for a `m × k` by `k × n` product: tract's pick, unless it leaves a
/// larger tile unused on a wide product (`n` ≥ 16, every ConvNeXt stage at 224). tract's
/// choice among VNNI kernels follows its probe of FMA units, which classes Zen 4 as
/// single-unit and picks the 8x8 VNNI kernel where the 16x16 one runs the same sums
/// (bit-identical, i32) faster. Where tract picks a tile as large as any (AMX's 16x16 on
/// Sapphire Rapids), its pick stands.
pub(super) fn pick_kernel(
    m: usize,
    k: usize,
    n: Option<usize>,
) -> TractResult<(Box<dyn MatMatMul>, usize)> {
    let dispatch = MmmDispatch::native();
    let query = Query::plain(DatumType::I32, Some(m), Some(k), n);
    let picked = dispatch
        .pick(&query)
        .context("no integer matmul kernel on this CPU")?;
    let tile = |mmm: &dyn MatMatMul| mmm.mr() * mmm.nr();
    let widest = dispatch
        .suitable(&query)
        .into_iter()
        .filter(|(mmm, _, extractor)| extractor.is_none() && mmm.arch().is_some())
        .max_by_key(|(mmm, _, _)| tile(&**mmm));
    let chosen = match widest {
        Some(w) if n.is_some_and(|n| n >= 16) && tile(&*w.0) > tile(&*picked.0) => w,
        _ => picked,
    };
    let (mmm, packing, extractor) = chosen;
    ensure!(
        extractor.is_none(),
        "integer matmul kernel {} needs a panel extractor",
        mmm.name()
    );
    Ok((mmm, packing))
}
