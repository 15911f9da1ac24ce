//! Agents' presence across nodes: what the other nodes published, merged
//! with this node's own sessions, for room lists, room status, transfers and
//! automatic assignment.

use crate::backplane::Effect;
use crate::chat::server::*;
use crate::chat::state::*;
use crate::protocol::{Availability, Presence, Ts};
use std::collections::HashSet;
use std::time::Instant;

impl ChatServer {
    /// Another node's presence of an agent in a room: kept per node (offline
    /// only when no node has them there), their availability taken up over
    /// an older setting, and told to this node's sessions as it now stands.
    pub(super) fn remote_presence(&mut self, node: String, presence: Presence, exclude: Option<u64>, since: Ts) {
        let key = (presence.room.clone(), presence.agent.id.clone());
        if presence.availability != Availability::Offline {
            self.take_up_availability(&presence, since);
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

    /// One agent, one availability: away on one node is away on all (and no
    /// node assigns to them). Taken up with or without a session here, so
    /// that a session opened here later starts from it.
    fn take_up_availability(&mut self, presence: &Presence, since: Ts) {
        let id = &presence.agent.id;
        // An account newer than this node's last reread of them (which
        // corrects the bot flag within seconds).
        let a = self
            .st
            .agents
            .entry(id.clone())
            .or_insert_with(|| AgentState::new(presence.agent.clone(), presence.max, false));
        if since <= a.availability_at || a.availability == presence.availability {
            return;
        }
        a.availability = presence.availability;
        a.availability_at = since;
        if presence.availability == Availability::Online {
            let rooms = self.st.rooms.iter().filter(|(_, r)| r.agents.contains_key(id)).map(|(n, _)| n.clone());
            let rooms: Vec<String> = rooms.collect();
            self.st.assign_rooms.extend(rooms);
        }
    }

    /// An agent's presence in a room over every node, as this node's sessions
    /// should see it: offline only when no node has them there.
    pub(in crate::chat) fn presence_here(&self, room: &str, agent: &str) -> Option<Presence> {
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
    pub(in crate::chat) fn remote_room_agents(&self, room: &str) -> Vec<Presence> {
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
    pub(in crate::chat) fn remote_candidates(&self, room: &str) -> Vec<(u32, String, u32)> {
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

    /// Whether an agent is online in some room through another node.
    pub(in crate::chat) fn agent_online_elsewhere(&self, agent: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.presence.iter().any(|((_, a), nodes)| {
                a == agent && nodes.values().any(|(p, _)| p.availability == Availability::Online)
            })
        })
    }

    /// Whether an agent online in the room is connected to another node.
    pub(in crate::chat) fn online_elsewhere(&self, room: &str) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.presence
                .iter()
                .any(|((r, _), nodes)| r == room && nodes.values().any(|(p, _)| p.availability == Availability::Online))
        })
    }

    /// Agents online in a room on any node (for /metrics).
    pub(in crate::chat) fn agents_online_in(&self, room: &str) -> usize {
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
}
