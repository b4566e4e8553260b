//! Configuration: embedded defaults, a TOML file, then flags and environment.
//!
//! Every key has a default so that `danmaku` with no arguments runs a
//! complete server; `danmaku.example.toml` documents each one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data: PathBuf,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// The embedded store.
    pub store: StoreConfig,
    /// Fan-out from the hub to viewers.
    pub fanout: FanoutConfig,
    /// Content limits and rate limits enforced by the guard.
    pub limits: Limits,
    /// Content rules: the sensitive-word list and the flood guard.
    pub filter: FilterConfig,
    /// Connection lifetimes.
    pub connection: ConnectionConfig,
    /// Identity: which tokens are accepted, and what anonymous clients may do.
    pub auth: AuthConfig,
    /// The broker between nodes.
    pub bus: BusConfig,
    /// This node's place in a cluster.
    pub cluster: ClusterConfig,
    /// The Bilibili live protocol: WebSocket `/sub` and a raw TCP listener.
    pub bilibili: BilibiliConfig,
    /// Cross-origin access for players on other sites.
    pub http: HttpConfig,
    /// The pages the server serves.
    pub web: WebConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            data: PathBuf::from("./danmaku-data"),
            log_format: LogFormat::Text,
            store: StoreConfig::default(),
            fanout: FanoutConfig::default(),
            limits: Limits::default(),
            filter: FilterConfig::default(),
            connection: ConnectionConfig::default(),
            auth: AuthConfig::default(),
            bus: BusConfig::default(),
            cluster: ClusterConfig::default(),
            bilibili: BilibiliConfig::default(),
            http: HttpConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where history is kept and how it commits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// A `postgres://` URL: the rooms' history lives in that PostgreSQL
    /// database, shared by every node. Unset: the embedded SQLite store in
    /// `data`.
    pub url: Option<String>,
    /// PostgreSQL only: connections for reads (history, resume, gap fill),
    /// beside the writer's own.
    pub read_connections: usize,
    /// `full`: fsync the WAL at every group commit, so an acknowledged send
    /// survives power loss. `normal`: survive a crash of the process only.
    pub synchronous: Synchronous,
    /// The most sends one group commit takes.
    pub max_batch: usize,
    /// How many sends may wait for the writer before new ones wait too.
    pub queue: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            read_connections: 4,
            synchronous: Synchronous::Full,
            max_batch: 2048,
            queue: 65_536,
        }
    }
}

/// The broker that carries events between nodes.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `redis://host:port` or `nats://host:port`. Unset: the in-process
    /// bus of a single node.
    pub url: Option<String>,
    /// The prefix of every channel, subject, key and bucket the cluster
    /// uses on the broker, so that several clusters (staging and
    /// production, say) can share one broker without hearing each other.
    pub namespace: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: None,
            namespace: "danmaku".to_owned(),
        }
    }
}

/// This node among the others.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The node's id in logs, metrics, `/healthz` and presence. Unset:
    /// the host name and the listening port (`host:7100`).
    pub node_id: Option<String>,
    /// How long a room waits for a missing id to arrive from the broker
    /// before reading it from the store, in milliseconds.
    pub reorder_ms: u64,
    /// How often the node reports its viewer counts and reads the other
    /// nodes', in milliseconds.
    pub presence_interval_ms: u64,
    /// How long a node's report counts after it stopped reporting, in
    /// seconds: a dead node leaves the counts within this (plus one
    /// interval).
    pub presence_ttl_s: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            reorder_ms: 100,
            presence_interval_ms: 2_000,
            presence_ttl_s: 10,
        }
    }
}

/// The Bilibili live protocol (docs/bilibili.md): clients that speak it
/// connect to the WebSocket `/sub`, always served, or to a raw TCP
/// listener when `tcp_listen` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BilibiliConfig {
    /// Address of the raw TCP listener (Bilibili's own port is 2243).
    /// Unset (the default): no TCP listener.
    pub tcp_listen: Option<SocketAddr>,
    /// Put before a client's numeric `roomid` to name our room: with
    /// `"bili-"`, roomid 42 is room `bili-42`. Default: none (room `42`).
    pub room_prefix: String,
    /// Largest packet a client may send, bytes (clients send only their
    /// auth packet and heartbeats).
    pub max_packet_bytes: usize,
    /// Seconds a new connection has to send its auth packet.
    pub auth_timeout_s: u64,
    /// Seconds without any packet (clients beat every 30 s) before the
    /// connection is closed.
    pub idle_timeout_s: u64,
}

impl Default for BilibiliConfig {
    fn default() -> Self {
        BilibiliConfig {
            tcp_listen: None,
            room_prefix: String::new(),
            max_packet_bytes: 16 * 1024,
            auth_timeout_s: 10,
            idle_timeout_s: 70,
        }
    }
}

