//! The backplane: how a committed effect reaches the sessions it concerns,
//! on this node and (with a shared backplane) on every other. The ChatServer
//! decides and commits; then it publishes an [`Effect`] here, and every
//! effect comes back into delivery through one entry
//! (`ChatServer::deliver`), which picks the node's own sessions that should
//! see it, serializes the frame once and queues it for each.
//!
//! One delivery path for one node and for a cluster: the single node uses
//! [`local::Local`], which hands every effect straight back, so the suites
//! that run against one node prove the path a cluster takes. A cluster node
//! uses [`redis::RedisBackplane`]: it too hands every effect straight back
//! (its own sessions never wait on Redis), and publishes it on the channel
//! of the effect's room; every node subscribes to its configured rooms'
//! channels and feeds what other nodes published into the same `deliver`.
//!
//! # Delivery contract
//! - `publish` is called only after the change behind the effect committed.
//! - An implementation hands each published effect back for delivery at most
//!   once per node, and effects about one conversation in the order they were
//!   published. The local one hands back every effect exactly once, at once.
//! - A shared backplane may drop effects (Redis pub/sub does). Messages carry
//!   their conversation `seq`, so a node that sees a gap fills it from the
//!   store; nothing relies on the backplane for durability.

pub mod local;
pub mod redis;

use crate::protocol::{Conversation, Message, Presence, Ts, User};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Something that happened, for the sessions it concerns. Self-contained:
/// it names the conversation, room or agent whose audience receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Effect {
    /// A committed message: to its conversation's members; customers never
    /// receive the ones hidden from them (notes, internal events).
    Message {
        message: Arc<Message>,
        /// Also to this agent (who was just moved off the conversation).
        also: Option<String>,
        /// The sending session, which got an `ack` instead.
        exclude: Option<u64>,
    },
    /// A conversation's new state (status, assignee, room, queue position).
    Conversation {
        conversation: Conversation,
        /// To its customer's sessions.
        customer: bool,
        /// To its assignee's and its room's agents.
        agents: bool,
        /// Also to this agent (who just lost it).
        also: Option<String>,
        /// The requesting session, which got the direct reply.
        exclude: Option<u64>,
        /// When it entered its queue (orders the queue on other nodes).
        queued_at: Ts,
        /// For a routing change: the seq of the change's event, which orders
        /// changes of one conversation (a node applies a change only over an
        /// older one); None for effects that change no routing state.
        version: Option<u64>,
    },
    /// Typing on or off, to the other members.
    Typing { conversation: String, from: User, on: bool, exclude: Option<u64> },
    /// A member's read mark moved.
    Read { conversation: String, from: User, seq: u64 },
    /// An agent's availability or load in a room, to the sessions that joined it.
    Presence {
        presence: Presence,
        exclude: Option<u64>,
        /// When the agent's availability was last set (Unix ms): another node
        /// takes it up only over an older setting.
        #[serde(default)]
        since: Ts,
    },
    /// Whether anyone is online to answer in a room, to every customer.
    RoomStatus { room: String, online: bool },
    /// A node (re)subscribed: the others publish their agents' presence in
    /// the room again (presence is otherwise published only when it changes).
    PresenceCall { room: String },
}

/// What another node published, or news of the subscription itself.
#[derive(Debug)]
pub enum Incoming {
    /// An effect committed on another node.
    Effect { node: String, effect: Box<Effect> },
    /// The subscription was (re)established after an outage: effects
    /// published meanwhile may be lost, so the node resynchronises from the store.
    Resubscribed,
}

/// Where effects go after commit (see the delivery contract above).
pub trait Backplane: Send + 'static {
    /// Publishes a committed effect about `room`. Returns it when this node
    /// delivers it now (both real backplanes always do).
    fn publish(&mut self, room: &str, effect: Effect) -> Option<Effect>;
    /// Whether other nodes share it (then memory is kept fresh by what they publish).
    fn shared(&self) -> bool {
        false
    }
}

/// The in-process backplane of a single node. In debug builds (the test
/// suites), `PARLEY_TEST_BACKPLANE=lossy` gives one that loses every effect,
/// to show that no frame reaches another session any other way.
pub fn local() -> Box<dyn Backplane> {
    if cfg!(debug_assertions) && std::env::var("PARLEY_TEST_BACKPLANE").as_deref() == Ok("lossy") {
        log::warn!("PARLEY_TEST_BACKPLANE=lossy: every effect is dropped (a test of the delivery path)");
        return Box::new(local::Lossy);
    }
    Box::new(local::Local)
}
