//! `synapse-sfu join`: publish audio and video into a room, receive everyone else, and report.
//!
//! [`run`] prints nothing: what happens along the way comes out as [`JoinEvent`]s on a
//! channel, and the result is a [`JoinSummary`]; the command line shows both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use super::media::{
    IvfFile, MediaSource, OggOpusFile, Speaking, SpeechScript, SyntheticAudio, SyntheticVideo,
};
use super::{Client, ClientError, ClientOptions, Incoming, ReceivedFrame, VideoSend, now_us};
use crate::wire::{
    EXT_RESUME, ErrorCode, FrameHeader, JoinResult, LayerInfo, MediaKind, Params, PeerId,
    ProduceResult, ProducerId, Request, ServerMessage,
};

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub client: ClientOptions,
    pub room: String,
    pub name: String,
    /// IVF file to publish instead of synthetic video.
    pub video: Option<PathBuf>,
    /// Ogg Opus file to publish instead of synthetic audio.
    pub audio: Option<PathBuf>,
    /// Publish nothing; only receive.
    pub no_publish: bool,
    pub video_bitrate: u64,
    pub video_fps: u32,
    pub keyframe_interval: Duration,
    /// Stop after this long (otherwise at Ctrl-C).
    pub duration: Option<Duration>,
    /// Send a [`JoinEvent::Stats`] every second.
    pub live_stats: bool,
    /// Publish synthetic video as three simulcast layers ([`simulcast_ladder`]).
    pub simulcast: bool,
    /// For received simulcast tracks: the most wanted (`set_preferred_layers`).
    pub max_resolution: Option<(u32, u32)>,
    pub max_layer: Option<u8>,
    /// Send these audio levels with the audio (synthetic audio has no PCM to measure).
    pub speech: Option<SpeechScript>,
    /// Send each of these lines as a chat message (`send_data`, topic `chat`).
    pub chat: Option<ChatLines>,
    /// When the connection drops or goes silent, connect again and take the place back
    /// (docs/PROTOCOL.md section 16), or join anew if the relay lost it.
    pub reconnect: bool,
}

/// Lines of chat for [`run`] to send to the room, from wherever the application reads
/// them (the `join` command: its standard input). [`run`] takes them until every
/// [`ChatSender`] is dropped. Cheap to clone: clones share the one stream of lines.
#[derive(Clone, Default)]
pub struct ChatLines(Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>>);

/// The sending side of [`ChatLines`].
pub type ChatSender = mpsc::UnboundedSender<String>;

impl ChatLines {
    pub fn channel() -> (ChatSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self(Arc::new(std::sync::Mutex::new(Some(rx)))))
    }

    fn take(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for ChatLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatLines")
    }
}

/// Most speaker changes and data messages a `--json` summary keeps (the first ones).
pub const MAX_SUMMARY_EVENTS: usize = 1000;

/// A change of who speaks, as `join` saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpeakerChange {
    /// Seconds since joining.
    pub at_s: f64,
    /// The speakers' display names, the main speaker first.
    pub speakers: Vec<String>,
}

/// A data message `join` received.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReceivedData {
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub payload: String,
    pub reliable: bool,
}

/// The layers `join --simulcast` publishes for a top bitrate of `top_bps`: 320×180 at 1/8,
/// 640×360 at 3/8 and 1280×720 at the full rate (LiveKit's h180/h360/h720 presets run
/// about 150, 450 and 1,200 kbit/s).
pub fn simulcast_ladder(top_bps: u64) -> Vec<LayerInfo> {
    vec![
        LayerInfo {
            width: 320,
            height: 180,
            max_bitrate: top_bps / 8,
        },
        LayerInfo {
            width: 640,
            height: 360,
            max_bitrate: top_bps * 3 / 8,
        },
        LayerInfo {
            width: 1280,
            height: 720,
            max_bitrate: top_bps,
        },
    ]
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SentTrack {
    pub peer: String,
    pub producer_id: ProducerId,
    pub kind: MediaKind,
    pub codec: String,
    pub frames: u64,
    pub bytes: u64,
    /// Video frames not sent to keep the send backlog under `MAX_SEND_DELAY`, and the
    /// group streams abandoned for it (0 for audio).
    pub skipped_frames: u64,
    pub abandoned_groups: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReceivedTrack {
    /// The publisher's display name.
    pub peer: String,
    pub producer_id: ProducerId,
    pub kind: MediaKind,
    pub codec: String,
    pub frames: u64,
    pub bytes: u64,
    /// Frames missing between the ones received (sequence numbers skipped).
    pub gaps: u64,
    pub out_of_order: u64,
    pub latency_ms: LatencySummary,
    /// Video only: gaps of more than 200 ms between received frames (a viewer sees the
    /// picture stop), and their total length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freezes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<f64>,
    /// Simulcast tracks only: the layers received (from the frames' layer marks, for the
    /// synthetic source), how often the layer changed, and the last layer the relay named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_switches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<u8>,
}

/// The `--json` summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JoinSummary {
    pub room: String,
    pub name: String,
    pub peer_id: PeerId,
    /// Whether a call was already going on when this peer joined.
    pub joined_ongoing_call: bool,
    pub duration_s: f64,
    pub sent: Vec<SentTrack>,
    pub received: Vec<ReceivedTrack>,
    /// Who spoke when (`active_speakers`), and the data messages received (lossy data as
    /// lossily decoded UTF-8).
    pub speaker_changes: Vec<SpeakerChange>,
    pub data_received: Vec<ReceivedData>,
    pub data_sent: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u64,
    /// What carried the session: `webtransport`, or `websocket` (the fallback).
    pub transport: crate::transport::TransportKind,
}

/// What happens during [`run`], as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinEvent {
    /// In the room: a call was going on with these peers (their names), or none was.
    Joined {
        room: String,
        ongoing: bool,
        peers: Vec<String>,
    },
    /// Every second, with [`JoinOptions::live_stats`].
    Stats(LiveStats),
    /// The relay reported an error (the peer stays).
    RelayError { code: ErrorCode, message: String },
    /// The relay is shutting down; the run ends.
    GoingAway { reason: String },
    /// A `set_preferred_layers` request (from `max_resolution`/`max_layer`) failed.
    PreferredLayersFailed { error: String },
    /// Who speaks now (display names, the main speaker first; empty: nobody).
    Speakers { names: Vec<String> },
    /// A data message from another peer.
    Data(ReceivedData),
    /// A chat line could not be sent.
    DataFailed { error: String },
    /// The connection to the relay was lost (it ended, or went silent).
    ConnectionLost { reason: String },
    /// Trying to connect again.
    Reconnecting { attempt: u32 },
    /// Back in the room: in the same place (`resumed`), or joined anew.
    Reconnected { resumed: bool },
    /// An attempt failed; `final_attempt`: no more tries, the run ends.
    ReconnectFailed { error: String, final_attempt: bool },
    /// Another peer's connection dropped; its place is kept for a while.
    PeerInterrupted { name: String },
    /// That peer is back.
    PeerResumed { name: String },
}

