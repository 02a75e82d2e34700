//! The `synapse-sfu` command: `serve` (the default), `join`, `bench`, `token`, `shaper`.
//!
//! The command line, logging and the runtime; each command other than `serve` has its
//! flags and output in a module of `cli`. The work is the library's (`serve`'s options are
//! [`synapse_sfu::config::ServeConfig`], shared with its config file).

mod cli;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::bench::{BenchArgs, run_bench};
use cli::join::{JoinArgs, run_join};
use cli::shaper::{ShaperArgs, run_shaper};
use cli::token::{TokenArgs, mint_token};
use synapse_sfu::config::ServeConfig;
use synapse_sfu::server::Server;

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
/// The relay allocates and frees small buffers per packet (quinn's frames and
/// acknowledgements); mimalloc's thread-local free lists do that for less CPU than glibc's
/// malloc (docs/BENCHMARKS.md). Without the `mimalloc` feature the system's malloc serves,
/// for heap profilers that hook it (heaptrack, valgrind).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
