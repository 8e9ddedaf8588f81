//! Exact i8 × i8 → i32 products on Intel AMX (Sapphire Rapids and later Xeons), for
//! channels-last integer convolutions: `out[r][l] = Σ_k rows[r][k] · lanes[l][k]`, rows being
//! positions and lanes output channels.
//!
//! tract-linalg 0.23.9 has an AMX kernel (`avx512amx_mmm_i32_16x16`), but it computes one
//! 16 × 16 tile per call: it loads the tile configuration (`LDTILECFG`) at every call, keeps a
//! single accumulator tile, so that each `TDPBSSD` waits for the one before, and it stores a
//! channels-last output one value at a time. On convnext_tiny QDQ (Xeon, 1 thread) the loaded
//! configuration alone took a tenth of its time. Here:
//!
//! - a tile is 2 × 2 accumulators of 16 × 16 i32: 32 rows by 32 lanes, two row tiles and two
//!   lane tiles loaded per 64 values of k for four independent `TDPBSSD`s;
//! - the configuration is loaded once per block of rows, and each accumulator is stored
//!   whole (`TILESTORED`) into the block's sums, which the epilogue reads from cache;
//! - the rows are written by the caller (the input's quantizer) straight into the row-major
//!   buffer the row tiles load from: no packing pass.
//!
//! Layouts: rows row-major with `k` padded to [`KSTEP`] (64: one tile row); lanes as
//! `TDPBSSD`'s second operand, in panels of 16 lanes, for each 64 values of k a tile of 16 rows
//! of 64 bytes whose row `j` holds `k = 4j … 4j + 3` of each lane in turn, zero past `k` and
//! past the last lane. Lane panels come in pairs (lanes padded to 32).
//!
//! ```text
//! use convnext_edge::kernels::product::amx::{available, product_into, Lanes};
//! if available() {
//!     // Two lanes and three rows of k = 3 values.
//!     let lanes = Lanes::pack(2, 3, |l, k| [[1, 2, 3], [-1, 0, 127]][l][k]);
//!     let rows = [[1i8, 1, 1], [2, 0, 0], [-128, 0, 1]];
//!     let mut out = [0i32; 6];
//!     let fill = |r: usize, row: &mut [i8]| row.copy_from_slice(&rows[r]);
//!     product_into(&lanes, 3, &fill, &mut out, |first, sums, out| {
//!         for (i, o) in out.chunks_mut(2).enumerate() {
//!             o.copy_from_slice(sums.row(i));
//!         }
//!         Ok(())
//!     })?;
//!     assert_eq!(out, [6, 126, 2, -2, -125, 255]);
//! }
//! ```
//!
//! tract internals used (tract-linalg 0.23.9): `x86_64::amx::has_amx_int8` (the CPUID check and
//! Linux's permission request for the tile state).

use std::arch::asm;

use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::internal::ensure;

use super::filled::{self, Geometry};
use crate::kernels::Sums;

/// Values of k per step: one tile row of bytes.
pub const KSTEP: usize = 64;
/// Lanes per panel: one tile of i32 sums is 16 wide.
const PANEL: usize = 16;
/// Rows and lanes per tile of the kernel: 2 × 2 accumulators of 16 × 16.
const TILE: usize = 32;
/// Bytes of one `TDPBSSD` operand tile (16 rows of 64 bytes).
const TILE_BYTES: usize = 16 * KSTEP;

/// Whether this CPU and OS run the product: AMX-INT8, and the tile state granted.
pub fn available() -> bool {
    super::cpu::has(super::cpu::Feature::Amx)
}

/// The kernel's name in profiles.
pub fn kernel() -> &'static str {
    "convnext_edge_amx_i32_32x32"
}

/// The lane operand: `lanes` vectors of `k` values (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Lanes {
    data: Vec<i8>,
    lanes: usize,
    k: usize,
}

impl Lanes {
    /// Packs `lanes` vectors of `k` values, value `(l, k)` read from `at(l, k)`.
    pub fn pack(lanes: usize, k: usize, at: impl Fn(usize, usize) -> i8) -> Lanes {
        let steps = k.div_ceil(KSTEP);
        let panels = lanes.div_ceil(TILE) * TILE / PANEL;
        let mut data = vec![0; panels * steps * TILE_BYTES];
        for l in 0..lanes {
            let (panel, n) = (l / PANEL, l % PANEL);
            for kk in 0..k {
                let (step, j, b) = (kk / KSTEP, kk % KSTEP / 4, kk % 4);
                data[((panel * steps + step) * 16 + j) * KSTEP + n * 4 + b] = at(l, kk);
            }
        }
        Lanes { data, lanes, k }
    }

    /// Lanes with padding: the sums' row stride.
    fn padded(&self) -> usize {
        self.lanes.div_ceil(TILE) * TILE
    }
}

