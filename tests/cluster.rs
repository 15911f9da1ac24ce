//! Several nodes as one service: real node processes on one PostgreSQL
//! database, a Redis backplane and nginx in front (the repository's own
//! nginx.conf). Nodes are killed (SIGKILL), stopped (SIGTERM) and cut off
//! from Redis under traffic; every acked message must still reach every
//! member exactly once, in order, after they reconnect and sync.
//!
//! Skipped (with a note) when `PARLEY_TEST_DATABASE=none`.

mod common;

use common::cluster::{machine_redis, Cluster, Nginx, OwnRedis};
use common::traffic::{Tally, Traffic, Who};
use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const AGENTS_PW: &str = "agent-password-1";

/// Flags for load through one proxy address: no per-address caps.
const OPEN_LIMITS: &[&str] = &["--max-conns-per-address", "0", "--opens-per-minute", "0"];

/// The tests that put four nodes under traffic take turns: two at once on
/// two cores would measure the machine, not the cluster.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip() -> bool {
    if common::pg::base_url().is_none() {
        eprintln!("PARLEY_TEST_DATABASE=none: cluster tests skipped");
        return true;
    }
    false
}

/// A series of a node's /metrics (the first sample whose name and labels match).
async fn metric(srv: &Server, series: &str) -> Option<f64> {
    let text = http().get(srv.url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn get_status(srv: &Server, path: &str) -> u16 {
    match http().get(srv.url(path)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits until `path` on `srv` answers `status`.
async fn wait_status(srv: &Server, path: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = get_status(srv, path).await;
        if s == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path} on {} answered {s}, not {status}, for {within:?}", srv.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// 1. A customer on node 1 and an agent on node 2 chat both ways, with
//    typing, read marks and a transfer to an agent on node 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_and_agents_on_three_nodes_chat_type_read_and_transfer() {
    if skip() {
        return;
    }
    let agents = [("ann", AGENTS_PW, 5), ("bob", AGENTS_PW, 5)];
    let c = Cluster::start(3, &machine_redis(), &agents, &[]).expect("cluster");
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));

    let mut ann = Client::agent_in(n2, "ann", AGENTS_PW, "support").await;
    let mut cust = Client::customer(n1, "Carla").await;
    let conv = cust.open_assigned("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["agent"]["id"], ann.id(), "assigned to the only agent, on another node: {conv}");
    ann.recv_conversation(&cid, "the assignment, on node 2", |c| c["status"] == "active").await;

    // Both ways, across nodes.
    let ack = cust.say(&cid, "c1", "hello from node 1").await;
    let m = ann.recv_message("the customer's text on node 2", |m| m["body"] == "hello from node 1").await;
    assert_eq!(m["seq"], ack["seq"]);
    let ack = ann.say(&cid, "a1", "hello from node 2").await;
    let m = cust.recv_message("the agent's text on node 1", |m| m["body"] == "hello from node 2").await;
    assert_eq!(m["seq"], ack["seq"]);

    // Typing, both ways.
    cust.send_json(&json!({"type":"typing","conversation":cid,"on":true})).await;
    let t = ann.recv_until("customer typing", |f| is_type(f, "typing") && f["conversation"] == cid).await;
    assert_eq!(t["on"], true);
    assert_eq!(t["from"]["id"], cust.id());
    ann.send_json(&json!({"type":"typing","conversation":cid,"on":true})).await;
    let t = cust.recv_until("agent typing", |f| is_type(f, "typing") && f["conversation"] == cid).await;
    assert_eq!(t["from"]["id"], ann.id());

    // Read marks, both ways.
    let seq = u64_of(&ack, "seq");
    cust.send_json(&json!({"type":"read","conversation":cid,"seq":seq})).await;
    let r = ann.recv_until("customer's read mark", |f| is_type(f, "read") && f["conversation"] == cid).await;
    assert_eq!(r["seq"], seq);
    assert_eq!(r["from"]["id"], cust.id());
    ann.send_json(&json!({"type":"read","conversation":cid,"seq":seq})).await;
    let r = cust.recv_until("agent's read mark", |f| is_type(f, "read") && f["from"]["id"] == ann.id()).await;
    assert_eq!(r["seq"], seq);

    // A transfer to an agent on node 3.
    let mut bob = Client::agent_in(n3, "bob", AGENTS_PW, "support").await;
    let bob_id = bob.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        // Bob's presence reaches node 2 through the backplane; until then he is "not online".
        let v = ann.request(json!({"type":"transfer","conversation":cid,"to_agent":bob_id})).await;
        if is_type(&v, "conversation") {
            break v["conversation"].clone();
        }
        assert!(Instant::now() < deadline, "transfer to an agent on node 3 refused: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved["agent"]["id"], bob_id);
    bob.recv_conversation(&cid, "the transfer, on node 3", |c| c["agent"]["id"] == bob_id).await;
    cust.recv_conversation(&cid, "the transfer, told to the customer on node 1", |c| c["agent"]["id"] == bob_id).await;
    // Bob reads what was said before, and talks to the customer.
    let (history, _) = bob.sync_all(&cid).await;
    assert!(history.iter().any(|m| m["body"] == "hello from node 1"), "history on node 3: {history:?}");
    let ack = bob.say(&cid, "b1", "bob here, from node 3").await;
    let m = cust.recv_message("node 3's text on node 1", |m| m["body"] == "bob here, from node 3").await;
    assert_eq!(m["seq"], ack["seq"]);
    cust.say(&cid, "c2", "thanks bob").await;
    bob.recv_message("the customer's answer on node 3", |m| m["body"] == "thanks bob").await;
    // Ann, on node 2, no longer holds it: only the assignee may transfer.
    let e = ann.call_err(json!({"type":"transfer","conversation":cid,"to_room":"support"}), "forbidden").await;
    assert_eq!(e["code"], "forbidden");

    // What /metrics says of it, on every node.
    for n in [n1, n2, n3] {
        assert!(metric(n, "parley_backplane_published_total").await.unwrap_or(0.0) > 0.0, "published on {}", n.addr);
        assert!(metric(n, "parley_backplane_received_total").await.unwrap_or(0.0) > 0.0, "received on {}", n.addr);
        assert_eq!(metric(n, "parley_backplane_up").await, Some(1.0));
        assert_eq!(metric(n, "parley_cluster_lease_held").await, Some(1.0));
        assert!(metric(n, "parley_routing_conflicts_total").await.is_some(), "conflicts counted on {}", n.addr);
        // Ann and Bob are online in support, one on node 2 and one on node 3: every node counts both.
        assert_eq!(metric(n, "parley_room_agents_online{room=\"support\"}").await, Some(2.0), "on {}", n.addr);
        assert_eq!(metric(n, "parley_room_queued{room=\"support\"}").await, Some(0.0));
    }
}

/// Agents (10, 20 conversations each) and 200 customers through nginx.
async fn steady_traffic(front: &Server, agents: usize, customers: usize) -> Traffic {
    let mut t = Traffic::new();
    for i in 0..agents {
        let token = login(front, &format!("agent{i}"), AGENTS_PW).await;
        t.spawn(&front.ws_url(), Who::Agent { token }, Duration::from_secs(1));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..customers {
        t.spawn(&front.ws_url(), Who::Customer { name: format!("Cust {i}") }, Duration::from_millis(1500));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t
}

fn agent_accounts(n: usize) -> Vec<(String, String, u32)> {
    (0..n).map(|i| (format!("agent{i}"), AGENTS_PW.to_string(), 20)).collect()
}

fn start_four(redis: &str) -> Option<(Cluster, Nginx)> {
    let accounts = agent_accounts(10);
    let refs: Vec<(&str, &str, u32)> = accounts.iter().map(|(n, p, m)| (n.as_str(), p.as_str(), *m)).collect();
    let c = Cluster::start(4, redis, &refs, OPEN_LIMITS)?;
    let nginx = Nginx::start(&c.running());
    Some((c, nginx))
}

/// Enough traffic to judge, and every acked message reached every member
/// once, in order.
fn assert_whole(tally: &Tally) {
    assert!(tally.acked > 500, "too little traffic to judge: {tally:?}");
    assert_eq!((tally.lost, tally.duplicated, tally.out_of_order), (0, 0, 0), "{tally:?}");
}

// 2. Through nginx, 200 customers and 10 agents exchange messages steadily
//    while one node is killed with SIGKILL: nothing lost, duplicated or out
//    of order once everyone has reconnected and synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_traffic_loses_nothing() {
    if skip() {
        return;
    }
    let _turn = HEAVY.lock().await;
    let (mut c, nginx) = start_four(&machine_redis()).expect("cluster");
    let t = steady_traffic(&nginx.front, 10, 200).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.kill9(1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = t.finish().await;
    let tally = log.check();
    eprintln!(
        "SIGKILL of one node of four: {tally:?}; {} reconnects, p99 reconnect {:?}",
        log.reconnects.len(),
        log.reconnect_p99()
    );
    assert_whole(&tally);
    assert!(!log.reconnects.is_empty(), "nobody was connected to the killed node");
    assert!(log.reconnect_p99().unwrap() < Duration::from_secs(10), "p99 reconnect {:?}", log.reconnect_p99());
}

// 3. SIGTERM on a node under the same traffic: no client sees 1006 (every
//    one gets a close frame: 1001 from the stopping node), and the node exits
//    within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_drains_within_ten_seconds() {
    if skip() {
        return;
    }
    let _turn = HEAVY.lock().await;
    let (mut c, nginx) = start_four(&machine_redis()).expect("cluster");
    let t = steady_traffic(&nginx.front, 10, 200).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (took, status) = c.sigterm(2);
    eprintln!("SIGTERM: the node exited in {took:?} with {status}");
    assert!(took < Duration::from_secs(10), "the node took {took:?} to exit");
    assert!(status.success(), "exit status {status}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = t.finish().await;
    let tally = log.check();
    let codes: HashMap<String, usize> = log.closes.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.map_or("1006 (no close frame)".to_string(), |c| c.to_string())).or_default() += 1;
        m
    });
    eprintln!("SIGTERM under traffic: {tally:?}; close codes seen {codes:?}; p99 reconnect {:?}", log.reconnect_p99());
    assert!(codes.get("1001").copied().unwrap_or(0) > 0, "nobody was told to reconnect: {codes:?}");
    assert!(!codes.contains_key("1006 (no close frame)"), "a client saw 1006: {codes:?}; {:?}", log.drops);
    assert_whole(&tally);
}

// 4. Redis restarted under traffic: /readyz 503 while it is down, 200 after;
//    nothing lost after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_traffic_loses_nothing() {
    if skip() {
        return;
    }
    let _turn = HEAVY.lock().await;
    let mut redis = OwnRedis::start();
    let (c, nginx) = start_four(&redis.url()).expect("cluster");
    for n in c.running() {
        wait_status(n, "/readyz", 200, Duration::from_secs(10)).await;
    }
    let t = steady_traffic(&nginx.front, 10, 200).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let port = redis.port;
    redis.stop();
    for n in c.running() {
        wait_status(n, "/readyz", 503, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _redis = OwnRedis::start_on(port);
    for n in c.running() {
        wait_status(n, "/readyz", 200, Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = t.finish().await;
    let tally = log.check();
    eprintln!("Redis restarted under traffic: {tally:?}");
    assert_whole(&tally);
    let (mut reconnects, mut filled) = (0.0, 0.0);
    for n in c.running() {
        let r = metric(n, "parley_backplane_reconnects_total").await.unwrap_or(0.0);
        assert!(r >= 1.0, "no backplane reconnect counted on {}", n.addr);
        reconnects += r;
        filled += metric(n, "parley_gaps_filled_total").await.unwrap_or(0.0);
    }
    eprintln!("Redis restart: {reconnects} resubscriptions, {filled} messages filled from the store");
    assert!(filled > 0.0, "what Redis lost was not read from the store");
}

// 5. 100 customers open at once over four nodes, against a total agent
//    capacity of 10: exactly 10 active, never more at any moment, and the
//    other 90 assigned in arrival order as agents close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_holds_cluster_wide_and_the_queue_drains_oldest_first() {
    if skip() {
        return;
    }
    let _turn = HEAVY.lock().await;
    let agents = [("a1", AGENTS_PW, 3), ("a2", AGENTS_PW, 3), ("a3", AGENTS_PW, 2), ("a4", AGENTS_PW, 2)];
    let c = Cluster::start(4, &machine_redis(), &agents, OPEN_LIMITS).expect("cluster");
    let caps: HashMap<&str, i64> = agents.iter().map(|(n, _, m)| (*n, *m as i64)).collect();
    let mut staff = Vec::new();
    for (i, (name, pw, _)) in agents.iter().enumerate() {
        staff.push(Client::agent_in(c.node(i), name, pw, "support").await);
    }
    // A sampler on the database itself: active per agent, every few ms.
    let url = c.db.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        let (mut samples, mut worst_total, mut worst_agent) = (0, 0i64, HashMap::<String, i64>::new());
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let rows = db
                .query(
                    "SELECT agent_name, COUNT(*) FROM conversations WHERE status = 'active' GROUP BY agent_name",
                    &[],
                )
                .await
                .expect("sample");
            let mut total = 0;
            for r in rows {
                let (name, n): (String, i64) = (r.get(0), r.get(1));
                total += n;
                let w = worst_agent.entry(name).or_default();
                *w = (*w).max(n);
            }
            worst_total = worst_total.max(total);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (samples, worst_total, worst_agent)
    });
    // 100 customers at once, spread over the four nodes.
    let mut opens = Vec::new();
    for i in 0..100 {
        let node = c.node(i % 4).ws_url();
        opens.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(node).await.expect("connect");
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let hello = json!({"type":"hello","role":"customer","name":format!("Q{i}")});
            ws.send(Message::Text(hello.to_string())).await.unwrap();
            ws.send(Message::Text(json!({"type":"open","room":"support"}).to_string())).await.unwrap();
            loop {
                let f = ws.next().await.expect("frame").expect("frame");
                if let Message::Text(t) = f {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "conversation" {
                        return (v["conversation"]["id"].as_str().unwrap().to_string(), ws);
                    }
                    assert_ne!(v["type"], "error", "open refused: {v}");
                }
            }
        }));
    }
    let mut customers = Vec::new();
    for o in opens {
        customers.push(o.await.expect("customer"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (db, conn) = tokio_postgres::connect(&c.db.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let count = |status: &'static str| {
        let db = &db;
        async move {
            let r = db.query_one("SELECT COUNT(*) FROM conversations WHERE status = $1", &[&status]).await.unwrap();
            r.get::<_, i64>(0)
        }
    };
    assert_eq!(count("active").await, 10, "exactly the capacity is active");
    assert_eq!(count("queued").await, 90, "the rest wait");
    // Drain: close one active conversation at a time; the freed seat goes to
    // the oldest queued conversation, whichever node holds agent or customer.
    let mut order_ok = 0;
    for _ in 0..30 {
        let head: Option<(String,)> = db
            .query_opt("SELECT id FROM conversations WHERE status = 'queued' ORDER BY queued_at, id LIMIT 1", &[])
            .await
            .unwrap()
            .map(|r| (r.get(0),));
        let Some((head,)) = head else { break };
        let row = db
            .query_one("SELECT id, agent_name FROM conversations WHERE status = 'active' ORDER BY id LIMIT 1", &[])
            .await
            .unwrap();
        let (victim, agent): (String, String) = (row.get(0), row.get(1));
        let a = staff.iter_mut().find(|s| s.user["name"] == agent.as_str()).expect("the assignee");
        a.call(json!({"type":"close","conversation":victim}), "conversation").await;
        // The head of the queue becomes active, within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = db.query_one("SELECT status FROM conversations WHERE id = $1", &[&head]).await.unwrap();
            if r.get::<_, String>(0) == "active" {
                order_ok += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the oldest queued conversation {head} was not assigned next, after {agent} closed {victim}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count("active").await, 10, "a freed seat is taken at once, and only once");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (samples, worst_total, worst_agent) = sampler.await.unwrap();
    let mut conflicts = 0.0;
    for i in 0..4 {
        conflicts += metric(c.node(i), "parley_routing_conflicts_total").await.unwrap_or(0.0);
    }
    eprintln!(
        "capacity: {samples} samples, at most {worst_total} active at once; per agent {worst_agent:?}; \
         {conflicts} assignments refused by the store (another node chose first)"
    );
    assert!(samples > 100, "too few samples: {samples}");
    assert!(worst_total <= 10, "more than the capacity active at once: {worst_total}");
    for (name, worst) in &worst_agent {
        assert!(worst <= &caps[name.as_str()], "{name} held {worst}, capacity {}", caps[name.as_str()]);
    }
    assert_eq!(order_ok, 30);
    drop(customers);
}

// 6. An agent connected to two nodes, one of which is killed, keeps their
//    conversations (no grace expiry while one session lives); an agent
//    connected only to the killed node gets the grace period, then their
//    conversations go back to the front of the queue, re-queued exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_two_nodes_keeps_conversations_when_one_dies() {
    if skip() {
        return;
    }
    let agents = [("dual", AGENTS_PW, 1), ("solo", AGENTS_PW, 1)];
    let mut c = Cluster::start(3, &machine_redis(), &agents, &["--agent-grace-ms", "2000"]).expect("cluster");
    let mut dual_a = Client::agent_in(c.node(0), "dual", AGENTS_PW, "support").await;
    let mut dual_b = Client::agent_in(c.node(1), "dual", AGENTS_PW, "support").await;
    let mut cust1 = Client::customer(c.node(2), "Dee").await;
    let conv1 = cust1.open_assigned("support").await;
    let cid1 = str_of(&conv1, "id").to_string();
    assert_eq!(conv1["agent"]["name"], "dual");
    dual_a.recv_conversation(&cid1, "assignment", |c| c["status"] == "active").await;
    dual_b.recv_conversation(&cid1, "assignment, on the second node", |c| c["status"] == "active").await;
    let mut solo = Client::agent_in(c.node(0), "solo", AGENTS_PW, "support").await;
    let mut cust2 = Client::customer(c.node(2), "Eve").await;
    let conv2 = cust2.open_assigned("support").await;
    let cid2 = str_of(&conv2, "id").to_string();
    assert_eq!(conv2["agent"]["name"], "solo");
    solo.recv_conversation(&cid2, "assignment", |c| c["status"] == "active").await;

    c.kill9(0);
    drop((dual_a, solo));
    // Lease (8 s) + grace (2 s) + a margin.
    let requeued = cust2
        .recv_until_within(Duration::from_secs(20), "solo's conversation back in the queue", |f| {
            is_type(f, "conversation") && f["conversation"]["id"] == cid2 && f["conversation"]["status"] == "queued"
        })
        .await;
    assert_eq!(requeued["conversation"]["queue_position"], 1, "back at the front: {requeued}");
    // Dual still holds theirs, on the node that lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let token = login(c.node(1), "dual", AGENTS_PW).await;
    let (s, body) = get_json(c.node(1), &format!("/api/conversations/{cid1}/messages?after_seq=0"), Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    let (db, conn) = tokio_postgres::connect(&c.db.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let r = db.query_one("SELECT status, agent_name FROM conversations WHERE id = $1", &[&cid1]).await.unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, Option<String>>(1)), ("active".into(), Some("dual".into())));
    let ack = dual_b.say(&cid1, "d1", "still here").await;
    let m = cust1.recv_message("dual's text after the node died", |m| m["body"] == "still here").await;
    assert_eq!(m["seq"], ack["seq"]);
    // Exactly one node re-queued solo's conversation.
    let n: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND event::jsonb->>'reason' = 'agent_offline'",
            &[&cid2],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "re-queued {n} times");
    let n: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND event::jsonb->>'reason' = 'agent_offline'",
            &[&cid1],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "dual's conversation was re-queued");
}

