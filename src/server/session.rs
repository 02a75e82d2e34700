//! One WebTransport session: a peer's producer transport and consumer transport in one.
//!
//! The session task reads the control stream and writes what the core has for the peer;
//! a datagram task and one task per incoming media stream feed frames to the core; one
//! task per consumer pulls that consumer's frames and writes them. No task holds the core's
//! lock across an `.await`: each takes it for one call and lets go.

use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::{Instrument, debug, info, info_span, warn};
use wtransport::endpoint::IncomingSession;
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use super::{SessionLimits, SharedRelay};
use crate::core::{FrameData, PeerOutput};
use crate::wire::frame::{self, FrameError};
use crate::wire::{
    ClientMessage, ConsumerId, DecodeError, ErrorCode, LeaveReason, MediaKind, PeerId, ProducerId,
    ProtocolError, Request, ServerMessage, decode_message, encode_message,
};

/// Application error codes used when the relay closes a session or a stream.
pub mod close_code {
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
}

pub(crate) fn frame_error(e: &FrameError) -> ProtocolError {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::MalformedFrame,
    };
    ProtocolError::new(code, e.to_string())
}

/// Reads more bytes from `recv` into `buf`; `Ok(false)` at the end of the stream.
/// Cancel-safe: dropping it before it completes loses nothing.
async fn read_more(recv: &mut RecvStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(recv.read_buf(buf).await? > 0)
}

async fn write_message(send: &mut SendStream, message: &ServerMessage) -> anyhow::Result<()> {
    send.quic_stream_mut()
        .write_chunk(encode_message(message))
        .await?;
    Ok(())
}

/// Accepts one incoming session and runs it to its end.
pub(crate) async fn serve(incoming: IncomingSession, relay: SharedRelay, limits: SessionLimits) {
    let request = match incoming.await {
        Ok(request) => request,
        Err(e) => {
            debug!(error = %e, "session handshake failed");
            return;
        }
    };
    let remote = request.remote_address();
    let connection = match request.accept().await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "session setup failed");
            return;
        }
    };
    if let Err(e) = run(connection, relay, limits).await {
        debug!(%remote, error = %e, "session ended");
    }
}

