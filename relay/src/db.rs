//! The relay's SQLite database (WAL) in `<data-dir>/relay.sqlite3`, and what is kept in it:
//! the account directory ([`Directory`]) and the store-and-forward mail cache
//! ([`MailCache`]).
//!
//! Connections: the account directory and the counters use one connection behind a mutex
//! (short primary-key statements); names found to be accounts are remembered in memory (the
//! relay never deletes an account), so checking a deposit's recipient needs no query. The mail cache has a thread of its own, the *cache
//! writer*, which owns a second connection; sessions hand it operations over a channel and
//! await the answer (no blocking-pool task per operation). Each turn the writer takes every
//! operation that is waiting (at most [`MAX_BATCH`]) and opens **one** transaction: it
//! first answers the reads (fetch, waiting list, receipts, deposit check), which therefore
//! see only committed state, then runs all the writes (deposit, release, hold, withdrawal,
//! receipt acknowledgement, expiry), and then each write that arrived meanwhile, until none
//! is waiting, a read comes (it opens the next turn, and what came after it stays behind
//! it), the turn holds [`MAX_BATCH`] writes, or its transaction is lost (a turn of reads
//! only takes no writes); it commits, and only then answers the writes
//! (group commit). Under load a write would otherwise wait for the turn under way and then
//! for one of its own; this way it mostly joins the one under way. A
//! write that fails leaves nothing of its own behind and the others go on: most change the
//! database only in their last statement (undone by SQLite's statement rollback), and the
//! rare ones of several statements (held-copy refusal, expiry) run inside a savepoint. A
//! release, one of every envelope's two writes, first reads what it will delete (where it
//! fails on bad stored data, having changed nothing) and then deletes and records its
//! receipts without a savepoint, whose copying of every page it touches to the statement
//! journal took about a seventh of the SQL's time; should one of those statements fail (a
//! broken database, a full disk), the whole turn is rolled back and each of its writes
//! answered with the error. Writes run in arrival order, so each sees the ones before it (a
//! quota check counts the deposits just before it). If the commit fails, every write of the
//! turn is answered with the error and none of them happened. Statements are prepared once
//! per connection (`prepare_cached`). A deposit's quota check reads the writer's running
//! total of the recipient's waiting bytes (`Usage`), not every waiting envelope's row.
//!
//! Durability: `journal_mode=WAL` with `synchronous=NORMAL`. A transaction is committed once
//! its pages are written to the WAL file (in the OS's page cache); SQLite syncs the WAL to
//! disk at checkpoints, not at every commit. A committed transaction therefore survives the
//! relay process dying in any way (SIGKILL, panic, OOM killer): the kernel still writes it
//! out. Only a power loss or kernel crash can lose the last transactions not yet on disk:
//! those since the last checkpoint that the kernel's own writeback has not written either
//! (the database stays consistent either way). The relay acknowledges a deposit after the
//! commit of the transaction that contains it, so an acknowledged envelope survives any
//! crash of the relay itself; a release deletes the envelope and records its receipt in the
//! same transaction. `FULL` would add an fsync per commit (per batch, with group commit) to
//! protect against power loss too; a relay behind an unreliable power supply can be given it
//! later as an option. Every connection goes through the `peermail-wal-vfs` VFS (SQLite's
//! `unix` one, which writes a commit's WAL frames in one `pwrite` instead of two per frame,
//! before the commit returns): the durability above is unchanged.
//!
//! Checkpoints: a thread of their own, the *checkpointer*, with a third connection, copies
//! the WAL into the database file every [`CHECKPOINT_INTERVAL`]: `PASSIVE`
//! checkpoints (each with an fsync of the WAL before and of the database file after), which
//! the cache writer does not wait for. It then asks the cache writer to checkpoint the few
//! frames committed meanwhile, which the writer does between two turns (a millisecond or a
//! few under load): with no write going on, that copies the whole WAL, so the next write
//! starts it over from its beginning instead of growing it by every page written. (Before the checkpointer, a commit that crossed
//! SQLite's automatic threshold did the whole checkpoint itself, fsyncs included, and every
//! cache operation waited meanwhile: a stall every few thousand envelopes under load.)
//! Committed transactions also reach the disk sooner: within about [`CHECKPOINT_INTERVAL`].
//! The WAL file is cut back to [`WAL_SIZE_LIMIT`] when it starts over. The connections still
//! checkpoint on their own past [`WAL_BACKSTOP_PAGES`], should the checkpointer fall behind.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peermail_core::address::Address;
use peermail_core::identity::PublicKey;
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::{MailLocation, ReceiptOutcome, WaitingMail};
use peermail_signaling::cache::{CacheFuture, CachedMail, Deposit, NewHold, NewMail, Receipt};
use peermail_signaling::{Directory, MailCache, StorageNode};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::{migrations, Error};
use peermail_wal_vfs as wal_vfs;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "relay.sqlite3";

/// How often the checkpointer copies the WAL into the database file (see the module
/// documentation). A page is copied once per checkpoint however often the WAL holds it, and
/// deposits and releases rewrite the same few pages, so a checkpoint's work grows far slower
/// than the interval.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Pages of WAL (4 KiB each, so about 400 MiB) past which a committing connection
/// checkpoints by itself: only if the checkpointer falls this far behind.
pub const WAL_BACKSTOP_PAGES: i64 = 100_000;

/// Bytes the WAL file is cut back to when it starts over, if it grew larger (a burst of
/// writes, or the checkpointer held up): steady load at the cache benchmark's rate fills
/// 40–60 MiB between two checkpoints, and a file kept at its size is cheaper to write
/// into again than one that grows anew.
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Most names [`Db`] remembers as existing accounts before it starts again.
const KNOWN_ACCOUNTS: usize = 100_000;

/// Most cache operations the writer takes off its queue at the start of a turn, and most
/// writes one turn runs (those it takes at the start and those that join it while it runs).
pub const MAX_BATCH: usize = 256;

/// The database: a connection for the account directory, and the cache writer thread with
/// its own connection (see the module documentation).
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
    /// Names known to be accounts. The relay never deletes an account, so an account seen
    /// once is one for good; the recipient check of every deposit is then answered without
    /// a read transaction. Forgotten at [`KNOWN_ACCOUNTS`] names.
    known_accounts: Mutex<HashSet<String>>,
    /// Operations for the cache writer; `None` only while dropping.
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    /// Dropped to stop the checkpointer.
    stop_checkpoints: Option<mpsc::Sender<()>>,
    /// Shared by the checkpointer and the cache writer.
    wal_restart: Arc<WalRestart>,
    checkpointer: Option<JoinHandle<()>>,
}

fn open_connection(path: &Path) -> Result<Connection, Error> {
    wal_vfs::register().map_err(Error::Vfs)?;
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), wal_vfs::NAME)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // See the module documentation: survives any crash of the process.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if missing) the data directory and the database, migrates it, and
    /// starts the cache writer.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::DataDir {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = open_connection(&path)?;
        migrations::migrate(&mut conn)?;
        let cache_conn = open_connection(&path)?;
        let (ops, queue) = mpsc::channel();
        let wal_restart = Arc::new(WalRestart::default());
        let writer = CacheWriter {
            conn: cache_conn,
            wal_restart: wal_restart.clone(),
            usage: Usage::default(),
        };
        let writer = std::thread::Builder::new()
            .name("cache-writer".into())
            .spawn(move || writer.run(&queue))?;
        let checkpoint_conn = open_connection(&path)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let wal = wal_restart.clone();
        let checkpointer = std::thread::Builder::new()
            .name("wal-checkpointer".into())
            .spawn(move || checkpoint_until_stopped(&checkpoint_conn, &stop, &wal))?;
        Ok(Db {
            conn: Mutex::new(conn),
            known_accounts: Mutex::new(HashSet::new()),
            ops: Some(ops),
            writer: Some(writer),
            stop_checkpoints: Some(stop_checkpoints),
            wal_restart,
            checkpointer: Some(checkpointer),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory's connection (also used by the file store, `files_db.rs`).
    pub(crate) fn directory_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn()
    }

    /// Number of accounts.
    pub fn account_count(&self) -> Result<u64, Error> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?)
    }

    /// Number of envelopes in the mail cache.
    pub fn cached_count(&self) -> Result<u64, Error> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM cached_mail", [], |r| r.get(0))?)
    }

    /// How many times the cache writer's checkpoint copied the whole WAL (after which the
    /// next write starts it over; see the module documentation).
    pub fn wal_restarts(&self) -> u64 {
        self.wal_restart.done.load(Ordering::Relaxed)
    }

    /// Hands an operation to the cache writer; the answer comes on the returned receiver.
    fn submit<T>(
        &self,
        op: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<oneshot::Receiver<Answer<T>>, CacheError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(op(reply))
            .map_err(|_| writer_gone())?;
        Ok(answer)
    }

    /// An operation, awaited.
    fn call<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> CacheFuture<T> {
        let answer = self.submit(op);
        Box::pin(async move { answer?.await.map_err(|_| writer_gone())? })
    }

    /// An operation, waited for by blocking this thread (not for async contexts).
    fn call_blocking<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Answer<T> {
        self.submit(op)?
            .blocking_recv()
            .map_err(|_| writer_gone())?
    }
}

