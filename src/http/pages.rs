//! The customer widget and agent console (web/), compiled into the binary.
//! Debug builds read web/ from disk at request time.

use actix_web::{http::header, web, HttpResponse};
use rust_embed::RustEmbed;

use super::AppState;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Web;

/// No inline script or style; the WebSocket may only go back to this server
/// ('self' covers ws: and wss: to the page's own host and port, CSP level 3).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; media-src 'self' data:; frame-ancestors 'self'";

/// The pages' CSP: with `--public-url`, that address's WebSocket form is named too.
fn csp(app: &AppState) -> String {
    match &app.cfg.public_origin {
        None => CSP.to_string(),
        Some(o) => {
            let ws = o.replacen("http", "ws", 1);
            CSP.replace("connect-src 'self'", &format!("connect-src 'self' {o} {ws}"))
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

fn serve(app: &AppState, path: &str) -> HttpResponse {
    match Web::get(path) {
        Some(f) => {
            let mut res = HttpResponse::Ok();
            res.insert_header((header::CONTENT_TYPE, content_type(path)))
                .insert_header((header::CONTENT_SECURITY_POLICY, csp(app)))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .insert_header((header::REFERRER_POLICY, "same-origin"))
                .insert_header((header::CACHE_CONTROL, "no-cache"));
            // The widget's scripts (ES modules) and styles are loaded by other
            // sites' pages, which browsers allow only with this header.
            if path.ends_with(".js") || path.ends_with(".css") {
                res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
            }
            res.body(f.data.into_owned())
        }
        None => crate::error::ApiError::not_found(format!("no page /{path}")).into(),
    }
}

pub async fn index(app: web::Data<AppState>) -> HttpResponse {
    serve(&app, "index.html")
}

pub async fn agent(app: web::Data<AppState>) -> HttpResponse {
    serve(&app, "agent.html")
}

pub async fn file(app: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let p = path.into_inner();
    if p.split('/').any(|seg| seg == ".." || seg.starts_with('.')) {
        return crate::error::ApiError::not_found("no such page").into();
    }
    serve(&app, &p)
}

impl From<crate::error::ApiError> for HttpResponse {
    fn from(e: crate::error::ApiError) -> Self {
        actix_web::ResponseError::error_response(&e)
    }
}
