//! Webhooks (`--webhook`): the events posted, their HMAC-SHA256 signature,
//! the event filter, internal notes, retries with backoff, the counters in
//! /metrics, and that a slow receiver never delays chat.
//!
//! The receiver is a real HTTP/1.1 server in the test process (a small tokio
//! TcpListener reader on its own thread and runtime) that records every
//! request (method, path, headers, raw body) and answers as told: a status, or
//! after hanging for a while.

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const KEY: &str = "test-webhook-key-0123456789";
const ALICE: (&str, &str, u32) = ("alice", "alice-pw-1", 5);

// ---------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    method: String,
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or("<no type>").to_string()
    }
}

/// How the receiver answers a request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Wait this long, then answer 200.
    Hang(Duration),
}

struct Plan {
    /// Answers for the next requests, in order; then `default`.
    script: VecDeque<Reply>,
    default: Reply,
}

struct Receiver {
    port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(default: Reply) -> Receiver {
        Self::scripted(&[], default)
    }

    fn scripted(script: &[Reply], default: Reply) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("receiver addr").port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(Plan { script: script.iter().copied().collect(), default }));
        let (h, p) = (hits.clone(), plan);
        // Its own thread and runtime: nothing the test does can slow it down.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let Ok((sock, _)) = listener.accept().await else { continue };
                    tokio::spawn(serve_conn(sock, h.clone(), p.clone()));
                }
            });
        });
        Receiver { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Poll until `pred(hits)` holds; panics with what arrived after `wait`.
    async fn wait_for(&self, wait: Duration, what: &str, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + wait;
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            if Instant::now() >= deadline {
                let kinds: Vec<String> =
                    hits.iter().map(|h| String::from_utf8_lossy(&h.body).chars().take(300).collect()).collect();
                panic!("receiver: no {what} within {wait:?}; got {} requests: {kinds:#?}", hits.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serve HTTP/1.1 requests (Content-Length bodies, keep-alive) on one connection.
async fn serve_conn(mut sock: tokio::net::TcpStream, hits: Arc<Mutex<Vec<Hit>>>, plan: Arc<Mutex<Plan>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize =
            headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        hits.lock().unwrap().push(Hit { at: Instant::now(), method, path, headers, body });
        let reply = {
            let mut p = plan.lock().unwrap();
            let d = p.default;
            p.script.pop_front().unwrap_or(d)
        };
        let code = match reply {
            Reply::Status(c) => c,
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                200
            }
        };
        let reason = if code < 300 { "OK" } else { "Failed" };
        let resp = format!("HTTP/1.1 {code} {reason}\r\ncontent-length: 0\r\n\r\n");
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `sha256=<hex HMAC-SHA256(key, body)>`, computed here, independently of the server.
fn sign(key: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Every request is a POST to `/hook`, signed with KEY over the raw body,
/// with `X-Parley-Event` naming the body's type and an `evt_` id.
fn check_envelope(h: &Hit, key: &str) -> Value {
    let v = h.json();
    let raw = String::from_utf8_lossy(&h.body);
    assert_eq!(h.method, "POST", "{raw}");
    assert_eq!(h.path, "/hook", "{raw}");
    assert_eq!(h.header("x-parley-signature"), Some(sign(key, &h.body).as_str()), "signature of {raw}");
    assert_eq!(h.header("x-parley-event"), v["type"].as_str(), "X-Parley-Event of {raw}");
    assert!(h.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", h.headers);
    let id = str_of(&v, "id");
    assert!(id.starts_with("evt_") && id.len() > 4, "event id {id:?}");
    let ts = u64_of(&v, "ts");
    let now = now_ms();
    assert!(ts <= now + 60_000 && ts + 120_000 >= now, "ts {ts} vs now {now}");
    assert!(v["data"].is_object(), "{raw}");
    v
}

fn kinds(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(Hit::kind).collect()
}

fn count(hits: &[Hit], kind: &str) -> usize {
    hits.iter().filter(|h| h.kind() == kind).count()
}

/// A counter from GET /metrics (Prometheus text); None if absent.
async fn metric(srv: &Server, name: &str) -> Option<f64> {
    let text = http().get(srv.url("/metrics")).send().await.expect("GET /metrics").text().await.expect("metrics body");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name)).then(|| parts.next().and_then(|v| v.parse().ok())).flatten()
    })
}

/// Poll /metrics until `name` reads `want`.
async fn wait_metric(srv: &Server, name: &str, want: f64, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let got = metric(srv, name).await;
        if got == Some(want) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{name} reads {got:?} in /metrics after {wait:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start with alice (room support) and the webhook flags.
fn start_with_webhook(rx: &Receiver, extra: &[&str]) -> Server {
    let url = rx.url("/hook");
    let mut args = vec!["--webhook", url.as_str(), "--webhook-secret", KEY];
    args.extend_from_slice(extra);
    Server::with_agents(&[ALICE], &args)
}

/// A conversation's whole life: opened by Ann, assigned to alice, a customer
/// message, an internal note, an agent message, closed by the customer, rated 4.
/// Returns the conversation id.
async fn full_conversation(srv: &Server) -> String {
    let mut alice = Client::agent_in(srv, ALICE.0, ALICE.1, "support").await;
    let mut cust = Client::customer(srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["name"], ALICE.0, "{conv}");
    alice.recv_conversation(&cid, "assigned to alice", |c| c["status"] == "active").await;
    cust.say(&cid, "c-1", "hello there").await;
    alice.note(&cid, "n-1", "internal: VIP customer").await;
    alice.say(&cid, "a-1", "how can I help?").await;
    let closed = cust.call(json!({"type":"close","conversation":cid}), "conversation").await;
    assert_eq!(closed["conversation"]["status"], "closed", "{closed}");
    cust.call(json!({"type":"rate","conversation":cid,"score":4,"comment":"quick"}), "ack").await;
    cid
}

// ---------------------------------------------------------------------------
// 7. Delivery and signature; internal notes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_event_signed() {
    let rx = Receiver::start(Reply::Status(200));
    let srv = start_with_webhook(&rx, &[]);
    let cid = full_conversation(&srv).await;

    // 6 events: created, assigned, 2 x message.created (not the note), closed, rated.
    rx.wait_for(WAIT, "6 events", |h| h.len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hits = {
        let later = rx.hits();
        assert_eq!(later.len(), 6, "exactly 6 webhook requests expected, got {:?}", kinds(&later));
        later
    };
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for h in &hits {
        let v = check_envelope(h, KEY);
        assert!(ids.insert(str_of(&v, "id").to_string()), "event id used twice: {v}");
        by_kind.entry(str_of(&v, "type").to_string()).or_default().push(v);
    }
    let counts: BTreeMap<&str, usize> = by_kind.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("conversation.assigned", 1),
            ("conversation.closed", 1),
            ("conversation.created", 1),
            ("conversation.rated", 1),
            ("message.created", 2),
        ]),
        "{:?}",
        kinds(&hits)
    );

    let created = &by_kind["conversation.created"][0]["data"]["conversation"];
    assert_eq!(created["id"], cid.as_str(), "{created}");
    assert_eq!(created["room"], "support", "{created}");
    assert_eq!(created["customer"]["name"], "Ann", "{created}");

    let assigned = &by_kind["conversation.assigned"][0]["data"];
    assert_eq!(assigned["conversation"]["id"], cid.as_str(), "{assigned}");
    assert_eq!(assigned["conversation"]["status"], "active", "{assigned}");
    assert_eq!(assigned["conversation"]["agent"]["name"], ALICE.0, "{assigned}");

    let closed = &by_kind["conversation.closed"][0]["data"];
    assert_eq!(closed["conversation"]["id"], cid.as_str(), "{closed}");
    assert_eq!(closed["conversation"]["status"], "closed", "{closed}");

    let rated = &by_kind["conversation.rated"][0]["data"];
    assert_eq!(rated["conversation"]["id"], cid.as_str(), "{rated}");
    assert_eq!(rated["event"]["score"], 4, "{rated}");
    assert_eq!(rated["event"]["comment"], "quick", "{rated}");

    let mut bodies: Vec<String> = by_kind["message.created"]
        .iter()
        .map(|v| {
            let m = &v["data"]["message"];
            assert_eq!(m["conversation"], cid.as_str(), "{m}");
            assert_eq!(m["kind"], "text", "no note without --webhook-notes: {m}");
            str_of(m, "body").to_string()
        })
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["hello there", "how can I help?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_notes_flag_sends_internal_notes() {
    let rx = Receiver::start(Reply::Status(200));
    let srv = start_with_webhook(&rx, &["--webhook-notes"]);
    let cid = full_conversation(&srv).await;
    let hits = rx.wait_for(WAIT, "3 message.created", |h| count(h, "message.created") >= 3).await;
    let mut notes = Vec::new();
    for h in hits.iter().filter(|h| h.kind() == "message.created") {
        let v = check_envelope(h, KEY);
        let m = &v["data"]["message"];
        assert_eq!(m["conversation"], cid.as_str(), "{m}");
        if m["kind"] == "note" {
            notes.push(m.clone());
        }
    }
    assert_eq!(notes.len(), 1, "exactly the one note: {notes:?}");
    assert_eq!(notes[0]["body"], "internal: VIP customer", "{}", notes[0]);
    assert_eq!(notes[0]["from"]["name"], ALICE.0, "{}", notes[0]);
}

// ---------------------------------------------------------------------------
// 8. --webhook-events
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_filter_sends_only_the_chosen_kinds() {
    let rx = Receiver::start(Reply::Status(200));
    let srv = start_with_webhook(&rx, &["--webhook-events", "message.created"]);
    let cid = full_conversation(&srv).await;
    // A second conversation, ending with a message, so that everything before
    // it has had its chance to be posted.
    let mut cust = Client::customer(&srv, "Bea").await;
    // (alice has gone: it stays queued, and a customer may write while queued)
    let conv = cust.open("support").await;
    let cid2 = str_of(&conv, "id").to_string();
    cust.say(&cid2, "b-1", "last one").await;
    rx.wait_for(WAIT, "3 message.created", |h| count(h, "message.created") >= 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let hits = rx.hits();
    assert_eq!(kinds(&hits), ["message.created"; 3], "only message.created was asked for");
    let mut seen: Vec<(String, String)> = hits
        .iter()
        .map(|h| {
            let v = check_envelope(h, KEY);
            let m = &v["data"]["message"];
            (str_of(m, "conversation").to_string(), str_of(m, "body").to_string())
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (cid.clone(), "hello there".to_string()),
        (cid.clone(), "how can I help?".to_string()),
        (cid2.clone(), "last one".to_string()),
    ];
    want.sort();
    assert_eq!(seen, want);
}

// ---------------------------------------------------------------------------
// 9. A slow receiver does not delay chat
// ---------------------------------------------------------------------------

const SENDS: usize = 80;

/// Ack latency of `SENDS` sequential sends by one customer (after a warm-up).
async fn ack_latencies(srv: &Server) -> Vec<Duration> {
    let mut c = Client::customer(srv, "Fast").await;
    let conv = c.open("support").await;
    let cid = str_of(&conv, "id").to_string();
    for i in 0..3 {
        c.say(&cid, &format!("warm-{i}"), "warming up").await;
    }
    let mut lat = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let t = Instant::now();
        let ack = c.say(&cid, &format!("k-{i}"), &format!("message {i}")).await;
        lat.push(t.elapsed());
        assert_eq!(ack["client_id"], format!("k-{i}"), "{ack}");
    }
    lat.sort();
    lat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_webhook_receiver_does_not_delay_acks() {
    // Allow the sends through the rate limit; everything else as default.
    let limits = ["--rate-per-sec", "1000", "--rate-burst", "1000"];
    let base = {
        let srv = Server::start(&limits);
        ack_latencies(&srv).await
    };

    // Every request hangs 5 s, and the server is willing to wait 10 s for it:
    // over 64 posts in flight at once, more events queued behind them.
    let rx = Receiver::start(Reply::Hang(Duration::from_secs(5)));
    let url = rx.url("/hook");
    let mut args = vec!["--webhook", url.as_str(), "--webhook-secret", KEY, "--webhook-timeout-ms", "10000"];
    args.extend_from_slice(&limits);
    let srv = Server::start(&args);
    let slow = ack_latencies(&srv).await;
    // The webhooks really were being posted (and hanging) meanwhile.
    let hits = rx.wait_for(Duration::from_secs(3), "20 hanging posts", |h| h.len() >= 20).await;
    assert!(hits.iter().all(|h| h.header("x-parley-event").is_some()), "not webhook posts?");

    let median = |v: &[Duration]| v[v.len() / 2];
    let max = |v: &[Duration]| *v.last().expect("latencies");
    eprintln!(
        "ack latency without webhooks: median {:?} max {:?}; with a receiver hanging 5 s: median {:?} max {:?}",
        median(&base),
        max(&base),
        median(&slow),
        max(&slow)
    );
    let slack = Duration::from_millis(50);
    assert!(
        median(&slow) <= median(&base) * 3 + slack,
        "median ack latency {:?} with a hanging receiver vs {:?} without",
        median(&slow),
        median(&base)
    );
    let max_allowed = Duration::from_millis(250).max(max(&base) * 3 + slack);
    assert!(
        max(&slow) < max_allowed,
        "max ack latency {:?} with a hanging receiver (without: {:?}; allowed {max_allowed:?})",
        max(&slow),
        max(&base)
    );
}

// ---------------------------------------------------------------------------
// 10. Retries, drops and the counters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_three_tries_then_event_is_dropped() {
    let rx = Receiver::start(Reply::Status(500));
    let srv = start_with_webhook(&rx, &["--webhook-events", "conversation.created"]);
    let mut c = Client::customer(&srv, "Ann").await;
    let conv = c.open("support").await;
    let cid = str_of(&conv, "id").to_string();

    let hits = rx.wait_for(Duration::from_secs(5), "3 tries", |h| h.len() >= 3).await;
    wait_metric(&srv, "parley_webhooks_dropped_total", 1.0, Duration::from_secs(5)).await;
    // No fourth try.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rx.hits();
    assert_eq!(after.len(), 3, "exactly 3 tries: {:?}", kinds(&after));
    // The same event each time (same body, same id), correctly signed.
    for h in &after {
        let v = check_envelope(h, KEY);
        assert_eq!(v["type"], "conversation.created", "{v}");
        assert_eq!(v["data"]["conversation"]["id"], cid.as_str(), "{v}");
        assert_eq!(h.body, after[0].body, "a retry must resend the same event");
    }
    // Backoff: 200 ms, then 1 s.
    let gap1 = hits[1].at - hits[0].at;
    let gap2 = hits[2].at - hits[1].at;
    assert!(gap1 >= Duration::from_millis(190) && gap1 < Duration::from_millis(900), "first backoff {gap1:?}");
    assert!(gap2 >= Duration::from_millis(950) && gap2 < Duration::from_millis(2500), "second backoff {gap2:?}");
    assert_eq!(metric(&srv, "parley_webhooks_dropped_total").await, Some(1.0));
    assert_eq!(metric(&srv, "parley_webhooks_failed_tries_total").await, Some(3.0));
    assert_eq!(metric(&srv, "parley_webhooks_delivered_total").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_that_fails_once_gets_the_same_event_again_and_it_counts_as_delivered() {
    let rx = Receiver::scripted(&[Reply::Status(503)], Reply::Status(204));
    let srv = start_with_webhook(&rx, &["--webhook-events", "conversation.created"]);
    let mut c = Client::customer(&srv, "Ann").await;
    c.open("support").await;
    rx.wait_for(Duration::from_secs(5), "2 tries", |h| h.len() >= 2).await;
    wait_metric(&srv, "parley_webhooks_delivered_total", 1.0, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 2, "a 2xx ends the retries: {:?}", kinds(&hits));
    assert_eq!(hits[0].body, hits[1].body, "the retry resends the same event");
    assert_eq!(metric(&srv, "parley_webhooks_failed_tries_total").await, Some(1.0));
    assert_eq!(metric(&srv, "parley_webhooks_dropped_total").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_slower_than_the_timeout_counts_as_failed() {
    let rx = Receiver::start(Reply::Hang(Duration::from_secs(3)));
    let srv = start_with_webhook(&rx, &["--webhook-events", "conversation.created", "--webhook-timeout-ms", "300"]);
    let mut c = Client::customer(&srv, "Ann").await;
    c.open("support").await;
    // 3 x 300 ms + 200 ms + 1 s of backoff.
    rx.wait_for(Duration::from_secs(6), "3 tries", |h| h.len() >= 3).await;
    wait_metric(&srv, "parley_webhooks_dropped_total", 1.0, Duration::from_secs(5)).await;
    assert_eq!(metric(&srv, "parley_webhooks_failed_tries_total").await, Some(3.0));
    assert_eq!(metric(&srv, "parley_webhooks_delivered_total").await, Some(0.0));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rx.hits().len(), 3, "exactly 3 tries: {:?}", kinds(&rx.hits()));
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn webhook_without_a_long_enough_secret_is_refused() {
    let dir = data_dir();
    for args in [
        vec!["--webhook", "http://127.0.0.1:9/hook"],
        vec!["--webhook", "http://127.0.0.1:9/hook", "--webhook-secret", "too-short"],
        vec!["--webhook", "http://127.0.0.1:9/hook", "--webhook-secret", KEY, "--webhook-events", "nope.made_up"],
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--tcp-listen", ""];
        all.extend_from_slice(&args);
        let mut child = std::process::Command::new(BIN)
            .args(&all)
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run parley");
        // It must exit by itself; a server that starts anyway is killed after 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("collect output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} should be refused; stdout {stdout}");
        assert!(!stdout.contains("listening http="), "{args:?} started anyway: {stdout}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--webhook"), "{args:?}: stderr should name the flag");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_email_left_while_nobody_was_online_is_sent_with_the_conversation() {
    let rx = Receiver::start(Reply::Status(200));
    let srv = start_with_webhook(&rx, &["--abandon-after-ms", "600"]);
    let mut ann = Client::customer(&srv, "Ann").await;
    let cid = str_of(&ann.open("support").await, "id").to_string();
    ann.say(&cid, "k1", "Is anyone there? Please write back.").await;
    ann.call(json!({"type":"contact","conversation":cid,"email":"ann@example.com"}), "ack").await;
    // Nobody came; she left: the closed conversation reaches the team with her address.
    ann.disconnect().await;
    let hits = rx
        .wait_for(Duration::from_secs(10), "conversation.closed", |h| {
            h.iter().any(|h| h.kind() == "conversation.closed")
        })
        .await;
    let closed = hits.iter().find(|h| h.kind() == "conversation.closed").expect("closed");
    let v = check_envelope(closed, KEY);
    assert_eq!(v["data"]["conversation"]["contact_email"], "ann@example.com", "{v}");
    assert_eq!(v["data"]["event"]["reason"], "abandoned", "{v}");
}
