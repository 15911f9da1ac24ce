//! The PostgreSQL schema: numbered migrations (`migrations/postgres/`),
//! applied at start under an advisory lock so that nodes starting together
//! against an empty database do not race; and the column lists and row
//! mappers shared by the writer and the reads.

use crate::protocol::{ConvStatus, Message, MsgKind, Role, User};
use crate::store::{AgentRow, ConvRow};
use tokio_postgres::Row;

/// The migrations, in order; `parley_migrations` records those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_cluster.sql"),
];

/// Key of the advisory lock held while migrating ("parley" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_726c_6579;

/// Applies the migrations not applied yet, each in its own transaction,
/// holding the advisory lock; refuses a database from a newer Parley.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| e.to_string();
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(e)?;
    let result = async {
        // "already exists, skipping" notices would be logged on every start.
        client.batch_execute("SET client_min_messages = warning").await.map_err(e)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS parley_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(e)?;
        let applied: i32 =
            client.query_one("SELECT COALESCE(MAX(version), 0) FROM parley_migrations", &[]).await.map_err(e)?.get(0);
        if applied as usize > MIGRATIONS.len() {
            return Err(format!(
                "the database has schema version {applied}, written by a newer Parley; this one knows up to {}",
                MIGRATIONS.len()
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let tx = client.transaction().await.map_err(e)?;
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute("INSERT INTO parley_migrations (version) VALUES ($1)", &[&(i as i32 + 1)]).await.map_err(e)?;
            tx.commit().await.map_err(e)?;
            log::info!("store: PostgreSQL schema migrated to version {}", i + 1);
        }
        Ok(())
    }
    .await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result?;
    unlocked.map(|_| ()).map_err(e)
}

pub(super) const MSG_COLS: &str =
    "conversation_id, seq, id, ts, sender_id, sender_role, sender_name, kind, body, client_id, event";

pub(super) fn message_from_row(r: &Row) -> Message {
    let role: String = r.get(5);
    let kind: String = r.get(7);
    let event: Option<String> = r.get(10);
    Message {
        conversation: r.get(0),
        seq: r.get::<_, i64>(1) as u64,
        id: r.get(2),
        ts: r.get(3),
        from: User { id: r.get(4), role: Role::parse(&role).unwrap_or(Role::System), name: r.get(6) },
        kind: MsgKind::parse(&kind).unwrap_or(MsgKind::Text),
        body: r.get(8),
        client_id: r.get(9),
        event: event.and_then(|e| serde_json::from_str(&e).ok()),
    }
}

pub(super) const CONV_COLS: &str = "id, room, status, customer_id, customer_name, agent_id, agent_name, \
     created_at, queued_at, last_seq, rating, contact_email";

pub(super) fn conv_from_row(r: &Row) -> ConvRow {
    let status: String = r.get(2);
    let agent_id: Option<String> = r.get(5);
    let agent_name: Option<String> = r.get(6);
    let rating: Option<i32> = r.get(10);
    ConvRow {
        id: r.get(0),
        room: r.get(1),
        status: ConvStatus::parse(&status).unwrap_or(ConvStatus::Closed),
        customer: User { id: r.get(3), role: Role::Customer, name: r.get(4) },
        agent: agent_id.map(|id| User { id, role: Role::Agent, name: agent_name.unwrap_or_default() }),
        created_at: r.get(7),
        queued_at: r.get(8),
        last_seq: r.get::<_, i64>(9) as u64,
        rated: rating.is_some(),
        contact_email: r.get(11),
    }
}

pub(super) const AGENT_COLS: &str = "id, name, password_hash, max_active, bot, tokens_after";

pub(super) fn agent_from_row(r: &Row) -> AgentRow {
    AgentRow {
        id: r.get(0),
        name: r.get(1),
        password_hash: r.get(2),
        max_active: r.get::<_, Option<i32>>(3).map(|m| m as u32),
        bot: r.get(4),
        tokens_after: r.get::<_, i64>(5) as u64,
    }
}
