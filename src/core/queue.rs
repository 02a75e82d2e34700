//! The per-consumer bounded queue and its slow-consumer policy.
//!
//! The consumer's sender (its peer's media sender) pops from this queue and writes to the
//! network; when the network is slower than the producer, the queue fills and this policy
//! decides what to lose:
//! - video: everything queued is dropped and so is every frame after it up to the next
//!   keyframe (a delta frame without its references is useless), and a keyframe is wanted;
//! - audio: the oldest frame is dropped (late audio is worse than missing audio).
//!
//! The producer never waits on a consumer: `push` never blocks and never fails.
//!
//! A full queue is one bound; age is the other. A slow link fills a queue slowly, and a
//! frame that waits long enough is worse than none: the call falls behind. So before a
//! consumer's next frame is taken, `skip_late` drops what is older than that consumer's
//! latency bound:
//! - video: if the oldest queued frame is late, the frames before the newest queued
//!   keyframe that is not late go, and the consumer restarts at that keyframe; without one,
//!   everything queued goes and the consumer waits for the next keyframe (which the caller
//!   asks the producer for);
//! - audio: the late frames at the head go; the rest play.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::wire::MediaKind;

/// Bytes to send for one frame: a whole audio datagram, or a video frame's head and payload
/// for a stream. Cloning shares the buffers; the relay never copies a payload per consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameData {
    Datagram(Bytes),
    Stream { head: Bytes, payload: Bytes },
}

