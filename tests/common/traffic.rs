//! Steady chat traffic that outlives node failures, for the cluster tests.
//!
//! Customers each open a conversation and send a text every `every`; agents
//! answer every text they get. Every participant behaves as PROTOCOL.md asks
//! of a client: on a lost connection it reconnects (through nginx, so to any
//! node), says hello with its token and `sync`s each conversation after the
//! last seq it holds. The log records every acked text, every text each
//! participant holds (got live or by sync), the close codes seen and the
//! reconnect times; [`Log::check`] counts, over every acked text, the ones a
//! member never got (lost), and the live deliveries that repeated one
//! already delivered (duplicated) or came below the connection's last seq
//! (out of order: PROTOCOL.md §7.3 promises strictly increasing seqs per
//! connection). A `history` reply may overlap what arrived live meanwhile;
//! a client keeps messages by seq, so that is neither.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default, Debug, Clone)]
pub struct Log {
    /// Acked texts: (conversation, seq) -> sender id.
    pub acked: HashMap<(String, u64), String>,
    /// (participant id, conversation) -> seqs of texts from others held.
    pub got: HashMap<(String, String), HashSet<u64>>,
    /// Live deliveries of a text already delivered live to that participant.
    pub duplicated: usize,
    /// Live deliveries below the last seq delivered on the same connection.
    pub out_of_order: usize,
    /// Close codes seen (None: the connection ended without a close frame, as 1006).
    pub closes: Vec<Option<u16>>,
    /// How each connection that ended without a close frame ended (who, when, what).
    pub drops: Vec<String>,
    /// From a lost connection to the next `welcome`.
    pub reconnects: Vec<Duration>,
    /// Conversation -> its customer's id.
    pub customers: HashMap<String, String>,
    /// Conversation -> the agents it was assigned to.
    pub agents: HashMap<String, HashSet<String>>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub acked: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
}

impl Log {
    /// Over every acked text: the conversation's other members must each
    /// have got it exactly once, in seq order.
    pub fn check(&self) -> Tally {
        let mut t = Tally {
            acked: self.acked.len(),
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            ..Default::default()
        };
        for ((conv, seq), sender) in &self.acked {
            let mut members: Vec<&String> = self.agents.get(conv).map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(c) = self.customers.get(conv) {
                members.push(c);
            }
            for m in members.into_iter().filter(|m| *m != sender) {
                let got = self.got.get(&(m.clone(), conv.clone()));
                if !got.is_some_and(|g| g.contains(seq)) {
                    t.lost += 1;
                }
            }
        }
        t
    }

    /// The p99 of the reconnect times.
    pub fn reconnect_p99(&self) -> Option<Duration> {
        let mut v = self.reconnects.clone();
        v.sort();
        (!v.is_empty()).then(|| v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1])
    }
}

pub enum Who {
    Customer { name: String },
    Agent { token: String },
}

pub struct Traffic {
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub fn new() -> Traffic {
        Traffic { log: Default::default(), stop: Arc::new(AtomicBool::new(false)), tasks: Vec::new() }
    }

    /// Starts a participant talking to `ws_url` (each customer sends a text every `every`).
    pub fn spawn(&mut self, ws_url: &str, who: Who, every: Duration) {
        let p = Participant {
            url: ws_url.to_string(),
            who,
            every,
            log: self.log.clone(),
            stop: self.stop.clone(),
            me: String::new(),
            resume: None,
            last: HashMap::new(),
            live: HashMap::new(),
            conn_last: HashMap::new(),
            next: 0,
        };
        self.tasks.push(tokio::spawn(p.run()));
    }

    /// Stops sending, lets what is in flight arrive, has everyone sync once
    /// more, and returns the log.
    pub async fn finish(self) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        // A participant still holding the log (one that did not stop in time) keeps it; a copy comes back.
        Arc::try_unwrap(self.log).map(|m| m.into_inner().unwrap()).unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

struct Participant {
    url: String,
    who: Who,
    every: Duration,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    me: String,
    /// The customer's resume token.
    resume: Option<String>,
    /// Conversation -> highest seq held.
    last: HashMap<String, u64>,
    /// Conversation -> text seqs delivered live (over every connection).
    live: HashMap<String, HashSet<u64>>,
    /// Conversation -> last seq delivered live on this connection.
    conn_last: HashMap<String, u64>,
    next: u64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Ended {
    Stop,
    Lost,
}

impl Participant {
    async fn run(mut self) {
        let mut lost_at: Option<Instant> = None;
        loop {
            let ws =
                match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&self.url)).await {
                    Ok(Ok((ws, _))) => ws,
                    _ => {
                        if self.stop.load(Ordering::SeqCst) && lost_at.is_none() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            match self.session(ws, &mut lost_at).await {
                Ended::Stop => return,
                Ended::Lost => {
                    lost_at = Some(Instant::now());
                    tokio::time::sleep(Duration::from_millis(50 + rand::random::<u64>() % 200)).await;
                }
            }
        }
    }

