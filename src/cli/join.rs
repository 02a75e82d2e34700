//! `synapse-sfu join`: its flags, and what it shows while it runs and prints at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use synapse_sfu::client::join::{self, ChatLines, JoinEvent, JoinOptions, JoinSummary, LiveStats};
use synapse_sfu::client::{ClientOptions, Verification};

#[derive(clap::Args)]
pub(crate) struct JoinArgs {
    /// The relay's WebTransport URL.
    #[arg(long, env = "SYNAPSE_URL", default_value = "https://127.0.0.1:4443/")]
    url: String,
    #[arg(long)]
    room: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// Publish this IVF file (VP8, VP9, AV1) instead of synthetic video.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Publish this Ogg Opus file instead of synthetic audio.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Receive only.
    #[arg(long)]
    no_publish: bool,
    /// Synthetic video bitrate, bits per second.
    #[arg(long, default_value_t = 1_000_000)]
    video_bitrate: u64,
    /// Synthetic video frame rate.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Stop after this long (e.g. 10s, 2m); otherwise run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print a JSON summary on exit instead of a table.
    #[arg(long)]
    json: bool,
    /// Pin this certificate SHA-256 (hex). Default: fetch it from the relay's
    /// /certificate.sha256 and pin it (use --native-roots for a real certificate).
    #[arg(long)]
    cert_hash: Option<String>,
    /// Trust the system's root certificates (a relay with a real certificate).
    #[arg(long, conflicts_with = "cert_hash")]
    native_roots: bool,
    /// Access token (from `synapse-sfu token`), for a relay that requires one.
    #[arg(long, env = "SYNAPSE_TOKEN")]
    token: Option<String>,
    /// Publish synthetic video as three simulcast layers: 320x180, 640x360 and 1280x720 at
    /// 1/8, 3/8 and all of --video-bitrate.
    #[arg(long, conflicts_with = "video")]
    simulcast: bool,
    /// Receive simulcast video at most this large (WxH, e.g. 640x360: the tile's size).
    #[arg(long, value_parser = parse_resolution)]
    max_resolution: Option<(u32, u32)>,
    /// Receive simulcast video at most at this layer (0 is the lowest).
    #[arg(long)]
    layer: Option<u8>,
    /// Script the audio's loudness, looping, as DURATION:LEVEL pairs (level in -dBov, 0
    /// loudest, 127 silence), e.g. `2s:20,3s:127`; the relay's speaker detection uses it.
    #[arg(long)]
    speak: Option<synapse_sfu::client::media::SpeechScript>,
    /// Send each line typed on standard input to the room as a chat message.
    #[arg(long)]
    chat: bool,
    /// Do not reconnect when the connection drops (by default the peer takes its place back
    /// within the relay's grace period, or joins anew).
    #[arg(long)]
    no_reconnect: bool,
    /// `wt` (WebTransport over UDP, the default) or `ws` (the same session over a
    /// WebSocket on the relay's TCP port, for networks that block UDP).
    #[arg(long, default_value = "wt")]
    transport: synapse_sfu::transport::TransportKind,
}

/// `WxH`, both above 0.
fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("expected WIDTHxHEIGHT, e.g. 640x360, not {s:?}")),
    }
}

pub(crate) async fn run_join(args: JoinArgs) -> Result<()> {
    let verification = match (args.cert_hash, args.native_roots) {
        (Some(hash), _) => Verification::Pin(hash),
        (None, true) => Verification::NativeRoots,
        (None, false) => Verification::FetchPin,
    };
    let mut client = ClientOptions::new(args.url, verification);
    client.token = args.token;
    client.transport = args.transport;
    let options = JoinOptions {
        client,
        room: args.room,
        name: args.name,
        video: args.video,
        audio: args.audio,
        no_publish: args.no_publish,
        video_bitrate: args.video_bitrate,
        video_fps: args.fps,
        keyframe_interval: Duration::from_secs(2),
        duration: args.duration,
        live_stats: true,
        simulcast: args.simulcast,
        max_resolution: args.max_resolution,
        max_layer: args.layer,
        speech: args.speak,
        chat: args.chat.then(chat_from_stdin),
        reconnect: !args.no_reconnect,
    };
    let (events, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(event) = reports.recv().await {
            print_join_event(event);
        }
    });
    let summary = join::run(options, events).await;
    // `run` has dropped its sender: the printer ends once it has shown every event.
    let _ = printer.await;
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_join_summary(&summary);
    }
    Ok(())
}