impl Drop for Db {
    /// Stops the cache writer after it has answered what was queued, and the checkpointer,
    /// and waits for both.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.stop_checkpoints.take();
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.join();
        }
    }
}

/// The checkpointer's loop: a checkpoint ([`checkpoint`]) every [`CHECKPOINT_INTERVAL`]
/// until `stop` is dropped. A checkpoint that fails is logged and tried again at the next
/// interval.
fn checkpoint_until_stopped(conn: &Connection, stop: &mpsc::Receiver<()>, wal: &WalRestart) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        match checkpoint(conn, wal) {
            Ok(frames) => tracing::trace!(frames, "WAL checkpointed"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; trying again"),
        }
    }
}

/// Frames committed during a `PASSIVE` checkpoint below which the checkpointer leaves the
/// rest to the cache writer (see [`checkpoint`]).
const CATCH_UP_REMAINDER: i64 = 1_000;

/// `PASSIVE` checkpoints at most this many times in a row, each for what was committed
/// during the one before, before the writer is asked for the rest anyway.
const PASSIVE_PASSES: usize = 4;

/// Between the checkpointer and the cache writer: whether the writer should checkpoint
/// before its next turn, and how many times its checkpoint copied the whole WAL.
#[derive(Debug, Default)]
struct WalRestart {
    wanted: AtomicBool,
    done: AtomicU64,
}

/// Copies the WAL into the database file, and has the WAL start over from its beginning.
/// Returns how many frames the WAL held.
///
/// `PASSIVE` checkpoints do the work (an fsync of the WAL, the copy, an fsync of the
/// database file) while the cache writer goes on committing, each of them for what was
/// committed during the one before, until that is little. That alone would not let the WAL
/// start over under steady load: SQLite restarts the WAL only when a write transaction
/// begins while every frame is already copied, and the writer has always committed more by
/// the time a copy ends, so the WAL file grew by every page written until
/// [`WAL_BACKSTOP_PAGES`] (about 400 MiB in the cache benchmark's first seconds). So the
/// cache writer is then asked for a checkpoint, which it makes between two turns
/// ([`CacheWriter::run`]): with no write of its own going on, it copies the few frames left,
/// and its next transaction writes from the WAL's start. It is `PASSIVE` too: it waits for
/// no other connection, and blocks none (a `RESTART` would hold the write lock while it
/// waited for readers, stalling the account directory's writes, attachment chunks
/// included); should another connection's commit or a reader get in the way, the WAL
/// starts over at a later checkpoint. Were the checkpointer to make that last checkpoint
/// instead, a busy writer would always have committed more meanwhile.
fn checkpoint(conn: &Connection, wal: &WalRestart) -> rusqlite::Result<i64> {
    let passive = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    let mut frames = passive()?;
    if frames == 0 {
        return Ok(0);
    }
    for _ in 1..PASSIVE_PASSES {
        let before = frames;
        frames = passive()?;
        let committed_meanwhile = frames - before;
        if committed_meanwhile == 0 {
            // Every frame is copied and none came since: the next write starts the WAL over
            // by itself (the case of an idle relay).
            return Ok(frames);
        }
        if committed_meanwhile < CATCH_UP_REMAINDER {
            break;
        }
    }
    wal.wanted.store(true, Ordering::Release);
    Ok(frames)
}

type CacheError = peermail_signaling::Error;
type Answer<T> = Result<T, CacheError>;
type Reply<T> = oneshot::Sender<Answer<T>>;

fn writer_gone() -> CacheError {
    CacheError::Cache("the cache writer stopped".into())
}

/// One request to the cache writer.
#[derive(Debug)]
enum Op {
    Deposit {
        mail: NewMail,
        quota_bytes: u64,
        reply: Reply<Deposit>,
    },
    Waiting {
        recipient: Address,
        reply: Reply<Vec<WaitingMail>>,
    },
    Fetch {
        recipient: Address,
        id: MessageId,
        reply: Reply<Option<CachedMail>>,
    },
    Release {
        recipient: Address,
        id: MessageId,
        outcome: ReceiptOutcome,
        now: Millis,
        reply: Reply<Vec<Address>>,
    },
    RefuseHeld {
        recipient: Address,
        id: MessageId,
        holder: Address,
        now: Millis,
        reply: Reply<Vec<Address>>,
    },
    Hold {
        hold: NewHold,
        reply: Reply<bool>,
    },
    Receipts {
        sender: Address,
        reply: Reply<Vec<Receipt>>,
    },
    HasDeposit {
        sender: Address,
        recipient: Address,
        id: MessageId,
        reply: Reply<bool>,
    },
    AckReceipt {
        sender: Address,
        recipient: Address,
        id: MessageId,
        reply: Reply<()>,
    },
    Expire {
        now: Millis,
        reply: Reply<Vec<Receipt>>,
    },
    Withdraw {
        sender: Address,
        recipient: Address,
        id: MessageId,
        reply: Reply<bool>,
    },
}

/// Sends a write's answer once its transaction's fate is known: the commit's error if it
/// failed, else the operation's own result.
type Pending = Box<dyn FnOnce(Result<(), CacheError>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: Answer<T>) -> Pending {
    Box::new(move |committed| {
        let _ = reply.send(committed.and(result));
    })
}

/// The thread that owns the cache's connection.
struct CacheWriter {
    conn: Connection,
    wal_restart: Arc<WalRestart>,
    usage: Usage,
}

/// Bytes of the relay's copies waiting for each recipient (by address text), for the quota
/// check of a deposit, which summed the recipient's rows before: a lookup per envelope
/// waiting, so a deposit cost more the more mail waited. A recipient's total is read from
/// the database at its first deposit, then kept by deposits and releases; the cache writer
/// is the only one to change `cached_mail`, so it stays exact. Forgotten whole when a turn
/// is rolled back (its changes are undone) and when envelopes expire; a recipient's entry
/// is dropped once nothing waits for it.
#[derive(Debug, Default)]
struct Usage(HashMap<String, u64>);

impl Usage {
    fn get(&self, recipient: &str) -> Option<u64> {
        self.0.get(recipient).copied()
    }

    /// `recipient` has `used` bytes waiting (nothing is kept for none).
    fn set(&mut self, recipient: String, used: u64) {
        if used > 0 {
            self.0.insert(recipient, used);
        }
    }

    fn forget_all(&mut self) {
        self.0.clear();
    }

    fn released(&mut self, recipient: &str, size: u64) {
        if let Some(used) = self.0.get_mut(recipient) {
            *used = used.saturating_sub(size);
            if *used == 0 {
                self.0.remove(recipient);
            }
        }
    }
}

impl CacheWriter {
    fn run(mut self, queue: &mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // A read that came while the last turn was writing: it opens this one.
        let mut next = None;
        while let Some(first) = next.take().or_else(|| queue.recv().ok()) {
            if self.wal_restart.wanted.swap(false, Ordering::Acquire) {
                self.catch_up_wal();
            }
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            next = self.turn(&mut batch, queue);
        }
    }

