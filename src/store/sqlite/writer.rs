//! The writer thread: it gathers writes into groups (one transaction and one
//! fsync each), applies them in submission order, folds the message log a
//! little in every commit, and hands the completions back in order; and the
//! checkpoint thread that keeps the WAL short.

use super::*;
use crate::error::StoreError;
use crate::protocol::Message;
use crate::store::*;
use rusqlite::{params, Connection, TransactionBehavior};
use std::fmt::Write as _;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Most writes committed in one transaction.
pub(super) const MAX_BATCH: usize = 1024;

/// How long a group waits for more writes once writes come faster than the
/// store commits them.
pub(super) const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

/// How often the writer tries again for a lock it waits for.
pub(super) const WRITER_BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(200);

/// How often the checkpoint thread copies committed WAL pages into the
/// database, off the writer's path: a commit never waits for a checkpoint.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL pages after which the writer checkpoints by itself: only when the
/// checkpoint thread cannot keep up (SQLite's default is 1000).
pub(super) const CHECKPOINT_PAGES: i64 = 100_000;

/// WAL pages after which the checkpoint thread starts the WAL over.
pub(super) const RESTART_PAGES: i64 = 8_000;

/// What the WAL file is truncated to after it restarts, bytes.
pub(super) const WAL_KEEP_BYTES: i64 = 64 << 20;

/// The writer's wait for a lock held by the checkpoint thread (or the CLI):
/// a retry every [`WRITER_BUSY_RETRY`], up to [`BUSY_TIMEOUT_MS`] in all.
/// SQLite's own busy timeout backs off to sleeps of up to 100 ms, so a
/// restart checkpoint of 11 ms held every message for 18 ms.
pub(super) fn writer_busy(tries: i32) -> bool {
    std::thread::sleep(WRITER_BUSY_RETRY);
    WRITER_BUSY_RETRY * (tries as u32 + 1) < std::time::Duration::from_millis(BUSY_TIMEOUT_MS)
}

/// Copies committed WAL pages into the database every [`CHECKPOINT_EVERY`]
/// beside the writer and readers (a passive checkpoint); once the WAL is
/// long, a restart checkpoint holds the writer for the last few pages so the
/// WAL starts over from its beginning.
pub(super) fn checkpoint_loop(conn: Connection, writer_gone: std_mpsc::Receiver<()>) {
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

pub(super) fn writer_loop(
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
        let started = std::time::Instant::now();
        let completions = writer.commit_group(first, &rx, gather);
        last_group = completions.len();
        let c = crate::http::metrics::counters();
        c.store_commits.inc();
        c.store_writes.inc_by(last_group as u64);
        c.observe_commit(started.elapsed(), last_group);
        if !completions.is_empty() && done.send(completions).is_err() {
            break; // the server is gone
        }
    }
}

/// The writer thread's state, for one group.
pub(super) struct Writer<'a> {
    pub(super) conn: &'a mut Connection,
    pub(super) seqs: &'a mut SeqCache,
    pub(super) log: &'a mut Log,
    pub(super) tails: &'a SharedTails,
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
    pub(super) fn commit_group(
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
    pub(super) fn run(
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
pub(super) struct Committed {
    /// Each op's result.
    pub(super) results: Vec<Result<WriteOutcome, StoreError>>,
    /// The messages it logged.
    pub(super) appended: Vec<Unfolded>,
    pub(super) plan: FoldPlan,
    /// How many unfolded messages of each planned conversation it folded.
    pub(super) folded: Vec<(String, usize)>,
}

/// Messages this group appended so far (not in the tails before it commits).
pub(super) fn group_messages<'a>(
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
