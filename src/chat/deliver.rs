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
    pub(super) fn publish(&mut self, effect: Effect) {
        if let Some(e) = self.backplane.publish(effect) {
            self.deliver(e);
        }
    }

    /// The one entry into delivery (see the module doc).
    pub(super) fn deliver(&mut self, effect: Effect) {
        let (mut sids, frame, exclude) = match effect {
            Effect::Message { message, also, exclude } => {
                let Some(conv) = self.st.convs.get_mut(&message.conversation) else { return };
                conv.last_seq = conv.last_seq.max(message.seq);
                let conv = &self.st.convs[&message.conversation];
                let customer = (!message.hidden_from_customers()).then_some(conv.customer.id.as_str());
                let agent = conv.agent.as_ref().map(|a| a.id.as_str());
                let sids = self.members(customer, agent, Some(&conv.room), also.as_deref());
                (sids, Out::Message { message: &message }.encode(), exclude)
            }
            Effect::Conversation { conversation: c, customer, agents, also, exclude } => {
                let cust = customer.then_some(c.customer.id.as_str());
                let (agent, room) = match agents {
                    true => (c.agent.as_ref().map(|a| a.id.as_str()), Some(c.room.as_str())),
                    false => (None, None),
                };
                let sids = self.members(cust, agent, room, also.as_deref());
                (sids, Out::Conversation { r#ref: None, conversation: &c }.encode(), exclude)
            }
            Effect::Typing { conversation, from, on, exclude } => {
                let Some(sids) = self.conversation_members(&conversation) else { return };
                (sids, Out::Typing { conversation: &conversation, from: &from, on }.encode(), exclude)
            }
            Effect::Read { conversation, from, seq } => {
                let Some(sids) = self.conversation_members(&conversation) else { return };
                (sids, Out::Read { conversation: &conversation, from: &from, seq }.encode(), None)
            }
            Effect::Presence { presence, exclude } => {
                let sids = self.st.rooms.get(&presence.room).map(|r| r.sessions.iter().copied().collect());
                (sids.unwrap_or_default(), Out::Presence(&presence).encode(), exclude)
            }
            Effect::RoomStatus { room, online } => {
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
                                        .is_some_and(|v| v.room == room && v.status == ConvStatus::Queued)
                                })
                        })
                    })
                    .map(|(sid, _)| *sid)
                    .collect();
                (sids, Out::RoomStatus { room: &room, online }.encode(), None)
            }
        };
        if let Some(x) = exclude {
            sids.retain(|s| *s != x);
        }
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
