//! The SQLite store's own mechanics, seen from outside: another connection
//! holding the write lock, and the append-only message log (folded into the
//! message table later, and at start after a crash). The store-independent
//! durability checks are in durability.rs.

mod common;

use common::*;
use serde_json::Value;

const ANN: (&str, &str, u32) = ("ann", "pw-ann-1", 5);

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
