//! Applying one write inside the group's transaction: seqs assigned per
//! conversation with no gaps, retries deduplicated on (sender, client_id),
//! routing changes checked against what they were decided on (the store
//! arbitrates), and the per-conversation cache of seqs and client ids.

use super::*;
use crate::error::StoreError;
use crate::protocol::{ConvStatus, Message, MsgKind, User};
use crate::store::*;
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

/// What the writer knows of an open conversation: it is the only writer of
/// the database, so this is exact. A message then costs one insert: no
/// conversation-row update, and no index of client ids to keep (each index is
/// one more page written per message).
pub(super) struct ConvSeq {
    pub(super) last_seq: u64,
    pub(super) closed: bool,
    /// Seq of every message with a client id, by [`client_key`].
    pub(super) client_ids: HashMap<String, u64>,
}

/// Conversations the writer has touched, by id. A conversation leaves when it
/// closes; all leave when a group fails (its changes were rolled back) or
/// when more than [`MAX_CACHED_CONVS`] are here.
pub(super) type SeqCache = HashMap<String, ConvSeq>;

/// Conversations the writer keeps in memory before starting afresh.
pub(super) const MAX_CACHED_CONVS: usize = 50_000;

/// Client ids (about 100 bytes each) the writer keeps before starting afresh.
pub(super) const MAX_CACHED_CLIENT_IDS: usize = 2_000_000;

/// Groups between two counts of the cached client ids.
pub(super) const CACHE_CHECK_EVERY: u32 = 1024;

/// A retry is the same sender's same `client_id` in the same conversation.
pub(super) fn client_key(sender_id: &str, client_id: &str) -> String {
    format!("{sender_id}\u{0}{client_id}")
}

/// The writer's view of a conversation, read on first use from its row, its
/// folded messages, its tail and this group's messages (None: no such
/// conversation). Its last seq is its newest message's.
pub(super) fn conv_seq<'a>(
    tx: &rusqlite::Transaction,
    seqs: &'a mut SeqCache,
    tails: &SharedTails,
    group: &[Result<WriteOutcome, StoreError>],
    id: &str,
) -> rusqlite::Result<Option<&'a mut ConvSeq>> {
    if !seqs.contains_key(id) {
        let status: Option<String> = tx
            .prepare_cached("SELECT status FROM conversations WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let Some(status) = status else { return Ok(None) };
        // One pass over the conversation's messages (they are stored together).
        let mut conv =
            ConvSeq { last_seq: 0, closed: status == ConvStatus::Closed.as_str(), client_ids: HashMap::new() };
        let mut stmt =
            tx.prepare_cached("SELECT seq, sender_id, client_id FROM messages WHERE conversation_id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        while let Some(r) = rows.next()? {
            let seq: u64 = r.get(0)?;
            conv.last_seq = conv.last_seq.max(seq);
            if let Some(cid) = r.get::<_, Option<String>>(2)? {
                conv.client_ids.insert(client_key(&r.get::<_, String>(1)?, &cid), seq);
            }
        }
        let tails = tails.lock();
        let unfolded = tails.by_conv.get(id).into_iter().flatten().map(|u| &u.msg);
        for m in unfolded.chain(group_messages(group, id)) {
            conv.last_seq = conv.last_seq.max(m.seq);
            if let Some(cid) = &m.client_id {
                conv.client_ids.insert(client_key(&m.from.id, cid), m.seq);
            }
        }
        seqs.insert(id.to_string(), conv);
    }
    Ok(seqs.get_mut(id))
}

/// The message already stored under `key` (see [`client_key`]) in this conversation, if any.
pub(super) fn original(
    tx: &rusqlite::Transaction,
    tails: &SharedTails,
    group: &[Result<WriteOutcome, StoreError>],
    conv: Option<&ConvSeq>,
    key: Option<&String>,
    conversation: &str,
) -> rusqlite::Result<Option<Arc<Message>>> {
    let Some(&seq) = conv.zip(key).and_then(|(c, k)| c.client_ids.get(k)) else { return Ok(None) };
    if let Some(m) = group_messages(group, conversation).find(|m| m.seq == seq) {
        return Ok(Some(m.clone()));
    }
    if let Some(u) = tails.lock().by_conv.get(conversation).and_then(|t| t.iter().find(|u| u.msg.seq == seq)) {
        return Ok(Some(u.msg.clone()));
    }
    tx.prepare_cached(&format!("SELECT {MSG_COLS} FROM messages WHERE conversation_id = ?1 AND seq = ?2"))?
        .query_row(params![conversation, seq as i64], message_from_row)
        .optional()
        .map(|m| m.map(Arc::new))
}

