//! The portable reference of the product: the definition as a triple loop, and a scalar tile
//! in the driver's operand layout, so that the driver and the packing run (and run under Miri)
//! without any SIMD kernel.

use super::{store_steps, Elem, Kernel};

/// `Σ_k b[r][k] · a[l][k]` for the `n` rows of `b` and the `m` lanes of `a`, row-major.
pub(crate) fn product(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
    (0..n)
        .flat_map(|r| {
            (0..m).map(move |l| {
                (0..k)
                    .map(|kk| a[l * k + kk] as i32 * b[r * k + kk] as i32)
                    .sum()
            })
        })
        .collect()
}

const LANES: usize = 4;
const ROWS: usize = 3;
const KSTEP: usize = 2;

/// A scalar kernel of 3 rows × 4 lanes, steps of 2 values of k.
pub(crate) static KERNEL: Kernel = Kernel {
    name: "convnext_edge_reference_i32_3x4",
    available: || true,
    lanes: LANES,
    rows: ROWS,
    kstep: KSTEP,
    tile,
    store: store_steps::<KSTEP>,
    transpose: None,
    narrow: None,
};

/// One tile: value `kk` of step `s` of lane `l` is `panel[(s · LANES + l) · KSTEP + kk]`, of
/// row `r` `rows[(s · ROWS + r) · KSTEP + kk]`.
fn tile(panel: &[Elem], rows: &[Elem], steps: usize, out: &mut [i32], ld: usize) {
    for r in 0..ROWS {
        for l in 0..LANES {
            let mut acc = 0i32;
            for s in 0..steps {
                for kk in 0..KSTEP {
                    let a = panel[(s * LANES + l) * KSTEP + kk];
                    let b = rows[(s * ROWS + r) * KSTEP + kk];
                    acc += i32::from(a) * i32::from(b);
                }
            }
            out[r * ld + l] = acc;
        }
    }
}