// A node started with --redis on SQLite refuses, saying what to give.
#[test]
fn redis_without_postgresql_is_refused() {
    let dir = data_dir();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:6379", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run parley");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis") && err.contains("--database postgres://"), "{err}");
}

// An agent's sessions on two nodes are one agent: "away" said on one node
// holds on the other (no node assigns to them), and "online" again is
// online everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_on_one_node_is_away_on_every_node() {
    if skip() {
        return;
    }
    let c = Cluster::start(3, &machine_redis(), &[("twin", AGENTS_PW, 5)], &[]).expect("cluster");
    let mut on1 = Client::agent_in(c.node(0), "twin", AGENTS_PW, "support").await;
    let mut on2 = Client::agent_in(c.node(1), "twin", AGENTS_PW, "support").await;
    on1.call(json!({"type":"status","availability":"away"}), "ack").await;
    // The other session hears it (presence), so node 2 knows.
    on2.recv_until("twin away, on node 2", |f| is_type(f, "presence") && f["availability"] == "away").await;
    let mut cust = Client::customer(c.node(2), "Gus").await;
    let conv = cust.open("support").await;
    let cid = str_of(&conv, "id").to_string();
    assert_eq!(conv["status"], "queued", "{conv}");
    cust.expect_none(Duration::from_secs(2), "an assignment while the only agent is away", |f| {
        is_type(f, "conversation") && f["conversation"]["status"] == "active"
    })
    .await;
    on1.call(json!({"type":"status","availability":"online"}), "ack").await;
    let active = cust.recv_conversation(&cid, "assignment once twin is back", |c| c["status"] == "active").await;
    assert_eq!(active["agent"]["name"], "twin");
}

