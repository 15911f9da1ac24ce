//! Webhooks: conversation and message events posted to the receivers given
//! with `--webhook`, asynchronously, from a bounded queue, so a slow or dead
//! receiver never delays chat. Each body is JSON with an event id, signed with
//! HMAC-SHA256 (`X-Parley-Signature: sha256=<hex>`), tried up to 3 times with
//! backoff; what cannot be delivered is counted and logged.

use crate::config::Config;
use crate::http::metrics::counters;
use crate::protocol::now_ms;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Events waiting to be posted; past this, new ones are dropped (and counted).
const QUEUE: usize = 1024;
/// Posts in flight at once, over all receivers.
const IN_FLIGHT: usize = 64;
/// Tries per event and receiver.
const TRIES: u32 = 3;
/// Wait before the second and third try.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(1000)];

/// One event, serialized once for every receiver.
struct Event {
    body: Arc<str>,
    signature: Arc<str>,
    kind: &'static str,
}

/// The ChatServer's handle: cheap, never blocks.
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
    events: BTreeSet<String>,
    notes: bool,
    key: Vec<u8>,
}

impl Webhooks {
    /// A handle that sends nothing (no `--webhook`).
    pub fn disabled() -> Webhooks {
        Webhooks { tx: None, events: BTreeSet::new(), notes: false, key: Vec::new() }
    }

    /// Starts the delivery task on the current runtime.
    pub fn start(cfg: &Config) -> Result<Webhooks, String> {
        if cfg.webhooks.is_empty() {
            return Ok(Webhooks::disabled());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.webhook_timeout_ms))
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let urls: Arc<[String]> = cfg.webhooks.clone().into();
        actix_web::rt::spawn(dispatch(rx, client, urls));
        Ok(Webhooks {
            tx: Some(tx),
            events: cfg.webhook_events.clone(),
            notes: cfg.webhook_notes,
            key: cfg.webhook_secret.clone().unwrap_or_default().into_bytes(),
        })
    }

    pub fn wants(&self, kind: &str) -> bool {
        self.tx.is_some() && self.events.contains(kind)
    }

    /// Whether internal notes go out as `message.created`.
    pub fn notes(&self) -> bool {
        self.notes
    }

    /// Queues an event; drops it (counted, logged) when the queue is full.
    pub fn emit(&self, kind: &'static str, data: Value) {
        let Some(tx) = &self.tx else { return };
        if !self.events.contains(kind) {
            return;
        }
        let id = crate::auth::new_id("evt_");
        let body = json!({"id": id, "type": kind, "ts": now_ms(), "data": data}).to_string();
        let signature = sign(&self.key, body.as_bytes());
        let ev = Event { body: body.into(), signature: signature.into(), kind };
        if tx.try_send(ev).is_err() {
            counters().webhooks_dropped.inc();
            log::warn!("webhook queue full: {kind} {id} dropped");
        }
    }
}

/// `sha256=<hex of HMAC-SHA256(key, body)>`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

async fn dispatch(mut rx: mpsc::Receiver<Event>, client: reqwest::Client, urls: Arc<[String]>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(ev) = rx.recv().await {
        let ev = Arc::new(ev);
        for url in urls.iter() {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (client, url, ev) = (client.clone(), url.clone(), ev.clone());
            actix_web::rt::spawn(async move {
                deliver(&client, &url, &ev).await;
                drop(permit);
            });
        }
    }
}

async fn deliver(client: &reqwest::Client, url: &str, ev: &Event) {
    for attempt in 0..TRIES {
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-parley-event", ev.kind)
            .header("x-parley-signature", &*ev.signature)
            .body(ev.body.to_string())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                counters().webhooks_delivered.inc();
                return;
            }
            Ok(r) => log::warn!("webhook {} to {url}: status {} (try {})", ev.kind, r.status(), attempt + 1),
            Err(e) if e.is_timeout() => log::warn!("webhook {} to {url}: timed out (try {})", ev.kind, attempt + 1),
            Err(e) => log::warn!("webhook {} to {url}: {e} (try {})", ev.kind, attempt + 1),
        }
        counters().webhooks_failed_tries.inc();
        if let Some(wait) = BACKOFF.get(attempt as usize) {
            actix_web::rt::time::sleep(*wait).await;
        }
    }
    counters().webhooks_dropped.inc();
    log::error!("webhook {} to {url}: dropped after {TRIES} tries", ev.kind);
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
