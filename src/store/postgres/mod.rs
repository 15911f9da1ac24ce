//! The PostgreSQL store, for deployers who keep their data off the node or
//! run several nodes on one database. It keeps every guarantee of the
//! [`Store`] trait (see `store/mod.rs`) with several writers at once:
//! - seqs are assigned under a row lock on the conversation
//!   (`SELECT … FOR UPDATE`), never from a sequence;
//! - a retry's `client_id` is found through a unique index, whichever
//!   process stored the original;
//! - routing changes lock the conversation and, for an assignment, the
//!   agent, so capacity is counted against committed state.
//!
//! Files: `schema` (migrations under an advisory lock, row mappers),
//! `writer` (group commit: one transaction per batch of writes), `admin`
//! (account management). The store runs its own small tokio runtime, so the
//! actix threads never block on the database.

mod admin;
mod schema;
mod writer;

pub use admin::{import, Imported, PgAdmin};
use schema::*;

use super::*;
use crate::error::StoreError;
use deadpool_postgres::{Pool, Runtime};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How long a request may wait for a database connection, or to make one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one statement or one group's transaction may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool (the writer holds one while it commits).
const POOL_SIZE: usize = 8;

/// The store: a pool of connections, the writer task, and the runtime both run on.
pub struct PgStore {
    pool: Pool,
    writer: tokio::sync::mpsc::UnboundedSender<(u64, WriteOp)>,
    rt: tokio::runtime::Handle,
    /// Keeps the store's runtime alive as long as the store.
    _runtime: Arc<RuntimeHolder>,
}

/// A runtime that is shut down without blocking when the store goes.
pub(crate) struct RuntimeHolder(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeHolder {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The store's own runtime (two threads: the writer and the readers).
pub(crate) fn runtime(name: &str) -> Result<Arc<RuntimeHolder>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the database runtime: {e}"))?;
    Ok(Arc::new(RuntimeHolder(Some(rt))))
}

impl RuntimeHolder {
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        // Some until dropped.
        self.0.as_ref().expect("runtime present until drop").handle().clone()
    }
}

/// A connection pool for `url` (postgres://user@host:port/db); the URL is
/// checked here, the server is not reached yet.
pub(crate) fn pool(url: &str, size: usize) -> Result<Pool, String> {
    let pg: tokio_postgres::Config =
        url.parse().map_err(|e| format!("--database: `{}` is not a PostgreSQL URL: {e}", redact(url)))?;
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| format!("--database: {e}"))
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A database error as the store's callers see it: nothing was applied.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PgStore {
    /// Connects, applies the migrations (under an advisory lock) and starts
    /// the writer; completions of writes go to `done`. A bad URL, an
    /// unreachable server or a refused login is an error here, at start.
    pub fn open(url: &str, done: UnboundedSender<Vec<Completion>>) -> Result<PgStore, String> {
        let holder = runtime("parley-pg")?;
        let rt = holder.handle();
        let pool = pool(url, POOL_SIZE)?;
        let p = pool.clone();
        let shown = redact(url);
        rt.block_on(async move {
            let mut client = p.get().await.map_err(|e| format!("--database: cannot connect to {shown}: {e}"))?;
            migrate(&mut client).await.map_err(|e| format!("--database: cannot migrate {shown}: {e}"))
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(writer::run(pool.clone(), rx, done));
        Ok(PgStore { pool, writer: tx, rt, _runtime: holder })
    }

    /// Runs a query on the store's runtime with a pooled connection, beside
    /// the group-commit writer: the reads, and the cluster's lease records
    /// (which must not wait behind a busy writer's groups).
    fn query<T, F, Fut>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let pool = self.pool.clone();
        let task = self.rt.spawn(async move {
            let client = pool.get().await.map_err(unavailable)?;
            match tokio::time::timeout(QUERY_TIMEOUT, f(client)).await {
                Ok(r) => r.map_err(unavailable),
                Err(_) => Err(StoreError::Unavailable("the database did not answer in time".into())),
            }
        });
        Box::pin(async move { task.await.map_err(|e| StoreError::Unavailable(format!("query task failed: {e}")))? })
    }
}

impl Store for PgStore {
    fn submit(&self, token: u64, op: WriteOp) {
        // The writer lives as long as the store; if it is gone, nothing can be written.
        let _ = self.writer.send((token, op));
    }

    fn history(&self, conversation: &str, after_seq: u64, limit: u32) -> StoreFuture<(Vec<Message>, bool)> {
        let conv = conversation.to_string();
        self.query(move |c| async move {
            let sql = format!(
                "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            );
            let rows = c.query(&sql, &[&conv, &(after_seq as i64), &(limit as i64 + 1)]).await?;
            let mut msgs: Vec<Message> = rows.iter().map(message_from_row).collect();
            let more = msgs.len() > limit as usize;
            msgs.truncate(limit as usize);
            Ok((msgs, more))
        })
    }

    fn conversation(&self, id: &str) -> StoreFuture<Option<ConvRow>> {
        let id = id.to_string();
        self.query(move |c| async move {
            let sql = format!("SELECT {CONV_COLS} FROM conversations WHERE id = $1");
            Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(conv_from_row))
        })
    }

