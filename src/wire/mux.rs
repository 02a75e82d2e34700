//! The WebSocket transport's messages (docs/PROTOCOL.md section 17): a session's three
//! channels (control stream, datagrams, unidirectional streams) carried as the binary
//! messages of one WebSocket. A message is a type byte and a body; stream ids and codes
//! are varints.
//!
//! Check-then-parse, as `frame.rs`: a message is checked whole, then split without
//! copying, so a datagram or stream chunk forwarded on is the very allocation received.

use bytes::{BufMut, Bytes, BytesMut};

use super::varint;

/// Bytes of the control stream.
pub const CONTROL: u8 = 0x00;
/// One datagram.
pub const DATAGRAM: u8 = 0x01;
/// A stream id, then bytes of that unidirectional stream.
pub const STREAM: u8 = 0x02;
/// The stream ended normally.
pub const STREAM_FIN: u8 = 0x03;
/// The sender abandoned the stream (with a code).
pub const STREAM_RESET: u8 = 0x04;
/// The receiver refuses the stream (with a code).
pub const STOP_SENDING: u8 = 0x05;

/// The WebSocket subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "synapse.v1";
/// The path of the upgrade on the relay's TCP port.
pub const PATH: &str = "/ws";
/// The largest message either side accepts.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The most stream bytes a sender puts in one message, so that control and audio can go
/// between the pieces of a large frame.
pub const MAX_STREAM_CHUNK: usize = 64 * 1024;
/// Most streams one side may have open towards the other at once.
pub const MAX_OPEN_STREAMS: usize = 256;
/// Session close codes travel as WebSocket close codes from this base (4000 + code).
pub const CLOSE_CODE_BASE: u16 = 4000;

