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
    }
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
