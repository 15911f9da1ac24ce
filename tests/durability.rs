//! Acked means durable (PROTOCOL §7.1): SIGKILL right after an ack, restart on
//! the same data dir, everything acked is still there; agents and resume tokens
//! survive too.

mod common;

use common::*;
use serde_json::{json, Value};

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

/// Another process (here: a second SQLite connection, as the `agent` commands
/// are) holding the database's write lock makes a send wait, not fail: the
/// ack comes once the lock is released, and the message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waits_for_a_write_lock_held_elsewhere_then_is_acked() {
    let dir = data_dir();
    let srv = Server::start_in(&dir, &[]);
    let mut cust = Client::customer(&srv, "Ann").await;
    let cid = str_of(&cust.open("support").await, "id").to_string();
    cust.settle(std::time::Duration::from_millis(200)).await;

    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let db_path = dir.path().join("parley.db");
    let holder = std::thread::spawn(move || {
        let mut db = rusqlite::Connection::open(db_path).expect("open the database");
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).expect("take the write lock");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        tx.rollback().expect("release the write lock");
        std::time::Instant::now()
    });
    locked_rx.recv().expect("the lock is held");
    let ack = cust.say(&cid, "w-1", "written after the lock").await;
    let acked_at = std::time::Instant::now();
    let released_at = holder.join().expect("lock holder");
    assert!(acked_at >= released_at, "acked while another connection held the write lock: {ack}");
    assert_eq!(ack["type"], "ack", "{ack}");
    let h = cust.sync(&cid, 0, None).await;
    assert!(h["messages"].as_array().expect("messages").iter().any(|m| m["body"] == "written after the lock"), "{h}");
}

