//! Acked means durable (PROTOCOL §7.1): SIGKILL right after an ack, restart on
//! the same data dir, everything acked is still there; agents and resume tokens
//! survive too.

mod common;

use common::*;
use serde_json::json;

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_message_survives_kill_9_and_restart() {
    let dir = data_dir();
    add_agent(dir.path(), ANN.0, ANN.1, ANN.2);
    let mut srv = Server::start_in(&dir, &[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let token = cust.token.clone().expect("token");
    let user_id = cust.user["id"].clone();
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let ack = cust.say(&cid, "k-1", "please keep me").await;
    srv.kill9();
    drop(cust);

    let srv = Server::start_in(&dir, &[]);
    // Agents added before still log in.
    let agent_token = login(&srv, ANN.0, ANN.1).await;
    assert!(!agent_token.is_empty());
    // The resume token still works (the signing secret is kept in the data dir).
    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    assert_eq!(cust.user["id"], user_id, "{}", cust.welcome);
    assert!(
        cust.welcome["conversations"].as_array().is_some_and(|l| l.iter().any(|c| c["id"] == cid.as_str())),
        "{}",
        cust.welcome
    );
    let h = cust.sync(&cid, 0, None).await;
    let m = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["client_id"] == "k-1")
        .cloned()
        .unwrap_or_else(|| panic!("acked message lost after kill -9: {h}"));
    assert_eq!(m["id"], ack["id"], "{m}");
    assert_eq!(m["seq"], ack["seq"], "{m}");
    assert_eq!(m["body"], "please keep me", "{m}");

    // The retry after restart maps to the original, and new sends continue the seqs.
    let retry = cust.say(&cid, "k-1", "please keep me").await;
    assert_eq!((&retry["id"], &retry["seq"]), (&ack["id"], &ack["seq"]));
    let next = cust.say(&cid, "k-2", "after restart").await;
    assert_eq!(u64_of(&next, "seq"), u64_of(&ack, "seq") + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_acked_messages_all_survive_kill_9() {
    const N: usize = 50;
    let dir = data_dir();
    let mut srv = Server::start_in(&dir, &["--rate-per-sec", "10000", "--rate-burst", "10000"]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let token = cust.token.clone().expect("token");
    let cid = str_of(&cust.open("support").await, "id").to_string();
    for i in 0..N {
        cust.send_json(&json!({"type":"send","conversation":cid,"client_id":format!("b{i}"),
                               "body":format!("burst {i}"),"ref":format!("b{i}")}))
            .await;
    }
    let mut acks = Vec::new();
    for i in 0..N {
        let r = format!("b{i}");
        let a = cust.recv_until("ack", |f| f["ref"] == r.as_str()).await;
        assert_eq!(a["type"], "ack", "{a}");
        acks.push(a);
    }
    // Kill the moment the last ack is in.
    srv.kill9();
    drop(cust);

    let srv = Server::start_in(&dir, &["--rate-per-sec", "10000", "--rate-burst", "10000"]);
    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    let (msgs, _) = cust.sync_all(&cid).await;
    for a in &acks {
        assert!(
            msgs.iter().any(|m| m["id"] == a["id"] && m["seq"] == a["seq"] && m["client_id"] == a["client_id"]),
            "acked {a} missing after kill -9"
        );
    }
    let seqs: Vec<u64> = msgs.iter().map(|m| u64_of(m, "seq")).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posted_message_and_conversation_state_survive_kill_9() {
    let dir = data_dir();
    add_agent(dir.path(), ANN.0, ANN.1, ANN.2);
    let mut srv = Server::start_in(&dir, &[]);
    let mut ann = Client::agent_in(&srv, ANN.0, ANN.1, "support").await;
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    ann.recv_event(&cid, "assigned").await;
    let agent_token = login(&srv, ANN.0, ANN.1).await;
    let (code, posted) = post_json(
        &srv,
        &format!("/api/conversations/{cid}/messages"),
        Some(&agent_token),
        &json!({"client_id":"h-1","body":"posted over HTTP","internal":false}),
    )
    .await;
    assert!((200..300).contains(&code), "{code} {posted}");
    srv.kill9();
    drop((ann, cust));

    let srv = Server::start_in(&dir, &[]);
    let agent_token = login(&srv, ANN.0, ANN.1).await;
    let (code, body) =
        get_json(&srv, &format!("/api/conversations/{cid}/messages?after_seq=0"), Some(&agent_token)).await;
    assert_eq!(code, 200, "{body}");
    let msgs = body["messages"].as_array().expect("messages");
    assert!(msgs.iter().any(|m| m["id"] == posted["id"] && m["seq"] == posted["seq"]), "{body}");
    let active = list_conversations(&srv, &agent_token, "support", "active").await;
    let queued = list_conversations(&srv, &agent_token, "support", "queued").await;
    assert!(
        active.iter().chain(queued.iter()).any(|c| c["id"] == cid.as_str()),
        "conversation lost: active {active:?} queued {queued:?}"
    );
}

/// After a restart, each agent holding conversations gets their own grace
/// period: one agent coming back must not keep another's conversations from
/// returning to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_restart_an_absent_agents_conversations_return_to_the_queue() {
    let dir = data_dir();
    add_agent(dir.path(), "amy", "pw-amy-1", 1);
    add_agent(dir.path(), "ben", "pw-ben-1", 1);
    let mut srv = Server::start_in(&dir, &[]);
    let amy = Client::agent_in(&srv, "amy", "pw-amy-1", "support").await;
    let ben = Client::agent_in(&srv, "ben", "pw-ben-1", "support").await;
    let mut c1 = Client::customer(&srv, "One").await;
    let mut c2 = Client::customer(&srv, "Two").await;
    let conv1 = c1.open_assigned("support").await;
    let conv2 = c2.open_assigned("support").await;
    let amys = if conv1["agent"]["name"] == "amy" { conv1.clone() } else { conv2.clone() };
    let bens = if conv1["agent"]["name"] == "ben" { conv1.clone() } else { conv2.clone() };
    assert_eq!(amys["agent"]["name"], "amy", "{conv1} {conv2}");
    assert_eq!(bens["agent"]["name"], "ben", "{conv1} {conv2}");
    srv.kill9();
    drop((amy, ben, c1, c2));

    let srv = Server::start_in(&dir, &["--agent-grace-ms", "1500"]);
    let token = login(&srv, "amy", "pw-amy-1").await;
    let _amy = Client::agent_in(&srv, "amy", "pw-amy-1", "support").await;
    // Ben never comes back: after the grace period his conversation waits again
    // (amy is at capacity with her own).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    loop {
        let queued = list_conversations(&srv, &token, "support", "queued").await;
        if queued.iter().any(|c| c["id"] == bens["id"]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ben's conversation never returned to the queue: {queued:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let active = list_conversations(&srv, &token, "support", "active").await;
    assert!(active.iter().any(|c| c["id"] == amys["id"] && c["agent"]["name"] == "amy"), "{active:?}");
}
