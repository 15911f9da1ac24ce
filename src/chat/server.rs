//! The ChatServer actor: the one place per node that decides who may do what,
//! who is assigned, and who receives which frame. This file holds its state,
//! its start-up (timers: grace periods after a restart, abandoned customers,
//! account rereads) and the handlers of its messages; what it does is in the
//! sibling files (see `chat/mod.rs`). It never waits on I/O: every durable
//! change is submitted to the store and finished when the store's completion
//! arrives (in submission order), and every frame is serialized once.

use super::access::*;
use super::messages::*;
use super::state::*;
use super::writes::*;
use crate::backplane::Backplane;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::protocol::{close, error_frame, Availability, ConvStatus, Conversation, Out, Role, User};
use crate::session::JamSwitch;
use crate::store::{AgentRow, Completion, ConvRow, Store, WriteOp};
use crate::webhooks::Webhooks;
use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient, StreamHandler, WrapFuture,
};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Bound of the ChatServer's own mailbox; a session whose request does not fit
/// gets `unavailable` (see session::ws).
pub const SERVER_MAILBOX: usize = 65_536;
/// How often the agent accounts are reread, to notice accounts removed or
/// passwords changed by `parley agent` while the server runs.
const ACCOUNT_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Longest wait at shutdown for the writes in flight to commit.
const DRAIN_WRITES_FOR: Duration = Duration::from_secs(4);
/// Longest interval between looks for queued customers who left.
const ABANDON_SWEEP_MAX: Duration = Duration::from_secs(5);

pub(super) struct Sess {
    pub(super) user: User,
    /// When an agent's token was issued (Unix ms): a password change after it ends the session.
    pub(super) token_iat: u64,
    /// The client's address.
    pub(super) addr: IpAddr,
    pub(super) outbox: Recipient<Outbound>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) jam: Option<Arc<JamSwitch>>,
    pub(super) rooms: HashSet<String>,
}

pub struct ChatServer {
    pub(super) cfg: Arc<Config>,
    pub(super) store: Arc<dyn Store>,
    pub(super) sessions: HashMap<u64, Sess>,
    /// Shutting down: sessions are told to reconnect elsewhere (1001).
    pub(super) draining: bool,
    /// Conversations, queues, agents and customers (the routing state machine).
    pub(super) st: Routing,
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) next_token: u64,
    pub(super) completions: Option<UnboundedReceiver<Vec<Completion>>>,
    pub(super) webhooks: Webhooks,
    /// Where committed effects go, to come back into `deliver`.
    pub(super) backplane: Box<dyn Backplane>,
    // Work left for `finish`:
    pub(super) jammed: Vec<u64>,
    /// A reread of the agent accounts is under way.
    pub(super) accounts_checking: bool,
    /// An agent joined or left a room, or changed availability: whether
    /// anyone is online to answer may have changed (see `tell_room_status`).
    pub(super) room_status_dirty: bool,
    /// New conversations per client address.
    pub(super) opens: crate::abuse::Keyed<IpAddr>,
    /// Routing requests waiting for a change of their conversation to commit.
    pub(super) deferred: HashMap<String, Vec<ClientRequest>>,
    /// Requests whose wait is over, run at the end of the current handler.
    pub(super) replay: Vec<ClientRequest>,
    /// Conversations to reload from the store (a change of theirs was refused).
    pub(super) reload: Vec<String>,
    /// What this node knows of the others (None: a single node).
    pub(super) cluster: Option<super::cluster::Cluster>,
    /// Effects the other nodes published, until `started` takes them.
    pub(super) incoming: Option<tokio::sync::mpsc::Receiver<crate::backplane::Incoming>>,
    /// Conversations whose message gap is to be read from the store.
    pub(super) gaps: Vec<String>,
}

/// How a node meets the others: its backplane and, for a shared one, what
/// the other nodes publish.
pub struct Links {
    pub backplane: Box<dyn Backplane>,
    pub incoming: Option<tokio::sync::mpsc::Receiver<crate::backplane::Incoming>>,
}

