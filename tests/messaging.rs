//! Messages in a conversation (PROTOCOL §4–§7): send/ack, seq order, idempotent
//! retries, fan-out, typing/read relay, internal notes, membership, resume.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);
const BOB: (&str, &str, u32) = ("bob", "pw-bob-1", 5);

/// Agent `ann` in support, a customer with a conversation assigned to her.
/// Returns (agent, customer, conversation id, seq of the `assigned` event).
async fn assigned_pair(srv: &Server) -> (Client, Client, String, u64) {
    let mut agent = Client::agent_in(srv, ANN.0, ANN.1, "support").await;
    let mut cust = Client::customer(srv, "Ann").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["id"], agent.user["id"], "{conv}");
    let ev = cust.recv_event(&cid, "assigned").await;
    agent.recv_event(&cid, "assigned").await;
    (agent, cust, cid, u64_of(&ev, "seq"))
}

fn message_seqs(c: &Client, cid: &str) -> Vec<u64> {
    c.seen(|f| f["type"] == "message" && f["message"]["conversation"] == cid)
        .iter()
        .map(|f| u64_of(&f["message"], "seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_carries_ids_and_seqs_count_up_across_participants_including_events() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, assigned_seq) = assigned_pair(&srv).await;
    assert_eq!(assigned_seq, 1, "the assigned event is the conversation's first message");

    let before = now_ms();
    let a1 = cust.say(&cid, "c-1", "one").await;
    assert_eq!(a1["client_id"], "c-1", "{a1}");
    assert_eq!(a1["conversation"], cid.as_str(), "{a1}");
    assert!(!str_of(&a1, "id").is_empty(), "{a1}");
    let ts = u64_of(&a1, "ts");
    assert!(ts + 60_000 >= before && ts <= now_ms() + 60_000, "ts {ts} is not Unix milliseconds near now ({before})");
    let a2 = agent.say(&cid, "a-1", "two").await;
    let a3 = cust.say(&cid, "c-2", "three").await;
    let seqs: Vec<u64> = [&a1, &a2, &a3].iter().map(|a| u64_of(a, "seq")).collect();
    assert_eq!(seqs, vec![2, 3, 4], "acks: {a1} {a2} {a3}");
    let ids: BTreeSet<&str> = [&a1, &a2, &a3].iter().map(|a| str_of(a, "id")).collect();
    assert_eq!(ids.len(), 3, "message ids must be unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_start_at_1_in_a_queued_conversation() {
    let srv = Server::start(&[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let conv = cust.open("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["last_seq"].as_u64(), Some(0), "{conv}");
    let mut seqs = Vec::new();
    for i in 1..=3 {
        seqs.push(u64_of(&cust.say(&cid, &format!("k{i}"), "x").await, "seq"));
    }
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_same_client_id_returns_original_ack_and_stores_once() {
    let srv = Server::start(&[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let first = cust.say(&cid, "k-1", "hello").await;
    let again = cust.say(&cid, "k-1", "hello").await;
    assert_eq!(again["id"], first["id"], "{first} vs {again}");
    assert_eq!(again["seq"], first["seq"], "{first} vs {again}");

    // After a reconnect with the resume token, the retry still maps to the original.
    let token = cust.token.clone().expect("token");
    drop(cust);
    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    let after = cust.say(&cid, "k-1", "hello").await;
    assert_eq!(after["id"], first["id"], "{first} vs {after}");
    assert_eq!(after["seq"], first["seq"], "{first} vs {after}");

    // The retries did not take seqs.
    let next = cust.say(&cid, "k-2", "second").await;
    assert_eq!(u64_of(&next, "seq"), u64_of(&first, "seq") + 1, "{next}");

    let (msgs, _) = cust.sync_all(&cid).await;
    let stored: Vec<&Value> = msgs.iter().filter(|m| m["client_id"] == "k-1").collect();
    assert_eq!(stored.len(), 1, "k-1 stored {} times: {msgs:?}", stored.len());
    assert_eq!(stored[0]["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_conversation_closed_still_gets_the_original_ack() {
    let srv = Server::start(&[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let first = cust.say(&cid, "k-1", "before the close").await;
    cust.call(json!({"type":"close","conversation":cid}), "conversation").await;
    // The ack was lost with the connection, say: the retry comes after the close.
    let again = cust.say(&cid, "k-1", "before the close").await;
    assert_eq!(again["id"], first["id"], "{first} vs {again}");
    assert_eq!(again["seq"], first["seq"], "{first} vs {again}");
    // Anything new is refused.
    cust.call_err(json!({"type":"send","conversation":cid,"client_id":"k-2","body":"late"}), "conflict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_side_gets_message_and_sender_gets_only_the_ack() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, _) = assigned_pair(&srv).await;

    let ack = cust.say(&cid, "c-1", "Where is my order? 我的订单还没到").await;
    let m = agent.recv_message("customer's message", |m| m["client_id"] == "c-1").await;
    assert_eq!(m["id"], ack["id"], "{m}");
    assert_eq!(m["seq"], ack["seq"], "{m}");
    assert_eq!(m["ts"], ack["ts"], "{m}");
    assert_eq!(m["conversation"], cid.as_str(), "{m}");
    assert_eq!(m["kind"], "text", "{m}");
    assert_eq!(m["body"], "Where is my order? 我的订单还没到", "{m}");
    assert_eq!(m["from"]["id"], cust.user["id"], "{m}");
    assert_eq!(m["from"]["role"], "customer", "{m}");
    assert_eq!(m["from"]["name"], "Ann", "{m}");
    assert!(m["event"].is_null(), "{m}");

    let reply = agent.say(&cid, "a-1", "Let me check").await;
    let got = cust.recv_message("agent's reply", |m| m["id"] == reply["id"]).await;
    assert_eq!(got["from"]["id"], agent.user["id"], "{got}");
    assert_eq!(got["from"]["role"], "agent", "{got}");
    assert_eq!(got["body"], "Let me check", "{got}");
    // Messages of one conversation arrive in seq order, so had the customer been
    // sent its own message it would have come before the reply.
    assert!(
        cust.seen(|f| f["type"] == "message" && f["message"]["id"] == ack["id"]).is_empty(),
        "sender got its own message: {:?}",
        cust.log
    );
    let next = cust.say(&cid, "c-2", "thanks").await;
    agent.recv_message("next customer message", |m| m["id"] == next["id"]).await;
    assert!(
        agent.seen(|f| f["type"] == "message" && f["message"]["id"] == reply["id"]).is_empty(),
        "agent got its own message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_of_the_same_customer_gets_the_message() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, _) = assigned_pair(&srv).await;
    let token = cust.token.clone().expect("token");
    let mut second = Client::customer_with_token(&srv, "Ann", &token).await;
    assert_eq!(second.user["id"], cust.user["id"]);

    let ack = cust.say(&cid, "c-1", "from tab one").await;
    let m = second.recv_message("message from the other tab", |m| m["id"] == ack["id"]).await;
    assert_eq!(m["body"], "from tab one");
    assert_eq!(m["seq"], ack["seq"]);

    // Both sessions get the agent's message; the sending session not its own.
    let reply = agent.say(&cid, "a-1", "hi both").await;
    second.recv_message("agent reply", |m| m["id"] == reply["id"]).await;
    cust.recv_message("agent reply", |m| m["id"] == reply["id"]).await;
    assert!(cust.seen(|f| f["type"] == "message" && f["message"]["id"] == ack["id"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_room_gets_messages_of_conversations_assigned_to_others() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let (_ann, mut cust, cid, _) = assigned_pair(&srv).await;
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    let ack = cust.say(&cid, "c-1", "anyone?").await;
    let m = bob.recv_message("message in a room conversation", |m| m["id"] == ack["id"]).await;
    assert_eq!(m["body"], "anyone?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_to_the_other_side_with_from_and_on() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, _) = assigned_pair(&srv).await;

    cust.send_json(&json!({"type":"typing","conversation":cid,"on":true})).await;
    let t =
        agent.recv_until("typing from customer", |f| f["type"] == "typing" && f["conversation"] == cid.as_str()).await;
    assert_eq!(t["on"], true, "{t}");
    assert_eq!(t["from"]["id"], cust.user["id"], "{t}");
    assert_eq!(t["from"]["role"], "customer", "{t}");

    agent.send_json(&json!({"type":"typing","conversation":cid,"on":false})).await;
    let t = cust.recv_until("typing from agent", |f| f["type"] == "typing" && f["conversation"] == cid.as_str()).await;
    assert_eq!(t["on"], false, "{t}");
    assert_eq!(t["from"]["id"], agent.user["id"], "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_is_relayed_and_never_moves_backward() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, _) = assigned_pair(&srv).await;
    let mut seqs = Vec::new();
    for i in 1..=4 {
        seqs.push(u64_of(&agent.say(&cid, &format!("a{i}"), "news").await, "seq"));
    }
    let is_read = |f: &Value| f["type"] == "read" && f["conversation"] == cid.as_str();

    cust.send_json(&json!({"type":"read","conversation":cid,"seq":seqs[2]})).await;
    let r = agent.recv_until("read", is_read).await;
    assert_eq!(r["seq"].as_u64(), Some(seqs[2]), "{r}");
    assert_eq!(r["from"]["id"], cust.user["id"], "{r}");

    // A lower seq must not move the read marker back ...
    cust.send_json(&json!({"type":"read","conversation":cid,"seq":seqs[0]})).await;
    // ... and a higher one moves it forward.
    cust.send_json(&json!({"type":"read","conversation":cid,"seq":seqs[3]})).await;
    agent.recv_until("read of the last message", |f| is_read(f) && f["seq"].as_u64() == Some(seqs[3])).await;
    let relayed: Vec<u64> = agent.seen(is_read).iter().map(|f| u64_of(f, "seq")).collect();
    assert!(relayed.windows(2).all(|w| w[0] <= w[1]), "read marker moved backward: relayed seqs {relayed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_notes_never_reach_the_customer_but_agents_see_them() {
    let srv = Server::with_agents(&[ANN, BOB], &[]);
    let (mut ann, mut cust, cid, _) = assigned_pair(&srv).await;
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;

    let note = ann.note(&cid, "n-1", "customer seems upset").await;
    let note_seq = u64_of(&note, "seq");
    let reply = ann.say(&cid, "a-1", "Hello! How can I help?").await;
    assert_eq!(u64_of(&reply, "seq"), note_seq + 1);

    // Live: the customer gets the reply (which follows the note) and never the note.
    let m = cust.recv_message("reply after the note", |m| m["id"] == reply["id"]).await;
    assert_eq!(m["seq"].as_u64(), Some(note_seq + 1));
    assert!(
        cust.seen(|f| f["type"] == "message" && (f["message"]["kind"] == "note" || f["message"]["id"] == note["id"]))
            .is_empty(),
        "customer got a note live: {:?}",
        cust.log
    );

    // sync: omitted, with its seq in hidden_seqs.
    let h = cust.sync(&cid, 0, None).await;
    let msgs = h["messages"].as_array().expect("messages");
    assert!(
        msgs.iter().all(|m| m["kind"] != "note" && m["id"] != note["id"] && m["body"] != "customer seems upset"),
        "customer sync shows the note: {h}"
    );
    assert!(msgs.iter().any(|m| m["id"] == reply["id"]), "{h}");
    let hidden: Vec<u64> = h["hidden_seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("customer history without hidden_seqs: {h}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(hidden, vec![note_seq], "{h}");

    // HTTP with the customer's token: omitted too.
    let token = cust.token.clone().expect("token");
    let (code, body) = get_json(&srv, &format!("/api/conversations/{cid}/messages?after_seq=0"), Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    let msgs = body["messages"].as_array().expect("messages");
    assert!(
        msgs.iter().all(|m| m["kind"] != "note" && m["id"] != note["id"]),
        "HTTP shows the note to the customer: {body}"
    );
    assert!(body["hidden_seqs"].as_array().is_some_and(|h| h.iter().any(|s| s.as_u64() == Some(note_seq))), "{body}");

    // Agents see it, as a note.
    for agent in [&mut ann, &mut bob] {
        let h = agent.sync(&cid, 0, None).await;
        let n = h["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .find(|m| m["id"] == note["id"])
            .cloned()
            .unwrap_or_else(|| panic!("{}: note missing from sync: {h}", agent.label));
        assert_eq!(n["kind"], "note", "{n}");
        assert_eq!(n["body"], "customer seems upset", "{n}");
        assert_eq!(n["seq"].as_u64(), Some(note_seq), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cannot_write_internal_notes() {
    let srv = Server::start(&[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let e =
        cust.request(json!({"type":"send","conversation":cid,"client_id":"sneaky","body":"x","internal":true})).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden", "a customer may not write notes: {e}");
    let (msgs, _) = cust.sync_all(&cid).await;
    assert!(msgs.iter().all(|m| m["client_id"] != "sneaky"), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_probing_another_customers_conversation_gets_not_found() {
    let srv = Server::start(&[]);
    let mut owner = Client::customer(&srv, "Owner").await;
    let cid = str_of(&owner.open("support").await, "id").to_string();
    let mut prober = Client::customer(&srv, "Prober").await;
    prober.open("support").await;

    let probes = [
        json!({"type":"send","conversation":cid,"client_id":"p1","body":"hi"}),
        json!({"type":"sync","conversation":cid,"after_seq":0}),
        json!({"type":"typing","conversation":cid,"on":true}),
        json!({"type":"read","conversation":cid,"seq":1}),
        json!({"type":"close","conversation":cid}),
        json!({"type":"send","conversation":"c_does_not_exist","client_id":"p2","body":"hi"}),
    ];
    for p in probes {
        prober.call_err(p, "not_found").await;
    }
    owner
        .expect_none(Duration::from_millis(300), "relay from the prober", |f| {
            f["type"] == "typing" || f["type"] == "message" || f["type"] == "read"
        })
        .await;
    let (msgs, _) = owner.sync_all(&cid).await;
    assert!(msgs.is_empty(), "prober's send was stored: {msgs:?}");
    let conv = owner.open("support").await;
    assert_eq!(conv["id"], cid.as_str());
    assert_ne!(conv["status"], "closed", "prober closed it: {conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_outside_the_room_who_is_not_assignee_gets_forbidden() {
    let srv = Server::with_agents(&[ANN, BOB], &["--rooms", "support,sales"]);
    let (_ann, _cust, cid, _) = assigned_pair(&srv).await;
    let mut bob = Client::agent_in(&srv, BOB.0, BOB.1, "sales").await;
    let probes = [
        json!({"type":"send","conversation":cid,"client_id":"b1","body":"hi"}),
        json!({"type":"sync","conversation":cid,"after_seq":0}),
        json!({"type":"typing","conversation":cid,"on":true}),
        json!({"type":"close","conversation":cid}),
    ];
    for p in probes {
        bob.call_err(p, "forbidden").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_syncs_exactly_the_missed_messages() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut cust, cid, _) = assigned_pair(&srv).await;
    let held = u64_of(&cust.say(&cid, "c-1", "hi").await, "seq");
    let token = cust.token.clone().expect("token");
    let user_id = cust.user["id"].clone();
    drop(cust);

    let mut missed = Vec::new();
    for i in 1..=3 {
        missed.push(agent.say(&cid, &format!("a{i}"), &format!("missed {i}")).await);
    }

    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    assert_eq!(cust.user["id"], user_id);
    let listed = cust.welcome["conversations"]
        .as_array()
        .unwrap_or_else(|| panic!("welcome.conversations: {}", cust.welcome))
        .iter()
        .any(|c| c["id"] == cid.as_str() || c == cid.as_str());
    assert!(listed, "welcome does not list {cid}: {}", cust.welcome);

    let h = cust.sync(&cid, held, None).await;
    let got: Vec<(u64, String)> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (u64_of(m, "seq"), str_of(m, "id").to_string()))
        .collect();
    let want: Vec<(u64, String)> = missed.iter().map(|a| (u64_of(a, "seq"), str_of(a, "id").to_string())).collect();
    assert_eq!(got, want, "{h}");
    assert_eq!(want.iter().map(|w| w.0).collect::<Vec<_>>(), vec![held + 1, held + 2, held + 3]);
    assert_eq!(h["more"], false, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pages_with_limit_and_more() {
    let srv = Server::start(&["--rate-per-sec", "10000", "--rate-burst", "10000"]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    for i in 1..=5 {
        cust.say(&cid, &format!("k{i}"), &format!("m{i}")).await;
    }
    let seqs = |h: &Value| -> Vec<u64> {
        h["messages"].as_array().expect("messages").iter().map(|m| u64_of(m, "seq")).collect()
    };
    let h = cust.sync(&cid, 0, Some(2)).await;
    assert_eq!((seqs(&h), h["more"].clone()), (vec![1, 2], json!(true)), "{h}");
    let h = cust.sync(&cid, 2, Some(2)).await;
    assert_eq!((seqs(&h), h["more"].clone()), (vec![3, 4], json!(true)), "{h}");
    let h = cust.sync(&cid, 4, Some(2)).await;
    assert_eq!((seqs(&h), h["more"].clone()), (vec![5], json!(false)), "{h}");
    let h = cust.sync(&cid, 5, None).await;
    assert_eq!((seqs(&h), h["more"].clone()), (vec![], json!(false)), "{h}");

    // Default limit is 100.
    for i in 6..=120 {
        let v = json!({"type":"send","conversation":cid,"client_id":format!("k{i}"),"body":"bulk","ref":format!("bulk{i}")});
        cust.send_json(&v).await;
    }
    for i in 6..=120 {
        let r = format!("bulk{i}");
        let a = cust.recv_until("bulk ack", |f| f["ref"] == r.as_str()).await;
        assert_eq!(a["type"], "ack", "{a}");
    }
    let h = cust.sync(&cid, 0, None).await;
    assert_eq!(seqs(&h), (1..=100).collect::<Vec<u64>>());
    assert_eq!(h["more"], true);
    let h = cust.sync(&cid, 100, None).await;
    assert_eq!(seqs(&h), (101..=120).collect::<Vec<u64>>());
    assert_eq!(h["more"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_every_session_sees_strictly_increasing_seqs_without_gaps() {
    const PER_SESSION: usize = 25;
    let srv = Server::with_agents(&[ANN, BOB], &["--rate-per-sec", "10000", "--rate-burst", "10000"]);
    let (ann, cust, cid, assigned_seq) = assigned_pair(&srv).await;
    let ann2 = Client::agent(&srv, ANN.0, ANN.1).await;
    let bob = Client::agent_in(&srv, BOB.0, BOB.1, "support").await;
    let token = cust.token.clone().expect("token");
    let cust2 = Client::customer_with_token(&srv, "Ann", &token).await;

    // (client, is_customer, sends notes)
    let sessions =
        vec![(ann, false, true), (ann2, false, false), (bob, false, false), (cust, true, false), (cust2, true, false)];
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sessions.len()));
    let mut tasks = Vec::new();
    for (idx, (mut c, is_customer, notes)) in sessions.into_iter().enumerate() {
        let cid = cid.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            for i in 0..PER_SESSION {
                let internal = notes && i % 5 == 0;
                let mut v = json!({"type":"send","conversation":cid,"client_id":format!("s{idx}-{i}"),
                                   "body":format!("from {idx} #{i}"),"ref":format!("s{idx}-{i}")});
                if internal {
                    v["internal"] = json!(true);
                }
                c.send_json(&v).await;
            }
            let mut acks = Vec::new();
            for i in 0..PER_SESSION {
                let r = format!("s{idx}-{i}");
                let a = c.recv_until("ack", |f| f["ref"] == r.as_str()).await;
                assert_eq!(a["type"], "ack", "{a}");
                acks.push(a);
            }
            (c, is_customer, acks)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("sender task"));
    }
    let all_seqs: BTreeSet<u64> = done.iter().flat_map(|(_, _, acks)| acks.iter().map(|a| u64_of(a, "seq"))).collect();
    let total = done.len() * PER_SESSION;
    assert_eq!(all_seqs.len(), total, "duplicate seqs among acks");
    let first = assigned_seq + 1;
    let last = assigned_seq + total as u64;
    assert_eq!(all_seqs, (first..=last).collect::<BTreeSet<u64>>(), "acked seqs are not contiguous");
    let note_seqs: BTreeSet<u64> = done
        .iter()
        .flat_map(|(_, _, acks)| acks.iter())
        .filter(|a| {
            let cid = str_of(a, "client_id");
            cid.starts_with("s0-") && cid[3..].parse::<usize>().map(|i| i % 5 == 0).unwrap_or(false)
        })
        .map(|a| u64_of(a, "seq"))
        .collect();

    for (mut c, is_customer, acks) in done {
        let own: BTreeSet<u64> = acks.iter().map(|a| u64_of(a, "seq")).collect();
        let hidden = if is_customer { note_seqs.clone() } else { BTreeSet::new() };
        let covered = |c: &Client| {
            let got: BTreeSet<u64> = message_seqs(c, &cid).into_iter().filter(|s| *s >= first).collect();
            (first..=last).all(|s| got.contains(&s) || own.contains(&s) || hidden.contains(&s))
        };
        while !covered(&c) {
            let what = format!("the rest of the messages up to seq {last}");
            c.recv_until(&what, |f| f["type"] == "message" && f["message"]["conversation"] == cid.as_str()).await;
        }
        let got: Vec<u64> = message_seqs(&c, &cid).into_iter().filter(|s| *s >= first).collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{}: seqs not strictly increasing: {got:?}", c.label);
        let expect: Vec<u64> = (first..=last).filter(|s| !own.contains(s) && !hidden.contains(s)).collect();
        assert_eq!(got, expect, "{}: wrong set of delivered seqs", c.label);
        if is_customer {
            assert!(c.seen(|f| f["type"] == "message" && f["message"]["kind"] == "note").is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_marks_come_back_with_sync_after_a_reconnect() {
    let srv = Server::with_agents(&[ANN], &[]);
    let (mut agent, mut customer, cid, _) = assigned_pair(&srv).await;
    let token = customer.token.clone().expect("resume token");
    let customer_id = customer.id();
    let agent_id = agent.id();
    let a1 = customer.say(&cid, "c1", "hello?").await;
    let a2 = agent.say(&cid, "a1", "hi, how can I help?").await;
    agent.send_json(&json!({"type":"read","conversation":cid,"seq":u64_of(&a1, "seq")})).await;
    customer.recv_until("agent's read", |f| f["type"] == "read" && f["from"]["id"] == agent_id.as_str()).await;
    customer.send_json(&json!({"type":"read","conversation":cid,"seq":u64_of(&a2, "seq")})).await;
    agent.recv_until("customer's read", |f| f["type"] == "read" && f["from"]["id"] == customer_id.as_str()).await;
    customer.disconnect().await;
    agent.disconnect().await;

    // Both come back on new connections, with nothing kept locally.
    let mut customer = Client::customer_with_token(&srv, "Ann", &token).await;
    let h = customer.sync(&cid, 0, None).await;
    let reads = h["reads"].as_array().expect("reads in the history reply");
    let mark = |who: &str| reads.iter().find(|r| r["user"] == who).map(|r| u64_of(r, "seq"));
    assert_eq!(mark(&agent_id), Some(u64_of(&a1, "seq")), "the agent's read mark: {h}");
    assert_eq!(mark(&customer_id), Some(u64_of(&a2, "seq")), "the customer's own: {h}");
    let mut agent = Client::agent(&srv, ANN.0, ANN.1).await;
    let h = agent.sync(&cid, 0, None).await;
    assert!(h["reads"].as_array().unwrap().iter().any(|r| r["user"] == customer_id.as_str()), "{h}");
}
