//! What every session does whatever its transport: hello and authentication,
//! the per-connection rate limit, decoding and forwarding requests to the
//! ChatServer. The transport actors (`ws`, `tcp`) turn each [`Step`] into
//! frames and closes of their own kind.

use super::{JamSwitch, TokenBucket};
use crate::auth::{new_id, Signer};
use crate::chat::messages::{ClientRequest, Connect, Disconnect, Outbound};
use crate::chat::ChatServer;
use crate::config::{Config, CUSTOMER_TOKEN_TTL_SECS};
use crate::error::{ApiError, ErrorCode};
use crate::protocol::{self, close, Encoded, Hello, Out, Request, Role, User};
use crate::store::{AgentRow, ConvFilter, ConvRow, Store};
use actix::{Addr, Recipient};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Conversations listed in a returning customer's `welcome`.
const WELCOME_CONVERSATIONS: u32 = 50;

/// A new session id: 64 random bits, so ids from different processes and
/// nodes do not collide (shown as `s_` and 16 hex digits).
fn new_sid() -> u64 {
    rand::random::<u64>().max(1) // 0 stands for "no session" in places
}

/// Everything a session needs from the node.
#[derive(Clone)]
pub struct SessionDeps {
    pub cfg: Arc<Config>,
    pub server: Addr<ChatServer>,
    pub store: Arc<dyn Store>,
    pub signer: Arc<Signer>,
    pub guard: Arc<crate::abuse::Guard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `hello`.
    Hello,
    /// `hello` received, token being checked.
    Authenticating,
    /// Registered with the ChatServer.
    Ready,
}

/// Who a good `hello` turned out to be.
pub struct Identity {
    user: User,
    agent: Option<AgentRow>,
    stored: Vec<ConvRow>,
    token: Option<String>,
    /// An agent's token: when it was issued (Unix ms) and how long it has left.
    agent_token: Option<(u64, std::time::Duration)>,
}

/// A refused `hello`: the error to send, then close with `code`.
pub struct Refusal {
    pub frame: Encoded,
    pub code: u16,
    pub reason: String,
}

pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Identity, Refusal>>>>;

/// What the transport must do after a frame.
pub enum Step {
    Nothing,
    /// Write this frame.
    Reply(Encoded),
    /// Write this frame, then close with this code.
    Refuse(Refusal),
    /// Close with this code.
    Close(u16, String),
    /// Run this, then call [`Core::connect`] with its identity (or refuse).
    Authenticate(AuthFuture),
}

pub struct Core {
    pub sid: u64,
    pub deps: SessionDeps,
    pub phase: Phase,
    pub last_heard: Instant,
    rate: TokenBucket,
    /// Refused requests allowed before the connection is closed for abuse.
    abuse: TokenBucket,
    pub queued: Arc<AtomicUsize>,
    pub jam: Arc<JamSwitch>,
    /// The client's address, and its place in that address's connection count.
    slot: crate::abuse::ConnSlot,
}