/// One message of the WebSocket transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxMessage {
    Control(Bytes),
    Datagram(Bytes),
    Stream { id: u64, data: Bytes },
    Fin { id: u64 },
    Reset { id: u64, code: u32 },
    StopSending { id: u64, code: u32 },
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("empty WebSocket message")]
    Empty,
    #[error("unknown WebSocket message type {0:#04x}")]
    UnknownType(u8),
    #[error("truncated {0} message")]
    Truncated(&'static str),
    #[error("trailing bytes after a {0} message")]
    Trailing(&'static str),
    #[error("code {0} out of range")]
    CodeOutOfRange(u64),
}

fn varint_at(body: &[u8], at: usize, what: &'static str) -> Result<(u64, usize), MuxError> {
    varint::decode(&body[at..])
        .map(|(value, len)| (value, at + len))
        .map_err(|_| MuxError::Truncated(what))
}

fn code(value: u64) -> Result<u32, MuxError> {
    u32::try_from(value).map_err(|_| MuxError::CodeOutOfRange(value))
}

impl MuxMessage {
    /// Reads one whole message. Bodies are slices of `message`.
    pub fn decode(message: Bytes) -> Result<Self, MuxError> {
        let (&kind, _) = message.split_first().ok_or(MuxError::Empty)?;
        let ids = |what: &'static str, codes: bool| -> Result<(u64, Option<u32>), MuxError> {
            let (id, at) = varint_at(&message, 1, what)?;
            let (code, at) = if codes {
                let (c, at) = varint_at(&message, at, what)?;
                (Some(code(c)?), at)
            } else {
                (None, at)
            };
            if at != message.len() {
                return Err(MuxError::Trailing(what));
            }
            Ok((id, code))
        };
        Ok(match kind {
            CONTROL => Self::Control(message.slice(1..)),
            DATAGRAM => Self::Datagram(message.slice(1..)),
            STREAM => {
                let (id, at) = varint_at(&message, 1, "STREAM")?;
                Self::Stream {
                    id,
                    data: message.slice(at..),
                }
            }
            STREAM_FIN => Self::Fin {
                id: ids("STREAM_FIN", false)?.0,
            },
            STREAM_RESET => {
                let (id, code) = ids("STREAM_RESET", true)?;
                Self::Reset {
                    id,
                    code: code.unwrap_or_default(),
                }
            }
            STOP_SENDING => {
                let (id, code) = ids("STOP_SENDING", true)?;
                Self::StopSending {
                    id,
                    code: code.unwrap_or_default(),
                }
            }
            other => return Err(MuxError::UnknownType(other)),
        })
    }

    /// The message as one WebSocket message body. The one copy of a body on its way out:
    /// the WebSocket frame is written from this buffer.
    pub fn encode(&self) -> Bytes {
        let mut out;
        match self {
            Self::Control(body) | Self::Datagram(body) => {
                out = BytesMut::with_capacity(1 + body.len());
                out.put_u8(if matches!(self, Self::Control(_)) {
                    CONTROL
                } else {
                    DATAGRAM
                });
                out.put_slice(body);
            }
            Self::Stream { id, data } => {
                out = BytesMut::with_capacity(1 + varint::encoded_len(*id) + data.len());
                out.put_u8(STREAM);
                varint::encode(*id, &mut out);
                out.put_slice(data);
            }
            Self::Fin { id } => {
                out = BytesMut::with_capacity(9);
                out.put_u8(STREAM_FIN);
                varint::encode(*id, &mut out);
            }
            Self::Reset { id, code } | Self::StopSending { id, code } => {
                out = BytesMut::with_capacity(17);
                out.put_u8(if matches!(self, Self::Reset { .. }) {
                    STREAM_RESET
                } else {
                    STOP_SENDING
                });
                varint::encode(*id, &mut out);
                varint::encode(u64::from(*code), &mut out);
            }
        }
        out.freeze()
    }

    /// The body bytes a message carries (what counts against a sender's budget).
    pub fn data_len(&self) -> usize {
        match self {
            Self::Control(b) | Self::Datagram(b) | Self::Stream { data: b, .. } => b.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            MuxMessage::Control(Bytes::from_static(b"\0\0\0\x02{}")),
            MuxMessage::Datagram(Bytes::from_static(&[1, 2, 3])),
            MuxMessage::Stream {
                id: 0,
                data: Bytes::new(),
            },
            MuxMessage::Stream {
                id: 70_000,
                data: Bytes::from_static(b"frame"),
            },
            MuxMessage::Fin { id: 63 },
            MuxMessage::Reset { id: 64, code: 7 },
            MuxMessage::StopSending {
                id: 1 << 40,
                code: u32::MAX,
            },
        ];
        for m in messages {
            assert_eq!(MuxMessage::decode(m.encode()), Ok(m));
        }
    }

    #[test]
    fn bodies_are_slices_of_the_message() {
        let message = MuxMessage::Stream {
            id: 5,
            data: Bytes::from_static(b"payload"),
        }
        .encode();
        let start = message.as_ptr() as usize;
        let MuxMessage::Stream { data, .. } = MuxMessage::decode(message).unwrap() else {
            panic!("not a stream message");
        };
        assert_eq!(data.as_ptr() as usize, start + 2);
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert_eq!(MuxMessage::decode(Bytes::new()), Err(MuxError::Empty));
        assert_eq!(
            MuxMessage::decode(Bytes::from_static(&[0x09])),
            Err(MuxError::UnknownType(9))
        );
        assert_eq!(
            MuxMessage::decode(Bytes::from_static(&[STREAM])),
            Err(MuxError::Truncated("STREAM"))
        );
        assert_eq!(
            MuxMessage::decode(Bytes::from_static(&[STREAM_RESET, 1])),
            Err(MuxError::Truncated("STREAM_RESET"))
        );
        assert_eq!(
            MuxMessage::decode(Bytes::from_static(&[STREAM_FIN, 1, 0])),
            Err(MuxError::Trailing("STREAM_FIN"))
        );
        // A code wider than 32 bits.
        let mut wide = BytesMut::new();
        wide.put_u8(STOP_SENDING);
        varint::encode(1, &mut wide);
        varint::encode(1 << 33, &mut wide);
        assert_eq!(
            MuxMessage::decode(wide.freeze()),
            Err(MuxError::CodeOutOfRange(1 << 33))
        );
    }
}
