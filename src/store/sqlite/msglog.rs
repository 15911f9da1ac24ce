//! The message log: new messages go to an append-only table first (two,
//! used in turn), so a commit writes a few packed pages; they are folded into
//! `messages` a conversation at a time later, and meanwhile kept in memory
//! ([`Tails`]) where readers find them.

use super::*;
use crate::protocol::Message;
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use std::collections::HashMap;
use std::sync::Arc;

/// Log rows after which new messages go to the other log table (once that
/// one is folded and emptied).
pub(super) const EPOCH_ROWS: usize = 32_768;

/// Messages a commit folds at least, while some conversations are left to
/// fold, besides [`FOLD_PER_APPEND`] per message it appends: folding keeps
/// pace with the log, spread over many commits so that none takes long.
pub(super) const FOLD_MIN: usize = 32;

pub(super) const FOLD_PER_APPEND: usize = 2;

/// Room for unfolded messages a new tail starts with.
pub(super) const TAIL_CAPACITY: usize = 16;

/// Log rows after which the log moves even if the other table is not all
/// folded yet: the rest is folded at once (only if folding cannot keep up).
pub(super) const LOG_MAX_ROWS: usize = 4 * EPOCH_ROWS;

/// The message log's two tables, used in turn.
pub(super) const LOG_TABLES: [&str; 2] = ["message_log_0", "message_log_1"];

/// Messages in the log not yet folded into `messages`: by conversation, in
/// seq order, each list starting right after the conversation's last folded
/// message. Only the writer changes it, after its commits; readers merge it
/// into what they read from `messages`.
#[derive(Default)]
pub(super) struct Tails {
    pub(super) by_conv: HashMap<String, Vec<Unfolded>>,
    /// Folds so far. A reader that sees the same count before and after its
    /// query found every committed message in `messages` or here.
    pub(super) folds: u64,
}

pub(super) type SharedTails = Arc<Mutex<Tails>>;

/// A message in the log, and where: the fold copies its row by rowid.
pub(super) struct Unfolded {
    /// Shared with the write's outcome: logging a message copies nothing.
    pub(super) msg: Arc<Message>,
    pub(super) table: usize,
    pub(super) rowid: i64,
}

/// Folds whatever the message log holds into `messages`: what a server that
/// stopped (or crashed) had not folded yet. Only the store's opening, under
/// the data dir's lock, calls it: a running server's writer owns the log.
pub(super) fn fold_log(conn: &mut Connection) -> Result<(), String> {
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
pub(super) struct Log {
    /// Index in [`LOG_TABLES`] of the table taking new messages.
    pub(super) cur: usize,
    /// Rows appended to it.
    pub(super) rows: usize,
    pub(super) started: std::time::Instant,
    /// Age of the current table's first row after which the log moves.
    pub(super) fold_after: std::time::Duration,
    /// The other table still holds rows.
    pub(super) other_dirty: bool,
    /// Conversations with messages in the other table, not folded yet.
    pub(super) pending: Vec<String>,
}

/// What one commit folds.
pub(super) struct FoldPlan {
    /// Conversations whose unfolded messages go to `messages`.
    pub(super) convs: Vec<String>,
    /// Every conversation is folded and both tables emptied.
    pub(super) all: bool,
    /// The other table is emptied.
    pub(super) clear_other: bool,
}

impl Log {
    pub(super) fn new(fold_after: std::time::Duration) -> Log {
        let started = std::time::Instant::now();
        Log { cur: 0, rows: 0, started, fold_after, other_dirty: false, pending: Vec::new() }
    }

    pub(super) fn move_due(&self) -> bool {
        self.rows >= EPOCH_ROWS || (self.rows > 0 && self.started.elapsed() >= self.fold_after)
    }

    /// Nothing is logged that is not folded.
    pub(super) fn is_empty(&self, tails: &Tails) -> bool {
        self.rows == 0 && !self.other_dirty && tails.by_conv.is_empty()
    }

    /// What a commit that appended `appended` messages folds.
    pub(super) fn plan(&self, tails: &Tails, all: bool, appended: usize) -> FoldPlan {
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
    pub(super) fn committed(&mut self, plan: &FoldPlan, appended: usize, tails: &Tails) {
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

/// The writer's statements on one log table.
pub(super) struct LogSql {
    /// Logs a message (runs for every message).
    pub(super) insert: String,
    /// Copies the rows whose rowids are in the JSON array `?1` into
    /// `messages`. A message is folded once: a clash of seqs fails the group
    /// rather than dropping one of the two.
    pub(super) fold: String,
    /// Empties the table.
    pub(super) clear: String,
}

/// [`LogSql`] of each of [`LOG_TABLES`], built once.
pub(super) static LOG_SQL: std::sync::LazyLock<[LogSql; 2]> = std::sync::LazyLock::new(|| {
    LOG_TABLES.map(|t| LogSql {
        insert: format!("INSERT INTO {t} ({MSG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        fold: format!(
            "INSERT INTO messages ({MSG_COLS}) SELECT {MSG_COLS} FROM {t} WHERE rowid IN (SELECT value FROM json_each(?1))"
        ),
        clear: format!("DELETE FROM {t}"),
    })
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MsgKind, Role};

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