/// Outer error: the database failed (fails the batch). Inner error: the op
/// was refused. `group`: the results of the group's earlier ops; new
/// messages go to the log table `log` (an index in [`LOG_TABLES`]).
pub(super) fn apply(
    tx: &rusqlite::Transaction,
    seqs: &mut SeqCache,
    tails: &SharedTails,
    group: &[Result<WriteOutcome, StoreError>],
    log: usize,
    op: WriteOp,
) -> rusqlite::Result<Result<WriteOutcome, StoreError>> {
    match op {
        WriteOp::Barrier => Ok(Ok(WriteOutcome::Done)),
        WriteOp::CreateConversation(c) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO conversations (id, room, status, customer_id, customer_name, agent_id, agent_name,
                 created_at, queued_at, last_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
                )?
                .execute(params![
                    c.id,
                    c.room,
                    c.status.as_str(),
                    c.customer.id,
                    c.customer.name,
                    c.agent.as_ref().map(|a| &a.id),
                    c.agent.as_ref().map(|a| &a.name),
                    c.created_at,
                    c.queued_at
                ]);
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    return Ok(Err(StoreError::Conflict(format!(
                        "the customer already has an open conversation in room `{}`",
                        c.room
                    ))));
                }
                Err(e) => return Err(e),
            }
            let closed = c.status == ConvStatus::Closed;
            seqs.insert(c.id.clone(), ConvSeq { last_seq: 0, closed, client_ids: HashMap::new() });
            Ok(Ok(WriteOutcome::Done))
        }
        WriteOp::Append(m) => {
            let conv = conv_seq(tx, seqs, tails, group, &m.conversation)?;
            let key = m.client_id.as_ref().map(|cid| client_key(&m.from.id, cid));
            // A retry gets the original ack, even after the conversation closed.
            if let Some(message) = original(tx, tails, group, conv.as_deref(), key.as_ref(), &m.conversation)? {
                if conv.is_some_and(|c| c.closed) {
                    seqs.remove(&m.conversation);
                }
                return Ok(Ok(WriteOutcome::Appended { message, duplicate: true }));
            }
            let Some(conv) = conv else {
                return Ok(Err(StoreError::NotFound(format!("no conversation {}", m.conversation))));
            };
            if conv.closed && m.kind != MsgKind::Event {
                return Ok(Err(StoreError::Conflict(format!("conversation {} is closed", m.conversation))));
            }
            let seq = conv.last_seq + 1;
            let message = m.with_seq(seq);
            insert_message(tx, log, &message)?;
            conv.last_seq = seq;
            if let Some(key) = key {
                conv.client_ids.insert(key, seq);
            }
            if conv.closed {
                // Readers take a closed conversation's last seq from its row.
                tx.prepare_cached("UPDATE conversations SET last_seq = ?2 WHERE id = ?1")?
                    .execute(params![message.conversation, seq as i64])?;
                seqs.remove(&message.conversation);
            }
            Ok(Ok(WriteOutcome::Appended { message: Arc::new(message), duplicate: false }))
        }
        // `absent` is for a cluster; a SQLite node is alone (see WriteOp::Update).
        WriteOp::Update { expect, status, agent, room, queued_at, capacity, absent: _, event } => {
            let Some(last_seq) = conv_seq(tx, seqs, tails, group, &event.conversation)?.map(|c| c.last_seq) else {
                return Ok(Err(StoreError::NotFound(format!("no conversation {}", event.conversation))));
            };
            if let Err(refused) = check_routing(tx, &event.conversation, &expect, agent.as_ref(), capacity)? {
                return Ok(Err(refused));
            }
            let seq = last_seq + 1;
            let closed_at = (status == ConvStatus::Closed).then_some(event.ts);
            tx.prepare_cached(
                "UPDATE conversations SET status = ?2, agent_id = ?3, agent_name = ?4, queued_at = ?5,
                 closed_at = COALESCE(?6, closed_at), last_seq = ?7, room = ?8 WHERE id = ?1",
            )?
            .execute(params![
                event.conversation,
                status.as_str(),
                agent.as_ref().map(|a| &a.id),
                agent.as_ref().map(|a| &a.name),
                queued_at,
                closed_at,
                seq as i64,
                room
            ])?;
            let message = event.with_seq(seq);
            insert_message(tx, log, &message)?;
            if status == ConvStatus::Closed {
                // Closed conversations see little more; they are read back if they do.
                seqs.remove(&message.conversation);
            } else if let Some(c) = seqs.get_mut(&message.conversation) {
                c.last_seq = seq;
                c.closed = false;
            }
            Ok(Ok(WriteOutcome::Appended { message: Arc::new(message), duplicate: false }))
        }
        WriteOp::Rate { score, comment, event } => {
            let state: Option<(String, Option<i64>)> = tx
                .prepare_cached("SELECT status, rating FROM conversations WHERE id = ?1")?
                .query_row(params![event.conversation], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match state {
                None => return Ok(Err(StoreError::NotFound(format!("no conversation {}", event.conversation)))),
                Some((s, _)) if s != "closed" => {
                    return Ok(Err(StoreError::Conflict("only a closed conversation can be rated".into())))
                }
                Some((_, Some(_))) => {
                    return Ok(Err(StoreError::Conflict("this conversation is already rated".into())))
                }
                _ => {}
            }
            let Some(last_seq) = conv_seq(tx, seqs, tails, group, &event.conversation)?.map(|c| c.last_seq) else {
                return Ok(Err(StoreError::NotFound(format!("no conversation {}", event.conversation))));
            };
            let seq = last_seq + 1;
            tx.prepare_cached(
                "UPDATE conversations SET rating = ?2, rating_comment = ?3, last_seq = ?4 WHERE id = ?1",
            )?
            .execute(params![event.conversation, score as i64, comment, seq as i64])?;
            let message = event.with_seq(seq);
            insert_message(tx, log, &message)?;
            // Only closed conversations are rated: it need not stay cached.
            seqs.remove(&message.conversation);
            Ok(Ok(WriteOutcome::Appended { message: Arc::new(message), duplicate: false }))
        }
        WriteOp::Read { conversation, user_id, seq } => {
            tx.prepare_cached(
                "INSERT INTO read_markers (conversation_id, user_id, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![conversation, user_id, seq as i64])?;
            Ok(Ok(WriteOutcome::Done))
        }
        WriteOp::Contact { conversation, email } => {
            let n = tx
                .prepare_cached("UPDATE conversations SET contact_email = ?2 WHERE id = ?1")?
                .execute(params![conversation, email])?;
            if n == 0 {
                return Ok(Err(StoreError::NotFound(format!("no conversation {conversation}"))));
            }
            Ok(Ok(WriteOutcome::Done))
        }
    }
}

