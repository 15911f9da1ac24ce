//! Account management on PostgreSQL ([`Admin`]): the `parley agent`
//! commands with `--database`, safe beside running nodes (each rereads the
//! accounts every few seconds).

use super::schema::*;
use super::{pool, redact, runtime, RuntimeHolder};
use crate::auth;
use crate::protocol::now_ms;
use crate::store::{Admin, AgentRow};
use deadpool_postgres::Pool;
use std::sync::Arc;

/// Account management on a PostgreSQL database.
pub struct PgAdmin {
    pool: Pool,
    rt: Arc<RuntimeHolder>,
}

impl PgAdmin {
    /// Connects and brings the schema up to date.
    pub fn open(url: &str) -> Result<PgAdmin, String> {
        let rt = runtime("parley-pg-admin")?;
        let pool = pool(url, 2)?;
        let p = pool.clone();
        let shown = redact(url);
        rt.handle().block_on(async move {
            let mut client = p.get().await.map_err(|e| format!("--database: cannot connect to {shown}: {e}"))?;
            migrate(&mut client).await.map_err(|e| format!("--database: cannot migrate {shown}: {e}"))
        })?;
        Ok(PgAdmin { pool, rt })
    }

    fn run<T>(&self, f: impl std::future::Future<Output = Result<T, String>> + Send + 'static) -> Result<T, String>
    where
        T: Send + 'static,
    {
        self.rt.handle().block_on(f)
    }
}

impl Admin for PgAdmin {
    fn add_agent(&self, name: &str, password: &str, max_active: Option<u32>, bot: bool) -> Result<AgentRow, String> {
        let (name, max_active) = crate::store::check_new_agent(name, password, max_active, bot)?;
        let name = name.to_string();
        let hash = auth::hash_password(password)?;
        let id = auth::new_id("a_");
        let pool = self.pool.clone();
        let row = AgentRow {
            id: id.clone(),
            name: name.clone(),
            password_hash: hash.clone(),
            max_active,
            bot,
            tokens_after: 0,
        };
        self.run(async move {
            let c = pool.get().await.map_err(|e| format!("cannot reach the database: {e}"))?;
            let n = c
                .execute(
                    "INSERT INTO agents (id, name, password_hash, max_active, bot, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                    &[&id, &name, &hash, &max_active.map(|m| m as i32), &bot, &now_ms()],
                )
                .await
                .map_err(|e| format!("cannot add agent: {e}"))?;
            if n == 0 {
                return Err(format!("an agent named `{name}` already exists"));
            }
            Ok(row)
        })
    }

    fn agents(&self) -> Result<Vec<AgentRow>, String> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = pool.get().await.map_err(|e| format!("cannot reach the database: {e}"))?;
            let sql = format!("SELECT {AGENT_COLS} FROM agents ORDER BY name");
            let rows = c.query(&sql, &[]).await.map_err(|e| format!("cannot read the agents: {e}"))?;
            Ok(rows.iter().map(agent_from_row).collect())
        })
    }

    fn set_password(&self, name: &str, password: &str) -> Result<(), String> {
        if password.is_empty() {
            return Err("password: must not be empty".into());
        }
        let hash = auth::hash_password(password)?;
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.run(async move {
            let c = pool.get().await.map_err(|e| format!("cannot reach the database: {e}"))?;
            let n = c
                .execute(
                    "UPDATE agents SET password_hash = $1, tokens_after = $2 WHERE name = $3",
                    &[&hash, &now_ms(), &name],
                )
                .await
                .map_err(|e| format!("cannot change the password: {e}"))?;
            if n == 0 {
                return Err(format!("no agent named `{name}`"));
            }
            Ok(())
        })
    }

    fn remove_agent(&self, name: &str) -> Result<(), String> {
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.run(async move {
            let c = pool.get().await.map_err(|e| format!("cannot reach the database: {e}"))?;
            let n = c
                .execute("DELETE FROM agents WHERE name = $1", &[&name])
                .await
                .map_err(|e| format!("cannot remove agent: {e}"))?;
            if n == 0 {
                return Err(format!("no agent named `{name}`"));
            }
            Ok(())
        })
    }
}

