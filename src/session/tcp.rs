//! The TCP gateway for bots and back-end services (PROTOCOL.md §1): frames are
//! a 4-byte big-endian length then UTF-8 JSON, at most 1 MiB. One actor per
//! connection around the shared [`Core`], registered with the ChatServer like
//! a WebSocket session. Writes go through a bounded queue to a writer task;
//! a client that stops reading overflows it and is cut off.

use super::core::{Core, Refusal, SessionDeps, Step};
use super::JamSwitch;
use crate::chat::messages::Outbound;
use crate::error::{ApiError, ErrorCode};
use crate::protocol::{self, close, Encoded, Out};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// Largest frame, in bytes (PROTOCOL.md §1).
pub const MAX_FRAME: usize = 1 << 20;

/// Binds the gateway and serves it on the current arbiter. Returns the bound address.
pub fn listen(addr: &str, deps: SessionDeps) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    actix_web::rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(slot) = deps.guard.connect(peer.ip()) else {
                        log::info!("tcp gateway: {} holds too many connections; refused", peer.ip());
                        refuse_busy(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let deps = deps.clone();
                    TcpSession::create(move |ctx| TcpSession::new(stream, peer, deps, slot, ctx));
                }
                Err(e) => {
                    log::warn!("tcp gateway: accept failed: {e}");
                    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

/// Tells a client over its connection limit why, then closes.
fn refuse_busy(mut stream: tokio::net::TcpStream) {
    let e = ApiError::new(ErrorCode::RateLimited, "too many connections from your address");
    let f = protocol::error_frame(None, &e).into_bytes();
    actix_web::rt::spawn(async move {
        let mut frame = (f.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&f);
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await;
        let _ = stream.shutdown().await;
    });
}

/// A frame for the writer task: bytes, and how many of them the ChatServer
/// counted in the session's queue.
type Write = (Bytes, usize);

pub struct TcpSession {
    core: Core,
    tx: Option<mpsc::Sender<Write>>,
}

impl TcpSession {
    fn new(
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        deps: SessionDeps,
        slot: crate::abuse::ConnSlot,
        ctx: &mut Context<Self>,
    ) -> Self {
        let jam = JamSwitch::new(Some((stream.as_raw_fd(), peer)));
        let core = Core::new(deps, jam.clone(), slot);
        let (read, write) = stream.into_split();
        let codec =
            LengthDelimitedCodec::builder().big_endian().length_field_length(4).max_frame_length(MAX_FRAME).new_codec();
        ctx.add_stream(FramedRead::new(read, codec));
        let (tx, rx) = mpsc::channel(core.deps.cfg.queue_messages);
        actix_web::rt::spawn(writer(write, rx, core.queued.clone(), jam));
        TcpSession { core, tx: Some(tx) }
    }

    /// Queues a frame for the writer; a full queue means the client is not
    /// reading: it is cut off.
    fn write(&mut self, f: Encoded, counted: usize, ctx: &mut Context<Self>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send((f.into_bytes(), counted)).is_err() {
            log::info!("tcp session s_{:016x}: outbound queue full, closing", self.core.sid);
            crate::http::metrics::counters().sessions_jammed.inc();
            self.tx = None;
            self.core.jam.force();
            ctx.stop();
        }
    }

    /// TCP has no close frames: say why in an `error` frame, then close.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        let code_name = match code {
            close::UNAUTHORIZED => ErrorCode::Unauthorized,
            close::TOO_BIG => ErrorCode::TooLarge,
            close::TOO_SLOW => ErrorCode::RateLimited,
            close::INVALID_UTF8 | close::POLICY => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        };
        let f = protocol::error_frame(None, &ApiError::new(code_name, format!("closing ({code}): {reason}")));
        self.write(f, 0, ctx);
        self.tx = None; // the writer flushes what is queued, then shuts the socket down
        ctx.stop();
    }

    fn refuse(&mut self, r: Refusal, ctx: &mut Context<Self>) {
        self.write(r.frame, 0, ctx);
        self.tx = None;
        ctx.stop();
    }

    fn fail(&mut self, e: ApiError, ctx: &mut Context<Self>) {
        self.write(protocol::error_frame(None, &e), 0, ctx);
        self.tx = None;
        ctx.stop();
    }

    fn step(&mut self, step: Step, ctx: &mut Context<Self>) {
        match step {
            Step::Nothing => {}
            Step::Reply(f) => self.write(f, 0, ctx),
            Step::Refuse(r) => self.refuse(r, ctx),
            Step::Close(code, reason) => self.close(code, &reason, ctx),
            Step::Authenticate(fut) => {
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok(who) => {
                        if let Some(left) = act.core.connect(who, ctx.address().recipient()) {
                            ctx.run_later(left, |act, ctx| act.refuse(Core::token_expired(), ctx));
                        }
                    }
                    Err(r) => act.refuse(r, ctx),
                }));
            }
        }
    }
}

async fn writer(w: OwnedWriteHalf, mut rx: mpsc::Receiver<Write>, queued: Arc<AtomicUsize>, jam: Arc<JamSwitch>) {
    let mut w = BufWriter::new(w);
    'outer: while let Some((b, counted)) = rx.recv().await {
        let mut next = Some((b, counted));
        // Write everything already queued, then flush once.
        while let Some((b, counted)) = next {
            if w.write_all(&(b.len() as u32).to_be_bytes()).await.is_err() || w.write_all(&b).await.is_err() {
                break 'outer;
            }
            queued.fetch_sub(counted, Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
    jam.finish();
}

impl Actor for TcpSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.core.deps.cfg.queue_messages);
        let hb = Duration::from_millis(self.core.deps.cfg.heartbeat_ms);
        ctx.run_interval(hb, move |act, ctx| {
            if act.core.last_heard.elapsed() > hb * super::ws::SILENT_INTERVALS {
                act.close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout", ctx);
            } else {
                act.write(Out::Ping {}.encode(), 0, ctx);
            }
        });
        ctx.run_later(Duration::from_millis(self.core.deps.cfg.hello_timeout_ms), |act, ctx| {
            if let Some(r) = act.core.hello_timeout() {
                act.refuse(r, ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.core.stopped();
    }
}

impl Handler<Outbound> for TcpSession {
    type Result = ();

    fn handle(&mut self, m: Outbound, ctx: &mut Self::Context) {
        match m {
            Outbound::Frame(f) => {
                let n = f.len();
                self.write(f, n, ctx);
            }
            Outbound::Close(code, reason) => self.close(code, reason, ctx),
        }
    }
}

impl StreamHandler<Result<BytesMut, std::io::Error>> for TcpSession {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Self::Context) {
        self.core.last_heard = Instant::now();
        let buf = match item {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return self.fail(ApiError::too_large(format!("frame longer than {MAX_FRAME} bytes")), ctx)
            }
            Err(_) => return ctx.stop(),
        };
        let Ok(text) = std::str::from_utf8(&buf) else {
            return self.fail(ApiError::bad_request("frame is not UTF-8"), ctx);
        };
        // A frame that is not JSON at all ends the connection (PROTOCOL.md §1);
        // well-formed JSON with wrong fields is answered and the connection stays.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return self.fail(ApiError::bad_request(format!("frame is not JSON: {e}")), ctx);
        }
        let step = self.core.on_text(text);
        self.step(step, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
