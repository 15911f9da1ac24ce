//! Slow readers do not hurt others (PROTOCOL §7.5): a client that stops reading
//! is closed with 4008 once its bounded outbound queue overflows, the server
//! ends the jammed connection itself, and other conversations keep flowing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);
const BOB: (&str, &str, u32) = ("bob", "pw-bob-1", 5);
/// Flood size: 640 × 16 KB ≈ 10 MB, well past the kernel's socket buffers
/// (server send buffer ≤ 4 MB, our receive buffer pinned small) plus the
/// 64-message queue.
const FLOOD_MESSAGES: usize = 640;
const FLOOD_BODY: usize = 16_000;
/// Bound on one ack or delivery in a healthy conversation during the flood.
const HEALTHY_LATENCY: Duration = Duration::from_secs(2);

/// The two floods would compete for the 2 cores; run these tests one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn flags() -> Vec<&'static str> {
    vec![
        "--rooms",
        "support,sales",
        "--queue-messages",
        "64",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
        "--max-body-chars",
        "100000",
        "--max-frame-bytes",
        "1048576",
        // Long enough that the heartbeat cannot be what ends a jammed client.
        "--heartbeat-ms",
        "20000",
    ]
}

/// Send FLOOD_MESSAGES big messages into `cid`, at most 16 in flight; every one
/// must be acked.
async fn flood(agent: &mut Client, cid: &str) {
    const WINDOW: usize = 16;
    let filler = "x".repeat(FLOOD_BODY);
    let mut acked = 0;
    for i in 0..FLOOD_MESSAGES {
        agent
            .send_json(&json!({"type":"send","conversation":cid,"client_id":format!("f{i}"),
                               "body":format!("{i:05}{filler}"),"ref":format!("f{i}")}))
            .await;
        if i + 1 - acked > WINDOW {
            wait_ack(agent, acked).await;
            acked += 1;
        }
    }
    while acked < FLOOD_MESSAGES {
        wait_ack(agent, acked).await;
        acked += 1;
    }
}

async fn wait_ack(agent: &mut Client, i: usize) {
    let r = format!("f{i}");
    let a = agent.recv_until_within(Duration::from_secs(10), "flood ack", |f| f["ref"] == r.as_str()).await;
    assert_eq!(a["type"], "ack", "flood send {i}: {a}");
}

/// A customer on a raw socket with a small receive buffer that says hello and
/// opens a conversation in support, reading nothing at all.
async fn never_reading_customer(srv: &Server, name: &str) -> RawWs {
    let mut raw = RawWs::connect(srv, Some(8192)).await;
    raw.send_json(&json!({"type":"hello","role":"customer","name":name})).await;
    raw.send_json(&json!({"type":"open","room":"support","ref":"open"})).await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_4008_while_other_conversations_keep_flowing() {
    let _serial = SERIAL.lock().await;
    let srv = Server::with_agents(&[ANN, BOB], &flags());
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;

    // The jammed customer reads only until it knows its conversation, then stops.
    let mut jam = RawWs::connect(&srv, Some(8192)).await;
    jam.send_json(&json!({"type":"hello","role":"customer","name":"Jam"})).await;
    jam.read_json_until("welcome", |v| v["type"] == "welcome").await;
    jam.send_json(&json!({"type":"open","room":"support","ref":"open"})).await;
    let reply = jam.read_json_until("open reply", |v| v["ref"] == "open").await;
    let jam_cid = str_of(&reply["conversation"], "id").to_string();
    ann.recv_event(&jam_cid, "assigned").await;

    // A healthy pair in another room.
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "sales").await;
    let mut healthy = Client::customer(&srv, "Healthy").await;
    let hid = str_of(&healthy.open("sales").await, "id").to_string();
    bob.recv_event(&hid, "assigned").await;

    let flooder = tokio::spawn({
        let cid = jam_cid.clone();
        async move {
            let t0 = Instant::now();
            flood(&mut ann, &cid).await;
            (ann, t0.elapsed())
        }
    });

    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    while rounds < 10 || !flooder.is_finished() {
        assert!(rounds < 2000, "flood never finished");
        let t = Instant::now();
        let ack = healthy.say(&hid, &format!("h{rounds}"), "still there?").await;
        worst = worst.max(t.elapsed());
        bob.recv_message("healthy customer's message", |m| m["id"] == ack["id"]).await;
        worst = worst.max(t.elapsed());
        let t = Instant::now();
        let reply = bob.say(&hid, &format!("b{rounds}"), "yes").await;
        healthy.recv_message("healthy agent's reply", |m| m["id"] == reply["id"]).await;
        worst = worst.max(t.elapsed());
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_ann, flood_time) = flooder.await.expect("flood task");
    eprintln!("flood took {flood_time:?}; {rounds} healthy rounds, worst latency {worst:?}");
    assert!(worst <= HEALTHY_LATENCY, "a healthy conversation waited {worst:?} while another client was jammed");

    // Now read the jammed socket: after the backlog there must be a close 4008,
    // or the server must have ended the connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut texts = 0;
    let end = loop {
        match jam.read_frame(Duration::from_secs(5)).await {
            RawEvent::Frame(OP_TEXT, _) => texts += 1,
            RawEvent::Frame(OP_CLOSE, p) => break Some(close_code(&p)),
            RawEvent::Frame(..) => {}
            RawEvent::Eof | RawEvent::Reset(_) => break None,
            RawEvent::Timeout => panic!(
                "jammed connection still open and silent after {texts} text frames \
                 (of {FLOOD_MESSAGES} flooded): never closed with 4008"
            ),
        }
    };
    eprintln!("jammed client read {texts} text frames, then {end:?}");
    if let Some(code) = end {
        assert_eq!(code, Some(4008), "jammed client closed with the wrong code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_client_is_disconnected_by_the_server() {
    let _serial = SERIAL.lock().await;
    let srv = Server::with_agents(&[ANN], &flags());
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut mute = never_reading_customer(&srv, "Mute").await;
    let assigned = ann
        .recv_until("assigned event of the mute customer", |f| {
            f["type"] == "message" && f["message"]["event"]["name"] == "assigned"
        })
        .await;
    let cid = str_of(&assigned["message"], "conversation").to_string();
    assert_eq!(
        server_side_tcp_state(srv.port, mute.local_port),
        Some(TCP_ESTABLISHED),
        "cannot find the server's end of the mute connection in /proc/net/tcp"
    );

    flood(&mut ann, &cid).await;
    let flooded = Instant::now();
    let state = loop {
        let state = server_side_tcp_state(srv.port, mute.local_port);
        if state != Some(TCP_ESTABLISHED) || flooded.elapsed() > Duration::from_secs(12) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(
        state,
        Some(TCP_ESTABLISHED),
        "the server still holds the never-reading connection open {:?} after the flood",
        flooded.elapsed()
    );
    eprintln!("server ended the mute connection {:?} after the flood (state {state:?})", flooded.elapsed());

    // Reading it now yields the backlog, then the end.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "backlog never ended");
        match mute.read_frame(Duration::from_secs(5)).await {
            RawEvent::Frame(OP_CLOSE, p) => {
                assert_eq!(close_code(&p), Some(4008), "wrong close code");
                break;
            }
            RawEvent::Frame(..) => {}
            RawEvent::Eof | RawEvent::Reset(_) => break,
            RawEvent::Timeout => panic!("connection open and silent after the backlog"),
        }
    }
}
