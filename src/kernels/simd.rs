//! Run-time selection of x86 SIMD levels for our element-wise loops.
//!
//! The crate is built for the baseline of its target (SSE2 on x86_64), so a plain loop is
//! vectorised for 4 lanes at best. [`multiversion!`] compiles one loop body three times —
//! AVX-512, AVX2+FMA and baseline — and picks at run time by CPU feature, so the same binary
//! uses the widest vectors the CPU has. The loops are written so that the compiler vectorises
//! them (selects, min/max, no early exits); the arithmetic is the same in every version (Rust
//! never contracts `a * b + c` into an FMA by itself), so results are bit-identical across
//! versions. On aarch64 NEON is the baseline and the body is compiled once.

/// Defines `fn $name(args)` that runs `$body` compiled for the best SIMD level available.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU has every feature avx512() is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: the CPU has every feature avx2() is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// AVX-512 F/BW/DQ/VL (Skylake-X and later, Zen 4 and later).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// AVX2 with FMA (Haswell and later, Zen 1 and later).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}
