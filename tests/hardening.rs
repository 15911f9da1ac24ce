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
    let (code, after, grew_kib) = flood_after(&srv, masked_header(true, 1, 1 << 40)).await;
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
    prelude.extend(masked_frame(false, 1, &[b'a'; 30_000]));
    prelude.extend(masked_frame(false, 0, &[b'a'; 30_000]));
    prelude.extend(masked_header(false, 0, 30_000));
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

// ---------------------------------------------------------------- login throttle

async fn login_status(srv: &Server, name: &str, pw: &str, forwarded_for: Option<&str>) -> (u16, Option<String>) {
    let mut req = http().post(srv.url("/api/login")).json(&json!({"name": name, "password": pw}));
    if let Some(ip) = forwarded_for {
        req = req.header("X-Forwarded-For", ip);
    }
    let resp = req.send().await.expect("POST /api/login");
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (resp.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guesser_is_throttled_while_the_right_password_from_elsewhere_works() {
    // The test talks through 127.0.0.1, declared a trusted proxy, so the
    // forwarded address stands for each client's own.
    let srv = Server::with_agents(&[("bo", "right-pw", 5)], &["--trusted-proxies", "127.0.0.1"]);
    let guesser = "203.0.113.9";
    let mut statuses = Vec::new();
    for i in 0..14 {
        statuses.push(login_status(&srv, "bo", &format!("guess-{i}"), Some(guesser)).await);
    }
    let wrong = statuses.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<&(u16, Option<String>)> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(wrong, 10, "the default allows 10 wrong passwords a minute per address: {statuses:?}");
    assert_eq!(throttled.len(), 4, "{statuses:?}");
    for (_, retry) in &throttled {
        let secs: u64 = retry.as_deref().and_then(|r| r.parse().ok()).expect("Retry-After in whole seconds");
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
    }
    // Even the right password is refused from the throttled address...
    assert_eq!(login_status(&srv, "bo", "right-pw", Some(guesser)).await.0, 429);
    // ...and works from another.
    assert_eq!(login_status(&srv, "bo", "right-pw", Some("198.51.100.20")).await.0, 200);
    // Successful logins never count: one address signs in many times.
    for _ in 0..15 {
        assert_eq!(login_status(&srv, "bo", "right-pw", Some("198.51.100.21")).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_at_one_account_from_many_addresses_are_throttled_per_account() {
    let srv = Server::with_agents(
        &[("bo", "right-pw", 5), ("cy", "cy-pw", 5)],
        &["--trusted-proxies", "127.0.0.1", "--login-failures-per-account", "5"],
    );
    for i in 0..5 {
        let ip = format!("203.0.113.{}", 10 + i);
        assert_eq!(login_status(&srv, "bo", "wrong", Some(&ip)).await.0, 401);
    }
    assert_eq!(login_status(&srv, "bo", "wrong", Some("203.0.113.99")).await.0, 429);
    assert_eq!(login_status(&srv, "cy", "cy-pw", Some("203.0.113.99")).await.0, 200, "other accounts are not slowed");
}

// ---------------------------------------------------------------- anonymous floods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_and_leave_flood_is_cut_at_the_per_address_bound() {
    let srv = Server::start(&["--opens-per-minute", "5"]);
    let mut opened = 0;
    let mut refused = None;
    for i in 0..8 {
        let mut c = Client::customer(&srv, &format!("Flood {i}")).await;
        let reply = c.request(json!({"type":"open","room":"support"})).await;
        if reply["type"] == "conversation" {
            opened += 1;
        } else {
            refused.get_or_insert(reply);
        }
        c.disconnect().await;
    }
    assert_eq!(opened, 5);
    let refused = refused.expect("the sixth open is refused");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["message"].as_str().unwrap_or("").contains("new conversations"), "{refused}");
    // A customer who already has a conversation gets it back: that is no new one.
    let mut c = Client::customer(&srv, "Ann").await;
    c.call_err(json!({"type":"open","room":"support"}), "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_connections_than_the_bound() {
    let srv = Server::start(&["--max-conns-per-address", "5"]);
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(Client::customer(&srv, &format!("C{i}")).await);
    }
    let refused = Client::connect_with_headers(&srv, &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a sixth connection from one address was accepted"),
    }
    // A slot is freed when a connection ends.
    held.pop().expect("a client").disconnect().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(mut c) = Client::connect_with_headers(&srv, &[]).await {
            c.hello_customer("Back").await;
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the freed slot is usable again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_behind_a_trusted_proxy_are_counted_by_their_forwarded_address() {
    let srv = Server::start(&["--max-conns-per-address", "2", "--trusted-proxies", "127.0.0.1/32"]);
    let a1 = Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.1")]).await.expect("a1");
    let a2 = Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.1")]).await.expect("a2");
    assert!(
        Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.1")]).await.is_err(),
        "a third connection from 203.0.113.1 is refused"
    );
    let b = Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.2")]).await;
    assert!(b.is_ok(), "another forwarded address is counted apart");
    drop((a1, a2, b));

    // Without --trusted-proxies the header is the client's word: ignored.
    let srv = Server::start(&["--max-conns-per-address", "2"]);
    let _x = Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.1")]).await.expect("x");
    let _y = Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.2")]).await.expect("y");
    assert!(
        Client::connect_with_headers(&srv, &[("X-Forwarded-For", "203.0.113.3")]).await.is_err(),
        "an untrusted peer cannot pick its own address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_customer_who_left_is_abandoned_and_can_open_again() {
    let srv = Server::with_agents(&[("bo", "pw", 5)], &["--abandon-after-ms", "1500"]);
    let mut watcher = Client::agent(&srv, "bo", "pw").await;
    watcher.call(json!({"type":"status","availability":"away"}), "ack").await;
    watcher.join("support").await;
    let mut ann = Client::customer(&srv, "Ann").await;
    let token = ann.token.clone().expect("resume token");
    let cid = str_of(&ann.open("support").await, "id").to_string();
    // A customer still connected stays queued however long it takes.
    let mut stays = Client::customer(&srv, "Stays").await;
    let kept = str_of(&stays.open("support").await, "id").to_string();
    ann.disconnect().await;

    let closed = watcher.recv_conversation(&cid, "abandoned", |c| c["status"] == "closed").await;
    assert!(closed["agent"].is_null());
    let event = watcher.recv_event(&cid, "closed").await;
    assert_eq!(event["event"]["reason"], "abandoned", "{event}");
    let room = watcher.join("support").await;
    let queued: Vec<&str> = room["queue"].as_array().unwrap().iter().map(|c| str_of(c, "id")).collect();
    assert_eq!(queued, vec![kept.as_str()], "only the customer still here waits");
    stays.ping().await;

    // Ann comes back: she simply opens a new conversation.
    let mut ann = Client::customer_with_token(&srv, "Ann", &token).await;
    let again = ann.open("support").await;
    assert_ne!(str_of(&again, "id"), cid);
    assert_eq!(again["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_replies_and_the_conversation_list_are_bounded_and_say_how_to_get_the_rest() {
    let srv = Server::with_agents(&[("bo", "pw", 5)], &["--opens-per-minute", "0", "--rate-per-sec", "1000"]);
    let n = 130;
    let mut customers = Vec::new();
    for i in 0..n {
        let mut c = Client::customer(&srv, &format!("C{i}")).await;
        c.open("support").await;
        customers.push(c);
    }
    let token = login(&srv, "bo", "pw").await;
    let mut bo = Client::connect(&srv).await;
    bo.hello_agent(&token).await;
    bo.call(json!({"type":"status","availability":"away"}), "ack").await;
    let room = bo.join("support").await;
    assert_eq!(room["queue"].as_array().unwrap().len(), 100, "the reply lists the oldest 100");
    assert_eq!(room["queue_total"], n);
    assert_eq!(room["queue"][0]["queue_position"], 1);

    let resp = http()
        .get(srv.url("/api/conversations?room=support&status=queued&limit=50"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    let link = resp.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string).expect("a Link header");
    let page: Vec<serde_json::Value> = resp.json().await.expect("JSON");
    assert_eq!(page.len(), 50);
    assert!(link.contains("offset=50") && link.contains("rel=\"next\""), "{link}");
    let (_, last) =
        get_json(&srv, "/api/conversations?room=support&status=queued&limit=50&offset=100", Some(&token)).await;
    assert_eq!(last.as_array().unwrap().len(), 30);
    let (status, body) = get_json(&srv, "/api/conversations?limit=100000", Some(&token)).await;
    assert_eq!(status, 400, "{body}");
}

// ---------------------------------------------------------------- the small ones

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_host_headers_count_only_from_trusted_proxies_and_public_url_decides() {
    let srv = Server::start(&[]);
    let evil = "http://evil.example";
    // A spoofed X-Forwarded-Host / Forwarded from an untrusted peer does not make evil.example "own".
    for (h, v) in [("X-Forwarded-Host", "evil.example"), ("Forwarded", "host=evil.example;proto=http")] {
        let r = Client::connect_with_headers(&srv, &[("Origin", evil), (h, v)]).await;
        assert!(r.is_err(), "{h} from an untrusted peer was believed");
    }
    // With --public-url, only that origin is the server's own, whatever Host says.
    let srv = Server::start(&["--public-url", "https://chat.example.com/"]);
    assert!(Client::connect_with_headers(&srv, &[("Origin", "https://chat.example.com")]).await.is_ok());
    assert!(Client::connect_with_headers(&srv, &[("Origin", &srv.own_origin())]).await.is_err());
    let resp = http().get(srv.url("/")).send().await.expect("GET /");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("connect-src 'self' https://chat.example.com wss://chat.example.com;"), "{csp}");
    assert!(!csp.contains(" ws: ") && !csp.contains(" wss: "), "no scheme-wide sources: {csp}");
    let bad =
        std::process::Command::new(BIN).args(["serve", "--public-url", "chat.example.com"]).output().expect("run");
    assert!(!bad.status.success(), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--public-url"), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_bodies_get_413_and_head_works_on_pages_and_health() {
    let srv = Server::start(&[]);
    let big = json!({"name": "x".repeat(300 * 1024), "password": "y"});
    let (status, body) = post_json(&srv, "/api/login", None, &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "too_large");
    for path in ["/", "/agent", "/widget.js", "/healthz", "/readyz", "/metrics"] {
        let resp = http().head(srv.url(path)).send().await.expect("HEAD");
        assert_eq!(resp.status().as_u16(), 200, "HEAD {path}");
    }
    let resp = http().get(srv.url("/")).send().await.expect("GET /");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("connect-src 'self';"), "only this server: {csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_count_against_the_rate_limit_and_so_do_http_posts() {
    let srv = Server::with_agents(&[("bo", "pw", 5)], &["--rate-per-sec", "5", "--rate-burst", "10"]);
    let mut c = Client::customer(&srv, "Ann").await;
    // A burst of 18 pings: the burst of 10 is answered, the rest refused
    // (not enough to be closed for abuse).
    for i in 0..18 {
        c.send_json(&json!({"type":"ping","ref":format!("p{i}")})).await;
    }
    c.settle(Duration::from_millis(500)).await;
    let pongs = c.seen(|f| f["type"] == "pong").len();
    let limited = c.seen(|f| f["type"] == "error" && f["code"] == "rate_limited").len();
    assert!((10..=12).contains(&pongs), "{pongs} pongs to a burst of 18 pings");
    assert_eq!(pongs + limited, 18, "every ping is answered, with pong or rate_limited");
    // Pinging on regardless is abuse, as with any other request.
    for i in 0..40 {
        if !c.try_send_json(&json!({"type":"ping","ref":format!("q{i}")})).await {
            break;
        }
    }
    c.expect_close(4008).await;

    let token = login(&srv, "bo", "pw").await;
    let mut ann = Client::customer(&srv, "Ann2").await;
    let cid = str_of(&ann.open("support").await, "id").to_string();
    let mut codes = Vec::new();
    for i in 0..20 {
        let body = json!({"client_id": format!("h{i}"), "body": "hi"});
        let resp = http()
            .post(srv.url(&format!("/api/conversations/{cid}/messages")))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        codes.push((resp.status().as_u16(), resp.headers().contains_key("retry-after")));
    }
    assert!(codes.iter().any(|(s, r)| *s == 429 && *r), "{codes:?}");
    assert!(codes.iter().filter(|(s, _)| *s == 200).count() <= 12, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_names_cannot_hide_characters_or_pass_for_the_system() {
    let srv = Server::start(&[]);
    for name in ["Parley", " parley ", "SYSTEM", "ann\u{202E}nimda", "bo\u{200B}b", "tab\there"] {
        let mut c = Client::connect(&srv).await;
        c.send_json(&json!({"type":"hello","role":"customer","name":name})).await;
        let err = c.recv_json().await;
        assert_eq!(err["code"], "unauthorized", "{name:?}: {err}");
        assert!(err["message"].as_str().unwrap_or("").starts_with("name:"), "{err}");
    }
    let c = Client::customer(&srv, "安妮 (Ann)").await;
    assert_eq!(c.user["name"], "安妮 (Ann)");
    let out = cli(srv.dir().path(), &["agent", "add", "Parley", "--password", "x"]);
    assert!(!out.status.success(), "an agent may not be named Parley either");
}
