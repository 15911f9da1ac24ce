//! The ChatServer's in-memory state as plain structs (no actors): the
//! routing state machine ([`Routing`]: conversations, room queues, agents'
//! loads, customers) and the assignment choice of PROTOCOL.md §8, both
//! unit-tested on their own.

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
    /// Orders its routing states: the seq of the event of the change this
    /// node holds (or the last seq read with it from the store); a state
    /// from another node applies only over an older one.
    pub version: u64,
    /// Seq of the last message delivered to this node's sessions (a cluster
    /// node delivers in seq order, filling gaps from the store).
    pub delivered: u64,
    /// Messages that arrived after a gap, waiting for it to be filled.
    pub held: std::collections::BTreeMap<u64, HeldMessage>,
    /// The gap is being read from the store.
    pub filling: bool,
}

/// A message waiting for a gap before it: the message, `also`, `exclude`.
pub type HeldMessage = (std::sync::Arc<crate::protocol::Message>, Option<String>, Option<u64>);

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
            version: row.last_seq,
            delivered: row.last_seq,
            held: Default::default(),
            filling: false,
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
    /// When customers were last told (see `ROOM_STATUS_EVERY`).
    pub status_sent_at: Option<std::time::Instant>,
    /// A later telling is scheduled.
    pub status_pending: bool,
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
}

/// An agent known to this node.
#[derive(Debug)]
pub struct AgentState {
    pub user: User,
    pub max: u32,
    pub bot: bool,
    pub sessions: HashSet<u64>,
    pub availability: Availability,
    /// When `availability` was last set (Unix ms; orders it across nodes).
    pub availability_at: Ts,
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
    /// An agent with no session, offline, holding nothing.
    pub fn new(user: User, max: u32, bot: bool) -> AgentState {
        AgentState {
            user,
            max,
            bot,
            sessions: HashSet::new(),
            availability: Availability::Offline,
            availability_at: 0,
            active: Default::default(),
            incoming: Default::default(),
            last_assigned: 0,
            grace: None,
        }
    }

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

/// Most closed conversations kept in memory for quick access (oldest evicted first).
pub const CLOSED_CACHE: usize = 10_000;

/// A customer known to this node.
pub struct Customer {
    pub sessions: HashSet<u64>,
    /// Non-closed conversations.
    pub open: Vec<String>,
    /// Since when the customer has had no session (meaningful while `sessions` is empty).
    pub away_since: std::time::Instant,
}

impl Default for Customer {
    fn default() -> Self {
        Customer { sessions: HashSet::new(), open: Vec::new(), away_since: std::time::Instant::now() }
    }
}

/// The routing state machine, in memory: conversations and the indexes
/// that follow them (room queues, agents' loads, customers' open
/// conversations). [`Routing::apply`] moves a conversation to a new state
/// and keeps every index in step, noting what others must hear (queue
/// positions, presence) and which rooms need assignment. Plain data, no
/// actors: unit-tested below.
#[derive(Default)]
pub struct Routing {
    pub convs: HashMap<String, Conv>,
    /// Closed conversations in memory, oldest first (see [`CLOSED_CACHE`]).
    pub closed_lru: VecDeque<String>,
    pub rooms: HashMap<String, Room>,
    pub agents: HashMap<String, AgentState>,
    pub customers: HashMap<String, Customer>,
    /// Monotonic counter ordering assignments (ties go to the longest waiting).
    pub tick: u64,
    /// Rooms to run assignment for.
    pub assign_rooms: HashSet<String>,
    /// Rooms whose queue positions changed, from this index on.
    pub position_rooms: HashMap<String, usize>,
    /// Agents whose presence changed.
    pub presence_agents: HashSet<String>,
}

impl Routing {
    /// Where a conversation queued at `queued_at` goes in `room`'s queue
    /// (counted without it, if it is there already): by (queue time, id),
    /// the order every node and the store agree on, ties included. Looked
    /// for from the back, where nearly all arrive.
    pub fn queue_index(&self, room: &str, cid: &str, queued_at: Ts) -> usize {
        let Some(r) = self.rooms.get(room) else { return 0 };
        let key = (queued_at, cid);
        let requeued = self.convs.get(cid).is_some_and(|c| c.status == ConvStatus::Queued && c.room == room);
        for (i, c) in r.queue.iter().enumerate().rev() {
            if c != cid && self.convs.get(c).is_none_or(|c| (c.queued_at, c.id.as_str()) <= key) {
                let before = requeued && r.queue.iter().take(i).any(|x| x == cid);
                return i + 1 - usize::from(before);
            }
        }
        0
    }

