//! What the relay knows of the network path to each peer, and the one transport setting it
//! derives from that directly: how much the transport may hold unacknowledged.
//!
//! Measurements are inputs. The IO layer samples its QUIC connection about every
//! [`PATH_SAMPLE_INTERVAL`] and hands the core a [`PathSample`]: the transport's smoothed RTT
//! and congestion window, and its cumulative packet and byte counters. From successive
//! samples the core keeps a [`PathEstimate`]:
//! - `rtt`, `cwnd`: as the transport gives them;
//! - `loss`: packets lost over packets sent during the last interval, smoothed with weight
//!   1/4 on the newest interval (one lossy interval is news, not yet the link's nature);
//! - `send_rate`: bytes put on the wire per second during the last interval, smoothed the
//!   same way.
//!
//! The send window. quinn lets a connection hold up to its send window of unacknowledged
//! stream data: 10 MB by default, which is minutes of video at a weak link's rate, and a
//! frame handed to the transport can no longer be skipped, only sent late. A loss-based
//! controller (Cubic, NewReno) also keeps the bottleneck's queue full: on a 700 kbit/s link
//! with a 200 ms queue, every packet, audio included, waits 200 ms. So the window is what
//! the path delivers in a round trip plus [`QUEUE_TARGET`]:
//!
//! `window = max_rate × (min_rtt + QUEUE_TARGET)`, within
//! `[MIN_SEND_WINDOW, max(cwnd × 5/4, MIN_SEND_WINDOW)]`
//!
//! where `max_rate` is the highest send rate of the last [`RATE_WINDOW`] samples (what the
//! path has shown it can carry; a keyframe burst shows it on an otherwise idle link) and
//! `min_rtt` the lowest smoothed RTT of the last [`RTT_WINDOW`] (not of the connection's
//! life: a round trip that grows for good, after a route change or on a congested return
//! path, must not shrink the window sample after sample; BBR drains its own queue every
//! 10 s, so a queue of its own making does not count). It is
//! self-clocking: while the path has no standing queue the measured rate is window / min_rtt
//! and the window grows by a factor of `1 + QUEUE_TARGET / min_rtt` a sample; once a queue
//! stands, the rate is the bottleneck's and the queue settles near `QUEUE_TARGET`. Stream
//! data then stays below the congestion window, so audio datagrams and the control stream
//! find room in it at once, and video waits in the relay's consumer queues, where the
//! latency bound can drop it (`queue.rs`). The cap of `cwnd × 5/4` keeps the controller in
//! charge after a loss and lets it grow its window (it must be window-limited to grow).

use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the IO layer samples a connection.
pub const PATH_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The smallest send window: about seven full packets, so that a connection still moves a
/// keyframe in a few round trips (at 700 kbit/s it is 90 ms of queue).
pub const MIN_SEND_WINDOW: u64 = 8 * 1024;

/// The standing queue the send window allows at the bottleneck, beyond a round trip.
pub const QUEUE_TARGET: Duration = Duration::from_millis(50);

/// Samples over which the highest send rate is kept (1 s at the sample interval).
pub const RATE_WINDOW: usize = 10;

/// Time over which the path's peak rate is kept: two groups of pictures at the usual
/// 2 s keyframe interval, and some.
///
/// What a path carries, when the relay sends less than it could (media is app-limited),
/// shows in bursts: a keyframe goes out as fast as the send window lets it, and that
/// window is self-clocked by acknowledgements, so a burst's rate over one interval is the
/// bottleneck's rate when the bottleneck is slower than the burst, and the burst's own
/// size per interval when it is not (a lower bound, then). quinn's BBR would be the
/// natural source, but it takes no delivery sample while app-limited, which a media
/// connection held to its send window nearly always is: its estimate stays at zero.
pub const PEAK_WINDOW: Duration = Duration::from_secs(5);

/// Time over which the lowest round trip is kept.
pub const RTT_WINDOW: Duration = Duration::from_secs(10);

/// Weight of the newest interval in the smoothed loss and send rate.
const SMOOTHING: f64 = 0.25;

