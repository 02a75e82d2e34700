//! The same fan-out load without a relay: the sender is itself a WebTransport server and
//! writes every frame to every receiver over QUIC, with the relay's framing (audio
//! datagrams, one video stream per group) and a bounded queue per receiver. What the relay
//! adds on top of this is its hop: a second QUIC leg, its routing and its queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use wtransport::{ClientConfig, Endpoint, Identity, ServerConfig};

use super::stats::{Recorder, packets_for};
use super::{Shape, lean};
use crate::client::media::{MediaSource, SyntheticAudio, SyntheticVideo};
use crate::client::{ReceivedFrame, now_us, receive_datagrams, receive_streams};
use crate::group::GroupWriter;
use crate::transport::Session;
use crate::wire::frame::{self, FrameHeader};
use crate::wire::{MediaKind, ProducerId};

const AUDIO_PRODUCER: ProducerId = ProducerId(1);
const VIDEO_PRODUCER: ProducerId = ProducerId(2);

enum Outgoing {
    Datagram(Bytes),
    Video {
        keyframe: bool,
        head: Bytes,
        payload: Bytes,
    },
}

#[derive(Debug, Default)]
pub struct DirectOutcome {
    pub received: Recorder,
    pub sent_frames: u64,
    pub sent_bytes: u64,
    pub expected_frames: u64,
    pub wall_s: f64,
}