    fn conversations(&self, f: ConvFilter) -> StoreFuture<Vec<ConvRow>> {
        self.query(move |c| async move {
            let sql = format!(
                "SELECT {CONV_COLS} FROM conversations WHERE ($1::TEXT IS NULL OR room = $1)
                 AND ($2::TEXT IS NULL OR status = $2) AND ($3::TEXT IS NULL OR customer_id = $3)
                 ORDER BY created_at DESC LIMIT $4"
            );
            let status = f.status.map(|s| s.as_str().to_string());
            let rows = c.query(&sql, &[&f.room, &status, &f.customer_id, &(f.limit as i64)]).await?;
            Ok(rows.iter().map(conv_from_row).collect())
        })
    }

    fn agent_by_id(&self, id: &str) -> StoreFuture<Option<AgentRow>> {
        let id = id.to_string();
        self.query(move |c| async move {
            let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE id = $1");
            Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(agent_from_row))
        })
    }

    fn agent_by_name(&self, name: &str) -> StoreFuture<Option<AgentRow>> {
        let name = name.to_string();
        self.query(move |c| async move {
            let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE name = $1");
            Ok(c.query_opt(&sql, &[&name]).await?.as_ref().map(agent_from_row))
        })
    }

    fn agents(&self) -> StoreFuture<Vec<AgentRow>> {
        self.query(|c| async move {
            let sql = format!("SELECT {AGENT_COLS} FROM agents ORDER BY name");
            Ok(c.query(&sql, &[]).await?.iter().map(agent_from_row).collect())
        })
    }

    fn open_conversations(&self) -> StoreFuture<Vec<ConvRow>> {
        self.query(|c| async move {
            let sql = format!("SELECT {CONV_COLS} FROM conversations WHERE status <> 'closed' ORDER BY queued_at, id");
            Ok(c.query(&sql, &[]).await?.iter().map(conv_from_row).collect())
        })
    }

    fn read_markers(&self, conversation: &str) -> StoreFuture<Vec<(String, u64)>> {
        let conv = conversation.to_string();
        self.query(move |c| async move {
            let rows = c
                .query("SELECT user_id, seq FROM read_markers WHERE conversation_id = $1 ORDER BY user_id", &[&conv])
                .await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
    }

    fn ping(&self) -> StoreFuture<()> {
        self.query(|c| async move { c.query_one("SELECT 1", &[]).await.map(|_| ()) })
    }

    fn heartbeat(&self, beat: Heartbeat) -> StoreFuture<Vec<(String, String)>> {
        self.query(move |mut c| async move {
            let ttl_ms = beat.ttl.as_millis() as f64;
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO cluster_nodes (id, expires_at) VALUES ($1, now() + $2 * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                &[&beat.node, &ttl_ms],
            )
            .await?;
            if beat.full {
                tx.execute("DELETE FROM cluster_presence WHERE node_id = $1", &[&beat.node]).await?;
            } else if !beat.remove.is_empty() {
                tx.execute(
                    "DELETE FROM cluster_presence WHERE node_id = $1 AND user_id = ANY($2)",
                    &[&beat.node, &beat.remove],
                )
                .await?;
            }
            if !beat.add.is_empty() {
                tx.execute(
                    "INSERT INTO cluster_presence (node_id, user_id) SELECT $1, u FROM UNNEST($2::text[]) AS u
                     ON CONFLICT DO NOTHING",
                    &[&beat.node, &beat.add],
                )
                .await?;
            }
            // Nodes gone for a minute are forgotten (any node may do it; their
            // presence rows go with them).
            tx.execute("DELETE FROM cluster_nodes WHERE expires_at < now() - interval '1 minute'", &[]).await?;
            let rows = tx
                .query(
                    "SELECT p.user_id, p.node_id FROM cluster_presence p JOIN cluster_nodes n ON n.id = p.node_id
                     WHERE n.expires_at > now() AND p.node_id <> $1",
                    &[&beat.node],
                )
                .await?;
            tx.commit().await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn cluster_id(&self) -> StoreFuture<String> {
        self.query(|c| async move { c.query_one("SELECT id FROM cluster_meta", &[]).await.map(|r| r.get(0)) })
    }

    fn release(&self, node: &str) -> StoreFuture<()> {
        let node = node.to_string();
        self.query(
            move |c| async move { c.execute("DELETE FROM cluster_nodes WHERE id = $1", &[&node]).await.map(|_| ()) },
        )
    }
}
