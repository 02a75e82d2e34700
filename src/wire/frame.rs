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
/// Flag bit, audio datagrams only: an RFC 6464 level byte follows the flags byte.
pub const FLAG_AUDIO_LEVEL: u8 = 0x02;
/// The producer id that marks a lossy data datagram (no producer has id 0).
pub const LOSSY_DATA_ID: u64 = 0;
/// Most recipients a lossy data datagram (or a `send_data`) may name.
pub const MAX_DATA_RECIPIENTS: usize = 100;
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
    /// How loud the frame is (audio datagrams only; a stream frame never carries one).
    pub audio_level: Option<AudioLevel>,
}

impl FrameHeader {
    /// A header without an audio level.
    pub fn new(seq: u64, capture_us: u64, keyframe: bool) -> Self {
        Self {
            seq,
            capture_us,
            keyframe,
            audio_level: None,
        }
    }
}

/// RFC 6464's audio level: loudness in -dBov (0 loudest, 127 silence) and the sender's
/// voice-activity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    pub level: u8,
    pub voice: bool,
}

impl AudioLevel {
    /// The level of PCM whose root mean square (full scale 1.0) is `rms`.
    pub fn from_rms(rms: f64, voice: bool) -> Self {
        let level = if rms > 0.0 {
            (-20.0 * rms.log10()).round().clamp(0.0, 127.0) as u8
        } else {
            127
        };
        Self { level, voice }
    }

    /// The level as a linear amplitude, 0 to 1 (-20 dBov is 0.1).
    pub fn amplitude(self) -> f64 {
        10f64.powf(-f64::from(self.level) / 20.0)
    }

    fn from_byte(byte: u8) -> Self {
        Self {
            level: byte & 0x7f,
            voice: byte & 0x80 != 0,
        }
    }

    fn to_byte(self) -> u8 {
        self.level.min(127) | if self.voice { 0x80 } else { 0 }
    }
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
    #[error("more than {MAX_DATA_RECIPIENTS} recipients")]
    TooManyRecipients,
    #[error("empty payload")]
    EmptyPayload,
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

/// Checks the flags byte: `allowed` are the bits this kind of frame may set.
fn parse_flags(flags: u8, allowed: u8) -> Result<u8, FrameError> {
    if flags & !allowed != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    Ok(flags)
}

/// Parses `seq, capture_us, flags` (and the level byte the flags announce) at `pos`.
/// `Ok(None)` means more bytes are needed.
fn parse_header(
    input: &[u8],
    pos: &mut usize,
    allowed_flags: u8,
) -> Result<Option<FrameHeader>, FrameError> {
    let Some(seq) = read_varint(input, pos)? else {
        return Ok(None);
    };
    let Some(capture_us) = read_varint(input, pos)? else {
        return Ok(None);
    };
    let Some(&flags) = input.get(*pos) else {
        return Ok(None);
    };
    let flags = parse_flags(flags, allowed_flags)?;
    let mut audio_level = None;
    if flags & FLAG_AUDIO_LEVEL != 0 {
        let Some(&byte) = input.get(*pos + 1) else {
            return Ok(None);
        };
        audio_level = Some(AudioLevel::from_byte(byte));
        *pos += 1;
    }
    *pos += 1;
    Ok(Some(FrameHeader {
        seq,
        capture_us,
        keyframe: flags & FLAG_KEYFRAME != 0,
        audio_level,
    }))
}

fn put_header(header: &FrameHeader, buf: &mut impl BufMut) {
    varint::encode(header.seq, buf);
    varint::encode(header.capture_us, buf);
    let mut flags = if header.keyframe { FLAG_KEYFRAME } else { 0 };
    if header.audio_level.is_some() {
        flags |= FLAG_AUDIO_LEVEL;
    }
    buf.put_u8(flags);
    if let Some(level) = header.audio_level {
        buf.put_u8(level.to_byte());
    }
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
    let header = parse_header(&datagram, &mut pos, FLAG_KEYFRAME | FLAG_AUDIO_LEVEL)?
        .ok_or(FrameError::Truncated("datagram header"))?;
    Ok(Datagram {
        producer_id,
        header,
        payload: datagram.slice(pos..),
    })
}

/// The same datagram without its level byte (flag cleared, payload unchanged), for peers
/// that did not ask for levels. `None` if it carries no level (or is not a datagram).
pub fn strip_audio_level(datagram: &[u8]) -> Option<Bytes> {
    let mut pos = 0;
    read_varint(datagram, &mut pos).ok()??;
    read_varint(datagram, &mut pos).ok()??;
    read_varint(datagram, &mut pos).ok()??;
    let flags = *datagram.get(pos)?;
    if flags & FLAG_AUDIO_LEVEL == 0 || datagram.len() < pos + 2 {
        return None;
    }
    let mut out = BytesMut::with_capacity(datagram.len() - 1);
    out.put_slice(&datagram[..pos]);
    out.put_u8(flags & !FLAG_AUDIO_LEVEL);
    out.put_slice(&datagram[pos + 2..]);
    Some(out.freeze())
}

/// Whether a datagram is lossy data (its first varint is 0) rather than audio.
pub fn is_lossy_data(datagram: &[u8]) -> bool {
    datagram.first() == Some(&0)
}

/// A lossy data datagram as a client sends it: the recipients (none: the whole room) and
/// the payload, a slice of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossyData {
    pub to: Vec<u64>,
    pub payload: Bytes,
}

