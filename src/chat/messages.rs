//! Actor messages between sessions, the HTTP handlers and the ChatServer.

use crate::error::ApiError;
use crate::protocol::{Conversation, Encoded, Message, Request, User};
use crate::session::JamSwitch;
use crate::store::{AgentRow, Completion, ConvRow};
use actix::prelude::*;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::oneshot;

/// ChatServer -> session: a frame to write, or a close.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// A serialized frame, shared between recipients.
    Frame(Encoded),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, &'static str),
}

/// Session -> ChatServer: register after a good `hello`. The ChatServer
/// answers by sending `welcome` as the session's first frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub sid: u64,
    pub user: User,
    /// When the agent's token was issued (Unix ms; 0 for customers): a
    /// password change after it ends the session.
    pub token_iat: u64,
    /// The client's address (limits on new conversations count per address).
    pub addr: std::net::IpAddr,
    /// The agent's account (agents only).
    pub agent: Option<AgentRow>,
    /// The customer's stored conversations (customers only).
    pub stored: Vec<ConvRow>,
    /// The customer's resume token, echoed in `welcome`.
    pub token: Option<String>,
    pub outbox: Recipient<Outbound>,
    /// Bytes queued for this session and not yet written (bounded).
    pub queued: Arc<AtomicUsize>,
    /// Ends the connection from outside when the session is jammed.
    pub jam: Option<Arc<JamSwitch>>,
}

/// Session -> ChatServer: the session is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub sid: u64,
}

/// Session -> ChatServer: a decoded request (not hello or ping).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientRequest {
    pub sid: u64,
    pub r#ref: Option<String>,
    pub req: Request,
    /// Set when the conversation it names was just loaded from the store.
    pub loaded: bool,
}

/// The caller of an HTTP request, identified by its bearer token.
#[derive(Debug, Clone)]
pub struct HttpCaller {
    pub user: User,
}

/// HTTP -> ChatServer: `POST /api/conversations/{id}/messages`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HttpSend {
    pub caller: HttpCaller,
    pub conversation: String,
    pub client_id: String,
    pub body: String,
    pub internal: bool,
    pub reply: oneshot::Sender<Result<Message, ApiError>>,
    pub loaded: bool,
}

/// History as a caller may see it.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub more: bool,
    /// Seqs of notes hidden from a customer (None for agents).
    pub hidden_seqs: Option<Vec<u64>>,
}

/// HTTP -> ChatServer: `GET /api/conversations/{id}/messages`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HttpHistory {
    pub caller: HttpCaller,
    pub conversation: String,
    pub after_seq: u64,
    pub limit: u32,
    pub reply: oneshot::Sender<Result<HistoryPage, ApiError>>,
    pub loaded: bool,
}

/// HTTP -> ChatServer: the live (non-closed) conversations, filtered.
#[derive(Message)]
#[rtype(result = "Result<Vec<Conversation>, ApiError>")]
pub struct LiveConversations {
    pub room: Option<String>,
    pub status: Option<crate::protocol::ConvStatus>,
}

/// Store -> ChatServer: a committed batch of writes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StoreDone(pub Vec<Completion>);

/// Counters for `/metrics`.
#[derive(Message)]
#[rtype(result = "Stats")]
pub struct GetStats;

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub sessions: usize,
    pub conversations_in_memory: usize,
    pub queued: usize,
    pub active: usize,
    pub agents_online: usize,
    pub pending_writes: usize,
    /// Per room: its name, conversations queued, agents online on any node.
    pub rooms: Vec<(String, usize, usize)>,
}

/// Ask every session to close with 1001 (server going away); answers when
/// the writes in flight are settled and the cluster lease is given up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;
