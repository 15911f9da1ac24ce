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

/// Bots serve many conversations at once unless told otherwise.
const BOT_MAX_ACTIVE: u32 = 1000;

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
        let name = name.trim().to_string();
        if name.is_empty() {
            return Err("agent name: must not be empty".into());
        }
        if let Some(why) = crate::protocol::name_problem(&name) {
            return Err(format!("agent name: {why}"));
        }
        if password.is_empty() {
            return Err("password: must not be empty".into());
        }
        if max_active == Some(0) {
            return Err("--max-active: must be greater than 0".into());
        }
        let max_active = if bot { max_active.or(Some(BOT_MAX_ACTIVE)) } else { max_active };
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
