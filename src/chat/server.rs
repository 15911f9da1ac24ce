//! The ChatServer actor: the one place per node that decides who may do what,
//! who is assigned, and who receives which frame. It never waits on I/O: every
//! durable change is submitted to the store and finished when the store's
//! completion arrives (in submission order), and every frame is serialized
//! once and shared by its recipients.

use super::messages::*;
use super::state::*;
use crate::auth::new_id;
use crate::backplane::{Backplane, Effect};
use crate::config::Config;
use crate::error::{ApiError, StoreError};
use crate::protocol::{
    self, char_len, close, error_frame, now_ms, Availability, ConvStatus, Conversation, HistoryBody, Message, MsgKind,
    Open, Out, Presence, ReadMark, Request, Role, RoomInfo, Transfer, User, MAX_CLIENT_ID_CHARS, MAX_COMMENT_CHARS,
    SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT,
};
use crate::session::JamSwitch;
use crate::store::{AgentRow, Completion, ConvRow, Expect, NewMessage, Store, WriteOp, WriteOutcome};
use crate::webhooks::Webhooks;
use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient, StreamHandler, WrapFuture,
};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Bound of the ChatServer's own mailbox; a session whose request does not fit
/// gets `unavailable` (see session::ws).
pub const SERVER_MAILBOX: usize = 65_536;
/// Writes submitted and not yet committed before new ones are refused with `unavailable`.
const MAX_PENDING_WRITES: usize = 200_000;
/// Closed conversations kept in memory for quick access (oldest evicted first).
const CLOSED_CACHE: usize = 10_000;
/// Most queue-position changes in one step that are also pushed to the room's agents.
const POSITION_PUSHES_TO_AGENTS: usize = 100;
/// How long a jammed connection may take to read its 4008 close frame before
/// its socket is shut down.
const JAM_FORCE_AFTER: Duration = Duration::from_secs(2);
/// How often the agent accounts are reread, to notice accounts removed or
/// passwords changed by `parley agent` while the server runs.
const ACCOUNT_CHECK_EVERY: Duration = Duration::from_secs(2);
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

pub(super) struct Customer {
    pub(super) sessions: HashSet<u64>,
    /// Non-closed conversations.
    pub(super) open: Vec<String>,
    /// Since when the customer has had no session (meaningful while `sessions` is empty).
    pub(super) away_since: Instant,
}

impl Default for Customer {
    fn default() -> Self {
        Customer { sessions: HashSet::new(), open: Vec::new(), away_since: Instant::now() }
    }
}

/// Who receives the direct reply to a request.
enum ReplyTo {
    Session { sid: u64, r#ref: Option<String> },
    HttpSend(tokio::sync::oneshot::Sender<Result<Message, ApiError>>),
    None,
}

/// What to do when a submitted write completes.
enum Pending {
    Open {
        reply: ReplyTo,
        conv: String,
    },
    Send {
        reply: ReplyTo,
        exclude: Option<u64>,
    },
    /// A routing change: memory takes `new` when it commits.
    Change {
        reply: ReplyTo,
        conv: String,
        new: ConvCore,
        place: QueuePlace,
        also: Option<String>,
        incoming: Option<String>,
    },
    Rate {
        reply: ReplyTo,
        conv: String,
    },
    Read {
        conv: String,
        from: User,
        seq: u64,
    },
    Contact {
        reply: ReplyTo,
        conv: String,
        email: String,
    },
}

/// The caller of a request, for permission checks.
struct Who {
    user: User,
    /// The WebSocket session, if any (HTTP callers have none).
    sid: Option<u64>,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Access {
    Customer,
    Assignee,
    RoomAgent,
}

pub struct ChatServer {
    pub(super) cfg: Arc<Config>,
    pub(super) store: Arc<dyn Store>,
    pub(super) sessions: HashMap<u64, Sess>,
    pub(super) convs: HashMap<String, Conv>,
    pub(super) closed_lru: VecDeque<String>,
    pub(super) rooms: HashMap<String, Room>,
    pub(super) agents: HashMap<String, AgentState>,
    pub(super) customers: HashMap<String, Customer>,
    pending: HashMap<u64, Pending>,
    pub(super) next_token: u64,
    pub(super) tick: u64,
    pub(super) completions: Option<UnboundedReceiver<Vec<Completion>>>,
    pub(super) webhooks: Webhooks,
    /// Where committed effects go, to come back into `deliver`.
    pub(super) backplane: Box<dyn Backplane>,
    // Work left for `finish`:
    pub(super) jammed: Vec<u64>,
    pub(super) assign_rooms: HashSet<String>,
    /// Rooms whose queue positions changed, from this index on.
    pub(super) position_rooms: HashMap<String, usize>,
    pub(super) presence_agents: HashSet<String>,
    /// A reread of the agent accounts is under way.
    pub(super) accounts_checking: bool,
    /// New conversations per client address.
    pub(super) opens: crate::abuse::Keyed<IpAddr>,
    /// Routing requests waiting for a change of their conversation to commit.
    pub(super) deferred: HashMap<String, Vec<ClientRequest>>,
    /// Requests whose wait is over, run at the end of the current handler.
    pub(super) replay: Vec<ClientRequest>,
    /// Conversations to reload from the store (a change of theirs was refused).
    pub(super) reload: Vec<String>,
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
            convs: HashMap::new(),
            closed_lru: VecDeque::new(),
            rooms: HashMap::new(),
            agents: HashMap::new(),
            customers: HashMap::new(),
            pending: HashMap::new(),
            next_token: 1,
            tick: 1,
            completions: Some(completions),
            webhooks,
            backplane: crate::backplane::configured(),
            jammed: Vec::new(),
            assign_rooms: HashSet::new(),
            position_rooms: HashMap::new(),
            presence_agents: HashSet::new(),
            accounts_checking: false,
            opens: crate::abuse::Keyed::per_minute(cfg.opens_per_minute.max(1)),
            deferred: HashMap::new(),
            replay: Vec::new(),
            reload: Vec::new(),
        };
        for a in agents {
            srv.agents.insert(a.id.clone(), srv.agent_state(&a));
        }
        for row in open {
            let conv = conv_from_row(row);
            match conv.status {
                ConvStatus::Queued => match rooms.get_mut(&conv.room) {
                    Some(r) => r.queue.push_back(conv.id.clone()),
                    None => {
                        log::warn!("conversation {} waits in room `{}`, which is not configured", conv.id, conv.room)
                    }
                },
                ConvStatus::Active => {
                    if let Some(a) = &conv.agent {
                        let st = srv.agents.entry(a.id.clone()).or_insert_with(|| AgentState {
                            user: a.clone(),
                            max: cfg.max_active,
                            bot: false,
                            sessions: HashSet::new(),
                            availability: Availability::Offline,
                            active: Default::default(),
                            incoming: Default::default(),
                            last_assigned: 0,
                            grace: None,
                        });
                        st.active.insert(conv.id.clone());
                    }
                }
                ConvStatus::Closed => {}
            }
            srv.customers.entry(conv.customer.id.clone()).or_default().open.push(conv.id.clone());
            srv.convs.insert(conv.id.clone(), conv);
        }
        srv.rooms = std::mem::take(&mut rooms);
        srv.position_rooms = srv.rooms.keys().map(|r| (r.clone(), 0)).collect();
        srv
    }

    fn agent_state(&self, a: &AgentRow) -> AgentState {
        AgentState {
            user: User { id: a.id.clone(), role: Role::Agent, name: a.name.clone() },
            max: a.max_active.unwrap_or(self.cfg.max_active),
            bot: a.bot,
            sessions: HashSet::new(),
            availability: Availability::Offline,
            active: Default::default(),
            incoming: Default::default(),
            last_assigned: 0,
            grace: None,
        }
    }

