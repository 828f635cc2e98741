//! [`IdbStore`]: the [`MailStore`] contract on the browser's IndexedDB.
//!
//! One database per account store, object stores with out-of-line keys:
//!
//! | object store | key | value |
//! | --- | --- | --- |
//! | `identity` | `"me"` | the [`Identity`] as JSON |
//! | `inbox` | Message-ID | an [`InboxRecord`] as JSON |
//! | `outgoing` | Message-ID | an [`OutgoingMail`] as JSON |
//! | `contacts` | address | the address as JSON |
//! | `keys` | address | the [`KnownKeys`] seen for it as JSON (since version 2) |
//! | `held` | `"<Message-ID> <recipient>"` | a [`HeldMail`] this node holds for a co-recipient, as JSON (since version 3) |
//! | `downloads` | attachment id (hex) | a [`DownloadRecord`] of a received attachment, as JSON (since version 4) |
//! | `chunks` | `"<attachment id hex>/<index, 10 digits>"` | one encrypted chunk, as a Blob (versions 4 and 5; since version 6 only read and deleted, see [`crate::chunks`]) |
//! | `segments` | `"<attachment id hex>/<first index, 10 digits>"` | the encrypted chunks of 16 consecutive indices that are stored, as one Blob with their indices and offsets (since version 6; see [`crate::chunks`]) |
//! | `chunk_lists` | attachment id (hex) | the chunk list of an attachment this node has whole (sent, or received and verified): the SHA-256 hashes concatenated, as a `Uint8Array` (since version 4) |
//! | `groups` | the group's key (its name, lower-case) | an address-book [`Group`] as JSON (since version 5) |
//! | `deleted` | Message-ID | a [`DeletedMail`]: a mail the person deleted, as JSON (since version 7) |
//! | `draft_files` | `"<draft id>/<file key, 20 digits>"` | a file attached to a draft being written: `{ file: File, kept_at: <ms since the epoch> }` (since version 8; see [`crate::draft`]) |
//!
//! The mailbox's values are JSON strings (the `serde` forms `core` already defines), so
//! the browser never needs to understand them and a schema change is a change of `core`
//! types, not of IndexedDB.
//! Schema changes to the object stores themselves go in `upgrade`, keyed by version.

use indexed_db_futures::database::{Database, VersionChangeEvent};
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use peermail_core::attach::{AttachmentId, Hash};
use peermail_core::groups::{group_key, Group};
use peermail_core::identity::Identity;
use peermail_core::store::{
    DeletedMail, DownloadRecord, HeldMail, InboxRecord, KnownKeys, MailStore, OutgoingMail,
    Snapshot, StoreError, StoreWrite,
};
use peermail_core::Address;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current schema version (see `upgrade`).
pub const SCHEMA_VERSION: u32 = 8;

const IDENTITY: &str = "identity";
const INBOX: &str = "inbox";
const OUTGOING: &str = "outgoing";
const CONTACTS: &str = "contacts";
const KEYS: &str = "keys";
const HELD: &str = "held";
const DOWNLOADS: &str = "downloads";
const GROUPS: &str = "groups";
const DELETED: &str = "deleted";
/// Files attached to drafts ([`crate::draft`]).
pub const DRAFT_FILES: &str = "draft_files";
/// Encrypted attachment chunks, one per record (schema 4 and 5; read, no longer written).
pub const CHUNKS: &str = "chunks";
/// Encrypted attachment chunks, 16 consecutive indices per record; see [`crate::chunks`].
pub const SEGMENTS: &str = "segments";
/// Chunk lists of attachments this node has whole.
pub const CHUNK_LISTS: &str = "chunk_lists";
const IDENTITY_KEY: &str = "me";

/// The IndexedDB-backed store. Cheap to share behind an `Rc`.
#[derive(Debug)]
pub struct IdbStore {
    /// The open database connection.
    db: Database,
}

/// The string keys that start with `prefix` followed by `/` (`'0'` follows `'/'`): the
/// records of one attachment, or of one draft.
pub(crate) fn prefix_range(prefix: &str) -> indexed_db_futures::KeyRange<String> {
    (format!("{prefix}/")..format!("{prefix}0")).into()
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(err)
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(err)
}

