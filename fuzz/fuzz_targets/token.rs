//! Token verification (`Authenticator::verify`, HS256) on hostile tokens.
//!
//! Byte 0 picks how the rest becomes a token:
//!
//! - 0: the bytes as a string (lossy UTF-8);
//! - 1: three parts, each base64url-encoded and joined with dots (bytes 1
//!   and 2 give the lengths of the first two);
//! - 2: an HS256 header, the bytes as claims, and a forged signature;
//! - 3: the bytes as the whole header and a fixed claims part, correctly
//!   signed;
//! - other: an HS256 header and the bytes as claims, correctly signed with
//!   the server's secret, so the claims checks behind the signature are
//!   reached.
//!
//! It must never panic. A token that passes must carry the HMAC of its first
//! two parts under the server's secret (so modes 1 and 2, and any token the
//! fuzzer puts together in mode 0, are refused: it cannot forge one), and an
//! identity the server accepts: a `sub` of 1 to 64 printable characters, with
//! no white space at its ends and not `guest-…`, and an optional name held to
//! the same rule.

#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use danmaku::config::AuthConfig;
use danmaku::guard::auth::{AuthError, Authenticator, Identity};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::from_config(&AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    })
    .expect("an HS256 config")
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The HS256 signature of `message` under the server's secret (base64url).
fn hmac(message: &str) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HMAC signing")
}

/// `head.claims` signed with the server's secret.
fn signed(head: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", b64(head), b64(claims));
    let sig = hmac(&message);
    format!("{message}.{sig}")
}

/// Whether the last part of `token` is the HMAC of the rest.
fn genuinely_signed(token: &str) -> bool {
    let Some((message, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    URL_SAFE_NO_PAD.decode(hmac(message)).ok() == Some(sig)
}

fn printable(s: &str) -> bool {
    let chars = s.chars().count();
    (1..=64).contains(&chars) && s.trim() == s && !s.chars().any(char::is_control)
}

fn check_identity(id: &Identity) {
    assert!(printable(&id.user), "accepted sub {:?}", id.user);
    assert!(!id.user.starts_with("guest-"), "accepted sub {:?}", id.user);
    if let Some(name) = &id.name {
        assert!(printable(name), "accepted name {name:?}");
    }
    // Room patterns are matched without panicking, whatever the room.
    for room in ["lobby", "", "a*b", "x".repeat(64).as_str()] {
        let _ = id.may_enter(room);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let head = br#"{"alg":"HS256","typ":"JWT"}"#;
    let token = match mode {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => {
            let [a, b, rest @ ..] = rest else { return };
            let a = usize::from(*a).min(rest.len());
            let b = usize::from(*b).min(rest.len() - a);
            let (p1, rest) = rest.split_at(a);
            let (p2, p3) = rest.split_at(b);
            format!("{}.{}.{}", b64(p1), b64(p2), b64(p3))
        }
        2 => {
            let sig = b64(&[0x5a; 32]);
            format!("{}.{}.{sig}", b64(head), b64(rest))
        }
        3 => signed(rest, br#"{"sub":"u","exp":4102444800}"#),
        _ => signed(head, rest),
    };
    match AUTH.verify(&token) {
        Ok(id) => {
            assert!(genuinely_signed(&token), "accepted a forged token: {token}");
            check_identity(&id);
        }
        Err(e) => {
            // Every refusal renders a message safe for the client.
            let _ = danmaku::error::ApiError::from(e.clone());
            assert_ne!(e, AuthError::NotConfigured);
        }
    }
});
