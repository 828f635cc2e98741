//! The relay's SQLite database (WAL) in `<data-dir>/relay.sqlite3`, and what is kept in it:
//! the account directory ([`Directory`]) and the store-and-forward mail cache
//! ([`MailCache`]).
//!
//! Durability: `journal_mode=WAL` with `synchronous=NORMAL`. A transaction is committed once
//! its pages are written to the WAL file (in the OS's page cache); SQLite syncs the WAL to
//! disk at checkpoints, not at every commit. A committed transaction therefore survives the
//! relay process dying in any way (SIGKILL, panic, OOM killer): the kernel still writes it
//! out. Only a power loss or kernel crash can lose the last transactions before a checkpoint
//! (the database stays consistent either way). The relay acknowledges a deposit after its
//! commit, so an acknowledged envelope survives any crash of the relay itself. `FULL` would
//! add an fsync per commit to protect against power loss too, at a large cost in deposit
//! throughput; a relay behind an unreliable power supply can be given it later as an option.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use peermail_core::address::Address;
use peermail_core::identity::PublicKey;
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::{MailLocation, ReceiptOutcome, WaitingMail};
use peermail_signaling::cache::{CachedMail, Deposit, NewMail, Receipt};
use peermail_signaling::{Directory, MailCache};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

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
        // See the module documentation: survives any crash of the process.
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

    /// Number of envelopes in the mail cache.
    pub fn cached_count(&self) -> Result<u64, Error> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM cached_mail", [], |r| r.get(0))?)
    }
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
    }
}

fn outcome(text: &str) -> Result<ReceiptOutcome, peermail_signaling::Error> {
    match text {
        "delivered" => Ok(ReceiptOutcome::Delivered),
        "expired" => Ok(ReceiptOutcome::Expired),
        other => Err(peermail_signaling::Error::Cache(format!(
            "stored receipt outcome {other:?}"
        ))),
    }
}

fn millis(v: Millis) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl MailCache for Db {
    fn deposit(
        &self,
        mail: NewMail,
        quota_bytes: u64,
    ) -> Result<Deposit, peermail_signaling::Error> {
        let mut conn = self.conn();
        // IMMEDIATE: the quota check and the insert see no other writer in between.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(cache_error)?;
        let (recipient, id) = (mail.recipient.to_string(), mail.message_id.as_str());
        let existing: Option<String> = tx
            .query_row(
                "SELECT sender FROM cached_mail WHERE recipient = ?1 AND message_id = ?2",
                params![recipient, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(cache_error)?;
        if let Some(sender) = existing {
            return Ok(if sender == mail.sender.to_string() {
                Deposit::AlreadyStored
            } else {
                Deposit::Conflict
            });
        }
        let used: i64 = tx
            .query_row(
                "SELECT coalesce(sum(size), 0) FROM cached_mail WHERE recipient = ?1",
                [&recipient],
                |r| r.get(0),
            )
            .map_err(cache_error)?;
        let size = mail.sealed.len() as u64;
        if (used.max(0) as u64).saturating_add(size) > quota_bytes {
            return Ok(Deposit::QuotaExceeded);
        }
        tx.execute(
            "INSERT INTO cached_mail
                (recipient, message_id, sender, sealed, size, deposited_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                recipient,
                id,
                mail.sender.to_string(),
                mail.sealed,
                size as i64,
                millis(mail.deposited_at),
                millis(mail.expires_at),
            ],
        )
        .map_err(cache_error)?;
        tx.commit().map_err(cache_error)?;
        Ok(Deposit::Stored)
    }

    fn waiting(&self, recipient: &Address) -> Result<Vec<WaitingMail>, peermail_signaling::Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT message_id, sender, size, deposited_at FROM cached_mail
                 WHERE recipient = ?1 ORDER BY deposited_at, message_id",
            )
            .map_err(cache_error)?;
        let rows = stmt
            .query_map([recipient.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(cache_error)?;
        let mut items = Vec::new();
        for row in rows {
            let (id, sender, size, at) = row.map_err(cache_error)?;
            items.push(WaitingMail {
                message_id: message_id(&id)?,
                from: address(&sender)?,
                size: size.max(0) as u64,
                deposited_at: at.max(0) as Millis,
                location: MailLocation::Relay,
            });
        }
        Ok(items)
    }

    fn fetch(
        &self,
        recipient: &Address,
        id: &MessageId,
    ) -> Result<Option<CachedMail>, peermail_signaling::Error> {
        let row: Option<(String, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT sender, sealed FROM cached_mail WHERE recipient = ?1 AND message_id = ?2",
                params![recipient.to_string(), id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(cache_error)?;
        match row {
            None => Ok(None),
            Some((sender, sealed)) => Ok(Some(CachedMail {
                sender: address(&sender)?,
                sealed,
            })),
        }
    }

    fn release(
        &self,
        recipient: &Address,
        id: &MessageId,
        now: Millis,
    ) -> Result<Option<Address>, peermail_signaling::Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(cache_error)?;
        let recipient_text = recipient.to_string();
        let sender: Option<String> = tx
            .query_row(
                "DELETE FROM cached_mail WHERE recipient = ?1 AND message_id = ?2 RETURNING sender",
                params![recipient_text, id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(cache_error)?;
        let Some(sender) = sender else {
            return Ok(None);
        };
        tx.execute(
            "INSERT OR REPLACE INTO receipts (sender, recipient, message_id, outcome, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                sender,
                recipient_text,
                id.as_str(),
                outcome_text(ReceiptOutcome::Delivered),
                millis(now)
            ],
        )
        .map_err(cache_error)?;
        tx.commit().map_err(cache_error)?;
        Ok(Some(address(&sender)?))
    }

    fn receipts(&self, sender: &Address) -> Result<Vec<Receipt>, peermail_signaling::Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT recipient, message_id, outcome FROM receipts
                 WHERE sender = ?1 ORDER BY created_at, recipient, message_id",
            )
            .map_err(cache_error)?;
        let rows = stmt
            .query_map([sender.to_string()], |r| {
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

    fn ack_receipt(
        &self,
        sender: &Address,
        recipient: &Address,
        id: &MessageId,
    ) -> Result<(), peermail_signaling::Error> {
        self.conn()
            .execute(
                "DELETE FROM receipts WHERE sender = ?1 AND recipient = ?2 AND message_id = ?3",
                params![sender.to_string(), recipient.to_string(), id.as_str()],
            )
            .map_err(cache_error)?;
        Ok(())
    }

    fn expire(&self, now: Millis) -> Result<Vec<Receipt>, peermail_signaling::Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(cache_error)?;
        let expired: Vec<(String, String, String)> = {
            let mut stmt = tx
                .prepare(
                    "DELETE FROM cached_mail WHERE expires_at <= ?1
                     RETURNING sender, recipient, message_id",
                )
                .map_err(cache_error)?;
            let rows = stmt
                .query_map([millis(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(cache_error)?;
            rows.collect::<Result<_, _>>().map_err(cache_error)?
        };
        for (sender, recipient, id) in &expired {
            tx.execute(
                "INSERT OR REPLACE INTO receipts (sender, recipient, message_id, outcome, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sender,
                    recipient,
                    id,
                    outcome_text(ReceiptOutcome::Expired),
                    millis(now)
                ],
            )
            .map_err(cache_error)?;
        }
        tx.commit().map_err(cache_error)?;
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
}
