//! A session with a peer over either transport: WebTransport (QUIC, the default) or one
//! WebSocket (TCP, the fallback of docs/PROTOCOL.md section 17). The relay's session code,
//! the native client and the group readers and writers are written once against these
//! types; each operation is one `match` on the transport.

pub mod websocket;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use wtransport::VarInt;

use crate::core::PathSample;
pub use websocket::{WsError, WsSession};

/// Why a transport operation failed; the text says what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

impl TransportError {
    fn from(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram too large for the path")]
    TooLarge,
    #[error("the peer does not accept datagrams")]
    UnsupportedByPeer,
    #[error("{0}")]
    Closed(String),
}

/// Which transport carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    WebTransport,
    WebSocket,
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "wt" | "webtransport" | "quic" => Ok(Self::WebTransport),
            "ws" | "websocket" => Ok(Self::WebSocket),
            _ => Err(format!("unknown transport {s:?}: use wt or ws")),
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WebTransport => "webtransport",
            Self::WebSocket => "websocket",
        })
    }
}

/// One session. Cheap to clone (both kinds are handles).
#[derive(Clone, Debug)]
pub enum Session {
    WebTransport(wtransport::Connection),
    WebSocket(WsSession),
}

impl Session {
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::WebTransport(_) => TransportKind::WebTransport,
            Self::WebSocket(_) => TransportKind::WebSocket,
        }
    }

    /// The client's control stream, as the relay accepts it.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        match self {
            Self::WebTransport(c) => {
                let (send, recv) = c.accept_bi().await.map_err(TransportError::from)?;
                Ok((
                    SendStream::WebTransport(send),
                    RecvStream::WebTransport(recv),
                ))
            }
            // The control stream exists from the start; the relay waits for its first
            // bytes like QUIC's accept does.
            Self::WebSocket(s) => {
                let (send, recv) = s.control().map_err(TransportError::from)?;
                Ok((SendStream::WebSocket(send), RecvStream::WebSocket(recv)))
            }
        }
    }

    /// The control stream, as the client opens it.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        match self {
            Self::WebTransport(c) => {
                let (send, recv) = c
                    .open_bi()
                    .await
                    .map_err(TransportError::from)?
                    .await
                    .map_err(TransportError::from)?;
                Ok((
                    SendStream::WebTransport(send),
                    RecvStream::WebTransport(recv),
                ))
            }
            Self::WebSocket(_) => self.accept_bi().await,
        }
    }

    pub async fn accept_uni(&self) -> Result<RecvStream, TransportError> {
        match self {
            Self::WebTransport(c) => c
                .accept_uni()
                .await
                .map(RecvStream::WebTransport)
                .map_err(TransportError::from),
            Self::WebSocket(s) => s
                .accept_uni()
                .await
                .map(RecvStream::WebSocket)
                .map_err(TransportError::from),
        }
    }

    pub async fn open_uni(&self) -> Result<SendStream, TransportError> {
        match self {
            Self::WebTransport(c) => c
                .open_uni()
                .await
                .map_err(TransportError::from)?
                .await
                .map(SendStream::WebTransport)
                .map_err(TransportError::from),
            Self::WebSocket(s) => s
                .open_uni()
                .map(SendStream::WebSocket)
                .map_err(TransportError::from),
        }
    }

    pub fn send_datagram(&self, datagram: &Bytes) -> Result<(), DatagramError> {
        use wtransport::error::SendDatagramError;
        match self {
            Self::WebTransport(c) => c.send_datagram(datagram).map_err(|e| match e {
                SendDatagramError::TooLarge => DatagramError::TooLarge,
                SendDatagramError::UnsupportedByPeer => DatagramError::UnsupportedByPeer,
                other => DatagramError::Closed(other.to_string()),
            }),
            Self::WebSocket(s) => s
                .send_datagram(datagram.clone())
                .map_err(|e| DatagramError::Closed(e.to_string())),
        }
    }

    pub async fn receive_datagram(&self) -> Result<Bytes, TransportError> {
        match self {
            Self::WebTransport(c) => c
                .receive_datagram()
                .await
                .map(|d| d.payload())
                .map_err(TransportError::from),
            Self::WebSocket(s) => s.receive_datagram().await.map_err(TransportError::from),
        }
    }

    /// Ends the session with a close code of docs/PROTOCOL.md section 11 and a reason.
    pub fn close(&self, code: u32, reason: &str) {
        match self {
            Self::WebTransport(c) => c.close(VarInt::from_u32(code), reason.as_bytes()),
            Self::WebSocket(s) => s.close(code, reason),
        }
    }

    /// Resolves when the session is over, with why.
    pub async fn closed(&self) -> String {
        match self {
            Self::WebTransport(c) => c.closed().await.to_string(),
            Self::WebSocket(s) => s.closed().await,
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Self::WebTransport(c) => c.quic_connection().close_reason().is_some(),
            Self::WebSocket(s) => s.close_reason().is_some(),
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Self::WebTransport(c) => c.remote_address(),
            Self::WebSocket(s) => s.remote_address(),
        }
    }

    /// The largest datagram the path takes now (`None`: datagrams unsupported).
    pub fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Self::WebTransport(c) => c.max_datagram_size(),
            Self::WebSocket(_) => Some(crate::wire::mux::MAX_MESSAGE - 1),
        }
    }

    /// What the transport knows of the path (RTT, congestion window, losses, bytes sent),
    /// for the core's estimate; `None` if it cannot tell.
    pub fn path_sample(&self) -> Option<PathSample> {
        match self {
            Self::WebTransport(c) => Some(quic_path_sample(c.quic_connection())),
            Self::WebSocket(s) => s.path_sample(),
        }
    }

    /// How much may be queued beyond what the path carries (see `core::path`).
    pub fn set_send_window(&self, window: u64) {
        match self {
            Self::WebTransport(c) => c.quic_connection().set_send_window(window),
            Self::WebSocket(s) => s.set_send_window(window),
        }
    }
}

