//! parley-bench: load for a Parley server, speaking protocol v1 the way real
//! clients do (hello, open, send with client_id, wait for ack, receive message).
//! One thread drives every connection, so one core of load can be measured
//! against one core of server.
//!
//! Modes: `idle`, `conversations`, `agent-load`, `storm`, `sweep`. Each prints a
//! progress line every second on stderr and ends with one JSON line on stdout.
//!
//! `--target relay` and `--target socketio` run `idle`, `conversations` and
//! `sweep` against the comparison points of `scripts/bench` instead: the floor
//! relay (`bench/floor-relay.rs`) and a Socket.IO 4 room relay
//! (`bench/socketio-relay.js`). A conversation is then a room of two members;
//! with no acks there, a message is lost when it was sent and never arrived.

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;
type Tx = SplitSink<Ws, Message>;
type Rx = SplitStream<Ws>;

/// How long any single expected reply may take before the run fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the senders stop, how long a run waits with nothing arriving before
/// it counts what has not arrived as lost.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(name = "parley-bench", about = "Load and latency measurements for a Parley server")]
struct Cli {
    /// Server address (HTTP and WebSocket).
    #[arg(long, global = true, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Server process id, to read its memory and CPU from /proc.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// More server processes (a cluster's other nodes), comma separated:
    /// their CPU counts with --pid's.
    #[arg(long, global = true, value_delimiter = ',')]
    also_pids: Vec<u32>,
    /// Other processes whose CPU per message is reported apart, NAME=PID or
    /// NAME=comm:PROCESSNAME (every process of that name, e.g. postgres),
    /// comma separated (a cluster's Redis, nginx and PostgreSQL).
    #[arg(long, global = true, value_delimiter = ',')]
    cost_pids: Vec<String>,
    /// A cluster's nodes (IP:PORT, each started with --node-id IP:PORT):
    /// each conversation's agent connects straight to a node other than the
    /// one its customer reached through --server (nginx).
    #[arg(long, global = true, value_delimiter = ',')]
    agent_servers: Vec<SocketAddr>,
    /// Source addresses to spread connections over: 127.0.0.2 .. 127.0.0.(N+1)
    /// (each address gives about 28,000 ports).
    #[arg(long, global = true, default_value_t = 1)]
    sources: u8,
    /// What the server is: Parley, or one of the comparison relays.
    #[arg(long, global = true, value_enum, default_value_t = Target::Parley)]
    target: Target,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A Parley server: protocol v1, acks, storage.
    Parley,
    /// The floor relay of bench/floor-relay.rs: `/ws?room=NAME`, frames copied to the room.
    Relay,
    /// The floor relay started with `--ack`: it also answers each frame to its
    /// sender (`ack:t:MICROS`), which is recorded as the ack latency.
    RelayAck,
    /// A Socket.IO 4 server relaying `msg` events within the room of `?room=NAME`.
    Socketio,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Parley => "parley",
            Target::Relay => "relay",
            Target::RelayAck => "relay-ack",
            Target::Socketio => "socketio",
        }
    }
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// N customer connections (hello + open) held for T seconds: server memory per connection and idle CPU.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
    /// R conversations (customer + agent), both sides sending at a fixed total rate.
    Conversations(ConvArgs),
    /// One agent serving many customers who each send at a fixed rate.
    AgentLoad {
        #[arg(long, default_value_t = 50)]
        customers: usize,
        /// Messages per second per customer.
        #[arg(long, default_value_t = 1.0)]
        each: f64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[command(flatten)]
        agents: AgentAccounts,
    },
    /// N customers cut at once, reconnecting with their resume token and `sync`.
    Storm {
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        #[command(flatten)]
        agents: AgentAccounts,
    },
    /// Conversations that come and go for a long while: C customers at a
    /// time each open, exchange K messages with an agent (who answers each),
    /// close, rate and leave, then start over; the server's resident memory
    /// is sampled along the way (does it level off?).
    Churn {
        /// Customers at a time.
        #[arg(long, default_value_t = 50)]
        customers: usize,
        /// Agent accounts answering (PREFIX0 ..), each with capacity for its share.
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Messages each customer sends per conversation (each is answered).
        #[arg(long, default_value_t = 4)]
        messages: usize,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Seconds between memory samples.
        #[arg(long, default_value_t = 30)]
        sample_secs: u64,
        /// New conversations per second in all (0: as fast as they go).
        #[arg(long, default_value_t = 0.0)]
        per_second: f64,
        #[command(flatten)]
        accounts: AgentAccounts,
    },
    /// `conversations` at rising rates; writes a markdown report with an SVG plot.
    Sweep {
        #[command(flatten)]
        conv: ConvArgs,
        /// Total rates to try, msg/s.
        #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000,20000")]
        rates: Vec<u64>,
        #[arg(long, default_value = "docs/bench-sweep.md")]
        out: String,
        /// Stop rising once a rate's p99 passes this (the server is saturated), ms.
        #[arg(long, default_value_t = 1000.0)]
        stop_p99_ms: f64,
    },
}

#[derive(Args, Debug, Clone)]
struct AgentAccounts {
    /// Agent accounts are PREFIX0, PREFIX1, ... (create them with `parley agent add`).
    #[arg(long, default_value = "bench")]
    agent_prefix: String,
    #[arg(long, default_value = "bench-password")]
    agent_password: String,
}

#[derive(Args, Debug, Clone)]
struct ConvArgs {
    /// Conversations, each with its own agent account.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total messages per second offered, both sides together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Message body size in bytes (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    #[command(flatten)]
    agents: AgentAccounts,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(cli)) {
        Ok(v) => println!("{v}"),
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("parley-bench: {msg}");
    println!("{}", json!({"ok": false, "error": msg}));
    std::process::exit(1);
}

