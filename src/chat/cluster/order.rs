//! Another node's changes applied here, and messages delivered in seq
//! order: a gap (an effect Redis dropped, or one still on its way) is read
//! from the store before what follows; a resync reloads the open
//! conversations.

use crate::backplane::Effect;
use crate::chat::server::*;
use crate::chat::state::*;
use crate::http::metrics::counters;
use crate::protocol::{ConvStatus, Conversation, Message, Ts};
use crate::store::ConvRow;
use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Most messages read from the store per gap fill.
const FILL_PAGE: u32 = 500;

impl ChatServer {
    /// Applies a conversation's state as another node (or the store) has it,
    /// unless this node holds a newer one. Returns whether it was applied.
    pub(in crate::chat) fn absorb(&mut self, c: &Conversation, queued_at: Ts, version: u64) -> bool {
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
    pub(in crate::chat) fn deliver_in_order(
        &mut self,
        message: Arc<Message>,
        also: Option<String>,
        exclude: Option<u64>,
    ) {
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
    pub(in crate::chat) fn fill_gap(&mut self, cid: String, ctx: &mut Context<Self>) {
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
    pub(in crate::chat) fn resync(&mut self, ctx: &mut Context<Self>) {
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
