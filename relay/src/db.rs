//! The relay's SQLite database (WAL) in `<data-dir>/relay.sqlite3`, and the account
//! directory kept in it.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use peermail_core::identity::PublicKey;
use peermail_signaling::Directory;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use crate::{migrations, Error};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "relay.sqlite3";

/// One connection, shared. Each call is a short primary-key statement; a pool comes when a
/// query is slow enough to need one.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if missing) the data directory and the database, and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::DataDir {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let mut conn = Connection::open(data_dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of accounts.
    pub fn account_count(&self) -> Result<u64, Error> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?)
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
            .query_row(
                "SELECT public_key FROM accounts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| peermail_signaling::Error::Directory(e.to_string()))?;
        match key.map(|k| PublicKey::parse(&k)) {
            None => Ok(None),
            Some(Ok(k)) => Ok(Some(k)),
            Some(Err(e)) => Err(peermail_signaling::Error::Directory(format!(
                "account {name}: {e}"
            ))),
        }
    }
}