impl ChatServer {
    /// Builds the node's state from what the store holds: every non-closed
    /// conversation, and every agent account.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        open: Vec<ConvRow>,
        agents: Vec<AgentRow>,
        completions: UnboundedReceiver<Vec<Completion>>,
        webhooks: Webhooks,
        links: Links,
    ) -> ChatServer {
        let mut rooms: HashMap<String, Room> = cfg
            .rooms
            .iter()
            .map(|r| (r.clone(), Room { manual: cfg.manual_rooms.contains(r), ..Default::default() }))
            .collect();
        let mut srv = ChatServer {
            cfg: cfg.clone(),
            store,
            sessions: HashMap::new(),
            draining: false,
            pending: HashMap::new(),
            next_token: 1,
            st: Routing { tick: 1, ..Default::default() },
            completions: Some(completions),
            webhooks,
            cluster: links.backplane.shared().then(super::cluster::Cluster::new),
            backplane: links.backplane,
            incoming: links.incoming,
            gaps: Vec::new(),
            jammed: Vec::new(),
            accounts_checking: false,
            room_status_dirty: false,
            opens: crate::abuse::Keyed::per_minute(cfg.opens_per_minute.max(1)),
            deferred: HashMap::new(),
            replay: Vec::new(),
            reload: Vec::new(),
        };
        for a in agents {
            srv.st.agents.insert(a.id.clone(), srv.agent_state(&a));
        }
        for row in open {
            let conv = Conv::from_row(row);
            match conv.status {
                ConvStatus::Queued => match rooms.get_mut(&conv.room) {
                    Some(r) => r.queue.push_back(conv.id.clone()),
                    None => {
                        log::warn!("conversation {} waits in room `{}`, which is not configured", conv.id, conv.room)
                    }
                },
                ConvStatus::Active => {
                    if let Some(a) = &conv.agent {
                        let st = srv
                            .st
                            .agents
                            .entry(a.id.clone())
                            .or_insert_with(|| AgentState::new(a.clone(), cfg.max_active, false));
                        st.active.insert(conv.id.clone());
                    }
                }
                ConvStatus::Closed => {}
            }
            srv.st.customers.entry(conv.customer.id.clone()).or_default().open.push(conv.id.clone());
            srv.st.convs.insert(conv.id.clone(), conv);
        }
        srv.st.rooms = std::mem::take(&mut rooms);
        srv.st.position_rooms = srv.st.rooms.keys().map(|r| (r.clone(), 0)).collect();
        srv
    }

    pub(super) fn agent_state(&self, a: &AgentRow) -> AgentState {
        let user = User { id: a.id.clone(), role: Role::Agent, name: a.name.clone() };
        AgentState::new(user, a.max_active.unwrap_or(self.cfg.max_active), a.bot)
    }

    pub(super) fn reply_error(&mut self, to: ReplyTo, e: ApiError) {
        match to {
            ReplyTo::Session { sid, r#ref } => {
                let f = error_frame(r#ref.as_deref(), &e);
                self.send(sid, &f);
            }
            ReplyTo::HttpSend(tx) => {
                let _ = tx.send(Err(e));
            }
            // A refusal of a change nobody asked for (an automatic assignment
            // another node made first, say) is counted where it is settled.
            ReplyTo::None if e.code == ErrorCode::Conflict => log::debug!("background change refused: {e}"),
            ReplyTo::None => log::warn!("background change failed: {e}"),
        }
    }

    pub(super) fn snapshot(&self, cid: &str) -> Option<Conversation> {
        let c = self.st.convs.get(cid)?;
        let pos = match c.status {
            ConvStatus::Queued => self.st.rooms.get(&c.room).and_then(|r| r.position(cid)),
            _ => None,
        };
        Some(c.snapshot(pos))
    }

    /// Runs the work that handlers left behind: jammed sessions, automatic
    /// assignment, queue positions and presence. Called at the end of every handler.
    pub(super) fn finish(&mut self, ctx: &mut Context<Self>) {
        for m in std::mem::take(&mut self.replay) {
            self.client_request(m, ctx);
        }
        for cid in std::mem::take(&mut self.gaps) {
            self.fill_gap(cid, ctx);
        }
        if self.cluster.as_ref().is_some_and(|c| c.wants_beat()) {
            self.heartbeat(ctx);
        }
        for cid in std::mem::take(&mut self.reload) {
            let fut = self.store.conversation(&cid);
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                match res {
                    Ok(Some(row)) => act.reconcile(row),
                    Ok(None) => log::warn!("{cid} is gone from the store"),
                    Err(e) => log::warn!("cannot reload {cid}: {e}"),
                }
                act.finish(ctx);
            }));
        }
        for _ in 0..16 {
            for sid in std::mem::take(&mut self.jammed) {
                self.jam(sid, ctx);
            }
            let rooms: Vec<String> = self.st.assign_rooms.drain().collect();
            for r in &rooms {
                self.assign_room(r);
            }
            for (r, from) in std::mem::take(&mut self.st.position_rooms) {
                self.refresh_positions(&r, from);
            }
            for a in std::mem::take(&mut self.st.presence_agents) {
                self.room_status_dirty = true;
                self.broadcast_presence(&a);
            }
            // Only when an agent's presence changed: working it out walks every
            // agent in every room (it ran after every message before, and cost
            // p50 1 ms -> 55 ms at 5,000 msg/s with 1,000 agents in one room).
            if std::mem::take(&mut self.room_status_dirty) {
                self.tell_room_status(ctx);
            }
            if self.jammed.is_empty() && self.st.assign_rooms.is_empty() && self.st.position_rooms.is_empty() {
                break;
            }
        }
        self.schedule_recheck(ctx);
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SERVER_MAILBOX);
        if let Some(mut rx) = self.completions.take() {
            ctx.add_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
        // Agents holding conversations from before a restart get the grace
        // period to come back (in a cluster, those connected to no node: the
        // first heartbeat tells).
        if self.cluster.is_none() {
            self.start_grace_periods(ctx);
        }
        let sweep = (self.cfg.abandon_after.min(self.cfg.transfer_pass_over) / 4)
            .clamp(Duration::from_millis(100), ABANDON_SWEEP_MAX);
        ctx.run_interval(sweep, |act, ctx| act.sweep_abandoned(ctx));
        if self.cluster.is_some() {
            self.start_cluster(ctx);
        }
        ctx.run_interval(ACCOUNT_CHECK_EVERY, |act, ctx| {
            if act.accounts_checking {
                return;
            }
            act.accounts_checking = true;
            let fut = act.store.agents();
            ctx.spawn(fut.into_actor(act).map(|res, act, ctx| {
                act.accounts_checking = false;
                match res {
                    Ok(rows) => act.refresh_accounts(rows, ctx),
                    Err(e) => log::warn!("cannot reread the agent accounts: {e}"),
                }
            }));
        });
        self.finish(ctx);
    }
}

