//! The server under test: one the bench starts, or one at `--url`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// The server a scenario runs against.
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Keeps the temporary directory (data, and the bench's config) until
    /// the server stops.
    _data: Option<tempfile::TempDir>,
}

/// The config of a server the bench starts without `--server-config`: the
/// bench's own connections (from 127.0.0.0/8) skip the rate limits and the
/// per-address connection cap, which nobody skips by default, so that the
/// figures measure the server.
const EXEMPT_LOOPBACK: &str = "[limits]\nexempt_ips = [\"127.0.0.0/8\", \"::1/128\"]\n";

impl Target {
    /// Starts a server (this binary) on an ephemeral port with a temporary
    /// data directory and `config` (as is), or else one that exempts
    /// loopback from its limits; or resolves `url`.
    pub async fn start(url: Option<&str>, config: Option<&Path>) -> anyhow::Result<Target> {
        if let Some(url) = url {
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let addr = host
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {host}"))?
                .next()
                .context("no address")?;
            return Ok(Target {
                addr,
                child: None,
                _data: None,
            });
        }
        let data = tempfile::tempdir()?;
        let config = match config {
            Some(config) => config.to_owned(),
            None => {
                let own = data.path().join("bench.toml");
                std::fs::write(&own, EXEMPT_LOOPBACK)?;
                own
            }
        };
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path().join("data"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start the server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next_line()
            .await?
            .context("the server printed nothing")?;
        let Some(addr) = first.strip_prefix("danmaku listening on http://") else {
            bail!("unexpected server output: {first}");
        };
        let addr = addr.parse()?;
        // Drain the rest of its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Target {
            addr,
            child: Some(child),
            _data: Some(data),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// The server's resident memory, bytes (null for a server at `--url`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The server's open file descriptors (null for a server at `--url`).
    pub fn open_fds(&self) -> Option<u64> {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?;
        Some(fds.count() as u64)
    }

    /// The server's CPU time so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 11 and 12 here.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / TICKS_PER_SECOND)
    }

    /// Stops a server the bench started (SIGTERM, then waits).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
        }
    }
}
