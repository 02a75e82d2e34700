//! Video as groups of pictures, both ways. Writing: a keyframe finishes the current
//! unidirectional stream and opens the next with the stream header; the frames after it go
//! on that stream. The relay (per consumer), the native client (per producer and layer)
//! and the bench's direct path all send video this way. Reading: [`accept_groups`] takes
//! incoming group streams in order, for the relay and the client alike.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::transport::{RecvStream, SendStream, Session, TransportError};

use crate::core::{GroupKey, GroupOrder};
use crate::wire::frame::{self, encode_stream_header};
use crate::wire::{FrameError, ProducerId, StreamFrame, StreamHeader};

/// Reads more bytes from `recv` into `buf`, growing it 16 KiB at a time when it runs low;
/// `Ok(false)` at the end of the stream. Cancel-safe: dropping it before it completes
/// loses nothing. Every reader of a control or media stream uses it.
pub async fn read_more(recv: &mut RecvStream, buf: &mut BytesMut) -> Result<bool, TransportError> {
    read_more_by(recv, buf, 16 * 1024).await
}

/// [`read_more`], growing `buf` by `chunk` bytes when less than a quarter of that is free.
/// The relay reads a control stream, which lives as long as its session and carries small
/// messages, 2 KiB at a time: 16 KiB held per session was a tenth of a subscriber's memory.
pub async fn read_more_by(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    chunk: usize,
) -> Result<bool, TransportError> {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
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
        conn: &Session,
        keyframe: bool,
        head: Bytes,
        payload: Bytes,
    ) -> Result<(), GroupWriteError> {
        if keyframe || self.stream.is_none() {
            self.finish();
            let mut stream = conn
                .open_uni()
                .await
                .map_err(|e| GroupWriteError::Open(e.to_string()))?;
            stream
                .write_chunk(encode_stream_header(self.producer_id, self.layer))
                .await
                .map_err(|e| GroupWriteError::Write(e.to_string()))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("opened above");
        if let Err(e) = stream.write_all_chunks(&mut [head, payload]).await {
            self.stream = None;
            return Err(GroupWriteError::Write(e.to_string()));
        }
        Ok(())
    }

    /// [`write`](Self::write) if it needs no wait: `Some` with the result when the frame
    /// went onto the open stream at once; `None` when it needs [`write_rest`]
    /// (Self::write_rest) with the same `chunks` (`[head, payload]`, less what was taken):
    /// a keyframe or a frame with no stream open (nothing written), or a stream whose
    /// flow control or send buffer is full (part written).
    pub fn write_now(
        &mut self,
        keyframe: bool,
        chunks: &mut [Bytes; 2],
    ) -> Option<Result<(), GroupWriteError>> {
        if keyframe {
            return None;
        }
        let stream = self.stream.as_mut()?;
        let result = stream.write_chunks_now(chunks)?;
        if let Err(e) = result {
            self.stream = None;
            return Some(Err(GroupWriteError::Write(e.to_string())));
        }
        Some(Ok(()))
    }

    /// The rest of a frame [`write_now`](Self::write_now) could not finish.
    pub async fn write_rest(
        &mut self,
        conn: &Session,
        keyframe: bool,
        mut chunks: [Bytes; 2],
    ) -> Result<(), GroupWriteError> {
        let Some(stream) = self.stream.as_mut().filter(|_| !keyframe) else {
            let [head, payload] = chunks;
            return self.write(conn, keyframe, head, payload).await;
        };
        if let Err(e) = stream.write_all_chunks(&mut chunks).await {
            self.stream = None;
            return Err(GroupWriteError::Write(e.to_string()));
        }
        Ok(())
    }

    /// Ends the current group's stream normally (its data is still delivered).
    pub fn finish(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.finish();
        }
    }

    /// Abandons the current group's stream: the receiver drops what it has not read.
    pub fn reset(&mut self, code: u32) {
        if let Some(mut stream) = self.stream.take() {
            stream.reset(code);
        }
    }
}

/// How [`accept_groups`] reads streams.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// A stream whose header has not arrived by then is stopped.
    pub header_timeout: std::time::Duration,
    /// How long a new group waits for the previous stream of its producer (and layer) to
    /// end before it is read anyway.
    pub order_wait: std::time::Duration,
    /// Largest frame payload accepted.
    pub max_frame: usize,
}

/// Why a group stream is not read (further): the stream is stopped with `code`, and
/// `error` (if any) goes to [`GroupReader::refused`].
#[derive(Debug)]
pub struct Refusal<E> {
    pub code: u32,
    pub error: Option<E>,
}

