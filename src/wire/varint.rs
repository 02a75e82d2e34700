//! QUIC variable-length integers (RFC 9000 §16): the two top bits of the first byte give
//! the length (1, 2, 4 or 8 bytes), the rest is the value, big-endian. Browsers can decode
//! them with a few lines of `DataView` code, and they keep small ids and sequence numbers small.

use bytes::BufMut;

/// The largest value a varint can carry (2^62 - 1).
pub const MAX: u64 = (1 << 62) - 1;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarIntError {
    /// The buffer ends before the varint does: read more bytes and try again.
    Incomplete,
}

/// Number of bytes `value` takes on the wire.
pub fn encoded_len(value: u64) -> usize {
    match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `value` to `buf`. Values above [`MAX`] are clamped (callers only pass ids,
/// sequence numbers and microsecond timestamps, which stay far below it).
pub fn encode(value: u64, buf: &mut impl BufMut) {
    let value = value.min(MAX);
    match encoded_len(value) {
        1 => buf.put_u8(value as u8),
        2 => buf.put_u16(0x4000 | value as u16),
        4 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Reads a varint from the front of `input`, returning the value and the bytes it used.
pub fn decode(input: &[u8]) -> Result<(u64, usize), VarIntError> {
    let first = *input.first().ok_or(VarIntError::Incomplete)?;
    let len = 1usize << (first >> 6);
    if input.len() < len {
        return Err(VarIntError::Incomplete);
    }
    let mut value = u64::from(first & 0x3f);
    for byte in &input[1..len] {
        value = (value << 8) | u64::from(*byte);
    }
    Ok((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_class() {
        for value in [
            0,
            1,
            63,
            64,
            16_383,
            16_384,
            1_073_741_823,
            1_073_741_824,
            MAX,
        ] {
            let mut buf = Vec::new();
            encode(value, &mut buf);
            assert_eq!(buf.len(), encoded_len(value));
            assert_eq!(decode(&buf), Ok((value, buf.len())));
        }
    }

    #[test]
    fn rfc_examples() {
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Ok((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Ok((494_878_333, 4)));
        assert_eq!(decode(&[0x7b, 0xbd]), Ok((15_293, 2)));
        assert_eq!(decode(&[0x25]), Ok((37, 1)));
    }

    #[test]
    fn truncated_input_is_incomplete_not_a_panic() {
        assert_eq!(decode(&[]), Err(VarIntError::Incomplete));
        for len in 1..8 {
            let buf = [0xc0u8; 8];
            assert_eq!(decode(&buf[..len]), Err(VarIntError::Incomplete));
        }
    }
}
