//! `GET /metrics` in Prometheus text format: the ChatServer's gauges, read at
//! scrape time, and the process-wide counters below.

use super::AppState;
use crate::chat::messages::GetStats;
use actix_web::{web, HttpResponse};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::OnceLock;

pub struct Counters {
    pub registry: Registry,
    pub ws_connections: IntCounter,
    pub logins_failed: IntCounter,
    pub logins_throttled: IntCounter,
    pub webhooks_delivered: IntCounter,
    pub webhooks_failed_tries: IntCounter,
    pub webhooks_dropped: IntCounter,
    pub sessions_jammed: IntCounter,
    pub store_commits: IntCounter,
    pub backplane_published: IntCounter,
    pub backplane_received: IntCounter,
    pub backplane_dropped: IntCounter,
    pub backplane_reconnects: IntCounter,
    pub gaps_filled: IntCounter,
    pub grace_expiries: IntCounter,
    pub routing_conflicts: IntCounter,
    /// 1 while this node's cluster lease is renewed, 0 once it lapsed.
    pub lease_held: IntGauge,
    backplane_up: IntGauge,
    /// Per room: conversations waiting, agents online (on any node).
    room_queued: IntGaugeVec,
    room_agents_online: IntGaugeVec,
    pub store_writes: IntCounter,
    /// Time from a group's start to its commit, seconds.
    store_commit_seconds: Histogram,
    /// Writes per committed group.
    store_commit_batch: Histogram,
    sessions: IntGauge,
    conversations_in_memory: IntGauge,
    queued: IntGauge,
    active: IntGauge,
    agents_online: IntGauge,
    pending_writes: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    // Names are fixed literals registered once, so creation cannot fail.
    let c = IntCounter::new(name, help).expect("valid metric name");
    let _ = r.register(Box::new(c.clone()));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Fixed names and increasing buckets: creation cannot fail.
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram");
    let _ = r.register(Box::new(h.clone()));
    h
}

impl Counters {
    /// One committed group of `writes` writes that took `took`.
    pub fn observe_commit(&self, took: std::time::Duration, writes: usize) {
        self.store_commit_seconds.observe(took.as_secs_f64());
        self.store_commit_batch.observe(writes as f64);
    }
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
    let _ = r.register(Box::new(g.clone()));
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    let _ = r.register(Box::new(g.clone()));
    g
}

pub fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(|| {
        let r = Registry::new();
        Counters {
            ws_connections: counter(&r, "parley_ws_connections_total", "WebSocket upgrades accepted"),
            logins_failed: counter(&r, "parley_logins_failed_total", "Refused POST /api/login"),
            logins_throttled: counter(&r, "parley_logins_throttled_total", "POST /api/login answered 429"),
            webhooks_delivered: counter(&r, "parley_webhooks_delivered_total", "Webhook events delivered"),
            webhooks_failed_tries: counter(&r, "parley_webhooks_failed_tries_total", "Webhook posts that failed"),
            webhooks_dropped: counter(
                &r,
                "parley_webhooks_dropped_total",
                "Webhook events dropped (queue full or every try failed)",
            ),
            sessions_jammed: counter(&r, "parley_sessions_jammed_total", "Sessions closed with 4008 (queue overflow)"),
            store_commits: counter(&r, "parley_store_commits_total", "Store transactions committed (one fsync each)"),
            store_writes: counter(&r, "parley_store_writes_total", "Writes applied by the store, in its commits"),
            backplane_published: counter(
                &r,
                "parley_backplane_published_total",
                "Effects published to the other nodes (Redis)",
            ),
            backplane_received: counter(
                &r,
                "parley_backplane_received_total",
                "Effects received from the other nodes (Redis)",
            ),
            backplane_dropped: counter(
                &r,
                "parley_backplane_dropped_total",
                "Effects not published (Redis away or queue full); other nodes fill the gap from the store",
            ),
            backplane_reconnects: counter(
                &r,
                "parley_backplane_reconnects_total",
                "Redis subscriptions re-established after a loss",
            ),
            gaps_filled: counter(
                &r,
                "parley_gaps_filled_total",
                "Messages read from the store because the backplane skipped them",
            ),
            grace_expiries: counter(
                &r,
                "parley_grace_expiries_total",
                "Agents whose grace period ended with their conversations re-queued by this node",
            ),
            routing_conflicts: counter(
                &r,
                "parley_routing_conflicts_total",
                "Routing changes the store refused because the conversation or agent changed first (on another node, say); this node reloaded it and chose again",
            ),
            lease_held: gauge(&r, "parley_cluster_lease_held", "1 while this node's cluster lease is renewed"),
            backplane_up: gauge(&r, "parley_backplane_up", "1 while subscribed on Redis (absent without --redis)"),
            room_queued: gauge_vec(&r, "parley_room_queued", "Conversations waiting in the room's queue", "room"),
            room_agents_online: gauge_vec(
                &r,
                "parley_room_agents_online",
                "Agents online in the room, on any node",
                "room",
            ),
            store_commit_seconds: histogram(
                &r,
                "parley_store_commit_seconds",
                "Time to apply and commit one group of writes",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
            ),
            store_commit_batch: histogram(
                &r,
                "parley_store_commit_batch_size",
                "Writes per committed group (group commit)",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ),
            sessions: gauge(&r, "parley_sessions", "Registered sessions"),
            conversations_in_memory: gauge(&r, "parley_conversations_in_memory", "Conversations held in memory"),
            queued: gauge(&r, "parley_conversations_queued", "Conversations waiting in a queue"),
            active: gauge(&r, "parley_conversations_active", "Conversations assigned to an agent"),
            agents_online: gauge(&r, "parley_agents_connected", "Agents with at least one session"),
            pending_writes: gauge(&r, "parley_store_pending_writes", "Writes submitted and not yet committed"),
            registry: r,
        }
    })
}

pub async fn metrics(app: web::Data<AppState>) -> HttpResponse {
    let c = counters();
    if let Ok(s) = app.server.send(GetStats).await {
        c.sessions.set(s.sessions as i64);
        c.conversations_in_memory.set(s.conversations_in_memory as i64);
        c.queued.set(s.queued as i64);
        c.active.set(s.active as i64);
        c.agents_online.set(s.agents_online as i64);
        c.pending_writes.set(s.pending_writes as i64);
        for (room, queued, online) in &s.rooms {
            c.room_queued.with_label_values(&[room]).set(*queued as i64);
            c.room_agents_online.with_label_values(&[room]).set(*online as i64);
        }
    }
    if let Some(up) = crate::backplane::redis::up() {
        c.backplane_up.set(up);
    }
    let mut buf = Vec::new();
    if TextEncoder::new().encode(&c.registry.gather(), &mut buf).is_err() {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(buf)
}
