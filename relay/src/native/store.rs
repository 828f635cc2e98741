//! Where a native node keeps its mailbox: in memory, or in a directory.
//!
//! [`NativeStore::Memory`] is core's [`MemoryStore`]. [`NativeStore::File`] is a
//! [`FileStore`]: a simple durable store for an always-on node —
//!
//! - `identity.json`: the account's keys;
//! - `mailbox.json`: every record of the snapshot (inbox, outgoing, contacts, keys, held
//!   copies, download records, address-book groups, deleted mail's Message-IDs), rewritten
//!   whole after each change;
//! - `chunks/<attachment id>/<index>`: one file per encrypted attachment chunk, and
//!   `chunks/<attachment id>/list` its chunk list (32-byte hashes, concatenated). Chunks are
//!   read from disk when served, never kept in memory.
//!
//! Every file is written to a temporary name, flushed to disk (`fsync`), renamed over the
//! old one, and the directory is flushed: a write that returned `Ok` survives a crash, so
//! the node's rule "no acknowledgement before durability" holds. Rewriting the whole
//! mailbox per change is fine for a personal node's mailbox, not for a large one.
//!
//! The I/O is blocking: the store runs on the node's own thread (see `driver.rs`), where
//! nothing else waits on it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use peermail_core::attach::{AttachmentId, Hash};
use peermail_core::groups::Group;
use peermail_core::identity::Identity;
use peermail_core::store::{
    DeletedMail, DownloadRecord, HeldMail, InboxRecord, KnownKeys, MailStore, MemoryStore,
    OutgoingMail, Snapshot, StoreError, StoreWrite,
};
use peermail_core::Address;
use serde::{Deserialize, Serialize};

/// The store of a native node (see the module docs).
#[derive(Debug)]
pub enum NativeStore {
    Memory(MemoryStore),
    File(FileStore),
}

impl NativeStore {
    /// A stored chunk.
    pub fn chunk(&self, attachment: AttachmentId, index: u32) -> Option<Vec<u8>> {
        match self {
            NativeStore::Memory(m) => m.chunk(attachment, index),
            NativeStore::File(f) => f.chunk(attachment, index),
        }
    }

    /// The chunk list of an attachment this node has whole.
    pub fn chunk_list(&self, attachment: AttachmentId) -> Option<Vec<Hash>> {
        match self {
            NativeStore::Memory(m) => m.chunk_list(attachment),
            NativeStore::File(f) => f.chunk_list(attachment),
        }
    }

    /// Applies a write at once.
    pub fn apply_now(&self, write: StoreWrite) -> Result<(), StoreError> {
        match self {
            NativeStore::Memory(m) => {
                m.apply_now(write);
                Ok(())
            }
            NativeStore::File(f) => f.apply_now(write),
        }
    }
}

impl MailStore for NativeStore {
    async fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        match self {
            NativeStore::Memory(m) => m.load_identity().await,
            NativeStore::File(f) => f.load_identity().await,
        }
    }
    async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        match self {
            NativeStore::Memory(m) => m.save_identity(identity).await,
            NativeStore::File(f) => f.save_identity(identity).await,
        }
    }
    async fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            NativeStore::Memory(m) => m.load().await,
            NativeStore::File(f) => f.load().await,
        }
    }
    async fn apply(&self, write: StoreWrite) -> Result<(), StoreError> {
        self.apply_now(write)
    }
    async fn read_chunk(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.chunk(attachment, index))
    }
    async fn read_chunk_list(
        &self,
        attachment: AttachmentId,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        Ok(self.chunk_list(attachment))
    }
}

/// The mailbox records as `mailbox.json` holds them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mailbox {
    inbox: Vec<InboxRecord>,
    outgoing: Vec<OutgoingMail>,
    contacts: Vec<Address>,
    keys: Vec<KnownKeys>,
    held: Vec<HeldMail>,
    downloads: Vec<DownloadRecord>,
    #[serde(default)]
    groups: Vec<Group>,
    #[serde(default)]
    deleted: Vec<DeletedMail>,
}