async fn run(cli: Cli) -> Result<Value, String> {
    let ctx = Ctx {
        server: cli.server,
        pid: cli.pid,
        also_pids: cli.also_pids.clone(),
        costs: cli.cost_pids.iter().map(|s| parse_cost(s)).collect::<Result<_, _>>()?,
        agent_servers: cli.agent_servers.clone(),
        sources: cli.sources.max(1),
        target: cli.target,
        next: RefCell::new(0),
        tokens: RefCell::default(),
    };
    check_reachable(&ctx).await?;
    if ctx.target != Target::Parley
        && matches!(cli.mode, Mode::AgentLoad { .. } | Mode::Storm { .. } | Mode::Churn { .. })
    {
        return Err(
            "agent-load, storm and churn need Parley (--target parley): the relays have no agents or resume".into()
        );
    }
    match cli.mode {
        Mode::Idle { connections, hold } => idle(&ctx, connections, hold).await,
        Mode::Conversations(a) => conversations(&ctx, &a).await,
        Mode::AgentLoad { customers, each, duration, agents } => {
            agent_load(&ctx, customers, each, duration, &agents).await
        }
        Mode::Storm { customers, agents } => storm(&ctx, customers, &agents).await,
        Mode::Churn { customers, agents, messages, duration, sample_secs, per_second, accounts } => {
            let plan = ChurnPlan { customers, agents, messages, duration, sample_secs, per_second };
            churn(&ctx, plan, &accounts).await
        }
        Mode::Sweep { conv, rates, out, stop_p99_ms } => sweep(&ctx, &conv, &rates, &out, stop_p99_ms).await,
    }
}

struct Ctx {
    server: SocketAddr,
    pid: Option<u32>,
    also_pids: Vec<u32>,
    costs: Vec<(String, Cost)>,
    agent_servers: Vec<SocketAddr>,
    sources: u8,
    target: Target,
    next: RefCell<usize>,
    /// Agent tokens by account name: each account logs in once per run.
    tokens: RefCell<HashMap<String, String>>,
}

/// Parley's store commits and writes so far, from `GET /metrics` (None on a relay).
async fn store_counters(ctx: &Ctx) -> Option<(u64, u64)> {
    if ctx.target != Target::Parley || !ctx.agent_servers.is_empty() {
        return None;
    }
    let text = reqwest::get(format!("http://{}/metrics", ctx.server)).await.ok()?.text().await.ok()?;
    let value =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).map(|v| v as u64);
    Some((value("parley_store_commits_total ")?, value("parley_store_writes_total ")?))
}

async fn check_reachable(ctx: &Ctx) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(ctx.server)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot reach the server at {}: {e} (is it running? --server ADDR)", ctx.server)),
        Err(_) => Err(format!("cannot reach the server at {}: connect timed out", ctx.server)),
    }
}

// ---------------------------------------------------------------- connections

/// A Parley WebSocket connection.
async fn connect(ctx: &Ctx) -> Result<(Tx, Rx), String> {
    connect_path(ctx, "/ws").await
}

async fn connect_path(ctx: &Ctx, path: &str) -> Result<(Tx, Rx), String> {
    connect_to(ctx, ctx.server, path).await
}

