//! `danmaku tail`: print a room's danmaku as they arrive, reconnecting with
//! `since` so that nothing is missed or printed twice.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{ws_url, DEFAULT_URL};
use crate::danmaku::Danmaku;

/// Options of `danmaku tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The server's base URL.
    #[arg(long, default_value = DEFAULT_URL, env = "DANMAKU_URL")]
    url: String,
    /// The room to watch.
    #[arg(long)]
    room: String,
    /// First print every stored danmaku after this id.
    #[arg(long)]
    since: Option<u64>,
    /// Print each danmaku as a JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Incoming {
    Danmaku {
        items: Vec<Danmaku>,
    },
    Lagged {
        dropped: u64,
    },
    #[serde(other)]
    Other,
}

/// Watches until interrupted; reconnects when the server goes away.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut since = args.since;
    let mut backoff = Duration::from_millis(500);
    // A server that cannot be reached at all is an error; one that goes
    // away later (a restart) is waited for.
    let mut connected_once = false;
    loop {
        let mut url = format!(
            "{}/ws?room={}",
            ws_url(args.url.trim_end_matches('/')),
            args.room
        );
        if let Some(id) = since {
            url.push_str(&format!("&since={id}"));
        }
        let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
            Ok(ok) => ok,
            Err(e) if !connected_once => {
                return Err(e).with_context(|| format!("cannot connect to {url}"));
            }
            Err(e) => {
                eprintln!("tail: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(15));
                continue;
            }
        };
        connected_once = true;
        backoff = Duration::from_millis(500);
        while let Some(msg) = ws.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    eprintln!("tail: server closed: {frame:?}");
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("tail: {e}");
                    break;
                }
            };
            match serde_json::from_str::<Incoming>(&text) {
                Ok(Incoming::Danmaku { items }) => {
                    for d in items {
                        since = Some(d.id);
                        if args.json {
                            println!("{}", serde_json::to_string(&d)?);
                        } else {
                            println!("#{} {}: {}", d.id, d.name, d.text);
                        }
                    }
                }
                Ok(Incoming::Lagged { dropped }) => {
                    eprintln!("tail: lagged, {dropped} danmaku skipped")
                }
                _ => {}
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