// The fewest-active rule (PROTOCOL.md §8) holds across nodes: a customer on
// node 1, whose agent there already holds three conversations, goes to the
// idle agent on node 2, not to the one on the customer's own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_busy_agent_gets_the_next_customer_whatever_their_node() {
    if skip() {
        return;
    }
    let agents = [("busy", AGENTS_PW, 5), ("idle", AGENTS_PW, 5)];
    let c = Cluster::start(2, &machine_redis(), &agents, &[]).expect("cluster");
    let mut busy = Client::agent_in(c.node(0), "busy", AGENTS_PW, "support").await;
    let mut held = Vec::new();
    for name in ["Ann", "Bea", "Cal"] {
        let mut cust = Client::customer(c.node(0), name).await;
        let cid = str_of(&cust.open("support").await, "id").to_string();
        let got = cust.recv_conversation(&cid, "assigned to busy", |c| c["status"] == "active").await;
        assert_eq!(got["agent"]["name"], "busy");
        held.push(cust);
    }
    let mut idle = Client::agent_in(c.node(1), "idle", AGENTS_PW, "support").await;
    // Node 1 knows idle is online (busy's session sees idle's presence).
    busy.recv_until("idle online, seen on node 1", |f| {
        is_type(f, "presence") && f["agent"]["name"] == "idle" && f["availability"] == "online"
    })
    .await;
    // Three more customers on node 1: each goes to whoever holds fewer, so
    // idle takes all three (0, 1, 2 against busy's 3) and busy none.
    let mut names = Vec::new();
    for name in ["Dan", "Eve", "Fay"] {
        let mut cust = Client::customer(c.node(0), name).await;
        let cid = str_of(&cust.open("support").await, "id").to_string();
        let got = cust.recv_conversation(&cid, "assigned", |c| c["status"] == "active").await;
        names.push(got["agent"]["name"].as_str().unwrap_or("").to_string());
        held.push(cust);
    }
    assert_eq!(names, ["idle", "idle", "idle"], "the least busy agent, on the other node, gets each");
    let mine = idle.recv_until("idle holds three", |f| is_type(f, "presence") && f["active"] == 3).await;
    assert_eq!(mine["agent"]["name"], "idle");
    let refused = metric(c.node(0), "parley_routing_conflicts_total").await.unwrap_or(0.0)
        + metric(c.node(1), "parley_routing_conflicts_total").await.unwrap_or(0.0);
    eprintln!("least busy across nodes: {refused} proposals refused by the store");
}

