//! The TCP gateway (PROTOCOL §1: 4-byte big-endian length + UTF-8 JSON, at
//! most 1 MiB), its heartbeat, and bots on it: `--bot-first` assignment,
//! hand-off to humans with `transfer`, HTTP sends by a bot, and the example
//! FAQ bot (`examples/faq_bot.rs`) run as a real process.
//!
//! Everything goes over real sockets against a real `parley serve` process;
//! every wait has a timeout.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest frame the gateway accepts (PROTOCOL §1).
const MAX_FRAME: usize = 1 << 20;

const ALICE: (&str, &str, u32) = ("alice", "alice-pw-1", 5);
const BOT: &str = "faqbot";
const BOT_PW: &str = "faqbot-pw-1";

// ---------------------------------------------------------------------------
// A TCP gateway client
// ---------------------------------------------------------------------------

/// `IP:PORT` of the gateway, from the `listening tcp=` line the server prints
/// before `listening http=` (so it is there once `Server::start` returned).
fn tcp_addr(srv: &Server) -> String {
    let lines = srv.stdout_lines();
    lines
        .iter()
        .find_map(|l| l.strip_prefix("listening tcp="))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no `listening tcp=` line on stdout: {lines:?}"))
}

/// One length-prefixed frame around `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn frame_json(v: &Value) -> Vec<u8> {
    frame(v.to_string().as_bytes())
}

/// What reading the next frame gave.
#[derive(Debug)]
#[allow(dead_code)] // `Reset`'s text is read through Debug, in failure messages
enum Got {
    Frame(Value),
    Eof,
    Reset(String),
    Timeout,
}

struct Gw {
    label: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Frames received but not consumed yet.
    pending: VecDeque<Value>,
    /// Every frame received, in order.
    log: Vec<Value>,
    next_ref: u64,
    /// Answer server `{"type":"ping"}` (no ref) with `pong` and hide it.
    auto_pong: bool,
    /// Server pings seen (answered or not).
    server_pings: usize,
    user: Value,
}

