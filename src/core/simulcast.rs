//! Simulcast: which layer of a multi-encoding video producer each consumer gets.
//!
//! A simulcast producer sends up to three encodings of the same pictures (layers, lowest
//! first); the encodings of one captured frame share its `seq` and capture time. Every
//! consumer receives one layer at a time, as if the producer had one encoding. The policy:
//!
//! - **Preference.** A consumer states the most it wants: a layer index and/or a size (the
//!   tile it renders into). Its preferred layer is the highest within both; layer 0 when
//!   even that is larger than asked (a consumer never gets nothing for asking small).
//! - **Budget.** Per peer, the relay estimates what the path can carry ([`LinkBudget`]:
//!   the highest rate the path has shown in the last 5 s (`path.rs`: a keyframe's burst
//!   shows the bottleneck), cut to 85% of the measured send rate as soon as the
//!   path shows congestion: a queue in the relay older than 150 ms for 300 ms, frames
//!   skipped for latency, or loss above 10%). Audio is budgeted first, then single-encoding video, and the rest,
//!   [`HEADROOM`] of it, is shared by the peer's simulcast consumers ([`allocate`]): every
//!   one gets layer 0, then each is raised a layer at a time, lowest layers first, while the
//!   layer's measured rate (its declared `max_bitrate` until measured) fits. Screens are
//!   raised before cameras: a shared screen is what a meeting reads.
//! - **Hysteresis.** Down at once; up only when the path has shown no congestion for
//!   [`UP_HOLD`] and the higher layer has been sending for [`ACTIVE_HOLD`] (mediasoup waits
//!   10 s and 2 s; these were measured on the weak-link bench, docs/BENCHMARKS.md).
//! - **Switching** happens only at a keyframe of the target layer: until it comes the
//!   consumer stays on its current layer and the producer is asked for one (rate-limited
//!   per layer). The first frame of the new layer can carry a `seq` the consumer has
//!   already had from the old layer (the layers' frames of one picture arrive in any
//!   order); the consumer's frames are then renumbered from there on (`seq + offset`), so
//!   it always sees `seq` increase, with no gap a switch did not make.
//! - **Dynacast.** A layer that no unpaused consumer wants is paused at the producer
//!   after [`DYNACAST_DELAY`] (so a flapping preference does not flap encoders); a layer
//!   that becomes wanted is resumed at once, with a keyframe request. Layer 0 runs while
//!   any consumer does: it costs little, and a consumer that must come down finds it
//!   sending, with no wait for an encoder to resume.

use std::time::{Duration, Instant};

use crate::wire::{FrameHeader, LayerInfo};

/// No up-switch within this time of the path last showing congestion.
pub const UP_HOLD: Duration = Duration::from_secs(4);
/// A layer must have been sending this long before a consumer is switched up to it.
pub const ACTIVE_HOLD: Duration = Duration::from_secs(1);
/// A layer without a frame for this long is not sending (paused, or its encoder stopped).
pub const LAYER_IDLE: Duration = Duration::from_secs(1);
/// A layer nobody wants is paused at its producer after this long.
pub const DYNACAST_DELAY: Duration = Duration::from_secs(3);
/// Share of the estimated path capacity that media may be allocated.
pub const HEADROOM: f64 = 0.9;
/// A relay queue older than this, in [`STANDING_SAMPLES`] samples in a row, is congestion:
/// a standing queue, not the burst of one keyframe (a 14 kB keyframe alone takes 160 ms at
/// 700 kbit/s, and is gone a sample or two later).
pub const CONGESTED_QUEUE: Duration = Duration::from_millis(150);
pub const STANDING_SAMPLES: u32 = 3;
/// Loss above this is congestion (random loss below it is the link's nature).
pub const CONGESTED_LOSS: f64 = 0.10;
/// On congestion, the budget drops to this share of what was actually sent.
pub const CONGESTION_CUT: f64 = 0.85;

/// Bytes over time, per half-second window, smoothed (newest window weighs 1/2).
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    rate_bps: Option<f64>,
}

const METER_WINDOW: Duration = Duration::from_millis(500);

