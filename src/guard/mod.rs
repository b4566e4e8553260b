//! The guard: everything a send or a subscription must pass before it reaches
//! the store or the hub.
//!
//! Checks live here, at the edge, so that the store and the hub can trust
//! what they are handed. The transports turn a request into a [`Sender`]
//! ([`Guard::identify`]: a verified token or a guest), then the node asks
//! the [`Guard`] whether that sender may watch ([`Guard::admit_viewer`]) or
//! send ([`Guard::check_send`]).
//!
//! Layout: `send.rs` is what a send must be (pure checks), `auth.rs` who is
//! asking, `limits.rs` how often, `filter/` what the text may say. The
//! moderators' rules (bans, mutes, room settings, held sends) live in
//! [`crate::moderation`]: the guard asks the node's [`Moderator`], which
//! owns that state.

pub mod auth;
mod connections;
pub mod filter;
mod forwarded;
pub mod limits;
mod send;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::{Config, Limits};
use crate::danmaku::NewDanmaku;
use crate::error::{ApiError, ErrorCode};
use crate::moderation::{slow_mode_refused, Moderation, Moderator, Verdict};
use auth::{Authenticator, Identity, SetupError};
use filter::{FilterError, FilterHandle, FloodGuard};
use limits::shared::{SharedLimits, SharedLimitsError};
use limits::{RateLimits, RetryAfter};

pub use connections::{Admitted, Connections};
pub use forwarded::TrustedProxies;
pub use send::{
    check_room, check_send, guest_id, SendRequest, DEFAULT_NAME, DEFAULT_SIZE, MAX_VIDEO_TIME,
    SIZE_RANGE,
};

/// How often idle rate-limit and flood-guard keys are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Who is asking, and from where: filled in by the transport.
#[derive(Clone, Debug)]
pub struct Sender {
    /// A verified token's identity, or a guest's.
    pub identity: Identity,
    /// The client's address.
    pub ip: IpAddr,
}

impl Sender {
    /// A sender without a token.
    pub fn guest(ip: IpAddr) -> Sender {
        Sender {
            identity: Identity::guest(ip),
            ip,
        }
    }

    /// The user id its danmaku are stored under.
    pub fn user(&self) -> &str {
        &self.identity.user
    }
}

/// A sender the guard has checked holds the admin role: what the node's
/// moderation methods take, so that none can run for anyone else.
#[derive(Clone, Debug)]
pub struct Admin(Sender);

impl Admin {
    /// The admin's user id, as the audit log records it.
    pub fn user(&self) -> &str {
        self.0.user()
    }

    /// The admin as a sender.
    pub fn sender(&self) -> &Sender {
        &self.0
    }
}