/// What `import` copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub agents: usize,
    pub conversations: usize,
    pub messages: usize,
    pub read_markers: usize,
}

/// Copies a dump into an empty PostgreSQL database in one transaction,
/// checks the counts before committing, and refuses a database that holds
/// any agent, conversation or message already.
pub fn import(url: &str, dump: crate::store::Dump) -> Result<Imported, String> {
    let admin = PgAdmin::open(url)?;
    let pool = admin.pool.clone();
    let want = Imported {
        agents: dump.agents.len(),
        conversations: dump.conversations.len(),
        messages: dump.messages.len(),
        read_markers: dump.read_markers.len(),
    };
    // Moved into the task on the store's runtime (no copy of a large data dir).
    let crate::store::Dump { agents, conversations: convs, messages: msgs, read_markers: marks } = dump;
    admin.run(async move {
        let e = |e: tokio_postgres::Error| format!("cannot copy into the database: {e}");
        let mut c = pool.get().await.map_err(|e| format!("cannot reach the database: {e}"))?;
        let tx = c.transaction().await.map_err(e)?;
        let held: i64 = tx
            .query_one(
                "SELECT (SELECT COUNT(*) FROM agents) + (SELECT COUNT(*) FROM conversations) + (SELECT COUNT(*) FROM messages)",
                &[],
            )
            .await
            .map_err(e)?
            .get(0);
        if held > 0 {
            return Err("--database: the target database is not empty; migrate into an empty one".into());
        }
        for (a, created_at) in &agents {
            tx.execute(
                "INSERT INTO agents (id, name, password_hash, max_active, bot, created_at, tokens_after)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&a.id, &a.name, &a.password_hash, &a.max_active.map(|m| m as i32), &a.bot, created_at, &(a.tokens_after as i64)],
            )
            .await
            .map_err(e)?;
        }
        for d in &convs {
            let r = &d.row;
            tx.execute(
                "INSERT INTO conversations (id, room, status, customer_id, customer_name, agent_id, agent_name,
                 created_at, queued_at, last_seq, closed_at, rating, rating_comment, contact_email)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &r.id,
                    &r.room,
                    &r.status.as_str(),
                    &r.customer.id,
                    &r.customer.name,
                    &r.agent.as_ref().map(|a| &a.id),
                    &r.agent.as_ref().map(|a| &a.name),
                    &r.created_at,
                    &r.queued_at,
                    &(r.last_seq as i64),
                    &d.closed_at,
                    &d.rating.map(|x| x as i32),
                    &d.rating_comment,
                    &r.contact_email,
                ],
            )
            .await
            .map_err(e)?;
        }
        let insert = tx
            .prepare(&format!(
                "INSERT INTO messages ({MSG_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .await
            .map_err(e)?;
        for m in &msgs {
            let event = m.event.as_ref().map(|v| v.to_string());
            tx.execute(
                &insert,
                &[
                    &m.conversation,
                    &(m.seq as i64),
                    &m.id,
                    &m.ts,
                    &m.from.id,
                    &m.from.role.as_str(),
                    &m.from.name,
                    &m.kind.as_str(),
                    &m.body,
                    &m.client_id,
                    &event,
                ],
            )
            .await
            .map_err(e)?;
        }
        for (conv, user, seq) in &marks {
            tx.execute(
                "INSERT INTO read_markers (conversation_id, user_id, seq) VALUES ($1, $2, $3)",
                &[conv, user, &(*seq as i64)],
            )
            .await
            .map_err(e)?;
        }
        let count = |sql: &'static str| {
            let tx = &tx;
            async move { tx.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0) as usize) }
        };
        let got = Imported {
            agents: count("SELECT COUNT(*) FROM agents").await.map_err(e)?,
            conversations: count("SELECT COUNT(*) FROM conversations").await.map_err(e)?,
            messages: count("SELECT COUNT(*) FROM messages").await.map_err(e)?,
            read_markers: count("SELECT COUNT(*) FROM read_markers").await.map_err(e)?,
        };
        if got != want {
            return Err(format!("the copy does not add up ({got:?} copied, {want:?} read); nothing was committed"));
        }
        tx.commit().await.map_err(e)?;
        Ok(got)
    })
}
