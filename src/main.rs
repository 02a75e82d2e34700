//! The `synapse-sfu` command: `serve` (the default), `join`, `bench`, `token`, `shaper`.
//!
//! Argument parsing, logging, the runtime and what each command prints; the work is the
//! library's (`serve`'s options are [`synapse_sfu::config::ServeConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use synapse_sfu::auth::AccessPolicy;
use synapse_sfu::client::join::{self, JoinEvent, JoinOptions, JoinSummary, LiveStats};
use synapse_sfu::client::{ClientOptions, Verification};
use synapse_sfu::config::ServeConfig;
use synapse_sfu::server::Server;
use synapse_sfu::shaper::{self, LinkConfig, Shaper, ShaperConfig};
use synapse_sfu::wire::{Grants, MediaKind, TrackSource};

#[derive(Parser)]
#[command(
    name = "synapse-sfu",
    version,
    about = "A selective forwarding unit for audio and video over WebTransport"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(
        long,
        global = true,
        env = "SYNAPSE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default when no subcommand is given).
    Serve(ServeConfig),
    /// Join a room: publish audio and video, receive everyone else, report.
    Join(JoinArgs),
    /// Measure forwarding latency, delivery and cost, beside a direct QUIC link and raw UDP.
    Bench(BenchArgs),
    /// Mint an access token for a room (needs the API key and secret).
    Token(TokenArgs),
    /// A UDP proxy that impairs the link to a relay (rate, queue, loss, delay, jitter):
    /// point clients at --listen instead of the relay.
    Shaper(ShaperArgs),
}

/// One direction of a shaped link, as flags with a prefix (`--down-…`, `--up-…`).
macro_rules! link_args {
    ($name:ident, $dir:literal, $kbps:ident, $queue:ident, $loss:ident, $delay:ident, $jitter:ident) => {
        #[derive(clap::Args)]
        struct $name {
            #[arg(
                long,
                help = concat!("Rate limit ", $dir, ", kbit/s (e.g. 700, 2mbit); none by default."),
                value_parser = shaper::parse_rate_kbps)]
            $kbps: Option<u64>,
            #[arg(
                long,
                help = concat!("Drop-tail queue ", $dir, ", as time at the rate limit."),
                default_value = "200ms", value_parser = shaper::parse_duration)]
            $queue: Duration,
            #[arg(
                long,
                help = concat!("Random loss ", $dir, " (0.03 or 3%)."),
                default_value = "0", value_parser = shaper::parse_loss)]
            $loss: f64,
            #[arg(
                long,
                help = concat!("One-way delay ", $dir, "."),
                default_value = "0ms", value_parser = shaper::parse_duration)]
            $delay: Duration,
            #[arg(
                long,
                help = concat!("Delay varies by up to this either way ", $dir, " (never reorders)."),
                default_value = "0ms", value_parser = shaper::parse_duration)]
            $jitter: Duration,
        }

        impl $name {
            fn link(&self) -> LinkConfig {
                LinkConfig {
                    rate_kbps: self.$kbps.unwrap_or(0),
                    queue: self.$queue,
                    loss: self.$loss,
                    delay: self.$delay,
                    jitter: self.$jitter,
                    ..LinkConfig::default()
                }
            }
        }
    };
}

link_args!(
    DownLinkArgs,
    "relay → client",
    down_kbps,
    down_queue,
    down_loss,
    down_delay,
    down_jitter
);
link_args!(
    UpLinkArgs,
    "client → relay",
    up_kbps,
    up_queue,
    up_loss,
    up_delay,
    up_jitter
);

