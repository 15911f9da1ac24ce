//! The ChatServer's in-memory state as plain structs (no actors), and the
//! assignment choice of PROTOCOL.md §8, unit-tested on its own.

use crate::protocol::{Availability, ConvStatus, Conversation, Presence, Ts, User};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// A conversation the node holds in memory (every non-closed one, and closed
/// ones recently used).
#[derive(Debug, Clone)]
pub struct Conv {
    pub id: String,
    pub room: String,
    pub status: ConvStatus,
    pub customer: User,
    pub agent: Option<User>,
    pub created_at: Ts,
    pub queued_at: Ts,
    /// Seq of the newest committed message.
    pub last_seq: u64,
    pub rated: bool,
    /// The queue position last pushed to its audience.
    pub pushed_position: Option<u32>,
    /// The agent who transferred it away, and until when automatic
    /// assignment passes them over for it.
    pub transferred_from: Option<(String, std::time::Instant)>,
    /// Highest read seq per user seen by this node.
    pub reads: HashMap<String, u64>,
    /// An email address the customer left for a reply by mail.
    pub contact_email: Option<String>,
    /// A routing change of it is submitted and not committed yet: memory
    /// changes when it commits, and routing requests about it wait till then.
    pub changing: bool,
}

/// The fields a state change touches, kept to undo it if storing it fails.
#[derive(Debug, Clone)]
pub struct ConvCore {
    pub status: ConvStatus,
    pub agent: Option<User>,
    pub queued_at: Ts,
    pub room: String,
    pub transferred_from: Option<(String, std::time::Instant)>,
}

impl Conv {
    /// A conversation as the store holds it.
    pub fn from_row(row: crate::store::ConvRow) -> Conv {
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

    pub fn core(&self) -> ConvCore {
        ConvCore {
            status: self.status,
            agent: self.agent.clone(),
            queued_at: self.queued_at,
            room: self.room.clone(),
            transferred_from: self.transferred_from.clone(),
        }
    }

    pub fn snapshot(&self, queue_position: Option<u32>) -> Conversation {
        Conversation {
            id: self.id.clone(),
            room: self.room.clone(),
            status: self.status,
            customer: self.customer.clone(),
            agent: self.agent.clone(),
            created_at: self.created_at,
            last_seq: self.last_seq,
            queue_position,
            contact_email: self.contact_email.clone(),
        }
    }
}

/// A room (queue) of this node.
#[derive(Debug, Default)]
pub struct Room {
    pub manual: bool,
    /// Queued conversation ids, next first.
    pub queue: VecDeque<String>,
    /// Sessions that joined the room.
    pub sessions: HashSet<u64>,
    /// Agents present through at least one joined session: id -> session count.
    pub agents: HashMap<String, u32>,
    /// Whether anyone was online to answer, as last told to customers.
    pub online_told: bool,
}

impl Room {
    pub fn position(&self, conv: &str) -> Option<u32> {
        self.queue.iter().position(|c| c == conv).map(|i| i as u32 + 1)
    }

    /// Takes a conversation out of the queue; returns the index it had.
    pub fn remove(&mut self, conv: &str) -> Option<usize> {
        let i = self.queue.iter().position(|c| c == conv)?;
        self.queue.remove(i);
        Some(i)
    }
}

/// Where a conversation enters a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePlace {
    /// New conversations: at the back.
    Back,
    /// Returned by a vanished agent: at the front.
    Front,
    /// Where its queue time puts it (reloaded from the store).
    ByTime,
}

/// An agent known to this node.
#[derive(Debug)]
pub struct AgentState {
    pub user: User,
    pub max: u32,
    pub bot: bool,
    pub sessions: HashSet<u64>,
    pub availability: Availability,
    /// Active conversations assigned to them.
    pub active: BTreeSet<String>,
    /// Conversations being assigned to them: submitted, not committed yet.
    /// They count against capacity so that no choice overfills the agent.
    pub incoming: BTreeSet<String>,
    /// Monotonic tick of their last assignment (or of coming online).
    pub last_assigned: u64,
    /// Pending grace timer after their last session went away.
    pub grace: Option<actix::SpawnHandle>,
}