impl RateMeter {
    pub fn add(&mut self, len: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            let rate = self.bytes as f64 * 8.0 / elapsed.as_secs_f64();
            self.rate_bps = Some(match self.rate_bps {
                Some(old) => old + 0.5 * (rate - old),
                None => rate,
            });
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += len as u64;
    }

    /// The measured rate, or `None` before a whole window has passed.
    pub fn rate_bps(&self) -> Option<f64> {
        self.rate_bps
    }
}

/// What the relay knows of one layer of a producer.
#[derive(Debug, Clone)]
pub struct LayerState {
    pub info: LayerInfo,
    /// Highest `seq` forwarded from this layer (each layer is in order on its own).
    pub last_seq: Option<u64>,
    meter: RateMeter,
    active_since: Option<Instant>,
    last_frame: Option<Instant>,
    pub last_keyframe_request: Option<Instant>,
}

impl LayerState {
    pub fn new(info: LayerInfo) -> Self {
        Self {
            info,
            last_seq: None,
            meter: RateMeter::default(),
            active_since: None,
            last_frame: None,
            last_keyframe_request: None,
        }
    }

    pub fn on_frame(&mut self, len: usize, now: Instant) {
        if !self.is_active(now) {
            self.active_since = Some(now);
        }
        self.last_frame = Some(now);
        self.meter.add(len, now);
    }

    pub fn is_active(&self, now: Instant) -> bool {
        self.last_frame
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }

    /// How long the layer has been sending without a pause (zero when it is not).
    pub fn active_for(&self, now: Instant) -> Duration {
        match self.active_since {
            Some(since) if self.is_active(now) => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        }
    }

    /// What the layer costs: measured, or declared until measured.
    pub fn rate_bps(&self) -> f64 {
        self.meter
            .rate_bps()
            .unwrap_or(self.info.max_bitrate as f64)
    }
}

/// The most a consumer wants. All `None`: the top layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preference {
    pub max_layer: Option<u8>,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

impl Preference {
    /// The highest layer within the preference (layer 0 if none is).
    pub fn layer(&self, layers: &[LayerInfo]) -> u8 {
        let top = layers.len().saturating_sub(1) as u8;
        let by_size = layers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, l)| {
                self.max_width.is_none_or(|w| l.width <= w)
                    && self.max_height.is_none_or(|h| l.height <= h)
            })
            .map_or(0, |(i, _)| i as u8);
        by_size.min(self.max_layer.unwrap_or(top)).min(top)
    }
}

/// The per-peer estimate of what its path carries, with the congestion memory that gives
/// up-switches their hysteresis.
#[derive(Debug, Clone, Default)]
pub struct LinkBudget {
    /// The budget after the last congestion: it holds until [`UP_HOLD`] passes without more.
    cap_bps: Option<f64>,
    last_congested: Option<Instant>,
    capacity_bps: Option<f64>,
    skipped_seen: u64,
    /// Samples in a row with a queue over [`CONGESTED_QUEUE`].
    queued_samples: u32,
}

/// One reading of the path to a peer, as the budget needs it.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSample {
    /// What the path has shown it carries (`PathEstimate::peak_bps`), if anything yet.
    pub capacity_bps: Option<f64>,
    /// What the relay actually sent, smoothed.
    pub send_bps: f64,
    pub loss: f64,
    /// Age of the oldest frame waiting in the relay for this peer.
    pub queue: Duration,
    /// Frames skipped for this peer's latency bound, cumulative.
    pub skipped_total: u64,
}

impl LinkBudget {
    /// Takes a sample; returns whether it showed congestion.
    pub fn on_sample(&mut self, s: BudgetSample, now: Instant) -> bool {
        let skipped = s.skipped_total > self.skipped_seen;
        self.skipped_seen = s.skipped_total;
        self.queued_samples = if s.queue > CONGESTED_QUEUE {
            self.queued_samples + 1
        } else {
            0
        };
        let standing = self.queued_samples >= STANDING_SAMPLES;
        let congested = skipped || standing || s.loss > CONGESTED_LOSS;
        if s.capacity_bps.is_some() {
            self.capacity_bps = s.capacity_bps;
        }
        if congested {
            let cut = s.send_bps * CONGESTION_CUT;
            self.cap_bps = Some(self.cap_bps.map_or(cut, |c| c.min(cut)));
            self.last_congested = Some(now);
        } else if !self.holding(now) {
            self.cap_bps = None;
        }
        congested
    }

