//! `danmaku token`: mint a token (JWT) from the configured key.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::Config;
use crate::guard::auth::{mint, Claims, Role};

/// Options of `danmaku token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// The display name.
    #[arg(long)]
    name: Option<String>,
    /// The role.
    #[arg(long, value_enum, default_value_t = Role::Viewer)]
    role: Role,
    /// How long the token lives: 90s, 15m, 1h, 2d or plain seconds.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// Comma-separated room patterns the token admits; `*` matches any
    /// characters [default: every room].
    #[arg(long, value_delimiter = ',')]
    rooms: Option<Vec<String>>,
    /// TOML config file whose [auth] section holds the key.
    #[arg(long, env = "DANMAKU_CONFIG")]
    config: Option<PathBuf>,
}

/// Mints the token and prints it alone on stdout.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.validate()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: args.user,
        name: args.name,
        role: args.role,
        rooms: args
            .rooms
            .map(|rooms| rooms.iter().map(|r| r.trim().to_owned()).collect()),
        exp: now.saturating_add(args.ttl),
    };
    let token = mint(&config.auth, &claims)?;
    println!("{token}");
    Ok(())
}

/// Parses a lifetime: a positive number of seconds, optionally followed by
/// `s`, `m`, `h` or `d`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("expected a number followed by s, m, h or d, e.g. 15m".into()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&secs| secs > 0)
        .ok_or_else(|| "expected a positive number of seconds, minutes, hours or days".into())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl() {
        let ok = [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("2d", 172_800),
        ];
        for (text, secs) in ok {
            assert_eq!(parse_ttl(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "1w",
            "1.5h",
            "-1",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