#[derive(clap::Args)]
struct ShaperArgs {
    /// Where clients send (their URL's host and port).
    #[arg(long)]
    listen: SocketAddr,
    /// The relay's UDP address.
    #[arg(long, default_value = "127.0.0.1:4443")]
    upstream: SocketAddr,
    #[command(flatten)]
    down: DownLinkArgs,
    #[command(flatten)]
    up: UpLinkArgs,
    /// Seeds the random losses and jitter (the same seed repeats them).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct ApiKeyArgs {
    /// API key: the issuer of access tokens. With a secret, joins require tokens.
    #[arg(long, env = "SYNAPSE_API_KEY")]
    api_key: Option<String>,
    /// API secret that signs access tokens (HS256).
    #[arg(long, env = "SYNAPSE_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
}

impl ApiKeyArgs {
    fn policy(&self) -> Result<AccessPolicy> {
        AccessPolicy::from_env_pair(self.api_key.clone(), self.api_secret.clone())
            .map_err(anyhow::Error::msg)
    }
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The room the token admits to.
    #[arg(long, required_unless_present = "admin")]
    room: Option<String>,
    /// An admin-API token instead (no room, no media).
    #[arg(long, conflicts_with_all = ["room", "no_publish", "no_subscribe"])]
    admin: bool,
    /// The peer's identity (the token's subject).
    #[arg(long)]
    identity: String,
    /// Display name (default: the identity).
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The peer may not publish.
    #[arg(long)]
    no_publish: bool,
    /// The peer may not subscribe.
    #[arg(long)]
    no_subscribe: bool,
    /// Kinds the peer may publish (comma-separated: audio,video).
    #[arg(long, value_delimiter = ',', default_value = "audio,video")]
    kinds: Vec<String>,
    /// The peer may not send data messages (chat, lossy data).
    #[arg(long)]
    no_data: bool,
    /// Sources the peer may publish (comma-separated: camera,microphone,screen,screen_audio).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "camera,microphone,screen,screen_audio"
    )]
    sources: Vec<String>,
    #[command(flatten)]
    keys: ApiKeyArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(subcommand)]
    scenario: BenchScenario,
    /// How long publishers send, once every consumer is in place.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Benchmark an external relay instead of starting one.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Pin this certificate SHA-256 of the external relay (default: fetch it).
    #[arg(long, global = true)]
    cert_hash: Option<String>,
    /// Relay binary to start (default: this one).
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// More `serve` arguments for the started relay, whitespace-separated
    /// (e.g. "--congestion-controller bbr").
    #[arg(long, global = true, allow_hyphen_values = true, default_value = "")]
    relay_args: String,
    /// Synthetic video bitrate per publisher, bits per second.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    video_bitrate: u64,
    /// Synthetic video frame rate.
    #[arg(long, global = true, default_value_t = 30)]
    fps: u32,
    /// Synthetic audio bitrate per publisher, bits per second; 0 publishes no audio track
    /// (video only, as moq-bench's workload).
    #[arg(long, global = true, default_value_t = 48_000)]
    audio_bitrate: u64,
    /// Time between synthetic audio frames (the bitrate holds: frames grow with it).
    #[arg(long, global = true, default_value = "20ms", value_parser = humantime::parse_duration)]
    audio_frame_interval: Duration,
    /// Skip the direct-QUIC and raw-UDP baselines (fan-out).
    #[arg(long, global = true)]
    no_baselines: bool,
    /// No progress line.
    #[arg(long, global = true)]
    quiet: bool,
    /// What carries the peers' sessions: `wt` (WebTransport, the default) or `ws` (the
    /// WebSocket fallback), to measure what the fallback costs.
    #[arg(long, global = true, default_value = "wt")]
    transport: synapse_sfu::transport::TransportKind,
}

