//! Who speaks in a room: one detector per room, fed the audio level each frame carries
//! (RFC 6464, computed by the sender from the PCM it encodes), with no clock of its own.
//!
//! The policy, after LiveKit's (a 400 ms window, speaking above about −35 dBov for 40% of
//! it, smoothed) rather than mediasoup's dominant-speaker observer, because it needs only
//! the level byte and explains itself in three numbers:
//!
//! - Time is cut into windows of [`WINDOW`], starting at the first level the room sees.
//!   A frame covers the time since its producer's previous frame by `capture_us`, clamped
//!   to [`MIN_FRAME`]..[`MAX_FRAME`] ([`FIRST_FRAME`] for the first one).
//! - In a window a producer is *active* when its frames at or above [`LOUD_LEVEL`] cover at
//!   least [`ACTIVE_SHARE`] of it. Its window loudness is then the mean amplitude of those
//!   frames, else 0; `smoothed += (window − smoothed) / 2` is the level reported, and a
//!   slower `rank += (window − rank) / 10` (a time constant of about 4 s) orders them.
//! - A producer starts speaking after one active window and stops after
//!   [`QUIET_WINDOWS_TO_STOP`] inactive windows in a row, so pauses between words do not
//!   flap. Removing a producer (paused, closed, its peer gone) stops it at once.
//! - The list is ordered by `rank`, and a speaker overtakes the one ahead of it only when its
//!   rank is [`OVERTAKE_RATIO`] (2 dB) higher: two people taking quick turns, or talking
//!   over each other, keep their places; one who carries on alone goes first once the
//!   other stops (after two quiet windows), or within about three seconds if both go on.
//! - The list is reported when its members or order change, only when a window closes: at
//!   most once per window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::{AudioLevel, PeerId, ProducerId, SpeakerInfo};

/// Length of one detection window.
pub const WINDOW: Duration = Duration::from_millis(400);
/// Level byte at or below which a frame is loud (−35 dBov or louder).
pub const LOUD_LEVEL: u8 = 35;
/// Share of a window loud frames must cover for it to be active.
pub const ACTIVE_SHARE: f64 = 0.4;
/// Inactive windows in a row after which a speaker stops.
pub const QUIET_WINDOWS_TO_STOP: u32 = 2;
/// How much louder (amplitude) a speaker must be to overtake the one ahead: 2 dB.
pub const OVERTAKE_RATIO: f64 = 1.26;
/// Smoothing of the reported level and of the rank: each window moves it this share of the
/// way to the window's loudness.
const LEVEL_SMOOTHING: f64 = 0.5;
const RANK_SMOOTHING: f64 = 0.1;
/// Shortest and longest time one frame is taken to cover, and the first frame's.
pub const MIN_FRAME: Duration = Duration::from_micros(2_500);
pub const MAX_FRAME: Duration = Duration::from_millis(60);
pub const FIRST_FRAME: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Track {
    peer_id: PeerId,
    last_capture_us: Option<u64>,
    /// This window: time covered by loud frames, and their amplitudes.
    loud: Duration,
    loud_sum: f64,
    loud_frames: u32,
    smoothed: f64,
    rank: f64,
    speaking: bool,
    quiet_windows: u32,
}

impl Track {
    fn new(peer_id: PeerId) -> Self {
        Self {
            peer_id,
            last_capture_us: None,
            loud: Duration::ZERO,
            loud_sum: 0.0,
            loud_frames: 0,
            smoothed: 0.0,
            rank: 0.0,
            speaking: false,
            quiet_windows: 0,
        }
    }

    fn close_window(&mut self) {
        let active = self.loud.as_secs_f64() >= WINDOW.as_secs_f64() * ACTIVE_SHARE;
        let loudness = if active {
            self.loud_sum / f64::from(self.loud_frames.max(1))
        } else {
            0.0
        };
        self.smoothed += (loudness - self.smoothed) * LEVEL_SMOOTHING;
        self.rank += (loudness - self.rank) * RANK_SMOOTHING;
        if active {
            self.speaking = true;
            self.quiet_windows = 0;
        } else {
            self.quiet_windows += 1;
            if self.quiet_windows >= QUIET_WINDOWS_TO_STOP {
                self.speaking = false;
            }
        }
        self.loud = Duration::ZERO;
        self.loud_sum = 0.0;
        self.loud_frames = 0;
    }
}

/// One room's speaker detector.
#[derive(Debug, Default)]
pub struct SpeakerDetector {
    tracks: BTreeMap<ProducerId, Track>,
    /// When the current window started; `None` until the first level arrives.
    window_start: Option<Instant>,
    /// The speakers last reported, in order.
    order: Vec<ProducerId>,
    /// A producer was removed since the last report.
    removed: bool,
}