/// `Σ_k rows[r][k] · lanes[l][k]` for `rows` rows, row `r` written as i8 by `fill(r, row)` (a
/// quantizer, say) into the buffer the kernel reads, a block of rows at a time: each block's
/// sums go to `finish(first_row, sums, out_rows)` while they are still in cache, with
/// `out_rows` the block's rows of `out` (`rows × lanes` values, row-major). Blocks are split
/// across the plan's threads.
pub fn product_into<T: Send>(
    lanes: &Lanes,
    rows: usize,
    fill: &(dyn Fn(usize, &mut [i8]) + Sync),
    out: &mut [T],
    finish: impl Fn(usize, Sums, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    ensure!(available(), "the int8 product needs AMX-INT8");
    let (k, ld) = (lanes.k, lanes.padded());
    let steps = k.div_ceil(KSTEP);
    let kp = steps * KSTEP;
    let geometry = Geometry {
        k,
        kp,
        width: lanes.lanes,
        ld,
        tile_rows: TILE,
    };
    filled::product_into(geometry, rows, fill, out, finish, |a, n, sums| {
        // SAFETY: AMX-INT8 with the tile state granted (checked above); the row buffer holds
        // whole tiles of TILE rows of `kp` bytes, the lanes `ld / PANEL` panels of `steps`
        // operand tiles, and `sums` TILE rows of `ld` sums for every row tile; nothing between
        // `configure` and `release` uses other tile configurations.
        unsafe {
            configure();
            for t in 0..n.div_ceil(TILE) {
                for (pair, panels) in lanes.data.chunks_exact(2 * steps * TILE_BYTES).enumerate() {
                    tile(
                        a[t * TILE * kp..].as_ptr(),
                        kp,
                        panels.as_ptr(),
                        steps,
                        sums[t * TILE * ld + pair * TILE..].as_mut_ptr(),
                        ld,
                    );
                }
            }
            release();
        }
    })
}

/// The tile configuration: palette 1, tiles 0–7 all 16 rows of 64 bytes — accumulators 0–3,
/// row tiles 4–5, lane tiles 6–7.
#[repr(C, align(64))]
struct Config([u8; 64]);

static CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = KSTEP as u8;
        c[48 + t] = 16;
        t += 1;
    }
    Config(c)
};

/// Loads [`CONFIG`].
///
/// # Safety
/// AMX with the tile state granted.
unsafe fn configure() {
    // SAFETY: reads the 64-byte static; the tile registers are no compiler state.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile state to its initial state (cheaper context switches).
///
/// # Safety
/// AMX with the tile state granted.
unsafe fn release() {
    // SAFETY: touches the tile registers only.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One tile: 32 rows from `rows` (row stride `kp` bytes) by one pair of lane panels from
/// `panels` (`steps` operand tiles each, the second panel after the first) into 32 rows of 32
/// sums at `out` (row stride `ld` sums).
///
/// # Safety
/// [`CONFIG`] loaded; `rows` holds 32 rows of `steps · 64` bytes at stride `kp`, `panels`
/// `2 · steps` operand tiles, `out` 32 rows of 32 sums at stride `ld`.
unsafe fn tile(
    rows: *const i8,
    kp: usize,
    panels: *const i8,
    steps: usize,
    out: *mut i32,
    ld: usize,
) {
    // SAFETY: within the buffers the caller vouches for.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {kp} * 1]",
            "tileloadd tmm5, [{a1} + {kp} * 1]",
            "tileloadd tmm6, [{b0} + {row} * 1]",
            "tileloadd tmm7, [{b1} + {row} * 1]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {ldc} * 1], tmm0",
            "tilestored [{c} + {ldc} * 1 + 64], tmm1",
            "mov {row}, {ldc}",
            "shl {row}, 4",
            "add {c}, {row}",
            "tilestored [{c} + {ldc} * 1], tmm2",
            "tilestored [{c} + {ldc} * 1 + 64], tmm3",
            a0 = inout(reg) rows => _,
            a1 = inout(reg) rows.add(16 * kp) => _,
            b0 = inout(reg) panels => _,
            b1 = inout(reg) panels.add(steps * TILE_BYTES) => _,
            kp = in(reg) kp,
            row = inout(reg) KSTEP => _,
            steps = inout(reg) steps => _,
            c = inout(reg) out => _,
            ldc = in(reg) ld * 4,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::for_each_variant;

    for_each_variant! {
        fn matches_the_scalar_product_on_odd_shapes() {
            if !available() {
                eprintln!("skipped: no AMX-INT8 here");
                return;
            }
            filled::check_odd_shapes(|w, lanes, k, rows, fill, out, finish| {
                let packed = Lanes::pack(lanes, k, |l, kk| w[l * k + kk]);
                product_into(&packed, rows, fill, out, finish)
            });
        }
    }
}
