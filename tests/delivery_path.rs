//! Every frame that reaches a session other than the requester's goes
//! through the backplane (src/backplane): with a test backplane that loses
//! every effect, nothing but direct replies arrives; with the in-process
//! one, all of it does. So the single-node suites prove the one path a
//! cluster uses.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BO: (&str, &str, u32) = ("bo", "pw-bo-1", 5);
const CY: (&str, &str, u32) = ("cy", "pw-cy-1", 5);

/// A customer and two agents in support do one of everything that fans out,
/// while another customer has the widget open without a conversation;
/// returns the frame types each of the others received unasked.
async fn fan_out_seen(srv: &Server) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut idle = Client::customer(srv, "Idle").await;
    let mut bo = Client::agent_in(srv, BO.0, BO.1, "support").await;
    let mut cy = Client::agent(srv, CY.0, CY.1).await;
    cy.call(json!({"type":"status","availability":"away"}), "ack").await;
    cy.join("support").await; // bo hears cy's presence
    let mut ann = Client::customer(srv, "Ann").await;
    let conv = ann.open("support").await; // assignment: conversation pushes and an event
    let cid = str_of(&conv, "id").to_string();
    // Wait for the assignment by asking the store (not the pushes under test).
    for _ in 0..50 {
        let h = bo.sync(&cid, 0, None).await;
        if h["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.say(&cid, "k1", "hello").await; // message
    ann.send_json(&json!({"type":"typing","conversation":cid,"on":true})).await; // typing
    bo.say(&cid, "b1", "hi Ann").await;
    let h = ann.sync(&cid, 0, None).await;
    let last = h["messages"].as_array().and_then(|m| m.last()).map(|m| u64_of(m, "seq")).unwrap_or(1);
    ann.send_json(&json!({"type":"read","conversation":cid,"seq":last})).await; // read
    bo.call(json!({"type":"status","availability":"away"}), "ack").await; // presence
    ann.settle(Duration::from_millis(400)).await;
    bo.settle(Duration::from_millis(100)).await;
    // Room status is told at most once a second per room.
    idle.settle(Duration::from_millis(1300)).await;
    let unasked = |c: &Client| -> Vec<String> {
        let mut t: Vec<String> = c
            .seen(|f: &Value| f["ref"].is_null() && f["type"] != "welcome")
            .iter()
            .map(|f| f["type"].as_str().unwrap_or("").to_string())
            .collect();
        t.sort();
        t.dedup();
        t
    };
    (unasked(&ann), unasked(&bo), unasked(&idle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_backplane_that_loses_everything_only_direct_replies_arrive() {
    let dir = data_dir();
    add_agent(dir.path(), BO.0, BO.1, BO.2);
    add_agent(dir.path(), CY.0, CY.1, CY.2);
    let srv = Server::start_with_env(&dir, &[], &[("PARLEY_TEST_BACKPLANE", "lossy")]);
    let (ann, bo, idle) = fan_out_seen(&srv).await;
    assert!(ann.is_empty(), "the customer got {ann:?} past a backplane that loses everything");
    assert!(bo.is_empty(), "the agent got {bo:?} past a backplane that loses everything");
    assert!(idle.is_empty(), "the idle customer got {idle:?} past a backplane that loses everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_in_process_backplane_every_kind_of_effect_arrives() {
    let srv = Server::with_agents(&[BO, CY], &[]);
    let (ann, bo, idle) = fan_out_seen(&srv).await;
    assert_eq!(idle, vec!["room_status"], "a widget with no conversation hears the room go offline");
    for t in ["conversation", "message", "read"] {
        assert!(ann.iter().any(|x| x == t), "the customer got {ann:?}, no {t}");
    }
    for t in ["conversation", "message", "typing", "read", "presence"] {
        assert!(bo.iter().any(|x| x == t), "the agent got {bo:?}, no {t}");
    }
}
