//! Media framing: the audio datagram and the video stream formats of `docs/PROTOCOL.md`.
//!
//! Decoding is check-then-parse over `Bytes`: a stream decoder first checks that a whole
//! frame is buffered (an incomplete frame is normal, not an error), then splits it off the
//! buffer without copying, so the payload the relay forwards is the very allocation it read.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::control::ProducerId;
use super::varint::{self, VarIntError};

/// Flag bit: this frame is a keyframe (starts a decodable group).
pub const FLAG_KEYFRAME: u8 = 0x01;
/// The first varint on every media unidirectional stream: a group of frames of one producer.
pub const STREAM_TYPE_MEDIA_GROUP: u64 = 0x01;
/// A group of frames of one layer of a simulcast producer: the producer id, then the layer.
pub const STREAM_TYPE_LAYER_GROUP: u64 = 0x02;

/// What opens a media stream: whose frames follow, and of which simulcast layer (0 for a
/// `STREAM_TYPE_MEDIA_GROUP` stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub producer_id: ProducerId,
    pub layer: u8,
}

/// Per-frame metadata carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Sender-assigned, increasing by one per frame of a producer.
    pub seq: u64,
    /// Capture time, microseconds since the UNIX epoch (sender's clock).
    pub capture_us: u64,
    /// Whether the frame can be decoded on its own.
    pub keyframe: bool,
}

/// Why bytes from the network were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: u64, max: usize },
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("unknown stream type {0}")]
    UnknownStreamType(u64),
    #[error("layer {0} out of range")]
    LayerOutOfRange(u64),
}

/// An audio datagram, split into its parts. `payload` is a slice of the received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub producer_id: ProducerId,
    pub header: FrameHeader,
    pub payload: Bytes,
}

/// One frame read off a media stream. `head` is its encoded header (including the payload
/// length) and `payload` the frame: both are slices of the receive buffer, and together they
/// are exactly the bytes to write on each consumer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    pub header: FrameHeader,
    pub head: Bytes,
    pub payload: Bytes,
}

fn read_varint(input: &[u8], pos: &mut usize) -> Result<Option<u64>, FrameError> {
    match varint::decode(&input[*pos..]) {
        Ok((value, used)) => {
            *pos += used;
            Ok(Some(value))
        }
        Err(VarIntError::Incomplete) => Ok(None),
    }
}

fn parse_flags(flags: u8) -> Result<bool, FrameError> {
    if flags & !FLAG_KEYFRAME != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    Ok(flags & FLAG_KEYFRAME != 0)
}

/// Parses `seq, capture_us, flags` at `pos`. `Ok(None)` means more bytes are needed.
fn parse_header(input: &[u8], pos: &mut usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(seq) = read_varint(input, pos)? else {
        return Ok(None);
    };
    let Some(capture_us) = read_varint(input, pos)? else {
        return Ok(None);
    };
    let Some(&flags) = input.get(*pos) else {
        return Ok(None);
    };
    *pos += 1;
    Ok(Some(FrameHeader {
        seq,
        capture_us,
        keyframe: parse_flags(flags)?,
    }))
}

fn put_header(header: &FrameHeader, buf: &mut impl BufMut) {
    varint::encode(header.seq, buf);
    varint::encode(header.capture_us, buf);
    buf.put_u8(if header.keyframe { FLAG_KEYFRAME } else { 0 });
}

/// Decodes a whole datagram. A datagram is never "incomplete": a short one is malformed.
pub fn decode_datagram(datagram: Bytes, max_size: usize) -> Result<Datagram, FrameError> {
    if datagram.len() > max_size {
        return Err(FrameError::TooLarge {
            size: datagram.len() as u64,
            max: max_size,
        });
    }
    let mut pos = 0;
    let producer_id = ProducerId(
        read_varint(&datagram, &mut pos)?.ok_or(FrameError::Truncated("datagram header"))?,
    );
    let header =
        parse_header(&datagram, &mut pos)?.ok_or(FrameError::Truncated("datagram header"))?;
    Ok(Datagram {
        producer_id,
        header,
        payload: datagram.slice(pos..),
    })
}