/// Cross-origin (CORS) answers: players usually live on the site's own
/// domain and fetch danmaku from ours.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins that may read the player routes (XML export, DPlayer
    /// `GET`, protobuf segments, history) from a page of theirs; `"*"`:
    /// any (the default).
    pub cors_allow_origins: Vec<String>,
    /// Origins that may write from a page of theirs (DPlayer `POST`,
    /// sends). Default: none; `"*"` is refused here, writes name their
    /// origins.
    pub cors_write_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_allow_origins: vec!["*".to_owned()],
            cors_write_origins: Vec::new(),
        }
    }
}

/// The pages the server serves (docs/web.md).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// The address people reach this server at (`https://live.example`),
    /// used for the event wall's QR code. Unset: the host the wall page
    /// was loaded from, over `http`.
    pub public_url: Option<String>,
}

/// The longest `web.public_url`.
const MAX_PUBLIC_URL: usize = 200;

/// Whether `url` is an `http(s)://` address that can go into a QR code
/// and a page as it is: no spaces, quotes or angle brackets.
fn is_public_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty())
        && url.len() <= MAX_PUBLIC_URL
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'\\'))
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit.
    Full,
    /// fsync at checkpoints only.
    Normal,
}

/// How the hub batches and delivers.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    /// The longest coalescing window, in milliseconds: the most time between
    /// two frames of one busy room. A quiet room flushes at once; a busy one
    /// gathers what arrives within its window into one frame, so each write
    /// carries many danmaku.
    pub coalesce_ms: u64,
    /// The writes per second one room's frames may cost: a room's window is
    /// the time its viewers take at this rate (1 ms per 100 viewers at the
    /// default), between 1 ms and `coalesce_ms`. Small rooms get their
    /// danmaku at once; a big room's frames carry more each.
    pub writes_per_s: u64,
    /// Hot-room density control: thin what a room's viewers are sent once
    /// its danmaku arrive faster than `density_max_per_s` (everything is
    /// still stored; admins' danmaku are never thinned).
    pub density_control: bool,
    /// The danmaku per second a viewer can read: what density control
    /// lets through per room.
    pub density_max_per_s: u32,
    /// A frame is flushed early once its JSON reaches this many bytes.
    pub max_frame_bytes: usize,
    /// Frames each room keeps for viewers that are behind (the room's ring).
    /// A viewer more than this many frames behind loses the oldest ones.
    pub ring_frames: usize,
    /// Bytes a connection may have queued for its socket before it stops
    /// taking frames from the ring (and so starts to lag).
    pub max_queued_bytes: usize,
    /// A viewer that lags more than this many times within `lag_window_s`
    /// is disconnected as a slow consumer: it is not keeping up, only being
    /// skipped ahead again and again.
    pub max_lags: u32,
    /// The window over which lags are counted, seconds.
    pub lag_window_s: u64,
    /// The shortest time between two `online` frames of one room, ms.
    pub online_interval_ms: u64,
    /// A room with no viewers and no sends for this long is forgotten, s.
    pub room_idle_s: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            coalesce_ms: 20,
            writes_per_s: 100_000,
            density_control: false,
            density_max_per_s: 50,
            max_frame_bytes: 16 * 1024,
            ring_frames: 256,
            max_queued_bytes: 256 * 1024,
            max_lags: 3,
            lag_window_s: 30,
            online_interval_ms: 1000,
            room_idle_s: 60,
        }
    }
}

impl FanoutConfig {
    /// The coalescing window of a room with `viewers` viewers.
    pub fn window(&self, viewers: usize) -> Duration {
        let cap = Duration::from_millis(self.coalesce_ms.max(1));
        // Fallible: each room's flusher asks for the window of usize::MAX
        // viewers, which at 0 or 1 write per second is more seconds than a
        // Duration holds (from_secs_f64 would panic).
        let budget = Duration::try_from_secs_f64(viewers as f64 / self.writes_per_s.max(1) as f64)
            .unwrap_or(cap);
        budget.clamp(Duration::from_millis(1), cap)
    }
}

