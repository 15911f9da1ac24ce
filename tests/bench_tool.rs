//! `parley-bench` against real servers: a Parley node, the floor relay
//! (`examples/floor-relay`) and the Socket.IO relay (`bench/socketio-relay.js`).
//! Small runs: they check what the tool counts and reports, not speed.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_parley-bench");

/// Runs parley-bench; returns its exit code, its final JSON line and its stderr.
fn bench(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(BENCH).args(args).output().expect("run parley-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"));
    (out.status.code().unwrap_or(-1), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A relay process that prints `listening http=...` once it accepts connections.
struct Relay(Child);

impl Relay {
    fn start(mut cmd: Command) -> Relay {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start relay");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("relay did not print its listening line");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every message was sent, acked (Parley) and delivered once, in order.
fn assert_clean_run(v: &Value, target: &str) {
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["mode"], "conversations", "{v}");
    assert_eq!(v["target"], target, "{v}");
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent > 0, "{v}");
    assert_eq!(v["delivered"].as_u64(), Some(sent), "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicated"], 0, "{v}");
    assert_eq!(v["out_of_order"], 0, "{v}");
    assert_eq!(v["latency"]["count"].as_u64(), Some(sent), "every delivery has a latency: {v}");
    assert!(v["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["server_cpu_secs_per_million"].as_f64().unwrap() > 0.0, "server CPU read from /proc: {v}");
    assert!(v["delivered_msg_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}

fn bench_agents(n: usize) -> Vec<(String, &'static str, u32)> {
    (0..n).map(|i| (format!("bench{i}"), "bench-password", 5)).collect()
}

fn parley_with_bench_agents(n: usize) -> Server {
    let agents = bench_agents(n);
    let refs: Vec<(&str, &str, u32)> = agents.iter().map(|(a, p, m)| (a.as_str(), *p, *m)).collect();
    // As scripts/bench runs it: every load client comes from 127.0.0.1.
    let flags =
        ["--rate-per-sec", "1000", "--rate-burst", "1000", "--max-conns-per-address", "0", "--opens-per-minute", "0"];
    Server::with_agents(&refs, &flags)
}

#[test]
fn conversations_against_parley_count_acks_and_deliveries() {
    let srv = parley_with_bench_agents(3);
    let v = small_conversations("parley", &srv.addr, srv.pid());
    assert_eq!(v["acked"], v["sent"], "{v}");
    assert_eq!(v["ack_latency"]["count"], v["sent"], "{v}");
    // Read from the server's commit counters in /metrics: every message is a write.
    assert!(v["store_writes_per_commit"].as_f64().is_some_and(|w| w >= 1.0), "{v}");
}

#[test]
fn sweep_reuses_the_accounts_and_writes_a_report_with_a_plot() {
    let srv = parley_with_bench_agents(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.md");
    let (code, v, err) = bench(&[
        "--server",
        &srv.addr,
        "--pid",
        &srv.pid().to_string(),
        "sweep",
        "--pairs",
        "2",
        "--rates",
        "100,200",
        "--duration",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v} {err}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    for r in runs {
        assert_clean_run(r, "parley");
    }
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(md.contains("| 100 |") && md.contains("| 200 |"), "one row per rate: {md}");
    assert!(md.contains("](sweep.svg)"), "{md}");
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}

#[test]
fn idle_storm_and_agent_load_report_their_figures() {
    let srv = parley_with_bench_agents(1);
    let (addr, pid) = (srv.addr.clone(), srv.pid().to_string());

    // agent-load first: the customers that idle and storm leave behind wait in the queue.
    let (code, v, err) =
        bench(&["--server", &addr, "agent-load", "--customers", "4", "--each", "2", "--duration", "2"]);
    assert_eq!(code, 0, "{v} {err}");
    let acked = v["acked"].as_u64().unwrap();
    assert!(acked > 0, "{v}");
    assert_eq!(v["delivered_to_agent"].as_u64(), Some(acked), "{v}");

    let (code, v, err) = bench(&["--server", &addr, "--pid", &pid, "idle", "--connections", "40", "--hold", "1"]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["connections"], 40, "{v}");
    assert!(v["rss_kib_per_connection"].as_f64().is_some(), "{v}");
    assert!(v["server_idle_cpu_percent"].as_f64().is_some(), "{v}");

    let (code, v, err) = bench(&["--server", &addr, "storm", "--customers", "30"]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!((v["resumed"].as_u64(), v["lost"].as_u64()), (Some(30), Some(0)), "{v}");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let port = free_port();
    let (code, v, err) = bench(&["--server", &format!("127.0.0.1:{port}"), "idle"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cannot reach the server"), "{v}");
    assert!(err.contains("cannot reach the server"), "{err}");
}

#[test]
fn missing_bench_accounts_are_named_in_the_error() {
    let srv = Server::start(&[]);
    let (code, v, _) = bench(&["--server", &srv.addr, "conversations", "--pairs", "1", "--duration", "1"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"].as_str().unwrap().contains("parley agent add bench0"), "{v}");
}

/// A small `conversations` run (3 pairs, 300 msg/s for 1 s) of `target` at
/// `addr`, the server being process `pid`; checked by [`assert_clean_run`].
fn small_conversations(target: &str, addr: &str, pid: u32) -> Value {
    let pid = pid.to_string();
    let (code, v, err) = bench(&[
        "--target",
        target,
        "--server",
        addr,
        "--pid",
        &pid,
        "conversations",
        "--pairs",
        "3",
        "--rate",
        "300",
        "--duration",
        "1",
    ]);
    assert_eq!(code, 0, "{v} {err}");
    assert_clean_run(&v, target);
    assert!(err.contains("sent "), "a progress line every second: {err}");
    v
}

/// The floor relay, started with `extra` arguments; and its port.
fn floor_relay(extra: &[&str]) -> (Relay, u16) {
    let exe = Path::new(BIN).parent().unwrap().join("examples").join("floor-relay");
    assert!(exe.exists(), "{} is missing: build it with `cargo build --examples`", exe.display());
    let port = free_port();
    let mut cmd = Command::new(exe);
    cmd.arg(format!("127.0.0.1:{port}")).args(extra);
    (Relay::start(cmd), port)
}

#[test]
fn floor_relay_with_acks_answers_every_frame() {
    let (relay, port) = floor_relay(&["--ack"]);
    let v = small_conversations("relay-ack", &format!("127.0.0.1:{port}"), relay.0.id());
    assert_eq!(v["target"], "relay-ack", "{v}");
    // Every frame sent was answered once, and its ack latency recorded.
    assert_eq!(v["acked"], v["sent"], "{v}");
    assert_eq!(v["ack_latency"]["count"], v["sent"], "{v}");
}

#[test]
fn floor_relay_target_relays_within_rooms() {
    let (relay, port) = floor_relay(&[]);
    let v = small_conversations("relay", &format!("127.0.0.1:{port}"), relay.0.id());
    assert!(v["ack_latency"].is_null(), "a relay has no acks: {v}");

    let addr = format!("127.0.0.1:{port}");
    let (code, v, _) = bench(&["--target", "relay", "--server", &addr, "storm", "--customers", "1"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"].as_str().unwrap().contains("need Parley"), "{v}");
}

#[test]
fn socketio_target_speaks_engine_io() {
    let dir = repo().join("bench");
    // The relay's npm packages come with the test, not from an earlier step.
    // One install at a time: tests run in parallel threads of this process.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/socket.io").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .output()
            .expect("run npm ci in bench/ (is Node.js installed?)");
        assert!(out.status.success(), "npm ci in bench/ failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("socketio-relay.js")).arg(port.to_string());
    let relay = Relay::start(cmd);
    small_conversations("socketio", &format!("127.0.0.1:{port}"), relay.0.id());

    let (addr, pid) = (format!("127.0.0.1:{port}"), relay.0.id().to_string());
    let (code, v, err) = bench(&[
        "--target",
        "socketio",
        "--server",
        &addr,
        "--pid",
        &pid,
        "idle",
        "--connections",
        "20",
        "--hold",
        "1",
    ]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!((v["target"].as_str(), v["connections"].as_u64()), (Some("socketio"), Some(20)), "{v}");
}

#[test]
fn churn_opens_answers_closes_and_rates_conversations_and_samples_memory() {
    let srv = parley_with_bench_agents(2);
    let (code, v, err) = bench(&[
        "--server",
        &srv.addr,
        "--pid",
        &srv.pid().to_string(),
        "churn",
        "--customers",
        "4",
        "--agents",
        "2",
        "--messages",
        "2",
        "--duration",
        "3",
        "--sample-secs",
        "1",
        "--per-second",
        "20",
    ]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["failures"], 0, "{v}");
    let conversations = v["conversations"].as_u64().unwrap();
    assert!(conversations >= 4, "{v}");
    assert_eq!(v["messages"].as_u64(), Some(conversations * 2), "two messages each: {v}");
    assert_eq!(v["answers_received"], v["messages"], "every message answered: {v}");
    let samples = v["samples"].as_array().unwrap();
    assert!(samples.len() >= 2 && samples.iter().all(|s| s["rss_kib"].as_u64().unwrap_or(0) > 0), "{v}");
    // Every conversation was closed and rated, as the server lists them.
    let token = login_sync(&srv);
    let list = ureq_get(&srv, "/api/conversations?status=closed&limit=500", &token);
    let closed = list.as_array().map_or(0, |l| l.len()) as u64;
    assert!(closed >= conversations.min(500), "{closed} closed listed for {conversations} conversations");
    assert!(conversations <= 100, "paced at 20 a second for 3 s: {conversations}");
}

fn login_sync(srv: &Server) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(login(srv, "bench0", "bench-password"))
}

fn ureq_get(srv: &Server, path: &str, token: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { get_json(srv, path, Some(token)).await.1 })
}
