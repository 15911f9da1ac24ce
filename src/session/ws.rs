//! One actor per WebSocket connection: the transport half of a session
//! (frames, pings, close codes) around the shared [`Core`]. Everything it
//! writes for the ChatServer comes through its bounded mailbox
//! ([`Outbound`]), so a client that stops reading is noticed there.

use super::core::{Core, Refusal, SessionDeps, Step};
use super::JamSwitch;
use crate::chat::messages::Outbound;
use crate::error::ApiError;
use crate::protocol::{self, close};
use actix::prelude::*;
use actix_web_actors::ws;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Silence (no frame, no pong) tolerated, in heartbeat intervals.
pub const SILENT_INTERVALS: u32 = 3;

pub struct WsSession {
    core: Core,
    /// Raised by the incoming stream's guard on an oversized frame.
    oversize: Arc<AtomicBool>,
}

impl WsSession {
    pub fn new(
        deps: SessionDeps,
        jam: Arc<JamSwitch>,
        oversize: Arc<AtomicBool>,
        slot: crate::abuse::ConnSlot,
    ) -> Self {
        WsSession { core: Core::new(deps, jam, slot), oversize }
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        ctx.close(Some(ws::CloseReason { code: code.into(), description: Some(reason.to_string()) }));
        ctx.stop();
    }

    fn refuse(&self, ctx: &mut ws::WebsocketContext<Self>, r: Refusal) {
        ctx.text(r.frame);
        self.close(ctx, r.code, &r.reason);
    }

    fn step(&mut self, step: Step, ctx: &mut ws::WebsocketContext<Self>) {
        match step {
            Step::Nothing => {}
            Step::Reply(f) => ctx.text(f),
            Step::Refuse(r) => self.refuse(ctx, r),
            Step::Close(code, reason) => self.close(ctx, code, &reason),
            Step::Authenticate(fut) => {
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok(who) => {
                        if let Some(left) = act.core.connect(who, ctx.address().recipient()) {
                            ctx.run_later(left, |act, ctx| act.refuse(ctx, Core::token_expired()));
                        }
                    }
                    Err(r) => act.refuse(ctx, r),
                }));
            }
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.core.deps.cfg.queue_messages);
        let hb = Duration::from_millis(self.core.deps.cfg.heartbeat_ms);
        ctx.run_interval(hb, move |act, ctx| {
            if act.core.last_heard.elapsed() > hb * SILENT_INTERVALS {
                act.close(ctx, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            } else {
                ctx.ping(b"");
            }
        });
        ctx.run_later(Duration::from_millis(self.core.deps.cfg.hello_timeout_ms), |act, ctx| {
            if let Some(r) = act.core.hello_timeout() {
                act.refuse(ctx, r);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.core.stopped();
    }
}

impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, m: Outbound, ctx: &mut Self::Context) {
        match m {
            Outbound::Frame(f) => {
                self.core.dequeued(&f);
                ctx.text(f);
            }
            Outbound::Close(code, reason) => self.close(ctx, code, reason),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.core.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(t)) => {
                let step = self.core.on_text(&t);
                self.step(step, ctx);
            }
            Ok(ws::Message::Binary(_)) => ctx.text(protocol::error_frame(
                None,
                &ApiError::bad_request("binary frames are not accepted: send JSON in text frames"),
            )),
            Ok(ws::Message::Continuation(_)) => ctx.text(protocol::error_frame(
                None,
                &ApiError::bad_request("fragmented frames are not accepted: send each request in one text frame"),
            )),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Io(_)) if super::frame_guard::tripped(&self.oversize) => {
                let why = format!("frame or message larger than {} bytes", self.core.deps.cfg.max_frame_bytes);
                self.close(ctx, close::TOO_BIG, &why);
            }
            Err(ws::ProtocolError::Overflow) => {
                let why = format!("frame larger than {} bytes", self.core.deps.cfg.max_frame_bytes);
                self.close(ctx, close::TOO_BIG, &why);
            }
            Err(ws::ProtocolError::Io(e)) if e.to_string().to_ascii_lowercase().contains("utf") => {
                self.close(ctx, close::INVALID_UTF8, "invalid UTF-8 in a text frame");
            }
            Err(e) => {
                log::debug!("session s_{:016x}: protocol error {e}", self.core.sid);
                self.close(ctx, close::POLICY, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