/// Content and size limits, and rate limits.
///
/// A rate limit is a token bucket: `*_burst` sends (or connections) at once,
/// refilled at `*_per_second`. A rate of `0` turns that limit off; any other
/// rate must lie between 0.001 and 1,000,000 per second, with a burst of 1
/// to 1,000,000.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest text, in characters (not bytes).
    pub max_text_chars: usize,
    /// Longest display name, in characters.
    pub max_name_chars: usize,
    /// Largest WebSocket message a client may send, bytes.
    pub max_ws_message_bytes: usize,
    /// Largest HTTP request body, bytes.
    pub max_body_bytes: usize,
    /// Largest file `POST /api/v1/rooms/{room}/import` takes, bytes.
    pub max_import_bytes: usize,
    /// Sends one WebSocket connection may have waiting for the store.
    pub max_in_flight: usize,
    /// Most danmaku one history request returns.
    pub max_history: usize,
    /// Most danmaku one protobuf segment (six minutes of video) holds; a
    /// busier window is thinned evenly over its six minutes
    /// (docs/players.md).
    pub max_segment_items: usize,
    /// Sends one user may make at once.
    pub send_burst: u32,
    /// Sends per second one user's bucket refills at (0: no per-user limit).
    pub send_per_second: f64,
    /// Sends one IP address (an IPv6 /64) may make at once, all its users
    /// together. Higher than a user's, because viewers share NAT addresses.
    pub ip_send_burst: u32,
    /// Sends per second one IP address's bucket refills at (0: no limit).
    pub ip_send_per_second: f64,
    /// New connections (WebSocket, SSE) one IP address may open at once.
    pub connect_burst: u32,
    /// New connections per second one IP address's bucket refills at (0: no
    /// limit).
    pub connect_per_second: f64,
    /// Accepted sends one room may take at once, all senders together.
    pub room_send_burst: u32,
    /// Accepted sends per second a room's bucket refills at (0: no limit).
    pub room_send_per_second: f64,
    /// Keys (users, addresses, rooms) each rate limiter, and the flood
    /// guard, remembers at most. Past it, new keys are let through without
    /// being remembered (fail open); docs/security.md tells why.
    pub max_limiter_keys: usize,
    /// Client addresses that skip every rate limit, the flood guard and the
    /// per-address connection cap, as admins do. Default: none, loopback
    /// included, so that a same-host reverse proxy or a local script is
    /// limited like anyone; a load generator on the operator's machine
    /// lists its address here or presents a `service` token. Behind a
    /// trusted proxy this matches the forwarded client address.
    pub exempt_ips: Vec<ipnet::IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 100,
            max_name_chars: 32,
            max_ws_message_bytes: 4096,
            max_body_bytes: 4096,
            max_import_bytes: 64 * 1024 * 1024,
            max_in_flight: 32,
            max_history: 1000,
            max_segment_items: 6000,
            send_burst: 3,
            send_per_second: 0.5,
            ip_send_burst: 10,
            ip_send_per_second: 5.0,
            connect_burst: 20,
            connect_per_second: 5.0,
            room_send_burst: 2000,
            room_send_per_second: 1000.0,
            max_limiter_keys: 100_000,
            exempt_ips: Vec::new(),
        }
    }
}

impl Limits {
    /// Each rate limit as (name, burst, per second), for validation.
    fn rates(&self) -> [(&'static str, u32, f64); 4] {
        [
            ("send", self.send_burst, self.send_per_second),
            ("ip_send", self.ip_send_burst, self.ip_send_per_second),
            ("connect", self.connect_burst, self.connect_per_second),
            ("room_send", self.room_send_burst, self.room_send_per_second),
        ]
    }
}

/// Content rules: the sensitive-word list and the flood guard.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// The sensitive-word list: UTF-8, one word or phrase a line, `#`
    /// comments and blank lines ignored. None: no word filter.
    pub words_file: Option<PathBuf>,
    /// What a text containing a listed word gets.
    pub action: FilterAction,
    /// How often the word list's file is checked for changes, ms.
    pub reload_interval_ms: u64,
    /// The flood guard's window, seconds (0: no flood guard).
    pub flood_window_s: u64,
    /// How many times one user may send the same text within the window.
    pub flood_repeats: u32,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            words_file: None,
            action: FilterAction::Reject,
            reload_interval_ms: 1000,
            flood_window_s: 10,
            flood_repeats: 1,
        }
    }
}

impl FilterConfig {
    /// The interval between two looks at the word list's file.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms)
    }
}

/// What the word filter does with a text that contains a listed word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Refuse the send (`blocked_content`).
    #[default]
    Reject,
    /// Accept it with each character of each match replaced by `*`.
    Mask,
}