/// Writes one receiver's frames, one stream per group, as the relay's consumers do.
async fn send_to(conn: Session, mut frames: mpsc::Receiver<Outgoing>) {
    let mut group = GroupWriter::new(VIDEO_PRODUCER, None);
    while let Some(out) = frames.recv().await {
        match out {
            Outgoing::Datagram(d) => {
                let _ = conn.send_datagram(&d);
            }
            Outgoing::Video {
                keyframe,
                head,
                payload,
            } => {
                if group.write(&conn, keyframe, head, payload).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub async fn run_fanout(
    subscribers: usize,
    shape: Shape,
    lean_receivers: bool,
    duration: Duration,
) -> Result<DirectOutcome> {
    let identity = Identity::self_signed(["localhost", "127.0.0.1"])?;
    let hash = identity.certificate_chain().as_slice()[0].hash();
    let server = Endpoint::server(
        ServerConfig::builder()
            .with_bind_address("127.0.0.1:0".parse()?)
            .with_identity(identity)
            .build(),
    )?;
    let port = server.local_addr()?.port();
    let queues: Arc<Mutex<Vec<mpsc::Sender<Outgoing>>>> = Arc::default();
    let accept = tokio::spawn({
        let queues = queues.clone();
        async move {
            for _ in 0..subscribers {
                let Ok(request) = server.accept().await.await else {
                    continue;
                };
                let Ok(conn) = request.accept().await else {
                    continue;
                };
                let (tx, rx) = mpsc::channel(256);
                tokio::spawn(send_to(Session::WebTransport(conn), rx));
                queues.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
            }
            server
        }
    });

    // Receivers: full clients each, or lean ones all in one loop (`lean.rs`), as the
    // relay path's subscribers are.
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(3600);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(stop_at);
    let mut receivers = Vec::new();
    let (lean_phase, lean_phase_seen) = tokio::sync::watch::channel(lean::LeanPhase::SettingUp);
    let lean_ready = Arc::new(AtomicU64::new(0));
    let mut lean_task = lean_receivers.then(|| {
        let relay = lean::LeanRelay {
            url: format!("https://127.0.0.1:{port}/"),
            certificate_sha256: *hash.as_ref(),
        };
        let plans = (0..subscribers)
            .map(|i| lean::LeanPlan {
                room: String::new(),
                name: format!("receiver {i}"),
                relay: 0,
                expected_consumers: 0,
                join: false,
            })
            .collect();
        tokio::spawn(lean::run(
            vec![relay],
            plans,
            lean_phase_seen,
            lean_ready.clone(),
            Arc::new(AtomicU64::new(0)),
        ))
    });
    for _ in 0..subscribers * usize::from(!lean_receivers) {
        let config = ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([hash.clone()])
            .build();
        let endpoint = Endpoint::client(config)?;
        let conn = endpoint
            .connect(format!("https://127.0.0.1:{port}/"))
            .await?;
        let (tx, mut rx) = mpsc::channel::<ReceivedFrame>(8192);
        let session = Session::WebTransport(conn.clone());
        tokio::spawn(receive_datagrams(session.clone(), tx.clone(), None));
        tokio::spawn(receive_streams(session, tx));
        let mut stop = stop_rx.clone();
        receivers.push(tokio::spawn(async move {
            let _keep = (endpoint, conn);
            let mut recorder = Recorder::default();
            // One timer, moved when the deadline moves (as in relay_path.rs: not one per frame).
            let deadline = tokio::time::sleep_until(*stop.borrow());
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => {
                            let packets = if f.kind == MediaKind::Audio { 1 } else { packets_for(f.payload.len()) };
                            recorder.record(f.header.capture_us, f.payload.len(), packets);
                        }
                        None => break,
                    },
                    _ = stop.changed() => deadline.as_mut().reset(*stop.borrow()),
                    _ = &mut deadline => break,
                }
            }
            recorder
        }));
    }
    let server = match &mut lean_task {
        None => accept.await?,
        // Lean receivers that fail to connect end their loop: stop waiting for them.
        Some(task) => {
            let server = tokio::select! {
                server = accept => server?,
                ended = &mut *task => bail!("lean receivers: {}", ended_early(ended)),
            };
            // Every session is open on the server's side; the receivers' side follows.
            while lean_ready.load(Ordering::Relaxed) < subscribers as u64 {
                if task.is_finished() {
                    bail!("lean receivers: {}", ended_early(task.await));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server
        }
    };

    // The sender: audio and video on their own schedules, each frame to every queue.
    let began = tokio::time::Instant::now();
    let end = began + duration;
    // Lean receivers record from now until a second after sending stops (as the full
    // ones: sending takes `duration`, however late it ends, and they stop 1 s after).
    let _ = lean_phase.send(lean::LeanPhase::RecordUntil(
        end + Duration::from_millis(1000),
    ));
    let send = |kind: MediaKind, mut source: Box<dyn MediaSource>| {
        let queues = queues.clone();
        tokio::spawn(async move {
            let (mut frames, mut bytes) = (0u64, 0u64);
            let mut next = tokio::time::Instant::now();
            for seq in 0u64.. {
                if next >= end {
                    break;
                }
                let f = source.next_frame(seq);
                let header = FrameHeader {
                    seq,
                    capture_us: now_us(),
                    keyframe: f.keyframe,
                    audio_level: None,
                };
                let out = match kind {
                    MediaKind::Audio => Outgoing::Datagram(frame::encode_datagram(
                        AUDIO_PRODUCER,
                        &header,
                        &f.payload,
                    )),
                    MediaKind::Video => Outgoing::Video {
                        keyframe: f.keyframe,
                        head: frame::encode_stream_frame_head(&header, f.payload.len()),
                        payload: f.payload.clone(),
                    },
                };
                let targets = queues.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for q in &targets {
                    let copy = match &out {
                        Outgoing::Datagram(d) => Outgoing::Datagram(d.clone()),
                        Outgoing::Video {
                            keyframe,
                            head,
                            payload,
                        } => Outgoing::Video {
                            keyframe: *keyframe,
                            head: head.clone(),
                            payload: payload.clone(),
                        },
                    };
                    let _ = q.try_send(copy);
                }
                frames += 1;
                bytes += f.payload.len() as u64;
                next += f.duration;
                tokio::time::sleep_until(next).await;
            }
            (frames, bytes)
        })
    };
    let audio = (shape.audio_bitrate > 0).then(|| {
        send(
            MediaKind::Audio,
            Box::new(SyntheticAudio::with_interval(
                shape.audio_bitrate,
                shape.audio_frame_interval,
            )),
        )
    });
    let video = send(
        MediaKind::Video,
        Box::new(SyntheticVideo::new(
            shape.video_bitrate,
            shape.fps,
            shape.keyframe_interval,
        )),
    );
    let audio = match audio {
        Some(audio) => audio.await?,
        None => (0, 0),
    };
    let video = video.await?;
    let _ = stop_tx.send(tokio::time::Instant::now() + Duration::from_millis(1000));
    let mut outcome = DirectOutcome {
        sent_frames: audio.0 + video.0,
        sent_bytes: audio.1 + video.1,
        expected_frames: (audio.0 + video.0) * subscribers as u64,
        ..DirectOutcome::default()
    };
    for r in receivers {
        outcome.received.merge(&r.await?);
    }
    if let Some(lean_task) = lean_task {
        for recorded in lean_task.await?? {
            outcome.received.merge(&recorded);
        }
    }
    outcome.wall_s = began.elapsed().as_secs_f64();
    drop(server);
    Ok(outcome)
}

/// Why the lean receivers' loop ended before it was told to.
fn ended_early(ended: Result<Result<Vec<Recorder>>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(_)) => "they stopped before the run".into(),
        Err(e) => e.to_string(),
    }
}
