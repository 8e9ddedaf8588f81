//! Run-time selection of x86 SIMD levels for our element-wise loops.
//!
//! The crate is built for the baseline of its target (SSE2 on x86_64), so a plain loop is
//! vectorised for 4 lanes at best. [`multiversion!`] compiles one loop body three times —
//! AVX-512, AVX2+FMA and baseline — and picks at run time by CPU feature ([`super::cpu`]), so
//! the same binary uses the widest vectors the CPU has. The loops are written so that the
//! compiler vectorises them (selects, min/max, no early exits); the arithmetic is the same in
//! every version (Rust never contracts `a * b + c` into an FMA by itself), so results are
//! bit-identical across versions. On aarch64 NEON is the baseline and the body is compiled once.
//!
//! `multiversion! { below_avx512: fn … }` leaves the AVX-512 level out, for loops whose caller
//! sends AVX-512 CPUs to a hand-written kernel first.

/// Defines `fn $name(args)` that runs `$body` compiled for the best SIMD level available.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $crate::kernels::simd::multiversion!(@levels true; $(#[$meta])* $vis fn $name($($arg: $ty),*) $body);
    };
    (below_avx512: $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $crate::kernels::simd::multiversion!(@levels false; $(#[$meta])* $vis fn $name($($arg: $ty),*) $body);
    };
    (@levels $avx512:literal; $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::cpu::{has, Feature};
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $avx512 && has(Feature::Avx512) {
                    // SAFETY: the CPU has every feature avx512() is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has(Feature::Avx2) {
                    // SAFETY: the CPU has every feature avx2() is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
