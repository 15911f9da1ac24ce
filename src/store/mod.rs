//! Storage: the [`Store`] trait, the rows it returns and the writes it takes;
//! the [`Admin`] trait for account management (the `parley agent` commands);
//! and [`open`] / [`open_admin`], the one place that picks the implementation
//! from the configuration. Implementations: `sqlite` (embedded default).
//!
//! Guarantees every implementation gives:
//! - Writes ([`Store::submit`]) are applied in submission order and committed in
//!   batches (group commit). Each write's [`Completion`] is delivered only after
//!   its batch is durable, and completions arrive in submission order.
//! - A message's `seq` is assigned by the store inside the committing
//!   transaction: per conversation 1, 2, 3, … with no gaps.
//! - A text or note repeated by the same sender with the same `client_id` in
//!   the same conversation (a retry) is not stored again: the completion
//!   carries the original, `duplicate: true`.
//! - Read markers only move forward.
//! - A failed write applied nothing.
//! - The store arbitrates routing: every routing change (assign, accept,
//!   transfer, close, a return to the queue) is a conditional
//!   [`WriteOp::Update`] naming the conversation's status and assignee as the
//!   caller saw them and, for an assignment, the assignee's capacity; it is
//!   applied atomically or refused with `conflict`. A customer has at most
//!   one conversation that is not closed per room ([`WriteOp::CreateConversation`]).
//!   So nodes that share a store cannot double-assign or overfill an agent
//!   whatever their memory holds; the ChatServer changes its memory only
//!   once a change commits, and reloads a conversation whose change was refused.

pub mod postgres;
pub mod sqlite;

use crate::error::StoreError;
use crate::protocol::{ConvStatus, Message, Ts, User};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A conversation as stored.
#[derive(Debug, Clone)]
pub struct ConvRow {
    pub id: String,
    pub room: String,
    pub status: ConvStatus,
    pub customer: User,
    pub agent: Option<User>,
    pub created_at: Ts,
    pub queued_at: Ts,
    pub last_seq: u64,
    pub rated: bool,
    pub contact_email: Option<String>,
}

/// An agent account as stored.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub max_active: Option<u32>,
    pub bot: bool,
    /// Tokens issued before this (Unix ms) are void (a password change).
    pub tokens_after: u64,
}

impl AgentRow {
    /// Whether a token issued at `iat` (Unix ms) still stands for this account.
    pub fn token_valid(&self, iat: u64) -> bool {
        iat >= self.tokens_after
    }
}

/// Filter for [`Store::conversations`].
#[derive(Debug, Clone, Default)]
pub struct ConvFilter {
    pub room: Option<String>,
    pub status: Option<ConvStatus>,
    pub customer_id: Option<String>,
    pub limit: u32,
}

/// A message to append; the store assigns `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub conversation: String,
    pub ts: Ts,
    pub from: User,
    pub kind: crate::protocol::MsgKind,
    pub body: String,
    pub client_id: Option<String>,
    pub event: Option<serde_json::Value>,
}

impl NewMessage {
    pub fn with_seq(self, seq: u64) -> Message {
        Message {
            id: self.id,
            conversation: self.conversation,
            seq,
            ts: self.ts,
            from: self.from,
            kind: self.kind,
            body: self.body,
            client_id: self.client_id,
            event: self.event,
        }
    }
}

