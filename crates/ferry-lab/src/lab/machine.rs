//! What machine a figure comes from: benchmarks and lab commands print this
//! with their results, since the machines ferry runs on differ (AVX-512 or
//! not changes which AES-GCM backend wins, and by how much).

use serde::Serialize;

use crate::protocol::Backend;

/// CPU flags that decide AES-GCM and copy speed, in the order printed.
const FLAGS: [&str; 10] = [
    "aes",
    "pclmulqdq",
    "vaes",
    "vpclmulqdq",
    "avx2",
    "avx512f",
    "avx512vl",
    "sha_ni",
    "bmi2",
    "adx",
];

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// Which of [`FLAGS`] the CPU has.
    pub features: Vec<String>,
    /// What `backend: fastest` resolves to here.
    pub fastest_backend: String,
}

impl Machine {
    /// Reads /proc/cpuinfo and the kernel release; measures `fastest`.
    pub fn probe() -> Machine {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags").unwrap_or_default();
        let has: Vec<&str> = flags.split_whitespace().collect();
        Machine {
            cpu: field("model name").unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            features: FLAGS
                .iter()
                .filter(|f| has.contains(f))
                .map(|f| f.to_string())
                .collect(),
            fastest_backend: Backend::fastest().name().to_string(),
        }
    }

    pub fn has(&self, flag: &str) -> bool {
        self.features.iter().any(|f| f == flag)
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {}, {} cores, kernel {}, {}; features {}; `fastest` AEAD backend: {}",
            self.cpu,
            self.cores,
            self.kernel,
            if self.has("avx512f") {
                "AVX-512"
            } else {
                "no AVX-512"
            },
            self.features.join(" "),
            self.fastest_backend
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_this_machine() {
        let m = Machine::probe();
        assert!(m.cores >= 1);
        assert_ne!(
            m.kernel, "unknown",
            "/proc/sys/kernel/osrelease is readable"
        );
        assert!(
            Backend::ALL.iter().any(|b| b.name() == m.fastest_backend),
            "{m}"
        );
        // x86-64 machines of this project have AES-NI; the line says so.
        if cfg!(target_arch = "x86_64") {
            assert!(m.has("aes"), "{m}");
            assert!(m.to_string().contains(" aes "), "{m}");
        }
    }
}
