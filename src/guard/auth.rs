//! Identity: who a client is, from a signed token (a JWT).
//!
//! The server verifies tokens with one configured algorithm and key: HS256
//! with a shared secret, or RS256 / ES256 with a public key file. A token
//! names a user (`sub`), optionally a display name, a role and the rooms it
//! admits. `danmaku token` mints tokens with [`mint`]. docs/auth.md is the
//! operator's guide.
//!
//! Two error types keep what a client may see apart from what only the
//! operator should: [`AuthError`] (why a token was refused) is safe to send
//! back; [`SetupError`] (unreadable key files, minting failures) names
//! files and never leaves the process.

use std::net::IpAddr;
use std::path::Path;

use axum::http::{header::AUTHORIZATION, HeaderMap};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};

/// The longest `sub` and `name` a token may carry, in characters.
const MAX_CLAIM_CHARS: usize = 64;
/// The prefix of anonymous senders' ids (see [`super::guest_id`]); a token
/// may not claim it, so that a `guest-` user is always an anonymous one.
const GUEST_PREFIX: &str = "guest-";

/// What a verified identity may do beyond watching and sending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary user (the default when a token names no role).
    #[default]
    Viewer,
    /// An operator of the service.
    Admin,
    /// An operator's tool (a load generator, a bot): exempt from rate
    /// limits like an admin, but with no moderation powers, and its
    /// danmaku are ordinary ones to density control. Least privilege for
    /// what only needs to send a lot.
    Service,
}

/// A client's identity: from a verified token, or a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user id danmaku are stored under.
    pub user: String,
    /// The display name the token gives, if any.
    pub name: Option<String>,
    /// The role.
    pub role: Role,
    /// The room patterns the token admits; `None` admits every room.
    rooms: Option<Vec<String>>,
}

impl Identity {
    /// An anonymous client: a viewer whose user id is derived from its
    /// address, admitted to every room.
    pub fn guest(addr: IpAddr) -> Identity {
        Identity {
            user: super::guest_id(addr),
            name: None,
            role: Role::Viewer,
            rooms: None,
        }
    }

    /// Whether the identity may watch and send to `room`. The token's room
    /// patterns bind every role, admins too.
    pub fn may_enter(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob(p.as_bytes(), room.as_bytes())))
    }

    /// Whether the identity has the admin role.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether rate limits pass the identity by: admins and services.
    pub fn is_unlimited(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Service)
    }

    /// Whether this is an anonymous client (no token).
    pub fn is_guest(&self) -> bool {
        self.user.starts_with(GUEST_PREFIX)
    }
}

/// The claims [`mint`] signs.
#[derive(Clone, Debug, Serialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The role.
    pub role: Role,
    /// Room patterns (`*` matches any characters); `None` admits every room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused. Every message is safe to send to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server has no key, so it cannot accept any token.
    #[error("this server accepts no tokens; connect without one")]
    NotConfigured,
    /// Not three base64url parts with a JSON header and JSON claims.
    #[error("the token is malformed")]
    Malformed,
    /// The header names an algorithm other than the configured one
    /// (including `none`).
    #[error("the token is not signed with the algorithm this server accepts")]
    WrongAlgorithm,
    /// The signature does not verify with the configured key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A required claim is absent.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has a value the server does not accept.
    #[error("the token's `{claim}` claim is invalid: {reason}")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, e.to_string())
    }
}

/// Why the authenticator could not be built or a token minted. Meant for
/// the operator: messages name files.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The `[auth]` section is inconsistent.
    #[error("invalid config: {0}")]
    Config(&'static str),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file holds no usable key of the expected kind.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What was expected, and what is wrong.
        reason: String,
    },
    /// Minting was asked for but no algorithm is configured.
    #[error(
        "no key is configured: set auth.hs256_secret, auth.rs256_public_key_file or \
         auth.es256_public_key_file in the config file (--config or DANMAKU_CONFIG)"
    )]
    NoKey,
    /// Minting RS256 or ES256 needs the private key file.
    #[error("minting needs auth.{0}; the server itself needs only the public key")]
    NoPrivateKey(&'static str),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    /// The minted token does not verify with the configured public key.
    #[error(
        "the token does not verify with the configured public key: the private and \
         public key files are not a pair, or the public key is unusable"
    )]
    KeyMismatch,
    /// The server would refuse the minted token (bad claims or expiry).
    #[error("the server would refuse this token: {0}")]
    Refused(AuthError),
}

/// Verifies tokens with the configured key. Built once at startup.
pub struct Authenticator {
    /// `None`: no key configured, every token is refused.
    verifier: Option<Verifier>,
}

struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

// Written by hand: the derived one would print the HS256 secret.
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithm = self.verifier.as_ref().map(|v| v.algorithm);
        f.debug_struct("Authenticator")
            .field("algorithm", &algorithm)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the authenticator, reading the public key file if one is
    /// configured, so that a bad key stops the server at startup rather
    /// than refusing every client later.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, SetupError> {
        config.check().map_err(SetupError::Config)?;
        let (algorithm, key) = match KeySource::of(config) {
            None => return Ok(Authenticator { verifier: None }),
            Some(KeySource::Hs256(secret)) => (
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ),
            Some(KeySource::Rs256(path)) => (
                Algorithm::RS256,
                read_public_key(path, "an RSA public key", DecodingKey::from_rsa_pem)?,
            ),
            Some(KeySource::Es256(path)) => {
                let key = read_public_key(path, "a P-256 public key", DecodingKey::from_ec_pem)?;
                // The PEM parser takes a key on any curve; building a
                // verifier (checking an empty signature) rejects all but
                // P-256 now, instead of every token later.
                jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).map_err(|_| {
                    key_error(
                        path,
                        "expected a P-256 public key, found another curve".into(),
                    )
                })?;
                (Algorithm::ES256, key)
            }
        };
        // Validation::new admits exactly this one algorithm and requires
        // `exp`; `nbf` is checked when present. A token with `aud` is
        // refused: no audience is configured to match it.
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        Ok(Authenticator {
            verifier: Some(Verifier {
                algorithm,
                key,
                validation,
            }),
        })
    }

    /// Whether a key is configured. Without one every token is refused
    /// and clients can only be anonymous.
    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Verifies a token and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let v = self.verifier.as_ref().ok_or(AuthError::NotConfigured)?;
        // The library checks the algorithm too; reading it here first tells
        // `none` and other unknown names apart from a malformed token.
        if header_alg(token)?.parse::<Algorithm>().ok() != Some(v.algorithm) {
            return Err(AuthError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &v.key, &v.validation)
            .map_err(refusal)?;
        identity(&data.claims)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive), if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Signs `claims` with the configured algorithm: the HS256 secret, or the
/// RS256 / ES256 private key file. The token is then verified as the server
/// would, so that a mismatched key pair or claims the server refuses fail
/// here rather than at every client.
pub fn mint(config: &AuthConfig, claims: &Claims) -> Result<String, SetupError> {
    let auth = Authenticator::from_config(config)?;
    let (algorithm, key) = match KeySource::of(config).ok_or(SetupError::NoKey)? {
        KeySource::Hs256(secret) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        KeySource::Rs256(_) => (
            Algorithm::RS256,
            read_private_key(
                config.rs256_private_key_file.as_deref(),
                "rs256_private_key_file",
                "an RSA private key",
                EncodingKey::from_rsa_pem,
            )?,
        ),
        KeySource::Es256(_) => (
            Algorithm::ES256,
            read_private_key(
                config.es256_private_key_file.as_deref(),
                "es256_private_key_file",
                "a P-256 private key in PKCS#8 form (BEGIN PRIVATE KEY)",
                EncodingKey::from_ec_pem,
            )?,
        ),
    };
    let token =
        jsonwebtoken::encode(&Header::new(algorithm), claims, &key).map_err(SetupError::Sign)?;
    match auth.verify(&token) {
        Ok(_) => Ok(token),
        Err(AuthError::BadSignature) => Err(SetupError::KeyMismatch),
        Err(e) => Err(SetupError::Refused(e)),
    }
}

/// The algorithm a config selects, with its verifying key or key file.
enum KeySource<'a> {
    Hs256(&'a str),
    Rs256(&'a Path),
    Es256(&'a Path),
}

impl KeySource<'_> {
    /// `None` when no algorithm is configured. Assumes [`AuthConfig::check`]
    /// passed, which leaves at most one set.
    fn of(config: &AuthConfig) -> Option<KeySource<'_>> {
        match (
            &config.hs256_secret,
            &config.rs256_public_key_file,
            &config.es256_public_key_file,
        ) {
            (Some(secret), _, _) => Some(KeySource::Hs256(secret)),
            (_, Some(path), _) => Some(KeySource::Rs256(path)),
            (_, _, Some(path)) => Some(KeySource::Es256(path)),
            (None, None, None) => None,
        }
    }
}