/// Connection timings and caps.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Seconds between server pings (WebSocket ping frames, SSE comments).
    pub ping_interval_s: u64,
    /// A WebSocket client silent for this long (no frame, no pong) is closed.
    pub idle_timeout_s: u64,
    /// Seconds a socket write may make no progress before the viewer is cut.
    pub write_timeout_s: u64,
    /// Seconds an HTTP client has to send its request headers, from their
    /// first byte.
    pub header_timeout_s: u64,
    /// Seconds an HTTP connection may wait with no request in progress
    /// (before its first request, and between keep-alive requests) before
    /// it is closed.
    pub keepalive_timeout_s: u64,
    /// Seconds an HTTP client has to send a whole request body, from the
    /// end of its headers.
    pub body_timeout_s: u64,
    /// Bytes per second a request body must average, from the end of its
    /// headers, once the first 5 s have passed (0: no minimum).
    pub body_min_rate_bytes_per_s: u64,
    /// Seconds shutdown waits for connections to close before exiting.
    pub shutdown_grace_s: u64,
    /// The kernel send buffer of each connection, bytes (0: the kernel's
    /// autotuning, which lets one stalled client pin megabytes). Small
    /// buffers make a stalled viewer show up as lagging within a few frames.
    pub send_buffer_bytes: usize,
    /// Connections (HTTP, SSE, WebSocket) the server holds at most; one
    /// more is answered 503 `too_many_connections` and closed.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) holds at most. Higher
    /// than one viewer needs, because viewers share NAT addresses;
    /// `limits.exempt_ips` are not capped.
    pub max_connections_per_ip: usize,
    /// Browser origins allowed to open a WebSocket (`Origin` header, e.g.
    /// `https://live.example.com`). Empty: any. A handshake without an
    /// `Origin` (not a browser) is not affected.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies whose forwarding headers (`X-Forwarded-For`, or
    /// RFC 7239 `Forwarded: for=`) name the client: a request whose TCP peer
    /// is in one of these networks is treated as coming from the rightmost
    /// forwarded address that is not itself a trusted proxy. Empty (the
    /// default): forwarding headers are ignored, and the peer is the client.
    /// At most [`MAX_TRUSTED_PROXIES`] networks.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            ping_interval_s: 25,
            idle_timeout_s: 75,
            write_timeout_s: 15,
            header_timeout_s: 10,
            keepalive_timeout_s: 15,
            body_timeout_s: 20,
            body_min_rate_bytes_per_s: 256,
            shutdown_grace_s: 5,
            send_buffer_bytes: 64 * 1024,
            max_connections: 50_000,
            max_connections_per_ip: 500,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The most origins each `http.cors_*` list may name.
const MAX_ORIGINS: usize = 100;

/// The most networks `connection.trusted_proxies` may list: each forwarded
/// hop of every request is matched against all of them.
pub const MAX_TRUSTED_PROXIES: usize = 1000;

/// Identity: the key that verifies tokens (JWT) and what clients without
/// one may do. At most one algorithm is configured; with none, no token
/// is accepted and every client is anonymous.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The HS256 shared secret, at least 32 bytes (the SHA-256 output size).
    pub hs256_secret: Option<String>,
    /// A PEM file with the RSA public key that verifies RS256 tokens.
    pub rs256_public_key_file: Option<PathBuf>,
    /// A PEM file with the P-256 public key that verifies ES256 tokens.
    pub es256_public_key_file: Option<PathBuf>,
    /// The RSA private key (PEM) `danmaku token` signs with. The server
    /// itself never reads it: it needs the public key only.
    pub rs256_private_key_file: Option<PathBuf>,
    /// The P-256 private key (PKCS#8 PEM) `danmaku token` signs with; like
    /// the RSA one, never read by the server.
    pub es256_private_key_file: Option<PathBuf>,
    /// Whether a client without a token may watch rooms.
    pub anonymous_watch: bool,
    /// Whether a client without a token may send, under a guest id.
    pub anonymous_send: bool,
    /// Seconds of clock skew tolerated on `exp` and `nbf`, at most 300.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            rs256_private_key_file: None,
            es256_private_key_file: None,
            anonymous_watch: true,
            anonymous_send: true,
            leeway_s: 30,
        }
    }
}