/// The figures of quinn's `stats` the core's path estimate takes.
pub fn quic_path_sample(quic: &wtransport::quinn::Connection) -> PathSample {
    let stats = quic.stats();
    PathSample {
        rtt: stats.path.rtt,
        min_rtt: stats.path.min_rtt,
        cwnd: stats.path.cwnd,
        sent_packets: stats.path.sent_packets,
        lost_packets: stats.path.lost_packets,
        sent_bytes: stats.udp_tx.bytes,
    }
}

/// A stream code in the WebTransport range (see [`crate::wire::close_code::to_webtransport`]);
/// WebSocket messages carry codes as they are.
fn webtransport_code(code: u32) -> VarInt {
    VarInt::try_from_u64(crate::wire::close_code::to_webtransport(code))
        .expect("mapped stream codes stay far below 2^62")
}

/// The sending half of a stream.
#[derive(Debug)]
pub enum SendStream {
    WebTransport(wtransport::SendStream),
    WebSocket(websocket::WsSendStream),
}

impl SendStream {
    /// Writes one chunk without copying it (QUIC) or until the writer frames it (WebSocket).
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        match self {
            Self::WebTransport(s) => s
                .quic_stream_mut()
                .write_chunk(chunk)
                .await
                .map_err(TransportError::from),
            Self::WebSocket(s) => s.write(chunk).await.map_err(TransportError::from),
        }
    }

    /// Writes a copy of `bytes` (tests write malformed input this way).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.write_chunk(Bytes::copy_from_slice(bytes)).await
    }

    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), TransportError> {
        match self {
            Self::WebTransport(s) => s
                .quic_stream_mut()
                .write_all_chunks(chunks)
                .await
                .map_err(TransportError::from),
            Self::WebSocket(s) => {
                for chunk in chunks {
                    s.write(std::mem::take(chunk))
                        .await
                        .map_err(TransportError::from)?;
                }
                Ok(())
            }
        }
    }

    /// `write_all_chunks` if it can finish without waiting: `Some` with the result when it
    /// did, `None` when it would wait, with what was written taken off `chunks` (quinn
    /// advances them as it goes, so `write_all_chunks` on the same chunks goes on from
    /// there). A WebSocket stream writes nothing here: it answers `None`.
    pub fn write_chunks_now(&mut self, chunks: &mut [Bytes]) -> Option<Result<(), TransportError>> {
        use futures_util::FutureExt as _;
        match self {
            Self::WebTransport(s) => s
                .quic_stream_mut()
                .write_all_chunks(chunks)
                .now_or_never()
                .map(|r| r.map_err(TransportError::from)),
            Self::WebSocket(_) => None,
        }
    }

    /// Ends the stream normally; what was written is still delivered.
    pub fn finish(&mut self) {
        match self {
            Self::WebTransport(s) => {
                let _ = s.quic_stream_mut().finish();
            }
            Self::WebSocket(s) => s.finish(),
        }
    }

    /// Ends the stream and waits until the peer has it all (QUIC), or until it is queued
    /// ahead of the session's close (WebSocket: one ordered connection).
    pub async fn finish_delivered(&mut self) -> Result<(), TransportError> {
        match self {
            Self::WebTransport(s) => s.finish().await.map_err(TransportError::from),
            Self::WebSocket(s) => {
                s.finish();
                Ok(())
            }
        }
    }

    /// Abandons the stream: unsent data is discarded, the peer drops what it has.
    pub fn reset(&mut self, code: u32) {
        match self {
            Self::WebTransport(s) => {
                let _ = s.reset(webtransport_code(code));
            }
            Self::WebSocket(s) => s.reset(code),
        }
    }

    /// QUIC sends higher priorities first. A WebSocket sends control ahead of all stream
    /// data anyway and has no order among streams.
    pub fn set_priority(&mut self, priority: i32) {
        if let Self::WebTransport(s) = self {
            s.set_priority(priority);
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub enum RecvStream {
    WebTransport(wtransport::RecvStream),
    WebSocket(websocket::WsRecvStream),
}

impl RecvStream {
    /// Appends what has arrived to `buf`; `Ok(0)` at the end of the stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> Result<usize, TransportError> {
        match self {
            Self::WebTransport(s) => s.read_buf(buf).await.map_err(TransportError::from),
            Self::WebSocket(s) => s.read_buf(buf).await.map_err(TransportError::from),
        }
    }

    /// Refuses the rest of the stream with `code`.
    pub fn stop(self, code: u32) {
        match self {
            Self::WebTransport(s) => s.stop(webtransport_code(code)),
            Self::WebSocket(s) => s.stop(code),
        }
    }

    /// Streams from one peer, in the order it opened them.
    pub fn order(&self) -> u64 {
        match self {
            Self::WebTransport(s) => s.id().into_u64(),
            Self::WebSocket(s) => s.id().unwrap_or_default(),
        }
    }
}