#[derive(Subcommand)]
enum BenchScenario {
    /// One publisher (video + audio) to N subscribers.
    Fanout {
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// Search for the largest N whose p99 stays under --p99-bound with ≥ 99.9% delivered.
        #[arg(long)]
        capacity: bool,
        /// The p99 latency bound of --capacity, milliseconds.
        #[arg(long, default_value_t = 50.0)]
        p99_bound: f64,
    },
    /// M peers, each publishing video + audio and consuming all the others.
    Meeting {
        #[arg(long, default_value_t = 4)]
        peers: usize,
        /// Every peer publishes three simulcast layers (1/8, 3/8 and all of the bitrate).
        #[arg(long)]
        simulcast: bool,
        /// Every consumer prefers 320x180 (a grid of thumbnails); implies --simulcast.
        #[arg(long)]
        thumbnails: bool,
    },
    /// R rooms of P audio-only peers.
    Rooms {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        peers: usize,
    },
    /// One publisher on relay 1 and N subscribers spread over R relays that span the room
    /// (`serve --span-rooms`, with a redis-server the bench starts): what a hop adds, and
    /// each relay's CPU.
    Cluster {
        #[arg(long, default_value_t = 300)]
        subscribers: usize,
        #[arg(long, default_value_t = 3)]
        relays: usize,
    },
    /// One publisher to a subscriber on a clean link and one through a shaper, side by side:
    /// fps, freezes, latency, delivery of each.
    WeakLink(WeakLinkArgs),
}

#[derive(clap::Args)]
struct WeakLinkArgs {
    /// Rate limit of the impaired subscriber's downlink, kbit/s (e.g. 700, 2mbit).
    #[arg(long, value_parser = shaper::parse_rate_kbps)]
    down_kbps: Option<u64>,
    /// Its drop-tail queue, as time at that rate.
    #[arg(long, default_value = "200ms", value_parser = shaper::parse_duration)]
    down_queue: Duration,
    /// Random loss on the impaired subscriber's link, each way (0.03 or 3%).
    #[arg(long, default_value = "0", value_parser = shaper::parse_loss)]
    loss: f64,
    /// One-way delay on the impaired subscriber's link, each way.
    #[arg(long, default_value = "0ms", value_parser = shaper::parse_duration)]
    delay: Duration,
    /// The delay varies by up to this either way (never reorders).
    #[arg(long, default_value = "0ms", value_parser = shaper::parse_duration)]
    jitter: Duration,
    /// Rate limit of the PUBLISHER's uplink, kbit/s: it then goes through a shaper too.
    #[arg(long, value_parser = shaper::parse_rate_kbps)]
    up_kbps: Option<u64>,
    /// The publisher uplink's drop-tail queue, as time at that rate.
    #[arg(long, default_value = "200ms", value_parser = shaper::parse_duration)]
    up_queue: Duration,
    /// Seeds the shapers' random losses and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The publisher sends three simulcast layers (1/8, 3/8 and all of the video bitrate).
    #[arg(long)]
    simulcast: bool,
    /// Lift the impaired subscriber's rate limit after this long (loss and delay stay).
    #[arg(long, value_parser = humantime::parse_duration)]
    lift_after: Option<Duration>,
}

impl WeakLinkArgs {
    fn links(&self) -> synapse_sfu::bench::weak_link::WeakLink {
        let impaired = LinkConfig {
            loss: self.loss,
            delay: self.delay,
            jitter: self.jitter,
            ..LinkConfig::default()
        };
        synapse_sfu::bench::weak_link::WeakLink {
            subscriber_up: impaired,
            subscriber_down: LinkConfig {
                rate_kbps: self.down_kbps.unwrap_or(0),
                queue: self.down_queue,
                ..impaired
            },
            publisher_up: self.up_kbps.map(|rate_kbps| LinkConfig {
                rate_kbps,
                queue: self.up_queue,
                ..LinkConfig::default()
            }),
            seed: self.seed,
            simulcast: self.simulcast,
            lift_after: self.lift_after,
        }
    }
}

#[derive(clap::Args)]
struct JoinArgs {
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

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Span fields (room, peer, name) come along on every event.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => logs.init(),
    }
}

