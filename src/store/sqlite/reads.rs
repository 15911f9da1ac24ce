//! Reads (the [`Store`] trait's queries) on the pool of reader connections,
//! merging in what the message log holds that is not folded yet.

use super::*;
use crate::protocol::{ConvStatus, Message};
use crate::store::*;
use rusqlite::{params, Connection, OptionalExtension};

/// Conversations matching `f`, newest first.
pub(super) fn conversations(c: &Connection, f: &ConvFilter) -> rusqlite::Result<Vec<ConvRow>> {
    // A customer's conversations (every returning hello): a dedicated
    // statement, because the optional filters below (`?3 IS NULL OR
    // customer_id = ?3`) keep SQLite from using the customer index.
    if let Some(customer) = &f.customer_id {
        return c
            .prepare_cached(&format!(
                "SELECT {CONV_COLS} FROM conversations WHERE customer_id = ?1
                 AND (?2 IS NULL OR room = ?2) AND (?3 IS NULL OR status = ?3)
                 ORDER BY created_at DESC LIMIT ?4"
            ))?
            .query_map(params![customer, f.room, f.status.map(|s| s.as_str()), f.limit as i64], conv_from_row)?
            .collect();
    }
    c.prepare_cached(&format!(
        "SELECT {CONV_COLS} FROM conversations WHERE (?1 IS NULL OR room = ?1)
         AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR customer_id = ?3)
         ORDER BY created_at DESC LIMIT ?4"
    ))?
    .query_map(params![f.room, f.status.map(|s| s.as_str()), f.customer_id, f.limit as i64], conv_from_row)?
    .collect()
}

/// Rows read by `read`, their last seqs counting unfolded messages. A
/// closed conversation's row holds its last seq; an open one's is its newest
/// message's, folded (in `messages`) or not (in the tails). A message folded
/// while `read` ran may be in neither of what it saw, so if a fold happened
/// meanwhile, each open row's last seq is looked up again, the tail first.
pub(super) fn with_tails(
    c: &Connection,
    tails: &SharedTails,
    read: impl FnOnce() -> rusqlite::Result<Vec<ConvRow>>,
) -> rusqlite::Result<Vec<ConvRow>> {
    let folds = tails.lock().folds;
    let mut rows = read()?;
    let folded_meanwhile = {
        let tails = tails.lock();
        for r in rows.iter_mut() {
            if let Some(u) = tails.by_conv.get(&r.id).and_then(|t| t.last()) {
                r.last_seq = r.last_seq.max(u.msg.seq);
            }
        }
        tails.folds != folds
    };
    if folded_meanwhile {
        for r in rows.iter_mut().filter(|r| r.status != ConvStatus::Closed) {
            let tail = tails.lock().by_conv.get(&r.id).and_then(|t| t.last()).map_or(0, |u| u.msg.seq);
            let folded: u64 = c
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?1")?
                .query_row(params![r.id], |row| row.get(0))?;
            r.last_seq = r.last_seq.max(tail).max(folded);
        }
    }
    Ok(rows)
}

impl Store for SqliteStore {
    fn submit(&self, token: u64, op: WriteOp) {
        // The writer thread only stops when the process does.
        let _ = self.writer.lock().send((token, op));
    }

    fn history(&self, conversation: &str, after_seq: u64, limit: u32) -> StoreFuture<(Vec<Message>, bool)> {
        let conversation = conversation.to_string();
        let tails = self.tails.clone();
        self.read(move |c| {
            // The tail first: a message that leaves it is in `messages` before
            // it does, so the query below finds it.
            let tail: Vec<Message> = tails
                .lock()
                .by_conv
                .get(&conversation)
                .into_iter()
                .flatten()
                .filter(|u| u.msg.seq > after_seq)
                .take(limit as usize + 1)
                .map(|u| Message::clone(&u.msg))
                .collect();
            let mut rows: Vec<Message> = c
                .prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))?
                .query_map(params![conversation, after_seq as i64, limit as i64 + 1], message_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            // Folded messages are a prefix of the conversation, the tail the rest.
            let last = rows.last().map_or(after_seq, |m| m.seq);
            rows.extend(tail.into_iter().filter(|m| m.seq > last));
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            Ok((rows, more))
        })
    }

    fn conversation(&self, id: &str) -> StoreFuture<Option<ConvRow>> {
        let id = id.to_string();
        let tails = self.tails.clone();
        self.read(move |c| {
            let read = || {
                c.prepare_cached(&format!("SELECT {CONV_COLS} FROM conversations WHERE id = ?1"))?
                    .query_map(params![id], conv_from_row)?
                    .collect()
            };
            Ok(with_tails(c, &tails, read)?.pop())
        })
    }

    fn conversations(&self, f: ConvFilter) -> StoreFuture<Vec<ConvRow>> {
        let tails = self.tails.clone();
        self.read(move |c| with_tails(c, &tails, || conversations(c, &f)))
    }

    fn agent_by_id(&self, id: &str) -> StoreFuture<Option<AgentRow>> {
        let id = id.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?1"))?
                .query_row(params![id], agent_from_row)
                .optional()
        })
    }

    fn agent_by_name(&self, name: &str) -> StoreFuture<Option<AgentRow>> {
        let name = name.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1"))?
                .query_row(params![name], agent_from_row)
                .optional()
        })
    }

    fn agents(&self) -> StoreFuture<Vec<AgentRow>> {
        self.read(all_agents)
    }

    fn open_conversations(&self) -> StoreFuture<Vec<ConvRow>> {
        let tails = self.tails.clone();
        self.read(move |c| with_tails(c, &tails, || open_conversations(c)))
    }

    fn read_markers(&self, conversation: &str) -> StoreFuture<Vec<(String, u64)>> {
        let conversation = conversation.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT user_id, seq FROM read_markers WHERE conversation_id = ?1")?
                .query_map(params![conversation], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    fn ping(&self) -> StoreFuture<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }
}

/// Every conversation that is not closed, oldest in the queue first.
pub(super) fn open_conversations(conn: &Connection) -> rusqlite::Result<Vec<ConvRow>> {
    conn.prepare_cached(&format!(
        "SELECT {CONV_COLS} FROM conversations WHERE status != 'closed' ORDER BY queued_at, id"
    ))?
    .query_map([], conv_from_row)?
    .collect()
}

pub(super) fn all_agents(conn: &Connection) -> rusqlite::Result<Vec<AgentRow>> {
    conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"))?
        .query_map([], agent_from_row)?
        .collect()
}