/// Encodes an audio datagram.
pub fn encode_datagram(producer_id: ProducerId, header: &FrameHeader, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(20 + payload.len());
    varint::encode(producer_id.0, &mut buf);
    put_header(header, &mut buf);
    buf.put_slice(payload);
    buf.freeze()
}

/// Bytes of datagram header before the payload, for sizing payloads under a datagram limit.
pub fn datagram_overhead(producer_id: ProducerId, header: &FrameHeader) -> usize {
    varint::encoded_len(producer_id.0)
        + varint::encoded_len(header.seq)
        + varint::encoded_len(header.capture_us)
        + 1
}

/// Decodes the stream header (type, producer id, and for a layer group the layer) from the
/// front of `buf`, consuming it. `Ok(None)`: not all of it has arrived yet.
pub fn decode_stream_header(buf: &mut BytesMut) -> Result<Option<StreamHeader>, FrameError> {
    let mut pos = 0;
    let Some(stream_type) = read_varint(buf, &mut pos)? else {
        return Ok(None);
    };
    if stream_type != STREAM_TYPE_MEDIA_GROUP && stream_type != STREAM_TYPE_LAYER_GROUP {
        return Err(FrameError::UnknownStreamType(stream_type));
    }
    let Some(producer_id) = read_varint(buf, &mut pos)? else {
        return Ok(None);
    };
    let mut layer = 0;
    if stream_type == STREAM_TYPE_LAYER_GROUP {
        let Some(value) = read_varint(buf, &mut pos)? else {
            return Ok(None);
        };
        layer = u8::try_from(value).map_err(|_| FrameError::LayerOutOfRange(value))?;
    }
    buf.advance(pos);
    Ok(Some(StreamHeader {
        producer_id: ProducerId(producer_id),
        layer,
    }))
}

/// Encodes the header that opens a media stream: a plain group for `layer` `None` (what
/// consumers always receive), a layer group of a simulcast producer otherwise.
pub fn encode_stream_header(producer_id: ProducerId, layer: Option<u8>) -> Bytes {
    let mut buf = BytesMut::with_capacity(18);
    match layer {
        None => varint::encode(STREAM_TYPE_MEDIA_GROUP, &mut buf),
        Some(_) => varint::encode(STREAM_TYPE_LAYER_GROUP, &mut buf),
    }
    varint::encode(producer_id.0, &mut buf);
    if let Some(layer) = layer {
        varint::encode(u64::from(layer), &mut buf);
    }
    buf.freeze()
}

