//! The writer: group commit on PostgreSQL. It takes the writes that queued
//! up while the last commit ran (at most [`MAX_BATCH`]), applies them in
//! submission order in one transaction, commits, and only then hands back
//! their completions, in order. A write is acknowledged only once its
//! transaction committed; if the transaction fails, every write of the group
//! fails with `unavailable` and nothing of it was applied.
//!
//! Several processes may write to one database at once:
//! - the group first locks the rows of the conversations it touches, in id
//!   order (`SELECT … FOR UPDATE`): seqs come from the locked row, so they
//!   stay gapless and unique, and two writers cannot deadlock on them;
//! - a retry is found by the unique index on (conversation, sender,
//!   client_id), read after the lock, so it sees what another process
//!   committed;
//! - an assignment also locks the agent's row, then counts the agent's
//!   active conversations as committed.
//!
//! A group costs a handful of statements whatever its size: the row locks,
//! the retries' originals, the new messages and the conversations' last
//! seqs each go in one statement (arrays through `UNNEST`); only routing
//! changes, ratings and contacts take statements of their own.

use super::schema::*;
use super::{unavailable, QUERY_TIMEOUT};
use crate::error::StoreError;
use crate::protocol::{ConvStatus, Message};
use crate::store::{Completion, ConvRow, Expect, NewMessage, WriteOp, WriteOutcome};
use deadpool_postgres::{Pool, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// A conversation as this group sees it, under its row lock.
struct Locked {
    status: ConvStatus,
    agent: Option<String>,
    last_seq: u64,
    rated: bool,
    /// last_seq changed in this group (written back before commit).
    dirty: bool,
}

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

pub(super) async fn run(pool: Pool, mut rx: UnboundedReceiver<(u64, WriteOp)>, done: UnboundedSender<Vec<Completion>>) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let writes = crate::http::metrics::counters();
        let started = std::time::Instant::now();
        let ops: Vec<(u64, WriteOp)> = std::mem::take(&mut group);
        let n = ops.len();
        let completions = match tokio::time::timeout(QUERY_TIMEOUT, commit_group(&pool, &ops)).await {
            Ok(Ok(results)) => {
                writes.store_commits.inc();
                writes.store_writes.inc_by(n as u64);
                writes.observe_commit(started.elapsed(), n);
                ops.iter().zip(results).map(|((token, _), result)| Completion { token: *token, result }).collect()
            }
            Ok(Err(e)) => {
                log::error!("store: a group of {n} writes failed and was rolled back: {e}");
                failed(&ops, &e.to_string())
            }
            Err(_) => {
                log::error!("store: a group of {n} writes took longer than {QUERY_TIMEOUT:?}; not applied");
                failed(&ops, "the database did not answer in time")
            }
        };
        if done.send(completions).is_err() {
            return; // the server is gone
        }
    }
}

fn failed(ops: &[(u64, WriteOp)], why: &str) -> Vec<Completion> {
    ops.iter().map(|(token, _)| Completion { token: *token, result: Err(unavailable(why)) }).collect()
}

/// Applies a group in one transaction. `Err`: the transaction failed and
/// nothing was applied; `Ok`: it committed, with each write's own outcome
/// (a write refused by its conditions applied nothing either).
async fn commit_group(
    pool: &Pool,
    ops: &[(u64, WriteOp)],
) -> std::result::Result<Vec<std::result::Result<WriteOutcome, StoreError>>, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let out = apply_all(&tx, ops).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(out)
}

