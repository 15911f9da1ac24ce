//! The write pipeline: every durable change is submitted to the store and
//! finished when its completion arrives, in submission order. Routing
//! changes are conditional (the store arbitrates); memory takes a change
//! only once it commits, and a refused change reloads the conversation.

use super::server::*;
use super::state::*;
use crate::auth::new_id;
use crate::backplane::Effect;
use crate::error::{ApiError, StoreError};
use crate::http::metrics::counters;
use crate::protocol::{self, now_ms, ConvStatus, Message, MsgKind, Out, User};
use crate::store::{Completion, ConvRow, Expect, NewMessage, WriteOp, WriteOutcome};
use serde_json::json;
use std::time::Instant;

/// Writes submitted and not yet committed before new ones are refused with `unavailable`.
pub(super) const MAX_PENDING_WRITES: usize = 200_000;

impl ChatServer {
    /// Refuses new writes while too many are in flight (the store's queue stays bounded).
    pub(super) fn busy(&self) -> Result<(), ApiError> {
        if self.pending.len() >= MAX_PENDING_WRITES {
            return Err(ApiError::unavailable("server busy: too many writes in flight, retry later"));
        }
        Ok(())
    }

    pub(super) fn submit(&mut self, op: WriteOp, p: Pending) {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, p);
        self.store.submit(token, op);
    }

    /// Submits; when busy, answers the requester with the error instead.
    pub(super) fn submit_or_reply(&mut self, op: WriteOp, p: Pending) {
        match self.busy() {
            Ok(()) => self.submit(op, p),
            Err(e) => {
                let reply = match p {
                    Pending::Open { reply, .. }
                    | Pending::Send { reply, .. }
                    | Pending::Change { reply, .. }
                    | Pending::Rate { reply, .. } => reply,
                    Pending::Read { .. } | Pending::Barrier(_) => ReplyTo::None,
                    Pending::Contact { reply, .. } => reply,
                };
                self.reply_error(reply, e);
            }
        }
    }

    /// A state change with its event message (PROTOCOL.md §8: every change
    /// writes an event).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn change(
        &mut self,
        cid: &str,
        status: ConvStatus,
        agent: Option<User>,
        room: Option<String>,
        place: QueuePlace,
        event: serde_json::Value,
        body: String,
        reply: ReplyTo,
        absent: Option<String>,
    ) {
        let Some(conv) = self.st.convs.get(cid) else { return };
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
                let front = self.st.rooms.get(&room).and_then(|r| r.queue.front()).and_then(|c| self.st.convs.get(c));
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
        let capacity = incoming.as_ref().map(|id| self.st.agents.get(id).map_or(u32::MAX, |a| a.max));
        if let Some(a) = incoming.as_ref().and_then(|id| self.st.agents.get_mut(id)) {
            a.incoming.insert(cid.to_string());
        }
        if let Some(c) = self.st.convs.get_mut(cid) {
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
        // One node knows its own sessions; a cluster's store checks the others'.
        let absent = absent.filter(|_| self.cluster.is_some());
        let op = WriteOp::Update { expect, status, agent, room, queued_at, capacity, absent, event: msg };
        self.submit(op, Pending::Change { reply, conv: cid.to_string(), new, also, incoming });
    }

    /// A routing change of `cid` committed or was refused: requests that
    /// waited for it run now, and the assignee's reservation ends.
    pub(super) fn change_settled(&mut self, cid: &str, incoming: Option<&str>) {
        if let Some(c) = self.st.convs.get_mut(cid) {
            c.changing = false;
        }
        if let Some(a) = incoming.and_then(|id| self.st.agents.get_mut(id)) {
            a.incoming.remove(cid);
        }
        if let Some(waiting) = self.deferred.remove(cid) {
            self.replay.extend(waiting);
        }
    }

    /// Brings a conversation this node held stale in line with the store
    /// (after a refused change), then lets assignment choose again.
    pub(super) fn reconcile(&mut self, row: ConvRow) {
        let Some(conv) = self.st.convs.get(&row.id) else { return };
        if conv.changing {
            return; // a newer change is on its way; its outcome will tell
        }
        if row.last_seq < conv.version {
            return; // another node's newer change arrived meanwhile
        }
        let core = ConvCore {
            status: row.status,
            agent: row.agent,
            queued_at: row.queued_at,
            room: row.room.clone(),
            transferred_from: conv.transferred_from.clone(),
        };
        self.st.apply(&row.id, core);
        if let Some(c) = self.st.convs.get_mut(&row.id) {
            c.last_seq = c.last_seq.max(row.last_seq);
            c.version = c.version.max(row.last_seq);
            c.rated = row.rated;
        }
        // What the store holds: every node's sessions may have missed it.
        if let Some(conversation) = self.snapshot(&row.id) {
            self.publish(Effect::Conversation {
                conversation,
                customer: true,
                agents: true,
                also: None,
                exclude: None,
                queued_at: row.queued_at,
                version: Some(row.last_seq),
            });
        }
        self.st.assign_rooms.insert(row.room);
    }

    pub(super) fn complete(&mut self, c: Completion) {
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
                let queued_at = snap.created_at;
                let version = Some(0);
                self.publish(Effect::Conversation {
                    conversation,
                    customer: true,
                    agents: true,
                    also: None,
                    exclude,
                    queued_at,
                    version,
                });
                if self.webhooks.wants("conversation.created") {
                    self.webhooks.emit("conversation.created", json!({ "conversation": snap }));
                }
            }
            (Pending::Open { reply, conv }, Err(e)) => {
                if let Some(c) = self.st.convs.remove(&conv) {
                    if let Some(i) = self.st.rooms.get_mut(&c.room).and_then(|r| r.remove(&conv)) {
                        mark_positions(&mut self.st.position_rooms, &c.room, i);
                    }
                    if let Some(cu) = self.st.customers.get_mut(&c.customer.id) {
                        cu.open.retain(|x| *x != conv);
                    }
                    if let Some(a) = c.agent.and_then(|a| self.st.agents.get_mut(&a.id)) {
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
                    if let Some(c) = self.st.convs.get_mut(&message.conversation) {
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
            (Pending::Change { reply, conv, new, also, incoming }, Ok(outcome)) => {
                self.change_settled(&conv, incoming.as_deref());
                let version = match &outcome {
                    WriteOutcome::Appended { message, .. } => message.seq,
                    WriteOutcome::Done => 0,
                };
                let queued_at = new.queued_at;
                // Another node's later change (made on this one) may have arrived first.
                if self.st.convs.get(&conv).is_some_and(|c| version == 0 || c.version < version) {
                    self.st.apply(&conv, new);
                }
                // The snapshot's last_seq counts the change's own event.
                if let Some(c) = self.st.convs.get_mut(&conv) {
                    c.last_seq = c.last_seq.max(version);
                    c.version = c.version.max(version);
                }
                let Some(snap) = self.snapshot(&conv) else { return };
                let mut exclude = None;
                if let ReplyTo::Session { sid, r#ref } = &reply {
                    let f = Out::Conversation { r#ref: r#ref.as_deref(), conversation: &snap }.encode();
                    self.send(*sid, &f);
                    exclude = Some(*sid);
                }
                if let Some(c) = self.st.convs.get_mut(&conv) {
                    c.pushed_position = snap.queue_position;
                }
                let conversation = snap.clone();
                self.publish(Effect::Conversation {
                    conversation,
                    customer: true,
                    agents: true,
                    also: also.clone(),
                    exclude,
                    queued_at,
                    version: Some(version),
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
                    // In a cluster this is the store arbitrating between nodes
                    // that chose at once: routine, so counted, not logged loudly.
                    log::debug!("routing change of {conv} refused: {e}");
                    counters().routing_conflicts.inc();
                    self.reload.push(conv.clone());
                }
                self.reply_error(reply, e.into());
            }
            (Pending::Rate { reply, conv }, res) => match res {
                Ok(WriteOutcome::Appended { message, .. }) => {
                    if let Some(c) = self.st.convs.get_mut(&conv) {
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
                        if let Some(c) = self.st.convs.get_mut(&conv) {
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
            (Pending::Barrier(tx), _) => {
                let _ = tx.send(());
            }
            (Pending::Contact { reply, conv, email }, res) => match res {
                Ok(_) => {
                    if let Some(c) = self.st.convs.get_mut(&conv) {
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
                            queued_at: 0,
                            version: None,
                        };
                        self.publish(e);
                    }
                }
                Err(e) => self.reply_error(reply, e.into()),
            },
        }
    }
}

/// Who receives the direct reply to a request.
pub(super) enum ReplyTo {
    Session { sid: u64, r#ref: Option<String> },
    HttpSend(tokio::sync::oneshot::Sender<Result<Message, ApiError>>),
    None,
}

/// What to do when a submitted write completes.
pub(super) enum Pending {
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
    /// Everything submitted before it has completed (shutdown waits on it).
    Barrier(tokio::sync::oneshot::Sender<()>),
}
