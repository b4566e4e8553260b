//! `danmaku admin`: the moderation API from the command line.
//!
//! Each subcommand is one request; the answer is printed as JSON (`{"ok":
//! true}` for the actions the server answers with 204). A refusal exits
//! non-zero with the server's error on stderr.

use reqwest::Method;
use serde_json::{json, Value};

use super::DEFAULT_URL;

/// Options of `danmaku admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The server's base URL.
    #[arg(long, default_value = DEFAULT_URL, env = "DANMAKU_URL")]
    url: String,
    /// An admin token (see `danmaku token --role admin`).
    #[arg(long, env = "DANMAKU_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Recall a danmaku: delete it and hide it from viewers.
    Recall {
        /// The room.
        room: String,
        /// The danmaku id.
        id: u64,
    },
    /// Mute a user, in one room or everywhere.
    Mute {
        /// Only in this room [default: everywhere].
        #[arg(long)]
        room: Option<String>,
        /// The user id.
        user: String,
        /// For how long.
        seconds: u64,
    },
    /// Lift a mute.
    Unmute {
        /// The room of the mute [default: the mute everywhere].
        #[arg(long)]
        room: Option<String>,
        /// The user id.
        user: String,
    },
    /// List active mutes, of one room or everywhere.
    Mutes {
        /// This room's mutes [default: the mutes everywhere].
        #[arg(long)]
        room: Option<String>,
    },
    /// Ban an address from sending and watching.
    Ban {
        /// The address.
        ip: std::net::IpAddr,
        /// For how long [default: for good].
        seconds: Option<u64>,
    },
    /// Lift a ban.
    Unban {
        /// The address.
        ip: std::net::IpAddr,
    },
    /// List active bans.
    Bans,
    /// Show a room's settings, or change them with flags.
    Room {
        /// The room.
        room: String,
        /// Refuse sends (viewers may still watch).
        #[arg(long, conflicts_with = "reopen")]
        close: bool,
        /// Take sends again.
        #[arg(long)]
        reopen: bool,
        /// One send per user per this many seconds (0: off).
        #[arg(long)]
        slow: Option<u32>,
        /// Hold non-admin sends for approval.
        #[arg(long, value_parser = ["on", "off"])]
        premod: Option<String>,
    },
    /// List a room's held sends.
    Held {
        /// The room.
        room: String,
    },
    /// Approve a held send: store and deliver it.
    Approve {
        /// The room.
        room: String,
        /// The held id.
        held: u64,
    },
    /// Reject a held send.
    Reject {
        /// The room.
        room: String,
        /// The held id.
        held: u64,
    },
    /// The audit log, newest first.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only entries with an id below this.
        #[arg(long)]
        before: Option<u64>,
    },
}

impl Action {
    /// The request: method, path and body.
    fn request(self) -> (Method, String, Option<Value>) {
        let rooms = "/api/v1/admin/rooms";
        match self {
            Action::Recall { room, id } => (
                Method::DELETE,
                format!("/api/v1/rooms/{room}/danmaku/{id}"),
                None,
            ),
            Action::Mute {
                room,
                user,
                seconds,
            } => (
                Method::POST,
                mutes(room.as_deref()),
                Some(json!({ "user": user, "seconds": seconds })),
            ),
            Action::Unmute { room, user } => (
                Method::DELETE,
                format!("{}/{user}", mutes(room.as_deref())),
                None,
            ),
            Action::Mutes { room } => (Method::GET, mutes(room.as_deref()), None),
            Action::Ban { ip, seconds } => (
                Method::POST,
                "/api/v1/admin/bans".into(),
                Some(json!({ "ip": ip, "seconds": seconds })),
            ),
            Action::Unban { ip } => (Method::DELETE, format!("/api/v1/admin/bans/{ip}"), None),
            Action::Bans => (Method::GET, "/api/v1/admin/bans".into(), None),
            Action::Room {
                room,
                close,
                reopen,
                slow,
                premod,
            } => {
                let mut patch = serde_json::Map::new();
                if close || reopen {
                    patch.insert("closed".into(), close.into());
                }
                if let Some(s) = slow {
                    patch.insert("slow_mode_s".into(), s.into());
                }
                if let Some(p) = premod {
                    patch.insert("premod".into(), (p == "on").into());
                }
                let path = format!("{rooms}/{room}");
                if patch.is_empty() {
                    (Method::GET, path, None)
                } else {
                    (Method::PATCH, path, Some(patch.into()))
                }
            }
            Action::Held { room } => (Method::GET, format!("{rooms}/{room}/held"), None),
            Action::Approve { room, held } => (
                Method::POST,
                format!("{rooms}/{room}/held/{held}/approve"),
                None,
            ),
            Action::Reject { room, held } => (
                Method::POST,
                format!("{rooms}/{room}/held/{held}/reject"),
                None,
            ),
            Action::Audit { limit, before } => {
                let before = before.map_or(String::new(), |b| format!("&before={b}"));
                (
                    Method::GET,
                    format!("/api/v1/admin/audit?limit={limit}{before}"),
                    None,
                )
            }
        }
    }
}

fn mutes(room: Option<&str>) -> String {
    match room {
        Some(room) => format!("/api/v1/admin/rooms/{room}/mutes"),
        None => "/api/v1/admin/mutes".into(),
    }
}

/// Makes the request and prints the answer as JSON.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let (method, path, body) = args.action.request();
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(&args.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let text = super::answer(req, &url).await?;
    if text.is_empty() {
        println!("{}", json!({ "ok": true }));
    } else {
        println!("{text}");
    }
    Ok(())
}