async fn connect_to(ctx: &Ctx, server: SocketAddr, path: &str) -> Result<(Tx, Rx), String> {
    let n = {
        let mut next = ctx.next.borrow_mut();
        *next += 1;
        *next
    };
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if ctx.sources > 1 {
        let src = Ipv4Addr::new(127, 0, 0, 2 + (n % ctx.sources as usize) as u8);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = sock.connect(server).await.map_err(|e| format!("connect {server}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{server}{path}");
    let (ws, _) =
        tokio_tungstenite::client_async(url, stream).await.map_err(|e| format!("websocket handshake: {e}"))?;
    Ok(ws.split())
}

async fn send(tx: &mut Tx, v: &Value) -> Result<(), String> {
    tx.send(Message::Text(v.to_string())).await.map_err(|e| format!("send: {e}"))
}

/// The next JSON frame.
async fn next_json(rx: &mut Rx) -> Result<Value, String> {
    loop {
        let m = tokio::time::timeout(REPLY_TIMEOUT, rx.next())
            .await
            .map_err(|_| "no frame from the server in 30 s".to_string())?;
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).map_err(|e| format!("bad JSON: {e}")),
            Some(Ok(Message::Close(c))) => return Err(format!("server closed the connection: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// The first frame that matches, within [`REPLY_TIMEOUT`] in all.
async fn until(rx: &mut Rx, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let wait = async {
        loop {
            let v = next_json(rx).await?;
            if v["type"] == "error" {
                return Err(format!("server error while waiting for {what}: {v}"));
            }
            if pred(&v) {
                return Ok(v);
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait).await.map_err(|_| format!("no {what} from the server in 30 s"))?
}

/// A member of room `room` on a comparison relay, ready to send.
async fn member(ctx: &Ctx, room: &str) -> Result<(Tx, Rx), String> {
    match ctx.target {
        Target::Parley => Err("a room member needs a relay target".into()),
        Target::Relay | Target::RelayAck => connect_path(ctx, &format!("/ws?room={room}")).await,
        Target::Socketio => {
            let (mut tx, mut rx) =
                connect_path(ctx, &format!("/socket.io/?EIO=4&transport=websocket&room={room}")).await?;
            // Engine.IO open packet, then a Socket.IO connect to the main namespace.
            next_text(&mut rx, |t| t.starts_with('0')).await?;
            tx.send(Message::Text("40".into())).await.map_err(|e| format!("send: {e}"))?;
            next_text(&mut rx, |t| t.starts_with("40")).await?;
            Ok((tx, rx))
        }
    }
}

async fn next_text(rx: &mut Rx, pred: impl Fn(&str) -> bool) -> Result<String, String> {
    let wait = async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) if pred(&t) => return Ok(t),
                Ok(_) => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Err("connection ended during the handshake".to_string())
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait).await.map_err(|_| "no handshake reply in 30 s".to_string())?
}

struct Customer {
    tx: Tx,
    rx: Rx,
    token: String,
    conv: String,
    /// The node it reached (`welcome.node`).
    node: String,
}

async fn customer(ctx: &Ctx, name: &str) -> Result<Customer, String> {
    let (mut tx, mut rx) = connect(ctx).await?;
    send(&mut tx, &json!({"type": "hello", "role": "customer", "name": name})).await?;
    let w = until(&mut rx, "welcome", |v| v["type"] == "welcome").await?;
    send(&mut tx, &json!({"type": "open", "ref": "open"})).await?;
    let c = until(&mut rx, "conversation", |v| v["ref"] == "open").await?;
    Ok(Customer {
        tx,
        rx,
        token: w["token"].as_str().unwrap_or_default().to_string(),
        conv: c["conversation"]["id"].as_str().unwrap_or_default().to_string(),
        node: w["node"].as_str().unwrap_or_default().to_string(),
    })
}

async fn login(ctx: &Ctx, name: &str, password: &str) -> Result<String, String> {
    if let Some(t) = ctx.tokens.borrow().get(name) {
        return Ok(t.clone());
    }
    let url = format!("http://{}/api/login", ctx.server);
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(json!({"name": name, "password": password}).to_string())
        .send()
        .await
        .map_err(|e| format!("login {name}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| format!("login {name}: {e}"))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match v["token"].as_str() {
        Some(t) if status.is_success() => {
            ctx.tokens.borrow_mut().insert(name.to_string(), t.to_string());
            Ok(t.to_string())
        }
        _ => Err(format!(
            "login {name} refused ({status}); create the bench accounts first: \
             parley agent add {name} --password PW --max-active N"
        )),
    }
}

struct Agent {
    tx: Tx,
    rx: Rx,
}

async fn agent(ctx: &Ctx, token: &str) -> Result<Agent, String> {
    agent_at(ctx, ctx.server, token).await
}

async fn agent_at(ctx: &Ctx, server: SocketAddr, token: &str) -> Result<Agent, String> {
    let (mut tx, mut rx) = connect_to(ctx, server, "/ws").await?;
    send(&mut tx, &json!({"type": "hello", "role": "agent", "token": token})).await?;
    until(&mut rx, "welcome", |v| v["type"] == "welcome").await?;
    Ok(Agent { tx, rx })
}

fn is_assignment(v: &Value, conv: &str) -> bool {
    v["type"] == "conversation" && v["conversation"]["id"] == conv && v["conversation"]["status"] == "active"
}

// ---------------------------------------------------------------- measurements

/// CPU seconds of the server's processes (--pid and --also-pids) so far.
fn server_cpu(ctx: &Ctx) -> Option<f64> {
    let first = proc_cpu_secs(ctx.pid?)?;
    Some(first + ctx.also_pids.iter().filter_map(|p| proc_cpu_secs(*p)).sum::<f64>())
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of a cost entry: one process, or (`comm:NAME`) every process
/// of that name now (PostgreSQL's backends).
fn cost_cpu_secs(what: &Cost) -> Option<f64> {
    match what {
        Cost::Pid(p) => proc_cpu_secs(*p),
        Cost::Comm(name) => {
            let mut total = 0.0;
            for e in std::fs::read_dir("/proc").ok()?.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
                let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
                let comm = s.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c);
                if comm == Some(name.as_str()) {
                    total += proc_cpu_secs(pid).unwrap_or(0.0);
                }
            }
            Some(total)
        }
    }
}

/// A process (or processes) whose CPU per message is reported apart.
#[derive(Clone, Debug)]
enum Cost {
    Pid(u32),
    Comm(String),
}

/// One `--cost-pids` entry: NAME=PID or NAME=comm:PROCESSNAME.
fn parse_cost(s: &str) -> Result<(String, Cost), String> {
    let bad = || format!("--cost-pids: `{s}` is not NAME=PID or NAME=comm:PROCESSNAME");
    let (name, what) = s.split_once('=').ok_or_else(bad)?;
    let cost = match what.strip_prefix("comm:") {
        Some(comm) => Cost::Comm(comm.to_string()),
        None => Cost::Pid(what.parse().map_err(|_| bad())?),
    };
    Ok((name.to_string(), cost))
}

/// utime + stime of a process, in seconds (USER_HZ = 100 on Linux).
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits: a few tens of KiB.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| fail("histogram bounds"))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| round3(h.value_at_quantile(q) as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": round3(h.max() as f64 / 1000.0),
    })
}

// ---------------------------------------------------------------- idle

async fn idle(ctx: &Ctx, n: usize, hold: u64) -> Result<Value, String> {
    let rss0 = ctx.pid.and_then(proc_rss_kib);
    let started = Instant::now();
    let mut readers = Vec::with_capacity(n);
    let mut last = Instant::now();
    for i in 0..n {
        let (mut tx, mut rx) = match ctx.target {
            Target::Parley => customer(ctx, &format!("idle{i}")).await.map(|c| (c.tx, c.rx))?,
            _ => member(ctx, &format!("idle{i}")).await?,
        };
        // Keep reading (and so answering pings) from the moment it is connected.
        readers.push(tokio::task::spawn_local(async move {
            while let Some(Ok(m)) = rx.next().await {
                // An Engine.IO ping; tungstenite answers WebSocket pings itself.
                if matches!(&m, Message::Text(t) if t == "2") && tx.send(Message::Text("3".into())).await.is_err() {
                    break;
                }
            }
        }));
        if last.elapsed() > Duration::from_secs(1) {
            eprintln!("idle: {} of {n} connected", i + 1);
            last = Instant::now();
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = ctx.pid.and_then(proc_cpu_secs);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let cpu1 = ctx.pid.and_then(proc_cpu_secs);
    let rss1 = ctx.pid.and_then(proc_rss_kib);
    for r in readers {
        r.abort();
    }
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) => Some(((b.saturating_sub(a)) as f64 / n as f64 * 100.0).round() / 100.0),
        _ => None,
    };
    let idle_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(((b - a) / hold as f64 * 10000.0).round() / 100.0),
        _ => None,
    };
    eprintln!("idle: {n} connections, {per_conn:?} KiB each, server CPU {idle_cpu:?} % while idle");
    Ok(json!({
        "ok": true, "mode": "idle", "target": ctx.target.name(), "connections": n, "connect_secs": round3(connect_secs),
        "server_rss_kib_before": rss0, "server_rss_kib_after": rss1,
        "rss_kib_per_connection": per_conn, "server_idle_cpu_percent": idle_cpu,
    }))
}

// ---------------------------------------------------------------- conversations

/// Counters of one load run (one thread: RefCell is enough).
struct Load {
    epoch: Instant,
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    /// The first `error` frame the server sent, to say what went wrong.
    first_error: Option<String>,
    e2e: Histogram<u64>,
    /// End-to-end latency since the last progress line.
    recent: Histogram<u64>,
    ack: Histogram<u64>,
    /// When the first message was sent and the last one arrived, µs since `epoch`.
    first_send: Option<u64>,
    last_delivery: u64,
    /// Sides that have not finished sending yet.
    sending: usize,
}

impl Load {
    fn new() -> Self {
        Load {
            epoch: Instant::now(),
            sent: 0,
            acked: 0,
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            errors: 0,
            first_error: None,
            e2e: hist(),
            recent: hist(),
            ack: hist(),
            first_send: None,
            last_delivery: 0,
            sending: 0,
        }
    }
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// What one side of a conversation does.
struct SidePlan {
    target: Target,
    conv: String,
    tag: &'static str,
    per_sec: f64,
    secs: u64,
    body_bytes: usize,
}

/// One side of a conversation: sends at `per_sec` for `secs` (the send time
/// in the body), records acks, and records every text message from the other
/// side: end-to-end latency, duplicates and order (by Parley's `seq`, or on a
/// relay by the sender's counter carried in the body).
async fn side(tx: Tx, mut rx: Rx, plan: SidePlan, load: Rc<RefCell<Load>>) {
    load.borrow_mut().sending += 1;
    let tx = Rc::new(tokio::sync::Mutex::new(tx));
    let pending: Rc<RefCell<HashMap<String, u64>>> = Rc::new(RefCell::new(HashMap::new()));
    let reader = {
        let (load, pending, tx, target) = (load.clone(), pending.clone(), tx.clone(), plan.target);
        tokio::task::spawn_local(async move {
            // Highest seq seen per conversation (an agent side may hold many).
            let mut last_seq: HashMap<String, u64> = HashMap::new();
            while let Some(Ok(m)) = rx.next().await {
                let t = match m {
                    Message::Text(t) => t,
                    Message::Close(c) => {
                        let why = c.map_or("no code".to_string(), |c| format!("{} {}", c.code, c.reason));
                        load.borrow_mut().first_error.get_or_insert_with(|| format!("closed by the server: {why}"));
                        break;
                    }
                    _ => continue,
                };
                match target {
                    Target::Parley => on_parley_frame(&t, &mut load.borrow_mut(), &pending, &mut last_seq),
                    Target::Relay | Target::RelayAck => on_relay_body(&t, &mut load.borrow_mut(), &mut last_seq),
                    Target::Socketio if t == "2" => {
                        let _ = tx.lock().await.send(Message::Text("3".into())).await;
                    }
                    Target::Socketio => {
                        if let Some(Ok((_, body))) = t.strip_prefix("42").map(serde_json::from_str::<(String, String)>)
                        {
                            on_relay_body(&body, &mut load.borrow_mut(), &mut last_seq);
                        }
                    }
                }
            }
        })
    };
    if plan.per_sec > 0.0 {
        let period = Duration::from_secs_f64(1.0 / plan.per_sec);
        // Spread the senders' phases so the offered load is smooth.
        tokio::time::sleep(period.mul_f64(rand_fraction())).await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(plan.secs);
        let mut n = 0u64;
        // Client ids are unique per sender for good: an agent account sends again in the next run.
        let nonce = rand::random::<u64>();
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let t0 = load.borrow().micros();
            let mut body = match plan.target {
                Target::Parley => format!("t:{t0}:"),
                _ => format!("t:{t0}:{n}:"),
            };
            while body.len() < plan.body_bytes {
                body.push('x');
            }
            let frame = match plan.target {
                Target::Parley => {
                    let cid = format!("{}{nonce}-{n}", plan.tag);
                    pending.borrow_mut().insert(cid.clone(), t0);
                    json!({"type": "send", "conversation": plan.conv, "client_id": cid, "body": body}).to_string()
                }
                Target::Relay | Target::RelayAck => body,
                Target::Socketio => format!("42[\"msg\",\"{body}\"]"),
            };
            if tx.lock().await.send(Message::Text(frame)).await.is_err() {
                load.borrow_mut().errors += 1;
                break;
            }
            let mut l = load.borrow_mut();
            l.sent += 1;
            l.first_send.get_or_insert(t0);
        }
    }
    if plan.per_sec <= 0.0 {
        // A side that only receives listens for the whole run.
        tokio::time::sleep(Duration::from_secs(plan.secs)).await;
    }
    load.borrow_mut().sending -= 1;
    drain(&load).await;
    reader.abort();
    let mut tx = tx.lock().await;
    // The customer closes, so the next run starts with an empty queue and free agents.
    if plan.target == Target::Parley && plan.tag == "c" && !plan.conv.is_empty() {
        let _ = tx.send(Message::Text(json!({"type": "close", "conversation": plan.conv}).to_string())).await;
    }
    let _ = tx.close().await;
}

/// Once every side has stopped sending, waits until every sent message has
/// arrived, or nothing has arrived for [`DRAIN`]: an overloaded server's late
/// messages count as late, not lost.
async fn drain(load: &RefCell<Load>) {
    let (mut seen, mut since) = (load.borrow().delivered, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let l = load.borrow();
        if l.sending > 0 {
            (seen, since) = (l.delivered, Instant::now());
            continue;
        }
        if l.delivered >= l.sent {
            return;
        }
        if l.delivered != seen {
            (seen, since) = (l.delivered, Instant::now());
        } else if since.elapsed() >= DRAIN {
            return;
        }
    }
}

/// A frame from Parley: an ack of ours, or a message from the other side.
fn on_parley_frame(
    t: &str,
    l: &mut Load,
    pending: &RefCell<HashMap<String, u64>>,
    last_seq: &mut HashMap<String, u64>,
) {
    let Ok(v) = serde_json::from_str::<Value>(t) else { return };
    match v["type"].as_str() {
        Some("ack") => {
            let id = v["client_id"].as_str().unwrap_or_default();
            if let Some(t0) = pending.borrow_mut().remove(id) {
                let now = l.micros();
                let _ = l.ack.record(now.saturating_sub(t0).max(1));
                l.acked += 1;
            }
        }
        Some("message") if v["message"]["kind"] == "text" => {
            let seq = v["message"]["seq"].as_u64().unwrap_or(0);
            let conv = v["message"]["conversation"].as_str().unwrap_or_default();
            let body = v["message"]["body"].as_str().unwrap_or_default();
            on_delivery(l, last_seq.entry(conv.to_string()).or_insert(0), seq, body);
        }
        Some("error") => {
            l.errors += 1;
            l.first_error.get_or_insert_with(|| t.to_string());
        }
        _ => {}
    }
}

/// A body relayed from the other member of a relay's room, `t:MICROS:N:...`,
/// or the `--ack` relay's answer to one of ours, `ack:t:MICROS`.
fn on_relay_body(body: &str, l: &mut Load, last_seq: &mut HashMap<String, u64>) {
    if let Some(ack) = body.strip_prefix("ack:") {
        if let Some(t0) = ack.split(':').nth(1).and_then(|s| s.parse::<u64>().ok()) {
            let now = l.micros();
            let _ = l.ack.record(now.saturating_sub(t0).max(1));
            l.acked += 1;
        }
        return;
    }
    let n = body.split(':').nth(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    on_delivery(l, last_seq.entry(String::new()).or_insert(0), n, body);
}

/// Counts one delivered message: a duplicate, out of order, or its latency.
fn on_delivery(l: &mut Load, last: &mut u64, seq: u64, body: &str) {
    if seq == *last {
        l.duplicated += 1;
        return;
    } else if seq < *last {
        l.out_of_order += 1;
    }
    *last = (*last).max(seq);
    if let Some(t0) = body.split(':').nth(1).and_then(|s| s.parse::<u64>().ok()) {
        let now = l.micros();
        let latency = now.saturating_sub(t0).max(1);
        let _ = l.e2e.record(latency);
        let _ = l.recent.record(latency);
        l.delivered += 1;
        l.last_delivery = now;
    }
}

fn rand_fraction() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen::<f64>()
}

/// Pairs a customer with agent account `i`: the agent joins the room, the
/// customer opens (and is assigned to them), the agent leaves the room so it
/// receives only its own conversation's traffic.
async fn pair(ctx: &Ctx, i: usize, a: &AgentAccounts) -> Result<(Customer, Agent), String> {
    let token = login(ctx, &format!("{}{i}", a.agent_prefix), &a.agent_password).await?;
    let (c, mut ag) = if ctx.agent_servers.is_empty() {
        let mut ag = agent(ctx, &token).await?;
        send(&mut ag.tx, &json!({"type": "join", "room": "support", "ref": "j"})).await?;
        until(&mut ag.rx, "room", |v| v["ref"] == "j").await?;
        (customer(ctx, &format!("c{i}")).await?, ag)
    } else {
        // A cluster: the customer first (through nginx), then the agent on another node.
        let c = customer(ctx, &format!("c{i}")).await?;
        let others: Vec<SocketAddr> = ctx.agent_servers.iter().copied().filter(|s| s.to_string() != c.node).collect();
        let server = others.get(i % others.len().max(1)).copied().unwrap_or(ctx.server);
        let mut ag = agent_at(ctx, server, &token).await?;
        send(&mut ag.tx, &json!({"type": "join", "room": "support", "ref": "j"})).await?;
        (c, ag)
    };
    let conv = c.conv.clone();
    until(&mut ag.rx, "assignment", |v| is_assignment(v, &conv)).await?;
    send(&mut ag.tx, &json!({"type": "leave", "room": "support", "ref": "l"})).await?;
    until(&mut ag.rx, "leave ack", |v| v["ref"] == "l").await?;
    Ok((c, ag))
}

/// One end of a conversation: a connection and the conversation it sends to.
struct End {
    tx: Tx,
    rx: Rx,
    conv: String,
}

/// `n` conversations: Parley customers paired with agent accounts `offset..`,
/// or on a relay, rooms of two members.
async fn make_pairs(ctx: &Ctx, offset: usize, n: usize, a: &AgentAccounts) -> Result<Vec<(End, End)>, String> {
    let mut pairs = Vec::with_capacity(n);
    if ctx.target == Target::Parley {
        // Log every agent in first (a password check each, the slow part), so
        // no connection sits unread through the setup: one that misses three
        // heartbeats is closed by the server.
        for i in offset..offset + n {
            login(ctx, &format!("{}{i}", a.agent_prefix), &a.agent_password).await?;
        }
    }
    for i in offset..offset + n {
        pairs.push(match ctx.target {
            Target::Parley => {
                let (c, ag) = pair(ctx, i, a).await?;
                let conv = c.conv.clone();
                (End { tx: c.tx, rx: c.rx, conv: c.conv }, End { tx: ag.tx, rx: ag.rx, conv })
            }
            _ => {
                let room = format!("r{i}");
                let (tx, rx) = member(ctx, &room).await?;
                let (tx2, rx2) = member(ctx, &room).await?;
                (End { tx, rx, conv: room.clone() }, End { tx: tx2, rx: rx2, conv: room })
            }
        });
    }
    Ok(pairs)
}

async fn conversations(ctx: &Ctx, a: &ConvArgs) -> Result<Value, String> {
    eprintln!("conversations: setting up {} pairs", a.pairs);
    let pairs = make_pairs(ctx, 0, a.pairs, &a.agents).await?;
    run_load(ctx, pairs, a.rate, a.duration, a.body_bytes).await
}

async fn run_load(
    ctx: &Ctx,
    pairs: Vec<(End, End)>,
    rate: u64,
    duration: u64,
    body_bytes: usize,
) -> Result<Value, String> {
    let load = Rc::new(RefCell::new(Load::new()));
    let per_sec = rate as f64 / (2 * pairs.len().max(1)) as f64;
    let cpu0 = server_cpu(ctx);
    let costs0: Vec<Option<f64>> = ctx.costs.iter().map(|(_, c)| cost_cpu_secs(c)).collect();
    let own0 = proc_cpu_secs(std::process::id());
    let store0 = store_counters(ctx).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let target = ctx.target;
    for (c, ag) in pairs {
        let plan = |tag| SidePlan { target, conv: c.conv.clone(), tag, per_sec, secs: duration, body_bytes };
        let (pc, pa) = (plan("c"), plan("a"));
        tasks.push(tokio::task::spawn_local(side(c.tx, c.rx, pc, load.clone())));
        tasks.push(tokio::task::spawn_local(side(ag.tx, ag.rx, pa, load.clone())));
    }
    let progress = tokio::task::spawn_local(progress(load.clone()));
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, server_cpu(ctx)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let costs1: Vec<Option<f64>> = ctx.costs.iter().map(|(_, c)| cost_cpu_secs(c)).collect();
    // Writes per SQLite commit (each commit is one fsync) during the run.
    let writes_per_commit = match (store0, store_counters(ctx).await) {
        (Some((c0, w0)), Some((c1, w1))) if c1 > c0 => Some(round3((w1 - w0) as f64 / (c1 - c0) as f64)),
        _ => None,
    };
    let l = load.borrow();
    // Delivered rate: from the first send to the last arrival.
    let secs = l.last_delivery.saturating_sub(l.first_send.unwrap_or(0)) as f64 / 1e6;
    // Parley promises delivery of what it acked; a relay of what was sent.
    let lost = match target {
        Target::Parley => l.acked.saturating_sub(l.delivered),
        _ => l.sent.saturating_sub(l.delivered),
    };
    Ok(json!({
        "ok": lost == 0 && l.duplicated == 0 && l.out_of_order == 0,
        "mode": "conversations",
        "target": target.name(),
        "offered_msg_per_sec": rate,
        "sent": l.sent, "acked": l.acked, "delivered": l.delivered,
        "delivered_msg_per_sec": (l.delivered as f64 / secs.max(0.001)).round(),
        "lost": lost, "duplicated": l.duplicated, "out_of_order": l.out_of_order, "errors": l.errors,
        "first_error": l.first_error,
        "latency": percentiles(&l.e2e),
        "ack_latency": if matches!(target, Target::Parley | Target::RelayAck) { percentiles(&l.ack) } else { Value::Null },
        "server_cpu_secs": cpu.map(round3),
        "store_writes_per_commit": writes_per_commit,
        "server_cpu_secs_per_million": cpu.map(|c| round3(c / (l.delivered.max(1) as f64) * 1e6)),
        // Other processes' CPU per million delivered (a cluster's Redis, nginx).
        "other_cpu_secs_per_million": ctx.costs.iter().zip(costs0.iter().zip(&costs1)).map(|((name, _), (a, b))| {
            let v = match (a, b) {
                (Some(a), Some(b)) => json!(round3((b - a) / (l.delivered.max(1) as f64) * 1e6)),
                _ => Value::Null,
            };
            (name.clone(), v)
        }).collect::<serde_json::Map<String, Value>>(),
        // The load generator's own share of its core: near 1.0, it, not the server, is the limit.
        "load_cpu_fraction": match (own0, proc_cpu_secs(std::process::id())) {
            (Some(a), Some(b)) => Some(round3((b - a) / wall)),
            _ => None,
        },
    }))
}

async fn progress(load: Rc<RefCell<Load>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut l = load.borrow_mut();
        eprintln!(
            "  sent {} acked {} delivered {} p99 {:.2} ms (last second: p99 {:.2} max {:.2}) errors {}",
            l.sent,
            l.acked,
            l.delivered,
            l.e2e.value_at_quantile(0.99) as f64 / 1000.0,
            l.recent.value_at_quantile(0.99) as f64 / 1000.0,
            l.recent.max() as f64 / 1000.0,
            l.errors
        );
        l.recent.reset();
    }
}

