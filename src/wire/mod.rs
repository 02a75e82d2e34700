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

    /// The first HTTP/3 error code of the WebTransport application error range
    /// (draft-ietf-webtrans-http3, section 4.3).
    const WEBTRANSPORT_FIRST: u64 = 0x52e4_a40f_a8db;

    /// A stream code as it goes on the wire of a WebTransport session: mapped into the
    /// HTTP/3 range reserved for WebTransport, skipping the reserved `0x1f * N + 0x21`
    /// codes, as browsers map `streamErrorCode` (they report codes outside it as none).
    pub fn to_webtransport(code: u32) -> u64 {
        let code = u64::from(code);
        WEBTRANSPORT_FIRST + code + code / 0x1e
    }

    /// The stream code a WebTransport RESET_STREAM or STOP_SENDING carried: unmapped when
    /// it is in the WebTransport range, as it is (an older peer's raw code) otherwise.
    pub fn from_webtransport(wire: u64) -> Option<u32> {
        let Some(offset) = wire.checked_sub(WEBTRANSPORT_FIRST) else {
            return u32::try_from(wire).ok();
        };
        // Reserved codes (0x1f * N + 0x21 in HTTP/3 terms) carry no application code.
        if (wire - 0x21).is_multiple_of(0x1f) {
            return None;
        }
        u32::try_from(offset - offset / 0x1f).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::close_code::{from_webtransport, to_webtransport};

    #[test]
    fn stream_codes_map_into_the_webtransport_range_and_back() {
        assert_eq!(to_webtransport(0), 0x52e4_a40f_a8db);
        // 0x1e application codes fit between two reserved HTTP/3 codes.
        assert_eq!(to_webtransport(0x1e), 0x52e4_a40f_a8db + 0x1f);
        for code in 0..10_000 {
            let wire = to_webtransport(code);
            assert!(
                !(wire - 0x21).is_multiple_of(0x1f),
                "{code} maps onto a reserved code"
            );
            assert_eq!(from_webtransport(wire), Some(code));
        }
        // An older peer's raw code is taken as it is.
        assert_eq!(from_webtransport(7), Some(7));
    }
}
