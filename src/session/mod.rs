//! Session actors, one per connection: `ws` (WebSocket) and `tcp` (the
//! gateway), both around `core` (hello, limits, forwarding). Shared here: the rate
//! limiter and the jam switch that ends a connection whose actor can no longer
//! run (ARCHITECTURE.md, "known traps").

pub mod core;
pub mod frame_guard;
pub mod tcp;
pub mod ws;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until a token is there; `None` if one is there now.
    pub fn wait(&mut self) -> Option<std::time::Duration> {
        self.refill();
        (self.tokens < 1.0).then(|| std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate.max(1e-9)))
    }

    /// Whether it has refilled to its burst (nothing to remember about it).
    pub fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets the ChatServer end a connection whose session actor is stuck because
/// the client stopped reading (the actor only runs while the response body is
/// polled). Tripping it makes the body stream send a 4008 close frame and end
/// as soon as it is polled again; if the client never reads again, `force`
/// shuts the socket down so the connection and its memory are released.
#[derive(Debug)]
pub struct JamSwitch {
    tripped: AtomicBool,
    finished: AtomicBool,
    waker: AtomicWaker,
    socket: Option<(std::os::fd::RawFd, SocketAddr)>,
}

impl JamSwitch {
    pub fn new(socket: Option<(std::os::fd::RawFd, SocketAddr)>) -> Arc<Self> {
        Arc::new(JamSwitch {
            tripped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            socket,
        })
    }

    pub fn trip(&self) {
        self.tripped.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The connection's writer is done (TCP sessions).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Shuts the socket down if the connection is still open.
    pub fn force(&self) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        let Some((fd, peer)) = self.socket else { return };
        // SAFETY: `fd` is the connection's socket, recorded when it was
        // accepted. The body stream has not finished, so the connection (and
        // its fd) is normally still open; in case it closed meanwhile and the
        // number was reused, the peer address check below makes sure we only
        // ever shut down the same TCP connection.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        if sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer) {
            log::info!("closing jammed connection from {peer}");
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The WebSocket response body, wrapped so a [`JamSwitch`] can end it.
pub struct JamGuarded<S> {
    inner: Pin<Box<S>>,
    switch: Arc<JamSwitch>,
    close_sent: bool,
}

impl<S> JamGuarded<S> {
    pub fn new(inner: S, switch: Arc<JamSwitch>) -> Self {
        JamGuarded { inner: Box::pin(inner), switch, close_sent: false }
    }
}

/// A server close frame (RFC 6455 §5.5.1: FIN + opcode 8, unmasked, 2-byte code).
fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    Bytes::from(f)
}

impl<S, E> Stream for JamGuarded<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.switch.tripped.load(Ordering::SeqCst) {
            if self.close_sent {
                return Poll::Ready(None);
            }
            self.close_sent = true;
            return Poll::Ready(Some(Ok(close_frame(crate::protocol::close::TOO_SLOW, "outbound queue overflow"))));
        }
        self.switch.waker.register(cx.waker());
        self.inner.as_mut().poll_next(cx)
    }
}

impl<S> Drop for JamGuarded<S> {
    fn drop(&mut self) {
        self.switch.finished.store(true, Ordering::SeqCst);
    }
}
