//! Delivery: the one entry through which every effect reaches sessions.
//! The ChatServer publishes each committed effect to the backplane
//! ([`ChatServer::publish`]); what comes back is delivered here
//! ([`ChatServer::deliver`]): this node's sessions that should see it are
//! picked, the frame is serialized once, and queued for each. A session
//! whose bounded queue is full is marked jammed (closed 4008 in `finish`).

use super::messages::Outbound;
use super::server::ChatServer;
use crate::backplane::Effect;
use crate::protocol::{ConvStatus, Encoded, Out, Role};
use actix::dev::SendError;
use std::sync::atomic::Ordering;

impl ChatServer {
    /// Publishes a committed effect; delivers it here when it comes back.
    /// It goes out on the channel of its room (a conversation's effects all
    /// go on its room's, in order).
    pub(super) fn publish(&mut self, effect: Effect) {
        if !self.backplane.shared() {
            // One node: no channel to choose.
            if let Some(e) = self.backplane.publish("", effect) {
                self.deliver(e);
            }
            return;
        }
        let room = match &effect {
            Effect::Message { message, .. } => self.st.convs.get(&message.conversation).map(|c| c.room.clone()),
            Effect::Typing { conversation, .. } | Effect::Read { conversation, .. } => {
                self.st.convs.get(conversation).map(|c| c.room.clone())
            }
            Effect::Conversation { conversation, .. } => Some(conversation.room.clone()),
            Effect::Presence { presence, .. } => Some(presence.room.clone()),
            Effect::RoomStatus { room, .. } | Effect::PresenceCall { room } => Some(room.clone()),
        };
        let Some(room) = room else { return self.deliver(effect) };
        if let Some(e) = self.backplane.publish(&room, effect) {
            self.deliver(e);
        }
    }

    /// An effect that each node works out for itself from the state they
    /// share (queue positions, whether a room has anyone online): for this
    /// node's sessions only. One node sends it through its backplane like
    /// any other effect.
    pub(super) fn publish_here(&mut self, effect: Effect) {
        match self.backplane.shared() {
            true => self.deliver(effect),
            false => self.publish(effect),
        }
    }

    /// The one entry into delivery (see the module doc). A cluster node
    /// delivers messages in seq order (see `cluster`).
    pub(super) fn deliver(&mut self, effect: Effect) {
        match effect {
            Effect::Message { message, also, exclude } if self.cluster.is_some() => {
                self.deliver_in_order(message, also, exclude)
            }
            e => self.deliver_now(e),
        }
    }

