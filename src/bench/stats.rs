//! What the load generator records, and what it reads of a process from `/proc`.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::now_us;

/// Payload bytes a QUIC packet carries on this path, for counting packets from bytes.
pub const PACKET_PAYLOAD: u64 = 1200;

/// Frames received on one path, with their one-way latency.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Microseconds from capture to receipt.
    pub latency_us: Histogram<u64>,
    pub frames: u64,
    pub bytes: u64,
    /// Network packets these frames needed (one per datagram, ⌈size / 1200⌉ per video frame).
    pub packets: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            frames: 0,
            bytes: 0,
            packets: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, capture_us: u64, bytes: usize, packets: u64) {
        let latency = now_us().saturating_sub(capture_us).clamp(1, 120_000_000);
        let _ = self.latency_us.record(latency);
        self.frames += 1;
        self.bytes += bytes as u64;
        self.packets += packets;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency_us.add(&other.latency_us);
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.packets += other.packets;
    }
}

pub fn packets_for(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(PACKET_PAYLOAD).max(1)
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if h.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// CPU seconds (user + system) a process, or a thread's own entry, has used.
/// `stat` is the content of `/proc/<pid>/stat` or `/proc/thread-self/stat`.
fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// USER_HZ. It is 100 on every Linux this runs on; reading it needs libc, which this
/// crate otherwise does without.
fn clock_ticks_per_second() -> f64 {
    100.0
}

pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time of the calling thread. `schedstat` counts nanoseconds (the `stat` ticks are
/// 10 ms, too coarse for a sender thread that uses a few milliseconds in a short run).
pub fn thread_cpu_seconds() -> Option<f64> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok();
    match schedstat.and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok()) {
        Some(ns) => Some(ns / 1e9),
        None => cpu_seconds_from_stat(&std::fs::read_to_string("/proc/thread-self/stat").ok()?),
    }
}

/// Peak resident set size of a process, in MiB (`VmHWM`).
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// One line about the machine, for reports.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}, Linux")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let stat = "1234 (my relay (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(thread_cpu_seconds().is_some());
        assert!(peak_rss_mb(std::process::id()).unwrap() > 0.0);
    }

    #[test]
    fn packets_round_up() {
        assert_eq!(packets_for(1), 1);
        assert_eq!(packets_for(1200), 1);
        assert_eq!(packets_for(1201), 2);
    }
}
