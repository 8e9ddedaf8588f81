//! AVX-512 VBMI building blocks shared by the x86_64 paths of the byte-table kernels.

use std::arch::x86_64::{
    __m512i, _mm512_loadu_si512, _mm512_mask_blend_epi8, _mm512_mask_storeu_epi8,
    _mm512_maskz_loadu_epi8, _mm512_movepi8_mask, _mm512_permutex2var_epi8,
};

/// `out[i] = table[idx[i]]` over the shorter of the two, 64 bytes a step (see [`run`]).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VBMI ([`super::cpu::has_avx512_vbmi`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn gather(table: &[u8; 256], idx: &[u8], out: &mut [u8]) {
    let n = idx.len().min(out.len());
    // SAFETY: both hold n bytes; the features are the caller's promise.
    unsafe { run(table, idx.as_ptr(), out.as_mut_ptr(), n) }
}

/// `bytes[i] = table[bytes[i]]`, 64 bytes a step (see [`run`]).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VBMI ([`super::cpu::has_avx512_vbmi`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn lookup(table: &[u8; 256], bytes: &mut [u8]) {
    let ptr = bytes.as_mut_ptr();
    // SAFETY: each step reads its 64 bytes before it writes them; the features are the
    // caller's promise.
    unsafe { run(table, ptr, ptr, bytes.len()) }
}

/// `dst[i] = table[src[i]]` for `n` bytes: `VPERMI2B` looks each index's low seven bits up in
/// the table's lower and upper halves, and its top bit picks one of the two, instead of a load,
/// a dependent load and a store per byte. The tail goes through masked loads and stores.
///
/// # Safety
/// AVX-512 F, BW and VBMI; `src` and `dst` hold `n` bytes, and are the same or do not overlap.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn run(table: &[u8; 256], src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the loads read the table's 256 bytes and src[at..at + len], the stores write
    // dst[at..at + len], with at + len <= n (the caller's promise).
    unsafe {
        let t = table.as_ptr();
        let quarter = |q: usize| _mm512_loadu_si512(t.add(64 * q) as *const __m512i);
        let (t0, t1, t2, t3) = (quarter(0), quarter(1), quarter(2), quarter(3));
        for at in (0..n).step_by(64) {
            let mask = u64::MAX >> (64 - (n - at).min(64));
            let i = _mm512_maskz_loadu_epi8(mask, src.add(at) as *const i8);
            let low = _mm512_permutex2var_epi8(t0, i, t1);
            let high = _mm512_permutex2var_epi8(t2, i, t3);
            let r = _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), low, high);
            _mm512_mask_storeu_epi8(dst.add(at) as *mut i8, mask, r);
        }
    }
}
