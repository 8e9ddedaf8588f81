//! The epilogue: from a block of integer sums to the op's output values (f32, or i8 for the
//! next product), one output channel or position at a time. Sixteen values a step in NEON
//! registers on aarch64, the portable loop (compiled per x86 SIMD level) elsewhere and for the
//! tails; both compute [`finish`]'s operations in its order.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::kernels::quantize::{FastQuantize, Fq};
use crate::kernels::simd::multiversion;

/// What follows the output's quantization when it depends on the quantized value alone (the
/// QDQ GELU, the quantization to the next product's input): its 256 results, indexed by the
/// quantized byte. The table is made by the same code the element-wise path ran (tract's erf
/// kernel included) on each of the 256 values, so a lookup is bit-identical to it — and
/// replaces the erf and six fake quantizations per element of ConvNeXt's widest tensor.
#[derive(Debug)]
pub(super) struct Lookup {
    pub(super) index: FastQuantize,
    pub(super) table: Table,
}

#[derive(Debug)]
pub(super) enum Table {
    F32(Box<[f32; 256]>),
    I8(Box<[i8; 256]>),
}

impl Lookup {
    /// `out = table[idx]`, `idx` the quantized bytes of the output values.
    pub(super) fn gather<T: Emit>(&self, idx: &[u8], out: &mut [T]) -> TractResult<()> {
        let table = T::table(&self.table).context("integer 1x1 conv: output type mismatch")?;
        T::gather(table, idx, out);
        Ok(())
    }
}

/// An output element type: f32, or i8 for the next integer product.
pub(super) trait Emit: Datum + Copy {
    fn table(t: &Table) -> Option<&[Self; 256]>;
    /// The row itself when the epilogue can write f32 into it directly.
    fn plain(row: &mut [Self]) -> Option<&mut [f32]>;
    /// The row and the table as bytes when the output is one byte a value: a lookup can
    /// then write the row directly.
    fn bytes<'a>(row: &'a mut [Self], table: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])>;
    /// `out[i] = table[idx[i]]`.
    fn gather(table: &[Self; 256], idx: &[u8], out: &mut [Self]) {
        for (o, &i) in out.iter_mut().zip(idx) {
            *o = table[i as usize];
        }
    }
}

impl Emit for f32 {
    fn table(t: &Table) -> Option<&[f32; 256]> {
        match t {
            Table::F32(t) => Some(t),
            Table::I8(_) => None,
        }
    }
    fn plain(row: &mut [f32]) -> Option<&mut [f32]> {
        Some(row)
    }
    fn bytes<'a>(_: &'a mut [f32], _: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])> {
        None
    }
}

impl Emit for i8 {
    fn table(t: &Table) -> Option<&[i8; 256]> {
        match t {
            Table::I8(t) => Some(t),
            Table::F32(_) => None,
        }
    }
    fn plain(_: &mut [i8]) -> Option<&mut [f32]> {
        None
    }
    fn bytes<'a>(row: &'a mut [i8], table: &'a Table) -> Option<(&'a mut [u8], &'a [u8; 256])> {
        let table = Self::table(table)?;
        // SAFETY: i8 and u8 have the same size and alignment.
        unsafe {
            Some((
                std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut u8, row.len()),
                &*(table as *const [i8; 256] as *const [u8; 256]),
            ))
        }
    }
    fn gather(table: &[i8; 256], idx: &[u8], out: &mut [i8]) {
        gather_i8(table, idx, out)
    }
}