fn read_public_key(
    path: &Path,
    what: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<DecodingKey, SetupError> {
    let pem = read_key_file(path)?;
    // The library would take a private key here and then fail every
    // verification; say so now, and keep private keys off the server.
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
        return Err(key_error(
            path,
            format!("expected {what}, found a private key; the server needs the public key only"),
        ));
    }
    parse(&pem).map_err(|e| key_error(path, format!("expected {what} in PEM form ({e})")))
}

fn read_private_key(
    path: Option<&Path>,
    config_key: &'static str,
    what: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
) -> Result<EncodingKey, SetupError> {
    let path = path.ok_or(SetupError::NoPrivateKey(config_key))?;
    let pem = read_key_file(path)?;
    parse(&pem).map_err(|e| key_error(path, format!("expected {what} in PEM form ({e})")))
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn key_error(path: &Path, reason: String) -> SetupError {
    SetupError::Key {
        path: path.to_owned(),
        reason,
    }
}

/// The `alg` of a token's header, read without verifying anything.
fn header_alg(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Head {
        alg: String,
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| AuthError::Malformed)?;
    let head: Head = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    Ok(head.alg)
}

/// Maps the library's refusal to ours.
fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        // `exp` is the only claim the validation requires.
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim("exp"),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim {
            claim: if claim == "nbf" { "nbf" } else { "exp" },
            reason: "must be a number of seconds since the Unix epoch",
        },
        ErrorKind::InvalidAudience => AuthError::InvalidClaim {
            claim: "aud",
            reason: "this server accepts tokens without an audience only",
        },
        _ => AuthError::Malformed,
    }
}

