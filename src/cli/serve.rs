//! `danmaku serve`: configuration, logging, signals, and the server.

use std::io::Write;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServeArgs;
use crate::config::{Config, LogFormat};
use crate::node::Node;
use crate::transport::{bilibili, server, App};

/// Starts the server and runs it until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data = data;
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(url) = args.store_url {
        config.store.url = Some(url);
    }
    if let Some(url) = args.bus_url {
        config.bus.url = Some(url);
    }
    if let Some(id) = args.node_id {
        config.cluster.node_id = Some(id);
    }
    config.validate()?;
    init_logging(config.log_format);

    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // The default node id names the port actually bound (`--listen :0`).
    config.listen = addr;
    // Bound before the node starts, like the HTTP port, so that a port in
    // use fails the start instead of a running server.
    let bilibili_tcp = match config.bilibili.tcp_listen {
        Some(at) => {
            let tcp =
                listen(at).with_context(|| format!("cannot listen for bilibili tcp on {at}"))?;
            Some((tcp.local_addr()?, tcp))
        }
        None => None,
    };
    let data = config.data.clone();
    let place = match (&config.store.url, &config.bus.url) {
        (None, None) => format!("data in {}", data.display()),
        (store, bus) => format!(
            "store.url {}, bus.url {}",
            store.as_deref().map_or_else(|| "unset".to_owned(), redact),
            bus.as_deref().map_or_else(|| "unset".to_owned(), redact)
        ),
    };
    let node = Node::start(config)
        .await
        .with_context(|| format!("cannot start ({place})"))?;
    // Listen for the signals before the banner: whoever reads the banner may
    // send SIGTERM at once, and a signal that arrives before its handler is
    // installed takes the default action and kills the process mid-way.
    let signals = Signals::install()?;
    // Printed on stdout, not logged: scripts and tests read the address
    // here. A closed stdout is no reason to stop serving, so errors are ignored.
    let banner = format!(
        "danmaku listening on http://{addr}\n  page       http://{addr}/\n  \
         admin      http://{addr}/admin\n  \
         websocket  ws://{addr}/ws?room=lobby\n  sse        http://{addr}/api/v1/rooms/lobby/stream\n  \
         bilibili   ws://{addr}/sub{}\n  metrics    http://{addr}/metrics\n  data       {}\n",
        bilibili_tcp
            .as_ref()
            .map_or_else(String::new, |(at, _)| format!(", tcp {at}")),
        data.display()
    );
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    tracing::info!(%addr, data = %data.display(), "serving");

    let app = App {
        node,
        tasks: TaskTracker::new(),
    };
    let stop_accepting = CancellationToken::new();
    if let Some((at, tcp)) = bilibili_tcp {
        tracing::info!(%at, "bilibili tcp listening on {at}");
        // Stops accepting at the signal, with the HTTP listener; its
        // connections are tasks the server's shutdown waits for.
        let stopped = stop_accepting.clone().cancelled_owned();
        app.tasks
            .spawn(bilibili::serve_tcp(tcp, app.clone(), stopped));
    }
    let shutdown = async move {
        signals.received().await;
        stop_accepting.cancel();
    };
    server::run(app, listener, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// A URL without its user and password, for messages.
fn redact(url: &str) -> String {
    // `scheme://user:password@host…` is shown as `scheme://host…`.
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Binds the listening socket with a deep accept queue: after a restart
/// every viewer reconnects at once, and a short queue turns that burst into
/// dropped SYNs and one-second client retries.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    const BACKLOG: u32 = 4096;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only the first call installs a subscriber; later ones (tests) keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {})
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn received(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
