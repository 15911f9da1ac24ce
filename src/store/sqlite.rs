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

use super::*;
use crate::auth;
use crate::protocol::{now_ms, MsgKind, Role};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How long a group waits for more writes once writes come faster than the
/// store commits them.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);
/// How long a connection waits for a lock held by another process (the CLI), ms.
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// How often the writer tries again for a lock it waits for.
const WRITER_BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(200);
/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// Smallest page cache of a connection, KiB (SQLite's own default is 2 MiB).
const MIN_CACHE_KIB: i64 = 1024;
/// How often the checkpoint thread copies committed WAL pages into the
/// database, off the writer's path: a commit never waits for a checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL pages after which the writer checkpoints by itself: only when the
/// checkpoint thread cannot keep up (SQLite's default is 1000).
const CHECKPOINT_PAGES: i64 = 100_000;
/// WAL pages after which the checkpoint thread starts the WAL over.
const RESTART_PAGES: i64 = 8_000;
/// What the WAL file is truncated to after it restarts, bytes.
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Default capacity of a bot account.
const BOT_MAX_ACTIVE: u32 = 1000;

/// Log rows after which new messages go to the other log table (once that
/// one is folded and emptied).
const EPOCH_ROWS: usize = 32_768;
/// Messages a commit folds at least, while some conversations are left to
/// fold, besides [`FOLD_PER_APPEND`] per message it appends: folding keeps
/// pace with the log, spread over many commits so that none takes long.
const FOLD_MIN: usize = 32;
const FOLD_PER_APPEND: usize = 2;
/// Room for unfolded messages a new tail starts with.
const TAIL_CAPACITY: usize = 16;
/// Log rows after which the log moves even if the other table is not all
/// folded yet: the rest is folded at once (only if folding cannot keep up).
const LOG_MAX_ROWS: usize = 4 * EPOCH_ROWS;
/// The message log's two tables, used in turn.
const LOG_TABLES: [&str; 2] = ["message_log_0", "message_log_1"];

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_client_ids_in_writer.sql"),
    include_str!("../../migrations/0003_message_log.sql"),
    include_str!("../../migrations/0004_token_revocation.sql"),
    include_str!("../../migrations/0005_contact_email.sql"),
    include_str!("../../migrations/0006_routing_guards.sql"),
];

pub struct SqliteStore {
    path: PathBuf,
    /// Page cache of each reader connection, KiB.
    reader_cache_kib: i64,
    writer: Mutex<std_mpsc::Sender<(u64, WriteOp)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    tails: SharedTails,
}

/// Messages in the log not yet folded into `messages`: by conversation, in
/// seq order, each list starting right after the conversation's last folded
/// message. Only the writer changes it, after its commits; readers merge it
/// into what they read from `messages`.
#[derive(Default)]
struct Tails {
    by_conv: HashMap<String, Vec<Unfolded>>,
    /// Folds so far. A reader that sees the same count before and after its
    /// query found every committed message in `messages` or here.
    folds: u64,
}

type SharedTails = Arc<Mutex<Tails>>;

/// A message in the log, and where: the fold copies its row by rowid.
struct Unfolded {
    /// Shared with the write's outcome: logging a message copies nothing.
    msg: Arc<Message>,
    table: usize,
    rowid: i64,
}

fn open_conn(path: &Path, full_sync: bool, cache_kib: i64) -> rusqlite::Result<Connection> {
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
fn open_admin(data_dir: &Path) -> Result<Connection, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    let path = data_dir.join("parley.db");
    let mut conn = open_conn(&path, true, MIN_CACHE_KIB).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    migrate(&mut conn).map_err(|e| format!("cannot migrate {}: {e}", path.display()))?;
    Ok(conn)
}