/// Each line of standard input, as chat, until input ends.
fn chat_from_stdin() -> ChatLines {
    use tokio::io::AsyncBufReadExt;
    let (tx, lines) = ChatLines::channel();
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// What `join` shows on stderr while it runs.
fn print_join_event(event: JoinEvent) {
    match event {
        JoinEvent::Joined {
            room,
            ongoing: true,
            peers,
        } => eprintln!("joined the call in room {room} with {}", peers.join(", ")),
        JoinEvent::Joined { room, .. } => eprintln!("started a new call in room {room}"),
        JoinEvent::Stats(stats) => eprintln!("{}", live_line(&stats)),
        JoinEvent::RelayError { code, message } => {
            eprintln!("relay error: {}: {message}", code.as_str())
        }
        JoinEvent::GoingAway { reason } => eprintln!("the relay is going away: {reason}"),
        JoinEvent::PreferredLayersFailed { error } => {
            eprintln!("could not set the preferred layers: {error}")
        }
        JoinEvent::Speakers { names } if names.is_empty() => eprintln!("nobody speaks"),
        JoinEvent::Speakers { names } => eprintln!("speaking: {}", names.join(", ")),
        JoinEvent::Data(data) => {
            let label = data.topic.as_deref().unwrap_or("data");
            let lossy = if data.reliable { "" } else { " (lossy)" };
            eprintln!("[{label}{lossy}] {}: {}", data.from, data.payload)
        }
        JoinEvent::DataFailed { error } => eprintln!("message not sent: {error}"),
        JoinEvent::ConnectionLost { reason } => eprintln!("connection lost: {reason}"),
        JoinEvent::Reconnecting { attempt } => eprintln!("reconnecting (attempt {attempt})…"),
        JoinEvent::Reconnected { resumed: true } => {
            eprintln!("reconnected: back in the call in the same place")
        }
        JoinEvent::Reconnected { resumed: false } => {
            eprintln!("reconnected: the relay had lost the call's state, joined it anew")
        }
        JoinEvent::ReconnectFailed {
            error,
            final_attempt: true,
        } => eprintln!("could not reconnect: {error}"),
        JoinEvent::ReconnectFailed { error, .. } => eprintln!("reconnect attempt failed: {error}"),
        JoinEvent::PeerInterrupted { name } => {
            eprintln!("{name}'s connection dropped; waiting for them")
        }
        JoinEvent::PeerResumed { name } => eprintln!("{name} is back"),
    }
}

/// The live stats line: `sent video 30 frames; bo/video: 29 frames, 0 gaps, p50 1.2 ms`.
fn live_line(stats: &LiveStats) -> String {
    let sent = stats
        .sent
        .iter()
        .map(|(kind, frames)| format!("sent {} {frames} frames", kind.as_str()));
    let received = stats.received.iter().map(|t| {
        format!(
            "{}/{}: {} frames, {} gaps, p50 {:.1} ms",
            t.peer.as_deref().unwrap_or("?"),
            t.kind.as_str(),
            t.frames,
            t.gaps,
            t.latency_p50_ms
        )
    });
    sent.chain(received).collect::<Vec<_>>().join("; ")
}

/// The table `join` prints on exit without `--json`.
fn print_join_summary(summary: &JoinSummary) {
    println!(
        "room {} as {} (peer {}), {:.1} s",
        summary.room, summary.name, summary.peer_id, summary.duration_s
    );
    for t in &summary.sent {
        println!(
            "  sent     {:<6} {:<14} {:>7} frames {:>10} bytes",
            t.kind.as_str(),
            t.codec,
            t.frames,
            t.bytes
        );
    }
    for t in &summary.received {
        let freezes = match (t.freezes, t.freeze_ms) {
            (Some(n), Some(ms)) => format!("  {n} freezes ({ms:.0} ms)"),
            _ => String::new(),
        };
        println!(
            "  received {:<6} {:<14} {:>7} frames {:>10} bytes {:>5} gaps  from {:<12} latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms{freezes}",
            t.kind.as_str(),
            t.codec,
            t.frames,
            t.bytes,
            t.gaps,
            t.peer,
            t.latency_ms.p50,
            t.latency_ms.p99,
            t.latency_ms.max
        );
    }
}