async fn run(conn: Connection, relay: SharedRelay, limits: SessionLimits) -> anyhow::Result<()> {
    let (mut send, mut recv) =
        match tokio::time::timeout(limits.join_timeout, conn.accept_bi()).await {
            Ok(streams) => streams?,
            Err(_) => {
                conn.close(
                    VarInt::from_u32(close_code::JOIN_TIMEOUT),
                    b"no control stream",
                );
                anyhow::bail!("no control stream within {:?}", limits.join_timeout);
            }
        };
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + limits.join_timeout;

    // Until it has joined, a session may only send `join`.
    let (peer_id, room, name) = loop {
        let message = match decode_message::<ClientMessage>(&mut buf, limits.max_control_message) {
            Ok(Some(message)) => message,
            Ok(None) => {
                match tokio::time::timeout_at(deadline, read_more(&mut recv, &mut buf)).await {
                    Ok(Ok(true)) => continue,
                    Ok(Ok(false)) | Ok(Err(_)) => return Ok(()),
                    Err(_) => {
                        conn.close(VarInt::from_u32(close_code::JOIN_TIMEOUT), b"join timeout");
                        anyhow::bail!("no join within {:?}", limits.join_timeout);
                    }
                }
            }
            Err(e) => {
                refuse_message(&conn, &mut send, e).await?;
                continue;
            }
        };
        let id = message.id;
        let Request::Join {
            version,
            room,
            name,
            auto_subscribe,
        } = message.request
        else {
            let e = ProtocolError::new(ErrorCode::NotJoined, "send join first");
            write_message(&mut send, &ServerMessage::error(Some(id), &e)).await?;
            continue;
        };
        let joined = relay
            .lock()
            .join(version, &room, &name, auto_subscribe, Instant::now());
        match joined {
            Ok((peer_id, result)) => {
                let result = serde_json::to_value(result)?;
                write_message(&mut send, &ServerMessage::Response { id, result }).await?;
                break (peer_id, room, name);
            }
            Err(e) => {
                info!(%room, %name, error = %e, "join refused");
                write_message(&mut send, &ServerMessage::error(Some(id), &e)).await?;
            }
        }
    };

    let span = info_span!("peer", %room, peer = peer_id, %name);
    async move {
        info!(remote = %conn.remote_address(), "joined");
        let reason = drive(&conn, &relay, &limits, peer_id, send, recv, buf).await;
        // Whatever ended the session, the peer and everything it owns go.
        relay.lock().leave(peer_id, reason);
        info!(?reason, "left");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Answers a control message that could not be read; a broken framing ends the session.
async fn refuse_message(
    conn: &Connection,
    send: &mut SendStream,
    e: DecodeError,
) -> anyhow::Result<()> {
    warn!(error = %e.error, "bad control message");
    write_message(send, &ServerMessage::error(e.id, &e.error)).await?;
    if e.fatal {
        let _ = send.quic_stream_mut().finish();
        // Give the error a moment to leave before the close discards it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(
            VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
            e.error.to_string().as_bytes(),
        );
        anyhow::bail!("protocol violation: {}", e.error);
    }
    Ok(())
}

/// Runs a joined peer until it leaves or its connection ends.
async fn drive(
    conn: &Connection,
    relay: &SharedRelay,
    limits: &SessionLimits,
    peer_id: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
    mut buf: BytesMut,
) -> LeaveReason {
    let datagrams = receive_datagrams(conn.clone(), relay.clone(), peer_id);
    let streams = accept_media_streams(conn.clone(), relay.clone(), peer_id, limits.clone());
    tokio::pin!(datagrams, streams);
    loop {
        // Handle whatever whole messages are buffered before reading more.
        loop {
            match decode_message::<ClientMessage>(&mut buf, limits.max_control_message) {
                Ok(Some(message)) => {
                    let request = message.request.name();
                    let final_reply = relay.lock().handle(peer_id, message, Instant::now());
                    debug!(request, "request");
                    if let Some(reply) = final_reply {
                        // `leave`: the core forgot the peer; answer and close.
                        let _ = write_message(&mut send, &reply).await;
                        let _ = send.quic_stream_mut().finish();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return LeaveReason::Left;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if refuse_message(conn, &mut send, e).await.is_err() {
                        return LeaveReason::Disconnected;
                    }
                }
            }
        }
        tokio::select! {
            more = read_more(&mut recv, &mut buf) => {
                if !matches!(more, Ok(true)) {
                    return LeaveReason::Disconnected;
                }
            }
            output = poll_fn(|cx| relay.lock().poll_peer(peer_id, cx)) => match output {
                None => return LeaveReason::Disconnected,
                Some(PeerOutput::Message(message)) => {
                    if write_message(&mut send, &message).await.is_err() {
                        return LeaveReason::Disconnected;
                    }
                }
                Some(PeerOutput::StartConsumer { consumer_id, producer_id, .. }) => {
                    let task = send_consumer(conn.clone(), relay.clone(), consumer_id, producer_id, limits.clone());
                    tokio::spawn(task.instrument(info_span!("consumer", consumer = consumer_id, producer = producer_id)));
                }
                Some(PeerOutput::Disconnect(e)) => {
                    warn!(error = %e, "disconnecting peer");
                    conn.close(VarInt::from_u32(close_code::SLOW_CONTROL), e.to_string().as_bytes());
                    return LeaveReason::Disconnected;
                }
            },
            _ = &mut datagrams => return LeaveReason::Disconnected,
            _ = &mut streams => return LeaveReason::Disconnected,
        }
    }
}

/// Audio in: each datagram is checked and handed to the core whole, so consumers get the
/// very bytes the producer sent.
async fn receive_datagrams(conn: Connection, relay: SharedRelay, peer_id: PeerId) {
    let max = relay.lock().config().max_datagram_size;
    while let Ok(datagram) = conn.receive_datagram().await {
        let bytes = datagram.payload();
        let now = Instant::now();
        let result = match frame::decode_datagram(bytes.clone(), max) {
            Ok(d) => relay.lock().on_frame(
                peer_id,
                d.producer_id,
                MediaKind::Audio,
                d.header.keyframe,
                FrameData::Datagram(bytes),
                now,
            ),
            Err(e) => {
                let e = frame_error(&e);
                relay.lock().report_frame_error(peer_id, &e, now);
                Err(e)
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "datagram refused");
        }
    }
}

/// Video in: every unidirectional stream is a group of frames of one producer.
async fn accept_media_streams(
    conn: Connection,
    relay: SharedRelay,
    peer_id: PeerId,
    limits: SessionLimits,
) {
    while let Ok(stream) = conn.accept_uni().await {
        let task = receive_media_stream(stream, relay.clone(), peer_id, limits.clone());
        tokio::spawn(task.in_current_span());
    }
}

async fn receive_media_stream(
    mut stream: RecvStream,
    relay: SharedRelay,
    peer_id: PeerId,
    limits: SessionLimits,
) {
    let max_frame = relay.lock().config().max_frame_size;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let refuse = |stream: RecvStream, relay: &SharedRelay, e: ProtocolError| {
        debug!(error = %e, "media stream refused");
        relay.lock().report_frame_error(peer_id, &e, Instant::now());
        stream.stop(VarInt::from_u32(close_code::STREAM_REFUSED));
    };
    let producer_id = loop {
        match frame::decode_stream_header(&mut buf) {
            Ok(Some(id)) => break id,
            Ok(None) => {}
            Err(e) => return refuse(stream, &relay, frame_error(&e)),
        }
        match tokio::time::timeout(
            limits.stream_header_timeout,
            read_more(&mut stream, &mut buf),
        )
        .await
        {
            Ok(Ok(true)) => {}
            _ => return,
        }
    };
    loop {
        loop {
            match frame::decode_stream_frame(&mut buf, max_frame) {
                Ok(Some(f)) => {
                    let data = FrameData::Stream {
                        head: f.head,
                        payload: f.payload,
                    };
                    let result = relay.lock().on_frame(
                        peer_id,
                        producer_id,
                        MediaKind::Video,
                        f.header.keyframe,
                        data,
                        Instant::now(),
                    );
                    if let Err(e) = result {
                        debug!(error = %e, "frame refused");
                        stream.stop(VarInt::from_u32(close_code::STREAM_REFUSED));
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return refuse(stream, &relay, frame_error(&e)),
            }
        }
        match read_more(&mut stream, &mut buf).await {
            Ok(true) => {}
            Ok(false) if buf.is_empty() => return,
            // Ended or reset mid-frame (the peer vanished): the partial frame is discarded,
            // nothing of it was forwarded.
            _ => {
                debug!(partial = buf.len(), "media stream ended mid-frame");
                return;
            }
        }
    }
}

/// Writes one consumer's frames: audio as datagrams, video as one stream per group of
/// pictures (a keyframe opens a new stream, after the previous one is finished).
async fn send_consumer(
    conn: Connection,
    relay: SharedRelay,
    consumer_id: ConsumerId,
    producer_id: ProducerId,
    limits: SessionLimits,
) {
    let mut stream: Option<SendStream> = None;
    while let Some(frame) = poll_fn(|cx| relay.lock().poll_consumer(consumer_id, cx)).await {
        match frame.data {
            FrameData::Datagram(datagram) => match conn.send_datagram(&datagram) {
                Ok(()) => {}
                Err(wtransport::error::SendDatagramError::TooLarge) => {
                    debug!(
                        size = datagram.len(),
                        "datagram too large for this consumer"
                    )
                }
                Err(_) => break,
            },
            FrameData::Stream { head, payload } => {
                let write = async {
                    if frame.keyframe || stream.is_none() {
                        if let Some(mut old) = stream.take() {
                            let _ = old.quic_stream_mut().finish();
                        }
                        let mut new = conn.open_uni().await?.await?;
                        new.quic_stream_mut()
                            .write_chunk(frame::encode_stream_header(producer_id))
                            .await?;
                        stream = Some(new);
                    }
                    let out = stream.as_mut().expect("opened above");
                    out.quic_stream_mut()
                        .write_all_chunks(&mut [head, payload])
                        .await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(limits.consumer_write_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        if conn.quic_connection().close_reason().is_some() {
                            break;
                        }
                        debug!(error = %e, "consumer stream failed; restarting at a keyframe");
                        stream = None;
                        relay.lock().resync_consumer(consumer_id, Instant::now());
                    }
                    Err(_) => {
                        warn!(
                            timeout = ?limits.consumer_write_timeout,
                            "consumer stream stalled; restarting at a keyframe"
                        );
                        if let Some(mut stalled) = stream.take() {
                            let _ = stalled.reset(VarInt::from_u32(close_code::CONSUMER_STALLED));
                        }
                        relay.lock().resync_consumer(consumer_id, Instant::now());
                    }
                }
            }
        }
    }
    if let Some(mut last) = stream {
        let _ = last.quic_stream_mut().finish();
    }
}