impl StreamHandler<Vec<Completion>> for ChatServer {
    fn handle(&mut self, batch: Vec<Completion>, ctx: &mut Context<Self>) {
        for c in batch {
            self.complete(c);
        }
        self.finish(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        log::error!("the store's writer stopped; writes will not complete");
    }
}

impl Handler<Connect> for ChatServer {
    type Result = ();

    fn handle(&mut self, m: Connect, ctx: &mut Context<Self>) {
        let sid = m.sid;
        if self.draining {
            // Its connection was accepted before the listener stopped: it
            // reconnects elsewhere too, told as the others were.
            m.outbox.do_send(Outbound::Close(close::GOING_AWAY, "server going away"));
            return;
        }
        let conversations: Vec<Conversation> = match m.user.role {
            Role::Agent => {
                let row = m.agent.as_ref();
                let fresh = row.map(|r| self.agent_state(r));
                let tick = self.st.tick;
                let a = self
                    .st
                    .agents
                    .entry(m.user.id.clone())
                    .or_insert_with(|| fresh.unwrap_or_else(|| AgentState::new(m.user.clone(), 0, false)));
                if let Some(r) = row {
                    a.user.name = r.name.clone();
                    a.max = r.max_active.unwrap_or(self.cfg.max_active);
                    a.bot = r.bot;
                }
                if let Some(h) = a.grace.take() {
                    ctx.cancel_future(h);
                }
                if a.sessions.is_empty() && a.availability == Availability::Offline {
                    a.availability = Availability::Online;
                    a.availability_at = crate::protocol::now_ms();
                    a.last_assigned = tick;
                }
                let first_here = a.sessions.is_empty();
                a.sessions.insert(sid);
                let ids: Vec<String> = a.active.iter().cloned().collect();
                if first_here {
                    // The other nodes learn at once that the agent is here.
                    self.beat_soon();
                }
                self.st.presence_agents.insert(m.user.id.clone());
                ids.iter().filter_map(|c| self.snapshot(c)).collect()
            }
            _ => {
                let c = self.st.customers.entry(m.user.id.clone()).or_default();
                c.sessions.insert(sid);
                let mut seen: HashSet<String> = HashSet::new();
                let mut list: Vec<Conversation> = Vec::new();
                let open = c.open.clone();
                for id in open {
                    if let Some(s) = self.snapshot(&id) {
                        seen.insert(id);
                        list.push(s);
                    }
                }
                for row in m.stored {
                    if seen.contains(&row.id) {
                        continue;
                    }
                    match self.snapshot(&row.id) {
                        Some(s) => list.push(s),
                        None => list.push(Conv::from_row(row).snapshot(None)),
                    }
                }
                list.sort_by_key(|c| c.created_at);
                list
            }
        };
        let session = format!("s_{sid:016x}");
        let f = Out::Welcome {
            session: &session,
            node: &self.cfg.node_id,
            user: &m.user,
            token: m.token.as_deref(),
            conversations: &conversations,
            heartbeat_ms: self.cfg.heartbeat_ms,
            limits: self.cfg.limits(),
            rooms: &self.room_infos(),
        }
        .encode();
        let sess = Sess {
            user: m.user,
            token_iat: m.token_iat,
            addr: m.addr,
            outbox: m.outbox,
            queued: m.queued,
            jam: m.jam,
            rooms: HashSet::new(),
        };
        self.sessions.insert(sid, sess);
        self.send(sid, &f);
        self.finish(ctx);
    }
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, m: Disconnect, ctx: &mut Context<Self>) {
        self.remove_session(m.sid, ctx);
        self.finish(ctx);
    }
}