fn main() -> Result<()> {
    let mut matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let command = match cli.command {
        Some(command) => command,
        None => {
            // No subcommand: `serve` without flags (the environment, and the config file it
            // may name, still apply).
            matches = Cli::command().get_matches_from(["synapse-sfu", "serve"]);
            Cli::from_arg_matches(&matches)
                .unwrap_or_else(|e| e.exit())
                .command
                .expect("serve was given")
        }
    };
    match command {
        Command::Serve(config) => {
            init_logging("info", cli.log_format);
            let matches = matches
                .subcommand_matches("serve")
                .expect("serve was given");
            let config = config.with_file(matches)?;
            runtime(config.threads)?.block_on(serve(config))
        }
        command => runtime(0)?.block_on(run_command(command, cli.log_format)),
    }
}

/// A multi-threaded runtime with `threads` workers (0: one per core).
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().context("starting the runtime")
}

async fn run_command(command: Command, log_format: LogFormat) -> Result<()> {
    match command {
        Command::Serve(_) => unreachable!("serve runs on its own runtime"),
        Command::Join(args) => {
            init_logging("warn", log_format);
            run_join(args).await
        }
        Command::Bench(args) => {
            init_logging("warn", log_format);
            run_bench(args).await
        }
        Command::Token(args) => mint_token(args),
        Command::Shaper(args) => {
            init_logging("warn", log_format);
            run_shaper(args).await
        }
    }
}

async fn run_shaper(args: ShaperArgs) -> Result<()> {
    let shaper = Shaper::start(ShaperConfig {
        listen: args.listen,
        upstream: args.upstream,
        up: args.up.link(),
        down: args.down.link(),
        seed: args.seed,
    })
    .await?;
    // One line on stdout, for scripts and tests to wait for and parse.
    println!("shaper listening on {}", shaper.local_addr());
    let signal = shutdown_signal().await?;
    let stats = shaper.stats();
    eprintln!(
        "{signal}: shaper stopping after {} client(s); down: {} of {} packets delivered \
         ({} queue, {} loss drops); up: {} of {} ({} queue, {} loss drops)",
        stats.flows,
        stats.down.delivered,
        stats.down.packets,
        stats.down.queue_drops,
        stats.down.loss_drops,
        stats.up.delivered,
        stats.up.packets,
        stats.up.queue_drops,
        stats.up.loss_drops
    );
    Ok(())
}

