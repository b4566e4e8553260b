//! The web front (docs/web.md): the pages people use — the live room, the
//! video player, the OBS overlay, the event wall and its phone send page,
//! the admin dashboard — their scripts and styles ([`assets`]), and the
//! wall's QR code.
//!
//! Pages are static: a page reads its room from its own address and talks
//! to the API like any client, so no user text is ever put into a page by
//! the server. Every page is sent with a Content-Security-Policy that
//! allows scripts and styles from this server only (no inline script), and
//! the admin page may not be framed by another site.

pub mod assets;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use self::assets::{bundle, File, Immutable};
use super::params::RoomName;
use super::App;
use crate::config::WebConfig;
use crate::error::{ApiError, ErrorCode};

/// The policy of every page: only this server's scripts, styles, images
/// and connections; videos from anywhere (the player's `src`).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; media-src * data: blob:; font-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'";

/// Who may frame a page: any site (players and walls are embedded), but
/// nobody for the admin dashboard, so that it cannot be clickjacked.
#[derive(Clone, Copy)]
enum Framing {
    Anywhere,
    Nowhere,
}

/// Serves `web/pages/NAME`.
async fn page(name: &str, request: &HeaderMap, framing: Framing) -> Response {
    let Some(file) = bundle().page(name) else {
        return ApiError::new(ErrorCode::NotFound, "no such page").into_response();
    };
    let mut response = send(file, request, "no-cache").await;
    let headers = response.headers_mut();
    let csp = match framing {
        Framing::Anywhere => format!("{CSP}; frame-ancestors *"),
        Framing::Nowhere => format!("{CSP}; frame-ancestors 'none'"),
    };
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).expect("the policy is ASCII"),
    );
    // A `?token=` in a page's address must not travel to other sites.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A file in the encoding the request prefers, or 304 when it has it.
async fn send(file: &'static File, request: &HeaderMap, cache: &'static str) -> Response {
    let mut response = if file.not_modified(request) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let (encoding, body) = file.body_for(request).await;
        let mut response = body.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type()),
        );
        if let Some(coding) = encoding.header() {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, file.etag().clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /`: the live page, for the room the page picks.
pub(super) async fn home(request: HeaderMap) -> Response {
    page("live.html", &request, Framing::Anywhere).await
}

/// `GET /r/{room}`: the live room page.
pub(super) async fn live(_: RoomName, request: HeaderMap) -> Response {
    page("live.html", &request, Framing::Anywhere).await
}

/// `GET /v/{room}?src=`: the video player.
pub(super) async fn player(_: RoomName, request: HeaderMap) -> Response {
    page("player.html", &request, Framing::Anywhere).await
}

/// `GET /overlay/{room}`: the OBS overlay.
pub(super) async fn overlay(_: RoomName, request: HeaderMap) -> Response {
    page("overlay.html", &request, Framing::Anywhere).await
}

/// `GET /wall/{room}`: the event wall.
pub(super) async fn wall(_: RoomName, request: HeaderMap) -> Response {
    page("wall.html", &request, Framing::Anywhere).await
}

/// `GET /m/{room}`: the phone send page the wall's QR code opens.
pub(super) async fn phone(_: RoomName, request: HeaderMap) -> Response {
    page("phone.html", &request, Framing::Anywhere).await
}

/// `GET /admin`: the admin dashboard.
pub(super) async fn admin(request: HeaderMap) -> Response {
    page("admin.html", &request, Framing::Nowhere).await
}

/// `GET /assets/{*file}`: a script or style, by hashed name (cached for
/// good) or plain name (revalidated).
pub(super) async fn asset(Path(name): Path<String>, request: HeaderMap) -> Response {
    match bundle().asset(&name) {
        Some((file, Immutable(true))) => {
            send(file, &request, "public, max-age=31536000, immutable").await
        }
        Some((file, Immutable(false))) => send(file, &request, "no-cache").await,
        None => ApiError::new(ErrorCode::NotFound, "no such asset").into_response(),
    }
}

/// `GET /wall/{room}/phone`: `{"url": …}`, the phone send page's address
/// that the wall shows under its QR code.
pub(super) async fn phone_url(
    State(app): State<App>,
    RoomName(room): RoomName,
    request: HeaderMap,
) -> Response {
    match phone_address(&app.node.config.web, &room, &request) {
        Ok(url) => (
            [(header::CACHE_CONTROL, "no-cache")],
            Json(serde_json::json!({ "url": url })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /wall/{room}/qr.svg`: the phone send page's address as a QR code.
pub(super) async fn qr_code(
    State(app): State<App>,
    RoomName(room): RoomName,
    request: HeaderMap,
) -> Response {
    let url = match phone_address(&app.node.config.web, &room, &request) {
        Ok(url) => url,
        Err(e) => return e.into_response(),
    };
    // Only an overlong `public_url` could fail here: a fault of the
    // configuration, not of the request.
    let code = match qrcode::QrCode::new(url.as_bytes()) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "no QR code for the phone page's address");
            return ApiError::new(
                ErrorCode::Internal,
                "the phone page's address does not fit a QR code",
            )
            .into_response();
        }
    };
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        svg,
    )
        .into_response()
}

/// The phone page's address: under `[web] public_url` when set, else on
/// the host the request came to (over `http`; behind TLS, set
/// `public_url`).
fn phone_address(web: &WebConfig, room: &str, request: &HeaderMap) -> Result<String, ApiError> {
    // Room names are `[A-Za-z0-9_.:-]`: safe in a path as they are.
    if let Some(base) = &web.public_url {
        return Ok(format!("{}/m/{room}", base.trim_end_matches('/')));
    }
    let host = request
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_host(h))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                "the request has no usable Host header; set [web] public_url",
            )
        })?;
    Ok(format!("http://{host}/m/{room}"))
}

/// A `Host` value: a name or address and an optional port, nothing else.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn the_phone_page_is_on_the_public_url_or_else_the_request_host() {
        let configured = WebConfig {
            public_url: Some("https://live.example/".to_owned()),
        };
        assert_eq!(
            phone_address(&configured, "hall", &host("10.0.0.5:7100")).unwrap(),
            "https://live.example/m/hall"
        );
        let unset = WebConfig::default();
        assert_eq!(
            phone_address(&unset, "hall", &host("10.0.0.5:7100")).unwrap(),
            "http://10.0.0.5:7100/m/hall"
        );
        assert!(phone_address(&unset, "hall", &host("evil\"<x>")).is_err());
        assert!(phone_address(&unset, "hall", &HeaderMap::new()).is_err());
    }
}