/// One reading of a connection's transport state. Counters are cumulative since the
/// connection started; the estimate takes differences between samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathSample {
    pub rtt: Duration,
    /// The lowest RTT seen on the path (no queue).
    pub min_rtt: Duration,
    pub cwnd: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Bytes put on the wire (UDP payloads, retransmissions included).
    pub sent_bytes: u64,
}

/// The relay's current view of the path to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PathEstimate {
    pub rtt_ms: f64,
    /// Fraction of packets lost recently, 0 to 1.
    pub loss: f64,
    /// The relay's send rate to this peer, bits per second.
    pub send_bps: f64,
    pub cwnd_bytes: u64,
    /// The highest send rate of one sample interval in the last [`PEAK_WINDOW`], bits per
    /// second: what the path has shown it carries (see [`PEAK_WINDOW`]).
    pub peak_bps: f64,
}

/// Turns samples into an estimate. `None` until the first sample.
#[derive(Debug, Default)]
pub struct PathEstimator {
    last: Option<(PathSample, Instant)>,
    estimate: PathEstimate,
    samples: u64,
    /// Send rates of the last `RATE_WINDOW` intervals, bits per second, newest last.
    rates: std::collections::VecDeque<f64>,
    /// Smoothed RTTs of the last `RTT_WINDOW`, oldest first, kept increasing (the front is
    /// their minimum).
    rtts: std::collections::VecDeque<(Instant, Duration)>,
    /// Interval send rates of the last `PEAK_WINDOW`, oldest first, kept decreasing (a
    /// rate below a newer one can never be the peak again).
    peaks: std::collections::VecDeque<(Instant, f64)>,
}

impl PathEstimator {
    pub fn estimate(&self) -> Option<PathEstimate> {
        (self.samples > 0).then_some(self.estimate)
    }

    /// Takes a sample; returns the send window the transport should now use.
    pub fn on_sample(&mut self, sample: PathSample, now: Instant) -> u64 {
        let e = &mut self.estimate;
        e.rtt_ms = sample.rtt.as_secs_f64() * 1000.0;
        e.cwnd_bytes = sample.cwnd;
        if let Some((last, at)) = self.last {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            let sent = sample.sent_packets.saturating_sub(last.sent_packets);
            let lost = sample.lost_packets.saturating_sub(last.lost_packets);
            if sent > 0 {
                // A packet sent in one interval may be declared lost in the next: cap at 1.
                let interval_loss = (lost as f64 / sent as f64).min(1.0);
                e.loss = smooth(e.loss, interval_loss, self.samples);
            }
            if elapsed > 0.0 {
                let bytes = sample.sent_bytes.saturating_sub(last.sent_bytes);
                let rate = bytes as f64 * 8.0 / elapsed;
                e.send_bps = smooth(e.send_bps, rate, self.samples);
                if self.rates.len() == RATE_WINDOW {
                    self.rates.pop_front();
                }
                self.rates.push_back(rate);
                while self.peaks.back().is_some_and(|(_, r)| *r <= rate) {
                    self.peaks.pop_back();
                }
                self.peaks.push_back((now, rate));
                while self
                    .peaks
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > PEAK_WINDOW)
                {
                    self.peaks.pop_front();
                }
                e.peak_bps = self.peaks.front().map_or(0.0, |(_, r)| *r);
            }
            self.samples += 1;
        } else {
            // The first sample only sets the baseline of the counters.
            self.samples = 1;
        }
        self.last = Some((sample, now));
        // Kept increasing, as `peaks` is kept decreasing: an RTT at least as high as a newer
        // one can never be the window's minimum again, so the front is the minimum and the
        // deque holds a handful of samples, not the window's hundred.
        while self.rtts.back().is_some_and(|(_, rtt)| *rtt >= sample.rtt) {
            self.rtts.pop_back();
        }
        self.rtts.push_back((now, sample.rtt));
        while self
            .rtts
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RTT_WINDOW)
        {
            self.rtts.pop_front();
        }
        let min_rtt = self
            .rtts
            .front()
            .map_or(sample.rtt, |(_, rtt)| *rtt)
            .max(sample.min_rtt);
        let max_rate = self
            .rates
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        send_window(sample.cwnd, max_rate, min_rtt)
    }
}

