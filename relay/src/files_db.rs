//! [`FileCache`] on the relay's SQLite database: attachment files kept for offline
//! recipients (tables `kept_files` and `kept_chunks`, schema version 4). It uses the
//! directory's connection, not the mail cache's writer: files are rare next to envelopes,
//! and each chunk is committed on its own (WAL, `synchronous=NORMAL`, like envelopes)
//! before it is acknowledged.

use peermail_core::address::Address;
use peermail_core::attach::{cipher_size, hashes_from_bytes, AttachmentId, Hash};
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::FileItem;
use peermail_signaling::files::{
    chunk_matches, missing_ranges, ChunkDeposit, Chunks, FileCache, FileDeposit, KeptFile, NewFile,
};
use rusqlite::{params, OptionalExtension};

use crate::db::Db;

type Answer<T> = Result<T, peermail_signaling::Error>;

fn err(e: rusqlite::Error) -> peermail_signaling::Error {
    peermail_signaling::Error::Cache(e.to_string())
}

fn millis(v: Millis) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A kept file's row: sender, plaintext size, chunk list.
type FileRow = (String, u64, Vec<Hash>);

/// The row of `recipient`'s file `attachment`, if there is one.
fn file_row(
    conn: &rusqlite::Connection,
    recipient: &Address,
    attachment: AttachmentId,
) -> Answer<Option<FileRow>> {
    let row = conn
        .prepare_cached(
            "SELECT sender, size, hashes FROM kept_files WHERE recipient = ?1 AND attachment = ?2",
        )
        .map_err(err)?
        .query_row(params![recipient.to_string(), attachment.to_hex()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })
        .optional()
        .map_err(err)?;
    row.map(|(sender, size, hashes)| {
        let hashes = hashes_from_bytes(&hashes)
            .ok_or_else(|| peermail_signaling::Error::Cache("a stored chunk list is cut".into()))?;
        Ok((sender, size as u64, hashes))
    })
    .transpose()
}