/// Brings the object stores from `old` to [`SCHEMA_VERSION`], one step per version.
fn upgrade(event: &VersionChangeEvent, db: &Database) -> indexed_db_futures::Result<()> {
    let old = event.old_version() as u64;
    if old < 1 {
        for name in [IDENTITY, INBOX, OUTGOING, CONTACTS] {
            db.create_object_store(name).build()?;
        }
    }
    if old < 2 {
        db.create_object_store(KEYS).build()?;
    }
    if old < 3 {
        db.create_object_store(HELD).build()?;
    }
    if old < 4 {
        for name in [DOWNLOADS, CHUNKS, CHUNK_LISTS] {
            db.create_object_store(name).build()?;
        }
    }
    if old < 5 {
        db.create_object_store(GROUPS).build()?;
    }
    if old < 6 {
        db.create_object_store(SEGMENTS).build()?;
    }
    if old < 7 {
        db.create_object_store(DELETED).build()?;
    }
    if old < 8 {
        db.create_object_store(DRAFT_FILES).build()?;
    }
    Ok(())
}

impl IdbStore {
    /// The open database, for the attachment chunk store that shares it.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Opens (creating or upgrading as needed) the database `db_name`.
    pub async fn open(db_name: &str) -> Result<IdbStore, StoreError> {
        Self::open_or_wait(db_name, || ()).await
    }

    /// [`open`](Self::open), calling `on_blocked` if the upgrade has to wait for another
    /// connection to close (a tab still running an older version of the app); the open
    /// then completes once that connection is gone.
    pub async fn open_or_wait(
        db_name: &str,
        on_blocked: impl FnOnce() + 'static,
    ) -> Result<IdbStore, StoreError> {
        let db = Database::open(db_name)
            .with_version(SCHEMA_VERSION)
            .with_on_blocked(move |_| {
                on_blocked();
                Ok(())
            })
            .with_on_upgrade_needed(|event, db| upgrade(&event, &db))
            .await
            .map_err(err)?;
        Ok(IdbStore { db })
    }

    /// Gives way to a newer version of the app: when another tab opens `db_name` with a
    /// newer schema, this store's connection is closed (so that the upgrade is not held up)
    /// and `on_upgrade` is called once. Works through a second connection of its own, which
    /// only listens for `versionchange`.
    pub fn close_on_upgrade(
        &self,
        db_name: &str,
        on_upgrade: impl FnOnce() + 'static,
    ) -> Result<(), StoreError> {
        use wasm_bindgen::closure::Closure;
        use wasm_bindgen::JsCast;
        let factory = web_sys::window()
            .ok_or_else(|| StoreError("no window".into()))?
            .indexed_db()
            .map_err(|e| StoreError(format!("{e:?}")))?
            .ok_or_else(|| StoreError("IndexedDB is not available".into()))?;
        let request = factory
            .open(db_name)
            .map_err(|e| StoreError(format!("{e:?}")))?;
        let db = self.db.clone();
        let mut on_upgrade = Some(on_upgrade);
        let req = request.clone();
        let on_open = Closure::once(move || {
            let Ok(watcher) = req
                .result()
                .and_then(|r| r.dyn_into::<web_sys::IdbDatabase>())
            else {
                return;
            };
            let w = watcher.clone();
            let on_change = Closure::<dyn FnMut()>::new(move || {
                w.close();
                db.clone().close();
                if let Some(f) = on_upgrade.take() {
                    f();
                }
            });
            watcher.set_onversionchange(Some(on_change.as_ref().unchecked_ref()));
            // Lives as long as the page: one per store.
            on_change.forget();
        });
        request.set_onsuccess(Some(on_open.as_ref().unchecked_ref()));
        on_open.forget();
        Ok(())
    }

