//! What the core counts, and the views of it that the admin API and metrics show.

use std::time::Duration;

use serde::Serialize;

use super::path::PathEstimate;
use crate::wire::PeerInfo;

/// Counters for metrics, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub dropped_slow_consumer: u64,
    pub dropped_producer_paused: u64,
    /// Video frames that arrived after a later frame of their producer (a late tail of an
    /// earlier group): forwarding them would break decoders that moved on.
    pub dropped_stale: u64,
    /// Frames over their producer's bitrate limit.
    pub dropped_bitrate: u64,
    /// Audio datagrams larger than a consumer's path allows (its QUIC datagram size).
    pub dropped_too_large: u64,
    /// Time frames spend in the relay, from receipt to hand-over to the consumer's transport.
    pub forwarding_latency: LatencyHistogram,
    pub frame_errors: u64,
    pub keyframe_requests: u64,
    /// Simulcast consumers moved from one layer to another (at a keyframe of the new one).
    pub layer_switches: u64,
    /// Dynacast messages telling publishers which layers are wanted.
    pub dynacast_updates: u64,
    /// Path samples that showed congestion (simulcast budgets were cut).
    pub congestion_samples: u64,
    /// Frames skipped because they grew older than their consumer's latency bound.
    pub skipped_late_video: u64,
    pub skipped_late_audio: u64,
    /// Per path sample: the transport's RTT.
    pub path_rtt: LatencyHistogram,
    /// Per path sample: the smoothed loss, in parts per million.
    pub path_loss_ppm: LatencyHistogram,
    /// Per path sample: the age of the oldest frame queued for the peer.
    pub path_queue_delay: LatencyHistogram,
    /// `active_speakers` changes announced.
    pub speaker_changes: u64,
    /// `send_data` messages and lossy data datagrams relayed (each counted once, however
    /// many recipients), and lossy data dropped for recipients that fell behind.
    pub data_messages: u64,
    pub lossy_data_messages: u64,
    pub dropped_lossy_data: u64,
}

impl RelayStats {
    /// Adds another room's counts: the relay's figures are the sum over its rooms.
    pub fn add(&mut self, other: &RelayStats) {
        self.frames_in += other.frames_in;
        self.bytes_in += other.bytes_in;
        self.frames_out += other.frames_out;
        self.bytes_out += other.bytes_out;
        self.dropped_slow_consumer += other.dropped_slow_consumer;
        self.dropped_producer_paused += other.dropped_producer_paused;
        self.dropped_stale += other.dropped_stale;
        self.dropped_bitrate += other.dropped_bitrate;
        self.dropped_too_large += other.dropped_too_large;
        self.forwarding_latency.add(&other.forwarding_latency);
        self.frame_errors += other.frame_errors;
        self.keyframe_requests += other.keyframe_requests;
        self.layer_switches += other.layer_switches;
        self.dynacast_updates += other.dynacast_updates;
        self.congestion_samples += other.congestion_samples;
        self.skipped_late_video += other.skipped_late_video;
        self.skipped_late_audio += other.skipped_late_audio;
        self.path_rtt.add(&other.path_rtt);
        self.path_loss_ppm.add(&other.path_loss_ppm);
        self.path_queue_delay.add(&other.path_queue_delay);
        self.speaker_changes += other.speaker_changes;
        self.data_messages += other.data_messages;
        self.lossy_data_messages += other.lossy_data_messages;
        self.dropped_lossy_data += other.dropped_lossy_data;
    }
}

impl Default for RelayStats {
    fn default() -> Self {
        let ms = |v: &[u64]| v.iter().map(|m| m * 1000).collect::<Vec<_>>();
        Self {
            frames_in: 0,
            bytes_in: 0,
            frames_out: 0,
            bytes_out: 0,
            dropped_slow_consumer: 0,
            dropped_producer_paused: 0,
            dropped_stale: 0,
            speaker_changes: 0,
            data_messages: 0,
            lossy_data_messages: 0,
            dropped_lossy_data: 0,
            layer_switches: 0,
            dynacast_updates: 0,
            congestion_samples: 0,
            dropped_bitrate: 0,
            dropped_too_large: 0,
            forwarding_latency: LatencyHistogram::default(),
            frame_errors: 0,
            keyframe_requests: 0,
            skipped_late_video: 0,
            skipped_late_audio: 0,
            path_rtt: LatencyHistogram::with_bounds(ms(&[
                1, 5, 10, 25, 50, 100, 200, 400, 800, 1600,
            ])),
            // 0.1%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%.
            path_loss_ppm: LatencyHistogram::with_bounds(vec![
                1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
            ]),
            path_queue_delay: LatencyHistogram::with_bounds(ms(&[
                1, 5, 10, 25, 50, 100, 200, 400, 800, 1600,
            ])),
        }
    }
}

/// A fixed-bucket histogram in the shape Prometheus expects (cumulative buckets, sum,
/// count), cheap enough to update on every forwarded frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatencyHistogram {
    /// Upper bounds, microseconds.
    pub bounds_us: Vec<u64>,
    /// Observations at or under each bound (not cumulative; the last slot is +Inf).
    pub counts: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let bounds_us = vec![
            50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
            1_000_000,
        ];
        Self {
            counts: vec![0; bounds_us.len() + 1],
            bounds_us,
            sum_us: 0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    /// Adds another histogram's observations (same bounds: both came from one default).
    pub fn add(&mut self, other: &LatencyHistogram) {
        debug_assert_eq!(self.bounds_us, other.bounds_us);
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }

    /// Buckets with these upper bounds (ascending; +Inf is added).
    pub fn with_bounds(bounds_us: Vec<u64>) -> Self {
        Self {
            counts: vec![0; bounds_us.len() + 1],
            bounds_us,
            sum_us: 0,
            count: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_value(latency.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Records a value in the histogram's own unit (microseconds for times).
    pub fn record_value(&mut self, us: u64) {
        let slot = self.bounds_us.partition_point(|b| *b < us);
        self.counts[slot] += 1;
        self.sum_us += us;
        self.count += 1;
    }
}

/// A room as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomSnapshot {
    pub room: String,
    pub peers: Vec<PeerSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerSnapshot {
    #[serde(flatten)]
    pub peer: PeerInfo,
    pub consumers: usize,
    /// The relay's view of its path to the peer; absent before the first sample.
    pub transport: Option<TransportSnapshot>,
}

/// The relay's path estimate for one peer, with what it did about it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TransportSnapshot {
    #[serde(flatten)]
    pub path: PathEstimate,
    /// Age of the oldest frame queued for the peer, milliseconds.
    pub queue_ms: f64,
    /// Frames skipped for this peer to keep its latency bounded, since it joined.
    pub skipped_frames: u64,
}

/// Sizes of the maps, for health checks and leak tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayCounts {
    pub rooms: usize,
    pub peers: usize,
    pub producers: usize,
    pub consumers: usize,
}

impl RelayCounts {
    pub fn add(&mut self, other: &RelayCounts) {
        self.rooms += other.rooms;
        self.peers += other.peers;
        self.producers += other.producers;
        self.consumers += other.consumers;
    }
}