async fn apply_all(
    tx: &Transaction<'_>,
    ops: &[(u64, WriteOp)],
) -> Result<Vec<std::result::Result<WriteOutcome, StoreError>>> {
    let mut ids: Vec<String> = ops.iter().filter_map(|(_, op)| conversation_of(op)).map(String::from).collect();
    ids.sort();
    ids.dedup();
    let mut g = Group::default();
    if !ids.is_empty() {
        let rows = tx
            .query(
                "SELECT id, status, agent_id, last_seq, rating IS NOT NULL FROM conversations
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await?;
        for r in rows {
            let status: String = r.get(1);
            g.locked.insert(
                r.get(0),
                Locked {
                    status: ConvStatus::parse(&status).unwrap_or(ConvStatus::Closed),
                    agent: r.get(2),
                    last_seq: r.get::<_, i64>(3) as u64,
                    rated: r.get(4),
                    dirty: false,
                },
            );
        }
    }
    // The originals of retries, in one query (read under the rows' locks,
    // so nothing another writer commits later can be missed).
    let (mut convs, mut senders, mut cids) = (Vec::new(), Vec::new(), Vec::new());
    for (_, op) in ops {
        if let WriteOp::Append(NewMessage { conversation, from, client_id: Some(c), .. }) = op {
            convs.push(conversation.as_str());
            senders.push(from.id.as_str());
            cids.push(c.as_str());
        }
    }
    if !convs.is_empty() {
        let sql = format!(
            "SELECT {MSG_COLS} FROM messages WHERE (conversation_id, sender_id, client_id) IN
             (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]))"
        );
        for row in tx.query(&sql, &[&convs, &senders, &cids]).await? {
            let m = message_from_row(&row);
            if let Some(c) = m.client_id.clone() {
                g.originals.insert((m.conversation.clone(), m.from.id.clone(), c), Arc::new(m));
            }
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    for (_, op) in ops {
        out.push(apply(tx, &mut g, op).await?);
    }
    insert_messages(tx, &g.new).await?;
    let (ids, seqs): (Vec<&str>, Vec<i64>) =
        g.locked.iter().filter(|(_, c)| c.dirty).map(|(id, c)| (id.as_str(), c.last_seq as i64)).unzip();
    if !ids.is_empty() {
        tx.execute(
            "UPDATE conversations c SET last_seq = v.seq FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v(id, seq)
             WHERE c.id = v.id",
            &[&ids, &seqs],
        )
        .await?;
    }
    Ok(out)
}

/// What one group knows while it applies its writes.
#[derive(Default)]
struct Group {
    /// The conversations it changes, under their row locks.
    locked: HashMap<String, Locked>,
    /// Originals of retries: (conversation, sender, client id).
    originals: HashMap<(String, String, String), Arc<Message>>,
    /// Messages this group adds, inserted together before it commits.
    new: Vec<Arc<Message>>,
}

/// Inserts a group's new messages with one statement.
async fn insert_messages(tx: &Transaction<'_>, msgs: &[Arc<Message>]) -> Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let n = msgs.len();
    let (mut conv, mut seq, mut id, mut ts) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut sid, mut role, mut name, mut kind) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut body, mut cid, mut event) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for m in msgs {
        conv.push(m.conversation.as_str());
        seq.push(m.seq as i64);
        id.push(m.id.as_str());
        ts.push(m.ts);
        sid.push(m.from.id.as_str());
        role.push(m.from.role.as_str());
        name.push(m.from.name.as_str());
        kind.push(m.kind.as_str());
        body.push(m.body.as_str());
        cid.push(m.client_id.as_deref());
        event.push(m.event.as_ref().map(|e| e.to_string()));
    }
    let sql = format!(
        "INSERT INTO messages ({MSG_COLS}) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[],
         $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[])"
    );
    tx.execute(&sql, &[&conv, &seq, &id, &ts, &sid, &role, &name, &kind, &body, &cid, &event]).await?;
    Ok(())
}

/// The conversation a write changes (whose row the group locks).
fn conversation_of(op: &WriteOp) -> Option<&str> {
    match op {
        WriteOp::Append(m) => Some(&m.conversation),
        WriteOp::Update { event, .. } | WriteOp::Rate { event, .. } => Some(&event.conversation),
        WriteOp::Contact { conversation, .. } => Some(conversation),
        // Read markers need no lock: they only move forward (GREATEST).
        WriteOp::Barrier | WriteOp::CreateConversation(_) | WriteOp::Read { .. } => None,
    }
}

/// Gives a new message the conversation's next seq; it is inserted with the group's others.
fn append(g: &mut Group, conv: &str, m: NewMessage) -> Arc<Message> {
    // Every caller found `conv` among the locked ones first.
    let c = g.locked.get_mut(conv).expect("a locked conversation");
    c.last_seq += 1;
    c.dirty = true;
    let message = Arc::new(m.with_seq(c.last_seq));
    if let Some(cid) = message.client_id.clone() {
        g.originals.insert((message.conversation.clone(), message.from.id.clone(), cid), message.clone());
    }
    g.new.push(message.clone());
    message
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("no conversation {id}"))
}