    fn reply_error(&mut self, to: ReplyTo, e: ApiError) {
        match to {
            ReplyTo::Session { sid, r#ref } => {
                let f = error_frame(r#ref.as_deref(), &e);
                self.send(sid, &f);
            }
            ReplyTo::HttpSend(tx) => {
                let _ = tx.send(Err(e));
            }
            ReplyTo::None => log::warn!("background change failed: {e}"),
        }
    }

    fn snapshot(&self, cid: &str) -> Option<Conversation> {
        let c = self.convs.get(cid)?;
        let pos = match c.status {
            ConvStatus::Queued => self.rooms.get(&c.room).and_then(|r| r.position(cid)),
            _ => None,
        };
        Some(c.snapshot(pos))
    }

    /// Ends a session that cannot keep up (PROTOCOL.md §7.5).
    fn jam(&mut self, sid: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get(&sid) else { return };
        log::info!("session s_{sid:016x} ({}) overflowed its outbound queue: closing with 4008", s.user.id);
        crate::http::metrics::counters().sessions_jammed.inc();
        if let Some(j) = s.jam.clone() {
            j.trip();
            ctx.run_later(JAM_FORCE_AFTER, move |_, _| j.force());
        }
        let _ = s.outbox.try_send(Outbound::Close(close::TOO_SLOW, "outbound queue overflow"));
        self.remove_session(sid, ctx);
    }

    /// Runs the work that handlers left behind: jammed sessions, automatic
    /// assignment, queue positions and presence. Called at the end of every handler.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        for m in std::mem::take(&mut self.replay) {
            self.client_request(m, ctx);
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
            let rooms: Vec<String> = self.assign_rooms.drain().collect();
            for r in &rooms {
                self.assign_room(r);
            }
            for (r, from) in std::mem::take(&mut self.position_rooms) {
                self.refresh_positions(&r, from);
            }
            for a in std::mem::take(&mut self.presence_agents) {
                self.broadcast_presence(&a);
            }
            self.tell_room_status();
            if self.jammed.is_empty() && self.assign_rooms.is_empty() && self.position_rooms.is_empty() {
                break;
            }
        }
    }

    /// Whether anyone is online to answer in `room`: an agent (or bot) who
    /// joined it and is not away.
    fn room_online(&self, room: &Room) -> bool {
        room.agents
            .keys()
            .filter_map(|id| self.agents.get(id))
            .any(|a| a.availability == Availability::Online && !a.sessions.is_empty())
    }

    /// The rooms as `welcome` lists them.
    fn room_infos(&self) -> Vec<RoomInfo> {
        self.cfg
            .rooms
            .iter()
            .filter_map(|name| self.rooms.get(name).map(|r| (name, r)))
            .map(|(name, r)| RoomInfo { name: name.clone(), manual: r.manual, online: self.room_online(r) })
            .collect()
    }

    /// Tells every customer session when a room goes from nobody online to
    /// somebody, or back (the widget offers to leave a message meanwhile).
    fn tell_room_status(&mut self) {
        let changed: Vec<(String, bool)> = self
            .rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.online_told, self.room_online(r)))
            .filter(|(_, told, now)| told != now)
            .map(|(name, _, now)| (name, now))
            .collect();
        if changed.is_empty() {
            return;
        }
        for (name, online) in changed {
            if let Some(r) = self.rooms.get_mut(&name) {
                r.online_told = online;
            }
            self.publish(Effect::RoomStatus { room: name, online });
        }
    }

    fn broadcast_presence(&mut self, agent_id: &str) {
        let Some(a) = self.agents.get(agent_id) else { return };
        let mut out = Vec::new();
        for (name, room) in &self.rooms {
            if room.agents.contains_key(agent_id) {
                out.push(a.presence(name, true));
            }
        }
        for presence in out {
            self.publish(Effect::Presence { presence, exclude: None });
        }
    }

    /// Pushes the new position of every queued conversation from index `from`
    /// on whose position changed since it was last pushed.
    fn refresh_positions(&mut self, room: &str, from: usize) {
        let Some(r) = self.rooms.get(room) else { return };
        let changed: Vec<(String, u32)> = r
            .queue
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, c)| (c.clone(), i as u32 + 1))
            .filter(|(c, p)| self.convs.get(c).is_some_and(|c| c.pushed_position != Some(*p)))
            .collect();
        // Every waiting customer hears their new position. The room's agents
        // hear it too, unless so many moved at once that it would flood each
        // of them with the whole queue; the order they hold stays right, since
        // everyone behind a departure moves up together.
        let to_agents = changed.len() <= POSITION_PUSHES_TO_AGENTS;
        for (cid, pos) in changed {
            let Some(conv) = self.convs.get_mut(&cid) else { continue };
            conv.pushed_position = Some(pos);
            let conversation = conv.snapshot(Some(pos));
            self.publish(Effect::Conversation {
                conversation,
                customer: true,
                agents: to_agents,
                also: None,
                exclude: None,
            });
        }
    }

    // ------------------------------------------------------------ writes

    /// Refuses new writes while too many are in flight (the store's queue stays bounded).
    fn busy(&self) -> Result<(), ApiError> {
        if self.pending.len() >= MAX_PENDING_WRITES {
            return Err(ApiError::unavailable("server busy: too many writes in flight, retry later"));
        }
        Ok(())
    }

    fn submit(&mut self, op: WriteOp, p: Pending) {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, p);
        self.store.submit(token, op);
    }

    /// Submits; when busy, answers the requester with the error instead.
    fn submit_or_reply(&mut self, op: WriteOp, p: Pending) {
        match self.busy() {
            Ok(()) => self.submit(op, p),
            Err(e) => {
                let reply = match p {
                    Pending::Open { reply, .. }
                    | Pending::Send { reply, .. }
                    | Pending::Change { reply, .. }
                    | Pending::Rate { reply, .. } => reply,
                    Pending::Read { .. } => ReplyTo::None,
                    Pending::Contact { reply, .. } => reply,
                };
                self.reply_error(reply, e);
            }
        }
    }

    /// Moves a conversation to a new state, keeping every index (room queues,
    /// agent loads, customer's open list) in step. Called once the change is
    /// committed (or to match what the store holds).
    fn apply_core(&mut self, cid: &str, new: ConvCore, place: QueuePlace) {
        // Where its queue time puts it, among the others (for `ByTime`).
        let by_time = match (place, new.status) {
            (QueuePlace::ByTime, ConvStatus::Queued) => self.rooms.get(&new.room).map(|r| {
                r.queue
                    .iter()
                    .filter(|c| c.as_str() != cid)
                    .position(|c| self.convs.get(c).is_some_and(|c| c.queued_at > new.queued_at))
                    .unwrap_or(r.queue.len().saturating_sub(usize::from(r.queue.iter().any(|c| c == cid))))
            }),
            _ => None,
        };
        let Some(conv) = self.convs.get_mut(cid) else { return };
        let old = conv.core();
        if old.status == ConvStatus::Queued {
            if let Some(i) = self.rooms.get_mut(&old.room).and_then(|r| r.remove(cid)) {
                mark_positions(&mut self.position_rooms, &old.room, i);
            }
        }
        if old.status == ConvStatus::Active {
            if let Some(a) = old.agent.as_ref().and_then(|a| self.agents.get_mut(&a.id)) {
                a.active.remove(cid);
                self.presence_agents.insert(a.user.id.clone());
                self.assign_rooms.insert(old.room.clone());
            }
        }
        conv.status = new.status;
        conv.agent = new.agent.clone();
        conv.room = new.room.clone();
        conv.queued_at = new.queued_at;
        conv.transferred_from = new.transferred_from;
        match new.status {
            ConvStatus::Queued => {
                conv.pushed_position = None;
                if let Some(r) = self.rooms.get_mut(&new.room) {
                    let at = match place {
                        QueuePlace::Back => {
                            r.queue.push_back(cid.to_string());
                            r.queue.len() - 1
                        }
                        QueuePlace::Front => {
                            r.queue.push_front(cid.to_string());
                            0
                        }
                        QueuePlace::ByTime => {
                            let at = by_time.unwrap_or(r.queue.len()).min(r.queue.len());
                            r.queue.insert(at, cid.to_string());
                            at
                        }
                    };
                    mark_positions(&mut self.position_rooms, &new.room, at);
                }
                self.assign_rooms.insert(new.room.clone());
            }
            ConvStatus::Active => {
                conv.pushed_position = None;
                if let Some(a) = new.agent.as_ref().and_then(|a| self.agents.get_mut(&a.id)) {
                    a.active.insert(cid.to_string());
                    self.tick += 1;
                    a.last_assigned = self.tick;
                    self.presence_agents.insert(a.user.id.clone());
                }
            }
            ConvStatus::Closed => conv.pushed_position = None,
        }
        let customer = conv.customer.id.clone();
        let c = self.customers.entry(customer).or_default();
        if new.status == ConvStatus::Closed {
            c.open.retain(|x| x != cid);
            if old.status != ConvStatus::Closed {
                self.closed_lru.push_back(cid.to_string());
                self.evict_closed();
            }
        } else if !c.open.iter().any(|x| x == cid) {
            c.open.push(cid.to_string());
        }
    }

    fn evict_closed(&mut self) {
        while self.closed_lru.len() > CLOSED_CACHE {
            if let Some(old) = self.closed_lru.pop_front() {
                if self.convs.get(&old).is_some_and(|c| c.status == ConvStatus::Closed) {
                    self.convs.remove(&old);
                }
            }
        }
    }

    /// A state change with its event message (PROTOCOL.md §8: every change
    /// writes an event).
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        cid: &str,
        status: ConvStatus,
        agent: Option<User>,
        room: Option<String>,
        place: QueuePlace,
        event: serde_json::Value,
        body: String,
        reply: ReplyTo,
    ) {
        let Some(conv) = self.convs.get(cid) else { return };
        if conv.changing {
            // Requests wait for the change in flight (see `client_request`);
            // background work (assignment, sweeps) comes back to it later.
            if !matches!(reply, ReplyTo::None) {
                self.reply_error(reply, ApiError::conflict(format!("conversation {cid} is changing: retry")));
            }
            return;
        }
        if let Err(e) = self.busy() {
            return self.reply_error(reply, e);
        }
        let before = conv.core();
        let also = before.agent.as_ref().map(|a| a.id.clone());
        let now = now_ms();
        let room = room.unwrap_or_else(|| before.room.clone());
        // The queue is ordered by queue time, so that a restart restores it:
        // a conversation put back at the front keeps a time before the front's.
        let queued_at = match (status, place) {
            (ConvStatus::Queued, QueuePlace::Back) => now,
            (ConvStatus::Queued, QueuePlace::Front) => {
                let front = self.rooms.get(&room).and_then(|r| r.queue.front()).and_then(|c| self.convs.get(c));
                front.map_or(before.queued_at, |f| before.queued_at.min(f.queued_at - 1))
            }
            _ => before.queued_at,
        };
        // Only an agent's own transfer keeps them from getting it straight
        // back; a return to the queue because the agent went away does not.
        let explicit_transfer = event["name"] == "transferred" && event["reason"].is_null();
        let transferred_from = match &before.agent {
            Some(a) if explicit_transfer => Some((a.id.clone(), Instant::now() + self.cfg.transfer_pass_over)),
            _ if status == ConvStatus::Active => None,
            _ => before.transferred_from.clone(),
        };
        let new = ConvCore { status, agent: agent.clone(), queued_at, room: room.clone(), transferred_from };
        // A new assignee: the store checks their capacity as it commits, and
        // meanwhile the conversation counts against it here.
        let incoming = match (&agent, status) {
            (Some(a), ConvStatus::Active) if before.agent.as_ref().map(|b| &b.id) != Some(&a.id) => Some(a.id.clone()),
            _ => None,
        };
        let capacity = incoming.as_ref().map(|id| self.agents.get(id).map_or(u32::MAX, |a| a.max));
        if let Some(a) = incoming.as_ref().and_then(|id| self.agents.get_mut(id)) {
            a.incoming.insert(cid.to_string());
        }
        if let Some(c) = self.convs.get_mut(cid) {
            c.changing = true;
        }
        let expect = Expect { status: before.status, agent: before.agent.as_ref().map(|a| a.id.clone()) };
        let msg = NewMessage {
            id: new_id("m_"),
            conversation: cid.to_string(),
            ts: now,
            from: User::system(),
            kind: MsgKind::Event,
            body,
            client_id: None,
            event: Some(event),
        };
        let op = WriteOp::Update { expect, status, agent, room, queued_at, capacity, event: msg };
        self.submit(op, Pending::Change { reply, conv: cid.to_string(), new, place, also, incoming });
    }

    /// A routing change of `cid` committed or was refused: requests that
    /// waited for it run now, and the assignee's reservation ends.
    fn change_settled(&mut self, cid: &str, incoming: Option<&str>) {
        if let Some(c) = self.convs.get_mut(cid) {
            c.changing = false;
        }
        if let Some(a) = incoming.and_then(|id| self.agents.get_mut(id)) {
            a.incoming.remove(cid);
        }
        if let Some(waiting) = self.deferred.remove(cid) {
            self.replay.extend(waiting);
        }
    }

    /// Brings a conversation this node held stale in line with the store
    /// (after a refused change), then lets assignment choose again.
    fn reconcile(&mut self, row: ConvRow) {
        let Some(conv) = self.convs.get(&row.id) else { return };
        if conv.changing {
            return; // a newer change is on its way; its outcome will tell
        }
        let core = ConvCore {
            status: row.status,
            agent: row.agent,
            queued_at: row.queued_at,
            room: row.room.clone(),
            transferred_from: conv.transferred_from.clone(),
        };
        self.apply_core(&row.id, core, QueuePlace::ByTime);
        if let Some(c) = self.convs.get_mut(&row.id) {
            c.last_seq = c.last_seq.max(row.last_seq);
            c.rated = row.rated;
        }
        if let Some(conversation) = self.snapshot(&row.id) {
            self.publish(Effect::Conversation {
                conversation,
                customer: true,
                agents: true,
                also: None,
                exclude: None,
            });
        }
        self.assign_rooms.insert(row.room);
    }

    fn assign_room(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        if r.manual {
            return;
        }
        // Strictly oldest first: nobody is served ahead of the queue's head.
        // The agent who transferred a conversation away is passed over for it
        // for `--transfer-pass-over-ms`; if only they could take it, the queue
        // waits that long and then they get it (the periodic sweep retries).
        let now = Instant::now();
        let queue: Vec<String> = r.queue.iter().cloned().collect();
        for cid in queue {
            let Some(r) = self.rooms.get(room) else { return };
            if self.convs.get(&cid).is_none_or(|c| c.changing) {
                continue; // being assigned (or otherwise changed) already
            }
            let skip = self
                .convs
                .get(&cid)
                .and_then(|c| c.transferred_from.as_ref())
                .filter(|(_, until)| *until > now)
                .map(|(a, _)| a.as_str());
            let Some(agent) = pick_agent(r, &self.agents, skip) else { break };
            let user = agent.user.clone();
            self.assign(&cid, user, ReplyTo::None);
        }
    }

    fn assign(&mut self, cid: &str, agent: User, reply: ReplyTo) {
        let body = format!("{} joined the conversation", agent.name);
        let event = json!({"name": "assigned", "agent": agent});
        self.change(cid, ConvStatus::Active, Some(agent), None, QueuePlace::Back, event, body, reply);
    }

    // ------------------------------------------------------------ completions

    fn complete(&mut self, c: Completion) {
        let Some(p) = self.pending.remove(&c.token) else { return };
        match (p, c.result) {
            (Pending::Open { reply, conv }, Ok(_)) => {
                let Some(snap) = self.snapshot(&conv) else { return };
                let mut exclude = None;
                if let ReplyTo::Session { sid, r#ref } = reply {
                    let f = Out::Conversation { r#ref: r#ref.as_deref(), conversation: &snap }.encode();
                    self.send(sid, &f);
                    exclude = Some(sid);
                }
                let conversation = snap.clone();
                self.publish(Effect::Conversation { conversation, customer: true, agents: true, also: None, exclude });
                if self.webhooks.wants("conversation.created") {
                    self.webhooks.emit("conversation.created", json!({ "conversation": snap }));
                }
            }
            (Pending::Open { reply, conv }, Err(e)) => {
                if let Some(c) = self.convs.remove(&conv) {
                    if let Some(i) = self.rooms.get_mut(&c.room).and_then(|r| r.remove(&conv)) {
                        mark_positions(&mut self.position_rooms, &c.room, i);
                    }
                    if let Some(cu) = self.customers.get_mut(&c.customer.id) {
                        cu.open.retain(|x| *x != conv);
                    }
                    if let Some(a) = c.agent.and_then(|a| self.agents.get_mut(&a.id)) {
                        a.active.remove(&conv);
                    }
                }
                self.reply_error(reply, e.into());
            }
            (Pending::Send { reply, exclude }, Ok(WriteOutcome::Appended { message, duplicate })) => {
                match reply {
                    ReplyTo::Session { sid, r#ref } => {
                        let f = Out::Ack {
                            r#ref: r#ref.as_deref(),
                            client_id: message.client_id.as_deref(),
                            conversation: Some(&message.conversation),
                            seq: Some(message.seq),
                            id: Some(&message.id),
                            ts: Some(message.ts),
                        }
                        .encode();
                        self.send(sid, &f);
                    }
                    ReplyTo::HttpSend(tx) => {
                        let _ = tx.send(Ok(Message::clone(&message)));
                    }
                    ReplyTo::None => {}
                }
                if !duplicate {
                    if let Some(c) = self.convs.get_mut(&message.conversation) {
                        c.last_seq = c.last_seq.max(message.seq);
                    }
                    self.publish(Effect::Message { message: message.clone(), also: None, exclude });
                    let note = message.kind == MsgKind::Note;
                    if self.webhooks.wants("message.created") && (!note || self.webhooks.notes()) {
                        self.webhooks.emit("message.created", json!({ "message": &*message }));
                    }
                }
            }
            (Pending::Send { reply, .. }, Ok(WriteOutcome::Done)) => self.reply_error(reply, ApiError::internal()),
            (Pending::Send { reply, .. }, Err(e)) => self.reply_error(reply, e.into()),
            (Pending::Change { reply, conv, new, place, also, incoming }, Ok(outcome)) => {
                self.change_settled(&conv, incoming.as_deref());
                self.apply_core(&conv, new, place);
                // The snapshot's last_seq counts the change's own event.
                if let (WriteOutcome::Appended { message, .. }, Some(c)) = (&outcome, self.convs.get_mut(&conv)) {
                    c.last_seq = c.last_seq.max(message.seq);
                }
                let Some(snap) = self.snapshot(&conv) else { return };
                let mut exclude = None;
                if let ReplyTo::Session { sid, r#ref } = &reply {
                    let f = Out::Conversation { r#ref: r#ref.as_deref(), conversation: &snap }.encode();
                    self.send(*sid, &f);
                    exclude = Some(*sid);
                }
                if let Some(c) = self.convs.get_mut(&conv) {
                    c.pushed_position = snap.queue_position;
                }
                let conversation = snap.clone();
                self.publish(Effect::Conversation {
                    conversation,
                    customer: true,
                    agents: true,
                    also: also.clone(),
                    exclude,
                });
                if let WriteOutcome::Appended { message, .. } = outcome {
                    self.publish(Effect::Message { message: message.clone(), also, exclude: None });
                    let kind = match message.event.as_ref().and_then(|e| e["name"].as_str()) {
                        Some("assigned") => Some("conversation.assigned"),
                        Some("closed") => Some("conversation.closed"),
                        _ => None,
                    };
                    if let Some(kind) = kind.filter(|k| self.webhooks.wants(k)) {
                        self.webhooks.emit(kind, json!({ "conversation": snap, "event": message.event }));
                    }
                }
            }
            (Pending::Change { reply, conv, incoming, .. }, Err(e)) => {
                // Nothing was applied, in the store or here.
                self.change_settled(&conv, incoming.as_deref());
                if matches!(e, StoreError::Conflict(_)) {
                    // What this node knew was stale: reload it, then choose again.
                    log::info!("routing change of {conv} refused: {e}");
                    self.reload.push(conv.clone());
                }
                self.reply_error(reply, e.into());
            }
            (Pending::Rate { reply, conv }, res) => match res {
                Ok(WriteOutcome::Appended { message, .. }) => {
                    if let Some(c) = self.convs.get_mut(&conv) {
                        c.last_seq = c.last_seq.max(message.seq);
                    }
                    if let ReplyTo::Session { sid, r#ref } = reply {
                        let f = protocol::ack(r#ref.as_deref());
                        self.send(sid, &f);
                    }
                    self.publish(Effect::Message { message: message.clone(), also: None, exclude: None });
                    if self.webhooks.wants("conversation.rated") {
                        let snap = self.snapshot(&conv);
                        self.webhooks
                            .emit("conversation.rated", json!({ "conversation": snap, "event": message.event }));
                    }
                }
                Ok(WriteOutcome::Done) => self.reply_error(reply, ApiError::internal()),
                Err(e) => {
                    if !matches!(e, StoreError::Conflict(_)) {
                        if let Some(c) = self.convs.get_mut(&conv) {
                            c.rated = false;
                        }
                    }
                    self.reply_error(reply, e.into());
                }
            },
            (Pending::Read { conv, from, seq }, Ok(_)) => {
                self.publish(Effect::Read { conversation: conv, from, seq });
            }
            (Pending::Read { .. }, Err(e)) => log::warn!("read marker not stored: {e}"),
            (Pending::Contact { reply, conv, email }, res) => match res {
                Ok(_) => {
                    if let Some(c) = self.convs.get_mut(&conv) {
                        c.contact_email = Some(email);
                    }
                    if let ReplyTo::Session { sid, r#ref } = &reply {
                        let f = protocol::ack(r#ref.as_deref());
                        self.send(*sid, &f);
                    }
                    if let Some(conversation) = self.snapshot(&conv) {
                        let e = Effect::Conversation {
                            conversation,
                            customer: false,
                            agents: true,
                            also: None,
                            exclude: None,
                        };
                        self.publish(e);
                    }
                }
                Err(e) => self.reply_error(reply, e.into()),
            },
        }
    }

    // ------------------------------------------------------------ sessions

    fn remove_session(&mut self, sid: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.remove(&sid) else { return };
        for room in &s.rooms {
            self.leave_room(sid, &s.user.id, room);
        }
        match s.user.role {
            Role::Agent => {
                let grace = Duration::from_millis(self.cfg.agent_grace_ms);
                if let Some(a) = self.agents.get_mut(&s.user.id) {
                    a.sessions.remove(&sid);
                    if a.sessions.is_empty() {
                        let id = s.user.id.clone();
                        a.grace = Some(ctx.run_later(grace, move |act, ctx| act.grace_expired(&id, ctx)));
                    }
                }
            }
            _ => {
                if let Some(c) = self.customers.get_mut(&s.user.id) {
                    c.sessions.remove(&sid);
                    c.away_since = Instant::now();
                    if c.sessions.is_empty() && c.open.is_empty() {
                        self.customers.remove(&s.user.id);
                    }
                }
            }
        }
    }

    fn leave_room(&mut self, sid: u64, agent_id: &str, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if !r.sessions.remove(&sid) {
            return;
        }
        let gone = match r.agents.get_mut(agent_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                r.agents.remove(agent_id);
                true
            }
            None => false,
        };
        if gone {
            if let Some(presence) = self.agents.get(agent_id).map(|a| a.presence(room, false)) {
                self.publish(Effect::Presence { presence, exclude: None });
            }
        }
    }

    /// PROTOCOL.md §8: an agent gone longer than the grace period loses their
    /// active conversations to the front of their rooms' queues.
    fn grace_expired(&mut self, agent_id: &str, ctx: &mut Context<Self>) {
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        a.grace = None;
        if !a.sessions.is_empty() {
            return;
        }
        self.requeue_all(agent_id, "agent_offline", "went offline");
        self.finish(ctx);
    }

    /// Queued conversations whose customer has had no session for
    /// `--abandon-after-ms` leave the queue, closed as abandoned: agents are
    /// never handed a customer who left long ago, and a flood of
    /// open-and-leave cannot fill the queue. A returning customer opens again.
    fn sweep_abandoned(&mut self, ctx: &mut Context<Self>) {
        let after = self.cfg.abandon_after;
        let gone: Vec<String> = self
            .rooms
            .values()
            .flat_map(|r| r.queue.iter())
            .filter(|cid| {
                self.convs.get(*cid).is_some_and(|c| {
                    self.customers
                        .get(&c.customer.id)
                        .is_none_or(|cu| cu.sessions.is_empty() && cu.away_since.elapsed() >= after)
                })
            })
            .cloned()
            .collect();
        for cid in gone {
            log::info!("{cid}: the customer left {} s ago; closed as abandoned", after.as_secs());
            let event = json!({"name": "closed", "by": null, "reason": "abandoned"});
            let body = "The customer left before an agent was free".to_string();
            self.change(&cid, ConvStatus::Closed, None, None, QueuePlace::Back, event, body, ReplyTo::None);
        }
        // Queues held back by an agent passed over get another look.
        let waiting: Vec<String> =
            self.rooms.iter().filter(|(_, r)| !r.queue.is_empty()).map(|(n, _)| n.clone()).collect();
        self.assign_rooms.extend(waiting);
        self.finish(ctx);
    }

    /// Returns an absent agent's active conversations to the front of their
    /// rooms' queues, newest last so the oldest stays first.
    fn requeue_all(&mut self, agent_id: &str, reason: &str, why: &str) {
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        a.availability = Availability::Offline;
        let user = a.user.clone();
        // Each goes to the front in turn, newest first: the oldest ends up first.
        let mut active: Vec<(protocol::Ts, String)> =
            a.active.iter().map(|c| (self.convs.get(c).map_or(0, |c| c.queued_at), c.clone())).collect();
        active.sort_unstable_by(|x, y| y.cmp(x));
        for (_, cid) in active {
            let Some(room) = self.convs.get(&cid).map(|c| c.room.clone()) else { continue };
            log::info!("agent {} {why}: {cid} returns to the queue of {room}", user.id);
            let event = json!({"name": "transferred", "from_agent": user, "to_agent": null, "to_room": room,
                               "reason": reason, "internal": true});
            let body = format!("{} {why}; back in the queue", user.name);
            self.change(&cid, ConvStatus::Queued, None, None, QueuePlace::Front, event, body, ReplyTo::None);
        }
    }

    /// Ends sessions whose credentials no longer stand (close 4501: the
    /// client signs in again rather than reconnecting with the same token).
    fn revoke_sessions(&mut self, sids: Vec<u64>, reason: &'static str, ctx: &mut Context<Self>) {
        for sid in sids {
            let Some(s) = self.sessions.get(&sid) else { continue };
            log::info!("session s_{sid:016x} ({}) ends: {reason}", s.user.id);
            if s.outbox.try_send(Outbound::Close(close::UNAUTHORIZED, reason)).is_err() {
                if let Some(j) = s.jam.clone() {
                    j.trip();
                    ctx.run_later(JAM_FORCE_AFTER, move |_, _| j.force());
                }
            }
            self.remove_session(sid, ctx);
        }
    }

    /// The agent accounts as stored now: sessions of removed accounts end
    /// and their conversations go back to the queue at once (no grace for
    /// an account that is gone); sessions opened with a token issued before
    /// a password change end (the usual grace applies); names and
    /// capacities follow the accounts.
    fn refresh_accounts(&mut self, rows: Vec<AgentRow>, ctx: &mut Context<Self>) {
        let rows: HashMap<String, AgentRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let known: Vec<String> = self.agents.keys().cloned().collect();
        for id in known {
            match rows.get(&id) {
                None => {
                    let Some(a) = self.agents.get(&id) else { continue };
                    if a.sessions.is_empty() && a.active.is_empty() {
                        self.agents.remove(&id);
                        continue;
                    }
                    let sids: Vec<u64> = a.sessions.iter().copied().collect();
                    self.revoke_sessions(sids, "account removed", ctx);
                    if let Some(h) = self.agents.get_mut(&id).and_then(|a| a.grace.take()) {
                        ctx.cancel_future(h);
                    }
                    self.requeue_all(&id, "agent_removed", "was removed");
                    self.agents.remove(&id);
                    self.presence_agents.remove(&id);
                }
                Some(row) => {
                    let max = row.max_active.unwrap_or(self.cfg.max_active);
                    let Some(a) = self.agents.get_mut(&id) else { continue };
                    if a.max != max || a.user.name != row.name {
                        a.max = max;
                        a.user.name = row.name.clone();
                        self.presence_agents.insert(id.clone());
                        self.assign_rooms.extend(self.rooms.keys().cloned());
                    }
                    a.bot = row.bot;
                    let stale: Vec<u64> = a
                        .sessions
                        .iter()
                        .copied()
                        .filter(|sid| self.sessions.get(sid).is_some_and(|s| !row.token_valid(s.token_iat)))
                        .collect();
                    self.revoke_sessions(stale, "password changed: sign in again", ctx);
                }
            }
        }
        self.finish(ctx);
    }

    // ------------------------------------------------------------ requests

    fn access(&self, who: &Who, conv: &Conv) -> Result<Access, ApiError> {
        match who.user.role {
            Role::Customer if conv.customer.id == who.user.id => Ok(Access::Customer),
            Role::Customer | Role::System => Err(not_found_conv(&conv.id)),
            Role::Agent => {
                if conv.agent.as_ref().is_some_and(|a| a.id == who.user.id) {
                    return Ok(Access::Assignee);
                }
                match who.sid {
                    None => Ok(Access::RoomAgent),
                    Some(sid) if self.sessions.get(&sid).is_some_and(|s| s.rooms.contains(&conv.room)) => {
                        Ok(Access::RoomAgent)
                    }
                    Some(_) => Err(ApiError::forbidden(format!(
                        "not a member of conversation {}: join room `{}` or be its assignee",
                        conv.id, conv.room
                    ))),
                }
            }
        }
    }

    fn conv_for(&self, who: &Who, cid: &str) -> Result<(&Conv, Access), ApiError> {
        let conv = self.convs.get(cid).ok_or_else(|| not_found_conv(cid))?;
        let access = self.access(who, conv)?;
        Ok((conv, access))
    }

    fn request(
        &mut self,
        who: Who,
        r#ref: Option<String>,
        req: Request,
        ctx: &mut Context<Self>,
    ) -> Result<(), ApiError> {
        let sid = who.sid.unwrap_or(0);
        let reply = ReplyTo::Session { sid, r#ref: r#ref.clone() };
        match req {
            Request::Hello(_) => Err(ApiError::bad_request("hello: already said; one hello per connection")),
            Request::Ping | Request::Pong => Ok(()),
            Request::Open(o) => self.open(&who, o, reply),
            Request::Send(s) => {
                let msg = self.prepare_send(&who, s.conversation, s.client_id, s.body, s.internal)?;
                self.submit_or_reply(WriteOp::Append(msg), Pending::Send { reply, exclude: who.sid });
                Ok(())
            }
            Request::Sync(q) => {
                let limit = q.limit.unwrap_or(SYNC_DEFAULT_LIMIT);
                if limit == 0 || limit > SYNC_MAX_LIMIT {
                    return Err(ApiError::bad_request(format!("limit: must be 1 to {SYNC_MAX_LIMIT}")));
                }
                let (_, access) = self.conv_for(&who, &q.conversation)?;
                let history = self.store.history(&q.conversation, q.after_seq, limit);
                let marks = self.store.read_markers(&q.conversation);
                let fut = async move {
                    let (messages, more) = history.await?;
                    let marks = marks.await?;
                    Ok::<_, StoreError>((messages, more, marks))
                };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    let f = match res {
                        Ok((messages, more, marks)) => {
                            let page = page_for(access, messages, more);
                            let reads: Vec<ReadMark> =
                                marks.into_iter().map(|(user, seq)| ReadMark { user, seq }).collect();
                            Out::History {
                                r#ref: r#ref.as_deref(),
                                body: HistoryBody {
                                    conversation: &q.conversation,
                                    messages: &page.messages,
                                    more: page.more,
                                    hidden_seqs: page.hidden_seqs.as_deref(),
                                    reads: &reads,
                                },
                            }
                            .encode()
                        }
                        Err(e) => error_frame(r#ref.as_deref(), &e.into()),
                    };
                    act.send(sid, &f);
                    act.finish(ctx);
                }));
                Ok(())
            }
            Request::Typing(t) => {
                self.conv_for(&who, &t.conversation)?;
                let e = Effect::Typing { conversation: t.conversation, from: who.user, on: t.on, exclude: who.sid };
                self.publish(e);
                Ok(())
            }
            Request::Read(r) => {
                let (conv, _) = self.conv_for(&who, &r.conversation)?;
                if r.seq > conv.last_seq {
                    return Err(ApiError::bad_request(format!(
                        "seq: {} is past the conversation's last seq {}",
                        r.seq, conv.last_seq
                    )));
                }
                let known = conv.reads.get(&who.user.id).copied().unwrap_or(0);
                if r.seq <= known {
                    return Ok(()); // read markers only move forward
                }
                if let Some(c) = self.convs.get_mut(&r.conversation) {
                    c.reads.insert(who.user.id.clone(), r.seq);
                }
                let op =
                    WriteOp::Read { conversation: r.conversation.clone(), user_id: who.user.id.clone(), seq: r.seq };
                self.submit_or_reply(op, Pending::Read { conv: r.conversation, from: who.user, seq: r.seq });
                Ok(())
            }
            Request::Join(j) => self.join(&who, j.room, r#ref),
            Request::Leave(l) => {
                agent_only(&who, "leave")?;
                if !self.rooms.contains_key(&l.room) {
                    return Err(no_room(&l.room));
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.rooms.remove(&l.room);
                }
                self.leave_room(sid, &who.user.id, &l.room);
                let f = protocol::ack(r#ref.as_deref());
                self.send(sid, &f);
                Ok(())
            }
            Request::Accept(a) => {
                agent_only(&who, "accept")?;
                let (conv, _) = self.conv_for(&who, &a.conversation)?;
                match conv.status {
                    ConvStatus::Queued => {}
                    ConvStatus::Active => {
                        return Err(ApiError::conflict(format!("conversation {} is already taken", conv.id)))
                    }
                    ConvStatus::Closed => {
                        return Err(ApiError::conflict(format!("conversation {} is closed", conv.id)))
                    }
                }
                self.check_capacity(&who.user.id)?;
                self.assign(&a.conversation, who.user, reply);
                Ok(())
            }
            Request::Transfer(t) => self.transfer(&who, t, reply),
            Request::Close(c) => {
                let (conv, access) = self.conv_for(&who, &c.conversation)?;
                if access == Access::RoomAgent {
                    return Err(ApiError::forbidden("only the customer or the assignee may close a conversation"));
                }
                if conv.status == ConvStatus::Closed {
                    return Err(ApiError::conflict(format!("conversation {} is already closed", conv.id)));
                }
                let agent = conv.agent.clone();
                let event = json!({"name": "closed", "by": who.user});
                let body = format!("{} closed the conversation", who.user.name);
                self.change(&c.conversation, ConvStatus::Closed, agent, None, QueuePlace::Back, event, body, reply);
                Ok(())
            }
            Request::Rate(r) => {
                let (conv, access) = self.conv_for(&who, &r.conversation)?;
                if access != Access::Customer {
                    return Err(ApiError::forbidden("only the customer rates a conversation"));
                }
                if !(1..=5).contains(&r.score) {
                    return Err(ApiError::bad_request("score: must be 1 to 5"));
                }
                if r.comment.as_deref().is_some_and(|c| char_len(c) > MAX_COMMENT_CHARS) {
                    return Err(ApiError::bad_request(format!("comment: at most {MAX_COMMENT_CHARS} characters")));
                }
                if conv.status != ConvStatus::Closed {
                    return Err(ApiError::conflict("only a closed conversation can be rated"));
                }
                if conv.rated {
                    return Err(ApiError::conflict("this conversation is already rated"));
                }
                if let Some(c) = self.convs.get_mut(&r.conversation) {
                    c.rated = true;
                }
                let event = json!({"name": "rated", "score": r.score, "comment": r.comment});
                let msg = NewMessage {
                    id: new_id("m_"),
                    conversation: r.conversation.clone(),
                    ts: now_ms(),
                    from: User::system(),
                    kind: MsgKind::Event,
                    body: format!("{} rated the conversation {}/5", who.user.name, r.score),
                    client_id: None,
                    event: Some(event),
                };
                let op = WriteOp::Rate { score: r.score as u8, comment: r.comment, event: msg };
                self.submit_or_reply(op, Pending::Rate { reply, conv: r.conversation });
                Ok(())
            }
            Request::Contact(c) => {
                let (conv, access) = self.conv_for(&who, &c.conversation)?;
                if access != Access::Customer {
                    return Err(ApiError::forbidden("only the customer leaves a contact address"));
                }
                let email = c.email.trim().to_string();
                if !protocol::plausible_email(&email) {
                    return Err(ApiError::bad_request(format!(
                        "email: not an email address (name@example.com, at most {} characters)",
                        protocol::MAX_EMAIL_CHARS
                    )));
                }
                if conv.status == ConvStatus::Closed {
                    return Err(ApiError::conflict("this conversation is closed: open a new one"));
                }
                let op = WriteOp::Contact { conversation: c.conversation.clone(), email: email.clone() };
                self.submit_or_reply(op, Pending::Contact { reply, conv: c.conversation, email });
                Ok(())
            }
            Request::Status(s) => {
                agent_only(&who, "status")?;
                let availability = match s.availability.as_str() {
                    "online" => Availability::Online,
                    "away" => Availability::Away,
                    other => {
                        return Err(ApiError::bad_request(format!("availability: `{other}` is not online or away")))
                    }
                };
                if let Some(a) = self.agents.get_mut(&who.user.id) {
                    if a.availability != availability {
                        a.availability = availability;
                        self.presence_agents.insert(who.user.id.clone());
                        if availability == Availability::Online {
                            self.assign_rooms.extend(
                                self.rooms
                                    .iter()
                                    .filter(|(_, r)| r.agents.contains_key(&who.user.id))
                                    .map(|(n, _)| n.clone()),
                            );
                        }
                    }
                }
                let f = protocol::ack(r#ref.as_deref());
                self.send(sid, &f);
                Ok(())
            }
        }
    }

    fn open(&mut self, who: &Who, o: Open, reply: ReplyTo) -> Result<(), ApiError> {
        if who.user.role != Role::Customer {
            return Err(ApiError::forbidden("only customers open conversations"));
        }
        let room = o.room.unwrap_or_else(|| "support".to_string());
        if !self.rooms.contains_key(&room) {
            return Err(no_room(&room));
        }
        let existing = self
            .customers
            .get(&who.user.id)
            .and_then(|c| c.open.iter().find(|id| self.convs.get(*id).is_some_and(|c| c.room == room)).cloned());
        if let Some(cid) = existing {
            if let (Some(snap), ReplyTo::Session { sid, r#ref }) = (self.snapshot(&cid), reply) {
                let f = Out::Conversation { r#ref: r#ref.as_deref(), conversation: &snap }.encode();
                self.send(sid, &f);
            }
            return Ok(());
        }
        let addr = who.sid.and_then(|sid| self.sessions.get(&sid)).map(|s| s.addr);
        if let (Some(addr), true) = (addr, self.cfg.opens_per_minute > 0) {
            if let Err(wait) = self.opens.take(&addr) {
                let why = format!(
                    "too many new conversations from your address (at most {} a minute): retry in {} s",
                    self.cfg.opens_per_minute,
                    wait.as_secs() + 1
                );
                return Err(ApiError::rate_limited(why, wait));
            }
        }
        let now = now_ms();
        let id = new_id("c_");
        let conv = Conv {
            id: id.clone(),
            room: room.clone(),
            status: ConvStatus::Queued,
            customer: who.user.clone(),
            agent: None,
            created_at: now,
            queued_at: now,
            last_seq: 0,
            rated: false,
            pushed_position: None,
            transferred_from: None,
            reads: HashMap::new(),
            contact_email: None,
            changing: false,
        };
        let row = ConvRow {
            id: id.clone(),
            room: room.clone(),
            status: ConvStatus::Queued,
            customer: who.user.clone(),
            agent: None,
            created_at: now,
            queued_at: now,
            last_seq: 0,
            rated: false,
            contact_email: None,
        };
        self.busy()?;
        self.submit(WriteOp::CreateConversation(row), Pending::Open { reply, conv: id.clone() });
        let r = self.rooms.get_mut(&room).ok_or_else(|| no_room(&room))?;
        r.queue.push_back(id.clone());
        let pos = r.queue.len() as u32;
        self.convs.insert(id.clone(), Conv { pushed_position: Some(pos), ..conv });
        self.customers.entry(who.user.id.clone()).or_default().open.push(id.clone());
        // A bot-first room hands new conversations to its bot while it is connected.
        let bot = self.cfg.bot_first.get(&room).and_then(|name| {
            self.agents.values().find(|a| a.bot && a.user.name == *name && a.can_take()).map(|a| a.user.clone())
        });
        match bot {
            Some(bot) => self.assign(&id, bot, ReplyTo::None),
            None => {
                self.assign_rooms.insert(room);
            }
        }
        Ok(())
    }

    /// Checks a `send` and builds the message to store (the one send path of
    /// WebSocket and HTTP).
    fn prepare_send(
        &self,
        who: &Who,
        cid: String,
        client_id: String,
        body: String,
        internal: bool,
    ) -> Result<NewMessage, ApiError> {
        if client_id.is_empty() || char_len(&client_id) > MAX_CLIENT_ID_CHARS {
            return Err(ApiError::bad_request(format!("client_id: 1 to {MAX_CLIENT_ID_CHARS} characters")));
        }
        if body.trim().is_empty() {
            return Err(ApiError::bad_request("body: must not be empty"));
        }
        let n = char_len(&body);
        if n > self.cfg.max_body_chars {
            return Err(ApiError::too_large(format!(
                "body: {n} characters, at most {} allowed",
                self.cfg.max_body_chars
            )));
        }
        let (_, access) = self.conv_for(who, &cid)?;
        if internal && access == Access::Customer {
            return Err(ApiError::forbidden("internal: only agents write internal notes"));
        }
        Ok(NewMessage {
            id: new_id("m_"),
            conversation: cid,
            ts: now_ms(),
            from: who.user.clone(),
            kind: if internal { MsgKind::Note } else { MsgKind::Text },
            body,
            client_id: Some(client_id),
            event: None,
        })
    }

    fn join(&mut self, who: &Who, room: String, r#ref: Option<String>) -> Result<(), ApiError> {
        agent_only(who, "join")?;
        let sid = who.sid.unwrap_or(0);
        let r = self.rooms.get_mut(&room).ok_or_else(|| no_room(&room))?;
        let newly_present = if r.sessions.insert(sid) {
            let n = r.agents.entry(who.user.id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            false
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.rooms.insert(room.clone());
        }
        let r = &self.rooms[&room];
        let queue: Vec<Conversation> = r
            .queue
            .iter()
            .take(protocol::ROOM_QUEUE_LISTED)
            .enumerate()
            .filter_map(|(i, c)| self.convs.get(c).map(|c| c.snapshot(Some(i as u32 + 1))))
            .collect();
        let queue_total = r.queue.len();
        let mut agents: Vec<Presence> =
            r.agents.keys().filter_map(|id| self.agents.get(id)).map(|a| a.presence(&room, true)).collect();
        agents.sort_by(|a, b| a.agent.name.cmp(&b.agent.name));
        let f =
            Out::Room { r#ref: r#ref.as_deref(), room: &room, queue: &queue, queue_total, agents: &agents }.encode();
        self.send(sid, &f);
        if newly_present {
            if let Some(presence) = self.agents.get(&who.user.id).map(|a| a.presence(&room, true)) {
                self.publish(Effect::Presence { presence, exclude: Some(sid) });
            }
        }
        self.assign_rooms.insert(room);
        Ok(())
    }

    fn check_capacity(&self, agent_id: &str) -> Result<(), ApiError> {
        match self.agents.get(agent_id) {
            Some(a) if (a.load() as u32) < a.max => Ok(()),
            Some(a) => Err(ApiError::conflict(format!("{} is at capacity ({} of {})", a.user.name, a.load(), a.max))),
            None => Err(ApiError::not_found(format!("no agent {agent_id}"))),
        }
    }

    fn transfer(&mut self, who: &Who, t: Transfer, reply: ReplyTo) -> Result<(), ApiError> {
        agent_only(who, "transfer")?;
        let (conv, access) = self.conv_for(who, &t.conversation)?;
        if access != Access::Assignee {
            return Err(ApiError::forbidden("only the assignee may transfer a conversation"));
        }
        if conv.status != ConvStatus::Active {
            return Err(ApiError::conflict(format!("conversation {} is {}", conv.id, conv.status.as_str())));
        }
        match (t.to_agent, t.to_room) {
            (Some(to), None) => {
                if to == who.user.id {
                    return Err(ApiError::bad_request("to_agent: the conversation is already yours"));
                }
                let target = self.agents.get(&to).ok_or_else(|| ApiError::not_found(format!("no agent {to}")))?;
                let online = target.availability == Availability::Online
                    && !target.sessions.is_empty()
                    && self.rooms.values().any(|r| r.agents.contains_key(&to));
                if !online {
                    return Err(ApiError::conflict(format!("{} is not online in any room", target.user.name)));
                }
                self.check_capacity(&to)?;
                let target = target.user.clone();
                let event = json!({"name": "transferred", "from_agent": who.user, "to_agent": target, "to_room": null});
                let body = format!("{} transferred the conversation to {}", who.user.name, target.name);
                self.change(
                    &t.conversation,
                    ConvStatus::Active,
                    Some(target),
                    None,
                    QueuePlace::Back,
                    event,
                    body,
                    reply,
                );
                Ok(())
            }
            (None, Some(room)) => {
                if !self.rooms.contains_key(&room) {
                    return Err(no_room(&room));
                }
                let event = json!({"name": "transferred", "from_agent": who.user, "to_agent": null, "to_room": room});
                let body = format!("{} transferred the conversation to {}", who.user.name, room);
                self.change(
                    &t.conversation,
                    ConvStatus::Queued,
                    None,
                    Some(room),
                    QueuePlace::Back,
                    event,
                    body,
                    reply,
                );
                Ok(())
            }
            _ => Err(ApiError::bad_request("transfer: give exactly one of to_agent and to_room")),
        }
    }

    /// One request of a session. A routing request about a conversation
    /// whose change is still committing waits for it (and then sees the
    /// conversation as the store has it).
    fn client_request(&mut self, m: ClientRequest, ctx: &mut Context<Self>) {
        if !self.sessions.contains_key(&m.sid) {
            return; // the session is gone
        }
        let Some(m) = self.ready(m, ctx) else { return };
        let routing = matches!(m.req, Request::Accept(_) | Request::Transfer(_) | Request::Close(_) | Request::Rate(_));
        if let Some(cid) = conversation_of(&m.req).filter(|_| routing) {
            if self.convs.get(cid).is_some_and(|c| c.changing) {
                self.deferred.entry(cid.to_string()).or_default().push(m);
                return;
            }
        }
        let Some(s) = self.sessions.get(&m.sid) else { return };
        let who = Who { user: s.user.clone(), sid: Some(m.sid) };
        let (sid, r#ref) = (m.sid, m.r#ref.clone());
        if let Err(e) = self.request(who, m.r#ref, m.req, ctx) {
            self.reply_error(ReplyTo::Session { sid, r#ref }, e);
        }
    }

    /// Gives `msg` back when the conversation it names is in memory (or was
    /// already looked up); otherwise loads it and handles `msg` again later.
    fn ready<M>(&mut self, msg: M, ctx: &mut Context<Self>) -> Option<M>
    where
        M: Retry,
        Self: Handler<M>,
    {
        match msg.conversation() {
            Some(cid) if !msg.loaded() && !self.convs.contains_key(cid) => {
                let cid = cid.to_string();
                self.load_then(cid, msg, ctx);
                None
            }
            _ => Some(msg),
        }
    }

    /// Loads a conversation this node does not hold, then handles `msg` again.
    fn load_then<M>(&mut self, cid: String, mut msg: M, ctx: &mut Context<Self>)
    where
        M: Retry,
        Self: Handler<M>,
    {
        let fut = self.store.conversation(&cid);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(row) => {
                if let Some(row) = row {
                    if !act.convs.contains_key(&row.id) {
                        let closed = row.status == ConvStatus::Closed;
                        let conv = conv_from_row(row);
                        if closed {
                            act.closed_lru.push_back(conv.id.clone());
                        }
                        act.convs.insert(conv.id.clone(), conv);
                        act.evict_closed();
                    }
                }
                msg.mark_loaded();
                ctx.notify(msg);
            }
            Err(e) => {
                msg.fail(act, e.into());
                act.finish(ctx);
            }
        }));
    }
}

/// Messages that name a conversation the node may have to load first.
pub trait Retry: actix::Message<Result = ()> + std::marker::Send + Unpin + 'static {
    /// The conversation it names, if any.
    fn conversation(&self) -> Option<&str>;
    /// Whether that conversation was already looked up in the store.
    fn loaded(&self) -> bool;
    fn mark_loaded(&mut self);
    fn fail(self, srv: &mut ChatServer, e: ApiError);
}

impl Retry for ClientRequest {
    fn conversation(&self) -> Option<&str> {
        conversation_of(&self.req)
    }
    fn loaded(&self) -> bool {
        self.loaded
    }
    fn mark_loaded(&mut self) {
        self.loaded = true;
    }
    fn fail(self, srv: &mut ChatServer, e: ApiError) {
        srv.reply_error(ReplyTo::Session { sid: self.sid, r#ref: self.r#ref }, e);
    }
}

impl Retry for HttpSend {
    fn conversation(&self) -> Option<&str> {
        Some(&self.conversation)
    }
    fn loaded(&self) -> bool {
        self.loaded
    }
    fn mark_loaded(&mut self) {
        self.loaded = true;
    }
    fn fail(self, _: &mut ChatServer, e: ApiError) {
        let _ = self.reply.send(Err(e));
    }
}

impl Retry for HttpHistory {
    fn conversation(&self) -> Option<&str> {
        Some(&self.conversation)
    }
    fn loaded(&self) -> bool {
        self.loaded
    }
    fn mark_loaded(&mut self) {
        self.loaded = true;
    }
    fn fail(self, _: &mut ChatServer, e: ApiError) {
        let _ = self.reply.send(Err(e));
    }
}

fn conv_from_row(row: ConvRow) -> Conv {
    Conv {
        id: row.id,
        room: row.room,
        status: row.status,
        customer: row.customer,
        agent: row.agent,
        created_at: row.created_at,
        queued_at: row.queued_at,
        last_seq: row.last_seq,
        rated: row.rated,
        pushed_position: None,
        transferred_from: None,
        reads: HashMap::new(),
        contact_email: row.contact_email,
        changing: false,
    }
}

/// Notes that positions in `room` changed from index `from` on.
fn mark_positions(dirty: &mut HashMap<String, usize>, room: &str, from: usize) {
    let e = dirty.entry(room.to_string()).or_insert(from);
    *e = (*e).min(from);
}

fn not_found_conv(cid: &str) -> ApiError {
    ApiError::not_found(format!("no conversation {cid}"))
}

fn no_room(room: &str) -> ApiError {
    ApiError::not_found(format!("no room `{room}`"))
}

fn agent_only(who: &Who, what: &str) -> Result<(), ApiError> {
    if who.user.role == Role::Agent {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("{what}: agents only")))
    }
}

/// What a caller may see of a page of history: customers never see notes,
/// and learn their seqs instead so a gap is not mistaken for a loss.
fn page_for(access: Access, messages: Vec<Message>, more: bool) -> HistoryPage {
    if access != Access::Customer {
        return HistoryPage { messages, more, hidden_seqs: None };
    }
    let (notes, visible): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| m.hidden_from_customers());
    HistoryPage { messages: visible, more, hidden_seqs: Some(notes.iter().map(|m| m.seq).collect()) }
}

/// The conversation a request names, if any.
fn conversation_of(req: &Request) -> Option<&str> {
    match req {
        Request::Send(s) => Some(&s.conversation),
        Request::Sync(s) => Some(&s.conversation),
        Request::Typing(t) => Some(&t.conversation),
        Request::Read(r) => Some(&r.conversation),
        Request::Accept(c) | Request::Close(c) => Some(&c.conversation),
        Request::Transfer(t) => Some(&t.conversation),
        Request::Rate(r) => Some(&r.conversation),
        Request::Contact(c) => Some(&c.conversation),
        _ => None,
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
        // period to come back.
        let grace = Duration::from_millis(self.cfg.agent_grace_ms);
        let waiting: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.active.is_empty() && a.sessions.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            let key = id.clone();
            let handle = ctx.run_later(grace, move |act, ctx| act.grace_expired(&key, ctx));
            if let Some(a) = self.agents.get_mut(&id) {
                a.grace = Some(handle);
            }
        }
        let sweep = (self.cfg.abandon_after.min(self.cfg.transfer_pass_over) / 4)
            .clamp(Duration::from_millis(100), ABANDON_SWEEP_MAX);
        ctx.run_interval(sweep, |act, ctx| act.sweep_abandoned(ctx));
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
        let conversations: Vec<Conversation> = match m.user.role {
            Role::Agent => {
                let row = m.agent.as_ref();
                let fresh = row.map(|r| self.agent_state(r));
                let tick = self.tick;
                let a = self.agents.entry(m.user.id.clone()).or_insert_with(|| {
                    fresh.unwrap_or_else(|| AgentState {
                        user: m.user.clone(),
                        max: 0,
                        bot: false,
                        sessions: HashSet::new(),
                        availability: Availability::Offline,
                        active: Default::default(),
                        incoming: Default::default(),
                        last_assigned: 0,
                        grace: None,
                    })
                });
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
                    a.last_assigned = tick;
                }
                a.sessions.insert(sid);
                let ids: Vec<String> = a.active.iter().cloned().collect();
                self.presence_agents.insert(m.user.id.clone());
                ids.iter().filter_map(|c| self.snapshot(c)).collect()
            }
            _ => {
                let c = self.customers.entry(m.user.id.clone()).or_default();
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
                        None => list.push(conv_from_row(row).snapshot(None)),
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
            if !self.rooms.contains_key(r) {
                return Err(no_room(r));
            }
        }
        let positions: HashMap<&str, u32> = self
            .rooms
            .values()
            .flat_map(|r| r.queue.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32 + 1)))
            .collect();
        let mut list: Vec<Conversation> = self
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
            conversations_in_memory: self.convs.len(),
            queued: self.rooms.values().map(|r| r.queue.len()).sum(),
            active: self.convs.values().filter(|c| c.status == ConvStatus::Active).count(),
            agents_online: self.agents.values().filter(|a| !a.sessions.is_empty()).count(),
            pending_writes: self.pending.len(),
        })
    }
}

impl Handler<Drain> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {
        for s in self.sessions.values() {
            s.outbox.do_send(Outbound::Close(close::GOING_AWAY, "server going away"));
        }
    }
}