impl AuthConfig {
    /// Checks that at most one algorithm is configured, that an HS256
    /// secret is long enough, that a private key goes with its public key
    /// and that the leeway is short.
    pub fn check(&self) -> Result<(), &'static str> {
        let algorithms = [
            self.hs256_secret.is_some(),
            self.rs256_public_key_file.is_some(),
            self.es256_public_key_file.is_some(),
        ];
        let checks = [
            (
                algorithms.iter().filter(|&&on| on).count() <= 1,
                "auth: configure only one of hs256_secret, rs256_public_key_file and \
                 es256_public_key_file; tokens are accepted for one algorithm only",
            ),
            (
                self.hs256_secret.as_ref().is_none_or(|s| s.len() >= 32),
                "auth.hs256_secret must be at least 32 bytes: anyone holding one token \
                 can try secrets offline, and a short one falls quickly (use e.g. \
                 `openssl rand -base64 48`)",
            ),
            (
                self.rs256_private_key_file.is_none() || self.rs256_public_key_file.is_some(),
                "auth.rs256_private_key_file needs auth.rs256_public_key_file, which \
                 selects the algorithm and checks each minted token",
            ),
            (
                self.es256_private_key_file.is_none() || self.es256_public_key_file.is_some(),
                "auth.es256_private_key_file needs auth.es256_public_key_file, which \
                 selects the algorithm and checks each minted token",
            ),
            (
                self.leeway_s <= 300,
                "auth.leeway_s must be at most 300: a long leeway keeps expired tokens alive",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg),
            None => Ok(()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of its range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys it does not name keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks ranges that serde cannot: every duration and every size that
    /// sizes memory or a queue has an upper bound (`Config::bounds`), so that
    /// no value in a file can overflow a deadline or allocate absurdly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_bounds(&self.bounds())?;
        let f = &self.fanout;
        let checks = [
            (f.max_lags >= 1, "fanout.max_lags must be at least 1"),
            (
                self.filter.flood_repeats >= 1,
                "filter.flood_repeats must be at least 1",
            ),
            (
                f.max_queued_bytes >= f.max_frame_bytes,
                "fanout.max_queued_bytes must be at least fanout.max_frame_bytes",
            ),
            (
                self.connection.send_buffer_bytes == 0 || self.connection.send_buffer_bytes >= 4096,
                "connection.send_buffer_bytes must be 0 (kernel default) or at least 4096",
            ),
            (
                self.connection.idle_timeout_s > self.connection.ping_interval_s,
                "connection.idle_timeout_s must exceed ping_interval_s",
            ),
            (
                self.connection.trusted_proxies.len() <= MAX_TRUSTED_PROXIES,
                "connection.trusted_proxies must list at most 1000 networks",
            ),
            (
                self.bilibili.room_prefix.len() <= 32
                    && crate::guard::check_room(&format!("{}0", self.bilibili.room_prefix)).is_ok(),
                "bilibili.room_prefix must be at most 32 characters of a room name ([A-Za-z0-9_.:-])",
            ),
            (
                self.http.cors_allow_origins.len() <= MAX_ORIGINS
                    && self.http.cors_write_origins.len() <= MAX_ORIGINS,
                "http.cors_allow_origins and http.cors_write_origins must list at most 100 origins",
            ),
            (
                self.web.public_url.as_deref().is_none_or(is_public_url),
                "web.public_url must be an http:// or https:// address of at most 200 characters, without spaces or quotes",
            ),
            (
                !self.http.cors_write_origins.iter().any(|o| o == "*"),
                "http.cors_write_origins must name origins (\"*\" is not allowed for writes)",
            ),
            (
                self.store
                    .url
                    .as_deref()
                    .is_none_or(|u| u.starts_with("postgres://") || u.starts_with("postgresql://")),
                "store.url must be a postgres:// URL (or unset for the embedded store)",
            ),
            (
                self.bus
                    .url
                    .as_deref()
                    .is_none_or(|u| u.starts_with("redis://") || u.starts_with("nats://")),
                "bus.url must be a redis:// or nats:// URL (or unset for one node)",
            ),
            (
                (1..=32).contains(&self.bus.namespace.len())
                    && self
                        .bus
                        .namespace
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "bus.namespace must be 1 to 32 characters of A-Z a-z 0-9 _ -",
            ),
            (
                self.cluster.node_id.as_deref().is_none_or(|id| {
                    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
                }),
                "cluster.node_id must be 1 to 64 printable ASCII characters, no spaces",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ConfigError::Invalid((*msg).to_owned()));
        }
        self.validate_guard()
    }

    /// Each bounded key with its value and its allowed range. Left
    /// unbounded on purpose: rates and counts that size nothing, where a huge
    /// value only means "no limit" (`fanout.writes_per_s`,
    /// `density_max_per_s`, `max_lags`, `filter.flood_repeats`,
    /// `connection.max_connections`, `max_connections_per_ip`);
    /// `auth.leeway_s` is bounded by [`AuthConfig::check`].
    #[rustfmt::skip]
    fn bounds(&self) -> Vec<Bound> {
        let (st, f, l) = (&self.store, &self.fanout, &self.limits);
        let (c, fl, cl) = (&self.connection, &self.filter, &self.cluster);
        vec![
            bound("store.max_batch",              st.max_batch,           1,    65_536),
            bound("store.queue",                  st.queue,               1,    1_048_576),
            bound("fanout.coalesce_ms",           f.coalesce_ms,          0,    10_000),
            bound("fanout.max_frame_bytes",       f.max_frame_bytes,      1024, 16 * MIB),
            bound("fanout.ring_frames",           f.ring_frames,          2,    65_536),
            bound("fanout.max_queued_bytes",      f.max_queued_bytes,     1024, 64 * MIB),
            bound("fanout.lag_window_s",          f.lag_window_s,         0,    DAY_S),
            bound("fanout.online_interval_ms",    f.online_interval_ms,   0,    3_600_000),
            bound("fanout.room_idle_s",           f.room_idle_s,          0,    WEEK_S),
            bound("limits.max_text_chars",        l.max_text_chars,       1,    10_000),
            bound("limits.max_name_chars",        l.max_name_chars,       0,    256),
            bound("limits.max_ws_message_bytes",  l.max_ws_message_bytes, 256,  MIB),
            bound("limits.max_body_bytes",        l.max_body_bytes,       256,  MIB),
            bound("limits.max_in_flight",         l.max_in_flight,        1,    10_000),
            bound("limits.max_history",           l.max_history,          1,    100_000),
            bound("limits.max_segment_items",     l.max_segment_items,    1,    100_000),
            bound("limits.max_limiter_keys",      l.max_limiter_keys,     1,    10_000_000),
            // governor multiplies the refill period (up to 1000 s) by the
            // burst in u64 nanoseconds: 1e6 x 1e12 ns stays below 1.8e19.
            bound("limits.send_burst",            l.send_burst,           0,    MAX_BURST),
            bound("limits.ip_send_burst",         l.ip_send_burst,        0,    MAX_BURST),
            bound("limits.connect_burst",         l.connect_burst,        0,    MAX_BURST),
            bound("limits.room_send_burst",       l.room_send_burst,      0,    MAX_BURST),
            bound("filter.reload_interval_ms",    fl.reload_interval_ms,  100,  DAY_S * 1000),
            bound("filter.flood_window_s",        fl.flood_window_s,      0,    DAY_S),
            bound("connection.ping_interval_s",   c.ping_interval_s,      1,    3_600),
            bound("connection.idle_timeout_s",    c.idle_timeout_s,       2,    DAY_S),
            // 0 would time out every write, and every request's headers.
            bound("connection.write_timeout_s",   c.write_timeout_s,      1,    DAY_S),
            bound("connection.header_timeout_s",  c.header_timeout_s,     1,    3_600),
            bound("connection.keepalive_timeout_s", c.keepalive_timeout_s, 1,   3_600),
            bound("connection.body_timeout_s",    c.body_timeout_s,       1,    3_600),
            // More than most clients' uplink would cut them all.
            bound("connection.body_min_rate_bytes_per_s", c.body_min_rate_bytes_per_s, 0, MIB),
            bound("connection.shutdown_grace_s",  c.shutdown_grace_s,     0,    3_600),
            bound("connection.send_buffer_bytes", c.send_buffer_bytes,    0,    16 * MIB),
            bound("store.read_connections",       st.read_connections,    1,    64),
            bound("cluster.reorder_ms",           cl.reorder_ms,          1,    10_000),
            bound("cluster.presence_interval_ms", cl.presence_interval_ms, 100, 60_000),
            bound("cluster.presence_ttl_s",       cl.presence_ttl_s,      1,    300),
            bound("bilibili.max_packet_bytes",    self.bilibili.max_packet_bytes, 256, MIB),
            bound("bilibili.auth_timeout_s",      self.bilibili.auth_timeout_s,   1,   300),
            bound("bilibili.idle_timeout_s",      self.bilibili.idle_timeout_s,   2,   DAY_S),
            bound("limits.max_import_bytes",      l.max_import_bytes,     1024, GIB),
        ]
    }

    /// Checks the rate limits and the `[auth]` section.
    fn validate_guard(&self) -> Result<(), ConfigError> {
        for (name, burst, rate) in self.limits.rates() {
            // The bounds keep governor's replenish period (1/rate) between
            // 1 µs and 1000 s: representable, and not a typo.
            let rate_ok = rate == 0.0 || (0.001..=1_000_000.0).contains(&rate);
            if !rate_ok || (rate > 0.0 && burst == 0) {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name}_per_second must be 0 (no limit) or 0.001 to 1000000, \
                     with limits.{name}_burst at least 1"
                )));
            }
        }
        self.auth
            .check()
            .map_err(|msg| ConfigError::Invalid(msg.to_owned()))
    }
}

