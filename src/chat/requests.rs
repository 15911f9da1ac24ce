//! Request handling: one function per request type of PROTOCOL.md §5, the
//! routing requests that wait for a change in flight, and loading a
//! conversation the node does not hold before handling a request about it.

use super::access::*;
use super::messages::*;
use super::server::*;
use super::state::*;
use super::writes::*;
use crate::auth::new_id;
use crate::backplane::Effect;
use crate::error::{ApiError, StoreError};
use crate::protocol::{
    self, char_len, error_frame, now_ms, Availability, ConvStatus, Conversation, HistoryBody, MsgKind, Open, Out,
    Presence, ReadMark, Request, Role, Transfer, User, MAX_CLIENT_ID_CHARS, MAX_COMMENT_CHARS, SYNC_DEFAULT_LIMIT,
    SYNC_MAX_LIMIT,
};
use crate::store::{ConvRow, NewMessage, WriteOp};
use actix::{ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use serde_json::json;

impl ChatServer {
    pub(super) fn request(
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
                if let Some(c) = self.st.convs.get_mut(&r.conversation) {
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
                if !self.st.rooms.contains_key(&l.room) {
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
                let id = &c.conversation;
                self.change(id, ConvStatus::Closed, agent, None, QueuePlace::Back, event, body, reply, None);
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
                if let Some(c) = self.st.convs.get_mut(&r.conversation) {
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
                if let Some(a) = self.st.agents.get_mut(&who.user.id) {
                    if a.availability != availability {
                        a.availability = availability;
                        a.availability_at = now_ms();
                        self.st.presence_agents.insert(who.user.id.clone());
                        if availability == Availability::Online {
                            self.st.assign_rooms.extend(
                                self.st
                                    .rooms
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

    pub(super) fn open(&mut self, who: &Who, o: Open, reply: ReplyTo) -> Result<(), ApiError> {
        if who.user.role != Role::Customer {
            return Err(ApiError::forbidden("only customers open conversations"));
        }
        let room = o.room.unwrap_or_else(|| "support".to_string());
        if !self.st.rooms.contains_key(&room) {
            return Err(no_room(&room));
        }
        let existing = self
            .st
            .customers
            .get(&who.user.id)
            .and_then(|c| c.open.iter().find(|id| self.st.convs.get(*id).is_some_and(|c| c.room == room)).cloned());
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
        let conv = Conv::from_row(row.clone());
        self.submit(WriteOp::CreateConversation(row), Pending::Open { reply, conv: id.clone() });
        let at = self.st.queue_index(&room, &id, now);
        let r = self.st.rooms.get_mut(&room).ok_or_else(|| no_room(&room))?;
        r.queue.insert(at, id.clone());
        mark_positions(&mut self.st.position_rooms, &room, at);
        let pos = at as u32 + 1;
        self.st.convs.insert(id.clone(), Conv { pushed_position: Some(pos), ..conv });
        self.st.customers.entry(who.user.id.clone()).or_default().open.push(id.clone());
        // A bot-first room hands new conversations to its bot while it is connected.
        let bot = self.cfg.bot_first.get(&room).and_then(|name| {
            self.st.agents.values().find(|a| a.bot && a.user.name == *name && a.can_take()).map(|a| a.user.clone())
        });
        match bot {
            Some(bot) => self.assign(&id, bot, ReplyTo::None),
            None => {
                self.st.assign_rooms.insert(room);
            }
        }
        Ok(())
    }

    /// Checks a `send` and builds the message to store (the one send path of
    /// WebSocket and HTTP).
    pub(super) fn prepare_send(
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

    pub(super) fn join(&mut self, who: &Who, room: String, r#ref: Option<String>) -> Result<(), ApiError> {
        agent_only(who, "join")?;
        let sid = who.sid.unwrap_or(0);
        let r = self.st.rooms.get_mut(&room).ok_or_else(|| no_room(&room))?;
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
        let r = &self.st.rooms[&room];
        let queue: Vec<Conversation> = r
            .queue
            .iter()
            .take(protocol::ROOM_QUEUE_LISTED)
            .enumerate()
            .filter_map(|(i, c)| self.st.convs.get(c).map(|c| c.snapshot(Some(i as u32 + 1))))
            .collect();
        let queue_total = r.queue.len();
        let mut agents: Vec<Presence> =
            r.agents.keys().filter_map(|id| self.st.agents.get(id)).map(|a| a.presence(&room, true)).collect();
        agents.extend(self.remote_room_agents(&room));
        agents.sort_by(|a, b| a.agent.name.cmp(&b.agent.name));
        let f =
            Out::Room { r#ref: r#ref.as_deref(), room: &room, queue: &queue, queue_total, agents: &agents }.encode();
        self.send(sid, &f);
        if newly_present {
            self.room_status_dirty = true;
            self.publish_presence(&who.user.id, &room, true, Some(sid));
        }
        self.st.assign_rooms.insert(room);
        Ok(())
    }

    pub(super) fn transfer(&mut self, who: &Who, t: Transfer, reply: ReplyTo) -> Result<(), ApiError> {
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
                let target = self.st.agents.get(&to).ok_or_else(|| ApiError::not_found(format!("no agent {to}")))?;
                let online = (target.availability == Availability::Online
                    && !target.sessions.is_empty()
                    && self.st.rooms.values().any(|r| r.agents.contains_key(&to)))
                    || self.agent_online_elsewhere(&to);
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
                    None,
                );
                Ok(())
            }
            (None, Some(room)) => {
                if !self.st.rooms.contains_key(&room) {
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
                    None,
                );
                Ok(())
            }
            _ => Err(ApiError::bad_request("transfer: give exactly one of to_agent and to_room")),
        }
    }

    /// One request of a session. A routing request about a conversation
    /// whose change is still committing waits for it (and then sees the
    /// conversation as the store has it).
    pub(super) fn client_request(&mut self, m: ClientRequest, ctx: &mut Context<Self>) {
        if !self.sessions.contains_key(&m.sid) {
            return; // the session is gone
        }
        let Some(m) = self.ready(m, ctx) else { return };
        let routing = matches!(m.req, Request::Accept(_) | Request::Transfer(_) | Request::Close(_) | Request::Rate(_));
        if let Some(cid) = conversation_of(&m.req).filter(|_| routing) {
            if self.st.convs.get(cid).is_some_and(|c| c.changing) {
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
    pub(super) fn ready<M>(&mut self, msg: M, ctx: &mut Context<Self>) -> Option<M>
    where
        M: Retry,
        Self: Handler<M>,
    {
        match msg.conversation() {
            Some(cid) if !msg.loaded() && !self.st.convs.contains_key(cid) => {
                let cid = cid.to_string();
                self.load_then(cid, msg, ctx);
                None
            }
            _ => Some(msg),
        }
    }

    /// Loads a conversation this node does not hold, then handles `msg` again.
    pub(super) fn load_then<M>(&mut self, cid: String, mut msg: M, ctx: &mut Context<Self>)
    where
        M: Retry,
        Self: Handler<M>,
    {
        let fut = self.store.conversation(&cid);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(row) => {
                if let Some(row) = row {
                    if !act.st.convs.contains_key(&row.id) {
                        let closed = row.status == ConvStatus::Closed;
                        let conv = Conv::from_row(row);
                        if closed {
                            act.st.closed_lru.push_back(conv.id.clone());
                        }
                        act.st.convs.insert(conv.id.clone(), conv);
                        act.st.evict_closed();
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

/// The conversation a request names, if any.
pub(super) fn conversation_of(req: &Request) -> Option<&str> {
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
