//! `danmaku send`: one danmaku over HTTP.

use serde_json::json;

use super::DEFAULT_URL;

/// Options of `danmaku send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The server's base URL.
    #[arg(long, default_value = DEFAULT_URL, env = "DANMAKU_URL")]
    url: String,
    /// The room to send to.
    #[arg(long)]
    room: String,
    /// scroll, top, bottom or reverse.
    #[arg(long)]
    mode: Option<String>,
    /// Colour as #rrggbb.
    #[arg(long)]
    color: Option<String>,
    /// Font size in pixels.
    #[arg(long)]
    size: Option<u16>,
    /// Video time offset in seconds.
    #[arg(long)]
    vt: Option<f64>,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// The text.
    text: String,
}

/// Sends and prints the stored danmaku as JSON.
pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/v1/rooms/{}/danmaku",
        args.url.trim_end_matches('/'),
        args.room
    );
    let mut body = json!({ "text": args.text });
    let fields = [
        ("mode", args.mode.map(Into::into)),
        ("color", args.color.map(Into::into)),
        ("size", args.size.map(Into::into)),
        ("vt", args.vt.map(Into::into)),
        ("name", args.name.map(Into::into)),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    let text = super::answer(reqwest::Client::new().post(&url).json(&body), &url).await?;
    println!("{text}");
    Ok(())
}
