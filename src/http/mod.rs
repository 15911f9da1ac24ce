//! The HTTP side: `api` (REST), `ws` (WebSocket upgrade and origin check),
//! `pages` (the embedded web/ files), `metrics`; and `AppState`, shared by all.

pub mod api;
pub mod metrics;
pub mod pages;
pub mod ws;

use crate::error::ApiError;
use actix_web::web;

/// The node's handles, shared by every HTTP worker and every session.
pub type AppState = crate::session::core::SessionDeps;

/// Largest JSON body of an HTTP request, in bytes.
const MAX_JSON_BYTES: usize = 256 * 1024;

/// Every route of PROTOCOL.md §9; extractor errors become JSON errors.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_JSON_BYTES).error_handler(|e, _| {
        use actix_web::error::JsonPayloadError as J;
        match e {
            J::Overflow { .. } | J::OverflowKnownLength { .. } => {
                ApiError::too_large(format!("request body: larger than {MAX_JSON_BYTES} bytes")).into()
            }
            e => ApiError::bad_request(format!("request body: {e}")).into(),
        }
    }))
    .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::bad_request(format!("query: {e}")).into()))
    .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::bad_request(format!("path: {e}")).into()))
    .route("/ws", web::get().to(ws::upgrade))
    .route("/api/login", web::post().to(api::login))
    .route("/api/embed-check", web::get().to(ws::embed_check))
    .route("/api/conversations", web::get().to(api::list_conversations))
    .route("/api/conversations/{id}/messages", web::get().to(api::get_messages))
    .route("/api/conversations/{id}/messages", web::post().to(api::post_message))
    .route("/healthz", get_or_head().to(api::healthz))
    .route("/readyz", get_or_head().to(api::readyz))
    .route("/metrics", get_or_head().to(metrics::metrics))
    .route("/", get_or_head().to(pages::index))
    .route("/agent", get_or_head().to(pages::agent))
    .route("/{file:.*}", get_or_head().to(pages::file));
}

/// GET, and HEAD (same headers, no body: actix-http leaves the body out).
fn get_or_head() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}