    /// A checkpoint asked for by the checkpointer (see [`checkpoint`]): copies the frames
    /// its last pass left, so that the next transaction writes from the WAL's start.
    fn catch_up_wal(&self) {
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
        match done {
            Ok((frames, copied)) if copied == frames => {
                self.wal_restart.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok((frames, copied)) => {
                tracing::debug!(frames, copied, "WAL not copied whole; a reader holds it")
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint of the cache writer failed"),
        }
    }

    /// Answers the reads of `batch`, then runs its writes, and the writes that arrive on
    /// `queue` meanwhile; all in one transaction. Returns the read that stopped the taking
    /// of arrivals, if one did: it waits for the commit and opens the next turn.
    fn turn(&mut self, batch: &mut Vec<Op>, queue: &mpsc::Receiver<Op>) -> Option<Op> {
        let writing = batch.iter().any(Op::is_write);
        // One transaction for the whole turn: one lock, one commit. The reads run first, so
        // they see only committed state and can be answered at once.
        let begin = if writing {
            Some("BEGIN IMMEDIATE")
        } else if batch.len() > 1 {
            Some("BEGIN")
        } else {
            None
        };
        let begun = match begin {
            Some(sql) => run(&self.conn, sql).map_err(cache_error),
            None => Ok(()),
        };
        let mut writes = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            match op {
                Op::Waiting { recipient, reply } => {
                    let _ = reply.send(waiting(&self.conn, &recipient));
                }
                Op::Fetch {
                    recipient,
                    id,
                    reply,
                } => {
                    let _ = reply.send(fetch(&self.conn, &recipient, &id));
                }
                Op::Receipts { sender, reply } => {
                    let _ = reply.send(receipts(&self.conn, &sender));
                }
                Op::HasDeposit {
                    sender,
                    recipient,
                    id,
                    reply,
                } => {
                    let _ = reply.send(has_deposit(&self.conn, &sender, &recipient, &id));
                }
                write => match &begun {
                    Ok(()) => writes.push(write),
                    Err(e) => fail(write, e.clone()),
                },
            }
        }
        if begun.is_err() || begin.is_none() {
            return None;
        }
        let mut answers: Vec<Pending> = Vec::with_capacity(writes.len());
        let mut broken = None;
        let mut next_turn = None;
        let mut writes = writes.into_iter();
        loop {
            let op = match writes.next() {
                Some(op) => op,
                // A write that arrived while this turn ran joins it, rather than waiting
                // for its commit and then a turn of its own (about two turns per request
                // under load, each mostly waiting for the one before). Taken in arrival
                // order until none is waiting, a read comes (it needs committed state, and
                // what came after it stays behind it), the turn is full, or its
                // transaction is lost; never in a read-only turn, whose transaction may not
                // become a write.
                None if writing && broken.is_none() && answers.len() < MAX_BATCH => {
                    match queue.try_recv() {
                        Ok(op) if op.is_write() => op,
                        Ok(read) => {
                            next_turn = Some(read);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                None => break,
            };
            if let Some(e) = &broken {
                fail(op, CacheError::clone(e));
                continue;
            }
            match self.write(op) {
                Ok(answer) => answers.push(answer),
                Err((answer, e)) => {
                    answers.push(answer);
                    broken = Some(e);
                }
            }
        }
        let committed = match broken {
            Some(e) => {
                if !self.conn.is_autocommit() {
                    let _ = run(&self.conn, "ROLLBACK");
                }
                Err(e)
            }
            None => run(&self.conn, "COMMIT").map_err(|e| {
                if !self.conn.is_autocommit() {
                    let _ = run(&self.conn, "ROLLBACK");
                }
                cache_error(e)
            }),
        };
        if committed.is_err() {
            self.usage.forget_all();
        }
        for answer in answers {
            answer(committed.clone());
        }
        next_turn
    }

    /// Runs one write in the turn's transaction. A failing write leaves no change of its
    /// own behind: a single-statement write (or one whose only change is its last
    /// statement) is undone by SQLite's statement rollback; the others run inside
    /// `SAVEPOINT op`. `Err` means the whole transaction is lost (a savepoint statement
    /// failed, or SQLite rolled the transaction back).
    fn write(&mut self, op: Op) -> Result<Pending, (Pending, CacheError)> {
        let (conn, usage) = (&self.conn, &mut self.usage);
        match op {
            Op::Deposit {
                mail,
                quota_bytes,
                reply,
            } => alone(conn, reply, || deposit(conn, usage, &mail, quota_bytes)),
            Op::Release {
                recipient,
                id,
                outcome,
                now,
                reply,
            } => read_then_write(
                conn,
                reply,
                || listed(conn, &recipient, &id),
                |found| release(conn, usage, found, &id, outcome, now),
            ),
            Op::RefuseHeld {
                recipient,
                id,
                holder,
                now,
                reply,
            } => in_savepoint(conn, reply, || {
                refuse_held(conn, &recipient, &id, &holder, now)
            }),
            Op::AckReceipt {
                sender,
                recipient,
                id,
                reply,
            } => alone(conn, reply, || ack_receipt(conn, &sender, &recipient, &id)),
            Op::Hold { hold, reply } => alone(conn, reply, || hold_copy(conn, &hold)),
            Op::Withdraw {
                sender,
                recipient,
                id,
                reply,
            } => alone(conn, reply, || {
                withdraw(conn, usage, &sender, &recipient, &id)
            }),
            Op::Expire { now, reply } => {
                usage.forget_all();
                in_savepoint(conn, reply, || expire(conn, now))
            }
            Op::Waiting { .. } | Op::Fetch { .. } | Op::Receipts { .. } | Op::HasDeposit { .. } => {
                unreachable!("reads are answered before the writes")
            }
        }
    }
}

impl Op {
    fn is_write(&self) -> bool {
        match self {
            Op::Deposit { .. }
            | Op::Release { .. }
            | Op::RefuseHeld { .. }
            | Op::Hold { .. }
            | Op::AckReceipt { .. }
            | Op::Withdraw { .. }
            | Op::Expire { .. } => true,
            Op::Waiting { .. } | Op::Fetch { .. } | Op::Receipts { .. } | Op::HasDeposit { .. } => {
                false
            }
        }
    }
}

/// A write whose only change is its last statement.
fn alone<T: Send + 'static>(
    conn: &Connection,
    reply: Reply<T>,
    f: impl FnOnce() -> Answer<T>,
) -> Result<Pending, (Pending, CacheError)> {
    let result = f();
    if conn.is_autocommit() {
        return Err((pending(reply, result), rolled_back()));
    }
    Ok(pending(reply, result))
}

/// A write that first reads what it needs (`read`, which changes nothing, so its failure is
/// its own) and then changes the database in several statements (`write`) without a
/// savepoint: a savepoint would copy every page it touches to the statement journal, for a
/// failure that only a broken database or a full disk causes. Should `write` fail, its
/// earlier statements cannot be undone alone, so the whole transaction is lost (`Err`: the
/// turn is rolled back and each of its writes answered with the error).
fn read_then_write<R, T: Send + 'static>(
    conn: &Connection,
    reply: Reply<T>,
    read: impl FnOnce() -> Answer<R>,
    write: impl FnOnce(R) -> Answer<T>,
) -> Result<Pending, (Pending, CacheError)> {
    let found = match read() {
        Ok(found) => found,
        Err(e) => return alone(conn, reply, || Err(e)),
    };
    match write(found) {
        Ok(answer) if !conn.is_autocommit() => Ok(pending(reply, Ok(answer))),
        Ok(answer) => Err((pending(reply, Ok(answer)), rolled_back())),
        Err(e) => Err((pending(reply, Err(e.clone())), e)),
    }
}

/// `f` inside `SAVEPOINT op`: released if it succeeded, rolled back to if it failed.
fn in_savepoint<T: Send + 'static>(
    conn: &Connection,
    reply: Reply<T>,
    f: impl FnOnce() -> Answer<T>,
) -> Result<Pending, (Pending, CacheError)> {
    if let Err(e) = run(conn, "SAVEPOINT op") {
        let e = cache_error(e);
        return Err((pending(reply, Err(e.clone())), e));
    }
    let result = f();
    let closed = if result.is_ok() {
        run(conn, "RELEASE op")
    } else {
        run(conn, "ROLLBACK TO op").and_then(|()| run(conn, "RELEASE op"))
    };
    match closed {
        Ok(()) if !conn.is_autocommit() => Ok(pending(reply, result)),
        Ok(()) => Err((pending(reply, result), rolled_back())),
        Err(e) => Err((pending(reply, result), cache_error(e))),
    }
}

fn rolled_back() -> CacheError {
    CacheError::Cache("SQLite rolled the transaction back".into())
}

/// Answers a write that was not run with `e`.
fn fail(op: Op, e: CacheError) {
    match op {
        Op::Deposit { reply, .. } => drop(reply.send(Err(e))),
        Op::Hold { reply, .. } => drop(reply.send(Err(e))),
        Op::HasDeposit { reply, .. } => drop(reply.send(Err(e))),
        Op::Waiting { reply, .. } => drop(reply.send(Err(e))),
        Op::Fetch { reply, .. } => drop(reply.send(Err(e))),
        Op::Release { reply, .. } => drop(reply.send(Err(e))),
        Op::RefuseHeld { reply, .. } => drop(reply.send(Err(e))),
        Op::Receipts { reply, .. } => drop(reply.send(Err(e))),
        Op::AckReceipt { reply, .. } => drop(reply.send(Err(e))),
        Op::Expire { reply, .. } => drop(reply.send(Err(e))),
        Op::Withdraw { reply, .. } => drop(reply.send(Err(e))),
    }
}

/// Runs a statement that returns no rows, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn cache_error(e: rusqlite::Error) -> peermail_signaling::Error {
    peermail_signaling::Error::Cache(e.to_string())
}

