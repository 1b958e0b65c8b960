//! The machine's FMA peak for `cnnc bench`, measured once and cached: `peak.json` in cnnc's
//! cache directory (`$CNNC_CACHE_DIR`, else `$XDG_CACHE_HOME/cnnc`, else `~/.cache/cnnc`),
//! one entry per CPU model, instruction set (with the vector width; an unoptimised build's
//! probe apart) and thread count.
//!
//! ```text
//! {"version":1,"peaks":[{"cpu":"AMD EPYC 9R45","isa":"avx512 512-bit fma","threads":2,"gflops":437.2}]}
//! ```
//!
//! The cache is a convenience, never a reason to fail: a missing, unreadable, oversized or
//! corrupt file, or an entry that is not a positive finite number, means measuring again (and
//! rewriting the file whole, atomically); a directory that cannot be written means measuring
//! each time, which the lookup reports as a note.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name inside the cache directory.
pub const FILE: &str = "peak.json";
/// A cache larger than this is not ours (a few hundred bytes an entry): it is replaced.
const MAX_BYTES: u64 = 1 << 20;
const VERSION: u32 = 1;

/// What a peak is keyed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeakKey {
    /// The CPU model string (`/proc/cpuinfo`'s `model name`).
    pub cpu: String,
    /// The instruction set and width measured, such as `avx512 512-bit fma`.
    pub isa: String,
    pub threads: usize,
}

/// Where a peak came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeakSource {
    /// Read from the cache file.
    Cached,
    /// Measured in this run (and written to the cache when it could be).
    Measured,
}

impl PeakSource {
    pub fn name(self) -> &'static str {
        match self {
            PeakSource::Cached => "cached",
            PeakSource::Measured => "measured",
        }
    }
}

/// A looked-up peak.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub gflops: f64,
    pub source: PeakSource,
    /// The cache file, when there is a cache directory.
    pub file: Option<PathBuf>,
    /// Why the cache could not be read or written, as a sentence (not an error).
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    cpu: String,
    isa: String,
    threads: usize,
    gflops: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    peaks: Vec<Entry>,
}

/// cnnc's cache directory: `$CNNC_CACHE_DIR` (the directory itself), else
/// `$XDG_CACHE_HOME/cnnc`, else `$HOME/.cache/cnnc`; `None` when none of them is set (the XDG
/// specification ignores a relative `XDG_CACHE_HOME`).
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("CNNC_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("cnnc"));
    }
    var("HOME").map(|home| home.join(".cache").join("cnnc"))
}

/// The CPU's model string: the first `model name` of `/proc/cpuinfo` where there is one,
/// else the architecture.
pub fn cpu_model() -> String {
    let from_cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        text.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.trim() == "model name").map(|(_, v)| v.trim().to_string())
        })
    });
    from_cpuinfo.filter(|m| !m.is_empty()).unwrap_or_else(|| format!("unknown {} CPU", std::env::consts::ARCH))
}

/// The cache key's instruction set for a probe measured by this build: an unoptimised build's
/// FMA chains run far below the machine's peak, so its figure is kept under a key of its own
/// (`... (unoptimised build)`) and never becomes the peak a release build divides by.
pub fn isa_of_this_build(isa: String) -> String {
    if cfg!(debug_assertions) { format!("{isa} (unoptimised build)") } else { isa }
}

/// The peak for `key` from the cache in `dir`, or `measure()`d and stored there.
pub fn lookup(dir: Option<&Path>, key: &PeakKey, measure: impl FnOnce() -> f64) -> Peak {
    let Some(dir) = dir else {
        let note = "no cache directory (set CNNC_CACHE_DIR or HOME): the peak is measured on every run".to_string();
        return Peak { gflops: measure(), source: PeakSource::Measured, file: None, note: Some(note) };
    };
    let file = dir.join(FILE);
    let mut cache = read(&file).unwrap_or(CacheFile { version: VERSION, peaks: Vec::new() });
    let found = cache.peaks.iter().find(|e| e.cpu == key.cpu && e.isa == key.isa && e.threads == key.threads);
    if let Some(entry) = found {
        return Peak { gflops: entry.gflops, source: PeakSource::Cached, file: Some(file), note: None };
    }
    let gflops = measure();
    cache.peaks.push(Entry { cpu: key.cpu.clone(), isa: key.isa.clone(), threads: key.threads, gflops });
    let note = write(dir, &file, &cache)
        .err()
        .map(|e| format!("cannot write the peak cache `{}`: {e}; the peak is measured on every run", file.display()));
    Peak { gflops, source: PeakSource::Measured, file: Some(file), note }
}

