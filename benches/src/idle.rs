//! Waiting for a quiet machine, as `../shared/tools/*.py` do: before each measurement, wait (at
//! most a bound) until processes other than this one leave the CPUs idle for half a second,
//! then report what share of the CPUs they used while we measured (a result is NOISY when
//! that share is above 5 %). Linux only (`/proc`); elsewhere the checks are skipped.

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

/// Waits up to `max` until other processes use under 5 % of the CPUs over half a second;
/// returns the seconds waited and whether the machine got quiet.
pub fn wait(max: Duration) -> (f64, bool) {
    let t0 = Instant::now();
    loop {
        let w = Window::start();
        std::thread::sleep(Duration::from_millis(500));
        if w.others() < 0.05 {
            return (t0.elapsed().as_secs_f64(), true);
        }
        if t0.elapsed() > max {
            return (t0.elapsed().as_secs_f64(), false);
        }
    }
}