/// The counters so far: what each of our publishers sent, and each received track.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStats {
    /// Per publisher: its kind and the frames it sent.
    pub sent: Vec<(MediaKind, u64)>,
    /// Ordered by producer id.
    pub received: Vec<LiveTrack>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveTrack {
    /// The publisher's name, when known.
    pub peer: Option<String>,
    pub kind: MediaKind,
    pub frames: u64,
    pub gaps: u64,
    pub latency_p50_ms: f64,
}

/// Where [`run`] sends its [`JoinEvent`]s; a closed receiver is fine (nothing is reported).
pub type JoinEvents = mpsc::UnboundedSender<JoinEvent>;

/// A gap between received video frames longer than this is a freeze: the picture visibly
/// stops (at 30 fps frames are 33 ms apart).
pub const FREEZE_THRESHOLD: Duration = Duration::from_millis(200);

/// Counts freezes: gaps between consecutive received frames over [`FREEZE_THRESHOLD`].
#[derive(Debug, Clone, Default)]
pub struct FreezeMeter {
    last: Option<Instant>,
    pub freezes: u64,
    pub frozen: Duration,
}

impl FreezeMeter {
    /// A meter that also counts the wait for the first frame from `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self {
            last: Some(start),
            ..Self::default()
        }
    }

    /// A frame was received at `at`.
    pub fn frame(&mut self, at: Instant) {
        if let Some(last) = self.last {
            self.gap(at.saturating_duration_since(last));
        }
        self.last = Some(at);
    }

    /// The run ended at `end`: a picture stopped since the last frame is a freeze too.
    pub fn finish(mut self, end: Instant) -> Self {
        if let Some(last) = self.last {
            self.gap(end.saturating_duration_since(last));
        }
        self
    }

    fn gap(&mut self, gap: Duration) {
        if gap > FREEZE_THRESHOLD {
            self.freezes += 1;
            self.frozen += gap;
        }
    }

    pub fn frozen_ms(&self) -> f64 {
        (self.frozen.as_secs_f64() * 1e6).round() / 1000.0
    }
}

struct TrackStats {
    peer_id: PeerId,
    kind: MediaKind,
    codec: String,
    frames: u64,
    bytes: u64,
    gaps: u64,
    out_of_order: u64,
    last_seq: Option<u64>,
    latency_us: Histogram<u64>,
    freeze: FreezeMeter,
    /// For a simulcast track: layers seen (by payload mark), changes, the relay's last word.
    simulcast: Option<LayerStats>,
}

#[derive(Debug, Default)]
struct LayerStats {
    seen: std::collections::BTreeSet<u8>,
    last_mark: Option<u8>,
    switches: u64,
    announced: Option<u8>,
}

impl TrackStats {
    fn new(peer_id: PeerId, kind: MediaKind, codec: String) -> Self {
        Self {
            peer_id,
            kind,
            codec,
            frames: 0,
            bytes: 0,
            gaps: 0,
            out_of_order: 0,
            last_seq: None,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            freeze: FreezeMeter::default(),
            simulcast: None,
        }
    }

    fn record(&mut self, frame: &ReceivedFrame) {
        self.frames += 1;
        self.bytes += frame.payload.len() as u64;
        if self.kind == MediaKind::Video {
            self.freeze.frame(Instant::now());
        }
        if let (Some(layers), Some(mark)) = (self.simulcast.as_mut(), frame.payload.first()) {
            layers.seen.insert(*mark);
            if layers.last_mark.is_some_and(|m| m != *mark) {
                layers.switches += 1;
            }
            layers.last_mark = Some(*mark);
        }
        let seq = frame.header.seq;
        match self.last_seq {
            Some(last) if seq <= last => self.out_of_order += 1,
            Some(last) => {
                self.gaps += seq - last - 1;
                self.last_seq = Some(seq);
            }
            None => self.last_seq = Some(seq),
        }
        let latency = now_us().saturating_sub(frame.header.capture_us).max(1);
        let _ = self.latency_us.record(latency.min(60_000_000));
    }