    /// Upserts one JSON value under `key` in `store`, committing before returning.
    async fn put(&self, store: &str, key: &str, json: String) -> Result<(), StoreError> {
        let tx = self
            .db
            .transaction(store)
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(err)?;
        let os = tx.object_store(store).map_err(err)?;
        os.put(json)
            .with_key(key.to_string())
            .primitive()
            .map_err(err)?
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn delete(&self, store: &str, key: &str) -> Result<(), StoreError> {
        let tx = self
            .db
            .transaction(store)
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(err)?;
        let os = tx.object_store(store).map_err(err)?;
        os.delete(key.to_string())
            .primitive()
            .map_err(err)?
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }
}

impl MailStore for IdbStore {
    async fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let tx = self.db.transaction(IDENTITY).build().map_err(err)?;
        let os = tx.object_store(IDENTITY).map_err(err)?;
        let v: Option<String> = os
            .get(IDENTITY_KEY.to_string())
            .primitive()
            .map_err(err)?
            .await
            .map_err(err)?;
        v.as_deref().map(from_json).transpose()
    }

    async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        self.put(IDENTITY, IDENTITY_KEY, to_json(identity)?).await
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let tx = self
            .db
            .transaction([
                INBOX, OUTGOING, CONTACTS, KEYS, HELD, DOWNLOADS, GROUPS, DELETED,
            ])
            .build()
            .map_err(err)?;
        let mut snap = Snapshot::default();
        for s in all_values(&tx.object_store(INBOX).map_err(err)?).await? {
            snap.inbox.push(from_json::<InboxRecord>(&s)?);
        }
        for s in all_values(&tx.object_store(OUTGOING).map_err(err)?).await? {
            snap.outgoing.push(from_json::<OutgoingMail>(&s)?);
        }
        for s in all_values(&tx.object_store(CONTACTS).map_err(err)?).await? {
            snap.contacts.push(from_json::<Address>(&s)?);
        }
        for s in all_values(&tx.object_store(KEYS).map_err(err)?).await? {
            snap.keys.push(from_json::<KnownKeys>(&s)?);
        }
        for s in all_values(&tx.object_store(HELD).map_err(err)?).await? {
            snap.held.push(from_json::<HeldMail>(&s)?);
        }
        for s in all_values(&tx.object_store(DOWNLOADS).map_err(err)?).await? {
            snap.downloads.push(from_json::<DownloadRecord>(&s)?);
        }
        for s in all_values(&tx.object_store(GROUPS).map_err(err)?).await? {
            snap.groups.push(from_json::<Group>(&s)?);
        }
        for s in all_values(&tx.object_store(DELETED).map_err(err)?).await? {
            snap.deleted.push(from_json::<DeletedMail>(&s)?);
        }
        Ok(snap)
    }

    async fn apply(&self, write: StoreWrite) -> Result<(), StoreError> {
        match write {
            StoreWrite::PutInbox(r) => {
                self.put(INBOX, r.mail.message_id.as_str(), to_json(&r)?)
                    .await
            }
            StoreWrite::PutOutgoing(o) => {
                self.put(OUTGOING, o.mail.message_id.as_str(), to_json(&o)?)
                    .await
            }
            StoreWrite::PutContact(a) => self.put(CONTACTS, &a.to_string(), to_json(&a)?).await,
            StoreWrite::RemoveContact(a) => self.delete(CONTACTS, &a.to_string()).await,
            StoreWrite::PutGroup(g) => self.put(GROUPS, &g.key(), to_json(&g)?).await,
            StoreWrite::RemoveGroup(name) => self.delete(GROUPS, &group_key(&name)).await,
            StoreWrite::PutKeys(k) => self.put(KEYS, &k.address.to_string(), to_json(&k)?).await,
            StoreWrite::PutHeld(h) => {
                self.put(HELD, &held_key(&h.message_id, &h.to), to_json(&h)?)
                    .await
            }
            StoreWrite::RemoveHeld { message_id, to } => {
                self.delete(HELD, &held_key(&message_id, &to)).await
            }
            StoreWrite::PutDownload(d) => {
                self.put(DOWNLOADS, &d.attachment.id.to_hex(), to_json(&d)?)
                    .await
            }
            StoreWrite::PutChunk {
                attachment,
                index,
                data,
            } => {
                self.put_chunks_and_records(&[(attachment, index, &data)], &[])
                    .await
            }
            StoreWrite::PutChunkList { attachment, hashes } => {
                crate::chunks::put_chunk_list(&self.db, attachment, &hashes)
                    .await
                    .map_err(StoreError)
            }
            StoreWrite::DeleteMail {
                deleted,
                attachments,
            } => self.delete_mail(&deleted, &attachments).await,
        }
    }

    async fn read_chunk(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        crate::chunks::get_chunk(&self.db, attachment, index)
            .await
            .map_err(StoreError)
    }

    async fn read_chunk_list(
        &self,
        attachment: AttachmentId,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        crate::chunks::get_chunk_list(&self.db, attachment)
            .await
            .map_err(StoreError)
    }
}