impl Handler<ClientRequest> for ChatServer {
    type Result = ();

    fn handle(&mut self, m: ClientRequest, ctx: &mut Context<Self>) {
        self.client_request(m, ctx);
        self.finish(ctx);
    }
}

impl Handler<HttpSend> for ChatServer {
    type Result = ();

    fn handle(&mut self, m: HttpSend, ctx: &mut Context<Self>) {
        let Some(m) = self.ready(m, ctx) else { return };
        let who = Who { user: m.caller.user, sid: None };
        match self.prepare_send(&who, m.conversation, m.client_id, m.body, m.internal) {
            Ok(msg) => {
                let p = Pending::Send { reply: ReplyTo::HttpSend(m.reply), exclude: None };
                self.submit_or_reply(WriteOp::Append(msg), p);
            }
            Err(e) => {
                let _ = m.reply.send(Err(e));
            }
        }
        self.finish(ctx);
    }
}

impl Handler<HttpHistory> for ChatServer {
    type Result = ();

    fn handle(&mut self, m: HttpHistory, ctx: &mut Context<Self>) {
        let Some(m) = self.ready(m, ctx) else { return };
        let who = Who { user: m.caller.user, sid: None };
        let access = match self.conv_for(&who, &m.conversation) {
            Ok((_, a)) => a,
            Err(e) => {
                let _ = m.reply.send(Err(e));
                return;
            }
        };
        let fut = self.store.history(&m.conversation, m.after_seq, m.limit);
        let reply = m.reply;
        ctx.spawn(
            async move {
                let _ = reply.send(fut.await.map(|(msgs, more)| page_for(access, msgs, more)).map_err(ApiError::from));
            }
            .into_actor(self),
        );
    }
}