// A conversation left to the least busy agent's node is taken by another
// node if that node does not assign it: here it is frozen (SIGSTOP), its
// lease not yet lapsed, so its agent still looks online and least busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_does_not_hold_up_the_queue() {
    if skip() {
        return;
    }
    let agents = [("busy", AGENTS_PW, 5), ("ghost", AGENTS_PW, 5)];
    let c = Cluster::start(2, &machine_redis(), &agents, &[]).expect("cluster");
    let mut busy = Client::agent_in(c.node(0), "busy", AGENTS_PW, "support").await;
    let mut first = Client::customer(c.node(0), "Ann").await;
    let cid = str_of(&first.open("support").await, "id").to_string();
    first.recv_conversation(&cid, "assigned to busy", |c| c["status"] == "active").await;
    let _ghost = Client::agent_in(c.node(1), "ghost", AGENTS_PW, "support").await;
    busy.recv_until("ghost online, seen on node 1", |f| {
        is_type(f, "presence") && f["agent"]["name"] == "ghost" && f["availability"] == "online"
    })
    .await;
    let node2 = c.node(1).pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &node2]).status().expect("kill").success());
    let mut cust = Client::customer(c.node(0), "Bo").await;
    let opened = Instant::now();
    let cid = str_of(&cust.open("support").await, "id").to_string();
    let got = cust.recv_conversation(&cid, "assigned despite node 2", |c| c["status"] == "active").await;
    let took = opened.elapsed();
    assert!(Command::new("kill").args(["-CONT", &node2]).status().expect("kill").success());
    eprintln!("frozen node: the customer was assigned here after {took:?}");
    assert_eq!(got["agent"]["name"], "busy");
    // Left to ghost (fewer active) first, then taken here well before node
    // 2's lease (8 s) would have lapsed.
    assert!(took >= Duration::from_millis(900), "assigned at once ({took:?}): ghost was not weighed");
    assert!(took < Duration::from_secs(5), "the queue waited {took:?} for a frozen node");
}

