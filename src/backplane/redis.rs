//! The Redis backplane of a cluster node (`--redis`).
//!
//! Every effect this node commits is delivered here at once (as on one node)
//! and published on its room's channel, `parley:CLUSTER:room:ROOM`, as one JSON
//! envelope `{"n": node, "e": effect}` serialized once. The node subscribes to
//! the channels of its configured rooms and hands what other nodes published
//! to the ChatServer ([`Incoming`]), which delivers it to its own sessions.
//!
//! Redis is never the only copy of anything: pub/sub drops what is published
//! while a subscriber is away, so each (re)subscription is announced as
//! [`Incoming::Resubscribed`] and the ChatServer reloads from the store what
//! it may have missed; messages carry their seq, and a gap is filled from the
//! store. Redis I/O runs on its own thread, never on an actor's.

use super::{Backplane, Effect, Incoming};
use crate::http::metrics::counters;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Effects waiting to be published; past this they are dropped (and counted):
/// other nodes fill the gap from the store.
const PUBLISH_QUEUE: usize = 65_536;
/// Remote effects waiting for the ChatServer; the subscriber waits when it is full.
const INCOMING_QUEUE: usize = 65_536;
/// Most effects sent to Redis in one pipeline.
const PIPELINE: usize = 512;
/// Longest wait for Redis to answer a pipeline or a connection attempt.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Waits between reconnection attempts, growing to the last.
const BACKOFF: [u64; 5] = [100, 200, 500, 1000, 2000];

/// Whether the subscription is up: 0 not configured, 1 up, 2 down.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Why the backplane cannot serve, for `/readyz` (None: fine, or not configured).
pub fn unready() -> Option<&'static str> {
    (STATE.load(Ordering::Relaxed) == 2).then_some("backplane (Redis) unreachable")
}

/// For `/metrics`: 1 subscribed, 0 not (None: no Redis configured).
pub fn up() -> Option<i64> {
    match STATE.load(Ordering::Relaxed) {
        0 => None,
        s => Some(i64::from(s == 1)),
    }
}

/// The channel of a room in a cluster (named by its database: two clusters
/// may share one Redis).
pub fn channel(cluster: &str, room: &str) -> String {
    format!("parley:{cluster}:room:{room}")
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    n: &'a str,
    e: &'a Effect,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    n: String,
    e: Effect,
}

pub struct RedisBackplane {
    node: Arc<str>,
    cluster: String,
    /// Each configured room's channel name, made once (not per effect).
    channels: HashMap<String, Arc<str>>,
    out: mpsc::Sender<(Arc<str>, Vec<u8>)>,
}

impl Backplane for RedisBackplane {
    fn publish(&mut self, room: &str, effect: Effect) -> Option<Effect> {
        let ch = match self.channels.get(room) {
            Some(ch) => ch.clone(),
            None => Arc::from(channel(&self.cluster, room)),
        };
        match serde_json::to_vec(&EnvelopeOut { n: &self.node, e: &effect }) {
            Ok(bytes) => {
                if self.out.try_send((ch, bytes)).is_err() {
                    counters().backplane_dropped.inc();
                }
            }
            Err(e) => log::error!("cannot encode an effect for the backplane: {e}"),
        }
        Some(effect)
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Starts the backplane's thread. A bad URL is refused here; an unreachable
/// Redis is not (the node serves its own sessions meanwhile, `/readyz`
/// says why, and it connects when Redis answers).
pub fn start(
    url: &str,
    cluster: &str,
    node: &str,
    rooms: &[String],
) -> Result<(RedisBackplane, mpsc::Receiver<Incoming>), String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis: `{url}` is not a Redis URL ({e})"))?;
    let (out_tx, out_rx) = mpsc::channel(PUBLISH_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
    let channels: Vec<String> = rooms.iter().map(|r| channel(cluster, r)).collect();
    let names = rooms.iter().zip(&channels).map(|(r, ch)| (r.clone(), Arc::from(ch.as_str()))).collect();
    let node: Arc<str> = Arc::from(node);
    let me = node.clone();
    STATE.store(2, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("parley-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return log::error!("cannot start the Redis backplane's runtime: {e}"),
            };
            rt.block_on(async move {
                tokio::spawn(publisher(client.clone(), out_rx));
                subscriber(client, channels, me, in_tx).await;
            });
        })
        .map_err(|e| format!("cannot start the Redis backplane's thread: {e}"))?;
    Ok((RedisBackplane { node, cluster: cluster.to_string(), channels: names, out: out_tx }, in_rx))
}

async fn publisher(client: redis::Client, mut rx: mpsc::Receiver<(Arc<str>, Vec<u8>)>) {
    let mut attempt = 0;
    loop {
        let conn = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection()).await;
        let mut conn = match conn {
            Ok(Ok(c)) => {
                attempt = 0;
                c
            }
            other => {
                if attempt == 0 {
                    let why = other.err().map_or_else(|| "refused".to_string(), |_| "timed out".to_string());
                    log::warn!("backplane: cannot connect to Redis to publish ({why}); retrying");
                }
                tokio::time::sleep(Duration::from_millis(BACKOFF[attempt.min(BACKOFF.len() - 1)])).await;
                attempt += 1;
                continue;
            }
        };
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < PIPELINE {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for (ch, payload) in &batch {
                pipe.publish(&**ch, payload.as_slice()).ignore();
            }
            let sent: Result<redis::RedisResult<()>, _> =
                tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut conn)).await;
            match sent {
                Ok(Ok(())) => counters().backplane_published.inc_by(batch.len() as u64),
                _ => {
                    // Lost with the connection; other nodes fill the gap from the store.
                    counters().backplane_dropped.inc_by(batch.len() as u64);
                    log::warn!("backplane: publishing to Redis failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn subscriber(client: redis::Client, channels: Vec<String>, me: Arc<str>, tx: mpsc::Sender<Incoming>) {
    let mut attempt = 0;
    let mut first = true;
    loop {
        match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(mut ps)) => {
                let subscribed = tokio::time::timeout(REDIS_TIMEOUT, ps.subscribe(channels.clone())).await;
                if matches!(subscribed, Ok(Ok(()))) {
                    attempt = 0;
                    STATE.store(1, Ordering::Relaxed);
                    if !std::mem::take(&mut first) {
                        counters().backplane_reconnects.inc();
                    }
                    log::info!("backplane: subscribed to {} room channel(s) on Redis", channels.len());
                    if tx.send(Incoming::Resubscribed).await.is_err() {
                        return;
                    }
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        match serde_json::from_slice::<EnvelopeIn>(msg.get_payload_bytes()) {
                            Ok(env) if *env.n == *me => {}
                            Ok(env) => {
                                counters().backplane_received.inc();
                                if tx.send(Incoming::Effect { node: env.n, effect: Box::new(env.e) }).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => log::warn!("backplane: an effect that does not decode ({e}); skipped"),
                        }
                    }
                    log::warn!("backplane: lost the Redis subscription; reconnecting");
                }
            }
            _ if attempt == 0 => log::warn!("backplane: cannot subscribe on Redis; retrying"),
            _ => {}
        }
        STATE.store(2, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(BACKOFF[attempt.min(BACKOFF.len() - 1)])).await;
        attempt += 1;
    }
}