impl Gw {
    async fn connect(addr: &str, label: &str) -> Gw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{label}: TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("{label}: TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Gw {
            label: label.to_string(),
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            log: Vec::new(),
            next_ref: 0,
            auto_pong: true,
            server_pings: 0,
            user: Value::Null,
        }
    }

    /// Connect and say hello as a customer.
    async fn customer(addr: &str, name: &str) -> Gw {
        let mut g = Gw::connect(addr, &format!("tcp customer {name}")).await;
        g.hello(json!({"type":"hello","role":"customer","name":name})).await;
        g
    }

    /// Connect and say hello as an agent (or bot) with a token from POST /api/login.
    async fn agent(addr: &str, label: &str, token: &str) -> Gw {
        let mut g = Gw::connect(addr, label).await;
        g.hello(json!({"type":"hello","role":"agent","token":token})).await;
        g
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("{}: write timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.label));
    }

    async fn send(&mut self, v: &Value) {
        self.write_raw(&frame_json(v)).await;
    }

    fn recent(&self) -> String {
        recent_frames(&self.log)
    }

    /// Read one complete frame off the socket (nothing else).
    async fn read_frame(&mut self, deadline: Instant) -> Got {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                assert!(n <= MAX_FRAME, "{}: server sent a frame of {n} bytes", self.label);
                if self.buf.len() >= 4 + n {
                    let payload: Vec<u8> = self.buf[4..4 + n].to_vec();
                    self.buf.drain(..4 + n);
                    return match serde_json::from_slice::<Value>(&payload) {
                        Ok(v) => Got::Frame(v),
                        Err(e) => panic!(
                            "{}: the server sent a frame that is not JSON ({e}): {:?}",
                            self.label,
                            String::from_utf8_lossy(&payload)
                        ),
                    };
                }
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Got::Timeout,
                Ok(Ok(0)) => return Got::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Got::Reset(e.to_string()),
            }
        }
    }

    /// The next frame, answering server pings when `auto_pong` is on.
    async fn next(&mut self, deadline: Instant) -> Got {
        loop {
            let got = self.read_frame(deadline).await;
            if let Got::Frame(v) = &got {
                self.log.push(v.clone());
                if v["type"] == "ping" && v.get("ref").is_none_or(Value::is_null) {
                    self.server_pings += 1;
                    if self.auto_pong {
                        self.send(&json!({"type":"pong"})).await;
                        continue;
                    }
                }
            }
            return got;
        }
    }

    /// The first frame (queued or new) matching `pred`; others stay queued.
    async fn recv_until_within(&mut self, wait: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index in range");
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline).await {
                Got::Frame(v) if pred(&v) => return v,
                Got::Frame(v) => self.pending.push_back(v),
                other => panic!("{}: {other:?} while waiting for {what}; {}", self.label, self.recent()),
            }
        }
    }

    async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_until_within(WAIT, what, pred).await
    }

    /// Send with a `ref` (added if missing) and return the frame carrying it.
    async fn request(&mut self, mut v: Value) -> Value {
        let r = common::ensure_ref(&mut v, &mut self.next_ref, "g");
        self.send(&v).await;
        let what = format!("reply to {v}");
        self.recv_until(&what, |f| f["ref"] == r.as_str()).await
    }

    async fn call(&mut self, v: Value, ty: &str) -> Value {
        let req = v.to_string();
        let reply = self.request(v).await;
        assert_eq!(reply["type"], ty, "{}: request {req} got {reply}", self.label);
        reply
    }

    async fn hello(&mut self, v: Value) -> Value {
        self.send(&v).await;
        let w = self.recv_until("welcome", |_| true).await;
        assert_eq!(w["type"], "welcome", "{}: hello {v} got {w}", self.label);
        self.user = w["user"].clone();
        w
    }

    async fn ping(&mut self, r: &str) {
        let pong = self.call(json!({"type":"ping","ref":r}), "pong").await;
        assert_eq!(pong["ref"], r, "{}: {pong}", self.label);
    }

    fn id(&self) -> String {
        str_of(&self.user, "id").to_string()
    }

    /// Read until the server closes the connection; returns the frames that
    /// came first (queued ones included) and how it ended. Panics if it is
    /// still open after `wait`.
    async fn expect_closed(&mut self, wait: Duration) -> (Vec<Value>, Got) {
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline).await {
                Got::Frame(v) => frames.push(v),
                Got::Timeout => panic!(
                    "{}: connection still open after {wait:?}; frames meanwhile: {frames:?}; {}",
                    self.label,
                    self.recent()
                ),
                end => return (frames, end),
            }
        }
    }
}

/// Frames other than server pings.
fn not_pings(frames: &[Value]) -> Vec<Value> {
    frames.iter().filter(|f| f["type"] != "ping").cloned().collect()
}

