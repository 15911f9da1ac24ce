//! A node among several (`--redis` with `--database postgres://…`). The store
//! decides, the backplane informs:
//! - every routing change is a conditional write (see `writes`), so the
//!   nodes need no leader; what another node committed arrives as an effect
//!   and is applied to memory here only over an older state (`version`);
//! - messages are delivered in seq order: a gap (an effect Redis dropped, or
//!   one still on its way) is filled from the store before what follows;
//! - a resubscription, and every [`RESYNC_EVERY`], reloads the open
//!   conversations from the store, so memory never stays stale;
//! - liveness: the node renews a lease every [`HEARTBEAT_EVERY`] and records
//!   under it the users connected here. An agent connected to no live node
//!   gets the grace period; when it ends, their conversations are re-queued by
//!   a write that the store refuses while they are connected anywhere, so
//!   exactly one node re-queues each.
//!
//! Here: the lease and what the other nodes' effects do; `presence` merges
//! agents' presence across nodes; `order` applies other nodes' changes and
//! delivers messages in seq order.

use super::server::*;
use crate::backplane::{Effect, Incoming};
use crate::http::metrics::counters;
use crate::protocol::{ConvStatus, Presence};
use crate::store::Heartbeat;
use actix::{ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

mod order;
mod presence;

/// How often the lease is renewed and the other nodes' users reread.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long another node's presence of an agent stands before its lease
/// record backs it (the presence may arrive before the node's heartbeat).
const PRESENCE_UNBACKED: Duration = Duration::from_secs(6);
/// How long a lease lasts unrenewed: a node silent this long is gone.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(8);
/// How often the open conversations are reloaded from the store anyway.
pub(super) const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How long a queued conversation waits for another node to assign it to
/// the agent there that the cluster-wide choice named, before a node with a
/// free agent of its own assigns it (that node died, or saw it otherwise).
pub(super) const ASSIGN_DEFER: Duration = Duration::from_secs(1);

/// What a node knows of the others.
#[derive(Default)]
pub struct Cluster {
    /// Users connected to the other live nodes: user id -> those nodes.
    pub remote: HashMap<String, Vec<String>>,
    /// Agents' presence in rooms as the other nodes published it:
    /// (room, agent id) -> node -> (presence, when it arrived).
    pub presence: HashMap<(String, String), HashMap<String, (Presence, Instant)>>,
    /// Users recorded under this node's lease.
    registered: HashSet<String>,
    /// The next heartbeat records every user (the last one failed).
    full: bool,
    beating: bool,
    resyncing: bool,
    /// Until when the lease is held, as last renewed.
    lease_until: Option<Instant>,
    /// A heartbeat is wanted soon (an agent connected).
    beat_soon: bool,
    /// The node is shutting down: its lease is being given up.
    pub draining: bool,
    /// Queued conversations left to another node's agent, since when.
    pub left_to_peers: HashMap<String, Instant>,
    /// Some were: look at the queues again after [`ASSIGN_DEFER`].
    pub recheck: bool,
    recheck_scheduled: bool,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster { full: true, ..Default::default() }
    }

    /// A heartbeat was asked for and none is under way.
    pub fn wants_beat(&self) -> bool {
        self.beat_soon && !self.beating && !self.draining
    }
}