    fn holding(&self, now: Instant) -> bool {
        self.last_congested
            .is_some_and(|t| now.saturating_duration_since(t) < UP_HOLD)
    }

    /// Whether consumers of this peer may switch up now.
    pub fn may_go_up(&self, now: Instant) -> bool {
        !self.holding(now)
    }

    /// What media to this peer may use, bits per second; `None`: no limit known. A path
    /// that has never been congested is not limited by its peak either: until it has
    /// carried a burst, its peak says nothing (a new subscriber starts on its preferred
    /// layer and comes down if it must).
    pub fn available_bps(&self) -> Option<f64> {
        self.last_congested?;
        match (self.capacity_bps, self.cap_bps) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        }
    }
}

/// One simulcast consumer's claim on its peer's budget.
#[derive(Debug, Clone)]
pub struct Demand {
    /// The highest layer the consumer's preference allows.
    pub preferred: u8,
    /// The layer it receives now, if any.
    pub current: Option<u8>,
    /// Cost of each layer, bits per second, lowest first.
    pub rates: Vec<f64>,
    /// Higher goes first once everyone has layer 0 (a screen: 1; a camera: 0).
    pub priority: u8,
}

/// Shares `budget_bps` among simulcast consumers (see the module's policy): layer 0 for
/// everyone, then one layer up at a time, lowest layers first, while it fits. Without
/// `may_go_up`, nobody is given more than its current layer. `None`: no budget known,
/// everyone gets its preference.
pub fn allocate(budget_bps: Option<f64>, demands: &[Demand], may_go_up: bool) -> Vec<u8> {
    let ceiling = |d: &Demand| match (may_go_up, d.current) {
        (false, Some(c)) => d.preferred.min(c),
        _ => d.preferred,
    };
    let Some(budget) = budget_bps else {
        return demands.iter().map(ceiling).collect();
    };
    let mut levels = vec![0u8; demands.len()];
    let mut spent: f64 = demands
        .iter()
        .map(|d| d.rates.first().copied().unwrap_or(0.0))
        .sum();
    let top = demands.iter().map(ceiling).max().unwrap_or(0);
    let mut priorities: Vec<u8> = demands.iter().map(|d| d.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    for priority in priorities {
        for level in 1..=top {
            for (i, d) in demands.iter().enumerate() {
                if d.priority != priority || ceiling(d) < level || levels[i] != level - 1 {
                    continue;
                }
                let l = usize::from(level);
                let extra = d.rates[l] - d.rates[l - 1];
                if spent + extra <= budget {
                    spent += extra;
                    levels[i] = level;
                }
            }
        }
    }
    levels
}

/// The layer to switch to for a consumer whose budget and preference allow `desired`: the
/// highest sending layer up to it (a higher one than `current` only once it has sent for
/// [`ACTIVE_HOLD`]); if none up to it sends, the lowest that does; if none sends, `desired`.
pub fn choose_target(desired: u8, current: Option<u8>, layers: &[LayerState], now: Instant) -> u8 {
    let usable = |l: u8| {
        let layer = &layers[usize::from(l)];
        layer.is_active(now)
            && (current.is_none_or(|c| l <= c) || layer.active_for(now) >= ACTIVE_HOLD)
    };
    if let Some(l) = (0..=desired).rev().find(|l| usable(*l)) {
        return l;
    }
    (0..layers.len() as u8)
        .find(|l| layers[usize::from(*l)].is_active(now))
        .unwrap_or(desired)
}

/// One consumer's place in a simulcast producer's layers.
#[derive(Debug, Clone, Default)]
pub struct LayerSelection {
    pub preference: Preference,
    /// What preference and budget allow (drives dynacast).
    pub desired: u8,
    /// The layer to be on (a sending one); switched to at its next keyframe.
    pub target: u8,
    /// The layer being forwarded; `None` until the first keyframe (and after a restart).
    pub current: Option<u8>,
    /// Added to `seq` of every frame forwarded to this consumer (see the module's policy).
    seq_offset: u64,
    last_out: Option<u64>,
    /// The layer of the last frame forwarded.
    last_layer: Option<u8>,
    pub switches: u64,
}

/// What to do with one frame of a simulcast producer for one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerDecision {
    /// Not this consumer's layer.
    Ignore,
    /// Forward it with this `seq`; `switched` when it is the consumer's first frame, or on
    /// another layer than the last one forwarded (it is told its layer).
    Forward { seq: u64, switched: bool },
    /// The consumer waits for a keyframe of its target layer: ask for one.
    NeedKeyframe,
}