fn address(text: &str) -> Result<Address, peermail_signaling::Error> {
    text.parse()
        .map_err(|e| peermail_signaling::Error::Cache(format!("stored address {text:?}: {e}")))
}

fn message_id(text: &str) -> Result<MessageId, peermail_signaling::Error> {
    MessageId::parse(text)
        .ok_or_else(|| peermail_signaling::Error::Cache(format!("stored message id {text:?}")))
}

fn outcome_text(outcome: ReceiptOutcome) -> &'static str {
    match outcome {
        ReceiptOutcome::Delivered => "delivered",
        ReceiptOutcome::Expired => "expired",
        ReceiptOutcome::Refused => "refused",
    }
}

fn outcome(text: &str) -> Result<ReceiptOutcome, peermail_signaling::Error> {
    match text {
        "delivered" => Ok(ReceiptOutcome::Delivered),
        "expired" => Ok(ReceiptOutcome::Expired),
        "refused" => Ok(ReceiptOutcome::Refused),
        other => Err(peermail_signaling::Error::Cache(format!(
            "stored receipt outcome {other:?}"
        ))),
    }
}

fn millis(v: Millis) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// The operations, on the cache writer's connection. Writes run inside its transaction.

/// Leaves `mail` in the cache, unless that would take its recipient past `quota_bytes`.
/// The common case is one statement: the insert, which does nothing if the mail is already
/// here; only then (or with the quota full) is the stored sender read, which tells a
/// deposit made again (answered as stored) from another sender's mail with the same id.
fn deposit(
    conn: &Connection,
    usage: &mut Usage,
    mail: &NewMail,
    quota_bytes: u64,
) -> Answer<Deposit> {
    let (recipient, id) = (mail.recipient.to_text(), mail.message_id.as_str());
    let sender = mail.sender.to_text();
    let stored = || -> Answer<Option<Deposit>> {
        let stored_by: Option<String> = conn
            .prepare_cached(
                "SELECT sender FROM cached_mail WHERE recipient = ?1 AND message_id = ?2",
            )
            .and_then(|mut s| s.query_row(params![recipient, id], |r| r.get(0)).optional())
            .map_err(cache_error)?;
        Ok(stored_by.map(|stored_by| {
            if stored_by == sender {
                Deposit::AlreadyStored
            } else {
                Deposit::Conflict
            }
        }))
    };
    let used = match usage.get(&recipient) {
        Some(used) => used,
        None => {
            let used: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(size), 0) FROM cached_mail WHERE recipient = ?1",
                )
                .and_then(|mut s| s.query_row([&recipient], |r| r.get(0)))
                .map_err(cache_error)?;
            let used = used.max(0) as u64;
            // Kept even if this deposit is refused: a full cache is when senders retry.
            usage.set(recipient.clone(), used);
            used
        }
    };
    let size = mail.sealed.len() as u64;
    if used.saturating_add(size) > quota_bytes {
        return Ok(stored()?.unwrap_or(Deposit::QuotaExceeded));
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO cached_mail
                (recipient, message_id, sender, sealed, size, deposited_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (recipient, message_id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                recipient,
                id,
                sender,
                mail.sealed,
                size as i64,
                millis(mail.deposited_at),
                millis(mail.expires_at),
            ])
        })
        .map_err(cache_error)?;
    if inserted == 0 {
        return stored()?.ok_or_else(|| {
            CacheError::Cache("a deposit neither inserted nor found in the cache".into())
        });
    }
    usage.set(recipient, used + size);
    Ok(Deposit::Stored)
}

fn waiting(conn: &Connection, recipient: &Address) -> Answer<Vec<WaitingMail>> {
    // Cached envelopes (holder NULL) and copies held by co-recipients' nodes, oldest first.
    let mut stmt = conn
        .prepare_cached(
            "SELECT message_id, sender, size, deposited_at, NULL FROM cached_mail
             WHERE recipient = ?1
             UNION ALL
             SELECT message_id, sender, size, held_at, holder FROM held_mail
             WHERE recipient = ?1
             ORDER BY 4, 1",
        )
        .map_err(cache_error)?;
    let rows = stmt
        .query_map([recipient.to_text()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(cache_error)?;
    let mut items = Vec::new();
    for row in rows {
        let (id, sender, size, at, holder) = row.map_err(cache_error)?;
        items.push(WaitingMail {
            message_id: message_id(&id)?,
            from: address(&sender)?,
            size: size.max(0) as u64,
            deposited_at: at.max(0) as Millis,
            location: match holder {
                None => MailLocation::Relay,
                Some(h) => MailLocation::Peer {
                    holder: address(&h)?,
                },
            },
        });
    }
    Ok(items)
}

fn has_deposit(
    conn: &Connection,
    sender: &Address,
    recipient: &Address,
    id: &MessageId,
) -> Answer<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM cached_mail
                        WHERE recipient = ?2 AND message_id = ?3 AND sender = ?1)
             OR EXISTS (SELECT 1 FROM receipts
                        WHERE sender = ?1 AND recipient = ?2 AND message_id = ?3)",
    )
    .and_then(|mut s| {
        s.query_row(
            params![sender.to_text(), recipient.to_text(), id.as_str()],
            |r| r.get(0),
        )
    })
    .map_err(cache_error)
}

fn hold_copy(conn: &Connection, hold: &NewHold) -> Answer<bool> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO held_mail
         (recipient, message_id, holder, sender, size, held_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            hold.recipient.to_text(),
            hold.message_id.as_str(),
            hold.holder.to_text(),
            hold.sender.to_text(),
            i64::try_from(hold.size).unwrap_or(i64::MAX),
            millis(hold.held_at),
            millis(hold.expires_at)
        ])
    })
    .map_err(cache_error)?;
    let listed: String = conn
        .prepare_cached("SELECT holder FROM held_mail WHERE recipient = ?1 AND message_id = ?2")
        .and_then(|mut s| {
            s.query_row(
                params![hold.recipient.to_text(), hold.message_id.as_str()],
                |r| r.get(0),
            )
        })
        .map_err(cache_error)?;
    Ok(listed == hold.holder.to_text())
}

