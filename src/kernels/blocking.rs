//! How the products split their rows into blocks: few enough that the sums of a block stay in
//! cache until the epilogue reads them, and at least one per thread.

use super::threads;

/// Accumulators a block of rows keeps before they are handed on, in bytes: a quarter of the
/// 512 KiB L2 of the AVX2 server cores this runs on (an eighth of a Pi 4's), so that the
/// epilogue reads them from cache.
/// Writing every sum of a large product before reading it back made it run much slower than
/// the same number of products in a small one.
const BLOCK_SUMS_BYTES: usize = 128 * 1024;

/// Blocks a product of `rows` rows whose sums are `row_bytes` long needs on one thread, in
/// tiles of `tile_rows`: as many tiles per block as [`BLOCK_SUMS_BYTES`] holds, at least
/// `min_tiles`.
pub(crate) fn blocks_needed(
    rows: usize,
    tile_rows: usize,
    row_bytes: usize,
    min_tiles: usize,
) -> usize {
    let per_block = (BLOCK_SUMS_BYTES / (tile_rows * row_bytes).max(1)).max(min_tiles);
    rows.div_ceil(tile_rows).div_ceil(per_block)
}

/// Rows per block of such a product: [`blocks_needed`], and on several threads at least four
/// blocks per thread, as tiles allow: the threads' tasks (`threads::par_chunks_mut`, four per
/// thread) are whole blocks.
pub(crate) fn block_rows(
    rows: usize,
    tile_rows: usize,
    row_bytes: usize,
    min_tiles: usize,
) -> usize {
    let (tiles, threads) = (rows.div_ceil(tile_rows), threads());
    let blocks = blocks_needed(rows, tile_rows, row_bytes, min_tiles).max(1);
    if threads == 1 {
        return tiles.div_ceil(blocks).max(1) * tile_rows;
    }
    // At least that many blocks: rounding the tiles per block up instead made 13 blocks of
    // 2 tiles out of 25 tiles (convnext_tiny's third stage), 7 for one thread and 6 for the other.
    let blocks = blocks.next_multiple_of(8 * threads).min(tiles);
    (tiles / blocks).max(1) * tile_rows
}