/// Key of an encrypted chunk: the attachment id and the index, zero-padded so keys sort in
/// chunk order.
pub fn chunk_key(attachment: AttachmentId, index: u32) -> String {
    format!("{}/{index:010}", attachment.to_hex())
}

impl IdbStore {
    /// Stores encrypted chunks (into their segments, see [`crate::chunks`]) and download
    /// records in ONE transaction (committed before this returns): the driver writes a
    /// received segment with its download record ([`crate::held`]).
    pub async fn put_chunks_and_records(
        &self,
        chunks: &[(AttachmentId, u32, &[u8])],
        records: &[DownloadRecord],
    ) -> Result<(), StoreError> {
        let records = records
            .iter()
            .map(|r| Ok((r.attachment.id.to_hex(), to_json(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let tx = self
            .db
            .transaction([SEGMENTS, DOWNLOADS])
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(err)?;
        let os = tx.object_store(DOWNLOADS).map_err(err)?;
        for (key, json) in records {
            os.put(json).with_key(key).primitive().map_err(err)?;
        }
        let os = tx.object_store(SEGMENTS).map_err(err)?;
        crate::chunks::put_in_segments(&os, chunks)
            .await
            .map_err(StoreError)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    /// Chunk `index` of `attachment` and the other chunks stored in its segment, in index
    /// order, read at once; empty if chunk `index` is not stored
    /// ([`crate::chunks::get_segment`]).
    pub async fn read_segment(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        crate::chunks::get_segment(&self.db, attachment, index)
            .await
            .map_err(StoreError)
    }
}

impl IdbStore {
    /// [`StoreWrite::DeleteMail`] in one transaction.
    async fn delete_mail(
        &self,
        deleted: &DeletedMail,
        attachments: &[AttachmentId],
    ) -> Result<(), StoreError> {
        use crate::chunks::chunk_range;
        let id = deleted.message_id.as_str().to_string();
        let json = to_json(deleted)?;
        let tx = self
            .db
            .transaction([
                INBOX,
                OUTGOING,
                DOWNLOADS,
                SEGMENTS,
                CHUNKS,
                CHUNK_LISTS,
                DELETED,
            ])
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(err)?;
        for (folder, from) in [(INBOX, deleted.received), (OUTGOING, deleted.sent)] {
            if from {
                let os = tx.object_store(folder).map_err(err)?;
                os.delete(id.clone())
                    .primitive()
                    .map_err(err)?
                    .await
                    .map_err(err)?;
            }
        }
        let downloads = tx.object_store(DOWNLOADS).map_err(err)?;
        let segments = tx.object_store(SEGMENTS).map_err(err)?;
        let chunks = tx.object_store(CHUNKS).map_err(err)?;
        let lists = tx.object_store(CHUNK_LISTS).map_err(err)?;
        for a in attachments {
            for os in [&downloads, &lists] {
                os.delete(a.to_hex())
                    .primitive()
                    .map_err(err)?
                    .await
                    .map_err(err)?;
            }
            for os in [&segments, &chunks] {
                os.delete::<String, _>(chunk_range(*a))
                    .primitive()
                    .map_err(err)?
                    .await
                    .map_err(err)?;
            }
        }
        let os = tx.object_store(DELETED).map_err(err)?;
        os.put(json)
            .with_key(id)
            .primitive()
            .map_err(err)?
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }
}

/// Key of a held copy: a Message-ID and an address contain no space.
fn held_key(message_id: &peermail_core::MessageId, to: &Address) -> String {
    format!("{message_id} {to}")
}

async fn all_values(
    os: &indexed_db_futures::object_store::ObjectStore<'_>,
) -> Result<Vec<String>, StoreError> {
    let iter = os
        .get_all::<String>()
        .primitive()
        .map_err(err)?
        .await
        .map_err(err)?;
    iter.map(|r| r.map_err(err)).collect()
}