// ---------------------------------------------------------------- agent-load

async fn agent_load(ctx: &Ctx, n: usize, each: f64, duration: u64, a: &AgentAccounts) -> Result<Value, String> {
    let token = login(ctx, &format!("{}0", a.agent_prefix), &a.agent_password).await?;
    let mut ag = agent(ctx, &token).await?;
    send(&mut ag.tx, &json!({"type": "join", "room": "support", "ref": "j"})).await?;
    until(&mut ag.rx, "room", |v| v["ref"] == "j").await?;
    let mut customers = Vec::with_capacity(n);
    for i in 0..n {
        let c = customer(ctx, &format!("load{i}")).await?;
        let conv = c.conv.clone();
        until(&mut ag.rx, "assignment", |v| is_assignment(v, &conv))
            .await
            .map_err(|e| format!("{e} (give {}0 --max-active {n} or more)", a.agent_prefix))?;
        customers.push(c);
    }
    send(&mut ag.tx, &json!({"type": "leave", "room": "support", "ref": "l"})).await?;
    until(&mut ag.rx, "leave ack", |v| v["ref"] == "l").await?;
    let load = Rc::new(RefCell::new(Load::new()));
    let mut tasks = Vec::new();
    for c in customers {
        let plan =
            SidePlan { target: Target::Parley, conv: c.conv, tag: "c", per_sec: each, secs: duration, body_bytes: 64 };
        tasks.push(tokio::task::spawn_local(side(c.tx, c.rx, plan, load.clone())));
    }
    // The agent only receives: its latency is what the agent side sees.
    let plan = SidePlan {
        target: Target::Parley,
        conv: String::new(),
        tag: "a",
        per_sec: 0.0,
        secs: duration,
        body_bytes: 64,
    };
    tasks.push(tokio::task::spawn_local(side(ag.tx, ag.rx, plan, load.clone())));
    let progress = tokio::task::spawn_local(progress(load.clone()));
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let l = load.borrow();
    Ok(json!({
        "ok": l.acked == l.delivered, "mode": "agent-load", "customers": n, "each_per_sec": each,
        "sent": l.sent, "acked": l.acked, "delivered_to_agent": l.delivered,
        "agent_latency": percentiles(&l.e2e), "ack_latency": percentiles(&l.ack),
    }))
}

