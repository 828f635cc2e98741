//! The relay database's schema, as an ordered list of migrations.
//!
//! `PRAGMA user_version` records how many have been applied. Append new migrations at the
//! end; never edit one that has shipped.

use rusqlite::Connection;

/// Migration `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the account directory.
    "CREATE TABLE accounts (
        name        TEXT PRIMARY KEY NOT NULL,
        public_key  TEXT NOT NULL,
        created_at  INTEGER NOT NULL  -- seconds since the Unix epoch
    ) STRICT;",
    // 2: published encryption keys; the store-and-forward cache of sealed envelopes and the
    // receipts for their senders. Addresses are stored in full (`name@host`), times in ms.
    "ALTER TABLE accounts ADD COLUMN encryption_key TEXT;  -- X25519 public key, hex; NULL until published
    CREATE TABLE cached_mail (
        recipient     TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        sender        TEXT NOT NULL,
        sealed        BLOB NOT NULL,     -- opaque: sealed end to end for the recipient
        size          INTEGER NOT NULL,  -- length of sealed in bytes
        deposited_at  INTEGER NOT NULL,  -- ms since the Unix epoch
        expires_at    INTEGER NOT NULL,  -- ms since the Unix epoch
        PRIMARY KEY (recipient, message_id)
    ) STRICT;
    CREATE INDEX cached_mail_expiry ON cached_mail (expires_at);
    CREATE TABLE receipts (
        sender      TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        outcome     TEXT NOT NULL,  -- 'delivered' | 'expired'
        created_at  INTEGER NOT NULL,  -- ms since the Unix epoch
        PRIMARY KEY (sender, recipient, message_id)
    ) STRICT;",
    // 3: where co-recipients' nodes hold sealed copies for offline recipients (the relay
    // lists them; the bytes stay on the holder). Receipts go to the sender and the holder.
    "CREATE TABLE held_mail (
        recipient   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        holder      TEXT NOT NULL,
        sender      TEXT NOT NULL,
        size        INTEGER NOT NULL,  -- length of the sealed copy in bytes
        held_at     INTEGER NOT NULL,  -- ms since the Unix epoch
        expires_at  INTEGER NOT NULL,  -- ms since the Unix epoch
        PRIMARY KEY (recipient, message_id)
    ) STRICT;
    CREATE INDEX held_mail_expiry ON held_mail (expires_at);",
    // 4: attachment files kept for offline recipients (encrypted chunks, checked against
    // the chunk list their sender announced; the key is only in the sealed mail).
    "CREATE TABLE kept_files (
        recipient     TEXT NOT NULL,
        attachment    TEXT NOT NULL,     -- attachment id, hex
        sender        TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        size          INTEGER NOT NULL,  -- plaintext bytes
        hashes        BLOB NOT NULL,     -- the chunk list: SHA-256 of each encrypted chunk
        deposited_at  INTEGER NOT NULL,  -- ms since the Unix epoch
        expires_at    INTEGER NOT NULL,  -- ms since the Unix epoch
        PRIMARY KEY (recipient, attachment)
    ) STRICT;
    CREATE INDEX kept_files_expiry ON kept_files (expires_at);
    CREATE TABLE kept_chunks (
        recipient   TEXT NOT NULL,
        attachment  TEXT NOT NULL,
        idx         INTEGER NOT NULL,
        data        BLOB NOT NULL,  -- one encrypted chunk
        PRIMARY KEY (recipient, attachment, idx),
        FOREIGN KEY (recipient, attachment) REFERENCES kept_files (recipient, attachment)
            ON DELETE CASCADE
    ) STRICT;",
    // 5: the location registry: each account's storage node (its own signing key).
    "CREATE TABLE storage_nodes (
        owner      TEXT PRIMARY KEY NOT NULL REFERENCES accounts (name),  -- account name
        node_key   TEXT NOT NULL UNIQUE,  -- the node's Ed25519 public key, as accounts' keys
        paired_at  INTEGER NOT NULL,      -- ms since the Unix epoch
        last_seen  INTEGER                -- ms since the Unix epoch; NULL until it signs in
    ) STRICT;",
    // 6: receipts clustered on their key (WITHOUT ROWID): each receipt is written once and
    // deleted once, and a rowid table kept a second b-tree (its primary-key index) for both.
    "CREATE TABLE receipts_by_key (
        sender      TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        outcome     TEXT NOT NULL,  -- 'delivered' | 'expired' | 'refused'
        created_at  INTEGER NOT NULL,  -- ms since the Unix epoch
        PRIMARY KEY (sender, recipient, message_id)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO receipts_by_key (sender, recipient, message_id, outcome, created_at)
        SELECT sender, recipient, message_id, outcome, created_at FROM receipts;
    DROP TABLE receipts;
    ALTER TABLE receipts_by_key RENAME TO receipts;",
];

/// The schema version this build of the relay writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the database up to [`SCHEMA_VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<(), crate::Error> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Applies the migrations the database lacks, up to version `target`.
fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), crate::Error> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > SCHEMA_VERSION {
        return Err(crate::Error::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(crate::Error::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn receipts_survive_their_move_to_a_table_without_rowid() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 5).unwrap();
        conn.execute_batch(
            "INSERT INTO receipts VALUES ('alice@x', 'bob@x', '<1@x>', 'delivered', 7);
             INSERT INTO receipts VALUES ('alice@x', 'carol@x', '<1@x>', 'expired', 8);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let rows: Vec<(String, String, String, String, i64)> = conn
            .prepare("SELECT * FROM receipts ORDER BY recipient")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let row = |r: &str, o: &str, t| {
            let s = |v: &str| v.to_string();
            (s("alice@x"), s(r), s("<1@x>"), s(o), t)
        };
        assert_eq!(
            rows,
            [row("bob@x", "delivered", 7), row("carol@x", "expired", 8)]
        );
        // Keyed as before: a second receipt for the same key is refused.
        assert!(conn
            .execute(
                "INSERT INTO receipts VALUES ('alice@x', 'bob@x', '<1@x>', 'expired', 9)",
                []
            )
            .is_err());
    }
}
