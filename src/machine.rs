//! Facts about the machine: CPU model and SIMD features, cores (physical, online, big), and on
//! Linux boards the SoC temperature, CPU clock and Raspberry Pi throttle flags; plus thread
//! pinning and resident-memory readings for benchmarks.
//!
//! Every sysfs/procfs reader goes through [`Sysfs`], whose roots can point at a fake tree: this
//! is how the readers are tested on machines without thermal zones or cpufreq.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where to read `/sys` and `/proc` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    /// Where sysfs is (`/sys`).
    pub sys: PathBuf,
    /// Where procfs is (`/proc`).
    pub proc: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

/// One reading of the board's thermal and clock state.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThermalSample {
    /// Hottest thermal zone, °C.
    pub temp_c: Option<f32>,
    /// Highest current CPU clock over all cores, MHz.
    pub freq_mhz: Option<f32>,
    /// Raspberry Pi firmware throttle flags (0 = never throttled).
    pub throttled: Option<u32>,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

impl Sysfs {
    fn cpu_dir(&self) -> PathBuf {
        self.sys.join("devices/system/cpu")
    }

    /// The `cpuN` directories present.
    fn cpus(&self) -> Vec<(usize, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.cpu_dir()) else {
            return vec![];
        };
        let mut cpus: Vec<(usize, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let n = e
                    .file_name()
                    .to_string_lossy()
                    .strip_prefix("cpu")?
                    .parse()
                    .ok()?;
                Some((n, e.path()))
            })
            .collect();
        cpus.sort();
        cpus
    }

    /// CPU model name from /proc/cpuinfo (`model name` on x86; on ARM the board `Model` or
    /// `Hardware` line and the core's `CPU part`).
    pub fn cpu_model(&self) -> String {
        let info = std::fs::read_to_string(self.proc.join("cpuinfo")).unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        if let Some(name) = field("model name") {
            return name;
        }
        let board = field("Model").or_else(|| field("Hardware"));
        let part = field("CPU part").map(|p| format!("CPU part {p}"));
        match (board, part) {
            (Some(b), Some(p)) => format!("{b} ({p})"),
            (b, p) => b.or(p).unwrap_or_else(|| "unknown CPU".into()),
        }
    }

    /// Online CPUs (`devices/system/cpu/online`, e.g. `0-3,6`).
    pub fn online_cpus(&self) -> Vec<usize> {
        read_trim(&self.cpu_dir().join("online"))
            .and_then(|s| parse_cpu_list(&s).ok())
            .unwrap_or_else(|| {
                (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
            })
    }

    /// The biggest cores by `cpu_capacity` (big.LITTLE); all online CPUs when capacities are
    /// absent or equal.
    pub fn big_cores(&self) -> Vec<usize> {
        let online = self.online_cpus();
        let caps: Vec<(usize, u32)> = self
            .cpus()
            .into_iter()
            .filter(|(n, _)| online.contains(n))
            .filter_map(|(n, p)| Some((n, read_trim(&p.join("cpu_capacity"))?.parse().ok()?)))
            .collect();
        match caps.iter().map(|c| c.1).max() {
            Some(max) => caps.iter().filter(|c| c.1 == max).map(|c| c.0).collect(),
            None => online,
        }
    }

    /// Physical cores (distinct package/core pairs), at most the CPUs this process may use;
    /// the usable CPU count where topology is not readable.
    pub fn physical_cores(&self) -> usize {
        let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores: BTreeSet<(String, String)> = self
            .cpus()
            .into_iter()
            .filter_map(|(_, p)| {
                Some((
                    read_trim(&p.join("topology/physical_package_id"))?,
                    read_trim(&p.join("topology/core_id"))?,
                ))
            })
            .collect();
        if cores.is_empty() {
            usable
        } else {
            cores.len().min(usable)
        }
    }

    /// Temperature, clock and throttle state now.
    pub fn thermal(&self) -> ThermalSample {
        let temp_c = std::fs::read_dir(self.sys.join("class/thermal"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
            .filter_map(|e| read_trim(&e.path().join("temp"))?.parse::<f32>().ok())
            .map(|milli| milli / 1000.0)
            .reduce(f32::max);
        let freq_mhz = self
            .cpus()
            .into_iter()
            .filter_map(|(_, p)| {
                read_trim(&p.join("cpufreq/scaling_cur_freq"))?
                    .parse::<f32>()
                    .ok()
            })
            .map(|khz| khz / 1000.0)
            .reduce(f32::max);
        let throttled = read_trim(
            &self
                .sys
                .join("devices/platform/soc/soc:firmware/get_throttled"),
        )
        .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        ThermalSample {
            temp_c,
            freq_mhz,
            throttled,
        }
    }
}

/// CPU numbers accepted in lists: Linux's `NR_CPUS` is at most 8192, and a larger number
/// would only make a range allocate without bound.
pub const MAX_CPU: usize = 8191;

/// Parses a CPU list such as `0-3,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list entry {part:?} (expected e.g. 0-3,6; CPUs 0-{MAX_CPU})");
        let cpu = |n: &str| {
            n.parse::<usize>()
                .ok()
                .filter(|&c| c <= MAX_CPU)
                .ok_or_else(bad)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (cpu(a)?, cpu(b)?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(cpu(part)?);
            }
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(cpus.into_iter().collect())
}

/// SIMD features the CPU reports that tract's kernels use.
pub fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($feat:tt),*) => { $( if std::arch::is_x86_feature_detected!($feat) { f.push($feat); } )* };
        }
        probe!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni"
        );
        if tract_linalg::x86_64::amx::has_amx_int8() {
            f.push("amx-int8");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($feat:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($feat) { f.push($feat); } )* };
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    f
}

