//! The `parley agent` command line (docs/DEV-CONTRACT.md).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_the_same_agent_twice_fails_with_a_message() {
    let dir = data_dir();
    add_agent(dir.path(), "ann", "pw-ann-1", 5);
    let out = cli(dir.path(), &["agent", "add", "ann", "--password", "other-pw", "--max-active", "3"]);
    assert!(!out.status.success(), "duplicate add succeeded: {}", stdout_of(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "duplicate add failed without a message on stderr"
    );
    // The original password still works.
    let srv = Server::start_in(&dir, &[]);
    login(&srv, "ann", "pw-ann-1").await;
    let (status, _) = post_json(&srv, "/api/login", None, &json!({"name":"ann","password":"other-pw"})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_list_shows_agents_and_remove_removes_them() {
    let dir = data_dir();
    add_agent(dir.path(), "ann", "pw-ann-1", 5);
    add_agent(dir.path(), "bob", "pw-bob-1", 2);
    let out = cli(dir.path(), &["agent", "list"]);
    assert!(out.status.success(), "{out:?}");
    let listed = stdout_of(&out);
    assert!(listed.contains("ann") && listed.contains("bob"), "agent list: {listed}");

    let out = cli(dir.path(), &["agent", "remove", "bob"]);
    assert!(out.status.success(), "{out:?}");
    let listed = stdout_of(&cli(dir.path(), &["agent", "list"]));
    assert!(listed.contains("ann"), "agent list: {listed}");
    assert!(!listed.contains("bob"), "bob still listed after remove: {listed}");

    let out = cli(dir.path(), &["agent", "remove", "bob"]);
    assert!(!out.status.success(), "removing a missing agent should fail");

    let srv = Server::start_in(&dir, &[]);
    login(&srv, "ann", "pw-ann-1").await;
    let (status, body) = post_json(&srv, "/api/login", None, &json!({"name":"bob","password":"pw-bob-1"})).await;
    assert_eq!(status, 401, "removed agent logged in: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_max_active_from_cli_caps_assignments() {
    let srv = Server::with_agents(&[("ann", "pw-ann-1", 1)], &[]);
    let mut ann = Client::agent_in(&srv, "ann", "pw-ann-1", "support").await;
    let mut first = Client::customer(&srv, "First").await;
    let c1 = str_of(&first.open("support").await, "id").to_string();
    ann.recv_event(&c1, "assigned").await;
    let mut second = Client::customer(&srv, "Second").await;
    let conv = second.open("support").await;
    second
        .expect_none(Duration::from_millis(500), "assignment past max-active 1", |f| {
            f["type"] == "conversation" && f["conversation"]["status"] == "active"
        })
        .await;
    assert_eq!(conv["status"], "queued", "{conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_agents_creates_an_admin_that_can_log_in() {
    let srv = Server::start(&[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let pw = loop {
        let found = srv
            .stdout_lines()
            .iter()
            .find_map(|l| l.strip_prefix("created agent admin with password ").map(|p| p.trim().to_string()));
        if let Some(pw) = found {
            break pw;
        }
        assert!(Instant::now() < deadline, "no `created agent admin` line: {:?}", srv.stdout_lines());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (token, agent) = login_agent(&srv, "admin", &pw).await;
    assert!(!token.is_empty());
    assert_eq!(agent["name"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused_with_a_message() {
    let dir = data_dir();
    add_agent(dir.path(), "ann", "pw-ann-1", 5);
    let srv = Server::start_in(&dir, &[]);
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--tcp-listen", "", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run a second server");
    assert!(!out.status.success(), "a second server started: {}", stdout_of(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another parley server is using the data dir"), "{err}");
    // The first one is untouched, and agent commands still work beside it.
    login(&srv, "ann", "pw-ann-1").await;
    let out = cli(dir.path(), &["agent", "list"]);
    assert!(out.status.success() && stdout_of(&out).contains("ann"), "{}", stdout_of(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_a_newer_schema_is_refused_with_a_message() {
    let dir = data_dir();
    add_agent(dir.path(), "ann", "pw-ann-1", 5);
    let db = rusqlite::Connection::open(dir.path().join("parley.db")).expect("open the database");
    db.pragma_update(None, "user_version", 99).expect("set user_version");
    drop(db);
    let out = cli(dir.path(), &["agent", "list"]);
    assert!(!out.status.success(), "{}", stdout_of(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema version 99") && err.contains("newer Parley"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_delay_out_of_range_is_refused_with_a_message() {
    let dir = data_dir();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--tcp-listen", "", "--fold-after-ms", "5", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run the server");
    assert!(!out.status.success(), "started with --fold-after-ms 5: {}", stdout_of(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fold-after-ms") && err.contains("10..=600000"), "{err}");
}