/// A directory-backed store (see the module docs).
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// The mailbox records (not the chunks), as last written.
    records: MemoryStore,
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {}: {e}", path.display()))
}

impl FileStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let chunks = dir.join("chunks");
        fs::create_dir_all(&chunks).map_err(|e| err("creating", &chunks, e))?;
        let records = MemoryStore::new();
        let path = dir.join("mailbox.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let m: Mailbox =
                    serde_json::from_slice(&bytes).map_err(|e| err("reading", &path, e))?;
                // A deletion record alone: nothing else in the file has its Message-ID in
                // the folders it names.
                let deleted = m.deleted.into_iter().map(|deleted| StoreWrite::DeleteMail {
                    deleted,
                    attachments: Vec::new(),
                });
                let writes = deleted
                    .chain(m.inbox.into_iter().map(StoreWrite::PutInbox))
                    .chain(
                        m.outgoing
                            .into_iter()
                            .map(|o| StoreWrite::PutOutgoing(Box::new(o))),
                    )
                    .chain(m.contacts.into_iter().map(StoreWrite::PutContact))
                    .chain(m.keys.into_iter().map(StoreWrite::PutKeys))
                    .chain(m.held.into_iter().map(StoreWrite::PutHeld))
                    .chain(
                        m.downloads
                            .into_iter()
                            .map(|d| StoreWrite::PutDownload(Box::new(d))),
                    )
                    .chain(m.groups.into_iter().map(StoreWrite::PutGroup));
                for w in writes {
                    records.apply_now(w);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("reading", &path, e)),
        }
        Ok(FileStore { dir, records })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_dir(&self, attachment: AttachmentId) -> PathBuf {
        self.dir.join("chunks").join(attachment.to_hex())
    }

    /// A stored chunk, read from disk.
    pub fn chunk(&self, attachment: AttachmentId, index: u32) -> Option<Vec<u8>> {
        fs::read(self.chunk_dir(attachment).join(index.to_string())).ok()
    }

    /// A stored chunk list, read from disk.
    pub fn chunk_list(&self, attachment: AttachmentId) -> Option<Vec<Hash>> {
        let bytes = fs::read(self.chunk_dir(attachment).join("list")).ok()?;
        peermail_core::attach::hashes_from_bytes(&bytes)
    }

    /// Applies a write durably.
    pub fn apply_now(&self, write: StoreWrite) -> Result<(), StoreError> {
        match write {
            StoreWrite::PutChunk {
                attachment,
                index,
                data,
            } => {
                let dir = self.chunk_dir(attachment);
                fs::create_dir_all(&dir).map_err(|e| err("creating", &dir, e))?;
                write_durably(&dir.join(index.to_string()), &data)
            }
            StoreWrite::PutChunkList { attachment, hashes } => {
                let dir = self.chunk_dir(attachment);
                fs::create_dir_all(&dir).map_err(|e| err("creating", &dir, e))?;
                write_durably(&dir.join("list"), &hashes.concat())
            }
            StoreWrite::DeleteMail {
                deleted,
                attachments,
            } => {
                // The records first: a crash before the files are gone leaves files
                // nothing refers to, never a record whose files are missing.
                self.records.apply_now(StoreWrite::DeleteMail {
                    deleted,
                    attachments: attachments.clone(),
                });
                self.save_mailbox()?;
                for a in attachments {
                    let dir = self.chunk_dir(a);
                    match fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(err("deleting", &dir, e))
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            other => {
                self.records.apply_now(other);
                self.save_mailbox()
            }
        }
    }

    fn save_mailbox(&self) -> Result<(), StoreError> {
        let s = self.records.snapshot();
        let m = Mailbox {
            inbox: s.inbox,
            outgoing: s.outgoing,
            contacts: s.contacts,
            keys: s.keys,
            held: s.held,
            downloads: s.downloads,
            groups: s.groups,
            deleted: s.deleted,
        };
        let path = self.dir.join("mailbox.json");
        let json = serde_json::to_vec(&m).map_err(|e| err("encoding", &path, e))?;
        write_durably(&path, &json)
    }
}

/// Writes `bytes` to `path` so that it is either the old or the new content after a crash,
/// and on disk when this returns `Ok`.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| err("writing", path, e))
}

