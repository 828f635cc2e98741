//! The VFS against SQLite itself: what a commit writes is in the WAL file when the commit
//! returns (a copy of the files taken then, without closing anything, recovers every
//! committed row and passes SQLite's integrity check), in one write, and transactions that
//! spill pages before their commit and rewrite them come out whole too.

use std::path::Path;

use peermail_wal_vfs::{register, wal_writes_on_this_thread, NAME};
use rusqlite::{params, Connection, OpenFlags};

fn open(path: &Path) -> Connection {
    register().expect("the VFS registers");
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS mail (
            id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, sealed BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS mail_recipient ON mail (recipient);",
    )
    .unwrap();
    conn
}

/// The database as a process that died right now would leave it: its file and WAL copied
/// (not the shared memory, so SQLite recovers from the WAL's frames and checksums alone),
/// opened with SQLite's own VFS. Returns each row's id and the sum of its bytes.
fn as_left(dir: &Path) -> Vec<(i64, u64)> {
    let copy = tempfile::tempdir().unwrap();
    for file in ["db", "db-wal"] {
        std::fs::copy(dir.join(file), copy.path().join(file)).unwrap();
    }
    let conn = Connection::open(copy.path().join("db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    rows(&conn)
}

/// Each row's id and the sum of its bytes, as `conn` reads them.
fn rows(conn: &Connection) -> Vec<(i64, u64)> {
    let mut rows = conn
        .prepare("SELECT id, sealed FROM mail ORDER BY id")
        .unwrap();
    let rows = rows
        .query_map([], |r| {
            let sealed: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, sum(&sealed)))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn sealed(id: i64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as i64 * 7 + id) as u8).collect()
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Inserts row `id` for recipient `r` with `len` bytes of [`sealed`]; returns the row as
/// [`rows`] reads it.
fn insert(conn: &Connection, id: i64, len: usize) -> (i64, u64) {
    let bytes = sealed(id, len);
    conn.execute(
        "INSERT INTO mail (id, recipient, sealed) VALUES (?1, 'r', ?2)",
        params![id, bytes],
    )
    .unwrap();
    (id, sum(&bytes))
}

#[test]
fn each_commit_is_one_write_and_in_the_file_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&dir.path().join("db"));
    let mut expected = Vec::new();
    for turn in 0..20i64 {
        let before = wal_writes_on_this_thread();
        let tx = conn.unchecked_transaction().unwrap();
        for k in 0..12 {
            let id = turn * 100 + k;
            let bytes = sealed(id, 1024);
            tx.execute(
                "INSERT INTO mail (id, recipient, sealed) VALUES (?1, ?2, ?3)",
                params![id, format!("r{}", k % 5), bytes],
            )
            .unwrap();
            expected.push((id, sum(&bytes)));
        }
        // Some of the earlier rows go, as released mail does.
        tx.execute("DELETE FROM mail WHERE id = ?1", [turn * 100 - 95])
            .unwrap();
        expected.retain(|(id, _)| *id != turn * 100 - 95);
        tx.commit().unwrap();
        assert_eq!(
            wal_writes_on_this_thread() - before,
            1,
            "commit {turn} of several pages is one write"
        );
        assert_eq!(as_left(dir.path()), expected, "after commit {turn}");
    }
}

#[test]
fn a_transaction_that_spills_pages_and_changes_them_again_comes_out_whole() {
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&dir.path().join("db"));
    // A page cache of a few pages: the transaction writes pages to the WAL before its
    // commit, changes some of them again (SQLite rewrites those frames and then the
    // checksums of every frame after them) and writes more than the VFS buffers at once.
    conn.pragma_update(None, "cache_size", 4).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    let mut expected = Vec::new();
    for id in 0..3000i64 {
        let bytes = sealed(id, 700);
        tx.execute(
            "INSERT INTO mail (id, recipient, sealed) VALUES (?1, ?2, ?3)",
            params![id, format!("r{}", id % 13), bytes],
        )
        .unwrap();
        expected.push((id, sum(&bytes)));
    }
    tx.execute("UPDATE mail SET sealed = zeroblob(10) WHERE id % 3 = 0", [])
        .unwrap();
    for (id, s) in &mut expected {
        if *id % 3 == 0 {
            *s = 0;
        }
    }
    tx.execute("DELETE FROM mail WHERE id % 7 = 0", []).unwrap();
    expected.retain(|(id, _)| id % 7 != 0);
    tx.commit().unwrap();
    assert_eq!(as_left(dir.path()), expected);
    // The connection reads back what it wrote, and goes on writing.
    let n: i64 = conn
        .query_row("SELECT count(*) FROM mail", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, expected.len());
    conn.execute("DELETE FROM mail WHERE id < 100", []).unwrap();
    expected.retain(|(id, _)| *id >= 100);
    assert_eq!(as_left(dir.path()), expected);
}

#[test]
fn other_connections_see_each_commit_and_checkpoints_copy_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let writer = open(&path);
    let reader = open(&path);
    let plain = Connection::open(&path).unwrap();
    for id in 0..50i64 {
        insert(&writer, id, 2000);
        for conn in [&reader, &plain] {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM mail", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, id + 1);
        }
        if id % 10 == 9 {
            let (busy, _, _): (i64, i64, i64) = reader
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0, "the checkpoint ran");
        }
    }
    drop((writer, reader, plain));
    let conn = Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM mail", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}