/// Current and peak resident memory of this process in bytes (`VmRSS`, `VmHWM`).
pub fn rss_bytes(sys: &Sysfs) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(sys.proc.join("self/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|v| v * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Resets the peak resident memory mark (Linux `clear_refs` = 5), so a later `VmHWM` reading
/// is the peak since now. Returns false where that is not possible.
pub fn reset_peak_rss(sys: &Sysfs) -> bool {
    std::fs::write(sys.proc.join("self/clear_refs"), "5").is_ok()
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
        // sched_setaffinity reads size_of::<cpu_set_t>() bytes from it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for &c in cpus {
                if c >= libc::CPU_SETSIZE as usize {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("CPU {c} out of range"),
                    ));
                }
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpus;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "thread pinning needs Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree() -> (tempfile::TempDir, Sysfs) {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sysfs {
            sys: dir.path().join("sys"),
            proc: dir.path().join("proc"),
        };
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // A big.LITTLE board: cpus 0-1 little, 2-3 big; cpu 4 offline.
        w("sys/devices/system/cpu/online", "0-3\n");
        for (cpu, cap, core, khz) in [
            (0, 446, 0, 1_200_000),
            (1, 446, 1, 1_100_000),
            (2, 1024, 2, 1_800_000),
            (3, 1024, 3, 2_400_000),
            (4, 1024, 4, 0),
        ] {
            let base = format!("sys/devices/system/cpu/cpu{cpu}");
            w(&format!("{base}/cpu_capacity"), &format!("{cap}\n"));
            w(&format!("{base}/topology/physical_package_id"), "0\n");
            w(
                &format!("{base}/topology/core_id"),
                &format!("{}\n", core % 2),
            );
            w(
                &format!("{base}/cpufreq/scaling_cur_freq"),
                &format!("{khz}\n"),
            );
        }
        w(
            "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
            "1\n",
        );
        w("sys/class/thermal/thermal_zone0/temp", "48312\n");
        w("sys/class/thermal/thermal_zone1/temp", "61000\n");
        w("sys/class/thermal/cooling_device0/cur_state", "0\n");
        w(
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            "0x50005\n",
        );
        w("proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0b\n\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n");
        w(
            "proc/self/status",
            "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n",
        );
        (dir, sys)
    }

    #[test]
    fn reads_a_fake_board() {
        let (_dir, sys) = fake_tree();
        assert_eq!(sys.online_cpus(), vec![0, 1, 2, 3]);
        assert_eq!(sys.big_cores(), vec![2, 3]);
        assert_eq!(
            sys.cpu_model(),
            "Raspberry Pi 5 Model B Rev 1.0 (CPU part 0xd0b)"
        );
        let t = sys.thermal();
        assert_eq!(t.temp_c, Some(61.0));
        assert_eq!(t.freq_mhz, Some(2400.0));
        assert_eq!(t.throttled, Some(0x50005));
        assert_eq!(rss_bytes(&sys), Some((1024 * 1024, 2048 * 1024)));
        assert!(sys.physical_cores() >= 1);
    }

    #[test]
    fn missing_files_read_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sysfs {
            sys: dir.path().into(),
            proc: dir.path().into(),
        };
        assert_eq!(sys.thermal(), ThermalSample::default());
        assert_eq!(sys.cpu_model(), "unknown CPU");
        assert_eq!(sys.big_cores(), sys.online_cpus());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
