//! One actor per WebSocket connection: hello and its timeout, heartbeat,
//! decoding, limits (frame size, rate), and forwarding requests to the
//! ChatServer. Everything it writes comes through its bounded mailbox
//! ([`Outbound`]), so a client that stops reading is noticed by the ChatServer.

use super::{JamSwitch, TokenBucket};
use crate::auth::{new_id, Signer};
use crate::chat::messages::{ClientRequest, Connect, Disconnect, Outbound};
use crate::chat::ChatServer;
use crate::config::{Config, CUSTOMER_TOKEN_TTL_SECS};
use crate::error::ApiError;
use crate::protocol::{self, char_len, close, Frame, Hello, Out, Request, Role, User, MAX_NAME_CHARS};
use crate::store::{ConvFilter, Store};
use actix::prelude::*;
use actix_web_actors::ws;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Silence (no frame, no pong) tolerated, in heartbeat intervals.
const SILENT_INTERVALS: u32 = 3;
/// Conversations listed in a returning customer's `welcome`.
const WELCOME_CONVERSATIONS: u32 = 50;

static NEXT_SID: AtomicUsize = AtomicUsize::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `hello`.
    Hello,
    /// `hello` received, token being checked.
    Authenticating,
    /// Registered with the ChatServer.
    Ready,
}

/// Everything a session needs from the node.
#[derive(Clone)]
pub struct SessionDeps {
    pub cfg: Arc<Config>,
    pub server: Addr<ChatServer>,
    pub store: Arc<dyn Store>,
    pub signer: Arc<Signer>,
}

pub struct WsSession {
    sid: u64,
    deps: SessionDeps,
    phase: Phase,
    last_heard: Instant,
    rate: TokenBucket,
    /// Refused requests allowed before the connection is closed for abuse.
    abuse: TokenBucket,
    queued: Arc<AtomicUsize>,
    jam: Arc<JamSwitch>,
}

impl WsSession {
    pub fn new(deps: SessionDeps, jam: Arc<JamSwitch>) -> Self {
        let cfg = &deps.cfg;
        WsSession {
            sid: NEXT_SID.fetch_add(1, Ordering::Relaxed) as u64,
            rate: TokenBucket::new(cfg.rate_per_sec as f64, cfg.rate_burst as f64),
            abuse: TokenBucket::new(cfg.rate_per_sec as f64 / 4.0, cfg.rate_burst as f64),
            phase: Phase::Hello,
            last_heard: Instant::now(),
            queued: Arc::new(AtomicUsize::new(0)),
            jam,
            deps,
        }
    }