/// Why the guard could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum GuardSetupError {
    /// The `[auth]` keys could not be loaded.
    #[error("auth: {0}")]
    Auth(#[from] SetupError),
    /// The word list could not be loaded.
    #[error("filter: {0}")]
    Words(#[from] FilterError),
    /// The shared send limits' Redis could not be reached.
    #[error("limits: {0}")]
    Limits(#[from] SharedLimitsError),
}

/// The node's gatekeeper: identity, rate limits and content rules.
pub struct Guard {
    auth: Authenticator,
    anonymous_send: bool,
    anonymous_watch: bool,
    /// Addresses whose clients skip every per-user, per-address and per-room
    /// limit (`limits.exempt_ips`), like admins and services.
    exempt: Vec<IpNet>,
    /// The node's own buckets: connections always, sends when there are
    /// no shared limits or while their Redis is unreachable.
    limits: RateLimits,
    /// The cluster's send buckets, when the bus is Redis.
    shared: Option<SharedLimits>,
    words: Option<FilterHandle>,
    flood: Option<FloodGuard>,
    text: Limits,
    connections: Arc<Connections>,
    proxies: TrustedProxies,
    allowed_origins: Vec<String>,
    /// Bans, mutes and room settings: asked, not owned.
    moderator: Arc<Moderator>,
}

impl Guard {
    /// Builds the guard: loads the token keys and the word list, which must
    /// be readable at start-up. It asks `moderator` about bans, mutes and
    /// room settings, and `shared` (the cluster's shared send limits, if
    /// any: [`SharedLimits::from_config`]) about send rates.
    pub fn new(
        config: &Config,
        moderator: Arc<Moderator>,
        shared: Option<SharedLimits>,
    ) -> Result<Guard, GuardSetupError> {
        let words = match &config.filter.words_file {
            Some(path) => Some(FilterHandle::load(path, config.filter.action)?),
            None => None,
        };
        Ok(Guard {
            auth: Authenticator::from_config(&config.auth)?,
            anonymous_send: config.auth.anonymous_send,
            anonymous_watch: config.auth.anonymous_watch,
            exempt: config.limits.exempt_ips.clone(),
            limits: RateLimits::new(&config.limits),
            shared,
            words,
            flood: FloodGuard::new(&config.filter, config.limits.max_limiter_keys),
            text: config.limits.clone(),
            connections: Arc::new(Connections::new(
                &config.connection,
                config.limits.exempt_ips.clone(),
            )),
            proxies: TrustedProxies::new(config.connection.trusted_proxies.clone()),
            allowed_origins: config.connection.allowed_origins.clone(),
            moderator,
        })
    }

    /// Starts the guard's background work on the current runtime: following
    /// the word list's file, and forgetting idle limiter keys. The tasks end
    /// when the guard is dropped.
    pub fn start_background(self: &Arc<Self>, reload_every: Duration) {
        if let Some(words) = &self.words {
            words.spawn_reloader(reload_every);
        }
        let guard = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(guard) = guard.upgrade() else { return };
                // O(keys): off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || {
                    guard.limits.sweep();
                    if let Some(f) = &guard.flood {
                        f.sweep();
                    }
                })
                .await;
            }
        });
    }

    /// The sender behind a request: the token's identity when a token is
    /// given (an invalid one is refused, never downgraded to a guest), a
    /// guest otherwise.
    pub fn identify(&self, token: Option<&str>, ip: IpAddr) -> Result<Sender, ApiError> {
        match token {
            Some(token) => Ok(Sender {
                identity: self.auth.verify(token).map_err(ApiError::from)?,
                ip,
            }),
            None => Ok(Sender::guest(ip)),
        }
    }

    /// Admits a new TCP connection from `peer` under the connection caps.
    /// A trusted proxy's connection counts in the total only: the
    /// per-address cap binds each client it forwards, per request
    /// ([`Guard::admit_request`]).
    pub fn admit_connection(&self, peer: IpAddr) -> Result<Admitted, ApiError> {
        if self.proxies.trusts(peer) {
            self.connections.admit_proxy()
        } else {
            self.connections.admit(peer)
        }
    }

    /// The client behind a request from `peer` (the forwarded one when
    /// `peer` is a trusted proxy: [`TrustedProxies::client`]), which every
    /// per-address rule then applies to. For a forwarded client, also its
    /// place under the per-address connection cap, to hold while the
    /// request, or the stream it opens, lasts.
    pub fn admit_request(
        &self,
        peer: IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> Result<(IpAddr, Option<Admitted>), ApiError> {
        let client = self.proxies.client(peer, headers);
        if !self.proxies.trusts(peer) {
            return Ok((client, None));
        }
        Ok((client, Some(self.connections.admit_client(client)?)))
    }

    /// Checks a browser's `Origin` against `connection.allowed_origins`
    /// (a WebSocket handshake is not subject to CORS, so a page on any site
    /// could otherwise open one with its visitor's cookies and address).
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), ApiError> {
        match origin {
            Some(o)
                if !self.allowed_origins.is_empty()
                    && !self.allowed_origins.iter().any(|a| a == o) =>
            {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("origin {o} is not allowed to open a WebSocket here"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks that `sender` is an admin: without a token, 401
    /// `unauthorized`; with another role, 403 `forbidden`.
    pub fn admin(&self, sender: Sender) -> Result<Admin, ApiError> {
        if sender.identity.is_guest() {
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "moderation needs an admin token: pass Authorization: Bearer",
            ))
        } else if sender.identity.is_admin() {
            Ok(Admin(sender))
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "moderation needs a token whose role is admin",
            ))
        }
    }

    /// Slow mode for a non-admin's send: the cluster's when its limits are
    /// shared in Redis (so that spreading sends over nodes gains nothing),
    /// else, or while Redis does not answer, this node's own clock.
    async fn check_slow_mode(
        &self,
        moderation: &Moderation,
        room: &str,
        user: &str,
    ) -> Result<(), ApiError> {
        let every = Duration::from_secs(u64::from(moderation.room(room).slow_mode_s));
        if every.is_zero() {
            return Ok(());
        }
        let shared = match &self.shared {
            Some(shared) => shared.check_slow_mode(room, user, every).await,
            None => None,
        };
        match shared {
            Some(answer) => answer.map_err(|left| slow_mode_refused(every, left.0)),
            None => moderation.check_slow_mode(room, user),
        }
    }

    /// The flood guard for a send of `text` by `user`: the cluster's when
    /// its limits are shared in Redis, else, or while Redis does not
    /// answer, this node's own.
    async fn check_flood(
        &self,
        flood: &FloodGuard,
        user: &str,
        text: &str,
    ) -> Result<(), RetryAfter> {
        let shared = match &self.shared {
            Some(shared) => {
                let fingerprint = FloodGuard::fingerprint(text);
                shared
                    .check_flood(user, fingerprint, flood.window(), flood.repeats())
                    .await
            }
            None => None,
        };
        shared.unwrap_or_else(|| flood.check(user, text))
    }

    /// Whether limits pass the sender by: admins, services, and exempt
    /// addresses.
    fn privileged(&self, sender: &Sender) -> bool {
        sender.identity.is_unlimited() || self.exempt.iter().any(|net| net.contains(&sender.ip))
    }

    /// May `sender` open a stream of `room`? Refuses a banned address (every
    /// address, loopback and admins included: a ban is about the address).
    /// Takes a token from its address's connection bucket.
    pub fn admit_viewer(&self, sender: &Sender, room: &str) -> Result<(), ApiError> {
        check_room(room)?;
        self.moderator.live().check_ip(sender.ip)?;
        if sender.identity.is_guest() && !self.anonymous_watch {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this server needs a token to watch: pass ?token= or Authorization: Bearer",
            ));
        }
        self.may_enter(sender, room)?;
        if !self.privileged(sender) {
            self.limits.check_connect(sender.ip)?;
        }
        Ok(())
    }

    fn may_enter(&self, sender: &Sender, room: &str) -> Result<(), ApiError> {
        if sender.identity.may_enter(room) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the token does not admit room {room}"),
            ))
        }
    }

    /// Turns `sender`'s send into a danmaku the store may take, with whether
    /// to publish it or hold it for a moderator, or says why not. In order:
    /// who may send (token, ban, mute, closed room), what the send is, the
    /// word list, the rate limits, slow mode, the flood guard. The flood
    /// guard goes last because it remembers every text it passes: a send
    /// refused after it would make the client's retry look like a repeat.
    ///
    /// The send limits are the cluster's when the bus is Redis, so this
    /// may wait on Redis, for [`limits::shared::CALL_TIMEOUT`] at most.
    /// Connection limits ([`Guard::admit_viewer`]) stay the node's own: a
    /// connection is made to one node, and the per-address connection cap
    /// it goes with is per node too.
    pub async fn check_send(
        &self,
        room: &str,
        sender: &Sender,
        req: SendRequest,
    ) -> Result<(NewDanmaku, Verdict), ApiError> {
        if sender.identity.is_guest() && !self.anonymous_send {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this server needs a token to send: pass Authorization: Bearer (or ?token= on a WebSocket)",
            ));
        }
        self.may_enter(sender, room)?;
        let admin = sender.identity.is_admin();
        let moderation = self.moderator.live();
        moderation.check_ip(sender.ip)?;
        moderation.check_sender(room, sender.user(), admin)?;
        let mut new = check_send(&self.text, room, &sender.identity, req)?;
        if let Some(words) = &self.words {
            if let Cow::Owned(masked) = words.apply(&new.text)? {
                new.text = masked;
            }
        }
        if !self.privileged(sender) {
            let (user, ip) = (sender.user(), sender.ip);
            match &self.shared {
                Some(shared) => shared.check_send(user, ip, room, &self.limits).await?,
                None => self.limits.check_send(user, ip, room)?,
            }
        }
        // Slow mode is the room's rule, not a server limit: exempt
        // addresses obey it, only admins skip it.
        if !admin {
            self.check_slow_mode(moderation, room, sender.user())
                .await?;
        }
        if !self.privileged(sender) {
            if let Some(flood) = &self.flood {
                self.check_flood(flood, sender.user(), &new.text).await?;
            }
        }
        Ok((new, moderation.verdict(room, admin)))
    }
}
