//! Account management on the database file ([`Admin`]): safe beside a
//! running server (SQLite's locking; the server rereads the accounts every
//! few seconds).

use super::*;
use crate::auth;
use crate::protocol::now_ms;
use crate::store::*;
use rusqlite::{params, Connection};
use std::path::Path;

/// Account management on the database file.
pub struct SqliteAdmin {
    conn: Connection,
}

impl SqliteAdmin {
    pub fn open(data_dir: &Path) -> Result<SqliteAdmin, String> {
        Ok(SqliteAdmin { conn: open_db(data_dir)? })
    }
}

impl Admin for SqliteAdmin {
    fn add_agent(&self, name: &str, password: &str, max_active: Option<u32>, bot: bool) -> Result<AgentRow, String> {
        let conn = &self.conn;
        let (name, max_active) = check_new_agent(name, password, max_active, bot)?;
        let hash = auth::hash_password(password)?;
        let id = auth::new_id("a_");
        match conn.execute(
            "INSERT INTO agents (id, name, password_hash, max_active, bot, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, name, hash, max_active, bot as i64, now_ms()],
        ) {
            Ok(_) => Ok(AgentRow { id, name: name.to_string(), password_hash: hash, max_active, bot, tokens_after: 0 }),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(format!("an agent named `{name}` already exists"))
            }
            Err(e) => Err(format!("cannot add agent: {e}")),
        }
    }

    fn agents(&self) -> Result<Vec<AgentRow>, String> {
        all_agents(&self.conn).map_err(|e| format!("cannot read the agents: {e}"))
    }

    fn set_password(&self, name: &str, password: &str) -> Result<(), String> {
        if password.is_empty() {
            return Err("password: must not be empty".into());
        }
        let hash = auth::hash_password(password)?;
        match self.conn.execute(
            "UPDATE agents SET password_hash = ?1, tokens_after = ?2 WHERE name = ?3",
            params![hash, now_ms(), name],
        ) {
            Ok(0) => Err(format!("no agent named `{name}`")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot change the password: {e}")),
        }
    }

    fn remove_agent(&self, name: &str) -> Result<(), String> {
        match self.conn.execute("DELETE FROM agents WHERE name = ?1", params![name]) {
            Ok(0) => Err(format!("no agent named `{name}`")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot remove agent: {e}")),
        }
    }
}

/// Reads a whole SQLite database for `parley migrate`, after folding what its
/// message log still holds. The data dir must not be in use by a server.
pub fn export(db: &Path) -> Result<Dump, String> {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !db.exists() {
        return Err(format!("--from-sqlite: no database at {}", db.display()));
    }
    let lock =
        std::fs::File::create(dir.join("parley.lock")).map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
    if lock.try_lock().is_err() {
        return Err(format!("a parley server is using {}: stop it first", dir.display()));
    }
    let mut conn = open_db(dir)?;
    fold_log(&mut conn)?;
    let e = |e: rusqlite::Error| format!("cannot read {}: {e}", db.display());
    let mut dump = Dump::default();
    let mut q = conn
        .prepare("SELECT id, name, password_hash, max_active, bot, tokens_after, created_at FROM agents ORDER BY name")
        .map_err(e)?;
    dump.agents = q
        .query_map([], |r| Ok((agent_from_row(r)?, r.get::<_, i64>(6)?)))
        .map_err(e)?
        .collect::<rusqlite::Result<_>>()
        .map_err(e)?;
    let mut q = conn
        .prepare(&format!("SELECT {CONV_COLS}, closed_at, rating_comment FROM conversations ORDER BY created_at"))
        .map_err(e)?;
    dump.conversations = q
        .query_map([], |r| {
            Ok(DumpConv {
                row: conv_from_row(r)?,
                rating: r.get(10)?,
                closed_at: r.get(12)?,
                rating_comment: r.get(13)?,
            })
        })
        .map_err(e)?
        .collect::<rusqlite::Result<_>>()
        .map_err(e)?;
    let mut q = conn.prepare(&format!("SELECT {MSG_COLS} FROM messages ORDER BY conversation_id, seq")).map_err(e)?;
    dump.messages = q.query_map([], message_from_row).map_err(e)?.collect::<rusqlite::Result<_>>().map_err(e)?;
    let mut q = conn.prepare("SELECT conversation_id, user_id, seq FROM read_markers").map_err(e)?;
    dump.read_markers = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
        .map_err(e)?
        .collect::<rusqlite::Result<_>>()
        .map_err(e)?;
    Ok(dump)
}
