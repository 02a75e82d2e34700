//! The sans-IO heart of the relay: rooms, peers, producers, consumers and every forwarding
//! decision (who gets which frame, when to drop, when to ask for a keyframe). No sockets,
//! no tasks, no clock: time comes in as arguments, outputs are pulled. `server` drives it.

mod config;
mod order;
mod path;
mod queue;
mod rate;
mod relay;
mod room;
mod simulcast;
mod speaker;
mod stats;

pub use config::{Limits, RelayConfig};
pub use order::{GroupKey, GroupOrder};
pub use path::{
    MIN_SEND_WINDOW, PATH_SAMPLE_INTERVAL, PathEstimate, PathEstimator, PathSample, send_window,
};
pub use queue::{ConsumerQueue, FrameData, PushOutcome, QueueLimits, QueuedFrame};
pub use rate::TokenBucket;
pub use relay::{Directory, Ids, Relay, RelayTotals, room_snapshots};
#[cfg(feature = "net")]
pub(crate) use room::check_version;
pub use room::{
    ConsumerFrame, ConsumerStats, DATA_BURST_BYTES, DATA_BYTES_PER_SECOND, JoinAs, Joining,
    LOSSY_DATA_PER_SECOND, MAX_LOSSY_QUEUE, MAX_ROOM_EVENTS, MEDIA_BATCH, MediaOutput, PeerOutput,
    Room, RoomEvent, SessionEnd, Track,
};
pub use simulcast::{
    ACTIVE_HOLD, DYNACAST_DELAY, LayerSelection, LinkBudget, Preference, UP_HOLD, allocate,
};
pub use speaker::SpeakerDetector;
pub use stats::{
    LatencyHistogram, PeerSnapshot, RelayCounts, RelayStats, RoomSnapshot, TransportSnapshot,
};

#[cfg(test)]
mod tests;
