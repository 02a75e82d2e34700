//! Everything that turns untrusted bytes into typed values and back: the control messages
//! and the media frame formats. No IO here; this is what `fuzz/` targets.

pub mod control;
pub mod frame;
pub mod mux;
pub mod varint;

pub use control::*;
pub use frame::{AudioLevel, Datagram, FrameError, FrameHeader, StreamFrame, StreamHeader};

/// Application error codes used when the relay closes a session or a stream.
pub mod close_code {
    /// The session ended normally (left, or the relay is done with it).
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (e.g. an oversized control message).
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The peer did not read its control stream.
    pub const SLOW_CONTROL: u32 = 2;
    /// The peer did not join in time.
    pub const JOIN_TIMEOUT: u32 = 3;
    /// A media stream was refused (bad frame, unknown producer).
    pub const STREAM_REFUSED: u32 = 4;
    /// The relay gave up on a consumer's stream that stopped moving.
    pub const CONSUMER_STALLED: u32 = 5;
    /// An operator removed the peer (admin API).
    pub const KICKED: u32 = 6;
    /// The relay abandoned a group stream whose video fell behind the latency bound; the
    /// consumer's next stream starts at a keyframe.
    pub const CONSUMER_LATE: u32 = 7;
}