/// `out[i] = table[idx[i]]` for a 256-byte table; sixteen a step on aarch64
/// ([`crate::kernels::neon::lookup16`]), 64 on x86_64 with AVX-512 VBMI
/// ([`crate::kernels::vbmi::gather`]).
pub(super) fn gather_i8(table: &[i8; 256], idx: &[u8], out: &mut [i8]) {
    let n = idx.len().min(out.len());
    // SAFETY: i8 and u8 have the same size and alignment.
    let (bytes, out) = unsafe {
        (
            &*(table as *const [i8; 256] as *const [u8; 256]),
            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n),
        )
    };
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::has_avx512_vbmi() {
        // SAFETY: the CPU has AVX-512 VBMI.
        return unsafe { crate::kernels::vbmi::gather(bytes, idx, out) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is in the aarch64 baseline; each step reads idx[at..at + 16] and writes
    // out[at..at + 16] with at + 16 <= n.
    let done = unsafe {
        use std::arch::aarch64::{vld1q_u8, vst1q_u8};
        crate::kernels::neon::blocks(n, |at| {
            let r = crate::kernels::neon::lookup16(bytes, vld1q_u8(idx.as_ptr().add(at)));
            vst1q_u8(out.as_mut_ptr().add(at), r);
        })
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    for (o, &i) in out[done..].iter_mut().zip(&idx[done..n]) {
        *o = bytes[i as usize];
    }
}

/// Everything the epilogue applies after the integer sum, for one output channel `co`:
/// `v = (acc + offset[co]) · scale[co]`, then `mid`, `+ bias[co]`, then `y`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epilogue {
    pub(super) mid: Option<Fq>,
    pub(super) y: Option<Fq>,
}

/// The input's quantization for one evaluation and what the epilogue derives from it.
pub(super) struct InputQuant {
    /// To i8 (a u8 activation shifted by −128, see [`ActQuant::to_i8`]).
    pub(super) quantizer: FastQuantize,
    /// `−zx_i8 · Σ_k w[co, k]`.
    pub(super) offset: Vec<i32>,
    /// `sx · sw[co]`.
    pub(super) scale: Vec<f32>,
}

/// One output channel's epilogue constants.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub(super) offset: i32,
    pub(super) scale: f32,
    pub(super) bias: f32,
}

/// One output value from its integer sum (see [`Epilogue`]).
#[inline(always)]
pub(super) fn finish(acc: i32, offset: i32, scale: f32, bias: f32, e: Epilogue) -> f32 {
    let mut v = (acc + offset) as f32 * scale;
    if let Some(q) = e.mid {
        v = q.apply(v);
    }
    v += bias;
    match e.y {
        Some(q) => q.apply(v),
        None => v,
    }
}

multiversion! {
    /// One output channel of a channels-first product.
    pub(super) fn channel_row(acc: &[i32], out: &mut [f32], row: Row, e: Epilogue) {
        let done = channel_row_prefix(acc, out, row, e);
        for (a, y) in acc[done..].iter().zip(out[done..].iter_mut()) {
            *y = finish(*a, row.offset, row.scale, row.bias, e);
        }
    }
}

/// One output channel's values (as [`channel_row`] computes them) quantized by `index` into
/// `idx`, or with a `table`, the table's bytes for them: in one pass on aarch64; `values` is
/// scratch of the same length.
pub(super) fn channel_codes(
    acc: &[i32],
    idx: &mut [u8],
    row: Row,
    e: Epilogue,
    index: FastQuantize,
    values: &mut [f32],
    table: Option<&[u8; 256]>,
) {
    let done = channel_codes_prefix(acc, idx, row, e, index, table);
    let rest = acc.len().min(idx.len()) - done;
    channel_row(&acc[done..], &mut values[..rest], row, e);
    let idx = &mut idx[done..][..rest];
    index.quantize_bytes(&values[..rest], idx);
    if let Some(table) = table {
        lookup_bytes(table, idx);
    }
}

/// `bytes[i] = table[bytes[i]]`; 64 a step on x86_64 with AVX-512 VBMI.
pub(super) fn lookup_bytes(table: &[u8; 256], bytes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::has_avx512_vbmi() {
        // SAFETY: the CPU has AVX-512 VBMI.
        return unsafe { crate::kernels::vbmi::lookup(table, bytes) };
    }
    for b in bytes.iter_mut() {
        *b = table[*b as usize];
    }
}

/// `(acc + offset) · scale + bias` of one output channel, four values at a time in NEON
/// registers: the scalar [`finish`]'s operations in its order, so the same values.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
pub(super) struct Affine4 {
    pub(super) offset: std::arch::aarch64::int32x4_t,
    pub(super) scale: std::arch::aarch64::float32x4_t,
    pub(super) bias: std::arch::aarch64::float32x4_t,
}

#[cfg(target_arch = "aarch64")]
impl Affine4 {
    #[inline(always)]
    pub(super) fn new(row: Row) -> Affine4 {
        use std::arch::aarch64::{vdupq_n_f32, vdupq_n_s32};
        // SAFETY: NEON is in the aarch64 baseline.
        unsafe {
            Affine4 {
                offset: vdupq_n_s32(row.offset),
                scale: vdupq_n_f32(row.scale),
                bias: vdupq_n_f32(row.bias),
            }
        }
    }

