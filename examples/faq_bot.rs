//! A small FAQ bot for Parley's TCP gateway.
//!
//! It logs in over HTTP as a bot account, connects to the gateway, greets every
//! conversation assigned to it, answers a few keywords, and hands the customer
//! to the room's human queue (`transfer` to a room) when they ask for a person.
//!
//! ```sh
//! parley agent add faq --bot --password faq-secret
//! parley --rooms support --bot-first support=faq &
//! cargo run --example faq_bot -- --name faq --password faq-secret
//! ```

use clap::Parser;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "FAQ bot for Parley's TCP gateway")]
struct Args {
    /// Parley's HTTP address (for POST /api/login).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Parley's TCP gateway address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    tcp: String,
    /// The bot's account name (`parley agent add NAME --bot`).
    #[arg(long, default_value = "faq")]
    name: String,
    #[arg(long, env = "FAQ_BOT_PASSWORD")]
    password: String,
    /// Where customers go when they ask for a person (default: the conversation's own room).
    #[arg(long)]
    human_room: Option<String>,
}

/// Keyword answers: (keywords, answer).
const ANSWERS: &[(&[&str], &str)] = &[
    (&["hour", "open", "营业", "时间"], "We answer every day from 8:00 to 22:00 (UTC+8). 我们每天 8:00–22:00 在线。"),
    (
        &["ship", "deliver", "order", "物流", "订单", "快递"],
        "Orders ship within 24 hours; tracking arrives by email. 订单 24 小时内发货，物流单号会发到您的邮箱。",
    ),
    (
        &["return", "refund", "退货", "退款"],
        "You can return anything within 30 days for a full refund. 30 天内可无理由退货退款。",
    ),
];
const HUMAN: &[&str] = &["human", "person", "agent", "someone", "人工", "客服", "真人"];
const GREETING: &str =
    "Hi! I'm the FAQ bot. Ask about opening hours, shipping or returns, or type \"human\" for a person. \
您好！我可以回答营业时间、物流和退货问题，输入“人工”转接客服。";
const FALLBACK: &str = "I can help with opening hours, shipping and returns. Type \"human\" to talk to a person. \
我可以回答营业时间、物流和退货问题，输入“人工”转接客服。";

fn answer(body: &str) -> Option<&'static str> {
    let b = body.to_lowercase();
    ANSWERS.iter().find(|(keys, _)| keys.iter().any(|k| b.contains(k))).map(|(_, a)| *a)
}

fn wants_human(body: &str) -> bool {
    let b = body.to_lowercase();
    HUMAN.iter().any(|k| b.contains(k))
}

async fn write_frame(s: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let b = serde_json::to_vec(v)?;
    s.write_all(&(b.len() as u32).to_be_bytes()).await?;
    s.write_all(&b).await
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Value> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn login(args: &Args) -> Result<String, String> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/login", args.http.trim_end_matches('/')))
        .json(&json!({"name": args.name, "password": args.password}))
        .send()
        .await
        .map_err(|e| format!("login: {e}"))?;
    let status = res.status();
    let body: Value = res.json().await.map_err(|e| format!("login: {e}"))?;
    match body["token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => Err(format!("login refused ({status}): {body}")),
    }
}

/// One connection's life; returns when it ends.
async fn serve(args: &Args, token: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(&args.tcp).await.map_err(|e| format!("connect {}: {e}", args.tcp))?;
    write_frame(&mut s, &json!({"type": "hello", "role": "agent", "token": token})).await.map_err(|e| e.to_string())?;
    let welcome = read_frame(&mut s).await.map_err(|e| e.to_string())?;
    if welcome["type"] != "welcome" {
        return Err(format!("hello refused: {welcome}"));
    }
    let me = welcome["user"]["id"].as_str().unwrap_or_default().to_string();
    eprintln!("faq_bot: connected as {me}");
    let mut greeted: HashSet<String> = HashSet::new();
    let mut handed_off: HashSet<String> = HashSet::new();
    // Conversation id -> room, from the `conversation` frames seen.
    let mut rooms: HashMap<String, String> = HashMap::new();
    let mut n = 0u64;
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut next_id = move || {
        n += 1;
        format!("faq-{run}-{n}")
    };
    let mut mine: Vec<Value> = welcome["conversations"].as_array().cloned().unwrap_or_default();
    loop {
        for c in mine.drain(..) {
            let id = c["id"].as_str().unwrap_or_default().to_string();
            if let Some(r) = c["room"].as_str() {
                rooms.insert(id.clone(), r.to_string());
            }
            let assigned_to_me = c["agent"]["id"] == me.as_str() && c["status"] == "active";
            if assigned_to_me && greeted.insert(id.clone()) {
                let send = json!({"type": "send", "conversation": id, "client_id": next_id(), "body": GREETING});
                write_frame(&mut s, &send).await.map_err(|e| e.to_string())?;
            }
        }
        let f = read_frame(&mut s).await.map_err(|e| e.to_string())?;
        match f["type"].as_str() {
            Some("ping") => write_frame(&mut s, &json!({"type": "pong"})).await.map_err(|e| e.to_string())?,
            Some("conversation") => mine.push(f["conversation"].clone()),
            Some("message") => {
                let m = &f["message"];
                let conv = m["conversation"].as_str().unwrap_or_default().to_string();
                if m["from"]["role"] != "customer" || !greeted.contains(&conv) || handed_off.contains(&conv) {
                    continue;
                }
                let body = m["body"].as_str().unwrap_or_default();
                if wants_human(body) {
                    let reply = "Connecting you to a person now. 正在为您转接人工客服。";
                    let send = json!({"type": "send", "conversation": conv, "client_id": next_id(), "body": reply});
                    write_frame(&mut s, &send).await.map_err(|e| e.to_string())?;
                    let room = args
                        .human_room
                        .clone()
                        .or_else(|| rooms.get(&conv).cloned())
                        .unwrap_or_else(|| "support".to_string());
                    let t = json!({"type": "transfer", "conversation": conv, "to_room": room, "ref": next_id()});
                    write_frame(&mut s, &t).await.map_err(|e| e.to_string())?;
                    handed_off.insert(conv);
                } else {
                    let reply = answer(body).unwrap_or(FALLBACK);
                    let send = json!({"type": "send", "conversation": conv, "client_id": next_id(), "body": reply});
                    write_frame(&mut s, &send).await.map_err(|e| e.to_string())?;
                }
            }
            Some("error") => eprintln!("faq_bot: server says {f}"),
            _ => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut backoff = Duration::from_millis(500);
    loop {
        match login(&args).await {
            Ok(token) => match serve(&args, &token).await {
                Ok(()) => {}
                Err(e) => eprintln!("faq_bot: connection ended: {e}"),
            },
            Err(e) => eprintln!("faq_bot: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(20));
    }
}