impl ChatServer {
    /// Whether a user has a session on another live node.
    pub(super) fn connected_elsewhere(&self, user: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.remote.contains_key(user))
    }

    /// Starts the cluster's timers (called once, at start).
    pub(super) fn start_cluster(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.incoming.take() {
            let mut rx = rx;
            ctx.add_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
        self.heartbeat(ctx);
        ctx.run_interval(HEARTBEAT_EVERY, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(RESYNC_EVERY, |act, ctx| act.resync(ctx));
    }

    /// Asks for a heartbeat at once (an agent's first session here: the other
    /// nodes should not take them for gone).
    pub(super) fn beat_soon(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.beat_soon = true;
        }
    }

    /// Renews the lease and records who is connected here; learns who is
    /// connected elsewhere.
    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let here: HashSet<String> = self.sessions.values().map(|s| s.user.id.clone()).collect();
        let Some(c) = self.cluster.as_mut() else { return };
        if c.beating || c.draining {
            return;
        }
        c.beat_soon = false;
        c.beating = true;
        // After a lapse (a long stall), other nodes may have forgotten this
        // node's users with its lease: record them all again.
        let full = c.full || c.lease_until.is_none_or(|t| t <= Instant::now());
        let (add, remove): (Vec<String>, Vec<String>) = if full {
            (here.iter().cloned().collect(), Vec::new())
        } else {
            (here.difference(&c.registered).cloned().collect(), c.registered.difference(&here).cloned().collect())
        };
        let beat = Heartbeat { node: self.cfg.node_id.clone(), ttl: LEASE_TTL, full, add, remove };
        let sent_at = Instant::now();
        let fut = self.store.heartbeat(beat);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let Some(c) = act.cluster.as_mut() else { return };
            c.beating = false;
            match res {
                Ok(remote) => {
                    c.registered = here;
                    c.full = false;
                    c.lease_until = Some(sent_at + LEASE_TTL);
                    counters().lease_held.set(1);
                    act.learn_remote(remote, ctx);
                }
                Err(e) => {
                    c.full = true;
                    if c.lease_until.is_none_or(|t| t <= Instant::now()) {
                        counters().lease_held.set(0);
                    }
                    log::warn!("cluster: cannot renew this node's lease: {e}");
                }
            }
            if act.cluster.as_ref().is_some_and(|c| c.beat_soon) {
                act.heartbeat(ctx);
            }
            act.finish(ctx);
        }));
    }

    /// Takes in who is connected to the other live nodes: presence of agents
    /// on nodes that are gone is dropped, customers seen elsewhere are not
    /// abandoned, and agents connected nowhere start their grace period.
    fn learn_remote(&mut self, rows: Vec<(String, String)>, ctx: &mut Context<Self>) {
        let mut remote: HashMap<String, Vec<String>> = HashMap::new();
        for (user, node) in rows {
            remote.entry(user).or_default().push(node);
        }
        let now = Instant::now();
        for (user, _) in remote.iter() {
            if let Some(cu) = self.st.customers.get_mut(user) {
                cu.away_since = now;
            }
        }
        let Some(c) = self.cluster.as_mut() else { return };
        c.remote = remote;
        // Presence published by nodes that no longer hold the agent.
        let mut gone: Vec<(String, String)> = Vec::new();
        for ((room, agent), nodes) in c.presence.iter_mut() {
            let live = c.remote.get(agent);
            // A presence that arrived before its node's heartbeat recorded
            // the agent stands for a while; then the lease read decides.
            nodes.retain(|n, (_, at)| live.is_some_and(|l| l.contains(n)) || at.elapsed() < PRESENCE_UNBACKED);
            if nodes.is_empty() {
                gone.push((room.clone(), agent.clone()));
            }
        }
        for key in &gone {
            c.presence.remove(key);
        }
        for (room, agent) in gone {
            self.room_status_dirty = true;
            if let Some(p) = self.presence_here(&room, &agent) {
                self.deliver(Effect::Presence { presence: p, exclude: None, since: 0 });
            }
        }
        self.start_grace_periods(ctx);
    }

    /// After a pass that left conversations to other nodes: the queues are
    /// looked at again once [`ASSIGN_DEFER`] has passed.
    pub(super) fn schedule_recheck(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.cluster.as_mut() else { return };
        if !c.recheck || c.recheck_scheduled {
            return;
        }
        c.recheck = false;
        c.recheck_scheduled = true;
        ctx.run_later(ASSIGN_DEFER, |act, ctx| {
            let convs = &act.st.convs;
            if let Some(c) = act.cluster.as_mut() {
                c.recheck_scheduled = false;
                c.left_to_peers.retain(|cid, _| convs.get(cid).is_some_and(|c| c.status == ConvStatus::Queued));
            }
            let waiting = act.st.rooms.iter().filter(|(_, r)| !r.queue.is_empty()).map(|(n, _)| n.clone());
            let waiting: Vec<String> = waiting.collect();
            act.st.assign_rooms.extend(waiting);
            act.finish(ctx);
        });
    }

    /// An effect another node committed.
    fn remote_effect(&mut self, node: String, effect: Effect) {
        match effect {
            Effect::Conversation { conversation, customer, agents, also, exclude, queued_at, version } => {
                let id = conversation.id.clone();
                match version {
                    Some(v) => {
                        if !self.absorb(&conversation, queued_at, v) {
                            return; // older than what this node holds
                        }
                    }
                    None => {
                        if let Some(c) = self.st.convs.get_mut(&id) {
                            c.contact_email = conversation.contact_email.clone();
                        }
                    }
                }
                // This node's own queue gives the position.
                let conversation = self.snapshot(&id).unwrap_or(conversation);
                self.deliver(Effect::Conversation {
                    conversation,
                    customer,
                    agents,
                    also,
                    exclude,
                    queued_at,
                    version,
                });
            }
            Effect::Presence { presence, exclude, since } => self.remote_presence(node, presence, exclude, since),
            Effect::PresenceCall { room } => {
                let here: Vec<String> =
                    self.st.rooms.get(&room).map(|r| r.agents.keys().cloned().collect()).unwrap_or_default();
                for agent in here {
                    self.broadcast_presence(&agent);
                }
            }
            other => self.deliver(other),
        }
    }

    /// After a (re)subscription: what was missed is reloaded, the other
    /// nodes are asked for their agents' presence, and this node's is told again.
    fn resubscribed(&mut self, ctx: &mut Context<Self>) {
        self.resync(ctx);
        let rooms: Vec<String> = self.st.rooms.keys().cloned().collect();
        for room in rooms {
            self.publish(Effect::PresenceCall { room });
        }
        let here: Vec<String> =
            self.st.agents.iter().filter(|(_, a)| !a.sessions.is_empty()).map(|(id, _)| id.clone()).collect();
        for agent in here {
            self.broadcast_presence(&agent);
        }
    }
}

impl StreamHandler<Incoming> for ChatServer {
    fn handle(&mut self, m: Incoming, ctx: &mut Context<Self>) {
        match m {
            Incoming::Effect { node, effect } => self.remote_effect(node, *effect),
            Incoming::Resubscribed => self.resubscribed(ctx),
        }
        self.finish(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        log::error!("the backplane stopped; other nodes' effects no longer arrive");
    }
}
