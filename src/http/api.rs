//! The REST routes of PROTOCOL.md §9. Errors are JSON `{code, message}` with
//! the matching status (error::ApiError).

use super::AppState;
use crate::auth::{check_password, dummy_hash, Claims};
use crate::chat::messages::{HttpCaller, HttpHistory, HttpSend, LiveConversations};
use crate::error::ApiError;
use crate::protocol::{ConvStatus, Conversation, Role, User, SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT};
use crate::store::ConvFilter;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

/// Conversations per page of `GET /api/conversations`, by default and at most.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 500;
/// Closed conversations reachable by paging (newest first).
const CLOSED_LISTED: usize = 10_000;

fn claims(req: &HttpRequest, app: &AppState) -> Result<Claims, ApiError> {
    let h = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token =
        h.strip_prefix("Bearer ").ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
    app.signer.verify(token.trim()).map_err(|why| ApiError::unauthorized(format!("token: {why}")))
}

/// The agent behind a bearer token, checked against the accounts table.
async fn agent(req: &HttpRequest, app: &AppState) -> Result<User, ApiError> {
    let c = claims(req, app)?;
    if c.role != Role::Agent {
        return Err(ApiError::forbidden("agents only"));
    }
    match app.store.agent_by_id(&c.sub).await? {
        Some(a) if a.token_valid(c.iat) => Ok(User { id: a.id, role: Role::Agent, name: a.name }),
        Some(_) => Err(ApiError::unauthorized(crate::auth::REVOKED)),
        None => Err(ApiError::unauthorized("token: this agent account no longer exists")),
    }
}