impl SpeakerDetector {
    /// One audio frame's level. Windows that ended before `now` are closed first.
    pub fn on_level(
        &mut self,
        peer_id: PeerId,
        producer_id: ProducerId,
        capture_us: u64,
        level: AudioLevel,
        now: Instant,
    ) -> Option<Vec<SpeakerInfo>> {
        let report = self.poll(now);
        self.window_start.get_or_insert(now);
        let track = self
            .tracks
            .entry(producer_id)
            .or_insert_with(|| Track::new(peer_id));
        let covers = match track.last_capture_us {
            None => FIRST_FRAME,
            Some(last) => Duration::from_micros(capture_us.saturating_sub(last)),
        }
        .clamp(MIN_FRAME, MAX_FRAME);
        track.last_capture_us = Some(track.last_capture_us.unwrap_or(0).max(capture_us));
        if level.level <= LOUD_LEVEL {
            track.loud += covers;
            track.loud_sum += level.amplitude();
            track.loud_frames += 1;
        }
        report
    }

    /// Forgets a producer (paused, closed, or its peer left): it stops speaking at once, and
    /// the next report leaves it out.
    pub fn remove(&mut self, producer_id: ProducerId) {
        if self.tracks.remove(&producer_id).is_some() {
            self.removed |= self.order.contains(&producer_id);
        }
    }