impl Handler<LiveConversations> for ChatServer {
    type Result = Result<Vec<Conversation>, ApiError>;

    fn handle(&mut self, m: LiveConversations, _: &mut Context<Self>) -> Self::Result {
        if let Some(r) = &m.room {
            if !self.st.rooms.contains_key(r) {
                return Err(no_room(r));
            }
        }
        let positions: HashMap<&str, u32> = self
            .st
            .rooms
            .values()
            .flat_map(|r| r.queue.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32 + 1)))
            .collect();
        let mut list: Vec<Conversation> = self
            .st
            .convs
            .values()
            .filter(|c| c.status != ConvStatus::Closed)
            .filter(|c| m.room.as_ref().is_none_or(|r| *r == c.room))
            .filter(|c| m.status.is_none_or(|s| s == c.status))
            .map(|c| c.snapshot(positions.get(c.id.as_str()).copied()))
            .collect();
        list.sort_by_key(|c| (c.queue_position.unwrap_or(u32::MAX), c.created_at));
        Ok(list)
    }
}

impl Handler<GetStats> for ChatServer {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Stats {
            sessions: self.sessions.len(),
            conversations_in_memory: self.st.convs.len(),
            queued: self.st.rooms.values().map(|r| r.queue.len()).sum(),
            active: self.st.convs.values().filter(|c| c.status == ConvStatus::Active).count(),
            agents_online: self.st.agents.values().filter(|a| !a.sessions.is_empty()).count(),
            pending_writes: self.pending.len(),
            rooms: self
                .st
                .rooms
                .iter()
                .map(|(name, r)| (name.clone(), r.queue.len(), self.agents_online_in(name)))
                .collect(),
        })
    }
}

impl Handler<Drain> for ChatServer {
    type Result = actix::ResponseActFuture<Self, ()>;

    /// Tells every session to reconnect elsewhere (close 1001), lets the
    /// writes in flight commit (up to [`DRAIN_WRITES_FOR`]), and gives up the
    /// cluster lease, so that the other nodes take this node's agents for
    /// gone at once rather than when the lease runs out.
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        for s in self.sessions.values() {
            s.outbox.do_send(Outbound::Close(close::GOING_AWAY, "server going away"));
        }
        // Completes once every write submitted before it has.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(crate::store::WriteOp::Barrier, Pending::Barrier(tx));
        let in_flight = self.pending.len() - 1;
        if let Some(c) = self.cluster.as_mut() {
            c.draining = true; // no heartbeat renews what the release gives up
        }
        let store = self.store.clone();
        let node = self.cluster.as_ref().map(|_| self.cfg.node_id.clone());
        Box::pin(actix::fut::wrap_future(async move {
            match tokio::time::timeout(DRAIN_WRITES_FOR, rx).await {
                Ok(_) => log::info!("drain: the {in_flight} write(s) in flight are settled"),
                Err(_) => log::warn!("drain: writes still in flight after {DRAIN_WRITES_FOR:?}"),
            }
            if let Some(node) = node {
                match tokio::time::timeout(Duration::from_secs(1), store.release(&node)).await {
                    Ok(Ok(())) => log::info!("drain: gave up the cluster lease of {node}"),
                    Ok(Err(e)) => log::warn!("drain: cannot give up the cluster lease: {e}"),
                    Err(_) => log::warn!("drain: giving up the cluster lease took too long; it will lapse"),
                }
            }
        }))
    }
}