impl LayerSelection {
    /// A new consumer whose preference and budget allow `desired`, starting on `target`.
    pub fn new(desired: u8, target: u8) -> Self {
        Self {
            desired,
            target,
            ..Self::default()
        }
    }

    /// Decides for a frame of `layer`.
    ///
    /// A consumer that restarts (after frames were dropped for it) takes the first keyframe
    /// of its target layer or of any layer below it, whichever comes first: the picture
    /// comes back sooner, and the switch up to the target follows at its keyframe. A new
    /// consumer waits for its target.
    pub fn on_frame(&mut self, layer: u8, header: &FrameHeader) -> LayerDecision {
        let switching = self.current != Some(self.target);
        let restarting = self.current.is_none() && self.last_out.is_some();
        let starts_here = layer == self.target || (restarting && layer < self.target);
        if switching && starts_here {
            if !header.keyframe {
                return if layer == self.target {
                    LayerDecision::NeedKeyframe
                } else {
                    LayerDecision::Ignore
                };
            }
            let mut seq = header.seq + self.seq_offset;
            if let Some(last) = self.last_out
                && seq <= last
            {
                self.seq_offset = last + 1 - header.seq;
                seq = last + 1;
            }
            let changed = self.last_layer != Some(layer);
            if changed && self.last_layer.is_some() {
                self.switches += 1;
            }
            self.current = Some(layer);
            self.last_layer = Some(layer);
            self.last_out = Some(seq);
            return LayerDecision::Forward {
                seq,
                switched: changed,
            };
        }
        if self.current != Some(layer) {
            return LayerDecision::Ignore;
        }
        let seq = header.seq + self.seq_offset;
        if self.last_out.is_some_and(|last| seq <= last) {
            return LayerDecision::Ignore;
        }
        self.last_out = Some(seq);
        LayerDecision::Forward {
            seq,
            switched: false,
        }
    }

    /// The consumer restarts (its queue was dropped): it waits for a keyframe of its
    /// target, or of a layer below it (see [`LayerSelection::on_frame`]).
    pub fn restart(&mut self) {
        self.current = None;
    }