/// The cache's valid contents, or `None` for a file that is missing, too large, not ours or
/// of another version; entries that are not positive finite numbers are dropped.
fn read(file: &Path) -> Option<CacheFile> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let mut cache: CacheFile = serde_json::from_str(&text).ok()?;
    if cache.version != VERSION {
        return None;
    }
    cache.peaks.retain(|e| e.gflops.is_finite() && e.gflops > 0.0);
    Some(cache)
}

fn write(dir: &Path, file: &Path, cache: &CacheFile) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string(cache).map_err(std::io::Error::other)?;
    cnnc_runtime::write_atomic(file, |out| out.write_all(format!("{text}\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(threads: usize) -> PeakKey {
        PeakKey { cpu: "Test CPU".into(), isa: "avx512 512-bit fma".into(), threads }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-peak-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn measured_once_then_cached_per_key() {
        let dir = temp_dir("once");
        let first = lookup(Some(&dir), &key(2), || 400.0);
        assert_eq!((first.gflops, first.source, first.note.clone()), (400.0, PeakSource::Measured, None));
        let again = lookup(Some(&dir), &key(2), || panic!("cached: not measured again"));
        assert_eq!((again.gflops, again.source), (400.0, PeakSource::Cached));
        // Another thread count is another entry; both stay.
        assert_eq!(lookup(Some(&dir), &key(1), || 210.0).source, PeakSource::Measured);
        assert_eq!(lookup(Some(&dir), &key(2), || 0.0).gflops, 400.0);
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(text.starts_with("{\"version\":1,\"peaks\":[{\"cpu\":\"Test CPU\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_cache_is_measured_again_and_replaced() {
        for bad in [
            "",
            "{not json",
            "[1, 2]",
            "{\"version\":9,\"peaks\":[]}",
            "{\"version\":1,\"peaks\":[{\"cpu\":\"Test CPU\",\"isa\":\"avx512 512-bit fma\",\"threads\":2,\"gflops\":-1}]}",
        ] {
            let dir = temp_dir("corrupt");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(FILE), bad).unwrap();
            let peak = lookup(Some(&dir), &key(2), || 123.0);
            assert_eq!((peak.gflops, peak.source, peak.note), (123.0, PeakSource::Measured, None), "{bad:?}");
            assert_eq!(lookup(Some(&dir), &key(2), || 0.0).source, PeakSource::Cached, "{bad:?}: rewritten");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn an_unwritable_cache_is_a_note_not_an_error() {
        let dir = temp_dir("unwritable");
        std::fs::write(&dir, "a file where the directory should be").unwrap();
        let peak = lookup(Some(&dir), &key(2), || 99.0);
        assert_eq!((peak.gflops, peak.source), (99.0, PeakSource::Measured));
        assert!(peak.note.as_deref().is_some_and(|n| n.contains("cannot write the peak cache")), "{peak:?}");
        std::fs::remove_file(&dir).unwrap();
        let none = lookup(None, &key(2), || 98.0);
        assert!(none.note.is_some() && none.file.is_none() && none.gflops == 98.0);
    }

    #[test]
    fn a_debug_build_keeps_its_peak_apart() {
        let isa = isa_of_this_build("avx512 512-bit fma".into());
        assert_eq!(isa.ends_with("(unoptimised build)"), cfg!(debug_assertions), "{isa}");
    }

    #[test]
    fn the_cpu_has_a_model_string() {
        assert!(!cpu_model().is_empty());
    }
}