    fn hello(&self) -> Value {
        match (&self.who, &self.resume) {
            (Who::Customer { name }, Some(t)) => json!({"type":"hello","role":"customer","name":name,"token":t}),
            (Who::Customer { name }, None) => json!({"type":"hello","role":"customer","name":name}),
            (Who::Agent { token }, _) => json!({"type":"hello","role":"agent","token":token}),
        }
    }

    async fn send(ws: &mut Ws, v: Value) -> bool {
        ws.send(Message::Text(v.to_string())).await.is_ok()
    }

    /// One connection, until it is lost or the traffic stops.
    async fn session(&mut self, mut ws: Ws, lost_at: &mut Option<Instant>) -> Ended {
        self.conn_last.clear();
        if !Self::send(&mut ws, self.hello()).await {
            return Ended::Lost;
        }
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping: Option<Instant> = None;
        let mut final_sync: Option<usize> = None;
        loop {
            if stopping.is_none() && self.stop.load(Ordering::SeqCst) {
                stopping = Some(Instant::now());
            }
            // Once stopped: two seconds for what is in flight, then one more sync of everything.
            if let Some(at) = stopping {
                if final_sync.is_none() && at.elapsed() > Duration::from_secs(2) {
                    final_sync = Some(self.last.len());
                    let convs: Vec<(String, u64)> = self.last.iter().map(|(c, s)| (c.clone(), *s)).collect();
                    for (c, s) in convs {
                        if !Self::send(&mut ws, json!({"type":"sync","conversation":c,"after_seq":s,"ref":"final"}))
                            .await
                        {
                            return Ended::Lost;
                        }
                    }
                }
                if final_sync == Some(0) || at.elapsed() > Duration::from_secs(10) {
                    let _ = ws.close(None).await;
                    return Ended::Stop;
                }
            }
            let frame = tokio::select! {
                f = ws.next() => f,
                _ = tick.tick() => {
                    if stopping.is_none() {
                        if let Who::Customer { .. } = self.who {
                            if let Some(conv) = self.last.keys().next().cloned() {
                                self.next += 1;
                                let cid = format!("{}-{}", self.me, self.next);
                                let m = json!({"type":"send","conversation":conv,"client_id":cid,"body":format!("m{}", self.next)});
                                if !Self::send(&mut ws, m).await { return Ended::Lost; }
                            }
                        }
                    }
                    continue;
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => {
                    self.log.lock().unwrap().closes.push(Some(f.map_or(1005, |f| u16::from(f.code))));
                    return if stopping.is_some() { Ended::Stop } else { Ended::Lost };
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    let what = match &frame {
                        Some(Err(e)) => e.to_string(),
                        _ => "end of stream".to_string(),
                    };
                    let mut log = self.log.lock().unwrap();
                    log.closes.push(None);
                    log.drops.push(format!("{} at {}: {what}", self.me, super::now_ms()));
                    return if stopping.is_some() { Ended::Stop } else { Ended::Lost };
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
            match v["type"].as_str().unwrap_or("") {
                "welcome" => {
                    if let Some(t) = lost_at.take() {
                        self.log.lock().unwrap().reconnects.push(t.elapsed());
                    }
                    self.me = v["user"]["id"].as_str().unwrap_or_default().to_string();
                    if let Some(t) = v["token"].as_str() {
                        if matches!(self.who, Who::Customer { .. }) {
                            self.resume = Some(t.to_string());
                        }
                    }
                    let convs = v["conversations"].as_array().cloned().unwrap_or_default();
                    for c in convs.iter().filter(|c| c["status"] != "closed") {
                        self.track(&c["id"]);
                        self.note_assignee(c);
                    }
                    if self.last.is_empty() {
                        if let Who::Customer { .. } = self.who {
                            if !Self::send(&mut ws, json!({"type":"open","room":"support"})).await {
                                return Ended::Lost;
                            }
                        } else if !Self::send(&mut ws, json!({"type":"join","room":"support"})).await {
                            return Ended::Lost;
                        }
                    } else {
                        if matches!(self.who, Who::Agent { .. })
                            && !Self::send(&mut ws, json!({"type":"join","room":"support"})).await
                        {
                            return Ended::Lost;
                        }
                        // Resume: everything after the last seq held.
                        let convs: Vec<(String, u64)> = self.last.iter().map(|(c, s)| (c.clone(), *s)).collect();
                        for (c, s) in convs {
                            if !Self::send(&mut ws, json!({"type":"sync","conversation":c,"after_seq":s})).await {
                                return Ended::Lost;
                            }
                        }
                    }
                }
                "conversation" => {
                    let c = &v["conversation"];
                    if matches!(self.who, Who::Customer { .. }) && self.last.is_empty() {
                        self.track(&c["id"]);
                        let cid = c["id"].as_str().unwrap_or_default().to_string();
                        self.log.lock().unwrap().customers.insert(cid, self.me.clone());
                    }
                    self.note_assignee(c);
                    // An agent given a conversation reads it from the start.
                    let mine = c["agent"]["id"] == self.me.as_str() && c["status"] == "active";
                    if matches!(self.who, Who::Agent { .. }) && mine {
                        let id = c["id"].as_str().unwrap_or_default().to_string();
                        if !self.last.contains_key(&id) {
                            self.last.insert(id.clone(), 0);
                            if !Self::send(&mut ws, json!({"type":"sync","conversation":id,"after_seq":0})).await {
                                return Ended::Lost;
                            }
                        }
                    }
                }
                "ack" => {
                    if let (Some(conv), Some(seq)) = (v["conversation"].as_str(), v["seq"].as_u64()) {
                        self.log.lock().unwrap().acked.insert((conv.to_string(), seq), self.me.clone());
                    }
                }
                "message" => {
                    let m = &v["message"];
                    self.check_live(m);
                    if let Some(reply) = self.take(m) {
                        if stopping.is_none() && !Self::send(&mut ws, reply).await {
                            return Ended::Lost;
                        }
                    }
                }
                "history" => {
                    let conv = v["conversation"].as_str().unwrap_or_default().to_string();
                    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                    for m in &msgs {
                        let _ = self.take(m);
                    }
                    if v["more"] == true {
                        let s = self.last.get(&conv).copied().unwrap_or(0);
                        let again = json!({"type":"sync","conversation":conv,"after_seq":s,"ref":v["ref"]});
                        if !Self::send(&mut ws, again).await {
                            return Ended::Lost;
                        }
                    } else if v["ref"] == "final" {
                        final_sync = final_sync.map(|n| n.saturating_sub(1));
                    }
                }
                _ => {}
            }
        }
    }

    /// PROTOCOL.md §7.3 on one connection: strictly increasing, never twice.
    fn check_live(&mut self, m: &Value) {
        let (Some(conv), Some(seq)) = (m["conversation"].as_str(), m["seq"].as_u64()) else { return };
        if !self.last.contains_key(conv) {
            return; // not one of this participant's conversations
        }
        let last = self.conn_last.entry(conv.to_string()).or_insert(0);
        let earlier = *last;
        *last = earlier.max(seq);
        let again = m["kind"] == "text" && !self.live.entry(conv.to_string()).or_default().insert(seq);
        let mut log = self.log.lock().unwrap();
        if again || seq == earlier {
            log.duplicated += 1;
        } else if seq < earlier {
            log.out_of_order += 1;
        }
    }

    fn track(&mut self, id: &Value) {
        if let Some(id) = id.as_str() {
            self.last.entry(id.to_string()).or_insert(0);
        }
    }

    fn note_assignee(&self, c: &Value) {
        if let (Some(id), Some(agent)) = (c["id"].as_str(), c["agent"]["id"].as_str()) {
            self.log.lock().unwrap().agents.entry(id.to_string()).or_default().insert(agent.to_string());
        }
    }

    /// Records a message this participant got (live or by sync); an agent
    /// answers a customer's text.
    fn take(&mut self, m: &Value) -> Option<Value> {
        let conv = m["conversation"].as_str()?.to_string();
        let seq = m["seq"].as_u64()?;
        let held = self.last.get_mut(&conv)?;
        *held = (*held).max(seq);
        if m["kind"] != "text" || m["from"]["id"] == self.me.as_str() {
            return None;
        }
        self.log.lock().unwrap().got.entry((self.me.clone(), conv.clone())).or_default().insert(seq);
        match self.who {
            Who::Agent { .. } if m["from"]["role"] == "customer" => {
                self.next += 1;
                let cid = format!("{}-{}", self.me, self.next);
                Some(json!({"type":"send","conversation":conv,"client_id":cid,"body":format!("re {seq}")}))
            }
            _ => None,
        }
    }
}
