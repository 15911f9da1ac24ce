//! Conversation changes (PROTOCOL §5, §8): transfer, close, rate, each writing
//! an `event` message.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);
const BOB: (&str, &str, u32) = ("bob", "pw-bob-1", 5);

/// `ann` in support with an active conversation; returns (ann, customer, cid).
async fn active_with_ann(srv: &Server) -> (Client, Client, String) {
    let mut ann = Client::agent_in(srv, ANN.0, ANN.1, "support").await;
    let mut cust = Client::customer(srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["id"], ann.user["id"], "{conv}");
    ann.recv_event(&cid, "assigned").await;
    (ann, cust, cid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_room_puts_conversation_back_in_that_queue_with_event() {
    let srv = Server::with_agents(&[ANN], &["--rooms", "support,sales"]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    let reply = ann.call(json!({"type":"transfer","conversation":cid,"to_room":"sales"}), "conversation").await;
    let conv = &reply["conversation"];
    assert_eq!(conv["room"], "sales", "{reply}");
    assert_eq!(conv["status"], "queued", "{reply}");
    assert!(conv["agent"].is_null(), "{reply}");
    assert_eq!(conv["queue_position"].as_u64(), Some(1), "{reply}");

    let ev = cust.recv_event(&cid, "transferred").await;
    assert_eq!(ev["from"]["role"], "system", "{ev}");
    let pushed = cust.recv_conversation(&cid, "queued in sales", |c| c["status"] == "queued").await;
    assert_eq!(pushed["room"], "sales", "{pushed}");

    // The token holder can see it in the sales queue over HTTP too.
    let token = login(&srv, ANN.0, ANN.1).await;
    let queued = list_conversations(&srv, &token, "sales", "queued").await;
    assert!(queued.iter().any(|c| c["id"] == cid.as_str()), "{queued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_unknown_room_is_not_found() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut ann, _cust, cid) = active_with_ann(&srv).await;
    ann.call_err(json!({"type":"transfer","conversation":cid,"to_room":"no-such-room"}), "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_online_agent_reassigns_with_event() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    let bob_id = bob.id();
    let reply = ann.call(json!({"type":"transfer","conversation":cid,"to_agent":bob_id}), "conversation").await;
    assert_eq!(reply["conversation"]["status"], "active", "{reply}");
    assert_eq!(reply["conversation"]["agent"]["id"], bob_id.as_str(), "{reply}");
    cust.recv_event(&cid, "transferred").await;
    bob.recv_event(&cid, "transferred").await;
    let pushed = cust.recv_conversation(&cid, "now with bob", |c| c["agent"]["id"] == bob_id.as_str()).await;
    assert_eq!(pushed["status"], "active");

    // ann is no longer the assignee: she cannot transfer it again.
    ann.call_err(json!({"type":"transfer","conversation":cid,"to_room":"support"}), "forbidden").await;
    // bob now can close it.
    let closed = bob.call(json!({"type":"close","conversation":cid}), "conversation").await;
    assert_eq!(closed["conversation"]["status"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_offline_agent_is_refused_and_changes_nothing() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    // bob exists but has no session.
    let (_, bob) = login_agent(&srv, BOB.0, BOB.1).await;
    let e = ann.request(json!({"type":"transfer","conversation":cid,"to_agent":bob["id"]})).await;
    assert_eq!(e["type"], "error", "transfer to an offline agent: {e}");
    let conv = cust.open("support").await;
    assert_eq!(conv["id"], cid.as_str());
    assert_eq!(conv["status"], "active", "{conv}");
    assert_eq!(conv["agent"]["id"], ann.user["id"], "{conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_by_non_assignee_is_forbidden() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let (_ann, _cust, cid) = active_with_ann(&srv).await;
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    bob.call_err(json!({"type":"transfer","conversation":cid,"to_room":"support"}), "forbidden").await;
    let bob_id = bob.id();
    bob.call_err(json!({"type":"transfer","conversation":cid,"to_agent":bob_id}), "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_close_closes_with_event() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    let reply = cust.call(json!({"type":"close","conversation":cid}), "conversation").await;
    assert_eq!(reply["conversation"]["status"], "closed", "{reply}");
    let ev = ann.recv_event(&cid, "closed").await;
    assert_eq!(ev["from"]["role"], "system", "{ev}");
    ann.recv_conversation(&cid, "closed push", |c| c["status"] == "closed").await;
    // A new open starts a new conversation.
    let fresh = cust.open("support").await;
    assert_ne!(fresh["id"], cid.as_str(), "open after close must start anew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignee_close_closes_with_event() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    let reply = ann.call(json!({"type":"close","conversation":cid}), "conversation").await;
    assert_eq!(reply["conversation"]["status"], "closed", "{reply}");
    cust.recv_event(&cid, "closed").await;
    cust.recv_conversation(&cid, "closed push", |c| c["status"] == "closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_requires_closed_conversation_and_score_1_to_5() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut ann, mut cust, cid) = active_with_ann(&srv).await;
    cust.call_err(json!({"type":"rate","conversation":cid,"score":5}), "conflict").await;
    cust.call(json!({"type":"close","conversation":cid}), "conversation").await;
    for bad in [0, 6] {
        cust.call_err(json!({"type":"rate","conversation":cid,"score":bad}), "bad_request").await;
    }
    let ack = cust.call(json!({"type":"rate","conversation":cid,"score":4,"comment":"quick and kind"}), "ack").await;
    assert!(ack["ref"].is_string(), "{ack}");
    ann.recv_event(&cid, "rated").await;

    let (msgs, _) = cust.sync_all(&cid).await;
    let rated: Vec<_> = msgs.iter().filter(|m| m["kind"] == "event" && m["event"]["name"] == "rated").collect();
    assert_eq!(rated.len(), 1, "exactly one rated event (refused rates are not stored): {msgs:?}");
    let names: Vec<&str> =
        msgs.iter().filter(|m| m["kind"] == "event").filter_map(|m| m["event"]["name"].as_str()).collect();
    assert_eq!(names, vec!["assigned", "closed", "rated"], "{msgs:?}");
    cust.expect_none(Duration::from_millis(100), "error", |f| f["type"] == "error" && f["ref"].is_null()).await;
}