    /// Moves a conversation to a new state, keeping every index (room queues,
    /// agent loads, customer's open list) in step. Called once the change is
    /// committed (or to match what the store holds). A queued conversation
    /// goes where its queue time puts it (see [`Routing::queue_index`]).
    pub fn apply(&mut self, cid: &str, new: ConvCore) {
        let by_time = (new.status == ConvStatus::Queued).then(|| self.queue_index(&new.room, cid, new.queued_at));
        let Some(conv) = self.convs.get_mut(cid) else { return };
        let old = conv.core();
        if old.status == ConvStatus::Queued {
            if let Some(i) = self.rooms.get_mut(&old.room).and_then(|r| r.remove(cid)) {
                mark_positions(&mut self.position_rooms, &old.room, i);
            }
        }
        if old.status == ConvStatus::Active {
            if let Some(a) = old.agent.as_ref().and_then(|a| self.agents.get_mut(&a.id)) {
                a.active.remove(cid);
                self.presence_agents.insert(a.user.id.clone());
                self.assign_rooms.insert(old.room.clone());
            }
        }
        conv.status = new.status;
        conv.agent = new.agent.clone();
        conv.room = new.room.clone();
        conv.queued_at = new.queued_at;
        conv.transferred_from = new.transferred_from;
        match new.status {
            ConvStatus::Queued => {
                conv.pushed_position = None;
                if let Some(r) = self.rooms.get_mut(&new.room) {
                    let at = by_time.unwrap_or(r.queue.len()).min(r.queue.len());
                    r.queue.insert(at, cid.to_string());
                    mark_positions(&mut self.position_rooms, &new.room, at);
                }
                self.assign_rooms.insert(new.room.clone());
            }
            ConvStatus::Active => {
                conv.pushed_position = None;
                if let Some(a) = new.agent.as_ref().and_then(|a| self.agents.get_mut(&a.id)) {
                    a.active.insert(cid.to_string());
                    self.tick += 1;
                    a.last_assigned = self.tick;
                    self.presence_agents.insert(a.user.id.clone());
                }
            }
            ConvStatus::Closed => conv.pushed_position = None,
        }
        let customer = conv.customer.id.clone();
        let c = self.customers.entry(customer.clone()).or_default();
        if new.status == ConvStatus::Closed {
            c.open.retain(|x| x != cid);
            // Nobody here and nothing open: forget them (a cluster node hears
            // of every customer the cluster serves).
            if c.open.is_empty() && c.sessions.is_empty() {
                self.customers.remove(&customer);
            }
            if old.status != ConvStatus::Closed {
                self.closed_lru.push_back(cid.to_string());
                self.evict_closed();
            }
        } else if !c.open.iter().any(|x| x == cid) {
            c.open.push(cid.to_string());
        }
    }

