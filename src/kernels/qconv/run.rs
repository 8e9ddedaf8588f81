//! Running the op: one quantization of the input, the product on the chosen engine, the
//! epilogue on each block of sums.

use std::borrow::Cow;

use crate::kernels::threads::par_chunks_mut;
use tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
use crate::kernels::product;
#[cfg(target_arch = "x86_64")]
use crate::kernels::product::{amx, vnni};
use crate::kernels::quantize::FastQuantize;
use crate::kernels::{Layout, Patches, Sums};

use super::engine::Engine;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
use super::engine::OwnWeights;
use super::epilogue::{channel_codes, channel_row, position_row, Emit, InputQuant, Row};
use super::{Operand, QPointwiseConv};

impl QPointwiseConv {
    /// `x` as the i8 the product reads: quantized, or as it came.
    pub(super) fn quantized<'x>(&self, x: Operand<'x>, quantizer: FastQuantize) -> Cow<'x, [i8]> {
        match x {
            Operand::F32(x) => {
                let mut q = vec![0i8; x.len()];
                quantizer.quantize_i8(x, &mut q);
                Cow::Owned(q)
            }
            Operand::I8(x) => Cow::Borrowed(x),
        }
    }

    /// [`Self::run_matrix`] on our own product: the epilogue runs on each block of sums as
    /// soon as it is computed.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn own_product<T: Emit>(
        &self,
        w: &OwnWeights,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
        patches: Option<Patches>,
        out: &mut [T],
        finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
    ) -> TractResult<()> {
        let cin = self.cin();
        let put = |start: usize, row: &mut [i8]| match x.slice(start, row.len()) {
            Operand::F32(src) => quantizer.quantize_i8(src, row),
            Operand::I8(src) => row.copy_from_slice(src),
        };
        // Row `r` of a channels-last product: a position, or a patch of `side` runs.
        let fill = |r: usize, row: &mut [i8]| match patches {
            None => put(r * cin, row),
            Some(g) => {
                let run = g.side * self.in_channels();
                for (dy, part) in row.chunks_exact_mut(run).enumerate() {
                    put(g.run_start(r, dy, self.in_channels()), part);
                }
            }
        };
        match w {
            OwnWeights::Lanes(w) => {
                let rows = product::RowSource::Fill {
                    rows: p,
                    k: cin,
                    fill: &fill,
                };
                product::product_into(w, rows, out, finish)
            }
            #[cfg(target_arch = "x86_64")]
            OwnWeights::Amx(w) => amx::product_into(w, p, &fill, out, finish),
            #[cfg(target_arch = "x86_64")]
            OwnWeights::Vnni(w) => vnni::product_into(w, p, &fill, out, finish),
            OwnWeights::Rows(w) => {
                let xq = self.channels_first_matrix(x, quantizer, p, patches);
                let x = product::LanePanels::pack_transposed(&xq, cin, p, p)?;
                product::product_into(&x, product::RowSource::Packed(w), out, finish)
            }
            #[cfg(target_arch = "x86_64")]
            OwnWeights::VnniRows(w) => {
                let xq = self.channels_first_matrix(x, quantizer, p, patches);
                let x = vnni::Lanes::pack_transposed(&xq, cin, p, p);
                let w = w.try_as_plain_ram()?;
                let w = w.as_slice::<i8>()?;
                let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&w[r * cin..][..cin]);
                vnni::product_into(&x, self.cout(), &fill, out, finish)
            }
        }
    }

    /// A channels-first product's `cin × p` right operand: `x` quantized, and for a
    /// convolution over patches, its patches gathered.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
    fn channels_first_matrix<'x>(
        &self,
        x: Operand<'x>,
        quantizer: FastQuantize,
        p: usize,
        patches: Option<Patches>,
    ) -> Cow<'x, [i8]> {
        let xq = self.quantized(x, quantizer);
        match patches {
            Some(g) => Cow::Owned(g.product_matrix(&xq, self.in_channels(), self.layout, p)),
            None => xq,
        }
    }

    /// The integer sums of `x` on a tract-linalg kernel, laid out like `x` with `Cout`
    /// channels.
    pub(super) fn tract_product(
        &self,
        mmm: &dyn MatMatMul,
        packing: usize,
        packed: &dyn MMMInputValue,
        x: Operand,
        quantizer: FastQuantize,
        p: usize,
    ) -> TractResult<Tensor> {
        let (cin, cout) = (self.cin(), self.cout());
        let (x_shape, k_axis, acc_shape, m_axis) = match self.layout {
            Layout::ChannelsFirst => ([cin, p], 0, [cout, p], 0),
            Layout::ChannelsLast => ([p, cin], 1, [p, cout], 1),
        };
        let (_, b_format) = &mmm.packings()[packing];
        let packed_x: Box<dyn MMMInputValue> = match b_format.downcast_ref::<PackedI8K4>() {
            Some(format) => Box::new(self.pack_input(x, quantizer, p, format)?),
            None => {
                let xq = match x {
                    Operand::F32(x) => {
                        // SAFETY: i8 has no invalid bit patterns; the quantizer writes every value.
                        let mut xq = unsafe { Tensor::uninitialized::<i8>(&x_shape)? };
                        quantizer.quantize_i8(x, xq.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?);
                        xq
                    }
                    Operand::I8(x) => Tensor::from_shape(&x_shape, x)?,
                };
                b_format.prepare_one(&xq, k_axis, 1 - k_axis)?
            }
        };
        // SAFETY: i32 has no invalid bit patterns; the product stores every sum.
        let mut acc = unsafe { Tensor::uninitialized::<i32>(&acc_shape)? };
        // SAFETY: the kernel was picked by tract's dispatch for this CPU; `packed` and
        // `packed_x` are in the kernel's packings for `cout × cin` and `cin × p`, and the store
        // view is `acc`, `cout × p` along the axes given.
        unsafe {
            let store = mmm
                .c_view(Some(m_axis), Some(1 - m_axis))
                .wrap(&acc.view_mut());
            mmm.run(
                cout,
                p,
                &[
                    FusedSpec::AddMatMul {
                        a: AsInputValue::Borrowed(packed),
                        b: AsInputValue::Borrowed(&*packed_x),
                        packing,
                    },
                    FusedSpec::Store(store),
                ],
            )?;
        }
        Ok(acc)
    }

    /// One matrix of `p` positions (an image channels first, the whole tensor channels last).
    pub(super) fn run_matrix<T: Emit>(
        &self,
        x: Operand,
        q: &InputQuant,
        bias: &[f32],
        p: usize,
        patches: Option<Patches>,
        out: &mut [T],
    ) -> TractResult<()> {
        // Rows are output channels (channels first) or positions (channels last); either way
        // whole rows are split across the plan's threads.
        let row_len = match self.layout {
            Layout::ChannelsFirst => p,
            Layout::ChannelsLast => self.cout(),
        };
        let row_sums = self.input_row_sums(x, q.quantizer, p, patches);
        let finish = |first: usize, sums: Sums, out: &mut [T]| match &row_sums {
            None => self.finish_rows(q, bias, first, sums, row_len, out),
            Some(row_sums) => {
                let mut scratch = vec![];
                let rows = out.len() / row_len;
                let sums = self.less_weight_zero_points(
                    sums,
                    first,
                    rows,
                    row_len,
                    row_sums,
                    &mut scratch,
                );
                self.finish_rows(q, bias, first, sums, row_len, out)
            }
        };
        match self.engine()? {
            Engine::Tract {
                mmm,
                packing,
                packed,
            } => {
                let gathered;
                let x = match patches {
                    None => x,
                    Some(g) => {
                        let xq = self.quantized(x, q.quantizer);
                        gathered = g.product_matrix(&xq, self.in_channels(), self.layout, p);
                        Operand::I8(&gathered)
                    }
                };
                let acc = self.tract_product(&**mmm, *packing, &**packed, x, q.quantizer, p)?;
                let acc = acc.try_as_plain_ram()?;
                let acc = acc.as_slice::<i32>()?;
                par_chunks_mut(out, row_len, acc.len(), |first, chunk| {
                    finish(
                        first,
                        Sums::new(&acc[first * row_len..], row_len, row_len),
                        chunk,
                    )
                })
            }
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
            Engine::Own(w) => self.own_product(w, x, q.quantizer, p, patches, out, finish),
        }
    }

    /// The epilogue of the output rows `first..` (`out`, `row_len` values each) from their
    /// integer sums (row `i` of `sums` for row `first + i`).
    pub(super) fn finish_rows<T: Emit>(
        &self,
        q: &InputQuant,
        bias: &[f32],
        first: usize,
        sums: Sums,
        row_len: usize,
        out: &mut [T],
    ) -> TractResult<()> {
        let e = self.epilogue();
        let scratch_len = if self.lookup.is_some() { row_len } else { 0 };
        let mut values = vec![0f32; scratch_len];
        let mut idx = vec![0u8; scratch_len];
        for (i, o) in out.chunks_mut(row_len).enumerate() {
            let a = sums.row(i);
            let r = first + i;
            // Channels first, the row is an output channel.
            let channel = || Row {
                offset: q.offset[r],
                scale: q.scale[r],
                bias: bias[r],
            };
            let row = |o: &mut [f32]| match self.layout {
                Layout::ChannelsFirst => channel_row(a, o, channel(), e),
                Layout::ChannelsLast => position_row(a, o, &q.offset, &q.scale, bias, e),
            };
            match &self.lookup {
                Some(lookup) => {
                    let index = lookup.index;
                    match (self.layout, T::bytes(o, &lookup.table)) {
                        (Layout::ChannelsFirst, Some((out, table))) => {
                            channel_codes(a, out, channel(), e, index, &mut values, Some(table))
                        }
                        (Layout::ChannelsFirst, None) => {
                            channel_codes(a, &mut idx, channel(), e, index, &mut values, None);
                            lookup.gather(&idx, o)?;
                        }
                        (Layout::ChannelsLast, _) => {
                            row(&mut values);
                            index.quantize_bytes(&values, &mut idx);
                            lookup.gather(&idx, o)?;
                        }
                    }
                }
                None => row(T::plain(o).context("integer 1x1 conv: i8 output without table")?),
            }
        }
        Ok(())
    }

    /// The whole product of `x` (shape `shape`) into a new tensor of `T`.
    pub(super) fn run<T: Emit>(
        &self,
        x: Operand,
        shape: &[usize],
        bias: &[f32],
    ) -> TractResult<Tensor> {
        let c_axis = self.channel_axis(shape.len())?;
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[c_axis] = self.cout();
        for axis in self.spatial_axes(shape.len()) {
            out_shape[axis] /= self.patch;
        }
        // SAFETY: `T` is f32 or i8 (`Emit`), which have no invalid bit patterns; every output
        // row is written by the epilogue.
        let mut out = unsafe { Tensor::uninitialized::<T>(&out_shape)? };
        let mut out_view = out.try_as_plain_ram_mut()?;
        let ys = out_view.as_slice_mut::<T>()?;
        let positions = out_shape.iter().product::<usize>() / self.cout();
        if positions > 0 {
            // One quantization for the whole tensor, as the graph's quantize computes it.
            let q = self.input_quant(x);
            match self.layout {
                Layout::ChannelsFirst => {
                    let p_in = shape[2..].iter().product::<usize>();
                    let patches = (self.patch > 1).then(|| Patches {
                        side: self.patch,
                        h: shape[2],
                        w: shape[3..].iter().product(),
                    });
                    let p = patches.map_or(p_in, |g| g.positions());
                    let (xn, yn) = (self.in_channels() * p_in, self.cout() * p);
                    for (n, y1) in ys.chunks_mut(yn).enumerate() {
                        self.run_matrix(x.slice(n * xn, xn), &q, bias, p, patches, y1)?;
                    }
                }
                Layout::ChannelsLast => {
                    let patches = (self.patch > 1).then(|| Patches {
                        side: self.patch,
                        h: shape[1],
                        w: shape[2],
                    });
                    self.run_matrix(x, &q, bias, positions, patches, ys)?
                }
            }
        }
        Ok(out)
    }
}
