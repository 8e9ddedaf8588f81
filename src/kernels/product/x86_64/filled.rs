//! The driver shared by the x86 products whose row operand the caller writes, row after row,
//! straight into the row-major buffer the tiles read ([`super::amx`], [`super::vnni`]): blocks
//! of rows across the plan's threads, each block's sums handed to the epilogue while they are
//! in cache.

use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

use crate::kernels::blocking::block_rows;
use crate::kernels::product::par_blocks;
use crate::kernels::Sums;

/// The operands' geometry: `k` values per row, stored at a stride of `kp` bytes (`k` padded
/// to the kernel's step), `width` lanes with sums at a stride of `ld` (lanes padded to whole
/// panels), tiles of `tile_rows` rows.
pub(super) struct Geometry {
    pub k: usize,
    pub kp: usize,
    pub width: usize,
    pub ld: usize,
    pub tile_rows: usize,
}

/// `rows` rows, row `r` written by `fill(r, row)`, a block at a time: `tiles(buffer, n, sums)`
/// computes the sums of the block's `n` rows from `buffer` (whole tiles of rows at stride
/// `kp`; rows past `n` hold stale or zero bytes, and their sums are never read), then
/// `finish(first_row, sums, out_rows)` gets them with the block's rows of `out`.
pub(super) fn product_into<T: Send>(
    g: Geometry,
    rows: usize,
    fill: &(dyn Fn(usize, &mut [i8]) + Sync),
    out: &mut [T],
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
    tiles: impl Fn(&mut [i8], usize, &mut [i32]) + Sync,
) -> TractResult<()> {
    ensure!(g.k > 0, "empty product");
    ensure!(out.len() == rows * g.width, "output of the wrong size");
    if out.is_empty() {
        return Ok(());
    }
    let block = block_rows(rows, g.tile_rows, g.ld * 4, 1);
    let scratch = || (vec![0i8; block * g.kp], vec![0i32; block * g.ld]);
    let work = rows * g.width * g.k.div_ceil(64);
    par_blocks(out, g.width, block, work, scratch, |(a, sums), r0, out| {
        let n = out.len() / g.width;
        for (i, row) in a.chunks_exact_mut(g.kp).take(n).enumerate() {
            fill(r0 + i, &mut row[..g.k]);
        }
        tiles(a, n, sums);
        finish(r0, Sums::new(sums, g.ld, g.width), out)
    })
}

/// The test of a product over filled rows: against the triple loop on odd shapes, with −128
/// and 127 among the lanes, through `run(lanes_values, lanes, k, rows, fill, out, finish)`.
#[cfg(test)]
pub(super) fn check_odd_shapes(
    run: impl Fn(&[i8], usize, usize, usize, &Fill<'_>, &mut [i32], &Finish<'_>) -> TractResult<()>,
) {
    use crate::kernels::product::reference::product as triple_loop;
    use crate::kernels::test_values as values;
    for (rows, lanes, k) in [
        (1, 1, 1),
        (3, 2, 3),
        (9, 17, 65),
        (31, 17, 65),
        (33, 32, 64),
        (70, 96, 96),
        (64, 40, 200),
        (100, 35, 129),
        (7, 130, 384),
    ] {
        let x = values(rows * k, 1);
        let mut w = values(lanes * k, 2);
        w[0] = -128;
        w[lanes * k - 1] = 127;
        let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&x[r * k..][..k]);
        let mut out = vec![0i32; rows * lanes];
        let finish = |first: usize, sums: Sums, out: &mut [i32]| {
            for (i, o) in out.chunks_mut(lanes).enumerate() {
                assert!(first + i < rows);
                o.copy_from_slice(sums.row(i));
            }
            Ok(())
        };
        run(&w, lanes, k, rows, &fill, &mut out, &finish).unwrap();
        let expected = triple_loop(&w, &x, lanes, k, rows);
        assert_eq!(out, expected, "{rows} x {lanes} x {k}");
    }
}

#[cfg(test)]
type Fill<'a> = dyn Fn(usize, &mut [i8]) + Sync + 'a;
#[cfg(test)]
type Finish<'a> = dyn Fn(usize, Sums, &mut [i32]) -> TractResult<()> + Sync + 'a;
