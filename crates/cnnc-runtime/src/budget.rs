//! How much memory cnnc may allocate: what the machine has available, or a limit the user sets.
//!
//! Commands that hold tensors check what they are about to allocate against a
//! [`MemoryBudget`] first, so that a model or a file too large for the machine is an error
//! that says how much it needs, not an abort or a visit from the OOM killer.
//!
//! On Linux the budget is `MemAvailable` from `/proc/meminfo` (what can be allocated without
//! swapping), lowered to what the memory cgroup still allows when there is a limit (containers,
//! systemd slices: going over it gets the process killed, whatever the machine has free).
//! Elsewhere, or when neither can be read, it is [`FALLBACK_BYTES`].

use std::fmt;
use std::path::Path;

/// The budget assumed when the machine's free memory cannot be read: 4 GiB.
pub const FALLBACK_BYTES: u64 = 4 << 30;

/// A number of bytes cnnc may allocate, and where the number comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub bytes: u64,
    pub source: BudgetSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// `MemAvailable` in `/proc/meminfo`.
    Available,
    /// What the memory cgroup's limit leaves (`memory.max - memory.current`).
    Cgroup,
    /// Nothing could be read: [`FALLBACK_BYTES`].
    Fallback,
    /// Given by the user (`--memory-limit`, `CNNC_MEMORY_LIMIT`).
    Set,
}

impl fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetSource::Available => "available on this machine",
            BudgetSource::Cgroup => "left under this process's memory limit (cgroup)",
            BudgetSource::Fallback => "assumed available (the machine's free memory could not be read)",
            BudgetSource::Set => "allowed by --memory-limit",
        })
    }
}

impl MemoryBudget {
    /// What this machine has available now (see the module documentation).
    pub fn detect() -> MemoryBudget {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let available = meminfo.as_deref().and_then(mem_available);
        let cgroup = cgroup_headroom(Path::new("/sys/fs/cgroup"));
        match (available, cgroup) {
            (Some(a), Some(c)) if c < a => MemoryBudget { bytes: c, source: BudgetSource::Cgroup },
            (Some(a), _) => MemoryBudget { bytes: a, source: BudgetSource::Available },
            (None, Some(c)) => MemoryBudget { bytes: c, source: BudgetSource::Cgroup },
            (None, None) => MemoryBudget { bytes: FALLBACK_BYTES, source: BudgetSource::Fallback },
        }
    }

    /// A budget the user set.
    pub fn set(bytes: u64) -> MemoryBudget {
        MemoryBudget { bytes, source: BudgetSource::Set }
    }

    /// Whether `bytes` fit.
    pub fn allows(&self, bytes: u64) -> bool {
        bytes <= self.bytes
    }
}

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// What the memory cgroup still allows, from `memory.max` and `memory.current` (cgroup v2) or
/// `memory.limit_in_bytes` and `memory.usage_in_bytes` (v1), under `root`. `None` when there is
/// no limit or it cannot be read.
fn cgroup_headroom(root: &Path) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).ok();
    let number = |text: Option<String>| text?.trim().parse::<u64>().ok();
    let (limit, usage) = if let Some(max) = read("memory.max") {
        (number(Some(max))?, number(read("memory.current"))?)
    } else {
        (number(read("memory/memory.limit_in_bytes"))?, number(read("memory/memory.usage_in_bytes"))?)
    };
    // cgroup v1 reports "no limit" as a huge page-aligned number.
    if limit >= 1 << 60 {
        return None;
    }
    Some(limit.saturating_sub(usage))
}

/// Parses a size as `--memory-limit` takes it: bytes, or a number with a binary unit `K`, `M`,
/// `G` or `T` (also `KiB`, `MB`, ...; case does not matter): `512M`, `1.5G`, `8GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("`{text}` is not a size: expected a number of bytes or one such as 512M or 8G")),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{text}` is not a size: expected a number of bytes or one such as 512M or 8G"))?;
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is larger than any machine's memory"));
    }
    Ok(bytes as u64)
}

/// `512 B`, `1.5 KiB`, `102.3 MiB`, `1.2 TiB`: bytes for messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the value would print as 1024.0 or more in this unit.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(mem_available(text), Some(23_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn reads_cgroup_limits() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_headroom(dir.path()), None, "no cgroup files");
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "1000\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), None, "no limit");
        std::fs::write(dir.path().join("memory.max"), "5000\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), Some(4000));
        std::fs::write(dir.path().join("memory.current"), "9000\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), Some(0), "over the limit already");
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("memory")).unwrap();
        std::fs::write(v1.path().join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(v1.path().join("memory/memory.usage_in_bytes"), "10\n").unwrap();
        assert_eq!(cgroup_headroom(v1.path()), None, "v1's no-limit value");
        std::fs::write(v1.path().join("memory/memory.limit_in_bytes"), "100\n").unwrap();
        assert_eq!(cgroup_headroom(v1.path()), Some(90));
    }

    #[test]
    fn the_detected_budget_is_positive() {
        let budget = MemoryBudget::detect();
        assert!(budget.bytes > 0, "{budget:?}");
        assert!(budget.allows(0) && !budget.allows(u64::MAX));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8g"), Ok(8 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 KB "), Ok(2048));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "G", "-1G", "lots", "1.2.3M", "5 parsecs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
