//! Everything that turns untrusted bytes into typed values and back: the control messages
//! and the media frame formats. No IO here; this is what `fuzz/` targets.

pub mod control;
pub mod frame;
pub mod varint;

pub use control::*;
pub use frame::{Datagram, FrameError, FrameHeader, StreamFrame, StreamHeader};
