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

/// Rows per block of such a product: [`blocks_needed`], and on several threads a multiple of
/// four blocks per thread, as tiles allow. tract's `par_chunks_mut` deals whole blocks out in
/// four chunks per thread: 10 blocks on 2 threads made 5 chunks of 2, 3 for one thread and 2
/// for the other.
pub(crate) fn block_rows(
    rows: usize,
    tile_rows: usize,
    row_bytes: usize,
    min_tiles: usize,
) -> usize {
    let (tiles, threads) = (rows.div_ceil(tile_rows), threads());
    let mut blocks = blocks_needed(rows, tile_rows, row_bytes, min_tiles);
    if threads > 1 {
        blocks = blocks.next_multiple_of(4 * threads).min(tiles);
    }
    tiles.div_ceil(blocks.max(1)).max(1) * tile_rows
}