/// Folds whatever the message log holds into `messages`: what a server that
/// stopped (or crashed) had not folded yet. Only the store's opening, under
/// the data dir's lock, calls it: a running server's writer owns the log.
fn fold_log(conn: &mut Connection) -> Result<(), String> {
    let fold = |conn: &mut Connection| -> rusqlite::Result<usize> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut folded = 0;
        for (table, sql) in LOG_TABLES.iter().zip(LOG_SQL.iter()) {
            // A message folded before the stop is in both: kept once.
            folded += tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO messages ({MSG_COLS}) SELECT {MSG_COLS} FROM {table}
                     ORDER BY conversation_id, seq"
                ),
                [],
            )?;
            tx.execute(&sql.clear, [])?;
        }
        tx.commit()?;
        Ok(folded)
    };
    let folded = fold(conn).map_err(|e| format!("cannot fold the message log: {e}"))?;
    if folded > 0 {
        log::info!("store: folded {folded} logged messages into the message table");
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
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
        drop(open_admin(data_dir)?);
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
    fn read<T, F>(&self, f: F) -> StoreFuture<T>
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

/// The writer's wait for a lock held by the checkpoint thread (or the CLI):
/// a retry every [`WRITER_BUSY_RETRY`], up to [`BUSY_TIMEOUT_MS`] in all.
/// SQLite's own busy timeout backs off to sleeps of up to 100 ms, so a
/// restart checkpoint of 11 ms held every message for 18 ms.
fn writer_busy(tries: i32) -> bool {
    std::thread::sleep(WRITER_BUSY_RETRY);
    WRITER_BUSY_RETRY * (tries as u32 + 1) < std::time::Duration::from_millis(BUSY_TIMEOUT_MS)
}

/// Copies committed WAL pages into the database every [`CHECKPOINT_EVERY`]
/// beside the writer and readers (a passive checkpoint); once the WAL is
/// long, a restart checkpoint holds the writer for the last few pages so the
/// WAL starts over from its beginning.
fn checkpoint_loop(conn: Connection, writer_gone: std_mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
    };
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY) {
        match checkpoint("PASSIVE") {
            // Under steady writes a passive checkpoint never sees the end of the
            // WAL, so it would grow until the writer's own checkpoint. A restart
            // checkpoint takes the write lock when it is free (with no busy
            // wait, it gives up at once otherwise), copies the few pages written
            // since the passive one, and the WAL starts over once no reader
            // still uses it.
            Ok(frames) if frames > RESTART_PAGES => {
                if let Err(e) = checkpoint("RESTART") {
                    log::debug!("store: restart checkpoint skipped: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => log::debug!("store: checkpoint skipped: {e}"),
        }
    }
}

/// What the writer knows of an open conversation: it is the only writer of
/// the database, so this is exact. A message then costs one insert: no
/// conversation-row update, and no index of client ids to keep (each index is
/// one more page written per message).
struct ConvSeq {
    last_seq: u64,
    closed: bool,
    /// Seq of every message with a client id, by [`client_key`].
    client_ids: HashMap<String, u64>,
}

/// Conversations the writer has touched, by id. A conversation leaves when it
/// closes; all leave when a group fails (its changes were rolled back) or
/// when more than [`MAX_CACHED_CONVS`] are here.
type SeqCache = HashMap<String, ConvSeq>;

/// Conversations the writer keeps in memory before starting afresh.
const MAX_CACHED_CONVS: usize = 50_000;
/// Client ids (about 100 bytes each) the writer keeps before starting afresh.
const MAX_CACHED_CLIENT_IDS: usize = 2_000_000;
/// Groups between two counts of the cached client ids.
const CACHE_CHECK_EVERY: u32 = 1024;

/// A retry is the same sender's same `client_id` in the same conversation.
fn client_key(sender_id: &str, client_id: &str) -> String {
    format!("{sender_id}\u{0}{client_id}")
}

/// Where new messages are logged, and which conversations are left to fold.
///
/// Appends go to one log table (`cur`) for `fold_after` (from its first row)
/// or [`EPOCH_ROWS`] rows. Then the log moves to the other table, and every
/// conversation with unfolded messages is put in `pending`; each commit folds
/// a few of them (all their unfolded messages, whichever table they are in),
/// and the commit that folds the last one empties the table the log left,
/// ready for the next move. A move waits until that is done; if it is due
/// before, it waits (the current table grows), up to [`LOG_MAX_ROWS`] rows,
/// where a commit folds the rest at once.
struct Log {
    /// Index in [`LOG_TABLES`] of the table taking new messages.
    cur: usize,
    /// Rows appended to it.
    rows: usize,
    started: std::time::Instant,
    /// Age of the current table's first row after which the log moves.
    fold_after: std::time::Duration,
    /// The other table still holds rows.
    other_dirty: bool,
    /// Conversations with messages in the other table, not folded yet.
    pending: Vec<String>,
}

/// What one commit folds.
struct FoldPlan {
    /// Conversations whose unfolded messages go to `messages`.
    convs: Vec<String>,
    /// Every conversation is folded and both tables emptied.
    all: bool,
    /// The other table is emptied.
    clear_other: bool,
}

impl Log {
    fn new(fold_after: std::time::Duration) -> Log {
        let started = std::time::Instant::now();
        Log { cur: 0, rows: 0, started, fold_after, other_dirty: false, pending: Vec::new() }
    }

    fn move_due(&self) -> bool {
        self.rows >= EPOCH_ROWS || (self.rows > 0 && self.started.elapsed() >= self.fold_after)
    }

    /// Nothing is logged that is not folded.
    fn is_empty(&self, tails: &Tails) -> bool {
        self.rows == 0 && !self.other_dirty && tails.by_conv.is_empty()
    }

    /// What a commit that appended `appended` messages folds.
    fn plan(&self, tails: &Tails, all: bool, appended: usize) -> FoldPlan {
        if all {
            return FoldPlan { convs: tails.by_conv.keys().cloned().collect(), all, clear_other: true };
        }
        let n = if self.rows >= LOG_MAX_ROWS && self.other_dirty {
            self.pending.len()
        } else {
            let budget = FOLD_MIN + FOLD_PER_APPEND * appended;
            let mut messages = 0;
            let n = self.pending.iter().rev().take_while(|c| {
                let more = messages < budget;
                messages += tails.by_conv.get(*c).map_or(0, |t| t.len());
                more
            });
            n.count()
        };
        FoldPlan {
            convs: self.pending[self.pending.len() - n..].to_vec(),
            all,
            clear_other: self.other_dirty && n == self.pending.len(),
        }
    }

    /// After the commit of `plan` and `appended` new messages (`tails` is up to date).
    fn committed(&mut self, plan: &FoldPlan, appended: usize, tails: &Tails) {
        if plan.all {
            self.rows = 0;
            self.started = std::time::Instant::now();
            self.pending.clear();
            self.other_dirty = false;
            return;
        }
        self.pending.truncate(self.pending.len() - plan.convs.len());
        if plan.clear_other {
            self.other_dirty = false;
        }
        if self.rows == 0 {
            // A table's age counts from its first row.
            self.started = std::time::Instant::now();
        }
        self.rows += appended;
        if self.move_due() && !self.other_dirty {
            self.cur ^= 1;
            self.rows = 0;
            self.started = std::time::Instant::now();
            self.other_dirty = true;
            self.pending = tails.by_conv.keys().cloned().collect();
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: std_mpsc::Receiver<(u64, WriteOp)>,
    done: UnboundedSender<Vec<Completion>>,
    tails: SharedTails,
    fold_after: std::time::Duration,
) {
    let mut seqs = SeqCache::new();
    let mut log = Log::new(fold_after);
    let mut groups = 0u32;
    let mut last_group = 0;
    loop {
        let first = match rx.recv_timeout(fold_after) {
            Ok(op) => Some(op),
            // Idle: fold the whole log, if there is anything to fold.
            Err(std_mpsc::RecvTimeoutError::Timeout) if log.is_empty(&tails.lock()) => continue,
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        groups = groups.wrapping_add(1);
        if seqs.len() > MAX_CACHED_CONVS
            || (groups.is_multiple_of(CACHE_CHECK_EVERY)
                && seqs.values().map(|c| c.client_ids.len()).sum::<usize>() > MAX_CACHED_CLIENT_IDS)
        {
            // Open conversations are read back from their rows as they are used.
            seqs.clear();
        }
        // Under load (the last group held more than one write), wait a little
        // for more writes before committing: one commit then carries many.
        // (An idle fold takes no writes.)
        let gather = (first.is_some() && last_group > 1).then(|| std::time::Instant::now() + GATHER);
        let mut writer = Writer { conn: &mut conn, seqs: &mut seqs, log: &mut log, tails: &tails };
        let completions = writer.commit_group(first, &rx, gather);
        last_group = completions.len();
        let c = crate::http::metrics::counters();
        c.store_commits.inc();
        c.store_writes.inc_by(last_group as u64);
        if !completions.is_empty() && done.send(completions).is_err() {
            break; // the server is gone
        }
    }
}

/// The writer thread's state, for one group.
struct Writer<'a> {
    conn: &'a mut Connection,
    seqs: &'a mut SeqCache,
    log: &'a mut Log,
    tails: &'a SharedTails,
}

impl Writer<'_> {
    /// Applies `first` and every write that arrives while the group is being
    /// applied, or until `gather` when given (up to [`MAX_BATCH`]), and folds
    /// some of the log, in one transaction with one fsync: under load the
    /// groups grow and share the cost of a commit, while a write that arrives
    /// alone on an idle store commits at once. With no `first`, the whole log
    /// is folded. Ops check before they write, so a refused op (conflict, not
    /// found) writes nothing; a database failure fails the whole group, which
    /// is rolled back.
    fn commit_group(
        &mut self,
        first: Option<(u64, WriteOp)>,
        rx: &std_mpsc::Receiver<(u64, WriteOp)>,
        gather: Option<std::time::Instant>,
    ) -> Vec<Completion> {
        let idle = first.is_none();
        debug_assert!(!idle || gather.is_none(), "an idle fold gathers no writes");
        // Gathered before the transaction begins: the write lock is held only to
        // apply and commit, and the checkpoint thread can take it meanwhile.
        let mut ops: Vec<(u64, WriteOp)> = first.into_iter().collect();
        if let Some(until) = gather {
            // Asleep through the whole wait, then take what came: a writer
            // blocked on the channel would be woken (a context switch on a
            // busy core) by every write as it arrived.
            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
            while ops.len() < MAX_BATCH {
                let Ok(op) = rx.try_recv() else { break };
                ops.push(op);
            }
        }
        let Committed { results, appended, plan, folded } = match self.run(&mut ops, rx, idle) {
            Ok(done) => done,
            Err(e) => {
                log::error!("store: a group of {} writes failed and was rolled back: {e}", ops.len());
                self.seqs.clear();
                let failed = |(token, _)| Completion { token, result: Err(StoreError::Unavailable(e.to_string())) };
                return ops.into_iter().map(failed).collect();
            }
        };
        // Committed: folded messages leave the tails, new ones join them.
        {
            let mut tails = self.tails.lock();
            for (conv, n) in &folded {
                if let Some(tail) = tails.by_conv.get_mut(conv) {
                    tail.drain(..*n);
                    if tail.is_empty() {
                        tails.by_conv.remove(conv);
                    }
                }
            }
            if !folded.is_empty() {
                tails.folds += 1;
            }
            let n = appended.len();
            for u in appended {
                match tails.by_conv.get_mut(&u.msg.conversation) {
                    Some(tail) => tail.push(u),
                    None => {
                        // Room for a few seconds of a typical conversation,
                        // so the tail seldom grows (and moves) while it waits.
                        let mut tail = Vec::with_capacity(TAIL_CAPACITY);
                        let conv = u.msg.conversation.clone();
                        tail.push(u);
                        tails.by_conv.insert(conv, tail);
                    }
                }
            }
            self.log.committed(&plan, n, &tails);
        }
        ops.into_iter().zip(results).map(|((token, _), result)| Completion { token, result }).collect()
    }

    /// The transaction of [`Writer::commit_group`].
    fn run(
        &mut self,
        ops: &mut Vec<(u64, WriteOp)>,
        rx: &std_mpsc::Receiver<(u64, WriteOp)>,
        idle: bool,
    ) -> rusqlite::Result<Committed> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(ops.len());
        let mut appended = Vec::with_capacity(ops.len());
        while !idle && out.len() < MAX_BATCH {
            if out.len() == ops.len() {
                let Ok(op) = rx.try_recv() else { break };
                ops.push(op);
            }
            // The op itself is no longer needed (a failed group answers by
            // token alone): its message moves into the outcome.
            let op = std::mem::replace(&mut ops[out.len()].1, WriteOp::Barrier);
            let res = apply(&tx, self.seqs, self.tails, &out, self.log.cur, op)?;
            if let Ok(WriteOutcome::Appended { message, duplicate: false }) = &res {
                // The op's last insert was the message's, into the log.
                let rowid = tx.last_insert_rowid();
                appended.push(Unfolded { msg: message.clone(), table: self.log.cur, rowid });
            }
            out.push(res);
        }
        // The plan's conversations: their rows in the log, copied by one
        // statement per log table.
        let (plan, folded, by_table) = {
            let tails = self.tails.lock();
            let plan = self.log.plan(&tails, idle, appended.len());
            let mut by_table = [String::from("["), String::from("[")];
            let mut folded = Vec::with_capacity(plan.convs.len());
            for (c, tail) in plan.convs.iter().filter_map(|c| tails.by_conv.get(c).map(|t| (c, t))) {
                for u in tail {
                    let list = &mut by_table[u.table];
                    let sep = if list.len() > 1 { "," } else { "" };
                    let _ = write!(list, "{sep}{}", u.rowid);
                }
                folded.push((c.clone(), tail.len()));
            }
            (plan, folded, by_table)
        };
        for (sql, mut list) in LOG_SQL.iter().zip(by_table) {
            if list.len() > 1 {
                list.push(']');
                tx.prepare_cached(&sql.fold)?.execute(params![list])?;
            }
        }
        if plan.clear_other {
            tx.execute(&LOG_SQL[self.log.cur ^ 1].clear, [])?;
        }
        if plan.all {
            tx.execute(&LOG_SQL[self.log.cur].clear, [])?;
        }
        tx.commit()?;
        Ok(Committed { results: out, appended, plan, folded })
    }
}

/// What a group's transaction did.
struct Committed {
    /// Each op's result.
    results: Vec<Result<WriteOutcome, StoreError>>,
    /// The messages it logged.
    appended: Vec<Unfolded>,
    plan: FoldPlan,
    /// How many unfolded messages of each planned conversation it folded.
    folded: Vec<(String, usize)>,
}

/// Messages this group appended so far (not in the tails before it commits).
fn group_messages<'a>(
    group: &'a [Result<WriteOutcome, StoreError>],
    conversation: &'a str,
) -> impl Iterator<Item = &'a Arc<Message>> + 'a {
    group.iter().filter_map(move |r| match r {
        Ok(WriteOutcome::Appended { message, duplicate: false }) if message.conversation == conversation => {
            Some(message)
        }
        _ => None,
    })
}

/// The writer's view of a conversation, read on first use from its row, its
/// folded messages, its tail and this group's messages (None: no such
/// conversation). Its last seq is its newest message's.
fn conv_seq<'a>(
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
fn original(
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
fn apply(
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
        WriteOp::Update { expect, status, agent, room, queued_at, capacity, event } => {
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
fn check_routing(
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

/// The writer's statements on one log table.
struct LogSql {
    /// Logs a message (runs for every message).
    insert: String,
    /// Copies the rows whose rowids are in the JSON array `?1` into
    /// `messages`. A message is folded once: a clash of seqs fails the group
    /// rather than dropping one of the two.
    fold: String,
    /// Empties the table.
    clear: String,
}

/// [`LogSql`] of each of [`LOG_TABLES`], built once.
static LOG_SQL: std::sync::LazyLock<[LogSql; 2]> = std::sync::LazyLock::new(|| {
    LOG_TABLES.map(|t| LogSql {
        insert: format!("INSERT INTO {t} ({MSG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        fold: format!(
            "INSERT INTO messages ({MSG_COLS}) SELECT {MSG_COLS} FROM {t} WHERE rowid IN (SELECT value FROM json_each(?1))"
        ),
        clear: format!("DELETE FROM {t}"),
    })
});

/// Adds a message to the log table `log` (an index in [`LOG_TABLES`]).
fn insert_message(tx: &rusqlite::Transaction, log: usize, m: &Message) -> rusqlite::Result<()> {
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

const MSG_COLS: &str =
    "conversation_id, seq, id, ts, sender_id, sender_role, sender_name, kind, body, client_id, event";

fn message_from_row(r: &Row) -> rusqlite::Result<Message> {
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
const CONV_COLS: &str = "id, room, status, customer_id, customer_name, agent_id, agent_name, created_at, queued_at,
    CASE WHEN status = 'closed' THEN last_seq
         ELSE (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = conversations.id) END,
    rating, contact_email";

fn conv_from_row(r: &Row) -> rusqlite::Result<ConvRow> {
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

fn agent_from_row(r: &Row) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        max_active: r.get(3)?,
        bot: r.get::<_, i64>(4)? != 0,
        tokens_after: r.get::<_, i64>(5)? as u64,
    })
}

const AGENT_COLS: &str = "id, name, password_hash, max_active, bot, tokens_after";

/// Conversations matching `f`, newest first.
fn conversations(c: &Connection, f: &ConvFilter) -> rusqlite::Result<Vec<ConvRow>> {
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
fn with_tails(
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

// ---------------------------------------------------------------- admin (synchronous)

/// Account management on the database file: safe beside a running server
/// (SQLite's locking; the server rereads the accounts every few seconds).
pub struct SqliteAdmin {
    conn: Connection,
}

impl SqliteAdmin {
    pub fn open(data_dir: &Path) -> Result<SqliteAdmin, String> {
        Ok(SqliteAdmin { conn: open_admin(data_dir)? })
    }
}

/// Every conversation that is not closed, oldest in the queue first.
fn open_conversations(conn: &Connection) -> rusqlite::Result<Vec<ConvRow>> {
    conn.prepare_cached(&format!(
        "SELECT {CONV_COLS} FROM conversations WHERE status != 'closed' ORDER BY queued_at, created_at"
    ))?
    .query_map([], conv_from_row)?
    .collect()
}

fn all_agents(conn: &Connection) -> rusqlite::Result<Vec<AgentRow>> {
    conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"))?
        .query_map([], agent_from_row)?
        .collect()
}

impl Admin for SqliteAdmin {
    fn add_agent(&self, name: &str, password: &str, max_active: Option<u32>, bot: bool) -> Result<AgentRow, String> {
        let conn = &self.conn;
        let name = name.trim();
        if name.is_empty() {
            return Err("agent name: must not be empty".into());
        }
        if let Some(why) = crate::protocol::name_problem(name) {
            return Err(format!("agent name: {why}"));
        }
        if password.is_empty() {
            return Err("password: must not be empty".into());
        }
        if max_active == Some(0) {
            return Err("--max-active: must be greater than 0".into());
        }
        // Bots serve many conversations at once unless told otherwise.
        let max_active = if bot { max_active.or(Some(BOT_MAX_ACTIVE)) } else { max_active };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unfolded(conversation: &str, seq: u64, table: usize) -> Unfolded {
        let msg = Message {
            id: format!("m_{conversation}_{seq}"),
            conversation: conversation.to_string(),
            seq,
            ts: 0,
            from: User { id: "v_1".into(), role: Role::Customer, name: "Ann".into() },
            kind: MsgKind::Text,
            body: String::new(),
            client_id: None,
            event: None,
        };
        Unfolded { msg: Arc::new(msg), table, rowid: seq as i64 }
    }

    /// What a commit of `plan` does to the tails: the planned conversations'
    /// unfolded messages leave. Checks that a table emptied by the plan holds
    /// nothing unfolded any more.
    fn fold(log: &Log, tails: &mut Tails, plan: &FoldPlan) {
        for c in &plan.convs {
            tails.by_conv.remove(c);
        }
        let left_in = |table: usize| tails.by_conv.values().flatten().filter(|u| u.table == table).count();
        if plan.clear_other {
            assert_eq!(left_in(log.cur ^ 1), 0, "a log table emptied while it held unfolded messages");
        }
        if plan.all {
            assert!(tails.by_conv.is_empty(), "a fold of everything left messages");
        }
    }

    /// Many commits of appends to 40 conversations, in bursts, with the log moving
    /// whenever it may (`fold_after` zero), idle folds now and then, and one
    /// commit past the row bound: no table is emptied while anything in it is
    /// unfolded, every conversation's unfolded messages stay in seq order,
    /// and once appends stop everything of the table the log left is folded.
    #[test]
    fn a_log_table_is_emptied_only_once_all_of_it_is_folded() {
        let mut log = Log::new(std::time::Duration::ZERO);
        let mut tails = Tails::default();
        let mut seqs: HashMap<String, u64> = HashMap::new();
        let mut rng = 12345u64;
        let mut moves = 0;
        let mut partial_folds = 0;
        for step in 0..3000 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let all = step % 97 == 96;
            // Bursts, then a few quiet commits that fold what the burst left.
            let n_new = match step % 5 {
                _ if all => 0,
                0 => 150 + (rng >> 33) as usize % 100,
                _ => (rng >> 33) as usize % 4,
            };
            let plan = log.plan(&tails, all, n_new);
            if !all && !plan.convs.is_empty() && plan.convs.len() < log.pending.len() {
                partial_folds += 1;
            }
            fold(&log, &mut tails, &plan);
            for i in 0..n_new {
                let c = format!("c{}", (rng >> (i % 24)) % 40);
                let seq = seqs.entry(c.clone()).or_insert(0);
                *seq += 1;
                tails.by_conv.entry(c.clone()).or_default().push(unfolded(&c, *seq, log.cur));
            }
            let before = log.cur;
            // Once, a commit as if the log had passed its row bound.
            let appended = if step == 1500 { LOG_MAX_ROWS } else { n_new };
            log.committed(&plan, appended, &tails);
            moves += usize::from(log.cur != before);
            for t in tails.by_conv.values() {
                assert!(t.windows(2).all(|w| w[0].msg.seq + 1 == w[1].msg.seq), "a tail out of order");
            }
        }
        assert!(moves > 100, "the log moved {moves} times");
        assert!(partial_folds > 100, "{partial_folds} commits folded only part of what was pending");
        // No more appends: the table the log left gets folded and emptied.
        for _ in 0..1000 {
            let plan = log.plan(&tails, false, 0);
            fold(&log, &mut tails, &plan);
            log.committed(&plan, 0, &tails);
        }
        assert!(!log.other_dirty && log.pending.is_empty());
        assert!(tails.by_conv.values().flatten().all(|u| u.table == log.cur));
    }
}
