//! Limits (PROTOCOL §1, §2): body length in Unicode scalar values, frame size,
//! rate limiting, sustained abuse, and the WebSocket Origin allowlist.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

async fn customer_in_conversation(srv: &Server) -> (Client, String) {
    let mut c = Client::customer(srv, "Ann").await;
    let cid = str_of(&c.open("support").await, "id").to_string();
    (c, cid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_exactly_max_chars_passes_counting_unicode_scalar_values() {
    let srv = Server::start(&["--max-body-chars", "10"]);
    let (mut c, cid) = customer_in_conversation(&srv).await;
    let cjk = "我的订单还没到了吗请";
    let emoji = "😀🚀🎉🔥💡🌍🍕🎸🐙🦀";
    let ascii = "abcdefghij";
    assert_eq!(cjk.chars().count(), 10);
    assert_eq!(emoji.chars().count(), 10);
    for (i, body) in [cjk, emoji, ascii].into_iter().enumerate() {
        let ack = c.say(&cid, &format!("ok{i}"), body).await;
        assert_eq!(ack["type"], "ack");
    }
    let (msgs, _) = c.sync_all(&cid).await;
    let bodies: Vec<&str> = msgs.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, vec![cjk, emoji, ascii], "bodies must round-trip unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_chars_is_too_large_and_not_stored() {
    let srv = Server::start(&["--max-body-chars", "10"]);
    let (mut c, cid) = customer_in_conversation(&srv).await;
    let bodies = ["我的订单还没到了吗请问", "😀🚀🎉🔥💡🌍🍕🎸🐙🦀✨", "abcdefghijk"];
    for (i, body) in bodies.into_iter().enumerate() {
        assert_eq!(body.chars().count(), 11);
        c.call_err(json!({"type":"send","conversation":cid,"client_id":format!("big{i}"),"body":body}), "too_large")
            .await;
    }
    c.ping().await;
    let (msgs, _) = c.sync_all(&cid).await;
    assert!(msgs.is_empty(), "refused bodies were stored: {msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_max_frame_bytes_closes_1009() {
    let srv = Server::start(&["--max-frame-bytes", "1024"]);
    let (mut c, cid) = customer_in_conversation(&srv).await;
    // Just under the limit is fine.
    let small = json!({"type":"send","conversation":cid,"client_id":"s","body":"x".repeat(700)});
    assert!(small.to_string().len() < 1024);
    c.call(small, "ack").await;
    let big = json!({"type":"send","conversation":cid,"client_id":"b","body":"x".repeat(2000)});
    c.send_raw(Message::Text(big.to_string())).await;
    c.expect_close(1009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_rate_burst_are_rate_limited_and_dropped() {
    let srv = Server::start(&["--rate-per-sec", "5", "--rate-burst", "5"]);
    let (mut c, cid) = customer_in_conversation(&srv).await;
    // Let the bucket fill up again after hello and open.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 1..=7 {
        c.send_json(&json!({"type":"send","conversation":cid,"client_id":format!("q{i}"),
                            "body":format!("quick {i}"),"ref":format!("q{i}")}))
            .await;
    }
    let mut results = Vec::new();
    for i in 1..=7 {
        let r = format!("q{i}");
        let f = c.recv_until("reply to a quick send", |f| f["ref"] == r.as_str()).await;
        results.push(if f["type"] == "ack" {
            "ack".to_string()
        } else {
            f["code"].as_str().unwrap_or("?").to_string()
        });
    }
    assert_eq!(&results[..5], &["ack"; 5], "{results:?}");
    assert_eq!(results[5], "rate_limited", "{results:?}");
    // Wait for tokens, then check what was stored.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (msgs, _) = c.sync_all(&cid).await;
    for (i, r) in results.iter().enumerate() {
        let client_id = format!("q{}", i + 1);
        let stored = msgs.iter().filter(|m| m["client_id"] == client_id.as_str()).count();
        let want = usize::from(r == "ack");
        assert_eq!(stored, want, "{client_id} ({r}) stored {stored} times: {msgs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_abuse_is_closed_4008() {
    let srv = Server::start(&["--rate-per-sec", "5", "--rate-burst", "5"]);
    let (mut c, cid) = customer_in_conversation(&srv).await;
    for i in 0..500 {
        let v = json!({"type":"send","conversation":cid,"client_id":format!("spam{i}"),"body":"spam"});
        if !c.try_send_json(&v).await {
            break;
        }
    }
    c.expect_close_within(4008, Duration::from_secs(10)).await;
    assert!(
        c.log.iter().any(|f| f["type"] == "error" && f["code"] == "rate_limited"),
        "rate_limited errors should precede the close"
    );
}

// --- Origin allowlist --------------------------------------------------------

fn http_status(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origin_is_refused_with_403_and_own_origin_accepted() {
    let srv = Server::start(&[]);
    match Client::connect_with_origin(&srv, "http://evil.example").await {
        Ok(_) => panic!("upgrade with Origin http://evil.example was accepted"),
        Err(e) => assert_eq!(http_status(&e), Some(403), "{e}"),
    }
    let origin = srv.own_origin();
    let mut c =
        Client::connect_with_origin(&srv, &origin).await.unwrap_or_else(|e| panic!("own origin {origin} refused: {e}"));
    c.hello_customer("Ann").await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_allowed_origin_is_accepted() {
    let srv = Server::start(&["--allowed-origins", "http://shop.example"]);
    let mut c = Client::connect_with_origin(&srv, "http://shop.example")
        .await
        .unwrap_or_else(|e| panic!("allowed origin refused: {e}"));
    c.hello_customer("Ann").await;
    match Client::connect_with_origin(&srv, "http://evil.example").await {
        Ok(_) => panic!("upgrade with Origin http://evil.example was accepted"),
        Err(e) => assert_eq!(http_status(&e), Some(403), "{e}"),
    }
}