impl AgentState {
    pub fn presence(&self, room: &str, present: bool) -> Presence {
        Presence {
            agent: self.user.clone(),
            room: room.to_string(),
            availability: if present { self.availability } else { Availability::Offline },
            active: self.active.len() as u32,
            max: self.max,
        }
    }

    /// Conversations they hold or are being given.
    pub fn load(&self) -> usize {
        self.active.len() + self.incoming.len()
    }

    /// Can take one more conversation right now.
    pub fn can_take(&self) -> bool {
        self.availability == Availability::Online && !self.sessions.is_empty() && (self.load() as u32) < self.max
    }
}

/// PROTOCOL.md §8: among agents present in the room who can take one more,
/// the fewest active conversations wins; ties go to the one who has waited
/// longest since their last assignment. `skip` is never chosen, nor are bots
/// (they get conversations through `--bot-first`, transfers or `accept`).
pub fn pick_agent<'a>(
    room: &Room,
    agents: &'a HashMap<String, AgentState>,
    skip: Option<&str>,
) -> Option<&'a AgentState> {
    room.agents
        .keys()
        .filter(|id| Some(id.as_str()) != skip)
        .filter_map(|id| agents.get(id))
        .filter(|a| a.can_take() && !a.bot)
        .min_by_key(|a| (a.load(), a.last_assigned, a.user.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;

    fn agent(id: &str, active: usize, max: u32, last: u64) -> AgentState {
        AgentState {
            user: User { id: id.into(), role: Role::Agent, name: id.into() },
            max,
            bot: false,
            sessions: [1].into_iter().collect(),
            availability: Availability::Online,
            active: (0..active).map(|i| format!("c{i}")).collect(),
            incoming: Default::default(),
            last_assigned: last,
            grace: None,
        }
    }

    fn room_with(ids: &[&str]) -> Room {
        Room { agents: ids.iter().map(|i| (i.to_string(), 1)).collect(), ..Default::default() }
    }

    #[test]
    fn least_loaded_wins() {
        let agents: HashMap<_, _> = [("a", agent("a", 2, 5, 1)), ("b", agent("b", 1, 5, 9))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(pick_agent(&room_with(&["a", "b"]), &agents, None).unwrap().user.id, "b");
    }

    #[test]
    fn tie_goes_to_longest_waiting() {
        let agents: HashMap<_, _> = [("a", agent("a", 1, 5, 7)), ("b", agent("b", 1, 5, 3))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(pick_agent(&room_with(&["a", "b"]), &agents, None).unwrap().user.id, "b");
    }

    #[test]
    fn full_away_absent_and_skipped_agents_are_not_chosen() {
        let mut away = agent("c", 0, 5, 0);
        away.availability = Availability::Away;
        let mut gone = agent("d", 0, 5, 0);
        gone.sessions.clear();
        let agents: HashMap<_, _> = [
            ("a", agent("a", 5, 5, 0)),
            ("b", agent("b", 0, 5, 0)),
            ("c", away),
            ("d", gone),
            ("e", agent("e", 0, 5, 0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let room = room_with(&["a", "b", "c", "d"]);
        assert_eq!(pick_agent(&room, &agents, None).unwrap().user.id, "b");
        assert!(pick_agent(&room, &agents, Some("b")).is_none());
    }

    #[test]
    fn bots_are_not_chosen_automatically() {
        let mut bot = agent("bot", 0, 1000, 0);
        bot.bot = true;
        let agents: HashMap<_, _> =
            [("bot", bot), ("h", agent("h", 3, 5, 0))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(pick_agent(&room_with(&["bot", "h"]), &agents, None).unwrap().user.id, "h");
    }
}