/// The indices of the chunks of `recipient`'s file `attachment` that are there, in order.
fn held_chunks(
    conn: &rusqlite::Connection,
    recipient: &Address,
    attachment: AttachmentId,
) -> Answer<Vec<u32>> {
    conn.prepare_cached(
        "SELECT idx FROM kept_chunks WHERE recipient = ?1 AND attachment = ?2 ORDER BY idx",
    )
    .map_err(err)?
    .query_map(params![recipient.to_string(), attachment.to_hex()], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(err)?
    .map(|i| i.map(|i| i as u32).map_err(err))
    .collect()
}

/// The whole file's row: `None` if there is no such file or a chunk is missing.
fn whole_file(
    conn: &rusqlite::Connection,
    recipient: &Address,
    attachment: AttachmentId,
) -> Answer<Option<FileRow>> {
    let Some(row) = file_row(conn, recipient, attachment)? else {
        return Ok(None);
    };
    let held: i64 = conn
        .prepare_cached("SELECT count(*) FROM kept_chunks WHERE recipient = ?1 AND attachment = ?2")
        .map_err(err)?
        .query_row(params![recipient.to_string(), attachment.to_hex()], |r| {
            r.get(0)
        })
        .map_err(err)?;
    Ok((held as usize == row.2.len()).then_some(row))
}

impl FileCache for Db {
    fn kept_for(&self, recipient: &Address) -> Answer<Vec<FileItem>> {
        let conn = self.directory_conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT f.attachment, f.message_id, f.sender, f.size, length(f.hashes) / 32,
                        (SELECT count(*) FROM kept_chunks c
                         WHERE c.recipient = f.recipient AND c.attachment = f.attachment)
                 FROM kept_files f WHERE f.recipient = ?1 ORDER BY f.deposited_at",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([recipient.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (attachment, message_id, sender, size, count, held) = row.map_err(err)?;
            if held != count {
                continue;
            }
            let bad = |what: &str, v: &str| {
                peermail_signaling::Error::Cache(format!("bad stored {what} {v:?}"))
            };
            out.push(FileItem {
                attachment: AttachmentId::from_hex(&attachment)
                    .ok_or_else(|| bad("attachment id", &attachment))?,
                message_id: MessageId::parse(&message_id)
                    .ok_or_else(|| bad("message id", &message_id))?,
                from: sender.parse().map_err(|_| bad("address", &sender))?,
                size: size as u64,
            });
        }
        Ok(out)
    }

    fn deposit_file(&self, file: NewFile, quota_bytes: u64) -> Answer<FileDeposit> {
        let mut conn = self.directory_conn();
        let tx = conn.transaction().map_err(err)?;
        if let Some((sender, size, hashes)) = file_row(&tx, &file.recipient, file.attachment)? {
            if sender != file.sender.to_string() || size != file.size || hashes != file.hashes {
                return Ok(FileDeposit::Conflict);
            }
            let held = held_chunks(&tx, &file.recipient, file.attachment)?;
            let count = hashes.len() as u32;
            return Ok(FileDeposit::Accepted {
                missing: missing_ranges(count, |i| held.binary_search(&i).is_ok()),
            });
        }
        let used: u64 = tx
            .prepare_cached("SELECT size FROM kept_files WHERE recipient = ?1")
            .map_err(err)?
            .query_map(params![file.recipient.to_string()], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(err)?
            .map(|s| s.map(|s| cipher_size(s as u64)).map_err(err))
            .sum::<Answer<u64>>()?;
        if used + file.stored_bytes() > quota_bytes {
            return Ok(FileDeposit::QuotaExceeded);
        }
        tx.prepare_cached(
            "INSERT INTO kept_files (recipient, attachment, sender, message_id, size, hashes,
                 deposited_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(err)?
        .execute(params![
            file.recipient.to_string(),
            file.attachment.to_hex(),
            file.sender.to_string(),
            file.message_id.as_str(),
            file.size as i64,
            file.hashes.concat(),
            millis(file.deposited_at),
            millis(file.expires_at),
        ])
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(FileDeposit::Accepted {
            missing: missing_ranges(file.hashes.len() as u32, |_| false),
        })
    }

    fn deposit_chunk(
        &self,
        recipient: &Address,
        sender: &Address,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    ) -> Answer<ChunkDeposit> {
        let conn = self.directory_conn();
        let row = file_row(&conn, recipient, attachment)?;
        let Some((_, size, hashes)) = row.filter(|(s, _, _)| *s == sender.to_string()) else {
            return Ok(ChunkDeposit::NoSuchFile);
        };
        if !chunk_matches(size, &hashes, index, &data) {
            return Ok(ChunkDeposit::Mismatch);
        }
        conn.prepare_cached(
            "INSERT OR REPLACE INTO kept_chunks (recipient, attachment, idx, data)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(err)?
        .execute(params![
            recipient.to_string(),
            attachment.to_hex(),
            i64::from(index),
            data
        ])
        .map_err(err)?;
        Ok(ChunkDeposit::Stored)
    }

    fn file(&self, recipient: &Address, attachment: AttachmentId) -> Answer<Option<KeptFile>> {
        let conn = self.directory_conn();
        let Some((sender, size, hashes)) = whole_file(&conn, recipient, attachment)? else {
            return Ok(None);
        };
        let sender = sender.parse().map_err(|_| {
            peermail_signaling::Error::Cache(format!("bad stored address {sender:?}"))
        })?;
        Ok(Some(KeptFile {
            sender,
            size,
            hashes,
        }))
    }

    fn chunks(
        &self,
        recipient: &Address,
        attachment: AttachmentId,
        indices: &[u32],
    ) -> Answer<Option<Chunks>> {
        let conn = self.directory_conn();
        // Whether the file is whole is checked once for the whole request.
        if whole_file(&conn, recipient, attachment)?.is_none() {
            return Ok(None);
        }
        let mut read = conn
            .prepare_cached(
                "SELECT data FROM kept_chunks WHERE recipient = ?1 AND attachment = ?2 AND idx = ?3",
            )
            .map_err(err)?;
        let (r, a) = (recipient.to_string(), attachment.to_hex());
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            let data: Option<Vec<u8>> = read
                .query_row(params![r, a, i64::from(i)], |row| row.get(0))
                .optional()
                .map_err(err)?;
            out.extend(data.map(|d| (i, d)));
        }
        Ok(Some(out))
    }

    fn release_file(&self, recipient: &Address, attachment: AttachmentId) -> Answer<bool> {
        let n = self
            .directory_conn()
            .prepare_cached("DELETE FROM kept_files WHERE recipient = ?1 AND attachment = ?2")
            .map_err(err)?
            .execute(params![recipient.to_string(), attachment.to_hex()])
            .map_err(err)?;
        Ok(n > 0)
    }

    fn withdraw_files(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Answer<usize> {
        // Their chunks go with them (ON DELETE CASCADE).
        self.directory_conn()
            .prepare_cached(
                "DELETE FROM kept_files WHERE recipient = ?1 AND message_id = ?2 AND sender = ?3",
            )
            .map_err(err)?
            .execute(params![
                recipient.to_string(),
                message_id.as_str(),
                sender.to_string()
            ])
            .map_err(err)
    }

    fn expire_files(&self, now: Millis) -> Answer<usize> {
        self.directory_conn()
            .prepare_cached("DELETE FROM kept_files WHERE expires_at <= ?1")
            .map_err(err)?
            .execute(params![millis(now)])
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_files_conform_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::db::Db::open(dir.path()).unwrap();
            peermail_signaling::files::conformance::files_are_kept_checked_fetched_released_and_expired(&db);
            // A whole file left behind, read again after reopening.
            let (f, data) = peermail_signaling::files::conformance::file("dan@h", 9, 1, 1_000);
            use peermail_signaling::files::FileCache;
            db.deposit_file(f.clone(), u64::MAX).unwrap();
            for (i, d) in data.iter().enumerate() {
                db.deposit_chunk(&f.recipient, &f.sender, f.attachment, i as u32, d.clone())
                    .unwrap();
            }
        }
        let db = crate::db::Db::open(dir.path()).unwrap();
        use peermail_signaling::files::FileCache;
        let (f, data) = peermail_signaling::files::conformance::file("dan@h", 9, 1, 1_000);
        assert!(db.file(&f.recipient, f.attachment).unwrap().is_some());
        assert_eq!(
            db.chunks(&f.recipient, f.attachment, &[1]).unwrap(),
            Some(vec![(1, data[1].clone())])
        );
    }
}