fn mint_token(args: TokenArgs) -> Result<()> {
    let AccessPolicy::Keys(key) = args.keys.policy()? else {
        anyhow::bail!("set --api-key and --api-secret (or SYNAPSE_API_KEY and SYNAPSE_API_SECRET)");
    };
    let kinds = args
        .kinds
        .iter()
        .map(|k| match k.trim() {
            "audio" => Ok(MediaKind::Audio),
            "video" => Ok(MediaKind::Video),
            other => anyhow::bail!("unknown kind {other:?} (audio, video)"),
        })
        .collect::<Result<Vec<_>>>()?;
    let sources = args
        .sources
        .iter()
        .map(|s| {
            TrackSource::ALL
                .into_iter()
                .find(|t| t.as_str() == s.trim())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown source {s:?} (camera, microphone, screen, screen_audio)"
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let grants = Grants {
        can_publish: !args.no_publish,
        can_subscribe: !args.no_subscribe,
        kinds,
        can_publish_data: !args.no_data,
        sources,
        relay: false,
    };
    let token = match &args.room {
        Some(room) if !args.admin => {
            key.mint(room, &args.identity, args.name.as_deref(), args.ttl, grants)?
        }
        _ => key.mint_admin(&args.identity, args.ttl)?,
    };
    println!("{token}");
    Ok(())
}

async fn run_bench(args: BenchArgs) -> Result<()> {
    use synapse_sfu::bench::{self, BenchOptions, Scenario, Shape};
    let (scenario, capacity) = match args.scenario {
        BenchScenario::Fanout {
            subscribers,
            capacity,
            p99_bound,
        } => (
            Scenario::Fanout { subscribers },
            capacity.then_some(p99_bound),
        ),
        BenchScenario::Meeting {
            peers,
            simulcast,
            thumbnails,
        } => (
            Scenario::Meeting {
                peers,
                simulcast: simulcast || thumbnails,
                thumbnails,
            },
            None,
        ),
        BenchScenario::Rooms { rooms, peers } => (Scenario::Rooms { rooms, peers }, None),
        BenchScenario::WeakLink(_) => (Scenario::WeakLink, None),
        BenchScenario::Cluster { subscribers, .. } => (Scenario::Fanout { subscribers }, None),
    };
    if args.audio_bitrate == 0 && matches!(scenario, Scenario::Rooms { .. } | Scenario::WeakLink) {
        anyhow::bail!(
            "--audio-bitrate 0 leaves this scenario nothing to measure (rooms are audio only, weak-link measures audio too)"
        );
    }
    let options = BenchOptions {
        scenario,
        duration: args.duration,
        shape: Shape {
            video_bitrate: args.video_bitrate,
            fps: args.fps,
            audio_bitrate: args.audio_bitrate,
            audio_frame_interval: args.audio_frame_interval,
            ..Shape::default()
        },
        url: args.url,
        cert_hash: args.cert_hash,
        relay_bin: args.relay_bin,
        relay_args: args
            .relay_args
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        baselines: !args.no_baselines,
        progress: !args.quiet,
        transport: args.transport,
    };
    if let BenchScenario::Cluster {
        subscribers,
        relays,
    } = args.scenario
    {
        let report = bench::cluster::run(&options, subscribers, relays).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            bench::cluster::print_report(&report);
        }
        return Ok(());
    }
    if let BenchScenario::WeakLink(link) = &args.scenario {
        let report = bench::weak_link::run(&options, &link.links()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            bench::weak_link::print_report(&report);
        }
        return Ok(());
    }
    if let (Some(bound), Scenario::Fanout { subscribers }) = (capacity, scenario) {
        let report = bench::capacity(&options, subscribers, bound).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for t in &report.trials {
                println!(
                    "{:>6} subscribers: p99 {:>8.3} ms, delivered {:>7.3}%  {}",
                    t.subscribers,
                    t.p99_ms,
                    t.delivered_ratio * 100.0,
                    if t.passed { "pass" } else { "fail" }
                );
            }
            println!(
                "capacity: {} subscribers (p99 ≤ {} ms, ≥ 99.9% delivered) — {}; {}",
                report.capacity, report.p99_bound_ms, report.machine, report.note
            );
        }
        return Ok(());
    }
    let report = bench::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print_report(&report);
    }
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
async fn shutdown_signal() -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT").context("waiting for Ctrl-C"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn serve(config: ServeConfig) -> Result<()> {
    let drain = config.drain;
    let config = config.server_config()?;
    let server = Server::start(config).await.context("starting the relay")?;
    let port = server.local_addr().port();
    eprintln!(
        "Synapse SFU relay: WebTransport on UDP {}, HTTP on TCP {port}",
        server.local_addr()
    );
    eprintln!("  certificate sha256 {}", server.certificate_sha256());
    eprintln!("  web client: http://localhost:{port}/");
    let signal = shutdown_signal().await?;
    eprintln!("{signal}: shutting down (draining up to {drain:?})");
    server.shutdown_gracefully(drain).await;
    Ok(())
}

async fn run_join(args: JoinArgs) -> Result<()> {
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
        chat_from_stdin: args.chat,
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

/// The relay allocates and frees small buffers per packet (quinn's frames and
/// acknowledgements); mimalloc's thread-local free lists do that for less CPU than glibc's
/// malloc (docs/BENCHMARKS.md). Without the `mimalloc` feature the system's malloc serves,
/// for heap profilers that hook it (heaptrack, valgrind).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