/// A's transaction spills frames (fewer than the VFS buffers) at the WAL's start and rolls
/// back: those frames were never written. (The WAL is emptied first, so that rolling back
/// reads nothing from it, which would write them out before B commits.) Then B commits at
/// the same place in the WAL, and A reads it: the files and A must hold B's commit.
fn rolled_back_then_another_commits(exclusive: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let a = open(&path);
    let mut expected = Vec::new();
    for id in 0..10i64 {
        expected.push(insert(&a, id, 700));
    }
    a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    if exclusive {
        a.query_row("PRAGMA locking_mode = EXCLUSIVE", [], |_| Ok(()))
            .unwrap();
    }
    a.pragma_update(None, "cache_size", 4).unwrap();
    let tx = a.unchecked_transaction().unwrap();
    insert(&tx, 1000, 200 * 1024);
    tx.rollback().unwrap();
    if exclusive {
        // Back to normal locking: at its next read (of the database file only) A lets its
        // exclusive lock go.
        a.query_row("PRAGMA locking_mode = NORMAL", [], |_| Ok(()))
            .unwrap();
        let n: i64 = a
            .query_row("SELECT count(*) FROM mail", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 10);
    }
    // Opened only now: A in exclusive mode keeps every other connection out.
    let b = open(&path);
    expected.push(insert(&b, 5000, 700));
    assert_eq!(rows(&a), expected, "what A reads");
    assert_eq!(as_left(dir.path()), expected, "what the files hold");
}

#[test]
fn a_transaction_rolled_back_after_spilling_leaves_nothing_for_the_next_writer_to_meet() {
    rolled_back_then_another_commits(false);
}

#[test]
fn a_rollback_in_exclusive_locking_mode_leaves_nothing_for_the_next_writer_to_meet() {
    // In exclusive locking mode the WAL's write lock is not taken through shared memory:
    // the buffer of a rolled-back transaction is dropped when the connection's database
    // lock goes down.
    rolled_back_then_another_commits(true);
}

/// A WAL whose last commit is followed by a frame that was never written whole (a crash
/// mid-transaction): SQLite's recovery reads that frame last, and the next commit's one
/// frame goes exactly there. The commit must be in the file when it returns.
fn one_frame_commit_after_recovering_a_torn_wal(exclusive: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let plain = Connection::open(&path).unwrap();
    plain.pragma_update(None, "journal_mode", "WAL").unwrap();
    plain
        .execute_batch("CREATE TABLE mail (id INTEGER PRIMARY KEY, recipient TEXT, sealed BLOB)")
        .unwrap();
    for id in 0..50i64 {
        insert(&plain, id, 700);
    }
    plain
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    plain
        .execute(
            "UPDATE mail SET sealed = ?1 WHERE id = 49",
            [sealed(1, 700)],
        )
        .unwrap();
    let torn = tempfile::tempdir().unwrap();
    for file in ["db", "db-wal"] {
        std::fs::copy(dir.path().join(file), torn.path().join(file)).unwrap();
    }
    drop(plain);
    let wal = torn.path().join("db-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend(std::iter::repeat_n(0xab, 24 + 4096));
    std::fs::write(&wal, bytes).unwrap();

    register().unwrap();
    let conn =
        Connection::open_with_flags_and_vfs(torn.path().join("db"), OpenFlags::default(), NAME)
            .unwrap();
    if exclusive {
        // Before anything reads the database, so that the WAL index is in the process's
        // memory.
        conn.query_row("PRAGMA locking_mode = EXCLUSIVE", [], |_| Ok(()))
            .unwrap();
    }
    // As the relay runs it: no sync at commit (which would write the buffer out).
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute("UPDATE mail SET sealed = ?1 WHERE id = 0", [sealed(2, 700)])
        .unwrap();
    let left = as_left(torn.path());
    assert_eq!(left.len(), 50);
    assert_eq!(
        left[0],
        (0, sum(&sealed(2, 700))),
        "the commit after recovery"
    );
    assert_eq!(left[49], (49, sum(&sealed(1, 700))), "the commit before");
}

#[test]
fn a_one_frame_commit_right_after_recovering_a_torn_wal_is_in_the_file() {
    // Recovery ends by giving up the WAL's write lock through shared memory, and the VFS
    // then forgets the read: the commit frame's header is buffered like any other.
    one_frame_commit_after_recovering_a_torn_wal(false);
}

#[test]
fn in_exclusive_locking_mode_that_commit_is_in_the_file_too() {
    // No shared memory: nothing comes between recovery's last read and the commit frame's
    // header written at the same place, which therefore goes straight to the file, and
    // its page must still be written out at once.
    one_frame_commit_after_recovering_a_torn_wal(true);
}

#[test]
fn commits_padded_to_a_sector_are_whole_for_other_connections() {
    // A database without "powersafe overwrite" and synchronous=FULL: SQLite pads each
    // commit to a sector boundary with copies of its last frame, splitting the last copy
    // around a sync.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    register().unwrap();
    let uri = format!("file:{}?psow=0", path.display());
    let conn = Connection::open_with_flags_and_vfs(&uri, OpenFlags::default(), NAME).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE mail (id INTEGER PRIMARY KEY, recipient TEXT, sealed BLOB)")
        .unwrap();
    let other = Connection::open(&path).unwrap();
    let mut expected = Vec::new();
    for id in 0..30i64 {
        expected.push(insert(&conn, id, 900 + id as usize * 37));
        assert_eq!(rows(&other), expected, "after commit {id}");
    }
    assert_eq!(as_left(dir.path()), expected);
}
