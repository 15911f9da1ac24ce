//! Assignment and returns to the queue: automatic assignment (oldest first,
//! least-loaded agent), the grace period of an agent who went away, and
//! queued customers who left (abandoned).

use super::cluster::ASSIGN_DEFER;
use super::server::*;
use super::state::*;
use super::writes::*;
use crate::http::metrics::counters;
use crate::protocol::{self, Availability, ConvStatus, User};
use actix::{AsyncContext, Context};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl ChatServer {
    pub(super) fn assign_room(&mut self, room: &str) {
        let Some(r) = self.st.rooms.get(room) else { return };
        if r.manual {
            return;
        }
        // Strictly oldest first: nobody is served ahead of the queue's head.
        // The agent who transferred a conversation away is passed over for it
        // for `--transfer-pass-over-ms`; if only they could take it, the queue
        // waits that long and then they get it (the periodic sweep retries).
        //
        // In a cluster every node weighs every agent in the room, wherever
        // connected, and proposes only agents connected here: a conversation
        // goes to an agent on another node when they hold fewer (the
        // fewest-active rule holds cluster-wide), and that node assigns it.
        // Between equally loaded agents on different nodes each node proposes
        // its own and the store takes the first (the waited-longest tie-break
        // holds among one node's agents: nodes do not share that clock).
        // A conversation left to another node is taken here after
        // `ASSIGN_DEFER` if that node has not assigned it (it died, say).
        let now = Instant::now();
        let queue: Vec<String> = r.queue.iter().cloned().collect();
        // Agents on other nodes who could take more, and how many this pass
        // left to each.
        let remote = self.remote_candidates(room);
        let mut planned: HashMap<String, u32> = HashMap::new();
        for cid in queue {
            let Some(r) = self.st.rooms.get(room) else { return };
            if self.st.convs.get(&cid).is_none_or(|c| c.changing) {
                continue; // being assigned (or otherwise changed) already
            }
            let skip = self
                .st
                .convs
                .get(&cid)
                .and_then(|c| c.transferred_from.as_ref())
                .filter(|(_, until)| *until > now)
                .map(|(a, _)| a.as_str());
            let here = pick_agent(r, &self.st.agents, skip).map(|a| (a.load() as u32, a.user.clone()));
            let elsewhere = remote
                .iter()
                .map(|(load, id, max)| (load + planned.get(id).copied().unwrap_or(0), id, max))
                .filter(|(load, id, max)| load < max && Some(id.as_str()) != skip)
                .min_by_key(|(load, id, _)| (*load, *id))
                .map(|(load, id, _)| (load, id.clone()));
            match (here, elsewhere) {
                (None, None) => break,
                (Some((_, user)), None) => self.assign(&cid, user, ReplyTo::None),
                (Some((mine, user)), Some((theirs, _))) if mine <= theirs => self.assign(&cid, user, ReplyTo::None),
                (here, Some((_, remote))) => {
                    let Some(c) = self.cluster.as_mut() else { break };
                    let since = *c.left_to_peers.entry(cid.clone()).or_insert(now);
                    match here {
                        Some((_, user)) if now.duration_since(since) >= ASSIGN_DEFER => {
                            log::info!("{cid}: not assigned by the node of {remote} in time; assigned here");
                            self.assign(&cid, user, ReplyTo::None);
                        }
                        _ => {
                            c.recheck = true;
                            *planned.entry(remote).or_default() += 1;
                        }
                    }
                }
            }
        }
    }

    pub(super) fn assign(&mut self, cid: &str, agent: User, reply: ReplyTo) {
        let body = format!("{} joined the conversation", agent.name);
        let event = json!({"name": "assigned", "agent": agent});
        self.change(cid, ConvStatus::Active, Some(agent), None, QueuePlace::Back, event, body, reply, None);
    }

    /// An agent connected to no node starts their grace period.
    pub(super) fn start_grace(&mut self, agent_id: &str, ctx: &mut Context<Self>) {
        let grace = Duration::from_millis(self.cfg.agent_grace_ms);
        let id = agent_id.to_string();
        let handle = ctx.run_later(grace, move |act, ctx| act.grace_expired(&id, ctx));
        if let Some(a) = self.st.agents.get_mut(agent_id) {
            if let Some(old) = a.grace.replace(handle) {
                ctx.cancel_future(old);
            }
        }
    }

    /// Agents holding conversations, connected to no node and not yet
    /// counting down (after a restart; in a cluster, after each lease read)
    /// start their grace period.
    pub(super) fn start_grace_periods(&mut self, ctx: &mut Context<Self>) {
        let waiting: Vec<String> = self
            .st
            .agents
            .iter()
            .filter(|(id, a)| {
                !a.active.is_empty() && a.sessions.is_empty() && a.grace.is_none() && !self.connected_elsewhere(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            log::info!("agent {id} is connected to no node: grace period of {} ms", self.cfg.agent_grace_ms);
            self.start_grace(&id, ctx);
        }
    }

    /// PROTOCOL.md §8: an agent gone longer than the grace period loses their
    /// active conversations to the front of their rooms' queues.
    pub(super) fn grace_expired(&mut self, agent_id: &str, ctx: &mut Context<Self>) {
        let elsewhere = self.connected_elsewhere(agent_id);
        let Some(a) = self.st.agents.get_mut(agent_id) else { return };
        a.grace = None;
        if !a.sessions.is_empty() || elsewhere {
            return;
        }
        counters().grace_expiries.inc();
        self.requeue_all(agent_id, "agent_offline", "went offline", true);
        self.finish(ctx);
    }

    /// Queued conversations whose customer has had no session for
    /// `--abandon-after-ms` leave the queue, closed as abandoned: agents are
    /// never handed a customer who left long ago, and a flood of
    /// open-and-leave cannot fill the queue. A returning customer opens again.
    pub(super) fn sweep_abandoned(&mut self, ctx: &mut Context<Self>) {
        let after = self.cfg.abandon_after;
        let gone: Vec<String> = self
            .st
            .rooms
            .values()
            .flat_map(|r| r.queue.iter())
            .filter(|cid| {
                self.st.convs.get(*cid).is_some_and(|c| {
                    self.st
                        .customers
                        .get(&c.customer.id)
                        .is_none_or(|cu| cu.sessions.is_empty() && cu.away_since.elapsed() >= after)
                        && !self.connected_elsewhere(&c.customer.id)
                })
            })
            .cloned()
            .collect();
        for cid in gone {
            log::info!("{cid}: the customer left {} s ago; closed as abandoned", after.as_secs());
            let event = json!({"name": "closed", "by": null, "reason": "abandoned"});
            let body = "The customer left before an agent was free".to_string();
            let customer = self.st.convs.get(&cid).map(|c| c.customer.id.clone());
            self.change(&cid, ConvStatus::Closed, None, None, QueuePlace::Back, event, body, ReplyTo::None, customer);
        }
        // Queues held back by an agent passed over get another look.
        let waiting: Vec<String> =
            self.st.rooms.iter().filter(|(_, r)| !r.queue.is_empty()).map(|(n, _)| n.clone()).collect();
        self.st.assign_rooms.extend(waiting);
        self.finish(ctx);
    }

    /// Returns an absent agent's active conversations to the front of their
    /// rooms' queues, newest last so the oldest stays first.
    /// `if_gone`: only while the agent is connected to no node (the grace
    /// period); a removed account loses them whatever its sessions.
    pub(super) fn requeue_all(&mut self, agent_id: &str, reason: &str, why: &str, if_gone: bool) {
        let Some(a) = self.st.agents.get_mut(agent_id) else { return };
        a.availability = Availability::Offline;
        a.availability_at = protocol::now_ms();
        let user = a.user.clone();
        // Each goes to the front in turn, newest first: the oldest ends up first.
        let mut active: Vec<(protocol::Ts, String)> =
            a.active.iter().map(|c| (self.st.convs.get(c).map_or(0, |c| c.queued_at), c.clone())).collect();
        active.sort_unstable_by(|x, y| y.cmp(x));
        for (_, cid) in active {
            let Some(room) = self.st.convs.get(&cid).map(|c| c.room.clone()) else { continue };
            log::info!("agent {} {why}: {cid} returns to the queue of {room}", user.id);
            let event = json!({"name": "transferred", "from_agent": user, "to_agent": null, "to_room": room,
                               "reason": reason, "internal": true});
            let body = format!("{} {why}; back in the queue", user.name);
            let absent = if_gone.then(|| user.id.clone());
            self.change(&cid, ConvStatus::Queued, None, None, QueuePlace::Front, event, body, ReplyTo::None, absent);
        }
    }
}