    pub fn evict_closed(&mut self) {
        while self.closed_lru.len() > CLOSED_CACHE {
            if let Some(old) = self.closed_lru.pop_front() {
                if self.convs.get(&old).is_some_and(|c| c.status == ConvStatus::Closed) {
                    self.convs.remove(&old);
                }
            }
        }
    }
}

/// Notes that positions in `room` changed from index `from` on.
pub fn mark_positions(dirty: &mut HashMap<String, usize>, room: &str, from: usize) {
    let e = dirty.entry(room.to_string()).or_insert(from);
    *e = (*e).min(from);
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
            availability_at: 0,
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

    // ---------------------------------------------------------------- Routing

    fn customer_user(n: u32) -> User {
        User { id: format!("v_{n}"), role: Role::Customer, name: format!("C{n}") }
    }

    /// A routing state with room `support`, agent `a` present in it, and
    /// conversations `c1..=n` queued in that order (queue times 10, 20, ...).
    fn routing(n: u32) -> Routing {
        let mut r = Routing::default();
        r.rooms.insert("support".into(), room_with(&["a"]));
        r.agents.insert("a".into(), agent("a", 0, 5, 0));
        for i in 1..=n {
            let id = format!("c{i}");
            let row = crate::store::ConvRow {
                id: id.clone(),
                room: "support".into(),
                status: ConvStatus::Queued,
                customer: customer_user(i),
                agent: None,
                created_at: i as i64 * 10,
                queued_at: i as i64 * 10,
                last_seq: 0,
                rated: false,
                contact_email: None,
            };
            r.convs.insert(id.clone(), Conv::from_row(row));
            r.rooms.get_mut("support").unwrap().queue.push_back(id.clone());
            r.customers.entry(format!("v_{i}")).or_default().open.push(id);
        }
        r
    }

    fn queue(r: &Routing) -> Vec<String> {
        r.rooms["support"].queue.iter().cloned().collect()
    }

    fn core(r: &Routing, cid: &str, status: ConvStatus, agent: Option<&str>, queued_at: Ts) -> ConvCore {
        ConvCore {
            status,
            agent: agent.map(|a| r.agents[a].user.clone()),
            queued_at,
            room: "support".into(),
            transferred_from: r.convs[cid].transferred_from.clone(),
        }
    }

    #[test]
    fn an_assignment_leaves_the_queue_loads_the_agent_and_notes_what_changed() {
        let mut r = routing(3);
        let new = core(&r, "c2", ConvStatus::Active, Some("a"), 20);
        r.apply("c2", new);
        assert_eq!(queue(&r), vec!["c1", "c3"]);
        assert!(r.agents["a"].active.contains("c2"));
        assert_eq!(r.convs["c2"].status, ConvStatus::Active);
        assert_eq!(r.position_rooms.get("support"), Some(&1), "positions from index 1 on changed");
        assert!(r.presence_agents.contains("a"), "the agent's load changed");
    }

    #[test]
    fn a_close_frees_the_agent_and_the_customer_and_is_remembered_for_a_while() {
        let mut r = routing(1);
        r.apply("c1", core(&r, "c1", ConvStatus::Active, Some("a"), 10));
        r.assign_rooms.clear();
        r.apply("c1", core(&r, "c1", ConvStatus::Closed, Some("a"), 10));
        assert!(r.agents["a"].active.is_empty());
        assert!(r.assign_rooms.contains("support"), "a freed agent may take the next customer");
        // Not connected, nothing open: the customer is forgotten.
        assert!(!r.customers.contains_key("v_1"));
        assert_eq!(r.closed_lru.iter().collect::<Vec<_>>(), vec!["c1"]);
        assert!(r.convs.contains_key("c1"));
    }

    #[test]
    fn returns_to_the_queue_go_to_the_front_back_or_where_their_time_puts_them() {
        let mut r = routing(3);
        r.apply("c1", core(&r, "c1", ConvStatus::Active, Some("a"), 10));
        r.apply("c1", core(&r, "c1", ConvStatus::Queued, None, 5));
        assert_eq!(queue(&r), vec!["c1", "c2", "c3"]);
        r.apply("c2", core(&r, "c2", ConvStatus::Active, Some("a"), 20));
        r.apply("c2", core(&r, "c2", ConvStatus::Queued, None, 99));
        assert_eq!(queue(&r), vec!["c1", "c3", "c2"]);
        // Reloaded with queue time 25: between c1 (5) and c3 (30).
        r.apply("c2", core(&r, "c2", ConvStatus::Queued, None, 25));
        assert_eq!(queue(&r), vec!["c1", "c2", "c3"]);
        assert!(r.agents["a"].active.is_empty());
    }

    #[test]
    fn closed_conversations_beyond_the_cache_are_forgotten_oldest_first() {
        let mut r = routing(0);
        for i in 0..(CLOSED_CACHE + 3) {
            let id = format!("x{i}");
            let row = crate::store::ConvRow {
                id: id.clone(),
                room: "support".into(),
                status: ConvStatus::Queued,
                customer: customer_user(i as u32),
                agent: None,
                created_at: 0,
                queued_at: 0,
                last_seq: 0,
                rated: false,
                contact_email: None,
            };
            r.convs.insert(id.clone(), Conv::from_row(row));
            r.rooms.get_mut("support").unwrap().queue.push_back(id.clone());
            let c = core(&r, &id, ConvStatus::Closed, None, 0);
            r.apply(&id, c);
        }
        assert_eq!(r.closed_lru.len(), CLOSED_CACHE);
        assert!(!r.convs.contains_key("x0") && !r.convs.contains_key("x2"));
        assert!(r.convs.contains_key("x3"));
        assert!(queue(&r).is_empty());
    }
}