fn fetch(conn: &Connection, recipient: &Address, id: &MessageId) -> Answer<Option<CachedMail>> {
    let row: Option<(String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT sender, sealed FROM cached_mail WHERE recipient = ?1 AND message_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![recipient.to_text(), id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(cache_error)?;
    match row {
        None => Ok(None),
        Some((sender, sealed)) => Ok(Some(CachedMail {
            sender: address(&sender)?,
            sealed,
        })),
    }
}

/// What a release of `(recipient, id)` finds, read before anything changes.
struct Listed {
    recipient: String,
    /// Who deposited the relay's copy, and its size, if it has one.
    cached_by: Option<(Address, u64)>,
    /// Who sent and who holds a co-recipient's copy, if one is listed.
    held: Option<(Address, Address)>,
}

/// Looks up both places a mail for `recipient` may be listed, in one statement; parses what
/// it finds (so a stored address that cannot be read fails the release before it changes
/// anything).
fn listed(conn: &Connection, recipient: &Address, id: &MessageId) -> Answer<Listed> {
    let recipient = recipient.to_text();
    type Found = (Option<String>, Option<i64>, Option<String>, Option<String>);
    let (cached_by, size, held_sender, holder): Found = conn
        .prepare_cached(
            "SELECT c.sender, c.size, h.sender, h.holder
             FROM (SELECT ?1 AS recipient, ?2 AS message_id) AS k
             LEFT JOIN cached_mail AS c
                ON c.recipient = k.recipient AND c.message_id = k.message_id
             LEFT JOIN held_mail AS h
                ON h.recipient = k.recipient AND h.message_id = k.message_id",
        )
        .and_then(|mut s| {
            s.query_row(params![recipient, id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
        })
        .map_err(cache_error)?;
    let held = match (held_sender, holder) {
        (Some(sender), Some(holder)) => Some((address(&sender)?, address(&holder)?)),
        _ => None,
    };
    Ok(Listed {
        recipient,
        cached_by: match cached_by {
            Some(sender) => Some((address(&sender)?, size.unwrap_or(0).max(0) as u64)),
            None => None,
        },
        held,
    })
}

/// Deletes what [`listed`] found and records the receipts; returns who is told.
fn release(
    conn: &Connection,
    usage: &mut Usage,
    listed: Listed,
    id: &MessageId,
    outcome: ReceiptOutcome,
    now: Millis,
) -> Answer<Vec<Address>> {
    let Listed {
        recipient,
        cached_by,
        held,
    } = listed;
    if let Some((_, size)) = &cached_by {
        conn.prepare_cached("DELETE FROM cached_mail WHERE recipient = ?1 AND message_id = ?2")
            .and_then(|mut s| s.execute(params![recipient, id.as_str()]))
            .map_err(cache_error)?;
        usage.released(&recipient, *size);
    }
    if held.is_some() {
        conn.prepare_cached("DELETE FROM held_mail WHERE recipient = ?1 AND message_id = ?2")
            .and_then(|mut s| s.execute(params![recipient, id.as_str()]))
            .map_err(cache_error)?;
    }
    let mut told: Vec<Address> = cached_by.into_iter().map(|(sender, _)| sender).collect();
    if let Some((sender, holder)) = held {
        told.push(sender);
        told.push(holder);
    }
    insert_receipts(conn, told, &recipient, id, outcome, now)
}

/// Records `outcome` receipts about `(recipient, id)` for each of `told` (once each);
/// returns them, sorted.
fn insert_receipts(
    conn: &Connection,
    mut told: Vec<Address>,
    recipient: &str,
    id: &MessageId,
    outcome: ReceiptOutcome,
    now: Millis,
) -> Answer<Vec<Address>> {
    told.sort();
    told.dedup();
    let mut insert = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO receipts (sender, recipient, message_id, outcome, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(cache_error)?;
    for who in &told {
        insert
            .execute(params![
                who.to_text(),
                recipient,
                id.as_str(),
                outcome_text(outcome),
                millis(now)
            ])
            .map_err(cache_error)?;
    }
    Ok(told)
}

fn refuse_held(
    conn: &Connection,
    recipient: &Address,
    id: &MessageId,
    holder: &Address,
    now: Millis,
) -> Answer<Vec<Address>> {
    let (recipient_text, holder_text) = (recipient.to_text(), holder.to_text());
    let found: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT sender, EXISTS (SELECT 1 FROM cached_mail
                                    WHERE recipient = ?1 AND message_id = ?2)
             FROM held_mail WHERE recipient = ?1 AND message_id = ?2 AND holder = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![recipient_text, id.as_str(), holder_text], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(cache_error)?;
    let Some((sender, relay_keeps_a_copy)) = found else {
        return Ok(Vec::new());
    };
    let mut told = vec![holder.clone()];
    if !relay_keeps_a_copy {
        told.push(address(&sender)?);
    }
    conn.prepare_cached(
        "DELETE FROM held_mail WHERE recipient = ?1 AND message_id = ?2 AND holder = ?3",
    )
    .and_then(|mut s| s.execute(params![recipient_text, id.as_str(), holder_text]))
    .map_err(cache_error)?;
    insert_receipts(
        conn,
        told,
        &recipient_text,
        id,
        ReceiptOutcome::Refused,
        now,
    )
}

fn receipts(conn: &Connection, sender: &Address) -> Answer<Vec<Receipt>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT recipient, message_id, outcome FROM receipts
             WHERE sender = ?1 ORDER BY created_at, recipient, message_id",
        )
        .map_err(cache_error)?;
    let rows = stmt
        .query_map([sender.to_text()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(cache_error)?;
    let mut receipts = Vec::new();
    for row in rows {
        let (recipient, id, what) = row.map_err(cache_error)?;
        receipts.push(Receipt {
            sender: sender.clone(),
            recipient: address(&recipient)?,
            message_id: message_id(&id)?,
            outcome: outcome(&what)?,
        });
    }
    Ok(receipts)
}

/// Deletes `sender`'s envelope `id` for `recipient` if it is still cached (one statement:
/// undone by the statement rollback should it fail).
fn withdraw(
    conn: &Connection,
    usage: &mut Usage,
    sender: &Address,
    recipient: &Address,
    id: &MessageId,
) -> Answer<bool> {
    let recipient = recipient.to_text();
    let size: Option<i64> = conn
        .prepare_cached(
            "DELETE FROM cached_mail WHERE recipient = ?1 AND message_id = ?2 AND sender = ?3
             RETURNING size",
        )
        .and_then(|mut s| {
            s.query_row(params![recipient, id.as_str(), sender.to_text()], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(cache_error)?;
    match size {
        Some(size) => {
            usage.released(&recipient, size.max(0) as u64);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn ack_receipt(
    conn: &Connection,
    sender: &Address,
    recipient: &Address,
    id: &MessageId,
) -> Answer<()> {
    conn.prepare_cached(
        "DELETE FROM receipts WHERE sender = ?1 AND recipient = ?2 AND message_id = ?3",
    )
    .and_then(|mut s| s.execute(params![sender.to_text(), recipient.to_text(), id.as_str()]))
    .map_err(cache_error)?;
    Ok(())
}

fn expire(conn: &Connection, now: Millis) -> Answer<Vec<Receipt>> {
    let expired: Vec<(String, String, String)> = {
        let mut stmt = conn
            .prepare_cached(
                "DELETE FROM cached_mail WHERE expires_at <= ?1
                 RETURNING sender, recipient, message_id",
            )
            .map_err(cache_error)?;
        let rows = stmt
            .query_map([millis(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(cache_error)?;
        let mut expired: Vec<(String, String, String)> =
            rows.collect::<Result<_, _>>().map_err(cache_error)?;
        // A held copy's listing: its sender and its holder are told.
        let mut stmt = conn
            .prepare_cached(
                "DELETE FROM held_mail WHERE expires_at <= ?1
                 RETURNING sender, holder, recipient, message_id",
            )
            .map_err(cache_error)?;
        let rows = stmt
            .query_map([millis(now)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(cache_error)?;
        for row in rows {
            let (sender, holder, recipient, id) = row.map_err(cache_error)?;
            expired.push((sender, recipient.clone(), id.clone()));
            expired.push((holder, recipient, id));
        }
        expired
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO receipts (sender, recipient, message_id, outcome, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(cache_error)?;
    for (sender, recipient, id) in &expired {
        insert
            .execute(params![
                sender,
                recipient,
                id,
                outcome_text(ReceiptOutcome::Expired),
                millis(now)
            ])
            .map_err(cache_error)?;
    }
    let mut receipts = Vec::with_capacity(expired.len());
    for (sender, recipient, id) in expired {
        receipts.push(Receipt {
            sender: address(&sender)?,
            recipient: address(&recipient)?,
            message_id: message_id(&id)?,
            outcome: ReceiptOutcome::Expired,
        });
    }
    Ok(receipts)
}

/// Every call goes to the cache writer. The blocking methods wait for its answer on the
/// calling thread; the `*_async` ones (what sessions use) await it.
impl MailCache for Db {
    fn deposit(&self, mail: NewMail, quota_bytes: u64) -> Answer<Deposit> {
        self.call_blocking(|reply| Op::Deposit {
            mail,
            quota_bytes,
            reply,
        })
    }

    fn waiting(&self, recipient: &Address) -> Answer<Vec<WaitingMail>> {
        let recipient = recipient.clone();
        self.call_blocking(|reply| Op::Waiting { recipient, reply })
    }

    fn fetch(&self, recipient: &Address, id: &MessageId) -> Answer<Option<CachedMail>> {
        let (recipient, id) = (recipient.clone(), id.clone());
        self.call_blocking(|reply| Op::Fetch {
            recipient,
            id,
            reply,
        })
    }

    fn release(
        &self,
        recipient: &Address,
        id: &MessageId,
        outcome: ReceiptOutcome,
        now: Millis,
    ) -> Answer<Vec<Address>> {
        let (recipient, id) = (recipient.clone(), id.clone());
        self.call_blocking(|reply| Op::Release {
            recipient,
            id,
            outcome,
            now,
            reply,
        })
    }

    fn refuse_held(
        &self,
        recipient: &Address,
        id: &MessageId,
        holder: &Address,
        now: Millis,
    ) -> Answer<Vec<Address>> {
        let (recipient, id, holder) = (recipient.clone(), id.clone(), holder.clone());
        self.call_blocking(|reply| Op::RefuseHeld {
            recipient,
            id,
            holder,
            now,
            reply,
        })
    }

    fn hold(&self, hold: NewHold) -> Answer<bool> {
        self.call_blocking(|reply| Op::Hold { hold, reply })
    }

    fn has_deposit(&self, sender: &Address, recipient: &Address, id: &MessageId) -> Answer<bool> {
        let (sender, recipient, id) = (sender.clone(), recipient.clone(), id.clone());
        self.call_blocking(|reply| Op::HasDeposit {
            sender,
            recipient,
            id,
            reply,
        })
    }

    fn receipts(&self, sender: &Address) -> Answer<Vec<Receipt>> {
        let sender = sender.clone();
        self.call_blocking(|reply| Op::Receipts { sender, reply })
    }

    fn ack_receipt(&self, sender: &Address, recipient: &Address, id: &MessageId) -> Answer<()> {
        let (sender, recipient, id) = (sender.clone(), recipient.clone(), id.clone());
        self.call_blocking(|reply| Op::AckReceipt {
            sender,
            recipient,
            id,
            reply,
        })
    }

    fn expire(&self, now: Millis) -> Answer<Vec<Receipt>> {
        self.call_blocking(|reply| Op::Expire { now, reply })
    }

    fn withdraw(&self, sender: &Address, recipient: &Address, id: &MessageId) -> Answer<bool> {
        let (sender, recipient, id) = (sender.clone(), recipient.clone(), id.clone());
        self.call_blocking(|reply| Op::Withdraw {
            sender,
            recipient,
            id,
            reply,
        })
    }

    fn withdraw_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        id: MessageId,
    ) -> CacheFuture<bool> {
        self.call(|reply| Op::Withdraw {
            sender,
            recipient,
            id,
            reply,
        })
    }

    fn deposit_async(self: Arc<Self>, mail: NewMail, quota_bytes: u64) -> CacheFuture<Deposit> {
        self.call(|reply| Op::Deposit {
            mail,
            quota_bytes,
            reply,
        })
    }

    fn waiting_async(self: Arc<Self>, recipient: Address) -> CacheFuture<Vec<WaitingMail>> {
        self.call(|reply| Op::Waiting { recipient, reply })
    }

    fn fetch_async(
        self: Arc<Self>,
        recipient: Address,
        id: MessageId,
    ) -> CacheFuture<Option<CachedMail>> {
        self.call(|reply| Op::Fetch {
            recipient,
            id,
            reply,
        })
    }

    fn release_async(
        self: Arc<Self>,
        recipient: Address,
        id: MessageId,
        outcome: ReceiptOutcome,
        now: Millis,
    ) -> CacheFuture<Vec<Address>> {
        self.call(|reply| Op::Release {
            recipient,
            id,
            outcome,
            now,
            reply,
        })
    }

    fn refuse_held_async(
        self: Arc<Self>,
        recipient: Address,
        id: MessageId,
        holder: Address,
        now: Millis,
    ) -> CacheFuture<Vec<Address>> {
        self.call(|reply| Op::RefuseHeld {
            recipient,
            id,
            holder,
            now,
            reply,
        })
    }

    fn receipts_async(self: Arc<Self>, sender: Address) -> CacheFuture<Vec<Receipt>> {
        self.call(|reply| Op::Receipts { sender, reply })
    }

    fn hold_async(self: Arc<Self>, hold: NewHold) -> CacheFuture<bool> {
        self.call(|reply| Op::Hold { hold, reply })
    }

    fn has_deposit_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        id: MessageId,
    ) -> CacheFuture<bool> {
        self.call(|reply| Op::HasDeposit {
            sender,
            recipient,
            id,
            reply,
        })
    }

    fn ack_receipt_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        id: MessageId,
    ) -> CacheFuture<()> {
        self.call(|reply| Op::AckReceipt {
            sender,
            recipient,
            id,
            reply,
        })
    }
}

impl Directory for Db {
    fn register(&self, name: &str, key: &PublicKey) -> Result<(), peermail_signaling::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let result = self.conn().execute(
            "INSERT INTO accounts (name, public_key, created_at) VALUES (?1, ?2, ?3)",
            params![name, key.as_str(), now as i64],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(peermail_signaling::Error::NameTaken(name.to_string()))
            }
            Err(e) => Err(peermail_signaling::Error::Directory(e.to_string())),
        }
    }

    fn lookup(&self, name: &str) -> Result<Option<PublicKey>, peermail_signaling::Error> {
        let key: Option<String> = self
            .conn()
            .prepare_cached("SELECT public_key FROM accounts WHERE name = ?1")
            .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        match key.map(|k| PublicKey::parse(&k)) {
            None => Ok(None),
            Some(Ok(k)) => Ok(Some(k)),
            Some(Err(e)) => Err(peermail_signaling::Error::Directory(format!(
                "account {name}: {e}"
            ))),
        }
    }

    fn exists(&self, name: &str) -> Result<bool, peermail_signaling::Error> {
        let known = || {
            self.known_accounts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if known().contains(name) {
            return Ok(true);
        }
        let exists: bool = self
            .conn()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)")
            .and_then(|mut s| s.query_row([name], |r| r.get(0)))
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        if exists {
            let mut known = known();
            if known.len() >= KNOWN_ACCOUNTS {
                known.clear();
            }
            known.insert(name.to_string());
        }
        Ok(exists)
    }

    fn publish_encryption_key(
        &self,
        name: &str,
        key: &str,
    ) -> Result<(), peermail_signaling::Error> {
        self.conn()
            .execute(
                "UPDATE accounts SET encryption_key = ?2 WHERE name = ?1",
                params![name, key],
            )
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        Ok(())
    }

    fn encryption_key(&self, name: &str) -> Result<Option<String>, peermail_signaling::Error> {
        let key: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT encryption_key FROM accounts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        Ok(key.flatten())
    }

    fn pair_storage_node(
        &self,
        name: &str,
        key: &PublicKey,
        now: Millis,
    ) -> Result<(), peermail_signaling::Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        tx.execute(
            "DELETE FROM storage_nodes WHERE node_key = ?2 OR owner = ?1",
            params![name, key.as_str()],
        )
        .and_then(|_| {
            tx.execute(
                "INSERT INTO storage_nodes (owner, node_key, paired_at) VALUES (?1, ?2, ?3)",
                params![name, key.as_str(), now as i64],
            )
        })
        .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        tx.commit()
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))
    }

    fn unpair_storage_node(&self, name: &str) -> Result<bool, peermail_signaling::Error> {
        self.conn()
            .execute("DELETE FROM storage_nodes WHERE owner = ?1", [name])
            .map(|deleted| deleted > 0)
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))
    }

    fn storage_node(&self, name: &str) -> Result<Option<StorageNode>, peermail_signaling::Error> {
        let row: Option<(String, i64, Option<i64>)> = self
            .conn()
            .prepare_cached(
                "SELECT node_key, paired_at, last_seen FROM storage_nodes WHERE owner = ?1",
            )
            .and_then(|mut s| {
                s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        let Some((key, paired_at, last_seen)) = row else {
            return Ok(None);
        };
        let key = PublicKey::parse(&key).map_err(|e| {
            peermail_signaling::Error::Directory(format!("storage node of {name}: {e}"))
        })?;
        Ok(Some(StorageNode {
            key,
            paired_at: paired_at as Millis,
            last_seen: last_seen.map(|t| t as Millis),
        }))
    }

    fn storage_node_seen(&self, name: &str, now: Millis) -> Result<(), peermail_signaling::Error> {
        self.conn()
            .prepare_cached("UPDATE storage_nodes SET last_seen = ?2 WHERE owner = ?1")
            .and_then(|mut s| s.execute(params![name, now as i64]))
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peermail_signaling::cache::conformance::{self, a, mail};

    /// A trigger that makes every receipt's insert fail (a release fails once it has begun
    /// to change the database).
    const NO_RECEIPTS: &str = "CREATE TRIGGER no_receipt BEFORE INSERT ON receipts
        BEGIN SELECT RAISE(ABORT, 'no receipts today'); END;";

    /// The shared cache behaviour, through the cache writer and SQLite.
    #[test]
    fn deposit_quota_release_receipts_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let c = Db::open(dir.path()).unwrap();
        conformance::deposit_quota_release_receipts_and_expiry(&c);
        assert_eq!(c.cached_count().unwrap(), 1);
    }

    /// Through the writer's running total of each recipient's waiting bytes.
    #[test]
    fn quota_counts_what_still_waits() {
        let dir = tempfile::tempdir().unwrap();
        conformance::quota_counts_what_still_waits(&Db::open(dir.path()).unwrap());
    }

    #[test]
    fn held_copies_are_listed_released_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        conformance::held_copies_are_listed_released_and_expired(&Db::open(dir.path()).unwrap());
    }

    #[test]
    fn withdrawn_by_its_sender_only() {
        let dir = tempfile::tempdir().unwrap();
        conformance::withdrawn_by_its_sender_only(&Db::open(dir.path()).unwrap());
    }

    #[test]
    fn held_copy_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        conformance::held_copy_refused_alone(&Db::open(dir.path()).unwrap());
    }

    /// A release is all or nothing without its savepoint: a failure once it began to change
    /// the database loses the whole turn (the envelope is still there, with no receipt); a
    /// failure while reading changes nothing and fails that release alone.
    #[test]
    fn a_release_never_half_happens() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (first, second) = (mail("bob@h", 1, 10, 1), mail("bob@h", 2, 10, 1));
        for m in [&first, &second] {
            assert_eq!(db.deposit(m.clone(), 1000).unwrap(), Deposit::Stored);
        }
        let side = Connection::open(dir.path().join(DB_FILE)).unwrap();
        // The receipt, written after the envelope's deletion, fails.
        side.execute_batch(NO_RECEIPTS).unwrap();
        let release =
            |m: &NewMail| db.release(&a("bob@h"), &m.message_id, ReceiptOutcome::Delivered, 5);
        let e = release(&first).unwrap_err();
        assert!(e.to_string().contains("no receipts today"), "{e}");
        assert_eq!(db.cached_count().unwrap(), 2, "the deletion was undone");
        assert!(db.receipts(&a("alice@h")).unwrap().is_empty());
        // So is the room it made in bob's quota (20 bytes of 20 still wait).
        assert_eq!(
            db.deposit(mail("bob@h", 3, 1, 1), 20).unwrap(),
            Deposit::QuotaExceeded
        );
        side.execute_batch("DROP TRIGGER no_receipt").unwrap();
        // A stored sender that is not an address fails the read: nothing changes, and the
        // cache goes on.
        side.execute(
            "UPDATE cached_mail SET sender = 'not an address' WHERE message_id = ?1",
            [second.message_id.as_str()],
        )
        .unwrap();
        assert!(release(&second).is_err());
        assert_eq!(db.cached_count().unwrap(), 2);
        assert_eq!(release(&first).unwrap(), vec![a("alice@h")]);
        assert_eq!(db.cached_count().unwrap(), 1);
        assert_eq!(db.receipts(&a("alice@h")).unwrap().len(), 1);
    }

    /// A cache writer of its own (no thread: the test calls its turns) on a new database.
    fn lone_writer(dir: &Path) -> CacheWriter {
        let mut conn = open_connection(&dir.join(DB_FILE)).unwrap();
        migrations::migrate(&mut conn).unwrap();
        CacheWriter {
            conn,
            wal_restart: Arc::default(),
            usage: Usage::default(),
        }
    }

    /// The deposit of `mail("bob@h", n, 10, 1)`, and where its answer comes.
    fn deposit_op(n: u8) -> (Op, oneshot::Receiver<Answer<Deposit>>) {
        deposit_of(mail("bob@h", n, 10, 1), 1000)
    }

    /// The deposit of `mail` under `quota_bytes`, and where its answer comes.
    fn deposit_of(mail: NewMail, quota_bytes: u64) -> (Op, oneshot::Receiver<Answer<Deposit>>) {
        let (reply, answer) = oneshot::channel();
        let op = Op::Deposit {
            mail,
            quota_bytes,
            reply,
        };
        (op, answer)
    }

    /// bob@h's waiting list, and where it comes.
    fn listing_op() -> (Op, oneshot::Receiver<Answer<Vec<WaitingMail>>>) {
        let (reply, answer) = oneshot::channel();
        let op = Op::Waiting {
            recipient: a("bob@h"),
            reply,
        };
        (op, answer)
    }

    /// The Message-IDs of a waiting list, sorted.
    fn listed(answer: oneshot::Receiver<Answer<Vec<WaitingMail>>>) -> Vec<MessageId> {
        let mut found: Vec<MessageId> = answer
            .blocking_recv()
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|w| w.message_id)
            .collect();
        found.sort();
        found
    }

    fn id(n: u8) -> MessageId {
        mail("bob@h", n, 10, 1).message_id
    }

    /// Writes that arrive while a turn runs join its transaction, in arrival order; a read
    /// that arrives meanwhile waits for the commit and opens the next turn, ahead of what
    /// came after it; a read-only turn takes no writes.
    #[test]
    fn writes_arriving_during_a_turn_join_it_and_a_read_waits_for_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = lone_writer(dir.path());
        let (ops, queue) = mpsc::channel();

        // A read-only turn (two reads: one transaction) leaves a write that arrives to the
        // next turn.
        let ((read, read_answer), (other, other_answer)) = (listing_op(), listing_op());
        let (first, mut first_answer) = deposit_op(1);
        ops.send(first).unwrap();
        assert!(writer.turn(&mut vec![read, other], &queue).is_none());
        assert!(listed(read_answer).is_empty());
        assert!(listed(other_answer).is_empty());
        assert!(
            first_answer.try_recv().is_err(),
            "a read-only turn took a write"
        );
        let first = queue.try_recv().expect("still waiting");

        // A writing turn takes the writes that arrive, up to the first read.
        let (second, mut second_answer) = deposit_op(2);
        let (read, mut read_answer) = listing_op();
        let (third, mut third_answer) = deposit_op(3);
        for op in [second, read, third] {
            ops.send(op).unwrap();
        }
        let next = writer.turn(&mut vec![first], &queue);
        assert_eq!(first_answer.try_recv().unwrap().unwrap(), Deposit::Stored);
        assert_eq!(
            second_answer
                .try_recv()
                .expect("the write that arrived joined the turn"),
            Ok(Deposit::Stored)
        );
        assert!(
            read_answer.try_recv().is_err(),
            "the read was answered mid-turn"
        );
        assert!(matches!(next, Some(Op::Waiting { .. })), "{next:?}");
        assert!(third_answer.try_recv().is_err(), "a write passed the read");

        // The read opens the next turn and sees both committed deposits, not the third,
        // which came after it.
        let mut batch = vec![next.unwrap()];
        batch.extend(queue.try_iter());
        assert!(writer.turn(&mut batch, &queue).is_none());
        assert_eq!(listed(read_answer), vec![id(1), id(2)]);
        assert_eq!(
            third_answer.blocking_recv().unwrap().unwrap(),
            Deposit::Stored
        );
    }

    /// A write that joins a turn shares its transaction: when it breaks the transaction,
    /// the turn's earlier write is undone and answered with the error too, and what arrives
    /// after it waits for the next turn.
    #[test]
    fn a_write_that_joins_a_turn_shares_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = lone_writer(dir.path());
        let (ops, queue) = mpsc::channel();
        let (first, first_answer) = deposit_op(1);
        assert!(writer.turn(&mut vec![first], &queue).is_none());
        assert_eq!(first_answer.blocking_recv().unwrap(), Ok(Deposit::Stored));
        // A release that fails once it has begun to change the database (its receipt is
        // refused) loses the whole transaction.
        writer.conn.execute_batch(NO_RECEIPTS).unwrap();
        let (second, mut second_answer) = deposit_op(2);
        let (reply, mut release_answer) = oneshot::channel();
        let release = Op::Release {
            recipient: a("bob@h"),
            id: id(1),
            outcome: ReceiptOutcome::Delivered,
            now: 5,
            reply,
        };
        let (third, mut third_answer) = deposit_op(3);
        ops.send(release).unwrap();
        ops.send(third).unwrap();
        assert!(writer.turn(&mut vec![second], &queue).is_none());
        let refused = release_answer
            .try_recv()
            .expect("the release joined the turn");
        assert!(refused.is_err(), "{refused:?}");
        let undone = second_answer.try_recv().expect("answered with the turn");
        assert!(
            undone.is_err(),
            "the deposit before it was answered {undone:?}"
        );
        assert!(
            third_answer.try_recv().is_err(),
            "a write joined a lost turn"
        );

        // The next turn takes the third deposit; the second is gone and the first waits
        // still, with no receipt.
        let mut batch: Vec<Op> = queue.try_iter().collect();
        assert!(writer.turn(&mut batch, &queue).is_none());
        assert_eq!(third_answer.blocking_recv().unwrap(), Ok(Deposit::Stored));
        let (read, read_answer) = listing_op();
        assert!(writer.turn(&mut vec![read], &queue).is_none());
        assert_eq!(listed(read_answer), vec![id(1), id(3)]);
        let receipts: i64 = writer
            .conn
            .query_row("SELECT count(*) FROM receipts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(receipts, 0);
    }

    /// A turn runs at most [`MAX_BATCH`] writes, those it starts with and those that join it
    /// together: more than that waiting is two turns, so two commits (each one write to the
    /// WAL).
    #[test]
    fn a_turn_runs_at_most_max_batch_writes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = lone_writer(dir.path());
        let (ops, queue) = mpsc::channel();
        let mut answers = Vec::new();
        for k in 0..MAX_BATCH + 44 {
            let to = format!("r{}@h", k % 3);
            let (op, answer) = deposit_of(mail(&to, (k / 3) as u8, 10, 1), 1 << 20);
            ops.send(op).unwrap();
            answers.push(answer);
        }
        drop(ops);
        let before = wal_vfs::wal_writes_on_this_thread();
        writer.run(&queue);
        assert_eq!(wal_vfs::wal_writes_on_this_thread() - before, 2, "commits");
        for answer in answers {
            assert_eq!(answer.blocking_recv().unwrap(), Ok(Deposit::Stored));
        }
    }

    /// Set once the writer of [`run_opens_the_next_turn_with_the_read_a_turn_stopped_at`]
    /// waits for the database's write lock.
    static WAITS_FOR_THE_LOCK: AtomicBool = AtomicBool::new(false);

    fn note_the_wait(_tries: i32) -> bool {
        WAITS_FOR_THE_LOCK.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_millis(1));
        true
    }

    /// A read that a writing turn stopped at (it arrived while the turn ran) opens the
    /// writer's next turn, ahead of the writes that came after it: it sees the turn's
    /// commit and none of those.
    #[test]
    fn run_opens_the_next_turn_with_the_read_a_turn_stopped_at() {
        let dir = tempfile::tempdir().unwrap();
        let writer = lone_writer(dir.path());
        writer.conn.busy_handler(Some(note_the_wait)).unwrap();
        // Another connection holds the write lock, so the writer's turn waits at its start,
        // having taken the one deposit queued.
        let other = open_connection(&dir.path().join(DB_FILE)).unwrap();
        run(&other, "BEGIN IMMEDIATE").unwrap();
        let (ops, queue) = mpsc::channel();
        let (first, first_answer) = deposit_op(1);
        ops.send(first).unwrap();
        let writer = std::thread::spawn(move || writer.run(&queue));
        while !WAITS_FOR_THE_LOCK.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (read, read_answer) = listing_op();
        let (second, second_answer) = deposit_op(2);
        ops.send(read).unwrap();
        ops.send(second).unwrap();
        drop(ops);
        run(&other, "ROLLBACK").unwrap();
        assert_eq!(first_answer.blocking_recv().unwrap(), Ok(Deposit::Stored));
        assert_eq!(listed(read_answer), vec![id(1)]);
        assert_eq!(second_answer.blocking_recv().unwrap(), Ok(Deposit::Stored));
        writer.join().unwrap();
    }

    /// The checkpointer copies committed writes into the database file by itself, soon: a
    /// copy of that file alone (without its WAL) holds them.
    #[test]
    fn committed_writes_reach_the_database_file_without_waiting_for_a_full_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(
            db.deposit(mail("bob@h", 1, 10, 1), 1000).unwrap(),
            Deposit::Stored
        );
        let copy = tempfile::tempdir().unwrap();
        let deadline = std::time::Instant::now() + CHECKPOINT_INTERVAL * 20;
        loop {
            std::fs::copy(dir.path().join(DB_FILE), copy.path().join(DB_FILE)).unwrap();
            let found: rusqlite::Result<i64> = Connection::open(copy.path().join(DB_FILE))
                .and_then(|c| c.query_row("SELECT count(*) FROM cached_mail", [], |r| r.get(0)));
            if found == Ok(1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not in the database file: {found:?}"
            );
            std::thread::sleep(CHECKPOINT_INTERVAL / 2);
        }
        drop(db);
    }

    /// Under writes that never pause, the checkpointer makes the WAL start over (SQLite
    /// changes the first salt in its header each time), so the WAL file stays the size of
    /// what is written between two checkpoints. Before, it never started over under such
    /// load, and grew by every page written. Writes go on until the cache writer, at the
    /// checkpointer's request, has copied the whole WAL six times (each cycle takes as long
    /// as the fsync of what was written since the last, which varies with the disk); the
    /// WAL must have started over after each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let restarts_wanted = 6;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..20u32)
            .map(|task| {
                let (db, stop) = (db.clone(), stop.clone());
                tokio::spawn(async move {
                    let (me, mut n) = (a(&format!("r{task}@h")), 0u32);
                    while !stop.load(Ordering::Relaxed) {
                        let mut random = [0u8; 16];
                        random[..4].copy_from_slice(&task.to_be_bytes());
                        random[4..8].copy_from_slice(&n.to_be_bytes());
                        let id = MessageId::new(random, "h");
                        let mail = NewMail {
                            recipient: me.clone(),
                            message_id: id.clone(),
                            sender: a("alice@h"),
                            sealed: vec![7; 1024],
                            deposited_at: 1,
                            expires_at: u64::MAX / 2,
                        };
                        let stored = db.clone().deposit_async(mail, u64::MAX / 2).await;
                        assert_eq!(stored.unwrap(), Deposit::Stored);
                        let released = db.clone().release_async(
                            me.clone(),
                            id.clone(),
                            ReceiptOutcome::Delivered,
                            2,
                        );
                        assert_eq!(released.await.unwrap(), vec![a("alice@h")]);
                        let acked = db.clone().ack_receipt_async(a("alice@h"), me.clone(), id);
                        acked.await.unwrap();
                        n += 1;
                    }
                })
            })
            .collect();
        // The WAL header's first salt, bytes 16 to 20.
        let salt = || {
            use std::io::Read as _;
            let mut header = [0u8; 20];
            std::fs::File::open(&wal)
                .and_then(|mut f| f.read_exact(&mut header))
                .ok()?;
            Some(header[16..].to_vec())
        };
        let (mut last, mut restarts) = (salt(), 0);
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while db.wal_restarts() < restarts_wanted {
            assert!(
                std::time::Instant::now() < give_up,
                "the cache writer made the WAL start over {} times in a minute",
                db.wal_restarts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = salt();
            if now != last {
                restarts += 1;
                last = now;
            }
        }
        // The last restart takes effect at the next write.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if salt() != last {
            restarts += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        assert!(
            restarts >= restarts_wanted,
            "the WAL started over {restarts} times after {restarts_wanted} whole copies by the writer"
        );
    }

    /// Deposits that land in one transaction still check the quota one after the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deposits_share_the_quota_and_all_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let calls: Vec<_> = (0..40u8)
            .map(|n| db.clone().deposit_async(mail("bob@h", n, 10, 1), 200))
            .collect();
        let mut stored = 0;
        for call in calls {
            match call.await.unwrap() {
                Deposit::Stored => stored += 1,
                Deposit::QuotaExceeded => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(stored, 20);
        let ids: Vec<MessageId> = db
            .clone()
            .waiting_async(a("bob@h"))
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.message_id)
            .collect();
        assert_eq!(ids.len(), 20);
        let releases: Vec<_> = ids
            .iter()
            .map(|id| {
                db.clone()
                    .release_async(a("bob@h"), id.clone(), ReceiptOutcome::Delivered, 5)
            })
            .collect();
        for r in releases {
            assert_eq!(r.await.unwrap(), vec![a("alice@h")]);
        }
        assert_eq!(
            db.clone().receipts_async(a("alice@h")).await.unwrap().len(),
            20
        );
        drop(db);
        // Committed: a fresh open sees it.
        let db = Arc::new(Db::open(dir.path()).unwrap());
        assert_eq!(db.cached_count().unwrap(), 0);
        assert_eq!(db.receipts_async(a("alice@h")).await.unwrap().len(), 20);
    }
}