/// One durable change.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Changes nothing; completes once everything submitted before it has.
    Barrier,
    /// Stores a new conversation; `conflict` if the customer already has one
    /// that is not closed in that room.
    CreateConversation(ConvRow),
    /// Appends a message. Texts and notes: `conflict` if the conversation is
    /// closed, `not_found` if it does not exist; deduplicated on (conversation, sender, client_id).
    Append(NewMessage),
    /// A routing change, applied only if the conversation is still as the
    /// caller saw it (`expect`) and, for an assignment, the new assignee holds
    /// fewer than `capacity` active conversations: then it sets status,
    /// assignee, room and queue time and appends the event, atomically;
    /// otherwise `conflict`, and nothing is written.
    Update {
        expect: Expect,
        status: ConvStatus,
        agent: Option<User>,
        room: String,
        queued_at: Ts,
        /// For an assignment: the most active conversations the new assignee may hold.
        capacity: Option<u32>,
        /// Only if this user has no session on any live node of the cluster
        /// (an agent's grace period, a customer who left the queue). One
        /// SQLite node is the whole cluster: the caller checked its own sessions.
        absent: Option<String>,
        event: NewMessage,
    },
    /// Records a rating of a closed conversation and appends the event;
    /// `conflict` if not closed or already rated.
    Rate { score: u8, comment: Option<String>, event: NewMessage },
    /// Sets the email address a customer left with a conversation.
    Contact { conversation: String, email: String },
    /// Moves a read marker forward (never back).
    Read { conversation: String, user_id: String, seq: u64 },
}

/// The state a routing change was decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub status: ConvStatus,
    /// The assignee's id (None: unassigned).
    pub agent: Option<String>,
}

/// What a committed write produced.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    Done,
    /// The stored message (the original one when `duplicate`), shared with
    /// the store's in-memory tail of messages not yet folded.
    Appended {
        message: Arc<Message>,
        duplicate: bool,
    },
}

/// The result of one write, tagged with the caller's token.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: Result<WriteOutcome, StoreError>,
}

pub trait Store: Send + Sync + 'static {
    /// Queues a write; its completion arrives later on the completion channel
    /// the store was opened with, after commit, in submission order.
    fn submit(&self, token: u64, op: WriteOp);
    /// Messages with `seq > after_seq`, ascending, at most `limit`, and whether more follow.
    fn history(&self, conversation: &str, after_seq: u64, limit: u32) -> StoreFuture<(Vec<Message>, bool)>;
    fn conversation(&self, id: &str) -> StoreFuture<Option<ConvRow>>;
    /// Newest first, at most `filter.limit`.
    fn conversations(&self, filter: ConvFilter) -> StoreFuture<Vec<ConvRow>>;
    fn agent_by_id(&self, id: &str) -> StoreFuture<Option<AgentRow>>;
    fn agent_by_name(&self, name: &str) -> StoreFuture<Option<AgentRow>>;
    /// Every agent account, by name (the server rereads them to notice
    /// accounts removed or changed by `parley agent`).
    fn agents(&self) -> StoreFuture<Vec<AgentRow>>;
    /// Every conversation that is not closed, oldest in the queue first (the
    /// live state a node starts from).
    fn open_conversations(&self) -> StoreFuture<Vec<ConvRow>>;
    /// Read markers of a conversation: (user id, seq).
    fn read_markers(&self, conversation: &str) -> StoreFuture<Vec<(String, u64)>>;
    /// Answers when the database does.
    fn ping(&self) -> StoreFuture<()>;
    /// Cluster membership: renews this node's lease for `ttl` and records
    /// the users connected here (all of `users` when `full`, else the
    /// changes); returns the users connected to the other live nodes, as
    /// (user id, node id). One SQLite node has no cluster: nothing to record.
    fn heartbeat(&self, beat: Heartbeat) -> StoreFuture<Vec<(String, String)>> {
        let _ = beat;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The cluster's name, the same for every node on this database (channel
    /// names on the backplane). One SQLite node has none.
    fn cluster_id(&self) -> StoreFuture<String> {
        Box::pin(async { Ok(String::new()) })
    }
    /// Gives up this node's lease (a clean shutdown): its users count as gone at once.
    fn release(&self, node: &str) -> StoreFuture<()> {
        let _ = node;
        Box::pin(async { Ok(()) })
    }
}

/// One renewal of a node's lease (see [`Store::heartbeat`]).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub node: String,
    pub ttl: std::time::Duration,
    /// `add` is every user connected here: replace what was recorded.
    pub full: bool,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Account management, synchronous: the `parley agent` commands, which may