async fn apply(
    tx: &Transaction<'_>,
    g: &mut Group,
    op: &WriteOp,
) -> Result<std::result::Result<WriteOutcome, StoreError>> {
    match op {
        WriteOp::Barrier => Ok(Ok(WriteOutcome::Done)),
        WriteOp::CreateConversation(c) => create(tx, &mut g.locked, c).await,
        WriteOp::Append(m) => {
            let Some(conv) = g.locked.get(&m.conversation) else { return Ok(Err(not_found(&m.conversation))) };
            // A retry gets the original, even after the conversation closed.
            if let Some(client_id) = &m.client_id {
                let key = (m.conversation.clone(), m.from.id.clone(), client_id.clone());
                if let Some(message) = g.originals.get(&key) {
                    return Ok(Ok(WriteOutcome::Appended { message: message.clone(), duplicate: true }));
                }
            }
            if conv.status == ConvStatus::Closed {
                return Ok(Err(StoreError::Conflict(format!("conversation {} is closed", m.conversation))));
            }
            let message = append(g, &m.conversation, m.clone());
            Ok(Ok(WriteOutcome::Appended { message, duplicate: false }))
        }
        WriteOp::Update { expect, status, agent, room, queued_at, capacity, absent, event } => {
            let id = &event.conversation;
            let Some(conv) = g.locked.get(id) else { return Ok(Err(not_found(id))) };
            if let Err(refused) = check(id, conv, expect) {
                return Ok(Err(refused));
            }
            if let Some(user) = absent {
                let here: Option<String> = tx
                    .query_opt(
                        "SELECT p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.id = p.node_id
                         WHERE p.user_id = $1 AND n.expires_at > now() LIMIT 1",
                        &[user],
                    )
                    .await?
                    .map(|r| r.get(0));
                if let Some(node) = here {
                    return Ok(Err(StoreError::Conflict(format!("{user} is still connected (node {node})"))));
                }
            }
            if let (Some(a), Some(max)) = (agent, capacity) {
                // The agent's row lock orders assignments to them across writers.
                tx.query_opt("SELECT id FROM agents WHERE id = $1 FOR UPDATE", &[&a.id]).await?;
                let active: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM conversations WHERE agent_id = $1 AND status = 'active' AND id <> $2",
                        &[&a.id, id],
                    )
                    .await?
                    .get(0);
                if active >= *max as i64 {
                    return Ok(Err(StoreError::Conflict(format!("{} is at capacity ({active} of {max})", a.name))));
                }
            }
            let closed_at = (*status == ConvStatus::Closed).then_some(event.ts);
            tx.execute(
                "UPDATE conversations SET status = $2, agent_id = $3, agent_name = $4, queued_at = $5,
                 closed_at = COALESCE($6, closed_at), room = $7 WHERE id = $1",
                &[
                    id,
                    &status.as_str(),
                    &agent.as_ref().map(|a| &a.id),
                    &agent.as_ref().map(|a| &a.name),
                    queued_at,
                    &closed_at,
                    room,
                ],
            )
            .await?;
            if let Some(conv) = g.locked.get_mut(id) {
                conv.status = *status;
                conv.agent = agent.as_ref().map(|a| a.id.clone());
            }
            let message = append(g, id, event.clone());
            Ok(Ok(WriteOutcome::Appended { message, duplicate: false }))
        }
        WriteOp::Rate { score, comment, event } => {
            let id = &event.conversation;
            let Some(conv) = g.locked.get_mut(id) else { return Ok(Err(not_found(id))) };
            if conv.status != ConvStatus::Closed {
                return Ok(Err(StoreError::Conflict("only a closed conversation can be rated".into())));
            }
            if conv.rated {
                return Ok(Err(StoreError::Conflict("this conversation is already rated".into())));
            }
            tx.execute(
                "UPDATE conversations SET rating = $2, rating_comment = $3 WHERE id = $1",
                &[id, &(*score as i32), comment],
            )
            .await?;
            conv.rated = true;
            let message = append(g, id, event.clone());
            Ok(Ok(WriteOutcome::Appended { message, duplicate: false }))
        }
        WriteOp::Read { conversation, user_id, seq } => {
            tx.execute(
                "INSERT INTO read_markers (conversation_id, user_id, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET seq = GREATEST(read_markers.seq, excluded.seq)",
                &[conversation, user_id, &(*seq as i64)],
            )
            .await?;
            Ok(Ok(WriteOutcome::Done))
        }
        WriteOp::Contact { conversation, email } => {
            if !g.locked.contains_key(conversation) {
                return Ok(Err(not_found(conversation)));
            }
            tx.execute("UPDATE conversations SET contact_email = $2 WHERE id = $1", &[conversation, email]).await?;
            Ok(Ok(WriteOutcome::Done))
        }
    }
}

/// A routing change holds only if the conversation is still as it was seen.
fn check(id: &str, conv: &Locked, expect: &Expect) -> std::result::Result<(), StoreError> {
    let same_agent = conv.status == ConvStatus::Closed || conv.agent == expect.agent;
    if conv.status != expect.status || !same_agent {
        let now = match (&conv.agent, conv.status) {
            (Some(a), ConvStatus::Active) => format!("active with {a}"),
            _ => conv.status.as_str().to_string(),
        };
        return Err(StoreError::Conflict(format!("conversation {id} changed meanwhile: it is {now}")));
    }
    Ok(())
}

async fn create(
    tx: &Transaction<'_>,
    locked: &mut HashMap<String, Locked>,
    c: &ConvRow,
) -> Result<std::result::Result<WriteOutcome, StoreError>> {
    // A conflict (the customer's open conversation in that room, or the id)
    // inserts nothing and leaves the transaction usable.
    let inserted = tx
        .query_opt(
            "INSERT INTO conversations (id, room, status, customer_id, customer_name, agent_id, agent_name,
             created_at, queued_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)
             ON CONFLICT DO NOTHING RETURNING id",
            &[
                &c.id,
                &c.room,
                &c.status.as_str(),
                &c.customer.id,
                &c.customer.name,
                &c.agent.as_ref().map(|a| &a.id),
                &c.agent.as_ref().map(|a| &a.name),
                &c.created_at,
                &c.queued_at,
            ],
        )
        .await?;
    if inserted.is_none() {
        return Ok(Err(StoreError::Conflict(format!(
            "the customer already has an open conversation in room `{}`",
            c.room
        ))));
    }
    // Later writes of this group find it as if locked (nobody else can see it yet).
    locked.insert(
        c.id.clone(),
        Locked {
            status: c.status,
            agent: c.agent.as_ref().map(|a| a.id.clone()),
            last_seq: 0,
            rated: false,
            dirty: false,
        },
    );
    Ok(Ok(WriteOutcome::Done))
}
