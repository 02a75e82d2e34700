//! The `synapse-sfu` command: `serve` (the default), `join`, `bench`, `token`, `shaper`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use synapse_sfu::auth::AccessPolicy;
use synapse_sfu::client::join::{self, JoinOptions};
use synapse_sfu::client::{ClientOptions, Verification};
use synapse_sfu::core::{Limits, RelayConfig};
use synapse_sfu::server::{CongestionController, Server, ServerConfig, SessionLimits};
use synapse_sfu::shaper::{self, LinkConfig, Shaper, ShaperConfig};
use synapse_sfu::wire::{Grants, MediaKind};

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
    Serve(ServeArgs),
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
    /// Time between synthetic audio frames (the bitrate holds: frames grow with it).
    #[arg(long, global = true, default_value = "20ms", value_parser = humantime::parse_duration)]
    audio_frame_interval: Duration,
    /// Skip the direct-QUIC and raw-UDP baselines (fan-out).
    #[arg(long, global = true)]
    no_baselines: bool,
    /// No progress line.
    #[arg(long, global = true)]
    quiet: bool,
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
struct ServeArgs {
    /// A TOML file of these options (flags and environment variables win over it).
    #[arg(long, env = "SYNAPSE_CONFIG")]
    config: Option<PathBuf>,
    /// UDP (WebTransport) and TCP (HTTP) address; both use the same port number.
    #[arg(long, env = "SYNAPSE_BIND", default_value = "[::]:4443")]
    bind: SocketAddr,
    /// TLS certificate chain (PEM). Without it, a development certificate is generated.
    #[arg(long, env = "SYNAPSE_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SYNAPSE_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Where the development certificate is kept.
    #[arg(long, env = "SYNAPSE_CERTS_DIR", default_value = "certs")]
    certs_dir: PathBuf,
    /// Serve the web client from this directory instead of the copy built into the binary
    /// (for development: edit a file, reload the page).
    #[arg(long, env = "SYNAPSE_WEB_ROOT")]
    web_root: Option<PathBuf>,
    /// On SIGINT/SIGTERM, how long peers get to leave before the relay closes them.
    #[arg(long, env = "SYNAPSE_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Congestion controller of every connection: cubic, new-reno or bbr (docs/BENCHMARKS.md
    /// has the measurements behind the default).
    #[arg(long, env = "SYNAPSE_CONGESTION_CONTROLLER", default_value = "bbr")]
    congestion_controller: CongestionController,
    /// Video that has waited longer in the relay is skipped; the subscriber restarts at a
    /// keyframe instead of falling further behind.
    #[arg(long, env = "SYNAPSE_VIDEO_LATENCY_BOUND", default_value = "400ms", value_parser = latency_bound)]
    video_latency_bound: Duration,
    /// The same for audio.
    #[arg(long, env = "SYNAPSE_AUDIO_LATENCY_BOUND", default_value = "200ms", value_parser = latency_bound)]
    audio_latency_bound: Duration,
    /// QUIC endpoints sharing the UDP port (SO_REUSEPORT), each with its own driver; 0: one
    /// per core (docs/ARCHITECTURE.md).
    #[arg(long, env = "SYNAPSE_ENDPOINTS", default_value_t = 1)]
    endpoints: usize,
    /// Worker threads of the relay's runtime; 0: one per core.
    #[arg(long, env = "SYNAPSE_THREADS", default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    keys: ApiKeyArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Limits; 0 means unlimited where it makes sense.
#[derive(clap::Args)]
struct LimitArgs {
    /// Peers in one room; more get `room_full`.
    #[arg(long, env = "SYNAPSE_MAX_PEERS_PER_ROOM", default_value_t = 1000)]
    max_peers_per_room: usize,
    /// Rooms on this relay; a join that would open one more gets `too_many_rooms`.
    #[arg(long, env = "SYNAPSE_MAX_ROOMS", default_value_t = 10_000)]
    max_rooms: usize,
    /// Producers of one peer; more get `too_many_producers`.
    #[arg(long, env = "SYNAPSE_MAX_PRODUCERS_PER_PEER", default_value_t = 16)]
    max_producers_per_peer: usize,
    /// Control requests per second per peer (bursts of twice that); more get `rate_limited`.
    #[arg(long, env = "SYNAPSE_MAX_REQUESTS_PER_SECOND", default_value_t = 50)]
    max_requests_per_second: u32,
    /// Media bits per second per producer; frames beyond are dropped (`bitrate_exceeded`).
    #[arg(
        long,
        env = "SYNAPSE_MAX_PRODUCER_BITRATE",
        default_value_t = 20_000_000
    )]
    max_producer_bitrate: u64,
    /// Open sessions per source IP address; more are refused (HTTP 429).
    #[arg(long, env = "SYNAPSE_MAX_SESSIONS_PER_ADDRESS", default_value_t = 100)]
    max_sessions_per_address: usize,
    /// Largest video frame payload, bytes.
    #[arg(long, env = "SYNAPSE_MAX_FRAME_SIZE", default_value_t = 2 * 1024 * 1024)]
    max_frame_size: usize,
    /// Largest audio datagram, header included, bytes (browsers allow about 1200).
    #[arg(long, env = "SYNAPSE_MAX_DATAGRAM_SIZE", default_value_t = 1200)]
    max_datagram_size: usize,
    /// Largest control message, bytes; a larger one disconnects the peer.
    #[arg(long, env = "SYNAPSE_MAX_CONTROL_MESSAGE", default_value_t = 64 * 1024)]
    max_control_message: usize,
    /// A silent connection is dropped after this long.
    #[arg(long, env = "SYNAPSE_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let serve_args = match cli.command {
        None => {
            init_logging("info", cli.log_format);
            let (args, matches) = ServeArgs::parse_from_env();
            args.with_config_file(&matches)?
        }
        Some(Command::Serve(args)) => {
            init_logging("info", cli.log_format);
            let matches = matches
                .subcommand_matches("serve")
                .expect("serve was given");
            args.with_config_file(matches)?
        }
        Some(command) => return runtime(0)?.block_on(run_command(command, cli.log_format)),
    };
    runtime(serve_args.threads)?.block_on(serve(serve_args))
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
    let grants = Grants {
        can_publish: !args.no_publish,
        can_subscribe: !args.no_subscribe,
        kinds,
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
    };
    let options = BenchOptions {
        scenario,
        duration: args.duration,
        shape: Shape {
            video_bitrate: args.video_bitrate,
            fps: args.fps,
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
    };
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

impl ServeArgs {
    /// `synapse-sfu` with no subcommand: the serve defaults, environment applied.
    fn parse_from_env() -> (Self, clap::ArgMatches) {
        #[derive(Parser)]
        struct Bare {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let matches = Bare::command().get_matches_from(["synapse-sfu"]);
        let bare = Bare::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        (bare.serve, matches)
    }

    /// Fills in, from the `--config` TOML file, every option that was given neither as a
    /// flag nor in the environment: flag > environment > file > default.
    fn with_config_file(mut self, matches: &clap::ArgMatches) -> Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let file: FileConfig = toml::from_str(&text)
            .with_context(|| format!("parsing the config file {}", path.display()))?;
        let unset = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let duration = |name: &str, text: Option<String>| -> Result<Option<Duration>> {
            text.map(|t| {
                humantime::parse_duration(&t)
                    .with_context(|| format!("{name} = {t:?} in the config file"))
            })
            .transpose()
        };
        macro_rules! take {
            ($id:literal, $dst:expr, $value:expr) => {
                if unset($id)
                    && let Some(v) = $value
                {
                    $dst = v;
                }
            };
        }
        take!("bind", self.bind, file.bind);
        take!("cert", self.cert, file.cert.map(Some));
        take!("key", self.key, file.key.map(Some));
        take!("certs_dir", self.certs_dir, file.certs_dir);
        take!("web_root", self.web_root, file.web_root.map(Some));
        take!("drain", self.drain, duration("drain", file.drain)?);
        take!(
            "congestion_controller",
            self.congestion_controller,
            file.congestion_controller
                .map(|c| c.parse::<CongestionController>())
                .transpose()
                .map_err(anyhow::Error::msg)?
        );
        take!(
            "video_latency_bound",
            self.video_latency_bound,
            duration("video_latency_bound", file.video_latency_bound)?
                .map(|d| check_latency_bound(d).map_err(anyhow::Error::msg))
                .transpose()?
        );
        take!(
            "audio_latency_bound",
            self.audio_latency_bound,
            duration("audio_latency_bound", file.audio_latency_bound)?
                .map(|d| check_latency_bound(d).map_err(anyhow::Error::msg))
                .transpose()?
        );
        take!("endpoints", self.endpoints, file.endpoints);
        take!("threads", self.threads, file.threads);
        take!("api_key", self.keys.api_key, file.api_key.map(Some));
        take!(
            "api_secret",
            self.keys.api_secret,
            file.api_secret.map(Some)
        );
        let l = file.limits.unwrap_or_default();
        let limits = &mut self.limits;
        take!(
            "max_peers_per_room",
            limits.max_peers_per_room,
            l.max_peers_per_room
        );
        take!("max_rooms", limits.max_rooms, l.max_rooms);
        take!(
            "max_producers_per_peer",
            limits.max_producers_per_peer,
            l.max_producers_per_peer
        );
        take!(
            "max_requests_per_second",
            limits.max_requests_per_second,
            l.max_requests_per_second
        );
        take!(
            "max_producer_bitrate",
            limits.max_producer_bitrate,
            l.max_producer_bitrate
        );
        take!(
            "max_sessions_per_address",
            limits.max_sessions_per_address,
            l.max_sessions_per_address
        );
        take!("max_frame_size", limits.max_frame_size, l.max_frame_size);
        take!(
            "max_datagram_size",
            limits.max_datagram_size,
            l.max_datagram_size
        );
        take!(
            "max_control_message",
            limits.max_control_message,
            l.max_control_message
        );
        take!(
            "idle_timeout",
            limits.idle_timeout,
            duration("idle_timeout", l.idle_timeout)?
        );
        Ok(self)
    }
}

/// The `--config` file: the `serve` options by their flag names (with `_`), limits in a
/// `[limits]` table, durations as text ("5s"). Unknown keys are errors, so a typo does not
/// silently leave a default in place.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    certs_dir: Option<PathBuf>,
    web_root: Option<PathBuf>,
    drain: Option<String>,
    congestion_controller: Option<String>,
    video_latency_bound: Option<String>,
    audio_latency_bound: Option<String>,
    endpoints: Option<usize>,
    threads: Option<usize>,
    api_key: Option<String>,
    api_secret: Option<String>,
    limits: Option<FileLimits>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_peers_per_room: Option<usize>,
    max_rooms: Option<usize>,
    max_producers_per_peer: Option<usize>,
    max_requests_per_second: Option<u32>,
    max_producer_bitrate: Option<u64>,
    max_sessions_per_address: Option<usize>,
    max_frame_size: Option<usize>,
    max_datagram_size: Option<usize>,
    max_control_message: Option<usize>,
    idle_timeout: Option<String>,
}

