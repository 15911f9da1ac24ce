//! The schema and how rows look: the numbered migrations (applied once,
//! recorded in `PRAGMA user_version`), how connections are opened, and the
//! column lists and row mappers shared by the writer and the readers.

use super::*;
use crate::protocol::{ConvStatus, Message, MsgKind, Role, User};
use crate::store::*;
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};
use std::path::Path;

pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_init.sql"),
    include_str!("../../../migrations/0002_client_ids_in_writer.sql"),
    include_str!("../../../migrations/0003_message_log.sql"),
    include_str!("../../../migrations/0004_token_revocation.sql"),
    include_str!("../../../migrations/0005_contact_email.sql"),
    include_str!("../../../migrations/0006_routing_guards.sql"),
];

pub(super) fn open_conn(path: &Path, full_sync: bool, cache_kib: i64) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if full_sync { "FULL" } else { "NORMAL" })?;
    // Pages of the conversations being written stay cached between commits.
    conn.pragma_update(None, "cache_size", -cache_kib.max(MIN_CACHE_KIB))?;
    // Checkpoints come from the checkpoint thread (see `checkpoint_loop`).
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
    Ok(conn)
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub(super) fn open_db(data_dir: &Path) -> Result<Connection, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    let path = data_dir.join("parley.db");
    let mut conn = open_conn(&path, true, MIN_CACHE_KIB).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    migrate(&mut conn).map_err(|e| format!("cannot migrate {}: {e}", path.display()))?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the database has schema version {version}, written by a newer Parley; this one knows up to {}",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub(super) const MSG_COLS: &str =
    "conversation_id, seq, id, ts, sender_id, sender_role, sender_name, kind, body, client_id, event";

pub(super) fn message_from_row(r: &Row) -> rusqlite::Result<Message> {
    let role: String = r.get(5)?;
    let kind: String = r.get(7)?;
    let event: Option<String> = r.get(10)?;
    Ok(Message {
        conversation: r.get(0)?,
        seq: r.get(1)?,
        id: r.get(2)?,
        ts: r.get(3)?,
        from: User { id: r.get(4)?, role: Role::parse(&role).unwrap_or(Role::System), name: r.get(6)? },
        kind: MsgKind::parse(&kind).unwrap_or(MsgKind::Text),
        body: r.get(8)?,
        client_id: r.get(9)?,
        event: event.and_then(|e| serde_json::from_str(&e).ok()),
    })
}

/// A conversation's last seq: an open one's is its newest message's (the
/// writer does not update the row for every message); a closed one's row
/// holds it (set by the close and anything after), so a long list of closed
/// conversations costs no lookup per row.
pub(super) const CONV_COLS: &str =
    "id, room, status, customer_id, customer_name, agent_id, agent_name, created_at, queued_at,
    CASE WHEN status = 'closed' THEN last_seq
         ELSE (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = conversations.id) END,
    rating, contact_email";

pub(super) fn conv_from_row(r: &Row) -> rusqlite::Result<ConvRow> {
    let status: String = r.get(2)?;
    let agent_id: Option<String> = r.get(5)?;
    let agent_name: Option<String> = r.get(6)?;
    let rating: Option<i64> = r.get(10)?;
    Ok(ConvRow {
        id: r.get(0)?,
        room: r.get(1)?,
        status: ConvStatus::parse(&status).unwrap_or(ConvStatus::Closed),
        customer: User { id: r.get(3)?, role: Role::Customer, name: r.get(4)? },
        agent: agent_id.map(|id| User { id, role: Role::Agent, name: agent_name.unwrap_or_default() }),
        created_at: r.get(7)?,
        queued_at: r.get(8)?,
        last_seq: r.get(9)?,
        rated: rating.is_some(),
        contact_email: r.get(11)?,
    })
}

pub(super) fn agent_from_row(r: &Row) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        max_active: r.get(3)?,
        bot: r.get::<_, i64>(4)? != 0,
        tokens_after: r.get::<_, i64>(5)? as u64,
    })
}

pub(super) const AGENT_COLS: &str = "id, name, password_hash, max_active, bot, tokens_after";