/// What the receiving side does with incoming group streams: the relay hands frames to
/// its core, the client to its application.
pub trait GroupReader: Clone + Send + Sync + 'static {
    type Error: Send + 'static;
    /// A stream's header arrived: whether to read it.
    fn admit(&self, header: StreamHeader) -> Result<(), Refusal<Self::Error>>;
    /// A frame of an admitted stream; a refusal stops the stream.
    fn frame(
        &self,
        key: GroupKey,
        frame: StreamFrame,
    ) -> impl Future<Output = Result<(), Refusal<Self::Error>>> + Send;
    /// Bytes that are not a stream header or a frame (a malformed stream); `key` once the
    /// header was read.
    fn malformed(&self, key: Option<GroupKey>, error: FrameError) -> Refusal<Self::Error>;
    /// A stream was refused; report it if there is something to say.
    fn refused(&self, error: Self::Error);
}

/// Accepts group streams until the connection ends. Each stream gets a task of its own
/// that reads its header (within `header_timeout`), asks `reader` to admit it, then reads
/// its frames after the previous stream of the same producer and layer has ended (or
/// `order_wait` has passed: see [`GroupOrder`]). Headers are read concurrently, so a stream
/// that sends nothing holds up only itself. The one stream acceptor of the relay and the
/// client.
pub async fn accept_groups<R: GroupReader>(conn: Session, limits: GroupLimits, reader: R) {
    let order: Arc<Mutex<GroupOrder<oneshot::Receiver<()>>>> = Arc::default();
    while let Ok(stream) = conn.accept_uni().await {
        let task = read_stream(stream, limits, reader.clone(), order.clone());
        tokio::spawn(task.in_current_span());
    }
}

/// One incoming stream: its header, then (if admitted, and in its producer's order) its
/// frames.
async fn read_stream<R: GroupReader>(
    mut stream: RecvStream,
    limits: GroupLimits,
    reader: R,
    order: Arc<Mutex<GroupOrder<oneshot::Receiver<()>>>>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let header = async {
        loop {
            if let Some(h) = frame::decode_stream_header(&mut buf)? {
                return Ok(Some(h));
            }
            if !read_more(&mut stream, &mut buf).await.unwrap_or(false) {
                return Ok(None);
            }
        }
    };
    let refusal = match tokio::time::timeout(limits.header_timeout, header).await {
        Ok(Ok(Some(header))) => match reader.admit(header) {
            Ok(()) => {
                let key = (header.producer_id, header.layer);
                let (done, done_rx) = oneshot::channel::<()>();
                let turn = {
                    let mut order = order.lock().unwrap_or_else(|e| e.into_inner());
                    let turn = order.register(key, stream.order(), done_rx);
                    if order.len() > 64 {
                        // Forget producers whose last stream has ended.
                        order.retain(|rx| {
                            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                        });
                    }
                    turn
                };
                if let Some(turn) = turn {
                    // Bounded: a sender that leaves an old stream open must not stall the
                    // new group; what comes late of the old one is dropped by the sequence
                    // checks downstream.
                    let _ = tokio::time::timeout(limits.order_wait, turn).await;
                }
                read_group(stream, buf, key, limits.max_frame, reader).await;
                drop(done);
                return;
            }
            Err(refusal) => refusal,
        },
        Ok(Ok(None)) => return,
        Ok(Err(e)) => reader.malformed(None, e),
        Err(_) => Refusal {
            code: crate::server::close_code::STREAM_REFUSED,
            error: None,
        },
    };
    stop(stream, refusal, &reader);
}

fn stop<R: GroupReader>(stream: RecvStream, refusal: Refusal<R::Error>, reader: &R) {
    if let Some(error) = refusal.error {
        reader.refused(error);
    }
    stream.stop(refusal.code);
}

/// Reads one admitted group stream's frames into `reader` until it ends.
async fn read_group<R: GroupReader>(
    mut stream: RecvStream,
    mut buf: BytesMut,
    key: GroupKey,
    max_frame: usize,
    reader: R,
) {
    loop {
        loop {
            match frame::decode_stream_frame(&mut buf, max_frame) {
                Ok(Some(f)) => {
                    if let Err(refusal) = reader.frame(key, f).await {
                        return stop(stream, refusal, &reader);
                    }
                }
                Ok(None) => break,
                Err(e) => return stop(stream, reader.malformed(Some(key), e), &reader),
            }
        }
        match read_more(&mut stream, &mut buf).await {
            Ok(true) => {}
            Ok(false) if buf.is_empty() => return,
            // Ended or reset mid-frame (the sender vanished): the partial frame is
            // discarded; nothing of it was passed on.
            _ => {
                tracing::debug!(partial = buf.len(), "media stream ended mid-frame");
                return;
            }
        }
    }
}