    fn send_error(&self, ctx: &mut ws::WebsocketContext<Self>, r#ref: Option<&str>, e: &ApiError) {
        ctx.text(protocol::error_frame(r#ref, e));
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        ctx.close(Some(ws::CloseReason { code: code.into(), description: Some(reason.to_string()) }));
        ctx.stop();
    }

    fn refuse(&self, ctx: &mut ws::WebsocketContext<Self>, r#ref: Option<&str>, why: &str) {
        self.send_error(ctx, r#ref, &ApiError::unauthorized(why));
        self.close(ctx, close::UNAUTHORIZED, why);
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let frame = match protocol::decode(text) {
            Ok(f) => f,
            Err(e) if self.phase == Phase::Hello => {
                return self.refuse(ctx, e.r#ref.as_deref(), &format!("send hello first ({})", e.error.message))
            }
            Err(e) => return self.send_error(ctx, e.r#ref.as_deref(), &e.error),
        };
        match (self.phase, frame.req) {
            (Phase::Hello, Request::Hello(h)) => self.hello(h, frame.r#ref, ctx),
            (Phase::Hello, other) => {
                self.refuse(ctx, frame.r#ref.as_deref(), &format!("send hello first, not {}", other.name()))
            }
            (Phase::Authenticating, _) => self.send_error(
                ctx,
                frame.r#ref.as_deref(),
                &ApiError::unauthorized("wait for welcome before sending requests"),
            ),
            (Phase::Ready, Request::Ping) => ctx.text(Out::Pong { r#ref: frame.r#ref.as_deref() }.encode()),
            (Phase::Ready, Request::Pong) => {}
            (Phase::Ready, req) => self.forward(Frame { r#ref: frame.r#ref, req }, ctx),
        }
    }

    fn forward(&mut self, frame: Frame, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.rate.take() {
            if !self.abuse.take() {
                return self.close(ctx, close::TOO_SLOW, "rate limit exceeded repeatedly");
            }
            let e = ApiError::new(
                crate::error::ErrorCode::RateLimited,
                format!("more than {} requests per second: {} dropped", self.deps.cfg.rate_per_sec, frame.req.name()),
            );
            return self.send_error(ctx, frame.r#ref.as_deref(), &e);
        }
        let r#ref = frame.r#ref.clone();
        let msg = ClientRequest { sid: self.sid, r#ref: frame.r#ref, req: frame.req, loaded: false };
        if self.deps.server.try_send(msg).is_err() {
            self.send_error(ctx, r#ref.as_deref(), &ApiError::unavailable("server busy, nothing was applied; retry"));
        }
    }

    fn hello(&mut self, h: Hello, r#ref: Option<String>, ctx: &mut ws::WebsocketContext<Self>) {
        let role = match h.role.as_str() {
            "customer" => Role::Customer,
            "agent" => Role::Agent,
            other => return self.refuse(ctx, r#ref.as_deref(), &format!("role: `{other}` is not customer or agent")),
        };
        if let Some(n) = &h.name {
            if char_len(n) > MAX_NAME_CHARS || n.chars().any(char::is_control) {
                return self.refuse(
                    ctx,
                    r#ref.as_deref(),
                    &format!("name: at most {MAX_NAME_CHARS} printable characters"),
                );
            }
        }
        let claims = match h.token.as_deref().map(|t| self.deps.signer.verify(t)) {
            None => None,
            Some(Ok(c)) if c.role == role => Some(c),
            Some(Ok(_)) => return self.refuse(ctx, r#ref.as_deref(), "token: issued for another role"),
            Some(Err(why)) => return self.refuse(ctx, r#ref.as_deref(), &format!("token: {why}")),
        };
        self.phase = Phase::Authenticating;
        let deps = self.deps.clone();
        match role {
            Role::Agent => {
                let Some(claims) = claims else {
                    return self.refuse(ctx, r#ref.as_deref(), "token: agents log in with POST /api/login first");
                };
                let fut = deps.store.agent_by_id(&claims.sub);
                ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Some(row)) => {
                        let user = User { id: row.id.clone(), role: Role::Agent, name: row.name.clone() };
                        act.connect(user, Some(row), Vec::new(), None, ctx);
                    }
                    Ok(None) => act.refuse(ctx, r#ref.as_deref(), "token: this agent account no longer exists"),
                    Err(e) => {
                        act.send_error(ctx, r#ref.as_deref(), &e.into());
                        act.close(ctx, close::INTERNAL, "storage unavailable");
                    }
                }));
            }
            _ => {
                let (id, name) = match &claims {
                    Some(c) => (c.sub.clone(), h.name.clone().unwrap_or_else(|| c.name.clone())),
                    None => (new_id("v_"), h.name.clone().unwrap_or_default()),
                };
                let name = if name.trim().is_empty() { "Guest".to_string() } else { name };
                let token = deps.signer.issue(&id, Role::Customer, &name, CUSTOMER_TOKEN_TTL_SECS);
                let user = User { id: id.clone(), role: Role::Customer, name };
                if claims.is_none() {
                    return self.connect(user, None, Vec::new(), Some(token), ctx);
                }
                let filter = ConvFilter { customer_id: Some(id), limit: WELCOME_CONVERSATIONS, ..Default::default() };
                let fut = deps.store.conversations(filter);
                ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(rows) => act.connect(user, None, rows, Some(token), ctx),
                    Err(e) => {
                        act.send_error(ctx, r#ref.as_deref(), &e.into());
                        act.close(ctx, close::INTERNAL, "storage unavailable");
                    }
                }));
            }
        }
    }

    fn connect(
        &mut self,
        user: User,
        agent: Option<crate::store::AgentRow>,
        stored: Vec<crate::store::ConvRow>,
        token: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.phase = Phase::Ready;
        self.deps.server.do_send(Connect {
            sid: self.sid,
            user,
            agent,
            stored,
            token,
            outbox: ctx.address().recipient(),
            queued: self.queued.clone(),
            jam: Some(self.jam.clone()),
        });
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.deps.cfg.queue_messages);
        let hb = Duration::from_millis(self.deps.cfg.heartbeat_ms);
        ctx.run_interval(hb, move |act, ctx| {
            if act.last_heard.elapsed() > hb * SILENT_INTERVALS {
                act.close(ctx, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            } else {
                ctx.ping(b"");
            }
        });
        ctx.run_later(Duration::from_millis(self.deps.cfg.hello_timeout_ms), |act, ctx| {
            if act.phase == Phase::Hello {
                act.refuse(ctx, None, "no hello in time");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.phase == Phase::Ready {
            self.deps.server.do_send(Disconnect { sid: self.sid });
        }
    }
}

impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, m: Outbound, ctx: &mut Self::Context) {
        match m {
            Outbound::Frame(f) => {
                self.queued.fetch_sub(f.len(), Ordering::Relaxed);
                ctx.text(f);
            }
            Outbound::Close(code, reason) => self.close(ctx, code, reason),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(t)) => self.on_text(&t, ctx),
            Ok(ws::Message::Binary(_)) => self.send_error(
                ctx,
                None,
                &ApiError::bad_request("binary frames are not accepted: send JSON in text frames"),
            ),
            Ok(ws::Message::Continuation(_)) => self.send_error(
                ctx,
                None,
                &ApiError::bad_request("fragmented frames are not accepted: send each request in one text frame"),
            ),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                let why = format!("frame larger than {} bytes", self.deps.cfg.max_frame_bytes);
                self.close(ctx, close::TOO_BIG, &why);
            }
            Err(ws::ProtocolError::Io(e)) if e.to_string().to_ascii_lowercase().contains("utf") => {
                self.close(ctx, close::INVALID_UTF8, "invalid UTF-8 in a text frame");
            }
            Err(e) => {
                log::debug!("session s_{}: protocol error {e}", self.sid);
                self.close(ctx, close::POLICY, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
