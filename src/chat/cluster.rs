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

use super::server::*;
use super::state::*;
use crate::backplane::{Effect, Incoming};
use crate::http::metrics::counters;
use crate::protocol::{Availability, ConvStatus, Conversation, Message, Presence, Ts};
use crate::store::{ConvRow, Heartbeat};
use actix::{ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// Most messages read from the store per gap fill.
const FILL_PAGE: u32 = 500;

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

    /// An agent's presence in a room over every node, as this node's sessions
    /// should see it: offline only when no node has them there.
    pub(super) fn presence_here(&self, room: &str, agent: &str) -> Option<Presence> {
        let a = self.st.agents.get(agent)?;
        let local = self.st.rooms.get(room).is_some_and(|r| r.agents.contains_key(agent));
        if local {
            return Some(a.presence(room, true));
        }
        let remote = self.cluster.as_ref().and_then(|c| c.presence.get(&(room.to_string(), agent.to_string())));
        let best = remote.and_then(|nodes| {
            nodes.values().map(|(p, _)| p).min_by_key(|p| match p.availability {
                Availability::Online => 0,
                Availability::Away => 1,
                Availability::Offline => 2,
            })
        });
        Some(match best {
            Some(p) => Presence { active: a.active.len() as u32, max: a.max, ..p.clone() },
            None => a.presence(room, false),
        })
    }

    /// Agents present in a room through other nodes, and not through this one.
    pub(super) fn remote_room_agents(&self, room: &str) -> Vec<Presence> {
        let Some(c) = self.cluster.as_ref() else { return Vec::new() };
        let local = self.st.rooms.get(room);
        c.presence
            .keys()
            .filter(|(r, a)| r == room && !local.is_some_and(|l| l.agents.contains_key(a)))
            .filter_map(|(r, a)| self.presence_here(r, a))
            .collect()
    }

    /// Agents online in the room through other nodes only, who can take
    /// more: (their load, their id, their capacity), least busy first.
    pub(super) fn remote_candidates(&self, room: &str) -> Vec<(u32, String, u32)> {
        let Some(c) = self.cluster.as_ref() else { return Vec::new() };
        let local = self.st.rooms.get(room);
        let mut out: Vec<(u32, String, u32)> = c
            .presence
            .iter()
            .filter(|((r, a), nodes)| {
                r == room
                    && !local.is_some_and(|l| l.agents.contains_key(a))
                    && nodes.values().any(|(p, _)| p.availability == Availability::Online)
            })
            .filter_map(|((_, id), _)| {
                let a = self.st.agents.get(id)?;
                let load = a.active.len() as u32;
                (a.availability == Availability::Online && !a.bot && load < a.max).then(|| (load, id.clone(), a.max))
            })
            .collect();
        out.sort_unstable();
        out
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

    /// Whether an agent is online in some room through another node.
    pub(super) fn agent_online_elsewhere(&self, agent: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.presence.iter().any(|((_, a), nodes)| {
                a == agent && nodes.values().any(|(p, _)| p.availability == Availability::Online)
            })
        })
    }

    /// Whether an agent online in the room is connected to another node.
    pub(super) fn online_elsewhere(&self, room: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.presence
                .iter()
                .any(|((r, _), nodes)| r == room && nodes.values().any(|(p, _)| p.availability == Availability::Online))
        })
    }

    /// Agents online in a room on any node (for /metrics).
    pub(super) fn agents_online_in(&self, room: &str) -> usize {
        let mut ids: HashSet<&str> = HashSet::new();
        if let Some(r) = self.st.rooms.get(room) {
            ids.extend(
                r.agents
                    .keys()
                    .filter(|a| self.st.agents.get(*a).is_some_and(|a| a.availability == Availability::Online))
                    .map(|a| a.as_str()),
            );
        }
        if let Some(c) = self.cluster.as_ref() {
            for ((r, a), nodes) in &c.presence {
                if r == room && nodes.values().any(|(p, _)| p.availability == Availability::Online) {
                    ids.insert(a);
                }
            }
        }
        ids.len()
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
            Effect::Presence { presence, exclude, since } => {
                let key = (presence.room.clone(), presence.agent.id.clone());
                // The same agent connected here too: one agent, one availability
                // (away on one node is away on all, and no node assigns to them).
                if presence.availability != Availability::Offline {
                    if !self.st.agents.contains_key(&key.1) {
                        // An account newer than this node's last reread of them
                        // (which corrects the bot flag within seconds).
                        let a = AgentState::new(presence.agent.clone(), presence.max, false);
                        self.st.agents.insert(key.1.clone(), a);
                    }
                    if let Some(a) = self.st.agents.get_mut(&key.1) {
                        // Taken up with or without a session here, so that a session
                        // opened here later starts from it.
                        let newer = since > a.availability_at;
                        if newer && a.availability != presence.availability {
                            a.availability = presence.availability;
                            a.availability_at = since;
                            if presence.availability == Availability::Online {
                                let id = key.1.clone();
                                let rooms = self.st.rooms.iter().filter(|(_, r)| r.agents.contains_key(&id));
                                let rooms: Vec<String> = rooms.map(|(n, _)| n.clone()).collect();
                                self.st.assign_rooms.extend(rooms);
                            }
                        }
                    }
                }
                if let Some(c) = self.cluster.as_mut() {
                    let nodes = c.presence.entry(key.clone()).or_default();
                    if presence.availability == Availability::Offline {
                        nodes.remove(&node);
                    } else {
                        nodes.insert(node, (presence.clone(), Instant::now()));
                    }
                    if nodes.is_empty() {
                        c.presence.remove(&key);
                    }
                }
                self.room_status_dirty = true;
                let presence = self.presence_here(&key.0, &key.1).unwrap_or(presence);
                self.deliver(Effect::Presence { presence, exclude, since });
            }
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

    /// Applies a conversation's state as another node (or the store) has it,
    /// unless this node holds a newer one. Returns whether it was applied.
    pub(super) fn absorb(&mut self, c: &Conversation, queued_at: Ts, version: u64) -> bool {
        let known = match self.st.convs.get(&c.id) {
            Some(conv) => {
                if version <= conv.version && conv.version > 0 {
                    return false;
                }
                true
            }
            None => false,
        };
        if !known {
            if c.status == ConvStatus::Closed {
                return false; // nothing to route; readers load it from the store
            }
            // In as closed, then opened by `apply` (queue, assignee, customer).
            let row = ConvRow {
                id: c.id.clone(),
                room: c.room.clone(),
                status: ConvStatus::Closed,
                customer: c.customer.clone(),
                agent: None,
                created_at: c.created_at,
                queued_at,
                last_seq: c.last_seq,
                rated: false,
                contact_email: c.contact_email.clone(),
            };
            self.st.convs.insert(c.id.clone(), Conv::from_row(row));
        }
        let Some(conv) = self.st.convs.get_mut(&c.id) else { return false };
        conv.version = conv.version.max(version);
        conv.last_seq = conv.last_seq.max(c.last_seq);
        conv.contact_email = c.contact_email.clone().or(conv.contact_email.take());
        let core = ConvCore {
            status: c.status,
            agent: c.agent.clone(),
            queued_at,
            room: c.room.clone(),
            transferred_from: conv.transferred_from.clone(),
        };
        self.st.apply(&c.id, core);
        self.st.assign_rooms.insert(c.room.clone());
        self.room_status_dirty = true;
        true
    }

    /// Whether any session on this node is in a conversation's audience.
    fn has_local_members(&self, conv: &Conv) -> bool {
        self.st.customers.get(&conv.customer.id).is_some_and(|c| !c.sessions.is_empty())
            || conv.agent.as_ref().and_then(|a| self.st.agents.get(&a.id)).is_some_and(|a| !a.sessions.is_empty())
            || self.st.rooms.get(&conv.room).is_some_and(|r| !r.sessions.is_empty())
    }

    /// Delivers a message in its conversation's seq order: a message after a
    /// gap waits while the gap is read from the store; one already
    /// delivered is skipped.
    pub(super) fn deliver_in_order(&mut self, message: Arc<Message>, also: Option<String>, exclude: Option<u64>) {
        let cid = message.conversation.clone();
        let Some(conv) = self.st.convs.get(&cid) else { return };
        let next = conv.delivered + 1;
        if message.seq < next {
            return;
        }
        if message.seq > next {
            if !self.has_local_members(conv) {
                // Nobody here to tell: no need to read what was skipped.
                if let Some(c) = self.st.convs.get_mut(&cid) {
                    c.delivered = message.seq;
                    c.last_seq = c.last_seq.max(message.seq);
                    c.held.retain(|seq, _| *seq > message.seq);
                }
                return;
            }
            let Some(c) = self.st.convs.get_mut(&cid) else { return };
            c.held.insert(message.seq, (message, also, exclude));
            if !c.filling {
                c.filling = true;
                self.gaps.push(cid);
            }
            return;
        }
        self.deliver_now(Effect::Message { message, also, exclude });
        loop {
            let Some(c) = self.st.convs.get_mut(&cid) else { return };
            let next = c.delivered + 1;
            c.held.retain(|seq, _| *seq >= next);
            let Some((message, also, exclude)) = c.held.remove(&next) else { break };
            self.deliver_now(Effect::Message { message, also, exclude });
        }
    }

    /// Reads a conversation's gap from the store, then delivers in order.
    pub(super) fn fill_gap(&mut self, cid: String, ctx: &mut Context<Self>) {
        let Some(after) = self.st.convs.get(&cid).map(|c| c.delivered) else { return };
        let fut = self.store.history(&cid, after, FILL_PAGE);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let Some(c) = act.st.convs.get_mut(&cid) else { return };
            c.filling = false;
            match res {
                Ok((messages, _)) => {
                    for m in messages {
                        let before = act.st.convs.get(&cid).map_or(0, |c| c.delivered);
                        let seq = m.seq;
                        act.deliver_in_order(Arc::new(m), None, None);
                        if act.st.convs.get(&cid).is_some_and(|c| c.delivered >= seq && before < seq) {
                            counters().gaps_filled.inc();
                        }
                    }
                }
                Err(e) => log::warn!("cluster: cannot read the gap in {cid} from the store: {e}"),
            }
            // Still waiting on a gap (the store had not all of it, or failed): again shortly.
            if let Some(c) = act.st.convs.get_mut(&cid) {
                let delivered = c.delivered;
                c.held.retain(|seq, _| *seq > delivered);
            }
            let again = act.st.convs.get_mut(&cid).filter(|c| !c.held.is_empty() && !c.filling);
            if let Some(c) = again {
                c.filling = true;
                let cid = cid.clone();
                ctx.run_later(Duration::from_millis(200), move |act, ctx| {
                    act.gaps.push(cid);
                    act.finish(ctx);
                });
            }
            act.finish(ctx);
        }));
    }

    /// Reloads every open conversation from the store: what the backplane
    /// lost (an outage, a dropped effect) is applied, and messages this
    /// node's sessions missed are delivered.
    pub(super) fn resync(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.cluster.as_mut() else { return };
        if c.resyncing {
            return;
        }
        c.resyncing = true;
        let fut = self.store.open_conversations();
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if let Some(c) = act.cluster.as_mut() {
                c.resyncing = false;
            }
            let rows = match res {
                Ok(rows) => rows,
                Err(e) => return log::warn!("cluster: cannot reload the open conversations: {e}"),
            };
            let open: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
            for row in rows {
                let (id, last_seq, queued_at) = (row.id.clone(), row.last_seq, row.queued_at);
                let conversation = Conv::from_row(row).snapshot(None);
                act.absorb_row(&conversation, queued_at, last_seq);
                // Messages this node's sessions have not had (read only where
                // somebody here is in the conversation's audience).
                let local = act.st.convs.get(&id).is_some_and(|c| act.has_local_members(c));
                if let Some(c) = act.st.convs.get_mut(&id) {
                    if c.delivered < last_seq && !c.filling {
                        if local {
                            c.filling = true;
                            act.gaps.push(id);
                        } else {
                            c.delivered = last_seq;
                        }
                    }
                }
            }
            // Held as open here, closed in the store: reload them one by one.
            let stale: Vec<String> = act
                .st
                .convs
                .iter()
                .filter(|(id, c)| c.status != ConvStatus::Closed && !open.contains(*id) && !c.changing)
                .map(|(id, _)| id.clone())
                .collect();
            act.reload.extend(stale);
            act.finish(ctx);
        }));
    }

    /// A conversation as the store has it (a resync), applied over an older
    /// state and told to this node's sessions when it changed.
    fn absorb_row(&mut self, c: &Conversation, queued_at: Ts, last_seq: u64) {
        let state = |v: &Conv| (v.status, v.agent.as_ref().map(|a| a.id.clone()), v.room.clone(), v.queued_at);
        let before = self.st.convs.get(&c.id).map(state);
        let after = (c.status, c.agent.as_ref().map(|a| a.id.clone()), c.room.clone(), queued_at);
        if before.as_ref() == Some(&after) {
            if let Some(v) = self.st.convs.get_mut(&c.id) {
                v.version = v.version.max(last_seq);
                v.last_seq = v.last_seq.max(last_seq);
            }
            return;
        }
        if self.absorb(c, queued_at, last_seq) {
            if let Some(conversation) = self.snapshot(&c.id) {
                let queued_at = self.st.convs.get(&c.id).map_or(0, |v| v.queued_at);
                self.deliver(Effect::Conversation {
                    conversation,
                    customer: true,
                    agents: true,
                    also: None,
                    exclude: None,
                    queued_at,
                    version: None,
                });
            }
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
