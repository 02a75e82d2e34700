//! The sans-IO heart of the relay: rooms, peers, producers, consumers and every forwarding
//! decision (who gets which frame, when to drop, when to ask for a keyframe). No sockets,
//! no tasks, no clock: time comes in as arguments, outputs are pulled. `server` drives it.

mod order;
mod path;
mod queue;
mod rate;
mod relay;
mod simulcast;

pub use order::{GroupKey, GroupOrder};
pub use path::{
    MIN_SEND_WINDOW, PATH_SAMPLE_INTERVAL, PathEstimate, PathEstimator, PathSample, send_window,
};
pub use queue::{ConsumerQueue, FrameData, PushOutcome, QueueLimits, QueuedFrame};
pub use rate::TokenBucket;
pub use relay::{
    ConsumerStats, LatencyHistogram, Limits, PeerOutput, PeerSnapshot, Relay, RelayConfig,
    RelayCounts, RelayStats, RoomSnapshot, TransportSnapshot,
};
pub use simulcast::{
    ACTIVE_HOLD, DYNACAST_DELAY, LayerSelection, LinkBudget, Preference, UP_HOLD, allocate,
};

#[cfg(test)]
mod tests;