    /// Closes every window that ended by `now`; returns the speaker list if it changed.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<SpeakerInfo>> {
        let start = self.window_start?;
        let elapsed = now.saturating_duration_since(start);
        let windows = (elapsed.as_nanos() / WINDOW.as_nanos()) as u32;
        if windows == 0 {
            return None;
        }
        self.window_start = Some(start + WINDOW * windows);
        // After a long silence every track is quiet: more windows than it takes to stop
        // change nothing.
        for _ in 0..windows.min(QUIET_WINDOWS_TO_STOP + 1) {
            for track in self.tracks.values_mut() {
                track.close_window();
            }
        }
        self.reorder()
    }

    /// The speakers last reported, in order.
    pub fn current(&self) -> Vec<SpeakerInfo> {
        self.order
            .iter()
            .filter_map(|p| {
                self.tracks.get(p).map(|t| SpeakerInfo {
                    peer_id: t.peer_id,
                    producer_id: *p,
                    level: t.smoothed,
                })
            })
            .collect()
    }

    fn reorder(&mut self) -> Option<Vec<SpeakerInfo>> {
        let speaking = |p: &ProducerId| self.tracks.get(p).is_some_and(|t| t.speaking);
        let mut order: Vec<ProducerId> = self.order.iter().copied().filter(speaking).collect();
        let mut newcomers: Vec<ProducerId> = self
            .tracks
            .iter()
            .filter(|(p, t)| t.speaking && !order.contains(p))
            .map(|(p, _)| *p)
            .collect();
        newcomers.sort_by(|a, b| self.tracks[b].rank.total_cmp(&self.tracks[a].rank));
        order.extend(newcomers);
        // Overtaking with hysteresis; each pass moves a louder speaker one place up, and a
        // swap needs a strict 2 dB margin, so this ends.
        loop {
            let mut swapped = false;
            for i in 1..order.len() {
                if self.tracks[&order[i]].rank > self.tracks[&order[i - 1]].rank * OVERTAKE_RATIO {
                    order.swap(i, i - 1);
                    swapped = true;
                }
            }
            if !swapped {
                break;
            }
        }
        let changed = order != self.order || self.removed;
        self.order = order;
        self.removed = false;
        changed.then(|| self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ProducerId = ProducerId(10);
    const B: ProducerId = ProducerId(20);

    fn level(level: u8) -> AudioLevel {
        AudioLevel {
            level,
            voice: false,
        }
    }

    /// Drives a detector with 20 ms frames for `ms` milliseconds; `levels(t)` gives each
    /// producer's level at time `t` (None: it sends nothing, as with DTX). Returns the
    /// reports with their times.
    struct Sim {
        detector: SpeakerDetector,
        start: Instant,
        t_ms: u64,
        reports: Vec<(u64, Vec<ProducerId>)>,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                detector: SpeakerDetector::default(),
                start: Instant::now(),
                t_ms: 0,
                reports: Vec::new(),
            }
        }

        fn run(&mut self, ms: u64, levels: impl Fn(u64) -> Vec<(ProducerId, Option<u8>)>) {
            let end = self.t_ms + ms;
            while self.t_ms < end {
                let now = self.start + Duration::from_millis(self.t_ms);
                for (producer, l) in levels(self.t_ms) {
                    if let Some(l) = l {
                        let peer = PeerId(producer.0 + 1);
                        let report = self.detector.on_level(
                            peer,
                            producer,
                            1_000_000 + self.t_ms * 1000,
                            level(l),
                            now,
                        );
                        self.note(report);
                    }
                }
                let report = self.detector.poll(now);
                self.note(report);
                self.t_ms += 20;
            }
        }

        fn note(&mut self, report: Option<Vec<SpeakerInfo>>) {
            if let Some(list) = report {
                self.reports
                    .push((self.t_ms, list.iter().map(|s| s.producer_id).collect()));
            }
        }

        fn last(&self) -> Vec<ProducerId> {
            self.reports.last().map(|r| r.1.clone()).unwrap_or_default()
        }
    }

    #[test]
    fn a_speaker_starts_within_two_windows_and_stops_after_two_quiet_ones() {
        let mut sim = Sim::new();
        sim.run(2000, |_| vec![(A, Some(20)), (B, Some(90))]);
        assert_eq!(sim.reports.len(), 1, "one report: {:?}", sim.reports);
        assert!(sim.reports[0].0 <= 800, "started late: {:?}", sim.reports);
        assert_eq!(sim.last(), vec![A]);
        // A goes quiet (still sending silence): gone after two quiet windows, not one.
        let quiet_from = sim.t_ms;
        sim.run(2000, |_| vec![(A, Some(127)), (B, Some(90))]);
        assert_eq!(sim.reports.len(), 2);
        let stopped_after = sim.reports[1].0 - quiet_from;
        assert!(
            (400..=1200).contains(&stopped_after),
            "stopped after {stopped_after} ms"
        );
        assert_eq!(sim.last(), Vec::<ProducerId>::new());
    }

    #[test]
    fn discontinuous_transmission_counts_as_silence() {
        let mut sim = Sim::new();
        sim.run(1000, |_| vec![(A, Some(20))]);
        assert_eq!(sim.last(), vec![A]);
        // DTX: nothing at all is sent; only the clock moves.
        sim.run(2000, |_| vec![]);
        assert_eq!(sim.last(), Vec::<ProducerId>::new());
    }

    #[test]
    fn quiet_or_brief_sound_is_not_speech() {
        let mut sim = Sim::new();
        // −40 dBov throughout: too quiet.
        sim.run(2000, |_| vec![(A, Some(40))]);
        // A 100 ms click every second: loud, but less than 40% of any window.
        sim.run(3000, |t| {
            vec![(B, Some(if t % 1000 < 100 { 5 } else { 127 }))]
        });
        assert!(sim.reports.is_empty(), "{:?}", sim.reports);
    }

    #[test]
    fn two_alternating_speakers_do_not_flap() {
        let mut sim = Sim::new();
        // Turns of 300 ms each, equally loud, for 10 s.
        sim.run(10_000, |t| {
            let a_turn = (t / 300) % 2 == 0;
            vec![
                (A, Some(if a_turn { 20 } else { 127 })),
                (B, Some(if a_turn { 127 } else { 20 })),
            ]
        });
        assert!(
            sim.reports.len() <= 3,
            "{} reports in 10 s: {:?}",
            sim.reports.len(),
            sim.reports
        );
        let mut both = sim.last();
        both.sort();
        assert_eq!(both, vec![A, B]);
    }

    #[test]
    fn a_much_louder_speaker_overtakes_a_slightly_louder_one_does_not() {
        let mut sim = Sim::new();
        sim.run(1200, |_| vec![(A, Some(30))]);
        assert_eq!(sim.last(), vec![A]);
        // B joins 1 dB louder: it joins behind A and stays there.
        sim.run(3000, |_| vec![(A, Some(30)), (B, Some(29))]);
        assert_eq!(sim.last(), vec![A, B]);
        // B gets 10 dB louder: it overtakes.
        sim.run(2000, |_| vec![(A, Some(30)), (B, Some(20))]);
        assert_eq!(sim.last(), vec![B, A]);
    }

    #[test]
    fn a_removed_producer_leaves_at_the_next_window() {
        let mut sim = Sim::new();
        sim.run(1000, |_| vec![(A, Some(20)), (B, Some(20))]);
        assert_eq!(sim.last().len(), 2);
        sim.detector.remove(A);
        let removed_at = sim.t_ms;
        sim.run(600, |_| vec![(B, Some(20))]);
        assert_eq!(sim.last(), vec![B]);
        assert!(sim.reports.last().unwrap().0 - removed_at <= 420);
    }

    #[test]
    fn reports_are_at_most_one_per_window() {
        let mut sim = Sim::new();
        // Chaotic levels: a new random-ish pattern every 20 ms.
        sim.run(20_000, |t| {
            let x = (t / 20).wrapping_mul(2_654_435_761) % 97;
            vec![(A, Some((x % 60) as u8)), (B, Some(((x * 7) % 60) as u8))]
        });
        for pair in sim.reports.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 400, "{:?}", sim.reports);
        }
    }
}