/// The identity of verified claims, or which claim is wrong.
fn identity(claims: &Map<String, Value>) -> Result<Identity, AuthError> {
    let user = string_claim(claims, "sub")?.ok_or(AuthError::MissingClaim("sub"))?;
    if !printable(user) {
        return Err(invalid("sub", "must be 1 to 64 printable characters"));
    }
    if user.starts_with(GUEST_PREFIX) {
        return Err(invalid(
            "sub",
            "`guest-` ids are reserved for anonymous clients",
        ));
    }
    let name = string_claim(claims, "name")?;
    if name.is_some_and(|n| !printable(n)) {
        return Err(invalid("name", "must be 1 to 64 printable characters"));
    }
    let role = match string_claim(claims, "role")? {
        None | Some("viewer") => Role::Viewer,
        Some("admin") => Role::Admin,
        Some("service") => Role::Service,
        Some(_) => return Err(invalid("role", "must be viewer, admin or service")),
    };
    let rooms = match claims.get("rooms") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| match item.as_str() {
                    Some(p) if room_pattern(p) => Ok(p.to_owned()),
                    _ => Err(invalid(
                        "rooms",
                        "must be a list of room names, each may use * as a wildcard",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(invalid("rooms", "must be a list of room patterns")),
    };
    Ok(Identity {
        user: user.to_owned(),
        name: name.map(str::to_owned),
        role,
        rooms,
    })
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'a str>, AuthError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(claim, "must be a string")),
    }
}

fn invalid(claim: &'static str, reason: &'static str) -> AuthError {
    AuthError::InvalidClaim { claim, reason }
}

/// 1 to 64 characters, no control characters, no white space at the ends.
fn printable(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_CLAIM_CHARS
        && s.trim() == s
        && !s.chars().any(char::is_control)
}

/// A room name in which `*` may stand for any characters.
fn room_pattern(p: &str) -> bool {
    // Replacing each `*` with an ordinary character reuses the room-name
    // rule instead of restating it.
    super::check_room(&p.replace('*', "x")).is_ok()
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes
/// (none too). Iterative with one backtrack point, so a pattern of many
/// stars cannot make it exponential.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // After the last star: where in the pattern, and where in the name
    // the star's match ends so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the star swallow one more byte and retry from there.
                Some((after, end)) => {
                    star = Some((after, end + 1));
                    p = after;
                    n = end + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const RS_PUBLIC: &str = include_str!("../../tests/keys/rs256-public.pem");

    fn keys(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn hs256() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        }
    }

    fn rs256() -> AuthConfig {
        AuthConfig {
            rs256_public_key_file: Some(keys("rs256-public.pem")),
            rs256_private_key_file: Some(keys("rs256-private.pem")),
            ..AuthConfig::default()
        }
    }

    fn es256() -> AuthConfig {
        AuthConfig {
            es256_public_key_file: Some(keys("es256-public.pem")),
            es256_private_key_file: Some(keys("es256-private.pem")),
            ..AuthConfig::default()
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            name: None,
            role: Role::Viewer,
            rooms: None,
            exp: now() + 600,
        }
    }

    /// Signs arbitrary claims with the HS256 test secret, bypassing `mint`'s
    /// own checks, to build tokens the server must refuse.
    fn sign_hs256(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn verify(config: &AuthConfig, token: &str) -> Result<Identity, AuthError> {
        Authenticator::from_config(config).unwrap().verify(token)
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn hs256_round_trip() {
        let c = Claims {
            name: Some("Alice".into()),
            role: Role::Admin,
            rooms: Some(vec!["event-*".into()]),
            ..claims("alice")
        };
        let id = verify(&hs256(), &mint(&hs256(), &c).unwrap()).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.name.as_deref(), Some("Alice"));
        assert!(id.is_admin());
        assert!(id.may_enter("event-1"));
        assert!(!id.may_enter("lobby"));
    }

    #[test]
    fn rs256_and_es256_round_trip() {
        for config in [rs256(), es256()] {
            let token = mint(&config, &claims("bob")).unwrap();
            let id = verify(&config, &token).unwrap();
            assert_eq!((id.user.as_str(), id.role), ("bob", Role::Viewer));
            assert!(id.may_enter("anything"));
            // A token of one key is refused by the other algorithm.
            let other = if config.rs256_public_key_file.is_some() {
                es256()
            } else {
                rs256()
            };
            assert_eq!(verify(&other, &token), Err(AuthError::WrongAlgorithm));
        }
    }

    #[test]
    fn expiry_and_leeway() {
        let expired = sign_hs256(&serde_json::json!({"sub": "u", "exp": now() - 3600}));
        assert_eq!(verify(&hs256(), &expired), Err(AuthError::Expired));
        // Within the 30 s leeway, a just-expired token still passes.
        let recent = sign_hs256(&serde_json::json!({"sub": "u", "exp": now() - 10}));
        assert!(verify(&hs256(), &recent).is_ok());
        let no_exp = sign_hs256(&serde_json::json!({"sub": "u"}));
        assert_eq!(
            verify(&hs256(), &no_exp),
            Err(AuthError::MissingClaim("exp"))
        );
        let early =
            sign_hs256(&serde_json::json!({"sub": "u", "exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(verify(&hs256(), &early), Err(AuthError::NotYetValid));
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let other = AuthConfig {
            hs256_secret: Some("another secret of at least 32 bytes!".into()),
            ..AuthConfig::default()
        };
        let token = mint(&other, &claims("u")).unwrap();
        assert_eq!(verify(&hs256(), &token), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = format!(r#"{{"sub":"u","exp":{}}}"#, now() + 600);
        let head = b64(r#"{"alg":"none","typ":"JWT"}"#);
        for token in [
            format!("{head}.{}.", b64(&payload)),
            format!("{head}.{}.c2ln", b64(&payload)),
        ] {
            assert_eq!(verify(&hs256(), &token), Err(AuthError::WrongAlgorithm));
        }
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        // The classic confusion: a verifier that takes the header's word
        // would check this HMAC with the public key bytes as the secret.
        let key = EncodingKey::from_secret(RS_PUBLIC.as_bytes());
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("mallory"), &key).unwrap();
        assert_eq!(verify(&rs256(), &token), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn malformed_tokens() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.e30.sig",
            &format!("{}.e30.", b64("[]")),
        ] {
            assert_eq!(
                verify(&hs256(), token),
                Err(AuthError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn claims_are_checked() {
        let exp = now() + 600;
        let cases = [
            (
                serde_json::json!({"exp": exp}),
                AuthError::MissingClaim("sub"),
            ),
            (
                serde_json::json!({"sub": "", "exp": exp}),
                invalid("sub", ""),
            ),
            (
                serde_json::json!({"sub": 7, "exp": exp}),
                invalid("sub", ""),
            ),
            (
                serde_json::json!({"sub": "x".repeat(65), "exp": exp}),
                invalid("sub", ""),
            ),
            (
                serde_json::json!({"sub": "a\nb", "exp": exp}),
                invalid("sub", ""),
            ),
            (
                serde_json::json!({"sub": "guest-0123456789", "exp": exp}),
                invalid("sub", ""),
            ),
            (
                serde_json::json!({"sub": "u", "name": " ", "exp": exp}),
                invalid("name", ""),
            ),
            (
                serde_json::json!({"sub": "u", "role": "root", "exp": exp}),
                invalid("role", ""),
            ),
            (
                serde_json::json!({"sub": "u", "rooms": "lobby", "exp": exp}),
                invalid("rooms", ""),
            ),
            (
                serde_json::json!({"sub": "u", "rooms": ["a b"], "exp": exp}),
                invalid("rooms", ""),
            ),
            (
                serde_json::json!({"sub": "u", "rooms": [""], "exp": exp}),
                invalid("rooms", ""),
            ),
            (
                serde_json::json!({"sub": "u", "aud": "x", "exp": exp}),
                invalid("aud", ""),
            ),
        ];
        for (claims, want) in cases {
            let got = verify(&hs256(), &sign_hs256(&claims));
            // Compare the variant and claim name, not the wording.
            let key = |e: &AuthError| match e {
                AuthError::InvalidClaim { claim, .. } => format!("invalid {claim}"),
                e => format!("{e:?}"),
            };
            assert_eq!(got.as_ref().map_err(key), Err(key(&want)), "{claims}");
        }
        let ok = sign_hs256(&serde_json::json!({"sub": "u", "role": "viewer", "exp": exp}));
        assert_eq!(verify(&hs256(), &ok).unwrap().role, Role::Viewer);
        let service = sign_hs256(&serde_json::json!({"sub": "bot", "role": "service", "exp": exp}));
        let id = verify(&hs256(), &service).unwrap();
        assert!(id.is_unlimited() && !id.is_admin());
    }

    #[test]
    fn room_patterns() {
        let id = |rooms: &[&str]| Identity {
            rooms: Some(rooms.iter().map(|r| (*r).to_owned()).collect()),
            ..Identity::guest("127.0.0.1".parse().unwrap())
        };
        let all = id(&["*"]);
        assert!(all.may_enter("lobby") && all.may_enter("event-1"));
        let some = id(&["event-*", "lobby", "a*b*c"]);
        for ok in ["event-", "event-42", "lobby", "abc", "a-b-c", "axxbyyc"] {
            assert!(some.may_enter(ok), "{ok}");
        }
        for bad in ["lobby2", "Lobby", "event", "xevent-1", "ab", "abcd"] {
            assert!(!some.may_enter(bad), "{bad}");
        }
        assert!(!id(&[]).may_enter("lobby"));
        assert!(Identity::guest("127.0.0.1".parse().unwrap()).may_enter("any"));
        // Many stars against a long non-matching name stay fast.
        let slow = id(&["*a*a*a*a*a*a*a*a*b"]);
        assert!(!slow.may_enter(&"a".repeat(64)));
    }

    #[test]
    fn no_key_refuses_every_token() {
        let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert!(!auth.enabled());
        let token = mint(&hs256(), &claims("u")).unwrap();
        assert_eq!(auth.verify(&token), Err(AuthError::NotConfigured));
        assert!(matches!(
            mint(&AuthConfig::default(), &claims("u")),
            Err(SetupError::NoKey)
        ));
        let api = ApiError::from(AuthError::Expired);
        assert_eq!(api.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn key_files_are_checked_at_startup() {
        let missing = AuthConfig {
            rs256_public_key_file: Some(keys("nope.pem")),
            ..AuthConfig::default()
        };
        let e = Authenticator::from_config(&missing).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let private = AuthConfig {
            rs256_public_key_file: Some(keys("rs256-private.pem")),
            ..AuthConfig::default()
        };
        let e = Authenticator::from_config(&private).unwrap_err();
        assert!(e.to_string().contains("public key only"), "{e}");
        let wrong_kind = AuthConfig {
            es256_public_key_file: Some(keys("rs256-public.pem")),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&wrong_kind).is_err());
        let wrong_curve = AuthConfig {
            es256_public_key_file: Some(keys("p384-public.pem")),
            ..AuthConfig::default()
        };
        let e = Authenticator::from_config(&wrong_curve).unwrap_err();
        assert!(e.to_string().contains("another curve"), "{e}");
        let no_private = AuthConfig {
            rs256_private_key_file: None,
            ..rs256()
        };
        assert!(matches!(
            mint(&no_private, &claims("u")),
            Err(SetupError::NoPrivateKey("rs256_private_key_file"))
        ));
        let wrong_private = AuthConfig {
            es256_private_key_file: Some(keys("rs256-private.pem")),
            ..es256()
        };
        let e = mint(&wrong_private, &claims("u")).unwrap_err();
        assert!(e.to_string().contains("PKCS#8"), "{e}");
        let not_a_pair = AuthConfig {
            es256_private_key_file: Some(keys("es256-other-private.pem")),
            ..es256()
        };
        assert!(matches!(
            mint(&not_a_pair, &claims("u")),
            Err(SetupError::KeyMismatch)
        ));
    }

    #[test]
    fn bearer_header() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(bearer(&with("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&with("bearer  tok ")), Some("tok"));
        assert_eq!(bearer(&with("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(&with("Bearer")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
