//! The guard on a WebSocket's incoming bytes: it reads each frame header as
//! it streams past and ends the stream as soon as a header announces more than
//! the frame limit, or a fragmented message's fragments add up past it.
//!
//! Why it exists: actix-http's frame parser (3.20) compares a frame's length
//! with the limit only once the whole frame has arrived, and actix-web-actors
//! appends every chunk to its buffer meanwhile, so a header announcing 2^40
//! bytes made the server buffer whatever followed. Behind this guard no
//! connection makes the server hold more than about the limit of one frame.
//!
//! The guard does not copy or buffer payload bytes: it passes chunks through
//! and keeps at most one frame header (14 bytes) between chunks.

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Longest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Tracks frame boundaries in a client's byte stream (RFC 6455 §5.2).
#[derive(Debug, Default)]
pub struct FrameScanner {
    limit: u64,
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Bytes so far of a fragmented data message (text/binary + continuations).
    fragmented: u64,
}

/// What the scanner found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// One frame's header announced this many bytes.
    Frame(u64),
    /// A fragmented message's fragments add up to this many bytes.
    Message(u64),
}

impl FrameScanner {
    pub fn new(limit: usize) -> FrameScanner {
        FrameScanner { limit: limit as u64, ..Default::default() }
    }

    /// Header length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => n as u64,
        }
    }

    /// Scans one chunk; an error as soon as a header announces too much.
    pub fn scan(&mut self, mut chunk: &[u8]) -> Result<(), Oversize> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() as u64);
                self.remaining -= skip;
                chunk = &chunk[skip as usize..];
                continue;
            }
            // Collect the header: the first two bytes tell its length.
            let want = if self.have < 2 { 2 } else { self.header_len() };
            let take = (want - self.have).min(chunk.len());
            self.header[self.have..self.have + take].copy_from_slice(&chunk[..take]);
            self.have += take;
            chunk = &chunk[take..];
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            let len = self.payload_len();
            let fin = self.header[0] & 0x80 != 0;
            let opcode = self.header[0] & 0x0f;
            self.have = 0;
            if len > self.limit {
                return Err(Oversize::Frame(len));
            }
            // Control frames (opcode 8 and up) may stand between fragments.
            if opcode < 8 {
                let total = if opcode == 0 { self.fragmented.saturating_add(len) } else { len };
                if total > self.limit {
                    return Err(Oversize::Message(total));
                }
                self.fragmented = if fin { 0 } else { total };
            }
            self.remaining = len;
        }
        Ok(())
    }
}

/// The incoming side of a WebSocket, guarded by a [`FrameScanner`]. On an
/// oversized frame it raises `tripped` and ends the stream with an error (the
/// session then closes with 1009), and reads nothing more.
pub struct GuardedPayload<S> {
    inner: S,
    scanner: FrameScanner,
    tripped: Arc<AtomicBool>,
    done: bool,
}

impl<S> GuardedPayload<S> {
    pub fn new(inner: S, limit: usize, tripped: Arc<AtomicBool>) -> Self {
        GuardedPayload { inner, scanner: FrameScanner::new(limit), tripped, done: false }
    }
}

impl<S> Stream for GuardedPayload<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.scanner.scan(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(o) => {
                    log::info!("refusing an oversized WebSocket frame: {o:?}");
                    self.done = true;
                    self.tripped.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

/// Whether a guard tripped (shared between the guard and its session).
pub fn tripped(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u16::MAX as u64 {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn frames_within_the_limit_pass_whatever_the_chunking() {
        let mut bytes = Vec::new();
        for len in [0u64, 5, 125, 126, 1000, 4096] {
            bytes.extend(header(true, 1, len));
            bytes.extend(std::iter::repeat_n(b'x', len as usize));
        }
        for chunk in [1usize, 3, 7, 64, 5000] {
            let mut s = FrameScanner::new(4096);
            for c in bytes.chunks(chunk) {
                assert_eq!(s.scan(c), Ok(()), "chunk size {chunk}");
            }
            assert_eq!((s.have, s.remaining), (0, 0));
        }
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_its_payload() {
        let mut s = FrameScanner::new(65_536);
        let h = header(true, 1, 1 << 40);
        assert_eq!(s.scan(&h[..5]), Ok(()));
        assert_eq!(s.scan(&h[5..]), Err(Oversize::Frame(1 << 40)));
    }

    #[test]
    fn fragments_adding_up_past_the_limit_are_refused() {
        let mut s = FrameScanner::new(1000);
        let mut ok = header(false, 1, 600);
        ok.extend(vec![0; 600]);
        ok.extend(header(true, 9, 4)); // a ping between fragments
        ok.extend(vec![0; 4]);
        assert_eq!(s.scan(&ok), Ok(()));
        assert_eq!(s.scan(&header(false, 0, 600)), Err(Oversize::Message(1200)));
        // A finished message resets the count.
        let mut s = FrameScanner::new(1000);
        let mut two = header(true, 1, 600);
        two.extend(vec![0; 600]);
        two.extend(header(true, 1, 600));
        assert_eq!(s.scan(&two), Ok(()));
    }
}
