//! `GET /ws`: origin check, then the WebSocket handshake with a session actor
//! whose response body the ChatServer can end (see session::JamSwitch).

use super::AppState;
use crate::error::ApiError;
use crate::session::frame_guard::GuardedPayload;
use crate::session::ws::WsSession;
use crate::session::{JamGuarded, JamSwitch};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The accepted socket of a connection, recorded by `HttpServer::on_connect`.
#[derive(Clone, Copy, Debug)]
pub struct ConnSocket {
    pub fd: std::os::fd::RawFd,
    pub peer: SocketAddr,
}

/// PROTOCOL.md §2.1: a browser's `Origin` must be the server's own or listed
/// in `--allowed-origins`. Clients that send no `Origin` (bots, services) pass.
fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get("origin") else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|a| a == origin || a == "*") {
        return true;
    }
    let host = req.connection_info().host().to_string();
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !origin_allowed(&req, &app.cfg.allowed_origins) {
        return Err(ApiError::forbidden("origin not allowed: add it to --allowed-origins").into());
    }
    let mut res = ws::handshake(&req)?;
    super::metrics::counters().ws_connections.inc();
    let socket = req.conn_data::<ConnSocket>().map(|c| (c.fd, c.peer));
    let jam = JamSwitch::new(socket);
    let oversize = Arc::new(AtomicBool::new(false));
    let session = WsSession::new(app.get_ref().clone(), jam.clone(), oversize.clone());
    let codec = actix_http::ws::Codec::new().max_size(app.cfg.max_frame_bytes);
    let guarded = GuardedPayload::new(stream, app.cfg.max_frame_bytes, oversize);
    let body = ws::WebsocketContext::with_codec(session, guarded, codec);
    Ok(res.streaming(JamGuarded::new(body, jam)))
}