/// Decodes one frame from the front of `buf` if a whole one is there, consuming it.
/// The declared size is checked against `max_size` before anything is buffered for it, and
/// buffer space grows with the bytes that actually arrive.
pub fn decode_stream_frame(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<StreamFrame>, FrameError> {
    let mut pos = 0;
    let Some(header) = parse_header(buf, &mut pos)? else {
        return Ok(None);
    };
    let Some(len) = read_varint(buf, &mut pos)? else {
        return Ok(None);
    };
    if len > max_size as u64 {
        return Err(FrameError::TooLarge {
            size: len,
            max: max_size,
        });
    }
    let total = pos + len as usize;
    if buf.len() < total {
        // Room for the rest of this frame, up to 64 KiB at a time: a declared length alone
        // (an attacker's, or a stalled sender's) never commits the reader's memory.
        buf.reserve((total - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let head = frame.split_to(pos);
    Ok(Some(StreamFrame {
        header,
        head,
        payload: frame,
    }))
}

/// Encodes the per-frame header of a stream frame (everything before the payload).
pub fn encode_stream_frame_head(header: &FrameHeader, payload_len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(26);
    put_header(header, &mut buf);
    varint::encode(payload_len as u64, &mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, keyframe: bool) -> FrameHeader {
        FrameHeader {
            seq,
            capture_us: 1_700_000_000_000_000 + seq,
            keyframe,
        }
    }

    #[test]
    fn datagram_round_trip_shares_the_buffer() {
        let wire = encode_datagram(ProducerId(7), &header(3, false), b"opus");
        let ptr = wire.as_ptr();
        let d = decode_datagram(wire.clone(), 1200).unwrap();
        assert_eq!(d.producer_id, ProducerId(7));
        assert_eq!(d.header, header(3, false));
        assert_eq!(&d.payload[..], b"opus");
        // The payload is a view into the datagram, not a copy.
        assert_eq!(d.payload.as_ptr(), unsafe { ptr.add(wire.len() - 4) });
        assert_eq!(
            datagram_overhead(ProducerId(7), &header(3, false)),
            wire.len() - 4,
            "overhead matches encoding"
        );
    }

    #[test]
    fn datagram_rejects_truncation_size_and_flags() {
        let wire = encode_datagram(ProducerId(300), &header(70_000, true), b"x");
        for cut in 0..wire.len() - 1 {
            assert!(matches!(
                decode_datagram(wire.slice(..cut), 1200),
                Err(FrameError::Truncated(_))
            ));
        }
        assert!(matches!(
            decode_datagram(Bytes::from(vec![0u8; 1300]), 1200),
            Err(FrameError::TooLarge { .. })
        ));
        let bad = Bytes::from_static(&[1, 1, 1, 0x80]);
        assert_eq!(
            decode_datagram(bad, 1200),
            Err(FrameError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn stream_frames_arrive_in_pieces() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&encode_stream_header(ProducerId(42), None));
        for seq in 0..3u64 {
            let payload = vec![seq as u8; 1000 + seq as usize];
            wire.extend_from_slice(&encode_stream_frame_head(
                &header(seq, seq == 0),
                payload.len(),
            ));
            wire.extend_from_slice(&payload);
        }
        // Feed one byte at a time: every prefix is either incomplete or yields whole frames.
        let mut buf = BytesMut::new();
        let mut producer = None;
        let mut frames = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            if producer.is_none() {
                producer = decode_stream_header(&mut buf).unwrap();
                continue;
            }
            while let Some(frame) = decode_stream_frame(&mut buf, 4096).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(producer.map(|h| h.producer_id), Some(ProducerId(42)));
        assert_eq!(frames.len(), 3);
        for (seq, frame) in frames.iter().enumerate() {
            assert_eq!(frame.header, header(seq as u64, seq == 0));
            assert_eq!(frame.payload.len(), 1000 + seq);
            assert!(frame.payload.iter().all(|b| *b == seq as u8));
            assert_eq!(
                frame.head,
                encode_stream_frame_head(&frame.header, frame.payload.len())
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&encode_stream_frame_head(&header(1, true), 10_000_000)[..]);
        assert_eq!(
            decode_stream_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge {
                size: 10_000_000,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn unknown_stream_type_is_refused() {
        let mut buf = BytesMut::from(&[0x03u8, 0x05][..]);
        assert_eq!(
            decode_stream_header(&mut buf),
            Err(FrameError::UnknownStreamType(3))
        );
    }

    #[test]
    fn layer_group_header_round_trips_and_waits_for_its_layer() {
        let encoded = encode_stream_header(ProducerId(300), Some(2));
        assert_eq!(&encoded[..], &[0x02, 0x41, 0x2c, 0x02]);
        let mut partial = BytesMut::from(&encoded[..3]);
        assert_eq!(decode_stream_header(&mut partial), Ok(None));
        assert_eq!(
            partial.len(),
            3,
            "nothing consumed before the header is whole"
        );
        let mut whole = BytesMut::from(&encoded[..]);
        assert_eq!(
            decode_stream_header(&mut whole),
            Ok(Some(StreamHeader {
                producer_id: ProducerId(300),
                layer: 2
            }))
        );
        let mut plain = BytesMut::from(&encode_stream_header(ProducerId(7), None)[..]);
        assert_eq!(
            decode_stream_header(&mut plain),
            Ok(Some(StreamHeader {
                producer_id: ProducerId(7),
                layer: 0
            }))
        );
        let mut huge = BytesMut::from(&[0x02u8, 0x01, 0x41, 0x00][..]);
        assert_eq!(
            decode_stream_header(&mut huge),
            Err(FrameError::LayerOutOfRange(256))
        );
    }
}