// ---------------------------------------------------------------- storm

async fn storm(ctx: &Ctx, n: usize, a: &AgentAccounts) -> Result<Value, String> {
    let token = login(ctx, &format!("{}0", a.agent_prefix), &a.agent_password).await?;
    eprintln!("storm: connecting {n} customers");
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(customer(ctx, &format!("storm{i}")).await?);
    }
    let convs: Vec<(String, String)> = held.iter().map(|c| (c.token.clone(), c.conv.clone())).collect();
    // Everyone is cut at once.
    drop(held);
    // While they are away, one message lands in every conversation.
    let http = reqwest::Client::new();
    let mut missed = HashMap::new();
    for (i, (_, conv)) in convs.iter().enumerate() {
        let url = format!("http://{}/api/conversations/{conv}/messages", ctx.server);
        let body = json!({"client_id": format!("storm-{i}-{}", rand_index()), "body": "while you were away"});
        // The server limits an agent's HTTP posts: wait as told (429 Retry-After) and retry.
        let res = loop {
            let res = http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| format!("post: {e}"))?;
            if res.status().as_u16() != 429 {
                break res;
            }
            let wait = res.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        };
        let v: Value = serde_json::from_str(&res.text().await.unwrap_or_default()).unwrap_or(Value::Null);
        missed.insert(conv.clone(), v["seq"].as_u64().ok_or(format!("post refused: {v}"))?);
    }
    eprintln!("storm: {n} reconnecting at once");
    let started = Instant::now();
    let resumed = Rc::new(RefCell::new((0usize, 0usize)));
    let mut tasks = Vec::new();
    for (token, conv) in convs {
        let want = missed[&conv];
        let (server, sources, tally) = (ctx.server, ctx.sources, resumed.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let ctx = Ctx {
                server,
                pid: None,
                also_pids: Vec::new(),
                costs: Vec::new(),
                agent_servers: Vec::new(),
                sources,
                target: Target::Parley,
                next: RefCell::new(rand_index()),
                tokens: RefCell::default(),
            };
            let got = async {
                let (mut tx, mut rx) = connect(&ctx).await?;
                send(&mut tx, &json!({"type": "hello", "role": "customer", "token": token})).await?;
                until(&mut rx, "welcome", |v| v["type"] == "welcome").await?;
                send(&mut tx, &json!({"type": "sync", "conversation": conv, "after_seq": want - 1, "ref": "s"}))
                    .await?;
                let h = until(&mut rx, "history", |v| v["ref"] == "s").await?;
                Ok::<bool, String>(h["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["seq"] == want)))
            }
            .await;
            let mut t = tally.borrow_mut();
            match got {
                Ok(true) => t.0 += 1,
                _ => t.1 += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, lost) = *resumed.borrow();
    Ok(
        json!({"ok": lost == 0, "mode": "storm", "customers": n, "resumed": ok, "lost": lost, "resume_secs": round3(secs)}),
    )
}

// ---------------------------------------------------------------- churn

struct ChurnPlan {
    customers: usize,
    agents: usize,
    messages: usize,
    duration: u64,
    sample_secs: u64,
    per_second: f64,
}

#[derive(Default)]
struct ChurnTally {
    conversations: u64,
    messages: u64,
    failures: u64,
    last_error: Option<String>,
}

/// An agent who joins `support` and answers every customer text in the
/// conversations assigned to them, at once.
async fn answering_agent(ctx: &Ctx, token: &str, replies: Rc<RefCell<u64>>) -> Result<(), String> {
    let (mut tx, mut rx) = connect(ctx).await?;
    send(&mut tx, &json!({"type": "hello", "role": "agent", "token": token})).await?;
    let w = until(&mut rx, "welcome", |v| v["type"] == "welcome").await?;
    let me = w["user"]["id"].clone();
    send(&mut tx, &json!({"type": "join", "room": "support", "ref": "j"})).await?;
    until(&mut rx, "room", |v| v["ref"] == "j").await?;
    tokio::task::spawn_local(async move {
        let mut agent = Agent { tx, rx };
        let mut mine = std::collections::HashSet::new();
        let mut n = 0u64;
        while let Some(Ok(m)) = agent.rx.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
            if v["type"] == "conversation" {
                let c = &v["conversation"];
                let id = c["id"].as_str().unwrap_or_default().to_string();
                if c["status"] == "active" && c["agent"]["id"] == me {
                    mine.insert(id);
                } else {
                    mine.remove(&id);
                }
                continue;
            }
            let for_me = v["message"]["conversation"].as_str().is_some_and(|c| mine.contains(c));
            if v["type"] == "message"
                && for_me
                && v["message"]["kind"] == "text"
                && v["message"]["from"]["role"] == "customer"
            {
                n += 1;
                let reply = json!({"type": "send", "conversation": v["message"]["conversation"],
                                   "client_id": format!("r{n}-{}", rand_index()), "body": "thanks, on it"});
                if send(&mut agent.tx, &reply).await.is_err() {
                    return;
                }
                *replies.borrow_mut() += 1;
            }
        }
    });
    Ok(())
}

/// One customer's whole conversation: open, K messages each answered, close, rate, leave.
async fn churn_once(ctx: &Ctx, i: usize, k: usize) -> Result<usize, String> {
    let mut c = customer(ctx, &format!("churn{i}")).await?;
    until(&mut c.rx, "assignment", |v| is_assignment(v, &c.conv)).await?;
    for m in 0..k {
        let r = format!("s{m}");
        let msg = json!({"type": "send", "conversation": c.conv, "client_id": format!("c{i}-{m}-{}", rand_index()),
                         "body": "where is my order?", "ref": r});
        send(&mut c.tx, &msg).await?;
        until(&mut c.rx, "ack", |v| v["ref"] == r.as_str()).await?;
        let conv = c.conv.clone();
        until(&mut c.rx, "the agent's answer", |v| {
            v["type"] == "message"
                && v["message"]["conversation"] == conv.as_str()
                && v["message"]["from"]["role"] == "agent"
        })
        .await?;
    }
    send(&mut c.tx, &json!({"type": "close", "conversation": c.conv, "ref": "close"})).await?;
    until(&mut c.rx, "close", |v| v["ref"] == "close").await?;
    send(&mut c.tx, &json!({"type": "rate", "conversation": c.conv, "score": 5, "ref": "rate"})).await?;
    until(&mut c.rx, "rating ack", |v| v["ref"] == "rate").await?;
    let _ = c.tx.close().await;
    Ok(k)
}

async fn churn(ctx: &Ctx, p: ChurnPlan, a: &AgentAccounts) -> Result<Value, String> {
    let replies = Rc::new(RefCell::new(0u64));
    for i in 0..p.agents {
        let token = login(ctx, &format!("{}{i}", a.agent_prefix), &a.agent_password).await?;
        answering_agent(ctx, &token, replies.clone()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(p.duration);
    let tally = Rc::new(RefCell::new(ChurnTally::default()));
    let mut workers = Vec::new();
    for w in 0..p.customers {
        let (server, sources, tally) = (ctx.server, ctx.sources, tally.clone());
        let k = p.messages;
        // Each worker starts a conversation every `gap` at most.
        let gap = (p.per_second > 0.0).then(|| Duration::from_secs_f64(p.customers as f64 / p.per_second));
        workers.push(tokio::task::spawn_local(async move {
            let ctx = Ctx {
                server,
                pid: None,
                also_pids: Vec::new(),
                costs: Vec::new(),
                agent_servers: Vec::new(),
                sources,
                target: Target::Parley,
                next: RefCell::new(w * 1000),
                tokens: RefCell::default(),
            };
            let mut i = w;
            while Instant::now() < deadline {
                let began = Instant::now();
                let res = churn_once(&ctx, i, k).await;
                {
                    let mut t = tally.borrow_mut();
                    match res {
                        Ok(sent) => {
                            t.conversations += 1;
                            t.messages += sent as u64;
                        }
                        Err(e) => {
                            t.failures += 1;
                            t.last_error = Some(e);
                        }
                    }
                }
                i += 100_000;
                if let Some(gap) = gap {
                    tokio::time::sleep(gap.saturating_sub(began.elapsed())).await;
                }
            }
        }));
    }
    // Memory samples while it runs.
    let mut samples = Vec::new();
    let rss0 = ctx.pid.and_then(proc_rss_kib);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(p.sample_secs))).await;
        let secs = started.elapsed().as_secs();
        let rss = ctx.pid.and_then(proc_rss_kib);
        let done = tally.borrow().conversations;
        eprintln!("churn: {secs} s, {done} conversations, rss {} MiB", rss.map_or(0, |k| k / 1024));
        samples.push(json!({"secs": secs, "rss_kib": rss, "conversations": done}));
    }
    for w in workers {
        let _ = w.await;
    }
    let t = tally.borrow();
    let replies = *replies.borrow();
    Ok(json!({
        "ok": t.failures == 0,
        "mode": "churn",
        "customers_at_a_time": p.customers,
        "agents": p.agents,
        "duration_secs": p.duration,
        "per_second": p.per_second,
        "conversations": t.conversations,
        "messages": t.messages,
        "answers_sent": replies,
        "answers_received": t.messages,
        "failures": t.failures,
        "last_error": t.last_error,
        "rss_start_kib": rss0,
        "samples": samples,
    }))
}

fn rand_index() -> usize {
    use rand::Rng;
    rand::thread_rng().gen::<u16>() as usize
}

// ---------------------------------------------------------------- sweep

async fn sweep(ctx: &Ctx, a: &ConvArgs, rates: &[u64], out: &str, stop_p99_ms: f64) -> Result<Value, String> {
    let mut rows = Vec::new();
    for &rate in rates {
        eprintln!("sweep: {rate} msg/s");
        // The same agent accounts each time: the previous run's customers closed their conversations.
        let pairs = make_pairs(ctx, 0, a.pairs, &a.agents).await?;
        let row = run_load(ctx, pairs, rate, a.duration, a.body_bytes).await?;
        let p99 = row["latency"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
        rows.push(row);
        if p99 > stop_p99_ms {
            eprintln!("sweep: p99 {p99} ms is past {stop_p99_ms} ms: saturated, stopping here");
            break;
        }
    }
    let svg = std::path::Path::new(out).with_extension("svg");
    std::fs::write(&svg, svg_plot(&rows)).map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    let name = svg.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::write(out, sweep_report(ctx.target, a, &rows, &name)).map_err(|e| format!("cannot write {out}: {e}"))?;
    Ok(json!({
        "ok": rows.iter().all(|r| r["ok"] == true), "mode": "sweep", "target": ctx.target.name(),
        "pairs": a.pairs, "duration_secs": a.duration, "report": out, "runs": rows,
    }))
}

fn sweep_report(target: Target, a: &ConvArgs, rows: &[Value], svg: &str) -> String {
    let what = match target {
        Target::Parley => "conversations (customer + agent)",
        _ => "rooms of two members",
    };
    let mut md = format!(
        "# Latency against offered load: {}\n\n{} {what}, {} s per rate, {}-byte bodies.\n\n",
        target.name(),
        a.pairs,
        a.duration,
        a.body_bytes
    );
    md.push_str(
        "| offered msg/s | delivered msg/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost | dup | ooo \
         | server CPU-s per million | load core busy | store writes per commit |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let l = &r["latency"];
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["offered_msg_per_sec"],
            r["delivered_msg_per_sec"],
            l["p50_ms"],
            l["p90_ms"],
            l["p99_ms"],
            l["p999_ms"],
            l["max_ms"],
            r["lost"],
            r["duplicated"],
            r["out_of_order"],
            r["server_cpu_secs_per_million"],
            r["load_cpu_fraction"],
            r["store_writes_per_commit"].as_f64().map_or("-".to_string(), |w| w.to_string())
        ));
    }
    md.push_str(&format!("\n![Latency percentiles against offered load]({svg})\n"));
    md
}

