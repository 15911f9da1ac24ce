//! Hardening: what an attacker tried over real sockets and what must hold.
//! Oversized frames are refused as soon as their header arrives, without the
//! server buffering them; sessions end with their credentials.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A masked client frame header announcing `len` payload bytes.
fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
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
    h.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    h
}

/// Sends `prelude` (frame headers and whatever payload they need), then
/// streams up to 256 MiB as fast as the socket takes it, while reading for
/// the server's close frame. Returns the close code and how long after the
/// prelude it came, and the server's RSS growth in KiB at its peak.
async fn flood_after(srv: &Server, prelude: Vec<u8>) -> (Option<u16>, Duration, i64) {
    const FLOOD: usize = 256 << 20;
    let pid = srv.pid();
    let base = rss_kib(pid) as i64;
    let ws = RawWs::connect(srv, None).await;
    let RawWs { stream, .. } = ws;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&prelude).await.expect("send the prelude");
    let sent_at = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        while sent < FLOOD {
            match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break, // the server closed or stopped reading
            }
        }
        sent
    });
    let mut peak = base;
    let sampler_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = sampler_stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0i64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(v) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<i64>().ok())
                {
                    peak = peak.max(v);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    // Read the server's frames until its close frame.
    let mut buf = Vec::new();
    let mut code = None;
    let mut closed_after = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(20);
    'read: while Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut rd, &mut chunk))
            .await
        {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            let (off, len) = match len {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                127 => panic!("server frame too long"),
                n => (2, n),
            };
            if buf.len() < off + len {
                break;
            }
            if buf[0] & 0x0f == OP_CLOSE {
                code = close_code(&buf[off..off + len]);
                closed_after = sent_at.elapsed();
                break 'read;
            }
            buf.drain(..off + len);
        }
    }
    let sent = writer.await.unwrap_or(0);
    sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    peak = peak.max(sampler.join().unwrap_or(0)).max(rss_kib(pid) as i64);
    eprintln!(
        "flood: sent {} MiB before the server stopped reading; close {code:?} after {closed_after:?}",
        sent >> 20
    );
    (code, closed_after, peak - base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_header_announcing_2_pow_40_bytes_is_refused_at_once_without_buffering() {
    let srv = Server::start(&[]);
    // No hello, no login: the header alone.
    let (code, after, grew_kib) = flood_after(&srv, frame_header(true, 1, 1 << 40)).await;
    assert_eq!(code, Some(1009), "an oversized frame closes with 1009");
    assert!(after < Duration::from_secs(1), "the close came {after:?} after the header");
    assert!(grew_kib < 16 * 1024, "the server's memory grew by {grew_kib} KiB");
    // The server still serves others.
    let mut c = Client::customer(&srv, "Ann").await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_adding_up_past_the_limit_are_refused_at_the_fragment_that_passes_it() {
    let srv = Server::start(&["--max-frame-bytes", "65536"]);
    // Three fragments of 30,000 bytes: each within the limit, together past it.
    let mut prelude = Vec::new();
    for (i, op) in [1u8, 0, 0].into_iter().enumerate() {
        prelude.extend(frame_header(false, op, 30_000));
        if i < 2 {
            prelude.extend(std::iter::repeat_n(b'a' ^ 0x11, 30_000));
        }
    }
    let (code, after, grew_kib) = flood_after(&srv, prelude).await;
    assert_eq!(code, Some(1009), "a message past the limit closes with 1009");
    assert!(after < Duration::from_secs(1), "the close came {after:?} after the third header");
    assert!(grew_kib < 16 * 1024, "the server's memory grew by {grew_kib} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_within_the_limit_still_work_after_the_guard() {
    let srv = Server::start(&["--max-frame-bytes", "2048"]);
    let mut raw = RawWs::connect(&srv, None).await;
    raw.send_json(&json!({"type":"hello","role":"customer","name":"Ann"})).await;
    raw.read_json_until("welcome", |v| v["type"] == "welcome").await;
    // A frame of exactly the limit is a request like any other (here: a bad one, answered).
    let pad = "x".repeat(2048 - r#"{"type":"ping","ref":""}"#.len());
    let text = format!(r#"{{"type":"ping","ref":"{pad}"}}"#);
    assert_eq!(text.len(), 2048);
    raw.send_text(&text).await;
    let reply =
        raw.read_json_until("answer to a 2048-byte frame", |v| v["type"] == "error" || v["type"] == "pong").await;
    assert_eq!(reply["code"], "bad_request", "a ref over 64 chars is refused, not the frame: {reply}");
    raw.send_json(&json!({"type":"ping","ref":"p"})).await;
    raw.read_json_until("pong", |v| v["type"] == "pong" && v["ref"] == "p").await;
}

// ---------------------------------------------------------------- credentials

/// How long a running server may take to notice a change made by the CLI.
const NOTICE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_agent_ends_their_sessions_and_requeues_their_chats_at_once() {
    let srv = Server::with_agents(&[("bo", "pw-bo", 5), ("cy", "pw-cy", 5)], &["--agent-grace-ms", "60000"]);
    let token = login(&srv, "bo", "pw-bo").await;
    let mut bo = Client::agent(&srv, "bo", "pw-bo").await;
    bo.join("support").await;
    let mut ann = Client::customer(&srv, "Ann").await;
    let conv = ann.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["name"], "bo");

    let out = cli(srv.dir().path(), &["agent", "remove", "bo"]);
    assert!(out.status.success(), "agent remove: {out:?}");
    bo.expect_close_within(4501, NOTICE).await;
    // Back in the queue at once, although the grace period is a minute.
    let back = ann.recv_conversation(&cid, "requeued", |c| c["status"] == "queued").await;
    assert!(back["agent"].is_null());
    // The token no longer opens anything.
    let (status, _) = get_json(&srv, "/api/conversations", Some(&token)).await;
    assert_eq!(status, 401);
    let mut again = Client::connect(&srv).await;
    again.send_json(&json!({"type":"hello","role":"agent","token":token})).await;
    again.expect_close(4501).await;
    // Another agent gets the customer.
    let mut cy = Client::agent(&srv, "cy", "pw-cy").await;
    cy.join("support").await;
    ann.recv_conversation(&cid, "assigned to cy", |c| c["status"] == "active" && c["agent"]["name"] == "cy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_revokes_every_earlier_token_and_ends_open_sessions() {
    let srv = Server::with_agents(&[("bo", "old-pw", 5)], &[]);
    let old = login(&srv, "bo", "old-pw").await;
    let mut ws = Client::agent(&srv, "bo", "old-pw").await;
    ws.join("support").await;

    let out = std::process::Command::new(BIN)
        .args(["agent", "passwd", "bo", "--password-stdin", "--data-dir"])
        .arg(srv.dir().path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"new-pw\n")?;
            child.wait_with_output()
        })
        .expect("run parley agent passwd");
    assert!(out.status.success(), "agent passwd: {out:?}");

    ws.expect_close_within(4501, NOTICE).await;
    let (status, body) = get_json(&srv, "/api/conversations", Some(&old)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("revoked"), "{body}");
    let (status, _) = post_json(&srv, "/api/login", None, &json!({"name":"bo","password":"old-pw"})).await;
    assert_eq!(status, 401, "the old password no longer works");
    let fresh = login(&srv, "bo", "new-pw").await;
    let (status, _) = get_json(&srv, "/api/conversations", Some(&fresh)).await;
    assert_eq!(status, 200, "a token issued after the change works");
    let mut back = Client::agent(&srv, "bo", "new-pw").await;
    back.join("support").await;

    let out = cli(srv.dir().path(), &["agent", "passwd", "nobody", "--password", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named `nobody`"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires() {
    let srv = Server::with_agents(&[("bo", "pw", 5)], &["--agent-token-ttl-secs", "3"]);
    let started = Instant::now();
    let mut bo = Client::agent(&srv, "bo", "pw").await;
    bo.join("support").await;
    bo.ping().await;
    bo.expect_close_within(4501, Duration::from_secs(6)).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "closed too early: {:?}", started.elapsed());
    let err = bo.seen(|f| f["type"] == "error" && f["code"] == "unauthorized");
    assert!(!err.is_empty(), "an unauthorized error says why before the close");
}