fn refusal(r#ref: Option<&str>, code: ErrorCode, close_code: u16, why: &str) -> Refusal {
    Refusal {
        frame: protocol::error_frame(r#ref, &ApiError::new(code, why)),
        code: close_code,
        reason: why.chars().take(100).collect(),
    }
}

fn unauthorized(r#ref: Option<&str>, why: &str) -> Refusal {
    refusal(r#ref, ErrorCode::Unauthorized, close::UNAUTHORIZED, why)
}

impl Core {
    pub fn new(deps: SessionDeps, jam: Arc<JamSwitch>, slot: crate::abuse::ConnSlot) -> Core {
        let cfg = &deps.cfg;
        Core {
            sid: new_sid(),
            rate: TokenBucket::new(cfg.rate_per_sec as f64, cfg.rate_burst as f64),
            abuse: TokenBucket::new(cfg.rate_per_sec as f64 / 4.0, cfg.rate_burst as f64),
            phase: Phase::Hello,
            last_heard: Instant::now(),
            queued: Arc::new(AtomicUsize::new(0)),
            jam,
            deps,
            slot,
        }
    }

    /// The hello timeout passed: refuse if no hello came.
    pub fn hello_timeout(&self) -> Option<Refusal> {
        (self.phase == Phase::Hello).then(|| unauthorized(None, "no hello in time"))
    }

    /// Handles one decoded-or-not text frame.
    pub fn on_text(&mut self, text: &str) -> Step {
        let frame = match protocol::decode(text) {
            Ok(f) => f,
            Err(e) if self.phase == Phase::Hello => {
                return Step::Refuse(unauthorized(
                    e.r#ref.as_deref(),
                    &format!("send hello first ({})", e.error.message),
                ))
            }
            Err(e) => return Step::Reply(protocol::error_frame(e.r#ref.as_deref(), &e.error)),
        };
        let r#ref = frame.r#ref;
        match (self.phase, frame.req) {
            (Phase::Hello, Request::Hello(h)) => self.hello(h, r#ref),
            (Phase::Hello, other) => {
                Step::Refuse(unauthorized(r#ref.as_deref(), &format!("send hello first, not {}", other.name())))
            }
            (Phase::Authenticating, _) => Step::Reply(protocol::error_frame(
                r#ref.as_deref(),
                &ApiError::unauthorized("wait for welcome before sending requests"),
            )),
            (Phase::Ready, Request::Ping) => match self.limit(r#ref.as_deref(), "ping") {
                Ok(()) => Step::Reply(Out::Pong { r#ref: r#ref.as_deref() }.encode()),
                Err(step) => step,
            },
            (Phase::Ready, Request::Pong) => self.limit(None, "pong").err().unwrap_or(Step::Nothing),
            (Phase::Ready, req) => self.forward(r#ref, req),
        }
    }

    /// The per-connection rate limit, which every request after `hello`
    /// counts against (pings too): `Err` with what to do when over it.
    fn limit(&mut self, r#ref: Option<&str>, what: &str) -> Result<(), Step> {
        if self.rate.take() {
            return Ok(());
        }
        if !self.abuse.take() {
            return Err(Step::Close(close::TOO_SLOW, "rate limit exceeded repeatedly".into()));
        }
        let e = ApiError::new(
            ErrorCode::RateLimited,
            format!("more than {} requests per second: {what} dropped", self.deps.cfg.rate_per_sec),
        );
        Err(Step::Reply(protocol::error_frame(r#ref, &e)))
    }

    fn forward(&mut self, r#ref: Option<String>, req: Request) -> Step {
        if let Err(step) = self.limit(r#ref.as_deref(), req.name()) {
            return step;
        }
        let msg = ClientRequest { sid: self.sid, r#ref: r#ref.clone(), req, loaded: false };
        match self.deps.server.try_send(msg) {
            Ok(()) => Step::Nothing,
            Err(_) => Step::Reply(protocol::error_frame(
                r#ref.as_deref(),
                &ApiError::unavailable("server busy, nothing was applied; retry"),
            )),
        }
    }

    fn hello(&mut self, h: Hello, r#ref: Option<String>) -> Step {
        let role = match h.role.as_str() {
            "customer" => Role::Customer,
            "agent" => Role::Agent,
            other => {
                return Step::Refuse(unauthorized(
                    r#ref.as_deref(),
                    &format!("role: `{other}` is not customer or agent"),
                ))
            }
        };
        if let Some(n) = &h.name {
            if let Some(why) = protocol::name_problem(n) {
                return Step::Refuse(unauthorized(r#ref.as_deref(), &format!("name: {why}")));
            }
        }
        let claims = match h.token.as_deref().map(|t| self.deps.signer.verify(t)) {
            None => None,
            Some(Ok(c)) if c.role == role => Some(c),
            Some(Ok(_)) => return Step::Refuse(unauthorized(r#ref.as_deref(), "token: issued for another role")),
            Some(Err(why)) => return Step::Refuse(unauthorized(r#ref.as_deref(), &format!("token: {why}"))),
        };
        self.phase = Phase::Authenticating;
        let store = self.deps.store.clone();
        let storage_down = move |r: Option<&str>, e: crate::error::StoreError| {
            let e: ApiError = e.into();
            Refusal { frame: protocol::error_frame(r, &e), code: close::INTERNAL, reason: "storage unavailable".into() }
        };
        match role {
            Role::Agent => {
                let Some(claims) = claims else {
                    return Step::Refuse(unauthorized(
                        r#ref.as_deref(),
                        "token: agents log in with POST /api/login first",
                    ));
                };
                Step::Authenticate(Box::pin(async move {
                    match store.agent_by_id(&claims.sub).await {
                        Ok(Some(row)) if row.token_valid(claims.iat) => Ok(Identity {
                            user: User { id: row.id.clone(), role: Role::Agent, name: row.name.clone() },
                            agent: Some(row),
                            stored: Vec::new(),
                            token: None,
                            agent_token: Some((claims.iat, claims.ttl())),
                        }),
                        Ok(Some(_)) => Err(unauthorized(r#ref.as_deref(), crate::auth::REVOKED)),
                        Ok(None) => Err(unauthorized(r#ref.as_deref(), "token: this agent account no longer exists")),
                        Err(e) => Err(storage_down(r#ref.as_deref(), e)),
                    }
                }))
            }
            _ => {
                let (id, name) = match &claims {
                    Some(c) => (c.sub.clone(), h.name.clone().unwrap_or_else(|| c.name.clone())),
                    None => (new_id("v_"), h.name.clone().unwrap_or_default()),
                };
                let name = if name.trim().is_empty() { "Guest".to_string() } else { name };
                let token = self.deps.signer.issue(&id, Role::Customer, &name, CUSTOMER_TOKEN_TTL_SECS);
                let user = User { id: id.clone(), role: Role::Customer, name };
                let returning = claims.is_some();
                Step::Authenticate(Box::pin(async move {
                    let stored = if returning {
                        let filter =
                            ConvFilter { customer_id: Some(id), limit: WELCOME_CONVERSATIONS, ..Default::default() };
                        store.conversations(filter).await.map_err(|e| storage_down(r#ref.as_deref(), e))?
                    } else {
                        Vec::new()
                    };
                    Ok(Identity { user, agent: None, stored, token: Some(token), agent_token: None })
                }))
            }
        }
    }

    /// Registers with the ChatServer, which answers with `welcome`. Returns
    /// how long an agent's token has left: the transport ends the session
    /// then (close 4501), so no session outlives its credentials.
    pub fn connect(&mut self, who: Identity, outbox: Recipient<Outbound>) -> Option<std::time::Duration> {
        self.phase = Phase::Ready;
        let expires = who.agent_token.map(|(_, ttl)| ttl);
        self.deps.server.do_send(Connect {
            token_iat: who.agent_token.map(|(iat, _)| iat).unwrap_or(0),
            addr: self.slot.ip,
            sid: self.sid,
            user: who.user,
            agent: who.agent,
            stored: who.stored,
            token: who.token,
            outbox,
            queued: self.queued.clone(),
            jam: Some(self.jam.clone()),
        });
        expires
    }

    /// The refusal that ends a session whose token expired.
    pub fn token_expired() -> Refusal {
        unauthorized(None, "token expired: sign in again")
    }

    /// A frame the ChatServer queued is being written.
    pub fn dequeued(&self, f: &Encoded) {
        self.queued.fetch_sub(f.len(), Ordering::Relaxed);
    }

    /// The connection is over.
    pub fn stopped(&self) {
        if self.phase == Phase::Ready {
            self.deps.server.do_send(Disconnect { sid: self.sid });
        }
    }
}