    /// Whether the consumer restarts after having received frames (then a keyframe of a
    /// lower layer also brings its picture back).
    pub fn is_restarting(&self) -> bool {
        self.current.is_none() && self.last_out.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<LayerInfo> {
        vec![
            LayerInfo {
                width: 320,
                height: 180,
                max_bitrate: 150_000,
            },
            LayerInfo {
                width: 640,
                height: 360,
                max_bitrate: 450_000,
            },
            LayerInfo {
                width: 1280,
                height: 720,
                max_bitrate: 1_200_000,
            },
        ]
    }

    fn header(seq: u64, keyframe: bool) -> FrameHeader {
        FrameHeader {
            seq,
            capture_us: seq * 33_333,
            keyframe,
            audio_level: None,
        }
    }

    #[test]
    fn preference_picks_the_highest_layer_within_size_and_index() {
        let l = ladder();
        assert_eq!(Preference::default().layer(&l), 2);
        let tile = |w, h| Preference {
            max_width: Some(w),
            max_height: Some(h),
            ..Preference::default()
        };
        assert_eq!(tile(640, 360).layer(&l), 1);
        assert_eq!(tile(639, 2000).layer(&l), 0);
        assert_eq!(tile(100, 100).layer(&l), 0, "never less than layer 0");
        assert_eq!(tile(4000, 4000).layer(&l), 2);
        let capped = Preference {
            max_layer: Some(1),
            ..tile(4000, 4000)
        };
        assert_eq!(capped.layer(&l), 1);
        let beyond = Preference {
            max_layer: Some(9),
            ..Preference::default()
        };
        assert_eq!(beyond.layer(&l), 2);
    }

    #[test]
    fn allocation_gives_everyone_the_base_then_raises_while_it_fits() {
        let rates = vec![150e3, 450e3, 1200e3];
        let d = |preferred, current| Demand {
            preferred,
            current,
            rates: rates.clone(),
            priority: 0,
        };
        // No estimate: preferences.
        assert_eq!(allocate(None, &[d(2, None), d(1, None)], true), vec![2, 1]);
        // 600k: one consumer fits layer 1 (450k), not 2.
        assert_eq!(allocate(Some(600e3), &[d(2, Some(2))], true), vec![1]);
        // Two consumers, 1 Mbit/s: both get layer 1 before either gets 2.
        assert_eq!(
            allocate(Some(1000e3), &[d(2, None), d(2, None)], true),
            vec![1, 1]
        );
        // Too little for even the base: layer 0 anyway.
        assert_eq!(allocate(Some(50e3), &[d(2, Some(2))], true), vec![0]);
        // Room for more, but no up-switch during the hold: at most the current layer.
        assert_eq!(
            allocate(Some(5e6), &[d(2, Some(1)), d(2, None)], false),
            vec![1, 2]
        );
        // A screen climbs before the cameras: 1.9 Mbit/s takes the screen to its top
        // (1.2M) with both cameras on their base (0.3M), where fairness alone would give
        // all three layer 1.
        let screen = Demand {
            priority: 1,
            ..d(2, None)
        };
        assert_eq!(
            allocate(
                Some(1900e3),
                &[d(2, None), screen.clone(), d(2, None)],
                true
            ),
            vec![1, 2, 0]
        );
        assert_eq!(
            allocate(Some(1500e3), &[d(2, None), d(2, None), d(2, None)], true),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn budget_cuts_at_congestion_and_holds_before_going_up() {
        let t0 = Instant::now();
        let mut b = LinkBudget::default();
        let sample = |queue_ms, skipped_total, bw| BudgetSample {
            capacity_bps: Some(bw),
            send_bps: 1_000_000.0,
            loss: 0.0,
            queue: Duration::from_millis(queue_ms),
            skipped_total,
        };
        assert!(!b.on_sample(sample(0, 0, 5e6), t0));
        assert_eq!(b.available_bps(), None, "no limit before any congestion");
        assert!(b.may_go_up(t0));
        // A keyframe's burst is not congestion; a standing queue is: 85% of the send
        // rate, at once.
        assert!(!b.on_sample(sample(300, 0, 5e6), t0 + Duration::from_millis(100)));
        assert!(!b.on_sample(sample(0, 0, 5e6), t0 + Duration::from_millis(200)));
        assert!(!b.on_sample(sample(300, 0, 5e6), t0 + Duration::from_millis(300)));
        assert!(!b.on_sample(sample(300, 0, 5e6), t0 + Duration::from_millis(400)));
        assert!(b.on_sample(sample(300, 0, 5e6), t0 + Duration::from_millis(500)));
        assert!((b.available_bps().unwrap() - 850e3).abs() < 1.0);
        assert!(!b.may_go_up(t0 + Duration::from_secs(1)));
        assert!(!b.may_go_up(t0 + Duration::from_millis(500) + UP_HOLD / 2));
        // Skipped frames are congestion too, even with an empty queue.
        assert!(b.on_sample(sample(0, 3, 5e6), t0 + Duration::from_secs(2)));
        // The cap holds for UP_HOLD after the last congestion, then the path's capacity
        // rules again.
        let later = t0 + Duration::from_secs(2) + UP_HOLD / 2;
        assert!(!b.on_sample(sample(0, 3, 5e6), later));
        assert!((b.available_bps().unwrap() - 850e3).abs() < 1.0);
        let free = t0 + Duration::from_secs(2) + UP_HOLD;
        assert!(!b.on_sample(sample(0, 3, 5e6), free));
        assert!(b.may_go_up(free));
        assert_eq!(b.available_bps(), Some(5e6));
    }

    #[test]
    fn target_is_a_sending_layer_and_up_waits_for_it_to_settle() {
        let t0 = Instant::now();
        let mut layers: Vec<LayerState> = ladder().into_iter().map(LayerState::new).collect();
        // Nothing sends yet: the desired layer, to wait on.
        assert_eq!(choose_target(2, None, &layers, t0), 2);
        layers[0].on_frame(100, t0);
        layers[1].on_frame(100, t0);
        // Layer 2 paused: the highest sending layer below it.
        assert_eq!(choose_target(2, None, &layers, t0), 1);
        // A start takes a fresh layer; an up-switch waits ACTIVE_HOLD.
        layers[2].on_frame(100, t0);
        assert_eq!(choose_target(2, None, &layers, t0), 2);
        assert_eq!(choose_target(2, Some(1), &layers, t0), 1);
        let later = t0 + ACTIVE_HOLD;
        let mut t = t0;
        while t < later {
            t += Duration::from_millis(100);
            for l in &mut layers {
                l.on_frame(100, t);
            }
        }
        assert_eq!(choose_target(2, Some(1), &layers, later), 2);
        // Down is at once, to a sending layer.
        assert_eq!(choose_target(0, Some(2), &layers, later), 0);
        // Nothing sends up to the desired layer: the lowest that does.
        let mut only_top: Vec<LayerState> = ladder().into_iter().map(LayerState::new).collect();
        only_top[2].on_frame(100, t0);
        assert_eq!(choose_target(0, None, &only_top, t0), 2);
    }

    #[test]
    fn switches_happen_at_target_keyframes_and_seq_never_goes_back() {
        let mut s = LayerSelection {
            target: 1,
            ..LayerSelection::default()
        };
        // Waiting for the first keyframe of the target.
        assert_eq!(
            s.on_frame(1, &header(10, false)),
            LayerDecision::NeedKeyframe
        );
        assert_eq!(s.on_frame(0, &header(10, true)), LayerDecision::Ignore);
        assert_eq!(
            s.on_frame(1, &header(11, true)),
            LayerDecision::Forward {
                seq: 11,
                switched: true
            }
        );
        assert_eq!(s.switches, 0, "a start is not a switch");
        assert_eq!(
            s.on_frame(1, &header(12, false)),
            LayerDecision::Forward {
                seq: 12,
                switched: false
            }
        );
        // Down to 0: layer 1 carries on until layer 0's keyframe. Frame 13 of layer 1 goes
        // out before layer 0's keyframe 13 arrives: the keyframe becomes 14.
        s.target = 0;
        assert_eq!(
            s.on_frame(1, &header(13, false)),
            LayerDecision::Forward {
                seq: 13,
                switched: false
            }
        );
        assert_eq!(
            s.on_frame(0, &header(13, false)),
            LayerDecision::NeedKeyframe
        );
        assert_eq!(
            s.on_frame(0, &header(13, true)),
            LayerDecision::Forward {
                seq: 14,
                switched: true
            }
        );
        assert_eq!(s.switches, 1);
        assert_eq!(s.on_frame(1, &header(14, false)), LayerDecision::Ignore);
        assert_eq!(
            s.on_frame(0, &header(14, false)),
            LayerDecision::Forward {
                seq: 15,
                switched: false
            }
        );
        // A restart waits for the target's keyframe again, still counting up.
        s.restart();
        assert_eq!(
            s.on_frame(0, &header(15, false)),
            LayerDecision::NeedKeyframe
        );
        assert_eq!(
            s.on_frame(0, &header(16, true)),
            LayerDecision::Forward {
                seq: 17,
                switched: false
            }
        );
        // Restarting with layer 1 as the target: layer 0's keyframe, if it comes first,
        // brings the picture back; layer 1 follows at its own keyframe.
        s.target = 1;
        s.restart();
        assert_eq!(
            s.on_frame(1, &header(17, false)),
            LayerDecision::NeedKeyframe
        );
        assert_eq!(s.on_frame(0, &header(17, false)), LayerDecision::Ignore);
        assert_eq!(
            s.on_frame(0, &header(18, true)),
            LayerDecision::Forward {
                seq: 19,
                switched: false
            }
        );
        assert_eq!(
            s.on_frame(1, &header(19, true)),
            LayerDecision::Forward {
                seq: 20,
                switched: true
            }
        );
        assert_eq!(s.switches, 2);
    }
}
