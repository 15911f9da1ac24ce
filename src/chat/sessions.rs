//! Sessions coming and going: removal, leaving rooms, the slow-reader cut
//! (close 4008), and sessions whose credentials no longer stand (close 4501).

use super::messages::*;
use super::server::*;
use crate::protocol::{close, Role};
use crate::store::AgentRow;
use actix::{AsyncContext, Context};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a jammed connection may take to read its 4008 close frame before
/// its socket is shut down.
pub(super) const JAM_FORCE_AFTER: Duration = Duration::from_secs(2);

impl ChatServer {
    /// Ends a session that cannot keep up (PROTOCOL.md §7.5).
    pub(super) fn jam(&mut self, sid: u64, ctx: &mut Context<Self>) {
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

    pub(super) fn remove_session(&mut self, sid: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.remove(&sid) else { return };
        for room in &s.rooms {
            self.leave_room(sid, &s.user.id, room);
        }
        match s.user.role {
            Role::Agent => {
                // Connected to another node: still here, as far as routing goes.
                let elsewhere = self.connected_elsewhere(&s.user.id);
                let Some(a) = self.st.agents.get_mut(&s.user.id) else { return };
                a.sessions.remove(&sid);
                if a.sessions.is_empty() && !elsewhere {
                    self.start_grace(&s.user.id, ctx);
                }
            }
            _ => {
                if let Some(c) = self.st.customers.get_mut(&s.user.id) {
                    c.sessions.remove(&sid);
                    c.away_since = Instant::now();
                    if c.sessions.is_empty() && c.open.is_empty() {
                        self.st.customers.remove(&s.user.id);
                    }
                }
            }
        }
    }

    pub(super) fn leave_room(&mut self, sid: u64, agent_id: &str, room: &str) {
        let Some(r) = self.st.rooms.get_mut(room) else { return };
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
            self.room_status_dirty = true;
            self.publish_presence(agent_id, room, false, None);
        }
    }

    /// Ends sessions whose credentials no longer stand (close 4501: the
    /// client signs in again rather than reconnecting with the same token).
    pub(super) fn revoke_sessions(&mut self, sids: Vec<u64>, reason: &'static str, ctx: &mut Context<Self>) {
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
    pub(super) fn refresh_accounts(&mut self, rows: Vec<AgentRow>, ctx: &mut Context<Self>) {
        let rows: HashMap<String, AgentRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let known: Vec<String> = self.st.agents.keys().cloned().collect();
        for id in known {
            match rows.get(&id) {
                None => {
                    let Some(a) = self.st.agents.get(&id) else { continue };
                    if a.sessions.is_empty() && a.active.is_empty() {
                        self.st.agents.remove(&id);
                        continue;
                    }
                    let sids: Vec<u64> = a.sessions.iter().copied().collect();
                    self.revoke_sessions(sids, "account removed", ctx);
                    if let Some(h) = self.st.agents.get_mut(&id).and_then(|a| a.grace.take()) {
                        ctx.cancel_future(h);
                    }
                    self.requeue_all(&id, "agent_removed", "was removed", false);
                    self.st.agents.remove(&id);
                    self.st.presence_agents.remove(&id);
                }
                Some(row) => {
                    let max = row.max_active.unwrap_or(self.cfg.max_active);
                    let Some(a) = self.st.agents.get_mut(&id) else { continue };
                    if a.max != max || a.user.name != row.name {
                        a.max = max;
                        a.user.name = row.name.clone();
                        self.st.presence_agents.insert(id.clone());
                        self.st.assign_rooms.extend(self.st.rooms.keys().cloned());
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
        // Accounts added since: known before they connect here (in a cluster,
        // automatic assignment weighs agents connected to other nodes).
        for row in rows.values() {
            if !self.st.agents.contains_key(&row.id) {
                let a = self.agent_state(row);
                self.st.agents.insert(row.id.clone(), a);
            }
        }
        self.finish(ctx);
    }
}
