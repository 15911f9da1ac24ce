//! The SQLite store: one writer thread that applies writes in batches (one
//! transaction and one fsync per batch), and a small pool of reader
//! connections used from tokio's blocking threads. WAL mode lets readers run
//! beside the writer.
//!
//! New messages go to a message log first (see `migrations/0003_message_log.sql`
//! and [`Log`]): a commit then writes a few packed pages instead of a page per
//! conversation. The writer folds the log into `messages` later, a
//! conversation at a time, in the same transactions. Until then the messages
//! are also kept in memory ([`Tails`]), where readers find them.
//!
//! Files: `schema` (migrations, connections, row mappers), `writer` (the
//! writer and checkpoint threads), `apply` (one write in its transaction),
//! `msglog` (the message log and its folding), `reads` (the `Store` queries),
//! `admin` (account management).

mod admin;
mod apply;
mod msglog;
mod reads;
mod schema;
mod writer;

pub use admin::{export, SqliteAdmin};
use apply::*;
use msglog::*;
use reads::*;
use schema::*;
use writer::*;

use super::*;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// How long a connection waits for a lock held by another process (the CLI), ms.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// Smallest page cache of a connection, KiB (SQLite's own default is 2 MiB).
const MIN_CACHE_KIB: i64 = 1024;

/// The store: a handle on the writer thread and the reader pool.
pub struct SqliteStore {
    path: PathBuf,
    /// Page cache of each reader connection, KiB.
    reader_cache_kib: i64,
    writer: Mutex<std_mpsc::Sender<(u64, WriteOp)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    tails: SharedTails,
}

impl SqliteStore {
    /// Opens the store, folding what the last run left in the message log, and
    /// starts its writer thread; completions of writes go to `done`.
    /// `fold_after`: how long a message may stay in the message log (see [`Log`]).
    ///
    /// The page cache (`--store-cache-mib`) is shared out: half to the writer,
    /// which rewrites the pages of the conversations being written, and half
    /// among the reader connections kept idle. SQLite's page cache grows up to
    /// its bound and stays there, so this bounds the store's memory.
    pub fn open(cfg: &StoreConfig, done: UnboundedSender<Vec<Completion>>) -> Result<SqliteStore, String> {
        let (data_dir, full_sync, fold_after) = (&cfg.data_dir, cfg.full_sync, cfg.fold_after);
        let budget_kib = cfg.cache_mib as i64 * 1024;
        let writer_kib = budget_kib / 2;
        let reader_cache_kib = budget_kib / 2 / MAX_IDLE_READERS as i64;
        drop(open_db(data_dir)?);
        let path = data_dir.join("parley.db");
        let mut conn =
            open_conn(&path, full_sync, writer_kib).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // The tails start empty: so must the log.
        fold_log(&mut conn)?;
        let tails = SharedTails::default();
        conn.busy_handler(Some(writer_busy)).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let ckpt =
            open_conn(&path, full_sync, MIN_CACHE_KIB).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // The checkpoint thread never waits for a lock: it tries again next time.
        ckpt.busy_timeout(std::time::Duration::ZERO).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (tx, rx) = std_mpsc::channel();
        // The checkpoint thread lives as long as the writer holds `alive`.
        let (alive, writer_gone) = std_mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("parley-checkpoint".into())
            .spawn(move || checkpoint_loop(ckpt, writer_gone))
            .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
        std::thread::Builder::new()
            .name("parley-store-writer".into())
            .spawn({
                let tails = tails.clone();
                move || {
                    let _alive = alive;
                    writer_loop(conn, rx, done, tails, fold_after)
                }
            })
            .map_err(|e| format!("cannot start the store writer: {e}"))?;
        Ok(SqliteStore {
            path,
            reader_cache_kib,
            writer: Mutex::new(tx),
            readers: Arc::new(Mutex::new(Vec::new())),
            tails,
        })
    }

    /// Runs `f` on a reader connection on a blocking thread.
    pub(super) fn read<T, F>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        let cache_kib = self.reader_cache_kib;
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || {
                let conn = match pool.lock().pop() {
                    Some(c) => c,
                    None => open_conn(&path, true, cache_kib)?,
                };
                let out = f(&conn);
                let mut idle = pool.lock();
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
                out
            })
            .await;
            match res {
                Ok(r) => r.map_err(StoreError::from),
                Err(e) => Err(StoreError::Unavailable(format!("reader task failed: {e}"))),
            }
        })
    }
}
