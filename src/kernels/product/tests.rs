use super::*;
use crate::kernels::for_each_variant;
use crate::kernels::product::reference;
use crate::kernels::test_values as values;

/// Checks the product against `expected` (row-major, `lanes` sums per row): each block's
/// sums as `finish` is handed them, and that every row of the output was handed over.
fn check(lanes: &LanePanels, rows: RowSource, per_block: Option<usize>, expected: &[i32]) {
    let width = lanes.lanes;
    let mut out = vec![i32::MIN; rows.rows() * width];
    let finish = |first: usize, sums: Sums, out: &mut [i32]| {
        for (i, o) in out.chunks_mut(width).enumerate() {
            assert_eq!(sums.row(i), &expected[(first + i) * width..][..width]);
            o.copy_from_slice(sums.row(i));
        }
        Ok(())
    };
    match per_block {
        Some(b) => run_blocks(lanes, rows, &mut out, b * lanes.kernel.rows, finish).unwrap(),
        None => product_into(lanes, rows, &mut out, finish).unwrap(),
    }
    assert_eq!(out, expected);
}

/// `m` lanes (`a`) by `n` rows (`b`) of `k` values: both row sources, both lane packings,
/// blocks of one tile, a few tiles and all, against the plain triple loop.
fn check_all(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) {
    let expected = reference::product(a, b, m, k, n);
    let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&b[r * k..][..k]);
    let filled = RowSource::Fill {
        rows: n,
        k,
        fill: &fill,
    };
    // The same lanes from a k × m (transposed) source.
    let at: Vec<i8> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
    if available() {
        let lanes = LanePanels::pack(m, k, |l, kk| a[l * k + kk]);
        let packed = Rows::pack(b, n, k);
        for per_block in [None, Some(1), Some(3)] {
            check(&lanes, RowSource::Packed(&packed), per_block, &expected);
            check(&lanes, filled, per_block, &expected);
        }
        let transposed = LanePanels::pack_transposed(&at, k, m, m).unwrap();
        assert_eq!(transposed, lanes);
    }
    // The driver and the packing with the portable tile.
    let kernel = &reference::KERNEL;
    let lanes = LanePanels::pack_for(kernel, m, k, |l, kk| a[l * k + kk]);
    let packed = Rows::pack_for(kernel, b, n, k);
    for per_block in [None, Some(1), Some(3)] {
        check(&lanes, RowSource::Packed(&packed), per_block, &expected);
        check(&lanes, filled, per_block, &expected);
    }
    let transposed = LanePanels::pack_transposed_for(kernel, &at, k, m, m).unwrap();
    assert_eq!(transposed, lanes);
}

for_each_variant! {
    /// Odd sizes (k across steps, odd and even numbers of them; lanes and rows across tiles,
    /// last panels of 1 to 4 lanes for a narrow tile and of more for the whole one) with
    /// weights as onnxruntime writes them ([−127, 127], which `exact_for` requires on arm64)
    /// and rows holding −128.
    fn matches_the_scalar_product() {
        for (m, k, n) in [
            (1, 1, 1),
            (16, 2, 6),
            (40, 19, 50),
            (17, 96, 13),
            (7, 3, 33),
            (5, 40, 9),
            (33, 5, 700),
            (12, 8, 3),
            (25, 13, 17),
            (49, 28, 16),
        ]
        // Under Miri (CI's unsafe-code check, a thousand times slower) the first shapes cover
        // whole and partial tiles, steps and blocks.
        .into_iter()
        .take(if cfg!(miri) { 5 } else { usize::MAX })
        {
            let a: Vec<i8> = values(m * k, 1).iter().map(|&v| v.max(-127)).collect();
            let mut b = values(n * k, 2);
            b[0] = -128;
            assert!(!available() || exact_for(&a));
            check_all(&a, &b, m, k, n);
        }
    }
}

for_each_variant! {
    /// The largest sums: every product ±127 · −128, two of them 32512 (arm64 adds pairs in
    /// i16), and on x86, where `exact_for` holds for any bytes, −128 · −128 too.
    fn extreme_values_are_exact() {
        if !available() {
            return;
        }
        let (m, k, n) = (5, 37, 7);
        let b = vec![-128i8; n * k];
        for lane in [-127i8, 127] {
            check_all(&vec![lane; m * k], &b, m, k, n);
        }
        let alternating: Vec<i8> = (0..m * k)
            .map(|i| if i % 3 == 0 { 127 } else { -127 })
            .collect();
        check_all(&alternating, &b, m, k, n);
        assert!(exact_for(&[-127, 0, 127]));
        if exact_for(&[-128]) {
            check_all(&vec![-128; m * k], &b, m, k, n);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            exact_for(&[1, -128]),
            crate::kernels::cpu::has(crate::kernels::cpu::Feature::DotProd)
        );
    }
}

/// Operands that do not fit are an error, not a wrong answer.
#[test]
fn mismatched_operands_are_refused() {
    if !available() {
        return;
    }
    let lanes = LanePanels::pack(4, 3, |_, _| 1);
    let rows = Rows::pack(&[1; 10], 2, 5);
    let mut out = [0i32; 8];
    assert!(product_into(&lanes, RowSource::Packed(&rows), &mut out, |_, _, _| Ok(())).is_err());
    let rows = Rows::pack(&[1; 6], 2, 3);
    let mut short = [0i32; 7];
    assert!(
        product_into(&lanes, RowSource::Packed(&rows), &mut short, |_, _, _| Ok(
            ()
        ))
        .is_err()
    );
}
