//! Parley on PostgreSQL (`--database`), seen from outside: a database that
//! cannot be used stops the start with one clear line and exit status 2;
//! while PostgreSQL is unreachable, writes get `unavailable` (never a false
//! ack) and `/readyz` answers 503; when it is back the node serves again by
//! itself, and nothing acked was lost. The outage is made with a TCP proxy
//! between the node and PostgreSQL that the test stops and starts again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn start_fails(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--tcp-listen", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run parley");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn a_database_that_cannot_be_used_is_one_clear_line_and_exit_status_2() {
    let Some(base) = pg::base_url() else { return };
    let no_user = {
        let (scheme, rest) = base.split_once("://").expect("URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://no_such_role_here@{host}")
    };
    for (url, what) in [
        ("mysql://root@127.0.0.1/x".to_string(), "not a postgres:// URL"),
        ("postgres://postgres@127.0.0.1:1/x".to_string(), "cannot connect"),
        ("postgres://bad host:5432/x".to_string(), "--database"),
        (no_user, "cannot connect"),
    ] {
        let (code, err) = start_fails(&["--database", &url]);
        assert_eq!(code, Some(2), "{url}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("parley:")).collect();
        assert_eq!(lines.len(), 1, "{url}: one line: {err}");
        assert!(lines[0].contains(what) && lines[0].contains("--database"), "{url}: {err}");
        assert!(!err.contains("panicked"), "{url}: {err}");
    }
    let out = std::process::Command::new(BIN)
        .args(["agent", "list", "--database", "postgres://postgres@127.0.0.1:1/x"])
        .output()
        .expect("run parley agent list");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped,
/// new ones refused) and restored on the same port.
struct Proxy {
    port: u16,
    target: String,
    up: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = l.local_addr().expect("addr").port();
        let p = Proxy {
            port,
            target: target.to_string(),
            up: Arc::new(AtomicBool::new(true)),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        p.serve(l);
        p
    }

    fn serve(&self, l: TcpListener) {
        let (target, up, tasks) = (self.target.clone(), self.up.clone(), self.tasks.clone());
        let t = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if !up.load(Ordering::SeqCst) {
                    break;
                }
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(t);
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind proxy");
        self.serve(l);
    }
}

async fn readyz(srv: &Server) -> u16 {
    http().get(srv.url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_writes_are_unavailable_and_service_returns_by_itself() {
    let Some(db) = pg::TestDb::create() else { return };
    let (host, port) = {
        let rest = db.url.split_once("://").expect("URL").1;
        let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h).split('/').next().unwrap_or("127.0.0.1:5432");
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (hostport.to_string(), "5432".to_string()),
        }
    };
    let proxy = Proxy::start(&format!("{host}:{port}")).await;
    let via_proxy = db.url.replacen(&format!("{host}:{port}"), &format!("127.0.0.1:{}", proxy.port), 1);
    let dir = data_dir();
    let srv = Server::start_in(&dir, &["--database", &via_proxy]);
    assert_eq!(readyz(&srv).await, 200);
    let mut ann = Client::customer(&srv, "Ann").await;
    let token = ann.token.clone().expect("token");
    let cid = str_of(&ann.open("support").await, "id").to_string();
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(ann.say(&cid, &format!("before-{i}"), &format!("before {i}")).await);
    }

    proxy.cut();
    let mut refused = 0;
    for i in 0..3 {
        let r = ann
            .request(json!({"type":"send","conversation":cid,"client_id":format!("during-{i}"),"body":"during"}))
            .await;
        assert_eq!(r["type"], "error", "no ack while the database is away: {r}");
        assert_eq!(r["code"], "unavailable", "{r}");
        refused += 1;
    }
    assert_eq!(refused, 3);
    let (status, body) = get_json(&srv, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");

    proxy.restore().await;
    // The node reconnects by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while readyz(&srv).await != 200 {
        assert!(std::time::Instant::now() < deadline, "/readyz still not 200 after the database came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut after = None;
    while after.is_none() {
        let r = ann.request(json!({"type":"send","conversation":cid,"client_id":"after","body":"after"})).await;
        if r["type"] == "ack" {
            after = Some(r);
        } else {
            assert!(std::time::Instant::now() < deadline, "sends still refused: {r}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Everything acked is there, once, in order; the refused ones are not.
    let mut again = Client::customer_with_token(&srv, "Ann", &token).await;
    let (msgs, _) = again.sync_all(&cid).await;
    let bodies: Vec<&str> = msgs.iter().filter(|m| m["kind"] == "text").filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, vec!["before 0", "before 1", "before 2", "before 3", "before 4", "after"]);
    let seqs: Vec<u64> = msgs.iter().map(|m| u64_of(m, "seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "gapless: {seqs:?}");
    drop(srv);
    drop(db);
}

/// Every conversation's history as an agent reads it over HTTP, and the
/// conversation list: what a migration must keep.
async fn everything(srv: &Server, token: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (status, list) = get_json(srv, "/api/conversations?limit=500", Some(token)).await;
    assert_eq!(status, 200, "{list}");
    let mut list: Vec<serde_json::Value> = list.as_array().expect("list").clone();
    list.sort_by_key(|c| c["id"].as_str().unwrap_or("").to_string());
    let mut histories = Vec::new();
    for c in &list {
        let id = str_of(c, "id");
        let (status, page) = get_json(srv, &format!("/api/conversations/{id}/messages?limit=500"), Some(token)).await;
        assert_eq!(status, 200, "{page}");
        histories.push(page);
    }
    (list, histories)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_sqlite_node_into_postgres_with_the_same_history() {
    let Some(db) = pg::TestDb::create() else { return };
    const SECRET: &str = "a-shared-signing-secret-0123456789";
    let dir = data_dir();
    add_agent(dir.path(), "bo", "pw-bo-1", 5);
    let mut srv = Server::start_in(&dir, &["--secret", SECRET, "--database", ""]);
    let mut bo = Client::agent_in(&srv, "bo", "pw-bo-1", "support").await;
    // Closed and rated, with a note and read marks.
    let mut ann = Client::customer(&srv, "Ann").await;
    let ann_token = ann.token.clone().expect("token");
    let closed = ann.open_assigned("support").await;
    let closed = str_of(&closed, "id").to_string();
    let a1 = ann.say(&closed, "a1", "我的订单还没到").await;
    bo.say(&closed, "b1", "Let me check 🙂").await;
    bo.note(&closed, "n1", "internal: order 77 stuck").await;
    bo.send_json(&json!({"type":"read","conversation":closed,"seq":u64_of(&a1, "seq")})).await;
    ann.call(json!({"type":"close","conversation":closed}), "conversation").await;
    ann.call(json!({"type":"rate","conversation":closed,"score":4,"comment":"quick, thanks"}), "ack").await;
    // Active.
    let mut cy = Client::customer(&srv, "Cy").await;
    let active = str_of(&cy.open_assigned("support").await, "id").to_string();
    cy.say(&active, "c1", "hello?").await;
    // Queued, with a contact address (bo is full? no: bo goes away first).
    bo.call(json!({"type":"status","availability":"away"}), "ack").await;
    let mut dee = Client::customer(&srv, "Dee").await;
    let queued = str_of(&dee.open("support").await, "id").to_string();
    dee.say(&queued, "d1", "anyone?").await;
    dee.call(json!({"type":"contact","conversation":queued,"email":"dee@example.com"}), "ack").await;
    dee.settle(Duration::from_millis(200)).await;
    let token = login(&srv, "bo", "pw-bo-1").await;
    let before = everything(&srv, &token).await;
    assert_eq!(before.0.len(), 3);
    srv.kill9();

    let out = std::process::Command::new(BIN)
        .args(["migrate", "--from-sqlite"])
        .arg(dir.path().join("parley.db"))
        .args(["--database", &db.url])
        .output()
        .expect("run parley migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("copied 1 agents, 3 conversations"), "{said}");

    // A node on PostgreSQL serves the same history, to the same credentials.
    let pg_dir = data_dir();
    let srv = Server::start_in(&pg_dir, &["--secret", SECRET, "--database", &db.url]);
    let token = login(&srv, "bo", "pw-bo-1").await;
    let after = everything(&srv, &token).await;
    assert_eq!(after.0, before.0, "the conversation list");
    assert_eq!(after.1, before.1, "every history");
    let mut ann = Client::customer_with_token(&srv, "Ann", &ann_token).await;
    let h = ann.sync(&closed, 0, None).await;
    assert!(h["messages"].as_array().unwrap().iter().all(|m| m["kind"] != "note"), "no notes for customers: {h}");
    assert!(h["reads"].as_array().unwrap().iter().any(|r| r["seq"] == a1["seq"]), "read marks kept: {h}");
    ann.call_err(json!({"type":"rate","conversation":closed,"score":5}), "conflict").await;

    // A second copy into a database that is no longer empty is refused.
    let out = std::process::Command::new(BIN)
        .args(["migrate", "--from-sqlite"])
        .arg(dir.path().join("parley.db"))
        .args(["--database", &db.url])
        .output()
        .expect("run parley migrate");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    drop(srv);
    drop(db);
}