async fn caller(req: &HttpRequest, app: &AppState) -> Result<User, ApiError> {
    let c = claims(req, app)?;
    match c.role {
        Role::Agent => agent(req, app).await,
        _ => Ok(User { id: c.sub, role: Role::Customer, name: c.name }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    name: String,
    password: String,
}

pub async fn login(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Json<Login>,
) -> Result<HttpResponse, ApiError> {
    let Login { name, password } = body.into_inner();
    let ip = super::ws::client_addr(&req, &app.cfg);
    if let Err(wait) = app.guard.login_allowed(ip, &name) {
        super::metrics::counters().logins_throttled.inc();
        return Err(ApiError::rate_limited("too many wrong passwords: wait before trying again", wait));
    }
    let row = app.store.agent_by_name(&name).await?;
    let hash = row.as_ref().map(|r| r.password_hash.clone()).unwrap_or_else(|| dummy_hash().to_string());
    // Argon2 takes tens of milliseconds of CPU: keep it off the worker thread.
    let ok = check_password(password, hash)
        .await
        .ok_or_else(|| ApiError::unavailable("too many logins at once, retry in a moment"))?;
    match row {
        Some(a) if ok => {
            let token = app.signer.issue(&a.id, Role::Agent, &a.name, app.cfg.agent_token_ttl_secs);
            let user = User { id: a.id, role: Role::Agent, name: a.name };
            Ok(HttpResponse::Ok().json(json!({"token": token, "agent": user})))
        }
        _ => {
            super::metrics::counters().logins_failed.inc();
            app.guard.login_failed(ip, &name);
            Err(ApiError::unauthorized("wrong name or password"))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    room: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

pub async fn list_conversations(
    req: HttpRequest,
    app: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    agent(&req, &app).await?;
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    if limit == 0 || limit > LIST_MAX {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {LIST_MAX}")));
    }
    let offset = q.offset.unwrap_or(0);
    if offset >= CLOSED_LISTED {
        return Err(ApiError::bad_request(format!("offset: must be below {CLOSED_LISTED}")));
    }
    let room = q.room.filter(|r| !r.is_empty());
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            ConvStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("status: `{s}` is not queued, active or closed")))?,
        ),
    };
    let mut list: Vec<Conversation> = Vec::new();
    if status != Some(ConvStatus::Closed) {
        list = app
            .server
            .send(LiveConversations { room: room.clone(), status })
            .await
            .map_err(|_| ApiError::unavailable("server busy"))??;
    } else if let Some(r) = &room {
        if !app.cfg.rooms.contains(r) {
            return Err(ApiError::not_found(format!("no room `{r}`")));
        }
    }
    // One more than the page, to know whether another page follows.
    let wanted = offset + limit + 1;
    if (status.is_none() || status == Some(ConvStatus::Closed)) && list.len() < wanted {
        let rows = app
            .store
            .conversations(ConvFilter {
                room,
                status: Some(ConvStatus::Closed),
                customer_id: None,
                limit: (wanted - list.len()) as u32,
            })
            .await?;
        list.extend(rows.into_iter().map(|r| Conversation {
            id: r.id,
            room: r.room,
            status: r.status,
            customer: r.customer,
            agent: r.agent,
            created_at: r.created_at,
            last_seq: r.last_seq,
            queue_position: None,
            contact_email: r.contact_email,
        }));
    }
    let more = list.len() > offset + limit;
    let page: Vec<Conversation> = list.into_iter().skip(offset).take(limit).collect();
    let mut res = HttpResponse::Ok();
    if more {
        // The next page, as the same query with a later offset (RFC 8288).
        let mut next: Vec<String> = req
            .query_string()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("offset="))
            .map(String::from)
            .collect();
        next.push(format!("offset={}", offset + limit));
        res.insert_header((
            actix_web::http::header::LINK,
            format!("</api/conversations?{}>; rel=\"next\"", next.join("&")),
        ));
    }
    Ok(res.json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

pub async fn get_messages(
    req: HttpRequest,
    app: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = caller(&req, &app).await?;
    let limit = q.limit.unwrap_or(SYNC_DEFAULT_LIMIT);
    if limit == 0 || limit > SYNC_MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {SYNC_MAX_LIMIT}")));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let msg = HttpHistory {
        caller: HttpCaller { user },
        conversation: path.into_inner(),
        after_seq: q.after_seq.unwrap_or(0),
        limit,
        reply: tx,
        loaded: false,
    };
    app.server.try_send(msg).map_err(|_| ApiError::unavailable("server busy, retry"))?;
    let page = rx.await.map_err(|_| ApiError::internal())??;
    let mut body = json!({"messages": page.messages, "more": page.more});
    if let Some(h) = page.hidden_seqs {
        body["hidden_seqs"] = json!(h);
    } else {
        body["hidden_seqs"] = json!([]);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    client_id: String,
    body: String,
    #[serde(default)]
    internal: bool,
}

pub async fn post_message(
    req: HttpRequest,
    app: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let user = agent(&req, &app).await?;
    if let Err(wait) = app.guard.http_sends.take(&user.id) {
        let why = format!("more than {} messages per second: slow down", app.cfg.rate_per_sec);
        return Err(ApiError::rate_limited(why, wait));
    }
    let b = body.into_inner();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let msg = HttpSend {
        caller: HttpCaller { user },
        conversation: path.into_inner(),
        client_id: b.client_id,
        body: b.body,
        internal: b.internal,
        reply: tx,
        loaded: false,
    };
    app.server.try_send(msg).map_err(|_| ApiError::unavailable("server busy, retry"))?;
    let m = rx.await.map_err(|_| ApiError::internal())??;
    Ok(HttpResponse::Ok().json(json!({"id": m.id, "seq": m.seq, "ts": m.ts})))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(app: web::Data<AppState>) -> HttpResponse {
    match app.store.ping().await {
        Ok(()) => match crate::backplane::redis::unready() {
            // Its own sessions are served; the other nodes' effects do not arrive.
            Some(reason) => HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable", "reason": reason})),
            None => HttpResponse::Ok().json(json!({"status": "ready"})),
        },
        Err(e) => {
            log::warn!("readyz: {e}");
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "unavailable", "reason": "storage does not answer"}))
        }
    }
}
