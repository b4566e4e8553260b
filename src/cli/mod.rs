//! The `danmaku` command line: `serve` (the default), `send`, `tail`,
//! `bench`, `token`, `admin`, `import` and `export`.

mod admin;
mod send;
mod serve;
mod tail;
mod token;
mod transfer;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// A real-time danmaku (bullet comment) server and its clients.
#[derive(Debug, Parser)]
#[command(name = "danmaku", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Send one danmaku over HTTP and print the stored danmaku.
    Send(send::SendArgs),
    /// Print a room's danmaku as they arrive.
    Tail(tail::TailArgs),
    /// Run a load-generating benchmark scenario (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Mint a token (JWT) from the configured key and print it (see docs/auth.md).
    Token(token::TokenArgs),
    /// Moderate: recall, mute, ban, room settings, held sends, audit log.
    Admin(admin::AdminArgs),
    /// Load a bilibili XML or JSON lines file into a room (admins).
    Import(transfer::ImportArgs),
    /// Write a room's history as bilibili XML or JSON lines.
    Export(transfer::ExportArgs),
}

/// Options of `danmaku serve`; each overrides the config file.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7100].
    #[arg(long, env = "DANMAKU_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory [default: ./danmaku-data].
    #[arg(long, env = "DANMAKU_DATA")]
    pub data: Option<PathBuf>,
    /// TOML config file (see danmaku.example.toml).
    #[arg(long, env = "DANMAKU_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// PostgreSQL URL of a cluster's shared store [default: the embedded
    /// SQLite store in the data directory].
    #[arg(long, env = "DANMAKU_STORE_URL")]
    pub store_url: Option<String>,
    /// Redis or NATS URL of a cluster's broker [default: none, one node].
    #[arg(long, env = "DANMAKU_BUS_URL")]
    pub bus_url: Option<String>,
    /// This node's id [default: host name and port].
    #[arg(long, env = "DANMAKU_NODE_ID")]
    pub node_id: Option<String>,
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            None => serve::run(ServeArgs::from_env()).await,
            Some(Command::Serve(args)) => serve::run(args).await,
            Some(Command::Send(args)) => send::run(args).await,
            Some(Command::Tail(args)) => tail::run(args).await,
            Some(Command::Bench(args)) => crate::bench::run(args).await,
            Some(Command::Token(args)) => token::run(args),
            Some(Command::Admin(args)) => admin::run(args).await,
            Some(Command::Import(args)) => transfer::import(args).await,
            Some(Command::Export(args)) => transfer::export(args).await,
        }
    }
}

impl ServeArgs {
    /// The options when no subcommand is given: only the environment.
    fn from_env() -> ServeArgs {
        #[derive(Parser)]
        struct EnvOnly {
            #[command(flatten)]
            args: ServeArgs,
        }
        EnvOnly::parse_from(["danmaku"]).args
    }
}

/// The WebSocket URL of a server's HTTP URL. The clients speak plain HTTP
/// (they are built without TLS): put a TLS-terminating proxy in front.
fn ws_url(http: &str) -> String {
    match http.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => http.to_owned(),
    }
}

/// The default server URL of the client commands.
const DEFAULT_URL: &str = "http://127.0.0.1:7100";

/// Sends a request to the server at `url` (for `send`, `admin` and
/// `import`) and returns the answer's text, or an error carrying the
/// status and the server's error body when it was refused.
async fn answer(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let res = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = res.status();
    let text = res.text().await.context("cannot read the answer")?;
    if !status.is_success() {
        anyhow::bail!("{status}: {text}");
    }
    Ok(text)
}