/// Decodes a client's lossy data datagram: `0 | n | n peer ids | payload`.
pub fn decode_lossy_data(datagram: Bytes, max_size: usize) -> Result<LossyData, FrameError> {
    if datagram.len() > max_size {
        return Err(FrameError::TooLarge {
            size: datagram.len() as u64,
            max: max_size,
        });
    }
    let truncated = FrameError::Truncated("data datagram header");
    let mut pos = 0;
    let marker = read_varint(&datagram, &mut pos)?.ok_or(truncated.clone())?;
    if marker != LOSSY_DATA_ID {
        return Err(FrameError::UnknownStreamType(marker));
    }
    let n = read_varint(&datagram, &mut pos)?.ok_or(truncated.clone())?;
    if n > MAX_DATA_RECIPIENTS as u64 {
        return Err(FrameError::TooManyRecipients);
    }
    let mut to = Vec::with_capacity(n as usize);
    for _ in 0..n {
        to.push(read_varint(&datagram, &mut pos)?.ok_or(truncated.clone())?);
    }
    if pos == datagram.len() {
        return Err(FrameError::EmptyPayload);
    }
    Ok(LossyData {
        to,
        payload: datagram.slice(pos..),
    })
}

/// Encodes a client's lossy data datagram (`to` empty: the whole room).
pub fn encode_lossy_data(to: &[u64], payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + 8 * to.len() + payload.len());
    varint::encode(LOSSY_DATA_ID, &mut buf);
    varint::encode(to.len() as u64, &mut buf);
    for peer in to {
        varint::encode(*peer, &mut buf);
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// Encodes lossy data as the relay delivers it: `0 | from | payload`.
pub fn encode_delivered_data(from: u64, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(10 + payload.len());
    varint::encode(LOSSY_DATA_ID, &mut buf);
    varint::encode(from, &mut buf);
    buf.put_slice(payload);
    buf.freeze()
}

/// Decodes lossy data as delivered by the relay: the sender's peer id and the payload.
pub fn decode_delivered_data(datagram: Bytes) -> Result<(u64, Bytes), FrameError> {
    let truncated = FrameError::Truncated("data datagram header");
    let mut pos = 0;
    let marker = read_varint(&datagram, &mut pos)?.ok_or(truncated.clone())?;
    if marker != LOSSY_DATA_ID {
        return Err(FrameError::UnknownStreamType(marker));
    }
    let from = read_varint(&datagram, &mut pos)?.ok_or(truncated)?;
    Ok((from, datagram.slice(pos..)))
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
        + usize::from(header.audio_level.is_some())
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
    let Some(header) = parse_header(buf, &mut pos, FLAG_KEYFRAME)? else {
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

/// Encodes the per-frame header of a stream frame (everything before the payload). Stream
/// frames carry no audio level: one in `header` is left out.
pub fn encode_stream_frame_head(header: &FrameHeader, payload_len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(26);
    let header = FrameHeader {
        audio_level: None,
        ..*header
    };
    put_header(&header, &mut buf);
    varint::encode(payload_len as u64, &mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, keyframe: bool) -> FrameHeader {
        FrameHeader::new(seq, 1_700_000_000_000_000 + seq, keyframe)
    }

    #[test]
    fn audio_level_round_trips_and_strips_to_the_plain_datagram() {
        let level = AudioLevel {
            level: 30,
            voice: true,
        };
        let leveled = FrameHeader {
            audio_level: Some(level),
            ..header(5, false)
        };
        let wire = encode_datagram(ProducerId(9), &leveled, b"opus");
        let d = decode_datagram(wire.clone(), 1200).unwrap();
        assert_eq!(d.header.audio_level, Some(level));
        assert_eq!(&d.payload[..], b"opus");
        assert_eq!(datagram_overhead(ProducerId(9), &leveled), wire.len() - 4);
        // Stripped, it is exactly what a sender without levels would have sent.
        let plain = strip_audio_level(&wire).unwrap();
        assert_eq!(
            plain,
            encode_datagram(ProducerId(9), &header(5, false), b"opus")
        );
        assert_eq!(strip_audio_level(&plain), None);
        // The flag without its byte is truncated; on a stream it is an unknown flag.
        let cut = wire.slice(..wire.len() - 5);
        assert_eq!(
            decode_datagram(cut, 1200),
            Err(FrameError::Truncated("datagram header"))
        );
        let mut stream = BytesMut::new();
        stream.put_slice(&[0x01, 0x00, FLAG_AUDIO_LEVEL, 0x10, 0x00]);
        assert_eq!(
            decode_stream_frame(&mut stream, 100),
            Err(FrameError::UnknownFlags(FLAG_AUDIO_LEVEL))
        );
        // A stream head never carries the level, even if the header has one.
        assert_eq!(
            encode_stream_frame_head(&leveled, 4),
            encode_stream_frame_head(&header(5, false), 4)
        );
    }

    #[test]
    fn audio_level_from_pcm_power() {
        assert_eq!(AudioLevel::from_rms(1.0, false).level, 0);
        assert_eq!(AudioLevel::from_rms(0.1, false).level, 20);
        assert_eq!(AudioLevel::from_rms(0.0, false).level, 127);
        assert_eq!(AudioLevel::from_rms(1e-9, false).level, 127);
        assert!((AudioLevel::from_rms(0.1, false).amplitude() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn lossy_data_round_trips_and_rejects_bad_input() {
        let wire = encode_lossy_data(&[3, 700], b"cursor");
        assert!(is_lossy_data(&wire));
        let d = decode_lossy_data(wire, 1200).unwrap();
        assert_eq!(d.to, vec![3, 700]);
        assert_eq!(&d.payload[..], b"cursor");
        let room_wide = decode_lossy_data(encode_lossy_data(&[], b"x"), 1200).unwrap();
        assert!(room_wide.to.is_empty());
        assert_eq!(
            decode_lossy_data(encode_lossy_data(&[1], b""), 1200),
            Err(FrameError::EmptyPayload)
        );
        assert_eq!(
            decode_lossy_data(Bytes::from_static(&[0x00, 0x02, 0x05]), 1200),
            Err(FrameError::Truncated("data datagram header"))
        );
        assert_eq!(
            decode_lossy_data(Bytes::from_static(&[0x00, 0x40, 0x65, 1, 1]), 1200),
            Err(FrameError::TooManyRecipients)
        );
        assert!(matches!(
            decode_lossy_data(encode_lossy_data(&[], &[7; 1300]), 1200),
            Err(FrameError::TooLarge { .. })
        ));
        let delivered = encode_delivered_data(42, b"hi");
        assert_eq!(
            decode_delivered_data(delivered).unwrap(),
            (42, Bytes::from_static(b"hi"))
        );
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