/// A latency bound: a duration from 10 ms to 60 s (0 would skip every frame; a huge one
/// is no bound at all).
fn latency_bound(input: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(input).map_err(|e| e.to_string())?;
    check_latency_bound(d)
}

fn check_latency_bound(d: Duration) -> Result<Duration, String> {
    if (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "a latency bound must be between 10 ms and 60 s, not {}",
            humantime::format_duration(d)
        ))
    }
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

async fn serve(args: ServeArgs) -> Result<()> {
    let drain = args.drain;
    let config = ServerConfig {
        bind: args.bind,
        cert: args.cert,
        key: args.key,
        certs_dir: args.certs_dir,
        web_root: args.web_root,
        access: args.keys.policy()?,
        congestion_controller: args.congestion_controller,
        endpoints: args.endpoints,
        relay: RelayConfig {
            max_datagram_size: args.limits.max_datagram_size,
            max_frame_size: args.limits.max_frame_size,
            video_latency_bound: args.video_latency_bound,
            audio_latency_bound: args.audio_latency_bound,
            limits: Limits {
                max_peers_per_room: args.limits.max_peers_per_room,
                max_rooms: args.limits.max_rooms,
                max_producers_per_peer: args.limits.max_producers_per_peer,
                max_requests_per_second: args.limits.max_requests_per_second,
                max_producer_bitrate: args.limits.max_producer_bitrate,
            },
            ..RelayConfig::default()
        },
        limits: SessionLimits {
            max_control_message: args.limits.max_control_message,
            idle_timeout: args.limits.idle_timeout,
            max_sessions_per_address: args.limits.max_sessions_per_address,
            ..SessionLimits::default()
        },
        ..ServerConfig::default()
    };
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
    };
    let summary = join::run(options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
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
    Ok(())
}

/// The relay allocates and frees small buffers per packet (quinn's frames and
/// acknowledgements); mimalloc's thread-local free lists do that for less CPU than glibc's
/// malloc (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