/// One MiB, for byte sizes.
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// One day, in seconds.
const DAY_S: u64 = 24 * 3600;
/// One week, in seconds.
const WEEK_S: u64 = 7 * DAY_S;
/// The largest `limits.*_burst`.
const MAX_BURST: u64 = 1_000_000;

/// A key, its value and the inclusive range it must lie in.
struct Bound {
    key: &'static str,
    value: u64,
    lo: u64,
    hi: u64,
}

/// `key`, whose value is `value`, must lie in `lo..=hi`.
fn bound(key: &'static str, value: impl TryInto<u64>, lo: u64, hi: u64) -> Bound {
    // Only a usize past u64 fails to convert: out of range either way.
    let value = value.try_into().unwrap_or(u64::MAX);
    Bound { key, value, lo, hi }
}

/// The first key out of its range, as an error that names the key and the
/// range.
fn check_bounds(bounds: &[Bound]) -> Result<(), ConfigError> {
    match bounds.iter().find(|b| !(b.lo..=b.hi).contains(&b.value)) {
        Some(b) => Err(ConfigError::Invalid(format!(
            "{} must be between {} and {}",
            b.key, b.lo, b.hi
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../danmaku.example.toml");
        let cfg = Config::from_toml(text).expect("example config parses");
        cfg.validate().unwrap();
        let def = Config::default();
        assert_eq!(cfg.listen, def.listen);
        assert_eq!(cfg.limits.max_text_chars, def.limits.max_text_chars);
        assert_eq!(cfg.fanout.coalesce_ms, def.fanout.coalesce_ms);
        assert_eq!(cfg.fanout.writes_per_s, def.fanout.writes_per_s);
        assert_eq!(cfg.limits.rates(), def.limits.rates());
        assert_eq!(cfg.limits.max_limiter_keys, def.limits.max_limiter_keys);
        assert_eq!(cfg.limits.exempt_ips, def.limits.exempt_ips);
        let (c, d) = (&cfg.connection, &def.connection);
        assert_eq!(
            (
                c.header_timeout_s,
                c.keepalive_timeout_s,
                c.body_timeout_s,
                c.body_min_rate_bytes_per_s
            ),
            (
                d.header_timeout_s,
                d.keepalive_timeout_s,
                d.body_timeout_s,
                d.body_min_rate_bytes_per_s
            )
        );
        assert!(
            def.limits.exempt_ips.is_empty(),
            "the default exempts nobody"
        );
        assert_eq!(c.trusted_proxies, d.trusted_proxies);
        assert!(d.trusted_proxies.is_empty(), "the default trusts no proxy");
        let (f, d) = (&cfg.filter, &def.filter);
        assert_eq!(
            (
                &f.words_file,
                f.action,
                f.reload_interval_ms,
                f.flood_window_s,
                f.flood_repeats
            ),
            (
                &d.words_file,
                d.action,
                d.reload_interval_ms,
                d.flood_window_s,
                d.flood_repeats
            )
        );
        let (a, d) = (&cfg.auth, &def.auth);
        assert_eq!(
            (a.anonymous_watch, a.anonymous_send, a.leeway_s),
            (d.anonymous_watch, d.anonymous_send, d.leeway_s)
        );
        assert!(cfg.auth.hs256_secret.is_none() && cfg.auth.rs256_public_key_file.is_none());
    }

    #[test]
    fn production_example_parses_and_is_locked_down() {
        let text = include_str!("../danmaku.production.toml");
        let cfg = Config::from_toml(text).expect("production example parses");
        cfg.validate().unwrap();
        assert!(!cfg.auth.anonymous_send && cfg.auth.hs256_secret.is_some());
        assert!(cfg.limits.exempt_ips.is_empty());
        assert!(cfg.fanout.density_control && cfg.filter.words_file.is_some());
        assert!(!cfg.connection.allowed_origins.is_empty());
    }

    #[test]
    fn a_rooms_window_grows_with_its_viewers_up_to_the_cap() {
        let f = FanoutConfig::default();
        assert_eq!(f.window(3), Duration::from_millis(1));
        assert_eq!(f.window(1_000), Duration::from_millis(10));
        assert_eq!(f.window(10_000), Duration::from_millis(20));
    }

    #[test]
    fn rate_limits_are_validated() {
        let valid = |text: &str| Config::from_toml(text).unwrap().validate().is_ok();
        assert!(valid("[limits]\nsend_per_second = 0\nsend_burst = 0"));
        assert!(valid("[limits]\nroom_send_per_second = 0.25"));
        assert!(!valid("[limits]\nsend_per_second = -1"));
        assert!(!valid("[limits]\nip_send_per_second = nan"));
        assert!(!valid("[limits]\nconnect_per_second = 1e9"));
        assert!(!valid("[limits]\nsend_burst = 0"));
        assert!(!valid("[filter]\nflood_repeats = 0"));
        let cfg = Config::from_toml("[filter]\naction = \"mask\"\nwords_file = \"w.txt\"").unwrap();
        assert_eq!(cfg.filter.action, FilterAction::Mask);
        assert_eq!(cfg.filter.words_file.as_deref(), Some(Path::new("w.txt")));
    }

    #[test]
    fn auth_keys_are_checked() {
        let invalid = |text: &str| Config::from_toml(text).unwrap().validate().is_err();
        let secret = "hs256_secret = \"0123456789abcdef0123456789abcdef\"";
        assert!(!invalid(&format!("[auth]\n{secret}")));
        assert!(invalid("[auth]\nhs256_secret = \"too short\""));
        assert!(invalid(&format!(
            "[auth]\n{secret}\nrs256_public_key_file = \"k.pem\""
        )));
        assert!(invalid("[auth]\nes256_private_key_file = \"k.pem\""));
        assert!(invalid("[auth]\nleeway_s = 301"));
    }

    /// Every bounded key with its range.
    fn bounds() -> Vec<(&'static str, u64, u64)> {
        let bounds = Config::default().bounds();
        bounds.iter().map(|b| (b.key, b.lo, b.hi)).collect()
    }

    /// A config of `key = value` lines (TOML dotted keys).
    fn config_of(lines: &[(&str, String)]) -> Config {
        let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        Config::from_toml(&text).expect("parses")
    }

    /// Why `validate` refuses such a config, if it does.
    fn refusal(lines: &[(&str, String)]) -> Option<String> {
        config_of(lines).validate().err().map(|e| e.to_string())
    }

    #[test]
    fn the_bounds_are_the_documented_ones() {
        // docs/protocol.md is the second statement of each range: a bound
        // changed in code alone fails here.
        let doc = include_str!("../docs/protocol.md");
        for (key, _, hi) in bounds() {
            // The row whose first cell names the key.
            let row = doc
                .lines()
                .find(|l| {
                    l.split('|')
                        .nth(1)
                        .is_some_and(|k| k.contains(&format!("`{key}`")))
                })
                .unwrap_or_else(|| panic!("no row for {key} in docs/protocol.md"));
            assert!(row.contains(&hi.to_string()), "{key}'s row lacks {hi}");
        }
    }

    #[test]
    fn a_value_out_of_its_range_is_refused_naming_the_key() {
        for (key, lo, hi) in bounds() {
            let mut values = vec![hi + 1];
            // What a typo looks like. u32 keys do not even parse it.
            if !key.contains("burst") {
                values.push(i64::MAX as u64);
            }
            values.extend(lo.checked_sub(1));
            for value in values {
                let err = refusal(&[(key, value.to_string())])
                    .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
                let expected = format!("{key} must be between {lo} and {hi}");
                assert!(err.contains(&expected), "{key} = {value}: {err}");
            }
        }
    }

    #[test]
    fn every_key_at_its_bound_is_accepted_and_starts() {
        use crate::guard::filter::FloodGuard;
        use crate::guard::limits::RateLimits;
        use std::time::Instant;
        let rates = ["send", "ip_send", "connect", "room_send"];
        // All at the top, with the slowest rates (the longest refill
        // periods, times the largest bursts).
        let mut top: Vec<_> = bounds()
            .into_iter()
            .map(|(k, _, hi)| (k, hi.to_string()))
            .collect();
        let slowest = rates.map(|r| format!("limits.{r}_per_second"));
        top.extend(slowest.iter().map(|k| (k.as_str(), "0.001".to_owned())));
        assert_eq!(refusal(&top), None);
        // All at the bottom, with the rate limits off (their bursts are 0).
        let mut bottom: Vec<_> = bounds()
            .into_iter()
            .map(|(k, lo, _)| (k, lo.to_string()))
            .collect();
        bottom.extend(slowest.iter().map(|k| (k.as_str(), "0".to_owned())));
        assert_eq!(refusal(&bottom), None);

        // What startup builds from the top values does not panic.
        let cfg = config_of(&top);
        let limits = RateLimits::new(&cfg.limits);
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        assert!(limits.check_send("u", ip, "r").is_ok());
        let flood = FloodGuard::new(&cfg.filter, cfg.limits.max_limiter_keys).unwrap();
        assert!(flood.check("u", "hi").is_ok());
        assert_eq!(cfg.fanout.window(usize::MAX), Duration::from_secs(10));
        // Nor does any deadline a duration key makes: `Instant + Duration`
        // panics on overflow.
        let now = Instant::now();
        for bound in cfg.bounds() {
            let duration = match bound.key.rsplit('_').next() {
                Some("ms") => Duration::from_millis(bound.value),
                Some("s") => Duration::from_secs(bound.value),
                _ => continue,
            };
            assert!(now.checked_add(duration).is_some(), "{}", bound.key);
        }
    }

    #[test]
    fn trusted_proxies_are_networks_and_bounded() {
        let cfg = Config::from_toml(
            "[connection]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1/128\"]",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connection.trusted_proxies.len(), 3);
        assert!(Config::from_toml("[connection]\ntrusted_proxies = [\"nginx\"]").is_err());
        let list = |n: usize| {
            let nets: Vec<String> = (0..n)
                .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
                .collect();
            let text = format!("[connection]\ntrusted_proxies = [{}]", nets.join(","));
            Config::from_toml(&text).unwrap().validate()
        };
        assert!(list(MAX_TRUSTED_PROXIES).is_ok());
        let err = list(MAX_TRUSTED_PROXIES + 1).unwrap_err().to_string();
        assert!(err.contains("connection.trusted_proxies"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("listne = \"1.2.3.4:5\"").is_err());
        assert!(Config::from_toml("[fanout]\ncoalesce = 3").is_err());
    }

    #[test]
    fn the_example_cluster_configs_are_valid_and_share_the_machine() {
        for (i, text) in [
            include_str!("../deploy/cluster/node-1.toml"),
            include_str!("../deploy/cluster/node-2.toml"),
            include_str!("../deploy/cluster/node-3.toml"),
        ]
        .into_iter()
        .enumerate()
        {
            let c = Config::from_toml(text).unwrap();
            c.validate().unwrap();
            assert_eq!(
                c.cluster.node_id.as_deref(),
                Some(format!("node-{}", i + 1).as_str())
            );
            assert_eq!(
                c.fanout.writes_per_s,
                FanoutConfig::default().writes_per_s / 3
            );
        }
    }
}