/// run beside a server using the same storage, and first-start setup.
pub trait Admin {
    /// Creates an agent account; the error says what to fix (name taken, …).
    fn add_agent(&self, name: &str, password: &str, max_active: Option<u32>, bot: bool) -> Result<AgentRow, String>;
    /// Every agent account, by name.
    fn agents(&self) -> Result<Vec<AgentRow>, String>;
    /// Sets a new password and voids every token issued before now.
    fn set_password(&self, name: &str, password: &str) -> Result<(), String>;
    /// Deletes an account.
    fn remove_agent(&self, name: &str) -> Result<(), String>;
}

/// Where the data lives and how the store behaves, from the settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: std::path::PathBuf,
    /// fsync every commit (`--sync full`).
    pub full_sync: bool,
    /// How long new messages may stay in the message log (`--fold-after-ms`).
    pub fold_after: std::time::Duration,
    /// Page cache of all the store's connections together, in MiB.
    pub cache_mib: u32,
    /// `postgres://…` (`--database`): PostgreSQL instead of the SQLite file.
    pub database: Option<String>,
}

/// Opens the configured store for a server; write completions go to `done`.
pub fn open(
    cfg: &StoreConfig,
    done: tokio::sync::mpsc::UnboundedSender<Vec<Completion>>,
) -> Result<Arc<dyn Store>, String> {
    match database_url(cfg)? {
        Some(url) => Ok(Arc::new(postgres::PgStore::open(url, done)?)),
        None => Ok(Arc::new(sqlite::SqliteStore::open(cfg, done)?)),
    }
}

/// Opens the configured storage for account management.
pub fn open_admin(cfg: &StoreConfig) -> Result<Box<dyn Admin>, String> {
    match database_url(cfg)? {
        Some(url) => Ok(Box::new(postgres::PgAdmin::open(url)?)),
        None => Ok(Box::new(sqlite::SqliteAdmin::open(&cfg.data_dir)?)),
    }
}

/// The PostgreSQL URL, if one is configured; an error for anything else.
fn database_url(cfg: &StoreConfig) -> Result<Option<&str>, String> {
    match cfg.database.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(None),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(Some(u)),
        Some(u) => Err(format!(
            "--database: `{}` is not a postgres:// URL (e.g. postgres://parley@db.example.com:5432/parley); \
             leave it out to use SQLite in --data-dir",
            postgres::redact(u)
        )),
    }
}

/// Everything a data dir holds, for `parley migrate` (SQLite to PostgreSQL).
#[derive(Debug, Default)]
pub struct Dump {
    /// Accounts, with their creation time (Unix ms).
    pub agents: Vec<(AgentRow, Ts)>,
    pub conversations: Vec<DumpConv>,
    /// Every message, note and event, by conversation then seq.
    pub messages: Vec<Message>,
    /// (conversation, user, seq).
    pub read_markers: Vec<(String, String, u64)>,
}

/// A conversation with the fields only a full copy needs.
#[derive(Debug, Clone)]
pub struct DumpConv {
    pub row: ConvRow,
    pub closed_at: Option<Ts>,
    pub rating: Option<i64>,
    pub rating_comment: Option<String>,
}

/// Most conversations a bot serves at once unless told otherwise.
pub const BOT_MAX_ACTIVE: u32 = 1000;

/// Checks a new account's name, password and capacity the same way for
/// every store; returns the trimmed name and the capacity to store.
pub fn check_new_agent<'a>(
    name: &'a str,
    password: &str,
    max_active: Option<u32>,
    bot: bool,
) -> Result<(&'a str, Option<u32>), String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("agent name: must not be empty".into());
    }
    if let Some(why) = crate::protocol::name_problem(name) {
        return Err(format!("agent name: {why}"));
    }
    if password.is_empty() {
        return Err("password: must not be empty".into());
    }
    if max_active == Some(0) {
        return Err("--max-active: must be greater than 0".into());
    }
    Ok((name, if bot { max_active.or(Some(BOT_MAX_ACTIVE)) } else { max_active }))
}
