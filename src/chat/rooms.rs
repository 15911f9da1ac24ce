//! What agents and customers see of rooms: whether anyone is online to
//! answer (`welcome.rooms`, `room_status`), agents' presence, and queue
//! positions pushed as they change.

use super::server::*;
use super::state::*;
use crate::backplane::Effect;
use crate::protocol::{Availability, RoomInfo};
use actix::{AsyncContext, Context};
use std::time::{Duration, Instant};

/// Shortest time between two `room_status` broadcasts of one room.
pub(super) const ROOM_STATUS_EVERY: Duration = Duration::from_secs(1);

/// Most queue-position changes in one step that are also pushed to the room's agents.
pub(super) const POSITION_PUSHES_TO_AGENTS: usize = 100;

impl ChatServer {
    /// Whether anyone is online to answer in `room`: an agent (or bot) who
    /// joined it and is not away.
    pub(super) fn room_online(&self, room: &Room) -> bool {
        room.agents
            .keys()
            .filter_map(|id| self.st.agents.get(id))
            .any(|a| a.availability == Availability::Online && !a.sessions.is_empty())
    }

    /// Whether anyone is online to answer in the room named `name`, on this
    /// node or another.
    pub(super) fn room_online_anywhere(&self, name: &str, room: &Room) -> bool {
        self.room_online(room) || self.online_elsewhere(name)
    }

    /// The rooms as `welcome` lists them: whether anyone is online as
    /// customers were last told (so a client that connects while a telling
    /// waits out [`ROOM_STATUS_EVERY`] hears the same as everyone, and the
    /// next `room_status` brings it up to date).
    pub(super) fn room_infos(&self) -> Vec<RoomInfo> {
        self.cfg
            .rooms
            .iter()
            .filter_map(|name| self.st.rooms.get(name).map(|r| (name, r)))
            .map(|(name, r)| RoomInfo { name: name.clone(), manual: r.manual, online: r.online_told })
            .collect()
    }

    /// Tells customers when a room goes from nobody online to somebody, or
    /// back (the widget offers to leave a message meanwhile): at most once
    /// per [`ROOM_STATUS_EVERY`] per room, with the state as it is then, so an
    /// agent flapping between away and online cannot flood every customer.
    pub(super) fn tell_room_status(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let changed: Vec<(String, bool)> = self
            .st
            .rooms
            .iter()
            .filter(|(_, r)| !r.status_pending)
            .map(|(name, r)| (name.clone(), r.online_told, self.room_online_anywhere(name, r)))
            .filter(|(_, told, online)| told != online)
            .map(|(name, _, online)| (name, online))
            .collect();
        for (name, online) in changed {
            let Some(r) = self.st.rooms.get_mut(&name) else { continue };
            let wait =
                r.status_sent_at.map_or(Duration::ZERO, |t| (t + ROOM_STATUS_EVERY).saturating_duration_since(now));
            if !wait.is_zero() {
                r.status_pending = true;
                ctx.run_later(wait, move |act, ctx| {
                    if let Some(r) = act.st.rooms.get_mut(&name) {
                        r.status_pending = false;
                    }
                    act.room_status_dirty = true;
                    act.finish(ctx);
                });
                continue;
            }
            r.online_told = online;
            r.status_sent_at = Some(now);
            self.publish_here(Effect::RoomStatus { room: name, online });
        }
    }

    pub(super) fn broadcast_presence(&mut self, agent_id: &str) {
        let rooms: Vec<String> =
            self.st.rooms.iter().filter(|(_, r)| r.agents.contains_key(agent_id)).map(|(n, _)| n.clone()).collect();
        for room in rooms {
            self.publish_presence(agent_id, &room, true, None);
        }
    }

    /// Publishes an agent's presence in a room (`present`: through a session
    /// of this node), with when their availability was set.
    pub(super) fn publish_presence(&mut self, agent_id: &str, room: &str, present: bool, exclude: Option<u64>) {
        let Some(a) = self.st.agents.get(agent_id) else { return };
        let (presence, since) = (a.presence(room, present), a.availability_at);
        self.publish(Effect::Presence { presence, exclude, since });
    }

    /// Pushes the new position of every queued conversation from index `from`
    /// on whose position changed since it was last pushed.
    pub(super) fn refresh_positions(&mut self, room: &str, from: usize) {
        let Some(r) = self.st.rooms.get(room) else { return };
        let changed: Vec<(String, u32)> = r
            .queue
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, c)| (c.clone(), i as u32 + 1))
            .filter(|(c, p)| self.st.convs.get(c).is_some_and(|c| c.pushed_position != Some(*p)))
            .collect();
        // Every waiting customer hears their new position. The room's agents
        // hear it too, unless so many moved at once that it would flood each
        // of them with the whole queue; the order they hold stays right, since
        // everyone behind a departure moves up together.
        let to_agents = changed.len() <= POSITION_PUSHES_TO_AGENTS;
        for (cid, pos) in changed {
            let Some(conv) = self.st.convs.get_mut(&cid) else { continue };
            conv.pushed_position = Some(pos);
            let conversation = conv.snapshot(Some(pos));
            self.publish_here(Effect::Conversation {
                conversation,
                customer: true,
                agents: to_agents,
                also: None,
                exclude: None,
                queued_at: 0,
                version: None,
            });
        }
    }
}