// Queue positions are one queue across nodes: customers waiting on three
// nodes hear their places move up when an agent on yet another node takes
// the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_positions_move_up_on_every_node() {
    if skip() {
        return;
    }
    let c = Cluster::start(4, &machine_redis(), &[("pat", AGENTS_PW, 1)], &[]).expect("cluster");
    let mut waiting = Vec::new();
    for (i, name) in ["Ada", "Ben", "Cid"].iter().enumerate() {
        let mut cust = Client::customer(c.node(i), name).await;
        let conv = cust.open("support").await;
        assert_eq!(conv["queue_position"], i as u64 + 1, "{name} on node {}: {conv}", i + 1);
        waiting.push((cust, str_of(&conv, "id").to_string()));
        // Each node has seen the ones before (so the order is by arrival, not by race).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pat = Client::agent_in(c.node(3), "pat", AGENTS_PW, "support").await;
    let (first, ref first_id) = &mut waiting[0];
    let got = first.recv_conversation(first_id, "the head assigned", |c| c["status"] == "active").await;
    assert_eq!(got["agent"]["name"], "pat");
    pat.recv_conversation(first_id, "pat's assignment, on node 4", |c| c["status"] == "active").await;
    for (i, (cust, id)) in waiting.iter_mut().enumerate().skip(1) {
        let moved = cust.recv_conversation(id, "a new queue position", |c| c["queue_position"] == i as u64).await;
        assert_eq!(moved["status"], "queued", "{moved}");
    }
}

// A node that starts while agents are online elsewhere learns of them at
// once (it asks the others for their presence): its customers are told the
// room is answered, and it can transfer to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_learns_who_is_online_elsewhere() {
    if skip() {
        return;
    }
    let agents = [("val", AGENTS_PW, 5), ("wes", AGENTS_PW, 5)];
    let mut c = Cluster::start(2, &machine_redis(), &agents, &[]).expect("cluster");
    let _val = Client::agent_in(c.node(0), "val", AGENTS_PW, "support").await;
    let i = c.add_node();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cust = Client::customer(c.node(i), "Hal").await;
        let support = cust.welcome["rooms"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "support").cloned());
        if support.as_ref().is_some_and(|s| s["online"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "the new node still says nobody is online: {support:?}");
        cust.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another agent on the new node sees Val, who is connected elsewhere, in the room.
    let mut wes = Client::agent(c.node(i), "wes", AGENTS_PW).await;
    let room = wes.join("support").await;
    let names: Vec<&str> =
        room["agents"].as_array().unwrap().iter().filter_map(|p| p["agent"]["name"].as_str()).collect();
    assert!(names.contains(&"val"), "the room's agents on the new node: {room}");
}