    /// Picks this node's sessions that should see an effect, serializes its
    /// frame once and queues it for each.
    pub(super) fn deliver_now(&mut self, effect: Effect) {
        if let Effect::Message { message, .. } = &effect {
            let Some(conv) = self.st.convs.get_mut(&message.conversation) else { return };
            conv.last_seq = conv.last_seq.max(message.seq);
            conv.delivered = conv.delivered.max(message.seq);
        }
        let (mut sids, exclude) = match &effect {
            Effect::Message { message, also, exclude } => {
                let Some(conv) = self.st.convs.get(&message.conversation) else { return };
                let customer = (!message.hidden_from_customers()).then_some(conv.customer.id.as_str());
                let agent = conv.agent.as_ref().map(|a| a.id.as_str());
                (self.members(customer, agent, Some(&conv.room), also.as_deref()), *exclude)
            }
            Effect::Conversation { conversation: c, customer, agents, also, exclude, .. } => {
                let cust = customer.then_some(c.customer.id.as_str());
                let (agent, room) = match agents {
                    true => (c.agent.as_ref().map(|a| a.id.as_str()), Some(c.room.as_str())),
                    false => (None, None),
                };
                (self.members(cust, agent, room, also.as_deref()), *exclude)
            }
            Effect::Typing { conversation, exclude, .. } => {
                let Some(sids) = self.conversation_members(conversation) else { return };
                (sids, *exclude)
            }
            Effect::Read { conversation, .. } => {
                let Some(sids) = self.conversation_members(conversation) else { return };
                (sids, None)
            }
            Effect::Presence { presence, exclude, .. } => {
                let sids = self.st.rooms.get(&presence.room).map(|r| r.sessions.iter().copied().collect());
                (sids.unwrap_or_default(), *exclude)
            }
            Effect::PresenceCall { .. } => return, // for the other nodes (see `cluster`)
            Effect::RoomStatus { room, .. } => {
                // Customers it concerns: those waiting in that room, and those
                // with no conversation open yet (a widget that may open one).
                let sids = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.user.role == Role::Customer)
                    .filter(|(_, s)| {
                        self.st.customers.get(&s.user.id).is_none_or(|c| {
                            c.open.is_empty()
                                || c.open.iter().any(|id| {
                                    self.st
                                        .convs
                                        .get(id)
                                        .is_some_and(|v| v.room == *room && v.status == ConvStatus::Queued)
                                })
                        })
                    })
                    .map(|(sid, _)| *sid)
                    .collect();
                (sids, None)
            }
        };
        if let Some(x) = exclude {
            sids.retain(|s| *s != x);
        }
        // Nobody here to tell (a cluster node hears its rooms' every effect): not even serialized.
        if sids.is_empty() {
            return;
        }
        let frame = match &effect {
            Effect::Message { message, .. } => Out::Message { message }.encode(),
            Effect::Conversation { conversation, .. } => Out::Conversation { r#ref: None, conversation }.encode(),
            Effect::Typing { conversation, from, on, .. } => Out::Typing { conversation, from, on: *on }.encode(),
            Effect::Read { conversation, from, seq } => Out::Read { conversation, from, seq: *seq }.encode(),
            Effect::Presence { presence, .. } => Out::Presence(presence).encode(),
            Effect::RoomStatus { room, online } => Out::RoomStatus { room, online: *online }.encode(),
            Effect::PresenceCall { .. } => return,
        };
        self.send_many(&sids, &frame);
    }

    /// This node's sessions of a conversation's customer, its assignee, the
    /// agents who joined its room, and one more agent. Sorted, no duplicates.
    fn members(&self, customer: Option<&str>, agent: Option<&str>, room: Option<&str>, also: Option<&str>) -> Vec<u64> {
        let mut v = Vec::new();
        if let Some(c) = customer.and_then(|c| self.st.customers.get(c)) {
            v.extend(c.sessions.iter().copied());
        }
        for a in [agent, also].into_iter().flatten().filter_map(|a| self.st.agents.get(a)) {
            v.extend(a.sessions.iter().copied());
        }
        if let Some(r) = room.and_then(|r| self.st.rooms.get(r)) {
            v.extend(r.sessions.iter().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Everyone in a conversation this node holds (customer included).
    fn conversation_members(&self, cid: &str) -> Option<Vec<u64>> {
        let c = self.st.convs.get(cid)?;
        Some(self.members(Some(&c.customer.id), c.agent.as_ref().map(|a| a.id.as_str()), Some(&c.room), None))
    }

    /// Queues a frame for one session; a session whose queue is full is jammed.
    pub(super) fn send(&mut self, sid: u64, frame: &Encoded) {
        let Some(s) = self.sessions.get(&sid) else { return };
        let len = frame.len();
        let before = s.queued.fetch_add(len, Ordering::Relaxed);
        // A frame larger than the whole bound (a long queue in a `room` reply)
        // still goes to a session that has nothing else waiting.
        if before > 0 && before + len > self.cfg.queue_bytes {
            self.jammed.push(sid);
            return;
        }
        match s.outbox.try_send(Outbound::Frame(frame.clone())) {
            Ok(()) => {}
            Err(SendError::Full(_)) => self.jammed.push(sid),
            Err(SendError::Closed(_)) => {} // its Disconnect is on the way
        }
    }

    fn send_many(&mut self, sids: &[u64], frame: &Encoded) {
        for &sid in sids {
            self.send(sid, frame);
        }
    }
}
