//! `GET /ws`: origin check, then the WebSocket handshake with a session actor
//! whose response body the ChatServer can end (see session::JamSwitch).

use super::AppState;
use crate::abuse::{client_ip, from_trusted_proxy};
use crate::config::Config;
use crate::error::ApiError;
use crate::session::frame_guard::GuardedPayload;
use crate::session::ws::WsSession;
use crate::session::{JamGuarded, JamSwitch};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The accepted socket of a connection, recorded by `HttpServer::on_connect`.
#[derive(Clone, Copy, Debug)]
pub struct ConnSocket {
    pub fd: std::os::fd::RawFd,
    pub peer: SocketAddr,
}

/// The server's own origin as this request names it: `--public-url` when
/// set; otherwise from `Host` (and from `X-Forwarded-Host`/`-Proto` only
/// when the peer is a trusted proxy), in both schemes when the scheme is not
/// known.
fn own_origins(req: &HttpRequest, cfg: &Config) -> Vec<String> {
    if let Some(o) = &cfg.public_origin {
        return vec![o.clone()];
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let trusted = req.peer_addr().is_some_and(|p| from_trusted_proxy(p.ip(), &cfg.trusted_proxies));
    let forwarded_host = if trusted { header("x-forwarded-host") } else { None };
    let Some(host) = forwarded_host.or_else(|| header("host")) else { return Vec::new() };
    let host = host.split(',').next().unwrap_or("").trim().to_ascii_lowercase();
    match (trusted, header("x-forwarded-proto")) {
        (true, Some(p)) => vec![format!("{}://{host}", p.to_ascii_lowercase())],
        _ => vec![format!("http://{host}"), format!("https://{host}")],
    }
}

/// PROTOCOL.md §2.1: a browser's `Origin` must be the server's own or listed
/// in `--allowed-origins`. Clients that send no `Origin` (bots, services) pass.
fn origin_allowed(req: &HttpRequest, cfg: &Config) -> Result<(), String> {
    let Some(origin) = req.headers().get("origin") else { return Ok(()) };
    let Ok(origin) = origin.to_str() else { return Err("(not text)".into()) };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if cfg.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(&origin) || a == "*") {
        return Ok(());
    }
    if own_origins(req, cfg).contains(&origin) {
        return Ok(());
    }
    Err(origin)
}

/// `GET /api/embed-check`: whether a page on the caller's origin may open a
/// WebSocket here. Browsers hide why an upgrade failed from scripts, so the
/// widget asks this (any origin may: CORS `*`) to tell "this site is not
/// allowed" apart from "the server is down", and stops retrying.
pub async fn embed_check(req: HttpRequest, app: web::Data<AppState>) -> HttpResponse {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    let allowed = match origin_allowed(&req, &app.cfg) {
        Ok(()) => true,
        Err(o) => {
            refused_origin(&o);
            false
        }
    };
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "allowed": allowed, "origin": origin }))
}

/// The client's address: the peer, or what a trusted proxy forwarded.
pub fn client_addr(req: &HttpRequest, cfg: &Config) -> IpAddr {
    let peer = req.peer_addr().map(|p| p.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    client_ip(peer, xff, &cfg.trusted_proxies)
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Err(origin) = origin_allowed(&req, &app.cfg) {
        refused_origin(&origin);
        return Err(ApiError::forbidden("origin not allowed: add it to --allowed-origins").into());
    }
    let ip = client_addr(&req, &app.cfg);
    let Some(slot) = app.guard.connect(ip) else {
        log::debug!("{ip} holds too many connections: upgrade refused");
        let e = ApiError::rate_limited("too many connections from your address", std::time::Duration::from_secs(10));
        return Err(e.into());
    };
    let mut res = ws::handshake(&req)?;
    super::metrics::counters().ws_connections.inc();
    let socket = req.conn_data::<ConnSocket>().map(|c| (c.fd, c.peer));
    let jam = JamSwitch::new(socket);
    let oversize = Arc::new(AtomicBool::new(false));
    let session = WsSession::new(app.get_ref().clone(), jam.clone(), oversize.clone(), slot);
    let codec = actix_http::ws::Codec::new().max_size(app.cfg.max_frame_bytes);
    let guarded = GuardedPayload::new(stream, app.cfg.max_frame_bytes, oversize);
    let body = ws::WebsocketContext::with_codec(session, guarded, codec);
    Ok(res.streaming(JamGuarded::new(body, jam)))
}

/// Logs a refused origin at INFO, once per origin per [`REFUSED_LOG_EVERY`]
/// (a misconfigured embed would otherwise log every reconnect).
fn refused_origin(origin: &str) {
    static SEEN: std::sync::OnceLock<parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>> =
        std::sync::OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock();
    let now = std::time::Instant::now();
    if seen.len() > 1000 {
        seen.retain(|_, t| now.duration_since(*t) < REFUSED_LOG_EVERY);
    }
    let due = seen.get(origin).is_none_or(|t| now.duration_since(*t) >= REFUSED_LOG_EVERY);
    if due {
        seen.insert(origin.chars().take(200).collect(), now);
        log::info!("refused a WebSocket from origin {origin:?}: not the server's own origin nor in --allowed-origins");
    }
}

/// How often the same refused origin is logged.
const REFUSED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
