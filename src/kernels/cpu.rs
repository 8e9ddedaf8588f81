//! What this CPU can do, for every kernel choice of ours: detected once and cached.
//!
//! Each kernel family picks its variant by asking [`has`]; nothing else in the crate probes the
//! CPU. Two ways to take features away, so that every variant can be run on one machine:
//! - the environment variable `CONVNEXT_EDGE_CPU_OFF` (`avx512,vnni`, say; names as
//!   [`Feature::name`] gives them), read once at the first query: a whole process (a test run,
//!   a benchmark) runs as on a CPU without them;
//! - in unit tests, [`variants`] and [`with_variant`]: the test macro
//!   [`for_each_variant!`](crate::kernels::for_each_variant) runs a test body once per variant
//!   this CPU supports, on the thread running it.
//!
//! Taking a feature away never adds one: the detected set bounds both. tract-linalg's own
//! kernels still follow tract's own detection.

use std::sync::OnceLock;

/// A CPU feature one of our kernels is chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feature {
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL.
    Avx512,
    /// AVX-512 VNNI or AVX-VNNI: tract-linalg's fast int8 kernels.
    Vnni,
    /// AMX-INT8 with the tile state granted by the OS.
    Amx,
    /// The arm64 dot-product extension (`SDOT`).
    DotProd,
    /// arm64 fp16 arithmetic (`asimdhp`).
    Fp16,
    /// NEON on 32-bit ARM, for the armv7 build (arm64 code assumes it).
    Neon,
}

const ALL: [Feature; 7] = [
    Feature::Avx2,
    Feature::Avx512,
    Feature::Vnni,
    Feature::Amx,
    Feature::DotProd,
    Feature::Fp16,
    Feature::Neon,
];

impl Feature {
    /// Its name in `CONVNEXT_EDGE_CPU_OFF`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Feature::Avx2 => "avx2",
            Feature::Avx512 => "avx512",
            Feature::Vnni => "vnni",
            Feature::Amx => "amx",
            Feature::DotProd => "dotprod",
            Feature::Fp16 => "fp16",
            Feature::Neon => "neon",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether the hardware has it.
    fn detect(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as x86;
            match self {
                Feature::Avx2 => x86!("avx2") && x86!("fma"),
                Feature::Avx512 => {
                    x86!("avx512f") && x86!("avx512bw") && x86!("avx512dq") && x86!("avx512vl")
                }
                Feature::Vnni => x86!("avx512vnni") || x86!("avxvnni"),
                Feature::Amx => tract_linalg::x86_64::amx::has_amx_int8(),
                Feature::DotProd | Feature::Fp16 | Feature::Neon => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as arm;
            match self {
                Feature::DotProd => arm!("dotprod"),
                Feature::Fp16 => arm!("fp16"),
                _ => false,
            }
        }
        #[cfg(target_arch = "arm")]
        {
            // The kernel's hardware capabilities, as `/proc/cpuinfo` would list them but
            // right under qemu-user too, which shows the guest the host's cpuinfo.
            const HWCAP_NEON: libc::c_ulong = 1 << 12;
            // SAFETY: getauxval only reads the process's auxiliary vector.
            self == Feature::Neon && unsafe { libc::getauxval(libc::AT_HWCAP) } & HWCAP_NEON != 0
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
        {
            false
        }
    }
}

/// The features of this process: detected, minus `CONVNEXT_EDGE_CPU_OFF`.
fn enabled() -> u8 {
    static ENABLED: OnceLock<u8> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let off = std::env::var("CONVNEXT_EDGE_CPU_OFF").unwrap_or_default();
        let off: Vec<&str> = off.split(',').map(str::trim).collect();
        ALL.iter()
            .filter(|f| f.detect() && !off.contains(&f.name()))
            .fold(0, |bits, f| bits | f.bit())
    })
}

/// Whether our kernels may use `feature` here.
pub(crate) fn has(feature: Feature) -> bool {
    enabled() & feature.bit() & variant::current() != 0
}

/// Whether our kernels may use AVX-512 VNNI: [`Feature::Vnni`] also stands for AVX-VNNI, the
/// 256-bit form on CPUs without AVX-512.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vnni() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    has(Feature::Avx512)
        && has(Feature::Vnni)
        && *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni"))
}

/// Whether our kernels may use AVX-512 VBMI (byte permutes across a whole register): Ice Lake,
/// Zen 4 and later, not Skylake-X. Taken away with [`Feature::Avx512`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vbmi() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    has(Feature::Avx512)
        && *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vbmi"))
}

#[cfg(not(test))]
mod variant {
    /// Outside unit tests every enabled feature is used.
    #[inline(always)]
    pub(super) fn current() -> u8 {
        u8::MAX
    }
}

#[cfg(test)]
mod variant {
    use std::cell::Cell;

    thread_local! {
        static CURRENT: Cell<u8> = const { Cell::new(u8::MAX) };
    }

    pub(super) fn current() -> u8 {
        CURRENT.with(Cell::get)
    }

    pub(super) fn set(bits: u8) -> u8 {
        CURRENT.with(|c| c.replace(bits))
    }
}

/// The feature sets a test runs its body under: everything this CPU has, then each step down
/// a level (x86: without AMX, without AVX-512, without VNNI, without AVX2; arm64: without
/// fp16, without the dot product; armv7: without NEON), down to the portable code. Sets that would be the same on this
/// CPU are listed once.
#[cfg(test)]
pub(crate) fn variants() -> Vec<(String, u8)> {
    use Feature::*;
    let steps: [&[Feature]; 5] = [
        &[],
        &[Amx],
        &[Avx512, Fp16],
        &[Vnni, DotProd],
        &[Avx2, Neon],
    ];
    let mut bits = enabled();
    let mut out: Vec<(String, u8)> = vec![];
    for step in steps {
        bits &= !step.iter().fold(0, |b, f| b | f.bit());
        if out.last().is_none_or(|(_, last)| *last != bits) {
            let names: Vec<_> = ALL
                .iter()
                .filter(|f| bits & f.bit() != 0)
                .map(|f| f.name())
                .collect();
            let name = match names.join("+") {
                n if n.is_empty() => "portable".to_owned(),
                n => n,
            };
            out.push((name, bits));
        }
    }
    out
}

/// Runs `f` on this thread with only the features of a [`variants`] entry.
#[cfg(test)]
pub(crate) fn with_variant<R>(bits: u8, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            variant::set(self.0);
        }
    }
    let _restore = Restore(variant::set(bits));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_step_down_to_the_portable_code() {
        let all = variants();
        assert_eq!(all.last().unwrap().1 & enabled() & Feature::Avx2.bit(), 0);
        assert_eq!(all.last().unwrap().1 & Feature::DotProd.bit(), 0);
        assert_eq!(all.last().unwrap().1 & Feature::Neon.bit(), 0);
        for (name, bits) in all {
            with_variant(bits, || {
                for f in ALL {
                    assert_eq!(has(f), bits & enabled() & f.bit() != 0, "{name}: {f:?}");
                }
            });
        }
    }
}