/// Latency percentiles (log scale) against offered load, as an SVG image.
fn svg_plot(rows: &[Value]) -> String {
    let (w, h, m) = (640.0, 320.0, 50.0);
    let xs: Vec<f64> = rows.iter().map(|r| r["offered_msg_per_sec"].as_f64().unwrap_or(0.0)).collect();
    let xmax = xs.iter().cloned().fold(1.0, f64::max);
    let ymax = rows.iter().map(|r| r["latency"]["p99_ms"].as_f64().unwrap_or(0.0)).fold(1.0, f64::max);
    let span = ymax.log10() + 2.3;
    let px = |x: f64| m + x / xmax * (w - 2.0 * m);
    let py = |y: f64| h - m - (y.max(0.01).log10() + 2.0) / span * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    s.push_str(&format!("<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"));
    s.push_str(&format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m));
    s.push_str(&format!("<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m));
    s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered msg/s</text>\n", w / 2.0, h - 12.0));
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0].into_iter().filter(|v| *v <= ymax * 2.0) {
        s.push_str(&format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms} ms</text>\n", m - 4.0, py(ms) + 4.0));
    }
    for (key, color) in [("p50_ms", "#2b8a3e"), ("p90_ms", "#e67700"), ("p99_ms", "#c92a2a")] {
        let pts: Vec<(f64, f64)> =
            rows.iter().zip(&xs).map(|(r, x)| (px(*x), py(r["latency"][key].as_f64().unwrap_or(0.0)))).collect();
        let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            list.join(" ")
        ));
        if let Some((x, y)) = pts.last() {
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{y:.1}\" dx=\"4\" fill=\"{color}\">{}</text>\n",
                key.trim_end_matches("_ms")
            ));
        }
    }
    for (r, x) in rows.iter().zip(&xs) {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            px(*x),
            h - m + 14.0,
            r["offered_msg_per_sec"]
        ));
    }
    s.push_str("</svg>\n");
    s
}
