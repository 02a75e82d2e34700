//! Writing one producer's video as groups of pictures: a keyframe finishes the current
//! unidirectional stream and opens the next with the stream header; the frames after it go
//! on that stream. The relay (per consumer), the native client (per producer) and the
//! bench's direct path all send video this way.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::wire::ProducerId;
use crate::wire::frame::encode_stream_header;

/// Reads more bytes from `recv` into `buf`, growing it 16 KiB at a time when it runs low;
/// `Ok(false)` at the end of the stream. Cancel-safe: dropping it before it completes
/// loses nothing. Every reader of a control or media stream uses it.
pub async fn read_more(recv: &mut RecvStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(recv.read_buf(buf).await? > 0)
}

/// Why a group write failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupWriteError {
    #[error("opening a stream: {0}")]
    Open(String),
    #[error("writing: {0}")]
    Write(String),
}

/// The open stream of one producer's current group, if any.
#[derive(Debug)]
pub struct GroupWriter {
    producer_id: ProducerId,
    /// The simulcast layer this writer's groups carry (`None`: a plain group stream).
    layer: Option<u8>,
    stream: Option<SendStream>,
}

impl GroupWriter {
    pub fn new(producer_id: ProducerId, layer: Option<u8>) -> Self {
        Self {
            producer_id,
            layer,
            stream: None,
        }
    }

    /// Writes one frame (`head` and `payload` as the wire has them). A keyframe, or the
    /// first frame after a failure, starts a new stream. Payloads are handed to QUIC as
    /// they are: no copy.
    pub async fn write(
        &mut self,
        conn: &Connection,
        keyframe: bool,
        head: Bytes,
        payload: Bytes,
    ) -> Result<(), GroupWriteError> {
        if keyframe || self.stream.is_none() {
            self.finish();
            let opening = conn
                .open_uni()
                .await
                .map_err(|e| GroupWriteError::Open(e.to_string()))?;
            let mut stream = opening
                .await
                .map_err(|e| GroupWriteError::Open(e.to_string()))?;
            stream
                .quic_stream_mut()
                .write_chunk(encode_stream_header(self.producer_id, self.layer))
                .await
                .map_err(|e| GroupWriteError::Write(e.to_string()))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("opened above");
        if let Err(e) = stream
            .quic_stream_mut()
            .write_all_chunks(&mut [head, payload])
            .await
        {
            self.stream = None;
            return Err(GroupWriteError::Write(e.to_string()));
        }
        Ok(())
    }

    /// Ends the current group's stream normally (its data is still delivered).
    pub fn finish(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.quic_stream_mut().finish();
        }
    }

    /// Abandons the current group's stream: the receiver drops what it has not read.
    pub fn reset(&mut self, code: u32) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.reset(VarInt::from_u32(code));
        }
    }
}