/// The connection ended with exactly one `error` frame (with `code`) before it,
/// and that error was the last thing the server said.
fn assert_one_error_then_closed(label: &str, frames: &[Value], end: &Got, code: &str) {
    let said = not_pings(frames);
    assert!(matches!(end, Got::Eof), "{label}: expected EOF after the error frame, got {end:?}; frames {said:?}");
    assert_eq!(said.len(), 1, "{label}: expected exactly one error frame before the close, got {said:?}");
    assert_eq!(said[0]["type"], "error", "{label}: {said:?}");
    assert_eq!(said[0]["code"], code, "{label}: {said:?}");
    assert!(said[0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{label}: error without message: {said:?}");
}

/// `Server::start` with the gateway on a free port.
fn start_gw(extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--tcp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let addr = tcp_addr(&srv);
    (srv, addr)
}

/// A data dir with the bot account and alice; a server with bot-first support=faqbot.
fn start_bot_server(extra: &[&str]) -> (Server, String) {
    let dir = data_dir();
    add_bot(&dir, BOT, BOT_PW);
    add_agent(dir.path(), ALICE.0, ALICE.1, ALICE.2);
    let mut args = vec!["--tcp-listen", "127.0.0.1:0", "--rooms", "support", "--bot-first", "support=faqbot"];
    args.extend_from_slice(extra);
    let srv = Server::start_in(&dir, &args);
    let addr = tcp_addr(&srv);
    (srv, addr)
}

fn add_bot(dir: &DataDir, name: &str, pw: &str) {
    let out = cli(dir.path(), &["agent", "add", name, "--bot", "--password", pw]);
    assert!(
        out.status.success(),
        "`parley agent add {name} --bot` failed ({}): stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 1. Framing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_prints_listening_line_before_http() {
    let (srv, addr) = start_gw(&[]);
    let lines = srv.stdout_lines();
    let tcp = lines.iter().position(|l| l.starts_with("listening tcp=")).expect("tcp line");
    let http = lines.iter().position(|l| l.starts_with("listening http=")).expect("http line");
    assert!(tcp < http, "`listening tcp=` must come before `listening http=`: {lines:?}");
    let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(addr.starts_with("127.0.0.1:") && port != 0, "tcp={addr}");
    assert_ne!(port, srv.port, "gateway and HTTP on the same port?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_many_frames_in_one_write_are_each_answered_in_order() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Batch").await;
    assert_eq!(g.user["role"], "customer", "{}", g.user);
    let mut bytes = Vec::new();
    for r in ["p1", "p2", "p3"] {
        bytes.extend(frame_json(&json!({"type":"ping","ref":r})));
    }
    g.write_raw(&bytes).await;
    let mut refs = Vec::new();
    for _ in 0..3 {
        let f = g.recv_until("a pong", |f| f["type"] == "pong").await;
        refs.push(f["ref"].as_str().unwrap_or("<none>").to_string());
    }
    assert_eq!(refs, ["p1", "p2", "p3"]);
    // Requests with replies of their own, batched too: the frame boundaries hold.
    let mut bytes = frame_json(&json!({"type":"open","room":"support","ref":"o1"}));
    bytes.extend(frame_json(&json!({"type":"ping","ref":"p4"})));
    g.write_raw(&bytes).await;
    let conv = g.recv_until("open reply", |f| f["ref"] == "o1").await;
    assert_eq!(conv["type"], "conversation", "{conv}");
    assert_eq!(conv["conversation"]["room"], "support", "{conv}");
    let pong = g.recv_until("pong p4", |f| f["ref"] == "p4").await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(g.pending.iter().all(|f| f["type"] != "error"), "unexpected errors: {:?}", g.pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frame_split_over_many_writes_is_reassembled() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Drip").await;
    // Two frames back to back, dribbled: the header byte by byte, then the
    // rest in 7-byte pieces (so one write holds the end of the first frame
    // and the start of the second), with pauses between writes.
    let mut bytes = frame_json(&json!({"type":"ping","ref":"split-1"}));
    bytes.extend(frame_json(&json!({"type":"ping","ref":"split-2"})));
    for b in &bytes[..4] {
        g.write_raw(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for piece in bytes[4..].chunks(7) {
        g.write_raw(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = g.recv_until("first pong", |f| f["type"] == "pong").await;
    let b = g.recv_until("second pong", |f| f["type"] == "pong").await;
    assert_eq!((a["ref"].as_str(), b["ref"].as_str()), (Some("split-1"), Some("split-2")), "{a} {b}");
    assert!(g.pending.iter().all(|f| f["type"] != "error"), "unexpected errors: {:?}", g.pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frame_of_exactly_one_mib_is_accepted() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Big").await;
    // A ping padded with JSON whitespace to exactly 1,048,576 bytes.
    let mut payload = br#"{"type":"ping","ref":"big"}"#.to_vec();
    payload.resize(MAX_FRAME, b' ');
    g.write_raw(&frame(&payload)).await;
    let pong = g.recv_until("pong to the 1 MiB frame", |f| f["ref"] == "big").await;
    assert_eq!(pong["type"], "pong", "a frame of exactly 1 MiB must be accepted: {pong}");
    g.ping("after-big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_length_over_one_mib_gets_too_large_then_close() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Huge").await;
    // Only the header: the server must refuse on the length alone.
    g.write_raw(&((MAX_FRAME as u32) + 1).to_be_bytes()).await;
    let (frames, end) = g.expect_closed(WAIT).await;
    assert_one_error_then_closed("length 1 MiB + 1", &frames, &end, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_invalid_utf8_gets_error_then_close() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Bytes").await;
    g.write_raw(&frame(&[b'{', b'"', 0xff, 0xfe, b'"', b'}'])).await;
    let (frames, end) = g.expect_closed(WAIT).await;
    assert_one_error_then_closed("invalid UTF-8", &frames, &end, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_payload_that_is_not_json_gets_error_then_close() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Garbage").await;
    g.write_raw(&frame(b"{bad")).await;
    let (frames, end) = g.expect_closed(WAIT).await;
    assert_one_error_then_closed("payload `{bad`", &frames, &end, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_well_formed_json_with_bad_fields_is_bad_request_and_connection_stays() {
    let (_srv, addr) = start_gw(&[]);
    let mut g = Gw::customer(&addr, "Odd").await;
    let e = g.request(json!({"type":"nope","ref":"u1"})).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
    assert_eq!(e["ref"], "u1", "{e}");
    // A missing field, an unknown extra field, a JSON value that is not an object.
    let e = g.request(json!({"type":"send","ref":"u2"})).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
    let e = g.request(json!({"type":"ping","ref":"u3","extra":1})).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
    g.write_raw(&frame(b"[1,2,3]")).await;
    let e = g.recv_until("error for a JSON array", |f| f["type"] == "error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    // Still open and answering.
    g.ping("still-here").await;
    let conv = g.call(json!({"type":"open","room":"support"}), "conversation").await;
    assert_eq!(conv["conversation"]["status"], "queued", "{conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_half_frame_then_silence_is_closed_after_three_heartbeats() {
    let (_srv, addr) = start_gw(&["--heartbeat-ms", "300"]);
    let mut g = Gw::customer(&addr, "Half").await;
    let heard = Instant::now();
    g.auto_pong = false;
    // Header announcing 100 bytes, then 10 of them, then nothing.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(br#"{"type":"p"#);
    g.write_raw(&bytes).await;
    let (frames, end) = g.expect_closed(Duration::from_secs(4)).await;
    let after = heard.elapsed();
    assert!(matches!(end, Got::Eof | Got::Reset(_)), "{end:?}");
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}: sooner than 3 x 300 ms of silence; frames {frames:?}"
    );
    assert!(after <= Duration::from_millis(2500), "closed only after {after:?} (3 x heartbeat is 900 ms)");
    assert!(not_pings(&frames).iter().all(|f| f["type"] == "error"), "{frames:?}");
    // The server still serves new connections.
    let mut h = Gw::customer(&addr, "Next").await;
    h.ping("next-1").await;
}

// ---------------------------------------------------------------------------
// 2. Server pings over TCP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_pings_and_answering_pong_keeps_the_connection() {
    let (_srv, addr) = start_gw(&["--heartbeat-ms", "300"]);
    let mut g = Gw::customer(&addr, "Alive").await;
    g.auto_pong = false;
    let ping = g.recv_until_within(Duration::from_millis(1500), "server ping", |f| f["type"] == "ping").await;
    assert_eq!(ping, json!({"type":"ping"}), "the server's ping frame");
    g.send(&json!({"type":"pong"})).await;
    // Answer every ping for 2 s (more than 6 heartbeats, over twice the 900 ms limit).
    g.auto_pong = true;
    let start_pings = g.server_pings;
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match g.next(until).await {
            Got::Timeout => break,
            Got::Frame(f) => g.pending.push_back(f),
            other => panic!("connection ended although pongs were sent: {other:?}; {}", g.recent()),
        }
    }
    assert!(g.server_pings - start_pings >= 4, "only {} pings in 2 s at 300 ms", g.server_pings - start_pings);
    g.ping("after-2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_that_never_answers_pings_is_closed() {
    let (_srv, addr) = start_gw(&["--heartbeat-ms", "300"]);
    let mut g = Gw::customer(&addr, "Mute").await;
    let heard = Instant::now();
    g.auto_pong = false;
    let (frames, end) = g.expect_closed(Duration::from_secs(4)).await;
    let after = heard.elapsed();
    assert!(matches!(end, Got::Eof | Got::Reset(_)), "{end:?}");
    let pings = frames.iter().filter(|f| **f == json!({"type":"ping"})).count();
    assert!(pings >= 2, "expected server pings before the close, got {frames:?}");
    assert!(after >= Duration::from_millis(800), "closed after {after:?}, sooner than 3 x 300 ms");
    assert!(after <= Duration::from_millis(2500), "closed only after {after:?}");
}

// ---------------------------------------------------------------------------
// 3. A bot over TCP and a WebSocket customer
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_over_tcp_serves_ws_customer_then_hands_off_to_human() {
    let (srv, addr) = start_bot_server(&[]);
    // A human is online in the room first: bot-first must still win.
    let mut alice = Client::agent_in(&srv, ALICE.0, ALICE.1, "support").await;
    let alice_id = alice.id();
    let (token, bot_user) = login_agent(&srv, BOT, BOT_PW).await;
    let mut bot = Gw::agent(&addr, "bot", &token).await;
    let bot_id = bot.id();
    assert_eq!(bot_user["id"], bot_id.as_str(), "login {bot_user} vs welcome {}", bot.user);
    assert_eq!(bot.user["name"], BOT, "{}", bot.user);

    let mut cust = Client::customer(&srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["status"], "active", "{conv}");
    assert_eq!(conv["agent"]["name"], BOT, "bot-first room: {conv}");
    assert_eq!(conv["agent"]["id"], bot_id.as_str(), "{conv}");
    let assigned = cust.recv_event(&cid, "assigned").await;
    assert_eq!(assigned["event"]["agent"]["name"], BOT, "{assigned}");
    assert_eq!(assigned["from"]["role"], "system", "{assigned}");

    // The bot hears about its new conversation.
    let pushed = bot
        .recv_until("conversation assigned to the bot", |f| {
            f["type"] == "conversation"
                && f["conversation"]["id"] == cid.as_str()
                && f["conversation"]["status"] == "active"
        })
        .await;
    assert_eq!(pushed["conversation"]["agent"]["id"], bot_id.as_str(), "{pushed}");

    // Bot -> customer.
    let ack =
        bot.call(json!({"type":"send","conversation":cid,"client_id":"bot-1","body":"Hi, I am the bot."}), "ack").await;
    assert_eq!(ack["client_id"], "bot-1", "{ack}");
    assert_eq!(ack["conversation"], cid.as_str(), "{ack}");
    let seq = u64_of(&ack, "seq");
    let m = cust.recv_message("the bot's message", |m| m["body"] == "Hi, I am the bot.").await;
    assert_eq!(m["seq"].as_u64(), Some(seq), "{m}");
    assert_eq!(m["id"], ack["id"], "{m}");
    assert_eq!(m["from"]["id"], bot_id.as_str(), "{m}");
    assert_eq!(m["kind"], "text", "{m}");

    // Customer -> bot.
    let cack = cust.say(&cid, "c-1", "Where is my parcel?").await;
    let heard = bot
        .recv_until("the customer's message", |f| {
            f["type"] == "message" && f["message"]["body"] == "Where is my parcel?"
        })
        .await;
    assert_eq!(heard["message"]["seq"], cack["seq"], "{heard}");
    assert_eq!(heard["message"]["from"]["role"], "customer", "{heard}");
    assert_eq!(heard["message"]["conversation"], cid.as_str(), "{heard}");

    // The bot hands off to the room; the human there gets it.
    let t = bot.call(json!({"type":"transfer","conversation":cid,"to_room":"support"}), "conversation").await;
    assert_eq!(t["conversation"]["id"], cid.as_str(), "{t}");
    assert_ne!(t["conversation"]["agent"]["id"], bot_id.as_str(), "still the bot's after the transfer: {t}");
    let mine = alice
        .recv_conversation(&cid, "assigned to alice", |c| {
            c["status"] == "active" && c["agent"]["id"] == alice_id.as_str()
        })
        .await;
    assert_eq!(mine["agent"]["name"], ALICE.0, "{mine}");
    let transferred = cust.recv_event(&cid, "transferred").await;
    assert_eq!(transferred["event"]["from_agent"]["id"], bot_id.as_str(), "{transferred}");
    assert_eq!(transferred["event"]["to_room"], "support", "{transferred}");
    let assigned2 = cust.recv_event(&cid, "assigned").await;
    assert_eq!(assigned2["event"]["agent"]["id"], alice_id.as_str(), "{assigned2}");
    assert!(
        u64_of(&transferred, "seq") < u64_of(&assigned2, "seq"),
        "transferred {transferred} must come before assigned {assigned2}"
    );
    let now = cust
        .recv_conversation(&cid, "active with alice", |c| c["status"] == "active" && c["agent"]["name"] == ALICE.0)
        .await;
    assert_eq!(now["agent"]["id"], alice_id.as_str(), "{now}");
    // And the human can talk to the customer.
    alice.say(&cid, "a-1", "Alice here, how can I help?").await;
    cust.recv_message("alice's message", |m| m["body"] == "Alice here, how can I help?").await;
}

// ---------------------------------------------------------------------------
// 4. Bot-first falls back to humans
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_first_falls_back_to_humans_when_bot_not_connected() {
    let (srv, addr) = start_bot_server(&[]);
    let mut alice = Client::agent_in(&srv, ALICE.0, ALICE.1, "support").await;
    let alice_id = alice.id();

    // The bot has never connected: the conversation goes to the human.
    let mut c1 = Client::customer(&srv, "One").await;
    let conv = c1.open_assigned("support").await;
    let cid1 = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["id"], alice_id.as_str(), "bot not connected: {conv}");
    alice.recv_conversation(&cid1, "assigned to alice", |c| c["status"] == "active").await;

    // With the bot connected, the next one goes to the bot...
    let token = login(&srv, BOT, BOT_PW).await;
    let mut bot = Gw::agent(&addr, "bot", &token).await;
    let bot_id = bot.id();
    let mut c2 = Client::customer(&srv, "Two").await;
    let conv2 = c2.open_assigned("support").await;
    assert_eq!(conv2["agent"]["id"], bot_id.as_str(), "bot connected: {conv2}");
    bot.recv_until("conversation of Two", |f| f["type"] == "conversation" && f["conversation"]["id"] == conv2["id"])
        .await;
    // ...and once its session is gone, new ones queue for humans again.
    drop(bot);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c3 = Client::customer(&srv, "Three").await;
    let conv3 = c3.open_assigned("support").await;
    assert_eq!(conv3["agent"]["id"], alice_id.as_str(), "bot disconnected: {conv3}");
    assert_eq!(conv3["agent"]["name"], ALICE.0, "{conv3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_first_without_bot_or_human_queues() {
    let (srv, _addr) = start_bot_server(&[]);
    let mut c = Client::customer(&srv, "Waiting").await;
    let conv = c.open("support").await;
    assert_eq!(conv["status"], "queued", "{conv}");
    assert!(conv["agent"].is_null(), "{conv}");
    let cid = str_of(&conv, "id").to_string();
    // A human arriving later gets it from the queue.
    let mut alice = Client::agent_in(&srv, ALICE.0, ALICE.1, "support").await;
    let alice_id = alice.id();
    alice.recv_conversation(&cid, "queued one assigned", |c| c["agent"]["id"] == alice_id.as_str()).await;
    let active = c.recv_conversation(&cid, "active", |c| c["status"] == "active").await;
    assert_eq!(active["agent"]["name"], ALICE.0, "{active}");
}

// ---------------------------------------------------------------------------
// 5. The example FAQ bot, as a real process
// ---------------------------------------------------------------------------

/// Kills the example bot however the test ends.
struct BotProcess {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl BotProcess {
    fn spawn(srv: &Server, tcp: &str, name: &str, pw: &str) -> BotProcess {
        let bin = PathBuf::from(BIN).parent().expect("bin dir").join("examples").join("faq_bot");
        assert!(bin.exists(), "example bot not built at {}", bin.display());
        let mut child = Command::new(&bin)
            .args(["--http", &format!("http://{}", srv.addr), "--tcp", tcp, "--name", name, "--password", pw])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("[faq_bot] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BotProcess { child, stderr: rx }
    }

    /// Wait for a stderr line containing `needle`.
    fn wait_line(&self, needle: &str, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(e) => panic!("faq_bot printed no line with {needle:?} within {wait:?} ({e}); saw {seen:?}"),
            }
        }
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_faq_bot_greets_answers_and_hands_off() {
    let (srv, addr) = start_bot_server(&[]);
    let mut alice = Client::agent_in(&srv, ALICE.0, ALICE.1, "support").await;
    let alice_id = alice.id();
    let bot = BotProcess::spawn(&srv, &addr, BOT, BOT_PW);
    // Blocking wait for the bot's "connected" line, off the async workers.
    let bot = tokio::task::spawn_blocking(move || {
        bot.wait_line("connected as", Duration::from_secs(15));
        bot
    })
    .await
    .expect("wait for faq_bot");

    let mut cust = Client::customer(&srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["name"], BOT, "bot-first with the example bot running: {conv}");
    let bot_id = conv["agent"]["id"].clone();
    let first = cust.recv_event(&cid, "assigned").await;
    assert_eq!(first["event"]["agent"]["id"], bot_id, "{first}");

    let hi = cust.recv_message("the bot's greeting", |m| m["kind"] == "text" && m["from"]["id"] == bot_id).await;
    let greeting = str_of(&hi, "body");
    assert!(greeting.contains("FAQ bot"), "greeting: {greeting}");

    cust.say(&cid, "q-1", "where is my order?").await;
    let a = cust.recv_message("the answer about orders", |m| m["kind"] == "text" && m["from"]["id"] == bot_id).await;
    let answer = str_of(&a, "body").to_lowercase();
    assert!(answer.contains("ship"), "answer to `where is my order?`: {answer}");

    cust.say(&cid, "q-2", "human please").await;
    let a = cust.recv_message("the hand-off notice", |m| m["kind"] == "text" && m["from"]["id"] == bot_id).await;
    assert!(str_of(&a, "body").to_lowercase().contains("person"), "{a}");
    let transferred = cust.recv_event(&cid, "transferred").await;
    assert_eq!(transferred["event"]["from_agent"]["id"], bot_id, "{transferred}");
    let assigned = cust.recv_event(&cid, "assigned").await;
    assert_eq!(assigned["event"]["agent"]["id"], alice_id.as_str(), "{assigned}");
    assert!(u64_of(&transferred, "seq") < u64_of(&assigned, "seq"), "{transferred} / {assigned}");
    let now = cust
        .recv_conversation(&cid, "active with alice", |c| c["status"] == "active" && c["agent"]["name"] == ALICE.0)
        .await;
    assert_eq!(now["agent"]["id"], alice_id.as_str(), "{now}");
    alice.recv_conversation(&cid, "assigned to alice", |c| c["agent"]["id"] == alice_id.as_str()).await;
    drop(bot); // kills the process
}

// ---------------------------------------------------------------------------
// 6. HTTP send by a bot
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_http_send_reaches_customer_and_is_idempotent() {
    let (srv, addr) = start_bot_server(&[]);
    let token = login(&srv, BOT, BOT_PW).await;
    let mut bot = Gw::agent(&addr, "bot", &token).await;
    let bot_id = bot.id();
    let mut cust = Client::customer(&srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["id"], bot_id.as_str(), "{conv}");

    let path = format!("/api/conversations/{cid}/messages");
    let body = json!({"client_id":"http-1","body":"Sent over HTTP"});
    let (code, first) = post_json(&srv, &path, Some(&token), &body).await;
    assert_eq!(code, 200, "{first}");
    let id = str_of(&first, "id").to_string();
    let seq = u64_of(&first, "seq");
    assert!(first["ts"].is_u64(), "{first}");

    let m = cust.recv_message("the HTTP-sent message", |m| m["body"] == "Sent over HTTP").await;
    assert_eq!(m["id"], id.as_str(), "{m}");
    assert_eq!(m["seq"].as_u64(), Some(seq), "{m}");
    assert_eq!(m["from"]["id"], bot_id.as_str(), "{m}");
    assert_eq!(m["client_id"], "http-1", "{m}");
    // The bot's own TCP session is another session of the sender: it gets it too.
    let echoed = bot
        .recv_until("the HTTP-sent message on the bot's TCP session", |f| {
            f["type"] == "message" && f["message"]["id"] == id.as_str()
        })
        .await;
    assert_eq!(echoed["message"]["seq"].as_u64(), Some(seq), "{echoed}");

    // The retry is not stored twice.
    let (code, again) = post_json(&srv, &path, Some(&token), &body).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["id"], id.as_str(), "retry with the same client_id: {again} vs {first}");
    assert_eq!(again["seq"].as_u64(), Some(seq), "{again}");
    cust.expect_none(Duration::from_millis(600), "a second copy", |f| {
        is_type(f, "message") && f["message"]["body"] == "Sent over HTTP"
    })
    .await;
    let (all, _) = cust.sync_all(&cid).await;
    let copies = all.iter().filter(|m| m["client_id"] == "http-1").count();
    assert_eq!(copies, 1, "history: {all:?}");
}