/// Rows in the store's message log and in its message table (read beside the
/// server, or after it died).
fn log_and_table_rows(dir: &std::path::Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(dir.join("parley.db")).expect("open the database");
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
    (
        count("SELECT (SELECT count(*) FROM message_log_0) + (SELECT count(*) FROM message_log_1)"),
        count("SELECT count(*) FROM messages"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_still_in_the_log_at_kill_9_are_folded_at_start() {
    const N: usize = 20;
    let dir = data_dir();
    // Nothing is folded for a minute.
    let args = ["--rate-per-sec", "10000", "--rate-burst", "10000", "--fold-after-ms", "60000"];
    let mut srv = Server::start_in(&dir, &args);
    let mut cust = Client::customer(&srv, "Ann").await;
    let token = cust.token.clone().expect("token");
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let mut acks = Vec::new();
    for i in 0..N {
        acks.push(cust.say(&cid, &format!("l{i}"), &format!("logged {i}")).await);
    }
    srv.kill9();
    drop(cust);
    let (logged, _) = log_and_table_rows(dir.path());
    assert!(logged >= N as i64, "the acked messages should still be in the log: {logged} rows there");

    let srv = Server::start_in(&dir, &args);
    let (logged, stored) = log_and_table_rows(dir.path());
    assert_eq!(logged, 0, "the log is folded before the server serves");
    assert!(stored >= N as i64, "{stored} messages stored after the fold");
    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    let (msgs, _) = cust.sync_all(&cid).await;
    let got: Vec<(&Value, &Value)> = msgs.iter().map(|m| (&m["id"], &m["seq"])).collect();
    let want: Vec<(&Value, &Value)> = acks.iter().map(|a| (&a["id"], &a["seq"])).collect();
    assert_eq!(got, want, "every acked message once, in order");
    // Retries of logged messages still map to the originals, and seqs go on.
    let retry = cust.say(&cid, "l3", "logged 3").await;
    assert_eq!((&retry["id"], &retry["seq"]), (&acks[3]["id"], &acks[3]["seq"]));
    let next = cust.say(&cid, "after", "after the restart").await;
    assert_eq!(u64_of(&next, "seq"), N as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_joins_folded_and_logged_messages() {
    let dir = data_dir();
    add_agent(dir.path(), ANN.0, ANN.1, ANN.2);
    let args = ["--fold-after-ms", "60000"];
    let mut srv = Server::start_in(&dir, &args);
    let mut cust = Client::customer(&srv, "Ann").await;
    let token = cust.token.clone().expect("token");
    let cid = str_of(&cust.open("support").await, "id").to_string();
    for i in 1..=5 {
        cust.say(&cid, &format!("a{i}"), &format!("first {i}")).await;
    }
    // A restart folds the log into the message table.
    srv.kill9();
    drop(cust);
    let srv = Server::start_in(&dir, &args);
    let (logged, stored) = log_and_table_rows(dir.path());
    assert_eq!((logged, stored >= 5), (0, true), "after the restart's fold: {logged} logged, {stored} stored");
    let mut cust = Client::customer_with_token(&srv, "Ann", &token).await;
    for i in 6..=10 {
        cust.say(&cid, &format!("a{i}"), &format!("then {i}")).await;
    }
    let (logged, _) = log_and_table_rows(dir.path());
    assert_eq!(logged, 5, "the last five are in the log");

    let seqs = |h: &Value| -> Vec<u64> {
        h["messages"].as_array().expect("messages").iter().map(|m| u64_of(m, "seq")).collect()
    };
    // A page across the two.
    let h = cust.sync(&cid, 2, Some(5)).await;
    assert_eq!(seqs(&h), vec![3, 4, 5, 6, 7], "{h}");
    assert_eq!(h["more"], true, "{h}");
    // The rest, from the log alone.
    let h = cust.sync(&cid, 7, Some(5)).await;
    assert_eq!(seqs(&h), vec![8, 9, 10], "{h}");
    assert_eq!(h["more"], false, "{h}");
    let (msgs, _) = cust.sync_all(&cid).await;
    let bodies: Vec<&str> = msgs.iter().filter_map(|m| m["body"].as_str()).collect();
    let want: Vec<String> = (1..=10).map(|i| format!("{} {i}", if i <= 5 { "first" } else { "then" })).collect();
    assert_eq!(bodies, want);
    // Over HTTP too.
    let agent = login(&srv, ANN.0, ANN.1).await;
    let (status, page) = get_json(&srv, &format!("/api/conversations/{cid}/messages"), Some(&agent)).await;
    assert_eq!(status, 200, "{page}");
    let http_seqs: Vec<u64> = page["messages"].as_array().expect("messages").iter().map(|m| u64_of(m, "seq")).collect();
    assert_eq!(http_seqs, (1..=10).collect::<Vec<u64>>(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_under_traffic_loses_nothing() {
    const N: usize = 60;
    let dir = data_dir();
    // The log moves every 20 ms: folds run between the sends.
    let args = ["--rate-per-sec", "10000", "--rate-burst", "10000", "--fold-after-ms", "20"];
    let mut srv = Server::start_in(&dir, &args);
    let mut custs = Vec::new();
    for name in ["Ann", "Bob", "Cid"] {
        let mut c = Client::customer(&srv, name).await;
        let cid = str_of(&c.open("support").await, "id").to_string();
        custs.push((c, cid, Vec::new()));
    }
    for i in 0..N {
        for (c, cid, acks) in custs.iter_mut() {
            acks.push(c.say(cid, &format!("t{i}"), &format!("traffic {i}")).await);
        }
        if i % 10 == 0 {
            // Read while folding: every acked message, once, in order.
            let (c, cid, acks) = &mut custs[i % 3];
            let (msgs, _) = c.sync_all(cid).await;
            let ids: Vec<&Value> = msgs.iter().map(|m| &m["id"]).collect();
            assert_eq!(ids, acks.iter().map(|a| &a["id"]).collect::<Vec<_>>());
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    srv.kill9();
    let srv = Server::start_in(&dir, &args);
    for (c, cid, acks) in custs.iter_mut() {
        let token = c.token.clone().expect("token");
        let mut c = Client::customer_with_token(&srv, "again", &token).await;
        let (msgs, _) = c.sync_all(cid).await;
        let got: Vec<(&Value, &Value)> = msgs.iter().map(|m| (&m["id"], &m["seq"])).collect();
        let want: Vec<(&Value, &Value)> = acks.iter().map(|a| (&a["id"], &a["seq"])).collect();
        assert_eq!(got, want, "every acked message once, in order, after folds and a kill -9");
    }
    // With no writes, the log empties.
    let mut empty = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if log_and_table_rows(dir.path()).0 == 0 {
            empty = true;
            break;
        }
    }
    assert!(empty, "the log was not folded: {:?}", log_and_table_rows(dir.path()));
}