    /// The sixteen values of the sums at `p`.
    ///
    /// # Safety
    /// `p` points to sixteen readable i32.
    #[inline(always)]
    unsafe fn values(&self, p: *const i32) -> [std::arch::aarch64::float32x4_t; 4] {
        use std::arch::aarch64::*;
        // SAFETY: NEON is in the aarch64 baseline; `p` holds sixteen i32, as the caller promises.
        unsafe {
            let a = vld1q_s32_x4(p);
            [a.0, a.1, a.2, a.3].map(|a| {
                let v = vcvtq_f32_s32(vaddq_s32(a, self.offset));
                vaddq_f32(vmulq_f32(v, self.scale), self.bias)
            })
        }
    }
}

/// [`channel_row`] of the leading values, sixteen at a time on aarch64 (eight on armv7 with
/// NEON) where the epilogue has no `mid` quantization; returns how many.
#[inline(always)]
pub(super) fn channel_row_prefix(acc: &[i32], out: &mut [f32], row: Row, e: Epilogue) -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        use crate::kernels::quantize::Fq4;
        use std::arch::aarch64::{float32x4_t, float32x4x4_t, vst1q_f32_x4};
        if e.mid.is_some() {
            return 0;
        }
        let f = Affine4::new(row);
        let n = acc.len().min(out.len());
        // Written through a pointer taken from the exclusive borrow: the closure below only
        // reads what it captures.
        let dst = out.as_mut_ptr();
        // SAFETY: NEON is in the aarch64 baseline; each step reads acc[at..at + 16] and writes
        // out[at..at + 16] with at + 16 <= n.
        let run = |post: &dyn Fn(float32x4_t) -> float32x4_t| unsafe {
            crate::kernels::neon::blocks(n, |at| {
                let [a, b, c, d] = f.values(acc.as_ptr().add(at)).map(post);
                vst1q_f32_x4(dst.add(at), float32x4x4_t(a, b, c, d));
            })
        };
        match e.y.map(Fq4::new) {
            Some(y) => run(&|v| y.apply(v)),
            None => run(&|v| v),
        }
    }
    #[cfg(target_arch = "arm")]
    if e.mid.is_none() && crate::kernels::neon32::available() {
        // SAFETY: the CPU has NEON.
        let done =
            unsafe { crate::kernels::neon32::affine(acc, out, row.offset, row.scale, row.bias) };
        if let Some(y) = e.y {
            y.apply_all(&mut out[..done]);
        }
        return done;
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (acc, out, row, e);
        0
    }
}

/// [`channel_codes`] of the leading values, sixteen at a time on aarch64 where the epilogue
/// has neither `mid` nor `y` (a lookup's index is the output quantization); returns how many.
#[inline(always)]
pub(super) fn channel_codes_prefix(
    acc: &[i32],
    idx: &mut [u8],
    row: Row,
    e: Epilogue,
    index: FastQuantize,
    table: Option<&[u8; 256]>,
) -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        if e.mid.is_some() || e.y.is_some() {
            return 0;
        }
        let (f, q) = (Affine4::new(row), index.sixteen());
        let n = acc.len().min(idx.len());
        // SAFETY: NEON is in the aarch64 baseline; each step reads acc[at..at + 16] and writes
        // idx[at..at + 16] with at + 16 <= n.
        unsafe {
            let codes = |at: usize| q.bytes_of(f.values(acc.as_ptr().add(at)));
            let out = idx.as_mut_ptr();
            match table {
                Some(t) => crate::kernels::neon::blocks(n, |at| {
                    let bytes = crate::kernels::neon::lookup16(t, codes(at));
                    std::arch::aarch64::vst1q_u8(out.add(at), bytes);
                }),
                None => crate::kernels::neon::blocks(n, |at| {
                    std::arch::aarch64::vst1q_u8(out.add(at), codes(at));
                }),
            }
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (acc, idx, row, e, index, table);
        0
    }
}

multiversion! {
    /// One position of a channels-last product: every output channel.
    pub(super) fn position_row(
        acc: &[i32],
        out: &mut [f32],
        offset: &[i32],
        scale: &[f32],
        bias: &[f32],
        e: Epilogue,
    ) {
        let it = acc.iter().zip(offset).zip(scale).zip(bias);
        for ((((a, o), s), b), y) in it.zip(out.iter_mut()) {
            *y = finish(*a, *o, *s, *b, e);
        }
    }
}
