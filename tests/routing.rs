//! Rooms, queues and assignment (PROTOCOL §8): open, auto-assignment, capacity,
//! least-loaded choice, manual rooms, agent grace period, presence.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);
const BOB: (&str, &str, u32) = ("bob", "pw-bob-1", 5);

/// Open in `room` and wait until the conversation is active; returns the agent id.
async fn open_and_wait_assigned(c: &mut Client, room: &str) -> (String, String) {
    let active = c.open_assigned(room).await;
    (str_of(&active, "id").to_string(), str_of(&active["agent"], "id").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_returns_a_queued_conversation_in_support() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    let before = now_ms();
    // No room given: the default is support.
    let conv = c.call(json!({"type":"open"}), "conversation").await["conversation"].clone();
    assert!(!str_of(&conv, "id").is_empty(), "{conv}");
    assert_eq!(conv["room"], "support", "{conv}");
    assert_eq!(conv["status"], "queued", "{conv}");
    assert_eq!(conv["customer"]["id"], c.user["id"], "{conv}");
    assert_eq!(conv["customer"]["role"], "customer", "{conv}");
    assert!(conv["agent"].is_null(), "{conv}");
    assert_eq!(conv["last_seq"].as_u64(), Some(0), "{conv}");
    assert_eq!(conv["queue_position"].as_u64(), Some(1), "{conv}");
    let created = u64_of(&conv, "created_at");
    assert!(created + 60_000 >= before && created <= now_ms() + 60_000, "{conv}");

    let mut d = Client::customer(&srv, "Dee").await;
    let second = d.open("support").await;
    assert_eq!(second["queue_position"].as_u64(), Some(2), "{second}");
    assert_ne!(second["id"], conv["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_again_returns_the_same_conversation() {
    let srv = Server::start(&[]);
    let mut c = Client::customer(&srv, "Ann").await;
    let first = c.open("support").await;
    let again = c.open("support").await;
    assert_eq!(again["id"], first["id"], "{first} vs {again}");
    // Also from another session of the same customer.
    let token = c.token.clone().expect("token");
    let mut other = Client::customer_with_token(&srv, "Ann", &token).await;
    let third = other.open("support").await;
    assert_eq!(third["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_room_is_not_found_for_open_and_join() {
    let srv = Server::with_agents(&[ANN], &[]);
    let mut c = Client::customer(&srv, "Ann").await;
    c.call_err(json!({"type":"open","room":"no-such-room"}), "not_found").await;
    let mut a = Client::agent(&srv, ANN.0, ANN.1).await;
    a.call_err(json!({"type":"join","room":"no-such-room"}), "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_room_gets_new_conversation_assigned_automatically() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (token, agent_user) = login_agent(&srv, ANN.0, ANN.1).await;
    let mut agent = Client::connect(&srv).await;
    agent.hello_agent(&token).await;
    let room = agent.join("support").await;
    assert_eq!(room["room"], "support", "{room}");
    assert_eq!(room["queue"], json!([]), "{room}");
    let aid = str_of(&agent_user, "id").to_string();

    let mut cust = Client::customer(&srv, "Ann").await;
    // Active either in the open reply or in a later `conversation` push.
    let active = cust.open_assigned("support").await;
    let cid = str_of(&active, "id").to_string();
    assert_eq!(active["agent"]["id"], aid.as_str(), "{active}");
    assert_eq!(active["agent"]["role"], "agent", "{active}");
    assert_eq!(active["agent"]["name"], "ann", "{active}");
    assert!(active["queue_position"].is_null(), "{active}");

    let ev = cust.recv_event(&cid, "assigned").await;
    assert_eq!(ev["kind"], "event", "{ev}");
    assert_eq!(ev["from"]["role"], "system", "{ev}");
    let ev2 = agent.recv_event(&cid, "assigned").await;
    assert_eq!(ev2["id"], ev["id"]);

    // A new session of the agent lists the assignment in welcome.
    let mut again = Client::connect(&srv).await;
    let w = again.hello_agent(&token).await;
    assert!(
        w["conversations"].as_array().is_some_and(|l| l.iter().any(|c| c["id"] == cid.as_str())),
        "agent welcome does not list {cid}: {w}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_customers_fill_two_agents_and_queue_the_rest_in_order() {
    const N: usize = 100;
    // Every test customer comes from 127.0.0.1: lift the per-address bound on new conversations.
    let srv = Arc::new(Server::with_agents(&[ANN, BOB], &["--opens-per-minute", "0"]));
    let (token, _) = login_agent(&srv, ANN.0, ANN.1).await;
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    let ann_id = ann.id();
    let bob_id = bob.id();

    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let srv = srv.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::customer(&srv, &format!("cust{i}")).await;
            barrier.wait().await;
            let conv = c.open("support").await;
            (c, str_of(&conv, "id").to_string())
        }));
    }
    let mut customers: Vec<(Client, String)> = Vec::new();
    for t in tasks {
        customers.push(t.await.expect("customer task"));
    }
    let by_conv: HashMap<String, usize> = customers.iter().enumerate().map(|(i, (_, cid))| (cid.clone(), i)).collect();
    assert_eq!(by_conv.len(), N, "each customer has its own conversation");

    // Let assignment finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (active, queued) = loop {
        let active = list_conversations(&srv, &token, "support", "active").await;
        let queued = list_conversations(&srv, &token, "support", "queued").await;
        if active.len() + queued.len() == N && active.len() >= 10 || Instant::now() > deadline {
            break (active, queued);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(active.len(), 10, "active: {active:?}");
    assert_eq!(queued.len(), 90, "queued count");
    let per_agent = |id: &str| active.iter().filter(|c| c["agent"]["id"] == id).count();
    assert_eq!(per_agent(&ann_id), 5, "ann's load");
    assert_eq!(per_agent(&bob_id), 5, "bob's load");

    let mut queued = queued;
    queued.sort_by_key(|c| c["queue_position"].as_u64().unwrap_or(u64::MAX));
    let positions: Vec<u64> = queued.iter().map(|c| u64_of(c, "queue_position")).collect();
    assert_eq!(positions, (1..=90).collect::<Vec<u64>>());
    let created: Vec<u64> = queued.iter().map(|c| u64_of(c, "created_at")).collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "queue positions are not in arrival order: {created:?}");
    let newest_active = active.iter().map(|c| u64_of(c, "created_at")).max().unwrap();
    assert!(
        newest_active <= created[0],
        "a later arrival got an agent before an earlier one ({newest_active} > {})",
        created[0]
    );

    // Every queued customer was told its current position.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for conv in &queued {
        let cid = str_of(conv, "id");
        let (c, _) = &mut customers[by_conv[cid]];
        c.settle(Duration::ZERO).await;
        let last = c
            .seen(|f| f["type"] == "conversation" && f["conversation"]["id"] == cid)
            .pop()
            .expect("at least the open reply");
        assert_eq!(
            last["conversation"]["queue_position"], conv["queue_position"],
            "{}: last position told {} but server queue says {}",
            c.label, last["conversation"], conv
        );
    }

    // Closing an active conversation gives that agent the oldest queued one.
    let closing = active.iter().find(|c| c["agent"]["id"] == ann_id.as_str()).expect("an active conversation of ann");
    let closing_id = str_of(closing, "id").to_string();
    let (closer, _) = &mut customers[by_conv[&closing_id]];
    let closed = closer.call(json!({"type":"close","conversation":closing_id}), "conversation").await;
    assert_eq!(closed["conversation"]["status"], "closed", "{closed}");

    let next_id = str_of(&queued[0], "id").to_string();
    let (next, _) = &mut customers[by_conv[&next_id]];
    let now_active =
        next.recv_conversation(&next_id, "oldest queued becoming active", |c| c["status"] == "active").await;
    assert_eq!(now_active["agent"]["id"], ann_id.as_str(), "{now_active}");

    let second_id = str_of(&queued[1], "id").to_string();
    let (second, _) = &mut customers[by_conv[&second_id]];
    second.recv_conversation(&second_id, "moving up to position 1", |c| c["queue_position"].as_u64() == Some(1)).await;
    let queued = list_conversations(&srv, &token, "support", "queued").await;
    assert_eq!(queued.len(), 89);
    drop((ann, bob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_agent_gets_new_conversations_and_ties_go_to_longest_waiting() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut order = Vec::new();
    let mut customers = Vec::new();
    for i in 0..2 {
        let mut c = Client::customer(&srv, &format!("early{i}")).await;
        order.push(open_and_wait_assigned(&mut c, "support").await.1);
        customers.push(c);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    for i in 0..4 {
        let mut c = Client::customer(&srv, &format!("late{i}")).await;
        order.push(open_and_wait_assigned(&mut c, "support").await.1);
        customers.push(c);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (a, b) = (ann.id(), bob.id());
    // ann 2, bob 0 -> bob; 2/1 -> bob; 2/2 tie: ann waited longer -> ann; 3/2 -> bob.
    let expect = [a.clone(), a.clone(), b.clone(), b.clone(), a.clone(), b.clone()];
    let name = |id: &String| {
        if *id == a {
            "ann"
        } else if *id == b {
            "bob"
        } else {
            "?"
        }
    };
    assert_eq!(order.iter().map(name).collect::<Vec<_>>(), expect.iter().map(name).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_room_keeps_conversations_queued_until_an_agent_accepts() {
    let srv = Server::with_agents(&[ANN, BOB], &["--rooms", "support,sales", "--manual-rooms", "sales"]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let conv = cust.open("sales").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["room"], "sales", "{conv}");
    assert_eq!(conv["status"], "queued", "{conv}");

    let mut ann = Client::agent(&srv, ANN.0, ANN.1).await;
    let room = ann.join("sales").await;
    assert_eq!(room["room"], "sales", "{room}");
    let queue = room["queue"].as_array().unwrap_or_else(|| panic!("{room}"));
    assert_eq!(queue.len(), 1, "{room}");
    assert_eq!(queue[0]["id"], cid.as_str(), "{room}");
    assert_eq!(queue[0]["status"], "queued", "{room}");
    assert!(room["agents"].is_array(), "{room}");
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "sales").await;

    // Agents with capacity are in the room, yet nothing is assigned.
    cust.expect_none(Duration::from_millis(500), "assignment in a manual room", |f| {
        f["type"] == "conversation" && f["conversation"]["status"] == "active"
    })
    .await;

    let accepted = ann.call(json!({"type":"accept","conversation":cid}), "conversation").await;
    assert_eq!(accepted["conversation"]["status"], "active", "{accepted}");
    assert_eq!(accepted["conversation"]["agent"]["id"], ann.user["id"], "{accepted}");

    bob.call_err(json!({"type":"accept","conversation":cid}), "conflict").await;

    let pushed = cust.recv_conversation(&cid, "active push", |c| c["status"] == "active").await;
    assert_eq!(pushed["agent"]["id"], ann.user["id"]);
    cust.recv_event(&cid, "assigned").await;
}

// --- agent grace period ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnecting_within_grace_keeps_the_conversation() {
    let srv = Server::with_agents(&[ANN], &["--agent-grace-ms", "2000"]);
    // Log in up front: argon2 in a debug build is slow, the reload must be quick.
    let (token, _) = login_agent(&srv, ANN.0, ANN.1).await;
    let mut ann = Client::connect(&srv).await;
    ann.hello_agent(&token).await;
    ann.join("support").await;
    let ann_id = ann.id();
    let mut cust = Client::customer(&srv, "Ann").await;
    let (cid, assignee) = open_and_wait_assigned(&mut cust, "support").await;
    assert_eq!(assignee, ann_id);

    let gone = Instant::now();
    ann.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Client::connect(&srv).await;
    again.hello_agent(&token).await;
    again.join("support").await;
    assert!(gone.elapsed() < Duration::from_millis(1500), "reconnect took {:?}", gone.elapsed());
    // Well past the grace period since the disconnect.
    tokio::time::sleep(Duration::from_millis(2800).saturating_sub(gone.elapsed())).await;

    let active = list_conversations(&srv, &token, "support", "active").await;
    let conv =
        active.iter().find(|c| c["id"] == cid.as_str()).unwrap_or_else(|| panic!("{cid} no longer active: {active:?}"));
    assert_eq!(conv["agent"]["id"], ann_id.as_str());
    cust.expect_none(Duration::from_millis(100), "requeue push", |f| {
        f["type"] == "conversation" && f["conversation"]["status"] == "queued"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gone_past_grace_returns_conversation_to_front_of_queue() {
    let srv = Server::with_agents(&[("ann", "pw-ann-1", 1)], &["--agent-grace-ms", "1000"]);
    let (token, _) = login_agent(&srv, ANN.0, ANN.1).await;
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let ann_id = ann.id();
    let mut first = Client::customer(&srv, "First").await;
    let (cid1, assignee) = open_and_wait_assigned(&mut first, "support").await;
    assert_eq!(assignee, ann_id);
    let mut second = Client::customer(&srv, "Second").await;
    let conv2 = second.open("support").await;
    let cid2 = str_of(&conv2, "id").to_string();
    assert_eq!(conv2["queue_position"].as_u64(), Some(1), "ann is full: {conv2}");

    let gone = Instant::now();
    ann.disconnect().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let active = list_conversations(&srv, &token, "support", "active").await;
    assert!(
        active.iter().any(|c| c["id"] == cid1.as_str() && c["agent"]["id"] == ann_id.as_str()),
        "within the grace period the conversation must stay assigned: {active:?}"
    );

    let requeued = first.recv_conversation(&cid1, "requeue after grace", |c| c["status"] == "queued").await;
    let after = gone.elapsed();
    assert!(after >= Duration::from_millis(900), "requeued after only {after:?}");
    assert_eq!(requeued["queue_position"].as_u64(), Some(1), "{requeued}");
    assert!(requeued["agent"].is_null(), "{requeued}");
    second.recv_conversation(&cid2, "pushed back to position 2", |c| c["queue_position"].as_u64() == Some(2)).await;
    let queued = list_conversations(&srv, &token, "support", "queued").await;
    let pos = |id: &str| queued.iter().find(|c| c["id"] == id).map(|c| c["queue_position"].clone());
    assert_eq!(pos(&cid1), Some(json!(1)), "{queued:?}");
    assert_eq!(pos(&cid2), Some(json!(2)), "{queued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gone_past_grace_hands_conversation_to_another_online_agent() {
    let srv = Server::with_agents(&[ANN, BOB], &["--agent-grace-ms", "1000"]);
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let ann_id = ann.id();
    let mut cust = Client::customer(&srv, "Ann").await;
    let (cid, assignee) = open_and_wait_assigned(&mut cust, "support").await;
    assert_eq!(assignee, ann_id);
    let bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;

    let gone = Instant::now();
    ann.disconnect().await;
    let bob_id = bob.id();
    let moved = cust
        .recv_conversation(&cid, "reassignment to bob", |c| {
            c["status"] == "active" && c["agent"]["id"] == bob_id.as_str()
        })
        .await;
    let after = gone.elapsed();
    assert!(after >= Duration::from_millis(900), "moved after only {after:?}: {moved}");
    assert!(after <= Duration::from_secs(5), "moved only after {after:?}");
}

// --- presence ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_in_a_room_get_presence_on_join_load_and_status_changes() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    bob.call(json!({"type":"status","availability":"away"}), "ack").await;

    let mut ann = Client::agent(&srv, ANN.0, ANN.1).await;
    let ann_id = ann.id();
    let about_ann = |f: &Value| f["type"] == "presence" && f["agent"]["id"] == ann_id.as_str();
    ann.join("support").await;
    let p = bob.recv_until("presence: ann online", |f| about_ann(f) && f["availability"] == "online").await;

    assert_eq!(p["room"], "support", "{p}");
    assert_eq!(p["active"].as_u64(), Some(0), "{p}");
    assert_eq!(p["max"].as_u64(), Some(5), "{p}");

    // Load change: bob is away, so the new conversation goes to ann.
    let mut cust = Client::customer(&srv, "Cy").await;
    let (_, assignee) = open_and_wait_assigned(&mut cust, "support").await;
    assert_eq!(assignee, ann_id);
    bob.recv_until("presence: ann active 1", |f| about_ann(f) && f["active"].as_u64() == Some(1)).await;

    ann.call(json!({"type":"status","availability":"away"}), "ack").await;
    let p = bob.recv_until("presence: ann away", |f| about_ann(f) && f["availability"] == "away").await;
    assert_eq!(p["active"].as_u64(), Some(1), "{p}");
}

// ---------------------------------------------------------------- what a new user hit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_after_the_grace_period_gets_waiting_customers_oldest_first() {
    let srv = Server::with_agents(&[ANN], &["--agent-grace-ms", "800"]);
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut c1 = Client::customer(&srv, "First").await;
    let (cid1, _) = open_and_wait_assigned(&mut c1, "support").await;
    let mut c2 = Client::customer(&srv, "Second").await;
    let (cid2, _) = open_and_wait_assigned(&mut c2, "support").await;
    ann.disconnect().await;
    // Past the grace period both go back to the queue, in their old order.
    let q1 = c1.recv_conversation(&cid1, "requeued", |c| c["status"] == "queued" && c["queue_position"] == 1).await;
    let q2 = c2.recv_conversation(&cid2, "requeued", |c| c["status"] == "queued" && c["queue_position"] == 2).await;
    // A newer customer waits behind them.
    let mut c3 = Client::customer(&srv, "Third").await;
    let cid3 = str_of(&c3.open("support").await, "id").to_string();
    // The agent signs in again: nothing keeps them from their old customers.
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let ann_id = ann.id();
    for (c, cid, after) in
        [(&mut c1, &cid1, u64_of(&q1, "last_seq")), (&mut c2, &cid2, u64_of(&q2, "last_seq")), (&mut c3, &cid3, 0)]
    {
        c.recv_conversation(cid, "assigned again", |c| {
            c["status"] == "active" && c["agent"]["id"] == ann_id.as_str() && u64_of(c, "last_seq") > after
        })
        .await;
    }
    ann.settle(Duration::from_millis(300)).await;
    let order: Vec<String> = ann
        .seen(|f| f["type"] == "message" && f["message"]["event"]["name"] == "assigned")
        .iter()
        .map(|f| str_of(&f["message"], "conversation").to_string())
        .collect();
    assert_eq!(order, vec![cid1, cid2, cid3], "assigned oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_the_room_passes_over_its_sender_for_a_while_and_keeps_the_queue_order() {
    let srv = Server::with_agents(&[ANN, BOB], &["--transfer-pass-over-ms", "3000"]);
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let ann_id = ann.id();
    let mut c1 = Client::customer(&srv, "Older").await;
    let (cid1, _) = open_and_wait_assigned(&mut c1, "support").await;
    let sent_at = Instant::now();
    ann.call(json!({"type":"transfer","conversation":cid1,"to_room":"support"}), "conversation").await;
    let queued = c1.recv_conversation(&cid1, "queued", |c| c["status"] == "queued").await;
    let queued_seq = u64_of(&queued, "last_seq");
    // Ann is the only agent: the customer waits, and a newer one is not served ahead.
    let mut c2 = Client::customer(&srv, "Newer").await;
    let cid2 = str_of(&c2.open("support").await, "id").to_string();
    c2.expect_none(Duration::from_millis(1200), "the newer customer assigned ahead", |f| {
        f["type"] == "conversation" && f["conversation"]["status"] == "active"
    })
    .await;
    // Once the pass-over ends, Ann gets the older customer first, then the newer one.
    let back = c1
        .recv_until_within(Duration::from_secs(10), "assigned back", |f| {
            f["type"] == "conversation"
                && f["conversation"]["status"] == "active"
                && u64_of(&f["conversation"], "last_seq") > queued_seq
        })
        .await;
    assert_eq!(back["conversation"]["agent"]["id"], ann_id.as_str());
    assert!(sent_at.elapsed() >= Duration::from_secs(3), "passed over only {:?}", sent_at.elapsed());
    c2.recv_conversation(&cid2, "assigned", |c| c["status"] == "active").await;

    // With another agent present, the other agent gets it at once.
    let bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    let bob_id = bob.id();
    ann.call(json!({"type":"transfer","conversation":cid2,"to_room":"support"}), "conversation").await;
    c2.recv_conversation(&cid2, "to bob", |c| c["status"] == "active" && c["agent"]["id"] == bob_id.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_another_room_survives_a_restart() {
    let dir = data_dir();
    add_agent(dir.path(), ANN.0, ANN.1, 5);
    let mut srv = Server::start_in(&dir, &["--rooms", "support,sales", "--manual-rooms", "sales"]);
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut c = Client::customer(&srv, "Moves").await;
    let (cid, _) = open_and_wait_assigned(&mut c, "support").await;
    ann.call(json!({"type":"transfer","conversation":cid,"to_room":"sales"}), "conversation").await;
    c.recv_conversation(&cid, "queued in sales", |c| c["status"] == "queued" && c["room"] == "sales").await;
    let token = login(&srv, ANN.0, ANN.1).await;
    srv.kill9();

    let srv = Server::start_in(&dir, &["--rooms", "support,sales", "--manual-rooms", "sales"]);
    let in_room = |list: &[Value]| list.iter().any(|x| x["id"] == cid.as_str());
    let sales = list_conversations(&srv, &token, "sales", "queued").await;
    assert!(in_room(&sales), "still queued in sales after the restart: {sales:?}");
    let support = list_conversations(&srv, &token, "support", "").await;
    assert!(!in_room(&support), "not back in support: {support:?}");
    // Closed, it is listed under the room it was in.
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "sales").await;
    ann.call(json!({"type":"accept","conversation":cid}), "conversation").await;
    ann.call(json!({"type":"close","conversation":cid}), "conversation").await;
    let closed = list_conversations(&srv, &token, "sales", "closed").await;
    assert!(in_room(&closed), "closed under sales: {closed:?}");
    assert!(!in_room(&list_conversations(&srv, &token, "support", "closed").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_see_they_wait_again_but_not_why() {
    let srv = Server::with_agents(&[ANN, BOB], &["--agent-grace-ms", "500"]);
    let ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut c = Client::customer(&srv, "Cleo").await;
    let (cid, _) = open_and_wait_assigned(&mut c, "support").await;
    let mut bob = Client::agent(&srv, BOB.0, BOB.1).await;
    bob.call(json!({"type":"status","availability":"away"}), "ack").await;
    bob.join("support").await;
    ann.disconnect().await;
    c.recv_conversation(&cid, "waiting again", |c| c["status"] == "queued").await;
    // Agents see why; the customer does not.
    let ev = bob.recv_event(&cid, "transferred").await;
    assert_eq!(ev["event"]["reason"], "agent_offline", "{ev}");
    let seq = u64_of(&ev, "seq");
    c.settle(Duration::from_millis(300)).await;
    assert!(c.seen(|f| f["type"] == "message" && f["message"]["event"]["name"] == "transferred").is_empty());
    let history = c.sync(&cid, 0, None).await;
    let hidden: Vec<u64> = history["hidden_seqs"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).collect();
    assert!(hidden.contains(&seq), "the hidden event's seq is listed: {history}");
    assert!(history["messages"].as_array().unwrap().iter().all(|m| m["seq"] != seq));
}