/// The conditions of a routing change (see `WriteOp::Update`), checked
/// inside the committing transaction: `Ok(Err(conflict))` when they no longer hold.
pub(super) fn check_routing(
    tx: &rusqlite::Transaction,
    conversation: &str,
    expect: &Expect,
    agent: Option<&User>,
    capacity: Option<u32>,
) -> rusqlite::Result<Result<(), StoreError>> {
    let (status, agent_id): (String, Option<String>) = tx
        .prepare_cached("SELECT status, agent_id FROM conversations WHERE id = ?1")?
        .query_row(params![conversation], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let status = ConvStatus::parse(&status).unwrap_or(ConvStatus::Closed);
    // A closed conversation keeps its last assignee: compare assignees only when it matters.
    let same_agent = status == ConvStatus::Closed || agent_id == expect.agent;
    if status != expect.status || !same_agent {
        let now = match (&agent_id, status) {
            (Some(a), ConvStatus::Active) => format!("active with {a}"),
            _ => status.as_str().to_string(),
        };
        return Ok(Err(StoreError::Conflict(format!("conversation {conversation} changed meanwhile: it is {now}"))));
    }
    if let (Some(a), Some(max)) = (agent, capacity) {
        let active: u32 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM conversations WHERE agent_id = ?1 AND status = 'active' AND id != ?2",
            )?
            .query_row(params![a.id, conversation], |r| r.get(0))?;
        if active >= max {
            return Ok(Err(StoreError::Conflict(format!("{} is at capacity ({active} of {max})", a.name))));
        }
    }
    Ok(Ok(()))
}

/// Adds a message to the log table `log` (an index in [`LOG_TABLES`]).
pub(super) fn insert_message(tx: &rusqlite::Transaction, log: usize, m: &Message) -> rusqlite::Result<()> {
    tx.prepare_cached(&LOG_SQL[log].insert)?.execute(params![
        m.conversation,
        m.seq as i64,
        m.id,
        m.ts,
        m.from.id,
        m.from.role.as_str(),
        m.from.name,
        m.kind.as_str(),
        m.body,
        m.client_id,
        m.event.as_ref().map(|e| e.to_string())
    ])?;
    Ok(())
}
