//! The `synapse-sfu` command: `serve` (the default), `join`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use synapse_sfu::client::join::{self, JoinOptions};
use synapse_sfu::client::{ClientOptions, Verification};
use synapse_sfu::server::{Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "synapse-sfu",
    version,
    about = "A selective forwarding unit for audio and video over WebTransport"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Join a room: publish audio and video, receive everyone else, report.
    Join(JoinArgs),
    /// Measure forwarding latency, delivery and cost, beside a direct QUIC link and raw UDP.
    Bench(BenchArgs),
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
    /// Synthetic video bitrate per publisher, bits per second.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    video_bitrate: u64,
    /// Synthetic video frame rate.
    #[arg(long, global = true, default_value_t = 30)]
    fps: u32,
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
    },
    /// R rooms of P audio-only peers.
    Rooms {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        peers: usize,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
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
    /// /certificate.sha256, falling back to the system's roots.
    #[arg(long)]
    cert_hash: Option<String>,
    /// Trust the system's root certificates (a relay with a real certificate).
    #[arg(long, conflicts_with = "cert_hash")]
    native_roots: bool,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            init_logging("info");
            serve(ServeArgs::parse_from_env()).await
        }
        Some(Command::Serve(args)) => {
            init_logging("info");
            serve(args).await
        }
        Some(Command::Join(args)) => {
            init_logging("warn");
            run_join(args).await
        }
        Some(Command::Bench(args)) => {
            init_logging("warn");
            run_bench(args).await
        }
    }
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
        BenchScenario::Meeting { peers } => (Scenario::Meeting { peers }, None),
        BenchScenario::Rooms { rooms, peers } => (Scenario::Rooms { rooms, peers }, None),
    };
    let options = BenchOptions {
        scenario,
        duration: args.duration,
        shape: Shape {
            video_bitrate: args.video_bitrate,
            fps: args.fps,
            ..Shape::default()
        },
        url: args.url,
        cert_hash: args.cert_hash,
        relay_bin: args.relay_bin,
        baselines: !args.no_baselines,
        progress: !args.quiet,
    };
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
    fn parse_from_env() -> Self {
        #[derive(Parser)]
        struct Bare {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Bare::parse_from(["synapse-sfu"]).serve
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = ServerConfig {
        bind: args.bind,
        cert: args.cert,
        key: args.key,
        certs_dir: args.certs_dir,
        web_root: args.web_root,
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
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown();
    Ok(())
}

async fn run_join(args: JoinArgs) -> Result<()> {
    let verification = match (args.cert_hash, args.native_roots) {
        (Some(hash), _) => Verification::Pin(hash),
        (None, true) => Verification::NativeRoots,
        (None, false) => Verification::FetchPin,
    };
    let options = JoinOptions {
        client: ClientOptions::new(args.url, verification),
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
            println!(
                "  received {:<6} {:<14} {:>7} frames {:>10} bytes {:>5} gaps  from {:<12} latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
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
