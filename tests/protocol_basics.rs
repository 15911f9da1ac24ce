//! Connection life (PROTOCOL §2, §3): hello/welcome, refs, bad requests, heartbeat.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_hello_without_token_gets_welcome_with_token_and_limits() {
    let srv = Server::start(&[
        "--heartbeat-ms",
        "1500",
        "--max-body-chars",
        "1234",
        "--max-frame-bytes",
        "40000",
        "--rate-per-sec",
        "7",
        "--rate-burst",
        "9",
    ]);
    let mut c = Client::connect(&srv).await;
    c.send_json(&json!({"type":"hello","role":"customer","name":"Ann"})).await;
    let w = c.recv_json().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["user"]["role"], "customer", "{w}");
    assert_eq!(w["user"]["name"], "Ann", "{w}");
    assert!(!str_of(&w["user"], "id").is_empty(), "{w}");
    assert!(!str_of(&w, "token").is_empty(), "{w}");
    assert!(w["session"].is_string(), "welcome.session: {w}");
    assert!(w["node"].is_string(), "welcome.node: {w}");
    assert_eq!(w["conversations"], json!([]), "{w}");
    assert_eq!(w["heartbeat_ms"].as_u64(), Some(1500), "{w}");
    let l = &w["limits"];
    assert_eq!(l["max_body_chars"].as_u64(), Some(1234), "{w}");
    assert_eq!(l["max_frame_bytes"].as_u64(), Some(40000), "{w}");
    assert_eq!(l["rate_per_sec"].as_f64(), Some(7.0), "{w}");
    assert_eq!(l["rate_burst"].as_f64(), Some(9.0), "{w}");

    // A second new customer is a different user with a different token.
    let other = Client::customer(&srv, "Bo").await;
    assert_ne!(other.user["id"], w["user"]["id"]);
    assert_ne!(other.welcome["token"], w["token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_resume_token_keeps_user_id_across_sessions() {
    let srv = Server::start(&[]);
    let first = Client::customer(&srv, "Ann").await;
    let id = first.user["id"].clone();
    let token = first.token.clone().expect("resume token");
    drop(first);
    let again = Client::customer_with_token(&srv, "Ann", &token).await;
    assert_eq!(again.user["id"], id, "{}", again.welcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hello_with_valid_token_gets_agent_welcome_with_null_token() {
    let srv = Server::with_agents(&[("ann", "pw-ann-1", 5)], &[]);
    let (token, agent) = login_agent(&srv, "ann", "pw-ann-1").await;
    assert_eq!(agent["role"], "agent", "{agent}");
    assert_eq!(agent["name"], "ann", "{agent}");
    let mut c = Client::connect(&srv).await;
    c.send_json(&json!({"type":"hello","role":"agent","token":token})).await;
    let w = c.recv_json().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["user"]["role"], "agent", "{w}");
    assert_eq!(w["user"]["name"], "ann", "{w}");
    assert_eq!(w["user"]["id"], agent["id"], "{w}");
    assert!(w.get("token").is_some(), "welcome must carry token: null: {w}");
    assert_eq!(w["token"], Value::Null, "{w}");
    assert_eq!(w["conversations"], json!([]), "{w}");
    assert!(w["limits"].is_object(), "{w}");
    assert!(w["heartbeat_ms"].is_u64(), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hello_with_bad_token_is_unauthorized_and_closed_4501() {
    let srv = Server::with_agents(&[("ann", "pw-ann-1", 5)], &[]);
    let good = login(&srv, "ann", "pw-ann-1").await;
    // Flip the last character of a valid token: the signature no longer matches.
    let mut tampered = good.clone();
    let last = tampered.pop().expect("non-empty token");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let customer_token = Client::customer(&srv, "Cy").await.token.clone().expect("customer token");
    for bad in ["garbage", tampered.as_str(), customer_token.as_str()] {
        let mut c = Client::connect(&srv).await;
        c.send_json(&json!({"type":"hello","role":"agent","token":bad})).await;
        let e = c.recv_json().await;
        assert_eq!(e["type"], "error", "token {bad:?}: {e}");
        assert_eq!(e["code"], "unauthorized", "token {bad:?}: {e}");
        c.expect_close(4501).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_other_than_hello_is_unauthorized_and_closed_4501() {
    let srv = Server::start(&[]);
    let mut c = Client::connect(&srv).await;
    c.send_json(&json!({"type":"ping","ref":"p"})).await;
    let e = c.recv_json().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "unauthorized", "{e}");
    c.expect_close(4501).await;

    let mut c = Client::connect(&srv).await;
    c.send_json(&json!({"type":"open","room":"support"})).await;
    let e = c.recv_json().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    c.expect_close(4501).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_within_hello_timeout_is_closed_4501() {
    let srv = Server::start(&["--hello-timeout-ms", "500"]);
    let mut c = Client::connect(&srv).await;
    let t0 = Instant::now();
    let code = c.recv_close(Duration::from_secs(5)).await;
    let elapsed = t0.elapsed();
    assert_eq!(code, Some(4501), "{:?}", c.log);
    assert!(elapsed >= Duration::from_millis(400), "closed after {elapsed:?}, before the 500 ms hello timeout");
    assert!(elapsed <= Duration::from_secs(3), "closed only after {elapsed:?}");
    // PROTOCOL §2.1: "or nothing: error{code:"unauthorized"} then close 4501".
    assert!(
        c.log.iter().any(|f| f["type"] == "error" && f["code"] == "unauthorized"),
        "expected error unauthorized before the close, got {:?}",
        c.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_the_same_ref() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    c.send_json(&json!({"type":"ping","ref":"p-1"})).await;
    let p = c.recv_until("pong", |f| f["type"] == "pong").await;
    assert_eq!(p["ref"], "p-1", "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_direct_reply_echoes_the_request_ref() {
    let srv = Server::with_agents(&[("ann", "pw-ann-1", 5)], &[]);
    let mut agent = Client::agent(&srv, "ann", "pw-ann-1").await;
    let room = agent.request(json!({"type":"join","room":"support","ref":"ref-join"})).await;
    assert_eq!(room["type"], "room", "{room}");

    let mut c = Client::customer(&srv, "Ann").await;
    let conv = c.request(json!({"type":"open","room":"support","ref":"ref-open"})).await;
    assert_eq!(conv["type"], "conversation", "{conv}");
    let cid = str_of(&conv["conversation"], "id").to_string();

    let long_ref = "x".repeat(64);
    let ack = c.request(json!({"type":"send","conversation":cid,"client_id":"k1","body":"hi","ref":long_ref})).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let hist = c.request(json!({"type":"sync","conversation":cid,"after_seq":0,"ref":"ref-sync"})).await;
    assert_eq!(hist["type"], "history", "{hist}");

    let err = c.request(json!({"type":"open","room":"no-such-room","ref":"ref-err"})).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "not_found", "{err}");

    let pong = c.request(json!({"type":"ping","ref":"ref-ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    let ack = agent.request(json!({"type":"status","availability":"away","ref":"ref-status"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ack = agent.request(json!({"type":"leave","room":"support","ref":"ref-leave"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

// --- bad requests keep the connection open -------------------------------

/// Send `frame` after welcome; expect bad_request (naming `field` if given),
/// then prove the connection is still usable with a ping.
async fn assert_bad_request_keeps_open(c: &mut Client, frame: Message, field: Option<&str>) {
    let shown = format!("{frame:?}");
    c.send_raw(frame).await;
    let e = c.recv_until("error", |f| f["type"] == "error").await;
    assert_eq!(e["code"], "bad_request", "{shown} -> {e}");
    if let Some(field) = field {
        let msg = e["message"].as_str().unwrap_or("");
        assert!(msg.contains(field), "{shown}: error message should name `{field}`: {e}");
    }
    c.ping().await;
}

async fn customer_with_conversation(srv: &Server) -> (Client, String) {
    let mut c = Client::customer(srv, "Ann").await;
    let conv = c.open("support").await;
    let id = str_of(&conv, "id").to_string();
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_text_is_bad_request_and_connection_stays_open() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    assert_bad_request_keeps_open(&mut c, Message::Text("this is not json {".into()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_an_object_is_bad_request_and_connection_stays_open() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    for text in ["[1,2,3]", "\"ping\"", "42", "null"] {
        assert_bad_request_keeps_open(&mut c, Message::Text(text.into()), None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_is_bad_request_and_connection_stays_open() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    let frame = json!({"type":"teleport","ref":"u1"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), None).await;
    let frame = json!({"room":"support","ref":"u2"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_field_is_bad_request_naming_the_field() {
    let srv = Server::start(&[]);
    let (mut c, cid) = customer_with_conversation(&srv).await;
    let frame = json!({"type":"send","conversation":cid,"body":"hi","ref":"m1"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), Some("client_id")).await;
    // And nothing was stored.
    let h = c.sync(&cid, 0, None).await;
    assert!(h["messages"].as_array().unwrap().iter().all(|m| m["kind"] != "text"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_field_is_bad_request_naming_the_field() {
    let srv = Server::start(&[]);
    let (mut c, cid) = customer_with_conversation(&srv).await;
    let frame = json!({"type":"sync","conversation":cid,"after_seq":"zero","ref":"t1"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), Some("after_seq")).await;
    let frame = json!({"type":"send","conversation":cid,"client_id":"k","body":17,"ref":"t2"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), Some("body")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_extra_field_is_bad_request_naming_the_field() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    let frame = json!({"type":"open","room":"support","colour":"red","ref":"x1"}).to_string();
    assert_bad_request_keeps_open(&mut c, Message::Text(frame), Some("colour")).await;
    // The refused open created nothing.
    assert!(c.seen(|f| f["type"] == "conversation").is_empty(), "{:?}", c.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_is_bad_request_and_connection_stays_open() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    let bytes = json!({"type":"ping"}).to_string().into_bytes();
    assert_bad_request_keeps_open(&mut c, Message::Binary(bytes), None).await;
}

// --- heartbeat -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_three_heartbeats() {
    let srv = Server::start(&["--heartbeat-ms", "300"]);
    let mut raw = RawWs::connect(&srv, None).await;
    raw.send_json(&json!({"type":"hello","role":"customer","name":"Mute"})).await;
    let t0 = Instant::now();
    let w = raw.read_json_until("welcome", |v| v["type"] == "welcome").await;
    assert_eq!(w["heartbeat_ms"].as_u64(), Some(300), "{w}");
    // Read everything but never answer a ping.
    let mut pings = 0;
    let end = loop {
        match raw.read_frame(Duration::from_secs(5)).await {
            RawEvent::Frame(OP_PING, _) => pings += 1,
            RawEvent::Frame(OP_CLOSE, p) => break format!("close {:?}", close_code(&p)),
            RawEvent::Frame(..) => {}
            RawEvent::Eof => break "EOF".to_string(),
            RawEvent::Reset(e) => break format!("reset {e}"),
            RawEvent::Timeout => {
                panic!("silent client still connected {:?} after hello (heartbeat 300 ms)", t0.elapsed())
            }
        }
    };
    let elapsed = t0.elapsed();
    assert_eq!(end, "close Some(4000)", "a silent client is closed with 4000 (reconnect and sync)");
    assert!(pings >= 1, "server sent no ping before closing ({end})");
    assert!(elapsed >= Duration::from_millis(700), "closed after {elapsed:?} ({end}), before 3 × 300 ms of silence");
    assert!(elapsed <= Duration::from_millis(3000), "closed only after {elapsed:?} ({end})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_answering_pings_stays_connected() {
    let srv = Server::start(&["--heartbeat-ms", "300"]);
    let mut c = Client::customer(&srv, "Chatty").await;
    // Send nothing ourselves for well over 3 × heartbeat; only pongs go out.
    c.settle(Duration::from_millis(2000)).await;
    c.ping().await;
}