impl FrameData {
    pub fn len(&self) -> usize {
        match self {
            FrameData::Datagram(d) => d.len(),
            FrameData::Stream { head, payload } => head.len() + payload.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame waiting in a consumer's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedFrame {
    pub keyframe: bool,
    pub data: FrameData,
    /// When the relay received it, for the forwarding-latency histogram.
    pub arrived: std::time::Instant,
}

/// What `push` did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued; nothing lost.
    Queued,
    /// Queued, but older frames were dropped to make room (`dropped` of them).
    QueuedAfterDrop { dropped: u64 },
    /// Not queued (`dropped` frames lost in all, this one included): the consumer waits for
    /// a keyframe, and the producer should be asked for one.
    NeedsKeyframe { dropped: u64 },
}

/// Limits of one consumer queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
pub struct ConsumerQueue {
    kind: MediaKind,
    limits: QueueLimits,
    frames: VecDeque<QueuedFrame>,
    bytes: usize,
    waiting_for_keyframe: bool,
    /// Highest number of frames ever queued at once.
    pub high_water: usize,
    /// Frames lost to this policy so far.
    pub dropped: u64,
}

impl ConsumerQueue {
    /// A new queue. Video starts waiting for a keyframe: a consumer that joins mid-stream
    /// cannot decode the deltas that come before the next one.
    pub fn new(kind: MediaKind, limits: QueueLimits) -> Self {
        Self {
            kind,
            limits,
            frames: VecDeque::new(),
            bytes: 0,
            waiting_for_keyframe: kind == MediaKind::Video,
            high_water: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Forget what is queued and, for video, wait for the next keyframe (after a pause, or
    /// when the stream to the consumer broke). Returns the frames dropped.
    pub fn resync(&mut self) -> u64 {
        let dropped = self.frames.len() as u64;
        self.dropped += dropped;
        self.frames.clear();
        self.bytes = 0;
        self.waiting_for_keyframe = self.kind == MediaKind::Video;
        dropped
    }

    /// Keep what is queued but take nothing more until a keyframe (video): a frame in
    /// between was lost.
    pub fn wait_for_keyframe(&mut self) {
        self.waiting_for_keyframe = self.kind == MediaKind::Video;
    }

    fn is_full_for(&self, size: usize) -> bool {
        self.frames.len() >= self.limits.max_frames
            || (!self.frames.is_empty() && self.bytes + size > self.limits.max_bytes)
    }

    fn enqueue(&mut self, frame: QueuedFrame) {
        self.bytes += frame.data.len();
        self.frames.push_back(frame);
        self.high_water = self.high_water.max(self.frames.len());
    }

    pub fn push(&mut self, frame: QueuedFrame) -> PushOutcome {
        let size = frame.data.len();
        match self.kind {
            MediaKind::Audio => {
                let mut dropped = 0;
                while self.is_full_for(size) {
                    let old = self.frames.pop_front().expect("full queue is not empty");
                    self.bytes -= old.data.len();
                    dropped += 1;
                }
                self.dropped += dropped;
                self.enqueue(frame);
                if dropped == 0 {
                    PushOutcome::Queued
                } else {
                    PushOutcome::QueuedAfterDrop { dropped }
                }
            }
            MediaKind::Video => {
                if self.waiting_for_keyframe && !frame.keyframe {
                    self.dropped += 1;
                    return PushOutcome::NeedsKeyframe { dropped: 1 };
                }
                self.waiting_for_keyframe = false;
                if !self.is_full_for(size) {
                    self.enqueue(frame);
                    return PushOutcome::Queued;
                }
                // Overflow: the queued group is stale. Drop it; a keyframe restarts at once,
                // anything else waits for the next keyframe.
                let dropped = self.resync();
                if frame.keyframe {
                    self.waiting_for_keyframe = false;
                    self.enqueue(frame);
                    PushOutcome::QueuedAfterDrop { dropped }
                } else {
                    self.dropped += 1;
                    PushOutcome::NeedsKeyframe {
                        dropped: dropped + 1,
                    }
                }
            }
        }
    }

    /// When the oldest queued frame arrived.
    pub fn oldest_arrival(&self) -> Option<std::time::Instant> {
        self.frames.front().map(|f| f.arrived)
    }

    /// Drops frames older than `bound` at `now` (see the module's policy); returns how many.
    /// Afterwards a video queue either starts at a keyframe or waits for one.
    pub fn skip_late(&mut self, now: std::time::Instant, bound: std::time::Duration) -> u64 {
        let late = |f: &QueuedFrame| now.saturating_duration_since(f.arrived) > bound;
        if !self.frames.front().is_some_and(late) {
            return 0;
        }
        let keep_from = match self.kind {
            MediaKind::Audio => self.frames.iter().position(|f| !late(f)),
            MediaKind::Video => self.frames.iter().rposition(|f| f.keyframe && !late(f)),
        };
        let Some(keep_from) = keep_from else {
            return self.resync();
        };
        for frame in self.frames.drain(..keep_from) {
            self.bytes -= frame.data.len();
        }
        self.dropped += keep_from as u64;
        keep_from as u64
    }

    pub fn pop(&mut self) -> Option<QueuedFrame> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.data.len();
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_frames: 4,
        max_bytes: 1000,
    };

    fn frame(keyframe: bool, tag: u8) -> QueuedFrame {
        QueuedFrame {
            keyframe,
            arrived: std::time::Instant::now(),
            data: FrameData::Stream {
                head: Bytes::new(),
                payload: Bytes::from(vec![tag; 10]),
            },
        }
    }

    fn tag(f: &QueuedFrame) -> u8 {
        match &f.data {
            FrameData::Stream { payload, .. } => payload[0],
            FrameData::Datagram(d) => d[0],
        }
    }

    #[test]
    fn video_waits_for_first_keyframe() {
        let mut q = ConsumerQueue::new(MediaKind::Video, LIMITS);
        assert_eq!(
            q.push(frame(false, 1)),
            PushOutcome::NeedsKeyframe { dropped: 1 }
        );
        assert_eq!(q.push(frame(true, 2)), PushOutcome::Queued);
        assert_eq!(q.push(frame(false, 3)), PushOutcome::Queued);
        assert_eq!(tag(&q.pop().unwrap()), 2);
        assert_eq!(tag(&q.pop().unwrap()), 3);
        assert!(q.pop().is_none());
    }

    #[test]
    fn video_overflow_drops_to_next_keyframe() {
        let mut q = ConsumerQueue::new(MediaKind::Video, LIMITS);
        q.push(frame(true, 0));
        for t in 1..4 {
            assert_eq!(q.push(frame(false, t)), PushOutcome::Queued);
        }
        // Full: the next delta flushes the queue and waits.
        assert_eq!(
            q.push(frame(false, 4)),
            PushOutcome::NeedsKeyframe { dropped: 5 }
        );
        assert!(q.is_empty());
        assert_eq!(
            q.push(frame(false, 5)),
            PushOutcome::NeedsKeyframe { dropped: 1 }
        );
        assert_eq!(q.push(frame(true, 6)), PushOutcome::Queued);
        assert_eq!(tag(&q.pop().unwrap()), 6);
        assert_eq!(q.dropped, 6);
        assert_eq!(q.high_water, 4);
    }

    #[test]
    fn video_overflow_on_a_keyframe_restarts_there() {
        let mut q = ConsumerQueue::new(MediaKind::Video, LIMITS);
        q.push(frame(true, 0));
        for t in 1..4 {
            q.push(frame(false, t));
        }
        assert_eq!(
            q.push(frame(true, 9)),
            PushOutcome::QueuedAfterDrop { dropped: 4 }
        );
        assert_eq!(q.len(), 1);
        assert_eq!(tag(&q.pop().unwrap()), 9);
    }

    #[test]
    fn audio_drops_oldest() {
        let mut q = ConsumerQueue::new(MediaKind::Audio, LIMITS);
        for t in 0..4 {
            assert_eq!(q.push(frame(false, t)), PushOutcome::Queued);
        }
        assert_eq!(
            q.push(frame(false, 4)),
            PushOutcome::QueuedAfterDrop { dropped: 1 }
        );
        let tags: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|f| tag(&f)).collect();
        assert_eq!(tags, vec![1, 2, 3, 4]);
    }

    #[test]
    fn byte_limit_counts_too() {
        let mut q = ConsumerQueue::new(
            MediaKind::Audio,
            QueueLimits {
                max_frames: 100,
                max_bytes: 25,
            },
        );
        q.push(frame(false, 0));
        q.push(frame(false, 1));
        assert_eq!(
            q.push(frame(false, 2)),
            PushOutcome::QueuedAfterDrop { dropped: 1 }
        );
        // A single frame larger than the byte limit still goes through on an empty queue.
        let mut q = ConsumerQueue::new(MediaKind::Audio, LIMITS);
        let big = QueuedFrame {
            keyframe: false,
            arrived: std::time::Instant::now(),
            data: FrameData::Datagram(Bytes::from(vec![0; 5000])),
        };
        assert_eq!(q.push(big), PushOutcome::Queued);
    }

    fn frame_at(keyframe: bool, tag: u8, arrived: std::time::Instant) -> QueuedFrame {
        QueuedFrame {
            arrived,
            ..frame(keyframe, tag)
        }
    }

    #[test]
    fn late_video_restarts_at_a_fresh_keyframe_or_waits() {
        use std::time::Duration;
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let bound = ms(300);
        let mut q = ConsumerQueue::new(MediaKind::Video, LIMITS);
        q.push(frame_at(true, 0, t0));
        q.push(frame_at(false, 1, t0 + ms(33)));
        q.push(frame_at(true, 2, t0 + ms(66)));
        q.push(frame_at(false, 3, t0 + ms(100)));
        // Nothing late yet.
        assert_eq!(q.skip_late(t0 + ms(300), bound), 0);
        assert_eq!(q.len(), 4);
        // The head is late and keyframe 2 is not: restart there.
        assert_eq!(q.skip_late(t0 + ms(320), bound), 2);
        assert_eq!(tag(&q.pop().unwrap()), 2);
        assert!(!q.waiting_for_keyframe());
        // All late, no fresh keyframe: everything goes, and the queue waits for one.
        assert_eq!(q.skip_late(t0 + ms(1000), bound), 1);
        assert!(q.is_empty() && q.waiting_for_keyframe());
        assert_eq!(
            q.push(frame_at(false, 4, t0 + ms(1000))),
            PushOutcome::NeedsKeyframe { dropped: 1 }
        );
        assert_eq!(q.dropped, 4);
    }

    #[test]
    fn late_audio_drops_only_the_late_head() {
        use std::time::Duration;
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let mut q = ConsumerQueue::new(MediaKind::Audio, LIMITS);
        for t in 0..4u8 {
            q.push(frame_at(false, t, t0 + ms(20 * u64::from(t))));
        }
        assert_eq!(q.oldest_arrival(), Some(t0));
        assert_eq!(q.skip_late(t0 + ms(145), ms(100)), 3);
        assert_eq!(tag(&q.pop().unwrap()), 3);
        assert!(q.is_empty());
    }

    #[test]
    fn resync_waits_again() {
        let mut q = ConsumerQueue::new(MediaKind::Video, LIMITS);
        q.push(frame(true, 0));
        q.push(frame(false, 1));
        assert_eq!(q.resync(), 2);
        assert!(q.waiting_for_keyframe());
        assert_eq!(
            q.push(frame(false, 2)),
            PushOutcome::NeedsKeyframe { dropped: 1 }
        );
    }
}