impl MailStore for FileStore {
    async fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let path = self.dir.join("identity.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err("reading", &path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("reading", &path, e)),
        }
    }
    async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        let path = self.dir.join("identity.json");
        let json = serde_json::to_vec(identity).map_err(|e| err("encoding", &path, e))?;
        write_durably(&path, &json)
    }
    async fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.records.snapshot())
    }
    async fn apply(&self, write: StoreWrite) -> Result<(), StoreError> {
        self.apply_now(write)
    }
    async fn read_chunk(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.chunk(attachment, index))
    }
    async fn read_chunk_list(
        &self,
        attachment: AttachmentId,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        Ok(self.chunk_list(attachment))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file store in a temporary directory removed with it.
    struct TempStore(FileStore, #[allow(dead_code)] tempfile::TempDir);

    impl MailStore for TempStore {
        async fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
            self.0.load_identity().await
        }
        async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
            self.0.save_identity(identity).await
        }
        async fn load(&self) -> Result<Snapshot, StoreError> {
            self.0.load().await
        }
        async fn apply(&self, write: StoreWrite) -> Result<(), StoreError> {
            self.0.apply(write).await
        }
        async fn read_chunk(
            &self,
            attachment: AttachmentId,
            index: u32,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.read_chunk(attachment, index).await
        }
        async fn read_chunk_list(
            &self,
            attachment: AttachmentId,
        ) -> Result<Option<Vec<Hash>>, StoreError> {
            self.0.read_chunk_list(attachment).await
        }
    }

    async fn fresh() -> TempStore {
        let dir = tempfile::tempdir().unwrap();
        TempStore(FileStore::open(dir.path()).unwrap(), dir)
    }

    peermail_core::store_conformance_tests!(tokio::test, fresh());

    #[tokio::test]
    async fn reopened_store_has_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let alice: Address = "alice@h".parse().unwrap();
        let id = Identity::from_seed(alice.clone(), [7; 32]);
        let att = AttachmentId([9; 16]);
        let gone = AttachmentId([8; 16]);
        let group = Group::new("Team", vec![alice.clone()]).unwrap();
        let deleted = DeletedMail {
            message_id: peermail_core::MessageId::new([3; 16], "h"),
            received: true,
            sent: false,
            at: 5,
            untold: None,
            on_node: vec![],
        };
        {
            let s = FileStore::open(dir.path()).unwrap();
            s.save_identity(&id).await.unwrap();
            s.apply(StoreWrite::PutContact(alice.clone()))
                .await
                .unwrap();
            s.apply(StoreWrite::PutChunk {
                attachment: att,
                index: 3,
                data: vec![1, 2, 3],
            })
            .await
            .unwrap();
            s.apply(StoreWrite::PutChunkList {
                attachment: att,
                hashes: vec![[5; 32], [6; 32]],
            })
            .await
            .unwrap();
            s.apply(StoreWrite::PutGroup(group.clone())).await.unwrap();
            s.apply(StoreWrite::PutChunk {
                attachment: gone,
                index: 0,
                data: vec![4],
            })
            .await
            .unwrap();
            s.apply(StoreWrite::DeleteMail {
                deleted: deleted.clone(),
                attachments: vec![gone],
            })
            .await
            .unwrap();
        }
        let s = FileStore::open(dir.path()).unwrap();
        let back = s.load_identity().await.unwrap().expect("identity kept");
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(s.load().await.unwrap().contacts, vec![alice]);
        assert_eq!(s.chunk(att, 3), Some(vec![1, 2, 3]));
        assert_eq!(s.chunk(att, 4), None);
        assert_eq!(s.chunk_list(att), Some(vec![[5; 32], [6; 32]]));
        let snap = s.load().await.unwrap();
        assert_eq!(snap.groups, vec![group]);
        assert_eq!(snap.deleted, vec![deleted]);
        assert_eq!(s.chunk(gone, 0), None);
        assert!(!dir.path().join("chunks").join(gone.to_hex()).exists());
    }
}