    fn latency(&self) -> LatencySummary {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if self.latency_us.is_empty() {
            return LatencySummary {
                p50: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        LatencySummary {
            p50: ms(self.latency_us.value_at_quantile(0.5)),
            p99: ms(self.latency_us.value_at_quantile(0.99)),
            max: ms(self.latency_us.max()),
        }
    }
}

/// A producer of ours and the task that paces its source onto the wire.
pub struct Publisher {
    pub producer_id: ProducerId,
    pub kind: MediaKind,
    pub codec: String,
    pub frames: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    /// Set on a keyframe request; the task makes its next frame a keyframe.
    pub keyframe_wanted: Arc<AtomicBool>,
    /// A simulcast publisher's layers, lowest first (empty otherwise).
    pub layers: Vec<LayerControl>,
    /// A simulcast publisher's produce result and ladder, to start it again on a resumed
    /// session.
    pub simulcast: Option<(ProduceResult, Vec<LayerInfo>)>,
    pub counters: PublisherCounters,
    pub task: tokio::task::JoinHandle<()>,
    /// The task has been awaited (a `JoinHandle` must not be polled again after that).
    stopped: bool,
}

/// What the relay asks of one layer of a simulcast publisher.
#[derive(Debug, Clone)]
pub struct LayerControl {
    /// A keyframe was requested for this layer.
    pub keyframe: Arc<AtomicBool>,
    /// Some consumer needs this layer (dynacast); while not, its encoder idles.
    pub wanted: Arc<AtomicBool>,
    /// Frames this layer sent.
    pub frames: Arc<AtomicU64>,
}

impl Publisher {
    /// Applies a keyframe request or a dynacast update from the relay, if it is for this
    /// publisher.
    pub fn on_event(&self, event: &ServerMessage) {
        match event {
            ServerMessage::KeyframeRequest { producer_id, layer }
                if *producer_id == self.producer_id =>
            {
                match layer.and_then(|l| self.layers.get(usize::from(l))) {
                    Some(l) => l.keyframe.store(true, Ordering::Relaxed),
                    None => {
                        self.keyframe_wanted.store(true, Ordering::Relaxed);
                        for l in &self.layers {
                            l.keyframe.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            ServerMessage::LayersWanted {
                producer_id,
                layers,
            } if *producer_id == self.producer_id => {
                for (i, l) in self.layers.iter().enumerate() {
                    l.wanted
                        .store(layers.contains(&(i as u8)), Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// The most video a publisher lets wait for its uplink, from capture: past it, frames are
/// skipped up to a fresh keyframe (`Client::send_video_within`).
pub const MAX_SEND_DELAY: Duration = Duration::from_millis(300);

impl Publisher {
    /// Stops sending and waits until the task is gone, so that its counters are final
    /// (an aborted task may still be between a send and its count).
    /// Stops sending; safe to call again.
    pub async fn stop(&mut self) {
        self.task.abort();
        if !self.stopped {
            let _ = (&mut self.task).await;
            self.stopped = true;
        }
    }
}

/// The publisher's encoder bitrate, following its uplink as a WebRTC sender follows its
/// bandwidth estimate: when video had to be skipped (the uplink could not carry it within
/// `MAX_SEND_DELAY`), cut to 80% of what the connection actually sent, less audio's share,
/// at most once per `RATE_HOLD` (the skips of one episode, and the lower send rate they
/// cause, are not news); after `RATE_HOLD` without a skip, raise by 10%, never above the
/// configured bitrate. A
/// keyframe costs ten deltas, so a stream that fits its uplink is what keeps keyframes,
/// and with them every subscriber, on time.
pub struct EncoderRate {
    max_bps: u64,
    target_bps: u64,
    last_change: Option<tokio::time::Instant>,
    last_cut: Option<tokio::time::Instant>,
}

/// Time without a skip before the encoder is allowed 10% more.
pub const RATE_HOLD: Duration = Duration::from_secs(2);
/// The lowest bitrate a publisher cuts its video to.
pub const MIN_VIDEO_BITRATE: u64 = 100_000;
/// What audio and packet overhead take from the measured send rate.
const AUDIO_SHARE_BPS: f64 = 64_000.0;

impl EncoderRate {
    pub fn new(max_bps: u64) -> Self {
        Self {
            max_bps,
            target_bps: max_bps,
            last_change: None,
            last_cut: None,
        }
    }

    /// A frame is due at `now`: a new bitrate if it is time to probe up.
    pub fn on_frame(&mut self, now: tokio::time::Instant) -> Option<u64> {
        let since = self.last_change?;
        if self.target_bps >= self.max_bps || now.saturating_duration_since(since) < RATE_HOLD {
            return None;
        }
        self.target_bps = (self.target_bps + self.target_bps / 10).min(self.max_bps);
        self.last_change = Some(now);
        Some(self.target_bps)
    }

    /// Video was skipped at `now`; `sent_bps` is the connection's measured send rate.
    pub fn on_skip(&mut self, now: tokio::time::Instant, sent_bps: Option<f64>) -> Option<u64> {
        self.last_change = Some(now);
        if self
            .last_cut
            .is_some_and(|cut| now.saturating_duration_since(cut) < RATE_HOLD)
        {
            return None;
        }
        let sent = sent_bps?;
        self.last_cut = Some(now);
        let fits = ((sent - AUDIO_SHARE_BPS) * 0.8).max(MIN_VIDEO_BITRATE as f64) as u64;
        if fits >= self.target_bps {
            return None;
        }
        self.target_bps = fits.min(self.max_bps);
        Some(self.target_bps)
    }
}

/// Produces a track and sends `source` on it in real time, from when `go` resolves.
pub(crate) async fn publish(
    client: &Client,
    kind: MediaKind,
    source: Box<dyn MediaSource>,
    go: impl Future<Output = ()> + Send + 'static,
) -> Result<Publisher> {
    let producer_id = client.produce(kind, source.codec()).await?;
    let counters = PublisherCounters::default();
    Ok(publish_as(client, producer_id, kind, source, counters, go))
}

/// What a publisher has sent so far, kept across a resumption: the producer's `seq` must
/// go on increasing on the new session.
#[derive(Debug, Clone, Default)]
pub struct PublisherCounters {
    pub frames: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    /// The `seq` of the next frame.
    pub next_seq: Arc<AtomicU64>,
}

/// [`publish`] for a producer that exists already (a resumed one), carrying on from
/// `counters`.
pub(crate) fn publish_as(
    client: &Client,
    producer_id: ProducerId,
    kind: MediaKind,
    mut source: Box<dyn MediaSource>,
    counters: PublisherCounters,
    go: impl Future<Output = ()> + Send + 'static,
) -> Publisher {
    let codec = source.codec().to_owned();
    let PublisherCounters {
        frames,
        bytes,
        next_seq,
    } = counters.clone();
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let (f, b, k, client) = (
        frames.clone(),
        bytes.clone(),
        keyframe_wanted.clone(),
        client.clone(),
    );
    let first_seq = next_seq.load(Ordering::Relaxed);
    let task = tokio::spawn(async move {
        go.await;
        let mut rate = source.target_bitrate().map(EncoderRate::new);
        // Pace against a fixed schedule so that a slow send does not slow the frame rate.
        let mut next = tokio::time::Instant::now();
        // A resumed video producer restarts with a keyframe: its consumers lost the rest.
        if first_seq > 0 {
            source.force_keyframe();
        }
        for seq in first_seq.. {
            next_seq.store(seq + 1, Ordering::Relaxed);
            if let Some(rate) = rate.as_mut()
                && let Some(bps) = rate.on_frame(tokio::time::Instant::now())
            {
                source.set_target_bitrate(bps);
            }
            if k.swap(false, Ordering::Relaxed) {
                source.force_keyframe();
            }
            let frame = source.next_frame(seq);
            // Captured when the schedule says, however late this loop got here: a camera
            // does not wait for the network.
            let behind = tokio::time::Instant::now().saturating_duration_since(next);
            let header = FrameHeader {
                seq,
                capture_us: now_us().saturating_sub(behind.as_micros() as u64),
                keyframe: frame.keyframe,
                audio_level: None,
            };
            let len = frame.payload.len() as u64;
            let sent = match kind {
                MediaKind::Audio => client.send_audio_with_level(
                    producer_id,
                    seq,
                    header.capture_us,
                    source.audio_level(seq),
                    &frame.payload,
                ),
                MediaKind::Video => {
                    let deadline = next + MAX_SEND_DELAY;
                    match client
                        .send_video_within(producer_id, header, frame.payload, deadline)
                        .await
                    {
                        Ok(VideoSend::Sent) => Ok(()),
                        Ok(VideoSend::Skipped) => {
                            source.force_keyframe();
                            if let Some(rate) = rate.as_mut() {
                                let now = tokio::time::Instant::now();
                                let sent_bps = client.path_estimate().map(|e| e.send_bps);
                                if let Some(bps) = rate.on_skip(now, sent_bps) {
                                    source.set_target_bitrate(bps);
                                }
                            }
                            // The camera runs on from now: frames the loop fell behind on
                            // were never captured, so the forced keyframe gets its full
                            // allowance instead of starting late.
                            next = (next + frame.duration).max(tokio::time::Instant::now());
                            tokio::time::sleep_until(next).await;
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match sent {
                Ok(()) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    b.fetch_add(len, Ordering::Relaxed);
                }
                Err(super::ClientError::Send(_)) if kind == MediaKind::Audio => {}
                Err(_) => return,
            }
            next += frame.duration;
            tokio::time::sleep_until(next).await;
        }
    });
    Publisher {
        producer_id,
        kind,
        codec,
        frames: counters.frames.clone(),
        bytes: counters.bytes.clone(),
        keyframe_wanted,
        layers: Vec::new(),
        simulcast: None,
        counters,
        task,
        stopped: false,
    }
}

/// Produces a simulcast video track and sends each layer's source in real time, from when
/// `go` resolves. The encodings of one captured frame share its `seq` and capture time:
/// every layer follows one capture schedule. Each layer bounds its own send backlog as
/// [`publish`] does (skipping to a fresh keyframe of that layer), and idles while the
/// relay says no consumer wants it. A relay without simulcast gets the top layer alone.
pub async fn publish_simulcast(
    client: &Client,
    ladder: Vec<LayerInfo>,
    fps: u32,
    keyframe_interval: Duration,
    go: impl Future<Output = ()> + Send + 'static,
) -> Result<Publisher> {
    let result = client
        .produce_layers("vp8", Params::new(), ladder.clone())
        .await?;
    Ok(publish_simulcast_as(
        client,
        result,
        ladder,
        fps,
        keyframe_interval,
        PublisherCounters::default(),
        go,
    ))
}

/// [`publish_simulcast`] for a producer that exists already (a resumed one).
pub fn publish_simulcast_as(
    client: &Client,
    result: ProduceResult,
    ladder: Vec<LayerInfo>,
    fps: u32,
    keyframe_interval: Duration,
    counters: PublisherCounters,
    go: impl Future<Output = ()> + Send + 'static,
) -> Publisher {
    let producer_id = result.producer_id;
    let simulcast = result.layers.is_some();
    let frames = counters.frames.clone();
    let bytes = counters.bytes.clone();
    let first_index = counters.next_seq.load(Ordering::Relaxed);
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let layers: Vec<LayerControl> = ladder
        .iter()
        .map(|_| LayerControl {
            keyframe: Arc::new(AtomicBool::new(false)),
            wanted: Arc::new(AtomicBool::new(true)),
            frames: Arc::new(AtomicU64::new(0)),
        })
        .collect();
    let (start_tx, start_rx) = tokio::sync::watch::channel(None);
    let sent_layers: Vec<(Option<u8>, LayerInfo)> = if simulcast {
        ladder
            .iter()
            .enumerate()
            .map(|(i, l)| (Some(i as u8), *l))
            .collect()
    } else {
        vec![(None, *ladder.last().expect("a ladder has layers"))]
    };
    // Dropped with the publisher's task (`Publisher::stop` aborts it): the layers stop too.
    let mut tasks = tokio::task::JoinSet::new();
    for (layer, info) in sent_layers {
        let control = layers[usize::from(layer.unwrap_or(ladder.len() as u8 - 1))].clone();
        let (f, b, client) = (frames.clone(), bytes.clone(), client.clone());
        let mut start_rx = start_rx.clone();
        let mark = layer.unwrap_or(0);
        let mut source = SyntheticVideo::layer(mark, info.max_bitrate, fps, keyframe_interval);
        let next_seq = counters.next_seq.clone();
        tasks.spawn(async move {
            let Ok(start) = start_rx
                .wait_for(Option::is_some)
                .await
                .map(|s| s.expect("some"))
            else {
                return;
            };
            let (start, start_us): (tokio::time::Instant, u64) = start;
            let period = Duration::from_secs(1) / fps.max(1);
            let mut was_wanted = true;
            let mut index: u64 = first_index;
            loop {
                let next = start + period * (index - first_index) as u32;
                next_seq.fetch_max(index + 1, Ordering::Relaxed);
                tokio::time::sleep_until(next).await;
                let wanted = control.wanted.load(Ordering::Relaxed);
                if !wanted {
                    was_wanted = false;
                    index += 1;
                    continue;
                }
                if !was_wanted || control.keyframe.swap(false, Ordering::Relaxed) {
                    source.force_keyframe();
                }
                was_wanted = true;
                let frame = source.next_frame(index);
                let header = FrameHeader {
                    seq: index,
                    capture_us: start_us + period.as_micros() as u64 * (index - first_index),
                    keyframe: frame.keyframe,
                    audio_level: None,
                };
                let len = frame.payload.len() as u64;
                let deadline = next + MAX_SEND_DELAY;
                match client
                    .send_layer_within(producer_id, layer, header, frame.payload, deadline)
                    .await
                {
                    Ok(VideoSend::Sent) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(len, Ordering::Relaxed);
                        control.frames.fetch_add(1, Ordering::Relaxed);
                        index += 1;
                    }
                    Ok(VideoSend::Skipped) => {
                        // The camera ran on meanwhile: continue at the frame due now.
                        source.force_keyframe();
                        let due = tokio::time::Instant::now().saturating_duration_since(start);
                        index = (index + 1)
                            .max(first_index + due.as_micros() as u64 / period.as_micros() as u64);
                    }
                    Err(_) => return,
                }
            }
        });
    }
    let task = tokio::spawn(async move {
        go.await;
        let _ = start_tx.send(Some((tokio::time::Instant::now(), now_us())));
        while tasks.join_next().await.is_some() {}
    });
    Publisher {
        producer_id,
        kind: MediaKind::Video,
        codec: "vp8".to_owned(),
        frames,
        bytes,
        keyframe_wanted,
        layers,
        simulcast: Some((result, ladder)),
        counters,
        task,
        stopped: false,
    }
}

/// Runs a peer until the duration ends or Ctrl-C; returns what it sent and received, and
/// reports along the way on `events`. Fails when the relay cannot be reached or refuses
/// the join.
pub async fn run(options: JoinOptions, events: JoinEvents) -> Result<JoinSummary> {
    let mut client_options = options.client.clone();
    if options.reconnect && !client_options.extensions.iter().any(|e| e == EXT_RESUME) {
        client_options.extensions.push(EXT_RESUME.to_owned());
    }
    // Into the relay that hosts the room (a cluster redirects); reconnections go there too.
    let (mut client, mut incoming, joined) =
        Client::connect_placed(&mut client_options, &options.room, &options.name, true).await?;
    let started = Instant::now();
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let _ = events.send(JoinEvent::Joined {
        room: joined.room.clone(),
        ongoing: joined.ongoing,
        peers: joined.peers.iter().map(|p| p.name.clone()).collect(),
    });
    let mut names: HashMap<PeerId, String> = joined
        .peers
        .iter()
        .map(|p| (p.peer_id, p.name.clone()))
        .collect();
    names.insert(joined.peer_id, joined.name.clone());

    let mut publishers = Vec::new();
    if !options.no_publish {
        let (audio, video) = sources(&options)?;
        publishers.push(publish(&client, MediaKind::Audio, audio, async {}).await?);
        if options.simulcast && options.video.is_none() {
            let ladder = simulcast_ladder(options.video_bitrate);
            publishers.push(
                publish_simulcast(
                    &client,
                    ladder,
                    options.video_fps,
                    options.keyframe_interval,
                    async {},
                )
                .await?,
            );
        } else {
            publishers.push(publish(&client, MediaKind::Video, video, async {}).await?);
        }
    }

    let data_sent = Arc::new(AtomicU64::new(0));
    // The chat follows the current session across reconnections.
    let (current, current_rx) = tokio::sync::watch::channel(client.clone());
    let chat = options
        .chat
        .as_ref()
        .and_then(ChatLines::take)
        .map(|lines| {
            let (events, sent) = (events.clone(), data_sent.clone());
            tokio::spawn(send_chat(lines, current_rx, events, sent))
        });
    let mut conference = Conference::default();
    let mut tracks: HashMap<ProducerId, TrackStats> = HashMap::new();
    let mut me = (joined.peer_id, joined.resume_token.clone());
    let grace = Duration::from_millis(joined.resume_grace_ms.unwrap_or(0));
    let mut reconnects = 0;
    loop {
        let ended = receive(
            &options,
            &client,
            incoming,
            &mut names,
            &publishers,
            &events,
            &mut conference,
            started,
            &mut tracks,
            deadline,
            me.1.is_some(),
        )
        .await;
        if ended == Ended::Done || !options.reconnect {
            break;
        }
        for p in &mut publishers {
            p.stop().await;
        }
        if ended == Ended::GoingAway {
            // As going_away asks: leave, so the relay need not wait out its drain for us.
            // Its place would not survive the restart anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), client.leave()).await;
            me.1 = None;
        }
        // A relay that is going away may be restarting: try for a while, not for long.
        let window = match ended {
            Ended::GoingAway => GOING_AWAY_WINDOW,
            _ => grace.max(Duration::from_secs(5)),
        };
        let Some((c, i, result)) = reconnect(
            &options,
            &client_options,
            &joined.room,
            &me,
            window,
            deadline,
            &events,
        )
        .await
        else {
            break;
        };
        reconnects += 1;
        (client, incoming) = (c, i);
        let _ = current.send(client.clone());
        for p in &result.peers {
            names.insert(p.peer_id, p.name.clone());
        }
        // The consumers a resumed place came back with (a fresh join gets consumer_added).
        for c in &result.consumers {
            let p = &c.producer;
            tracks
                .entry(p.producer_id)
                .or_insert_with(|| TrackStats::new(p.peer_id, p.kind, p.codec.clone()));
        }
        // Resumed: the same producers go on where they were. Otherwise (the relay lost
        // the place, e.g. it restarted) the tracks are produced anew.
        let mut restarted = Vec::new();
        for p in publishers.drain(..) {
            restarted.push(restart(&options, &client, p, &result).await?);
        }
        publishers = restarted;
        if !result.resumed {
            names.insert(result.peer_id, result.name.clone());
        }
        me = (result.peer_id, result.resume_token.clone());
        let _ = events.send(JoinEvent::Reconnected {
            resumed: result.resumed,
        });
    }
    if let Some(chat) = chat {
        chat.abort();
    }

    for p in &mut publishers {
        p.stop().await;
    }
    let mut sent = Vec::new();
    for p in &publishers {
        let (skipped_frames, abandoned_groups) = match p.kind {
            MediaKind::Video => client.video_skips(p.producer_id).await,
            MediaKind::Audio => (0, 0),
        };
        sent.push(SentTrack {
            peer: joined.name.clone(),
            producer_id: p.producer_id,
            kind: p.kind,
            codec: p.codec.clone(),
            frames: p.frames.load(Ordering::Relaxed),
            bytes: p.bytes.load(Ordering::Relaxed),
            skipped_frames,
            abandoned_groups,
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.leave()).await;
    let mut received: Vec<ReceivedTrack> = tracks
        .into_iter()
        .map(|(producer_id, t)| ReceivedTrack {
            peer: names
                .get(&t.peer_id)
                .cloned()
                .unwrap_or_else(|| format!("peer {}", t.peer_id)),
            producer_id,
            kind: t.kind,
            codec: t.codec.clone(),
            frames: t.frames,
            bytes: t.bytes,
            gaps: t.gaps,
            out_of_order: t.out_of_order,
            latency_ms: t.latency(),
            freezes: (t.kind == MediaKind::Video).then_some(t.freeze.freezes),
            freeze_ms: (t.kind == MediaKind::Video).then(|| t.freeze.frozen_ms()),
            layers: t
                .simulcast
                .as_ref()
                .map(|l| l.seen.iter().copied().collect()),
            layer_switches: t.simulcast.as_ref().map(|l| l.switches),
            layer: t.simulcast.as_ref().and_then(|l| l.announced),
        })
        .collect();
    received.sort_by_key(|t| t.producer_id);
    Ok(JoinSummary {
        room: joined.room,
        name: joined.name.clone(),
        peer_id: me.0,
        joined_ongoing_call: joined.ongoing,
        duration_s: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        sent,
        received,
        speaker_changes: conference.speaker_changes,
        data_received: conference.data_received,
        data_sent: data_sent.load(Ordering::Relaxed),
        reconnects,
        transport: options.client.transport,
    })
}

/// The audio and video sources `options` ask for.
fn sources(options: &JoinOptions) -> Result<(Box<dyn MediaSource>, Box<dyn MediaSource>)> {
    let mut audio: Box<dyn MediaSource> = match &options.audio {
        Some(path) => Box::new(OggOpusFile::open(path)?),
        None => Box::new(SyntheticAudio::new(48_000)),
    };
    if let Some(script) = &options.speech {
        audio = Box::new(Speaking {
            inner: audio,
            script: script.clone(),
            frame: Duration::from_millis(20),
        });
    }
    let video: Box<dyn MediaSource> = match &options.video {
        Some(path) => Box::new(IvfFile::open(path)?),
        None => Box::new(SyntheticVideo::new(
            options.video_bitrate,
            options.video_fps,
            options.keyframe_interval,
        )),
    };
    Ok((audio, video))
}

/// A publisher on the new session: the same producer if the place was resumed (`seq`
/// carries on), a new one otherwise. Its counters carry on either way.
async fn restart(
    options: &JoinOptions,
    client: &Client,
    old: Publisher,
    result: &JoinResult,
) -> Result<Publisher> {
    let (audio, video) = sources(options)?;
    let source = match old.kind {
        MediaKind::Audio => audio,
        MediaKind::Video => video,
    };
    if let Some((produced, ladder)) = old.simulcast {
        let produced = if result.resumed {
            produced
        } else {
            client
                .produce_layers("vp8", Params::new(), ladder.clone())
                .await?
        };
        return Ok(publish_simulcast_as(
            client,
            produced,
            ladder,
            options.video_fps,
            options.keyframe_interval,
            old.counters,
            async {},
        ));
    }
    let producer_id = if result.resumed {
        old.producer_id
    } else {
        client.produce(old.kind, source.codec()).await?
    };
    Ok(publish_as(
        client,
        producer_id,
        old.kind,
        source,
        old.counters,
        async {},
    ))
}

/// How long a client whose relay went away tries to reach it again (a restart takes a
/// few seconds).
pub const GOING_AWAY_WINDOW: Duration = Duration::from_secs(10);

/// No word from the relay for this long (it sends `transport_stats` every second): the
/// path is taken for dead and, if the place can be resumed, the client reconnects.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects again and takes the place back (`me`: the peer id and its resume token), or,
/// when the relay no longer has it, joins anew. Tries with backoff (250 ms doubling to
/// 4 s) for `grace`; gives up at the run's deadline.
async fn reconnect(
    options: &JoinOptions,
    client_options: &ClientOptions,
    room: &str,
    me: &(PeerId, Option<String>),
    grace: Duration,
    deadline: Option<tokio::time::Instant>,
    events: &JoinEvents,
) -> Option<(Client, Incoming, JoinResult)> {
    let give_up = tokio::time::Instant::now() + grace;
    let give_up = deadline.map_or(give_up, |d| d.min(give_up));
    let mut backoff = Duration::from_millis(250);
    for attempt in 1u32.. {
        let _ = events.send(JoinEvent::Reconnecting { attempt });
        let tried = async {
            let (client, incoming) = Client::connect(client_options.clone()).await?;
            let result = match &me.1 {
                Some(token) => match client.resume(room, &options.name, me.0, token).await {
                    Err(ClientError::Refused(e)) if e.code == ErrorCode::ResumeFailed => {
                        client.join(room, &options.name, true).await?
                    }
                    other => other?,
                },
                None => client.join(room, &options.name, true).await?,
            };
            Ok::<_, ClientError>((client, incoming, result))
        };
        // A dead path would hold a connection attempt for its whole handshake timeout.
        match tokio::time::timeout(Duration::from_secs(3), tried).await {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(e)) => {
                let _ = events.send(JoinEvent::ReconnectFailed {
                    error: e.to_string(),
                    final_attempt: false,
                });
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() + backoff >= give_up {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(4));
    }
    let _ = events.send(JoinEvent::ReconnectFailed {
        error: "the relay could not be reached again in time".into(),
        final_attempt: true,
    });
    None
}

/// What `join` keeps of the room's conversation for its summary.
#[derive(Default)]
struct Conference {
    speaker_changes: Vec<SpeakerChange>,
    data_received: Vec<ReceivedData>,
}

impl Conference {
    fn speakers(&mut self, names: Vec<String>, at: Duration) {
        if self.speaker_changes.len() < MAX_SUMMARY_EVENTS {
            self.speaker_changes.push(SpeakerChange {
                at_s: (at.as_secs_f64() * 1000.0).round() / 1000.0,
                speakers: names,
            });
        }
    }

    fn data(&mut self, data: ReceivedData) {
        if self.data_received.len() < MAX_SUMMARY_EVENTS {
            self.data_received.push(data);
        }
    }
}

/// Sends each line to the room as chat (blank ones excepted), until the lines end.
async fn send_chat(
    mut lines: mpsc::UnboundedReceiver<String>,
    client: tokio::sync::watch::Receiver<Client>,
    events: JoinEvents,
    sent: Arc<AtomicU64>,
) {
    while let Some(line) = lines.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        let client = client.borrow().clone();
        match client.send_data(&line, &[], Some("chat")).await {
            Ok(_) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = events.send(JoinEvent::DataFailed {
                    error: e.to_string(),
                });
            }
        }
    }
}

/// Why [`receive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The run is over: deadline, Ctrl-C, or the relay going away.
    Done,
    /// The connection ended or went silent.
    ConnectionLost,
    /// The relay is shutting down (it may be restarting).
    GoingAway,
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    options: &JoinOptions,
    client: &Client,
    mut incoming: Incoming,
    names: &mut HashMap<PeerId, String>,
    publishers: &[Publisher],
    events: &JoinEvents,
    conference: &mut Conference,
    started: Instant,
    tracks: &mut HashMap<ProducerId, TrackStats>,
    deadline: Option<tokio::time::Instant>,
    watch_silence: bool,
) -> Ended {
    let name_of = |names: &HashMap<PeerId, String>, p: PeerId| {
        names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("peer {p}"))
    };
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut lossy_open = true;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let silent_at = last_heard + SILENCE_TIMEOUT;
        tokio::select! {
            frame = incoming.frames.recv() => match frame {
                Some(frame) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(t) = tracks.get_mut(&frame.producer_id) {
                        t.record(&frame);
                    }
                }
                None => return Ended::ConnectionLost,
            },
            _ = tokio::time::sleep_until(silent_at), if watch_silence => {
                let _ = events.send(JoinEvent::ConnectionLost { reason: "no word from the relay for 5 s".into() });
                return Ended::ConnectionLost;
            }
            event = incoming.events.recv() => match event {
                Some(ServerMessage::PeerJoined { peer }) => {
                    names.insert(peer.peer_id, peer.name.clone());
                }
                Some(ServerMessage::ConsumerAdded { consumer }) => {
                    let p = consumer.producer;
                    let layered = !p.layers.is_empty();
                    let t = tracks.entry(p.producer_id).or_insert_with(|| TrackStats::new(p.peer_id, p.kind, p.codec));
                    if layered {
                        t.simulcast = Some(LayerStats::default());
                        if options.max_resolution.is_some() || options.max_layer.is_some() {
                            let request = Request::SetPreferredLayers {
                                consumer_id: consumer.consumer_id,
                                max_layer: options.max_layer,
                                max_width: options.max_resolution.map(|r| r.0),
                                max_height: options.max_resolution.map(|r| r.1),
                            };
                            // Not awaited here: the loop must keep reading events.
                            let (client, events) = (client.clone(), events.clone());
                            tokio::spawn(async move {
                                if let Err(e) = client.command(request).await {
                                    let _ = events.send(JoinEvent::PreferredLayersFailed { error: e.to_string() });
                                }
                            });
                        }
                    }
                }
                Some(ServerMessage::LayerChanged { producer_id, layer, .. }) => {
                    if let Some(l) = tracks.get_mut(&producer_id).and_then(|t| t.simulcast.as_mut()) {
                        l.announced = Some(layer);
                    }
                }
                Some(event @ (ServerMessage::KeyframeRequest { .. } | ServerMessage::LayersWanted { .. })) => {
                    for p in publishers {
                        p.on_event(&event);
                    }
                }
                Some(ServerMessage::Error { code, message, .. }) => {
                    let _ = events.send(JoinEvent::RelayError { code, message });
                }
                Some(ServerMessage::GoingAway { reason, .. }) => {
                    let _ = events.send(JoinEvent::GoingAway { reason });
                    return Ended::GoingAway;
                }
                Some(ServerMessage::PeerInterrupted { peer_id }) => {
                    last_heard = tokio::time::Instant::now();
                    let _ = events.send(JoinEvent::PeerInterrupted { name: name_of(names, peer_id) });
                }
                Some(ServerMessage::PeerResumed { peer_id }) => {
                    last_heard = tokio::time::Instant::now();
                    let _ = events.send(JoinEvent::PeerResumed { name: name_of(names, peer_id) });
                }
                Some(ServerMessage::ActiveSpeakers { speakers }) => {
                    let list: Vec<String> = speakers.iter().map(|s| name_of(names, s.peer_id)).collect();
                    conference.speakers(list.clone(), started.elapsed());
                    let _ = events.send(JoinEvent::Speakers { names: list });
                }
                Some(ServerMessage::Data { from, payload, topic, reliable }) => {
                    let data = ReceivedData { from: name_of(names, from), topic, payload, reliable };
                    conference.data(data.clone());
                    let _ = events.send(JoinEvent::Data(data));
                }
                Some(_) => last_heard = tokio::time::Instant::now(),
                None => {
                    let _ = events.send(JoinEvent::ConnectionLost { reason: "the connection to the relay ended".into() });
                    return Ended::ConnectionLost;
                }
            },
            data = incoming.lossy_data.recv(), if lossy_open => match data {
                Some((from, payload)) => {
                    let data = ReceivedData {
                        from: name_of(names, from),
                        topic: None,
                        payload: String::from_utf8_lossy(&payload).into_owned(),
                        reliable: false,
                    };
                    conference.data(data.clone());
                    let _ = events.send(JoinEvent::Data(data));
                }
                None => lossy_open = false,
            },
            _ = tick.tick(), if options.live_stats => {
                let _ = events.send(JoinEvent::Stats(live_stats(names, tracks, publishers)));
            }
            _ = &mut until_deadline => return Ended::Done,
            _ = tokio::signal::ctrl_c() => return Ended::Done,
        }
    }
}

fn live_stats(
    names: &HashMap<PeerId, String>,
    tracks: &HashMap<ProducerId, TrackStats>,
    publishers: &[Publisher],
) -> LiveStats {
    let mut ids: Vec<&ProducerId> = tracks.keys().collect();
    ids.sort();
    LiveStats {
        sent: publishers
            .iter()
            .map(|p| (p.kind, p.frames.load(Ordering::Relaxed)))
            .collect(),
        received: ids
            .into_iter()
            .map(|id| {
                let t = &tracks[id];
                LiveTrack {
                    peer: names.get(&t.peer_id).cloned(),
                    kind: t.kind,
                    frames: t.frames,
                    gaps: t.gaps,
                    latency_p50_ms: t.latency().p50,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_are_gaps_over_200_ms() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut meter = FreezeMeter::default();
        for at in [0, 33, 66, 300, 333, 533, 1000] {
            meter.frame(t0 + ms(at));
        }
        // 66→300 (234 ms) and 533→1000 (467 ms); 333→533 is exactly 200 ms, not over.
        assert_eq!(meter.freezes, 2);
        assert_eq!(meter.frozen, ms(234 + 467));
        assert_eq!(meter.frozen_ms(), 701.0);
        let ended = meter.clone().finish(t0 + ms(1100));
        assert_eq!(ended.freezes, 2, "100 ms after the last frame is no freeze");
        let ended = meter.finish(t0 + ms(1500));
        assert_eq!((ended.freezes, ended.frozen), (3, ms(234 + 467 + 500)));

        let nothing = FreezeMeter::starting_at(t0).finish(t0 + ms(2000));
        assert_eq!((nothing.freezes, nothing.frozen), (1, ms(2000)));
    }
}

#[cfg(test)]
mod encoder_rate_tests {
    use super::*;

    #[test]
    fn encoder_rate_cuts_once_per_episode_and_probes_back_up() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut rate = EncoderRate::new(1_000_000);
        // Nothing to probe before the first cut.
        assert_eq!(rate.on_frame(t0 + ms(5000)), None);
        // A skip on a link that sent 700 kbit/s: (700 - 64) x 0.8.
        assert_eq!(rate.on_skip(t0, Some(700_000.0)), Some(508_800));
        // More skips of the same episode, at a lower measured rate: no further cut.
        assert_eq!(rate.on_skip(t0 + ms(500), Some(300_000.0)), None);
        // 2 s without a skip: +10%, then again 2 s later.
        assert_eq!(rate.on_frame(t0 + ms(1500)), None);
        assert_eq!(rate.on_frame(t0 + ms(2600)), Some(559_680));
        assert_eq!(rate.on_frame(t0 + ms(3000)), None);
        assert_eq!(rate.on_frame(t0 + ms(4700)), Some(615_648));
        // Never below the floor, never above the configured rate.
        assert_eq!(
            rate.on_skip(t0 + ms(9000), Some(50_000.0)),
            Some(MIN_VIDEO_BITRATE)
        );
        let mut t = t0 + ms(9000);
        for _ in 0..40 {
            t += RATE_HOLD;
            rate.on_frame(t);
        }
        assert_eq!(rate.target_bps, 1_000_000);
        // Without a measurement there is nothing to cut to.
        assert_eq!(EncoderRate::new(1_000_000).on_skip(t0, None), None);
    }
}
