//! Tunables of the core.

use std::time::Duration;

use super::queue::QueueLimits;

/// Tunables of the core. The defaults suit a browser client (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest audio datagram accepted, header included. Datagrams are forwarded as they
    /// are, so this must fit every consumer's path (Chromium allows 1211 bytes).
    pub max_datagram_size: usize,
    /// Largest video frame payload accepted.
    pub max_frame_size: usize,
    pub video_queue: QueueLimits,
    pub audio_queue: QueueLimits,
    /// At most one keyframe request per producer per interval.
    pub keyframe_request_interval: Duration,
    /// Control messages waiting for one peer before it is disconnected as unresponsive.
    pub max_outbox: usize,
    /// At most one error message per peer per interval for bad media frames.
    pub frame_error_interval: Duration,
    /// Video older than this (time in the relay) is skipped: the consumer restarts at a
    /// keyframe rather than fall further behind. See `queue.rs` and docs/BENCHMARKS.md for
    /// how the default was chosen.
    pub video_latency_bound: Duration,
    /// The same for audio, tighter: late audio is worse than a gap.
    pub audio_latency_bound: Duration,
    /// How often a peer is sent the relay's view of its path (`transport_stats`).
    pub transport_stats_interval: Duration,
    pub limits: Limits,
    /// Keep a log of room events (joins, leaves, producers) for webhooks to drain
    /// (`Room::drain_events`); off when nobody drains it.
    pub room_events: bool,
    /// How long a peer that asked for `resume` keeps its place after its session drops
    /// (zero: no resumption, the peer leaves at once).
    pub reconnect_grace: Duration,
}

/// Limits that keep one room, peer or producer from taking more than its share.
/// Zero means unlimited.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_peers_per_room: usize,
    pub max_rooms: usize,
    pub max_producers_per_peer: usize,
    /// Control requests per second a peer may send on average, with a burst of twice that.
    pub max_requests_per_second: u32,
    /// Media bits per second one producer may send on average (bursts of a second's worth,
    /// or one largest frame, pass).
    pub max_producer_bitrate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peers_per_room: 1000,
            max_rooms: 10_000,
            max_producers_per_peer: 16,
            max_requests_per_second: 50,
            max_producer_bitrate: 20_000_000,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: 1200,
            max_frame_size: 2 * 1024 * 1024,
            // About one second of video at 30 frames/s.
            video_queue: QueueLimits {
                max_frames: 30,
                max_bytes: 8 * 1024 * 1024,
            },
            // Half a second of 20 ms audio.
            audio_queue: QueueLimits {
                max_frames: 25,
                max_bytes: 64 * 1024,
            },
            keyframe_request_interval: Duration::from_millis(300),
            max_outbox: 4096,
            frame_error_interval: Duration::from_secs(1),
            video_latency_bound: Duration::from_millis(400),
            audio_latency_bound: Duration::from_millis(200),
            transport_stats_interval: Duration::from_secs(1),
            room_events: false,
            // LiveKit keeps a dropped participant for 20 s; a client notices a dead path in
            // about 5 s and backs off up to a few seconds between attempts.
            reconnect_grace: Duration::from_secs(20),
            limits: Limits::default(),
        }
    }
}