/// The newest value weighs 1/4; the first measured interval (`samples == 1`) is taken as is.
fn smooth(old: f64, new: f64, samples: u64) -> f64 {
    if samples <= 1 {
        new
    } else {
        old + SMOOTHING * (new - old)
    }
}

/// The send window (see the module's policy) for a congestion window of `cwnd` bytes, the
/// highest recent send rate in bits per second (`None` before two samples: then the cap
/// alone), and the path's lowest RTT.
pub fn send_window(cwnd: u64, max_rate_bps: Option<f64>, min_rtt: Duration) -> u64 {
    let cap = (cwnd + cwnd / 4).max(MIN_SEND_WINDOW);
    let Some(rate) = max_rate_bps else {
        return cap;
    };
    let bdp = rate / 8.0 * (min_rtt + QUEUE_TARGET).as_secs_f64();
    (bdp as u64).clamp(MIN_SEND_WINDOW, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_packets: u64, lost_packets: u64, sent_bytes: u64, cwnd: u64) -> PathSample {
        PathSample {
            rtt: Duration::from_millis(80),
            min_rtt: Duration::from_millis(50),
            cwnd,
            sent_packets,
            lost_packets,
            sent_bytes,
        }
    }

    #[test]
    fn first_sample_sets_the_baseline() {
        let mut p = PathEstimator::default();
        assert_eq!(p.estimate(), None);
        let t0 = Instant::now();
        let window = p.on_sample(sample(1000, 500, 1_000_000, 40_000), t0);
        assert_eq!(window, 50_000);
        let e = p.estimate().unwrap();
        // Counters from before the first sample are history, not the current loss.
        assert_eq!(e.loss, 0.0);
        assert_eq!(e.send_bps, 0.0);
        assert_eq!(e.rtt_ms, 80.0);
    }

    #[test]
    fn loss_and_rate_follow_the_intervals() {
        let mut p = PathEstimator::default();
        let t0 = Instant::now();
        p.on_sample(sample(0, 0, 0, 20_000), t0);
        // 100 ms, 100 packets, 3 lost, 12,500 bytes: 3% and 1 Mbit/s, taken as is.
        p.on_sample(sample(100, 3, 12_500, 20_000), t0 + PATH_SAMPLE_INTERVAL);
        let e = p.estimate().unwrap();
        assert!((e.loss - 0.03).abs() < 1e-9, "{e:?}");
        assert!((e.send_bps - 1_000_000.0).abs() < 1.0, "{e:?}");
        // A clean interval at half the rate moves both a quarter of the way.
        p.on_sample(
            sample(200, 3, 18_750, 20_000),
            t0 + 2 * PATH_SAMPLE_INTERVAL,
        );
        let e = p.estimate().unwrap();
        assert!((e.loss - 0.0225).abs() < 1e-9, "{e:?}");
        assert!((e.send_bps - 875_000.0).abs() < 1.0, "{e:?}");
    }

    #[test]
    fn peak_is_the_best_interval_of_the_last_five_seconds() {
        let mut p = PathEstimator::default();
        let mut now = Instant::now();
        let mut sent = 0;
        p.on_sample(sample(0, 0, sent, 40_000), now);
        // 400 kbit/s, with one 2 Mbit/s interval (a keyframe's burst) at 1 s.
        for i in 1..=80u64 {
            now += PATH_SAMPLE_INTERVAL;
            sent += if i == 10 { 25_000 } else { 5_000 };
            p.on_sample(sample(0, 0, sent, 40_000), now);
            let peak = p.estimate().unwrap().peak_bps;
            match i {
                10..=59 => assert!((peak - 2e6).abs() < 1.0, "{i}: {peak}"),
                61.. => assert!((peak - 400e3).abs() < 1.0, "{i}: {peak}"),
                _ => {}
            }
        }
    }

    #[test]
    fn min_rtt_is_the_lowest_of_the_window_from_a_few_samples() {
        let mut p = PathEstimator::default();
        let t0 = Instant::now();
        let mut seen: Vec<(Instant, Duration)> = Vec::new();
        let mut x: u64 = 7;
        for i in 0..400u32 {
            // RTTs of 20..120 ms in a deterministic jumble, then a slow climb.
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let ms = if i < 300 {
                20 + (x >> 33) % 100
            } else {
                u64::from(i) - 250
            };
            let now = t0 + PATH_SAMPLE_INTERVAL * i;
            let rtt = Duration::from_millis(ms);
            p.on_sample(
                PathSample {
                    rtt,
                    min_rtt: Duration::ZERO,
                    ..sample(0, 0, 0, 40_000)
                },
                now,
            );
            seen.push((now, rtt));
            let lowest = seen
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) <= RTT_WINDOW)
                .map(|(_, rtt)| *rtt)
                .min();
            assert_eq!(p.rtts.front().map(|(_, rtt)| *rtt), lowest, "sample {i}");
            if i < 300 {
                assert!(p.rtts.len() < 30, "sample {i}: {} kept", p.rtts.len());
            }
        }
    }

    #[test]
    fn window_is_a_round_trip_of_the_best_rate_plus_the_queue_target() {
        let ms = Duration::from_millis;
        // Before a rate is known: the congestion window's cap, with a floor.
        assert_eq!(send_window(0, None, ms(50)), MIN_SEND_WINDOW);
        assert_eq!(send_window(400_000, None, ms(50)), 500_000);
        // 8 Mbit/s over 50 ms + 50 ms: 100 kB, within the cap.
        assert_eq!(send_window(400_000, Some(8e6), ms(50)), 100_000);
        // The controller's window caps it (after a loss, say).
        assert_eq!(send_window(40_000, Some(8e6), ms(50)), 50_000);
        // 700 kbit/s on loopback: the floor, about 90 ms of that link.
        assert_eq!(send_window(400_000, Some(700e3), ms(1)), MIN_SEND_WINDOW);
    }

    #[test]
    fn a_round_trip_that_grows_for_good_gets_its_window_back() {
        // 2 Mbit/s sent over a path whose RTT went from 20 ms to 300 ms (a congested return
        // path); quinn's lifetime minimum stays at 20 ms.
        let mut p = PathEstimator::default();
        let mut now = Instant::now();
        let mut sent = 0;
        let mut window = 0;
        for i in 0..200u64 {
            let rtt = if i < 10 { 20 } else { 300 };
            let s = PathSample {
                rtt: Duration::from_millis(rtt),
                min_rtt: Duration::from_millis(20),
                ..sample(0, 0, sent, 1 << 30)
            };
            window = p.on_sample(s, now);
            now += PATH_SAMPLE_INTERVAL;
            sent += 25_000;
        }
        // 2 Mbit/s × (300 + 50) ms.
        assert!((window as f64 - 87_500.0).abs() < 1_000.0, "{window}");
    }

    #[test]
    fn window_grows_while_the_path_has_no_queue_and_settles_when_it_has() {
        // A 10 Mbit/s path with a 40 ms round trip, simulated: the rate measured in an
        // interval is what the window lets through, window / RTT, capped by the link.
        let (link_bps, min_rtt) = (10e6, Duration::from_millis(40));
        let mut p = PathEstimator::default();
        let mut now = Instant::now();
        p.on_sample(sample(0, 0, 0, 1 << 30), now);
        // Start from the floor, as after a collapse.
        let (mut sent, mut window) = (0u64, MIN_SEND_WINDOW);
        for _ in 0..30 {
            let rate = (window as f64 * 8.0 / min_rtt.as_secs_f64()).min(link_bps);
            now += PATH_SAMPLE_INTERVAL;
            sent += (rate / 8.0 * PATH_SAMPLE_INTERVAL.as_secs_f64()) as u64;
            let s = PathSample {
                rtt: min_rtt,
                min_rtt,
                ..sample(0, 0, sent, 1 << 30)
            };
            window = p.on_sample(s, now);
        }
        // The link's bandwidth-delay product plus 50 ms of queue: 112.5 kB.
        assert!((window as f64 - 112_500.0).abs() < 2_000.0, "{window}");
    }
}
