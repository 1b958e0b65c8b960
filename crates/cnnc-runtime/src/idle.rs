//! Whether a timing ran on a quiet machine, as ONNX Runtime's and PyTorch's baseline tools check
//! it: before a measurement, wait (at most a bound) until processes other than this one leave
//! the CPUs idle for half a second; after it, what share of the CPUs they used meanwhile (a
//! result is noisy when that share is above [`NOISY`]). Linux only (`/proc`); elsewhere the
//! share is unknown (0) and the wait returns at once.

use std::time::{Duration, Instant};

/// USER_HZ, the unit of `/proc` CPU times (100 on every Linux architecture cnnc targets).
const HZ: f64 = 100.0;

/// CPU-seconds the whole machine has been busy (all but idle and iowait).
fn busy() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = s.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    (v.len() == 8).then(|| (v.iter().sum::<f64>() - v[3] - v[4]) / HZ)
}

/// CPU-seconds this process has used (user + system).
fn own() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / HZ)
}

/// A measurement window: what other processes used from `start` on.
pub struct Window {
    busy: Option<f64>,
    own: Option<f64>,
    t: Instant,
}

impl Window {
    pub fn start() -> Window {
        Window { busy: busy(), own: own(), t: Instant::now() }
    }

    /// Share of all CPUs used by other processes since `start` (0 where unknown).
    pub fn others(&self) -> f64 {
        match (self.busy, self.own, busy(), own()) {
            (Some(b0), Some(o0), Some(b1), Some(o1)) => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                (((b1 - b0) - (o1 - o0)) / (self.t.elapsed().as_secs_f64() * cpus)).max(0.0)
            }
            _ => 0.0,
        }
    }
}

/// The share of the CPUs other processes may use while a timing runs before it is noisy.
pub const NOISY: f64 = 0.05;

impl Window {
    /// [`Window::others`] once the window is long enough for `/proc`'s 10 ms ticks to give it
    /// to a percent or so (half a second), at most every CPU; `None` before, or where unknown.
    pub fn others_measured(&self) -> Option<f64> {
        (self.t.elapsed() >= MIN_WINDOW && self.busy.is_some() && self.own.is_some()).then(|| self.others().min(1.0))
    }
}

/// The shortest window whose share [`Window::others_measured`] reports.
pub const MIN_WINDOW: Duration = Duration::from_millis(500);

/// Waits up to `max` until other processes use under [`NOISY`] of the CPUs over half a second;
/// returns the seconds waited and whether the machine got quiet.
pub fn wait(max: Duration) -> (f64, bool) {
    let t0 = Instant::now();
    loop {
        let w = Window::start();
        std::thread::sleep(Duration::from_millis(500));
        if w.others() < NOISY {
            return (t0.elapsed().as_secs_f64(), true);
        }
        if t0.elapsed() > max {
            return (t0.elapsed().as_secs_f64(), false);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_shows_and_a_short_window_says_nothing() {
        let w = Window::start();
        assert_eq!(w.others_measured(), None, "a window of no time has no share");
        // Another process spinning on one CPU for longer than the shortest window.
        let mut spin = std::process::Command::new("sh")
            .args(["-c", "end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done"])
            .spawn()
            .expect("sh runs");
        let w = Window::start();
        std::thread::sleep(MIN_WINDOW + Duration::from_millis(300));
        let share = w.others_measured().expect("long enough");
        spin.kill().ok();
        spin.wait().ok();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // One CPU of `cpus` busy, give or take the ticks and the scheduler.
        assert!(share > 0.5 / cpus && share <= 1.0, "share {share} with {cpus} CPUs");
    }
}
