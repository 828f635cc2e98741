//! Attachment files the relay keeps for offline recipients: the encrypted chunks of a
//! sender's inline attachment (at most the relay's inline limit), deposited after the mail
//! that carries it, checked chunk by chunk against the chunk list the sender announced, and
//! fetched by the recipient once whole. Like envelopes they are opaque: the file's key
//! travels only inside the sealed mail.
//!
//! The relay implements [`FileCache`] over SQLite; [`MemoryFiles`] keeps files in memory.
//! Every implementation runs [`conformance`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use peermail_core::address::Address;
use peermail_core::attach::{cipher_len, cipher_size, sha256, AttachmentId, Hash, CHUNK_BYTES};
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::FileItem;

use crate::cache::{blocking, CacheFuture};
use crate::Error;

/// A file announced for a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub recipient: Address,
    pub attachment: AttachmentId,
    /// The authenticated account that announced it.
    pub sender: Address,
    pub message_id: MessageId,
    /// Plaintext size; the chunks are this plus 16 bytes per chunk.
    pub size: u64,
    /// The chunk list: SHA-256 of each encrypted chunk.
    pub hashes: Vec<Hash>,
    pub deposited_at: Millis,
    /// The sweep deletes it from this instant on.
    pub expires_at: Millis,
}

impl NewFile {
    /// Bytes the file takes once whole.
    pub fn stored_bytes(&self) -> u64 {
        cipher_size(self.size)
    }
}

/// What [`FileCache::deposit_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDeposit {
    /// Kept (or already kept, from the same sender with the same chunk list): these chunks
    /// (half-open ranges) are still missing.
    Accepted { missing: Vec<(u32, u32)> },
    /// The recipient's files would exceed the quota; nothing was kept.
    QuotaExceeded,
    /// Another sender, or another chunk list, already has this attachment id for this
    /// recipient; nothing changed.
    Conflict,
}

/// What [`FileCache::deposit_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkDeposit {
    /// Committed (or was already there).
    Stored,
    /// No such file announced by this sender for this recipient.
    NoSuchFile,
    /// The chunk is not the one the chunk list names (wrong index, size or hash).
    Mismatch,
}

/// Chunks of a file by index, as fetched.
pub type Chunks = Vec<(u32, Vec<u8>)>;

/// A whole file, as its recipient fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptFile {
    pub sender: Address,
    pub size: u64,
    pub hashes: Vec<Hash>,
}

/// Where files for offline recipients are kept. Every method answering a recipient is keyed
/// by the recipient: a session sees only files for its own account. The plain methods
/// block; sessions use the `*_async` forms (tokio's blocking pool by default).
pub trait FileCache: Send + Sync + 'static {
    /// Keeps `file` (its chunk list) unless the recipient's files would then exceed
    /// `quota_bytes`. Idempotent for the same sender and chunk list.
    fn deposit_file(&self, file: NewFile, quota_bytes: u64) -> Result<FileDeposit, Error>;
    /// Stores chunk `index` of `sender`'s file `attachment` for `recipient` after checking
    /// it against the chunk list. Returns once durable.
    fn deposit_chunk(
        &self,
        recipient: &Address,
        sender: &Address,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    ) -> Result<ChunkDeposit, Error>;
    /// The file `attachment` for `recipient`, once every chunk is there.
    fn file(
        &self,
        recipient: &Address,
        attachment: AttachmentId,
    ) -> Result<Option<KeptFile>, Error>;
    /// Chunks `indices` of the file for `recipient` (those that exist), once the file is
    /// whole; `None` before (or if there is no such file).
    fn chunks(
        &self,
        recipient: &Address,
        attachment: AttachmentId,
        indices: &[u32],
    ) -> Result<Option<Chunks>, Error>;
    /// Deletes the file for `recipient`; whether there was one.
    fn release_file(&self, recipient: &Address, attachment: AttachmentId) -> Result<bool, Error>;
    /// Deletes the files `sender` announced for `recipient` with mail `message_id` (the
    /// sender called the mail back); how many there were.
    fn withdraw_files(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<usize, Error>;
    /// The whole files kept for `recipient`, oldest first.
    fn kept_for(&self, recipient: &Address) -> Result<Vec<FileItem>, Error>;
    /// Deletes every file whose expiry is at or before `now`; how many.
    fn expire_files(&self, now: Millis) -> Result<usize, Error>;

    /// [`FileCache::deposit_file`], awaited.
    fn deposit_file_async(self: Arc<Self>, file: NewFile, quota: u64) -> CacheFuture<FileDeposit> {
        blocking(self, move |c| c.deposit_file(file, quota))
    }
    /// [`FileCache::deposit_chunk`], awaited.
    fn deposit_chunk_async(
        self: Arc<Self>,
        recipient: Address,
        sender: Address,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    ) -> CacheFuture<ChunkDeposit> {
        blocking(self, move |c| {
            c.deposit_chunk(&recipient, &sender, attachment, index, data)
        })
    }
    /// [`FileCache::file`], awaited.
    fn file_async(
        self: Arc<Self>,
        recipient: Address,
        attachment: AttachmentId,
    ) -> CacheFuture<Option<KeptFile>> {
        blocking(self, move |c| c.file(&recipient, attachment))
    }
    /// [`FileCache::chunks`], awaited.
    fn chunks_async(
        self: Arc<Self>,
        recipient: Address,
        attachment: AttachmentId,
        indices: Vec<u32>,
    ) -> CacheFuture<Option<Chunks>> {
        blocking(self, move |c| c.chunks(&recipient, attachment, &indices))
    }
    /// [`FileCache::kept_for`], awaited.
    fn kept_for_async(self: Arc<Self>, recipient: Address) -> CacheFuture<Vec<FileItem>> {
        blocking(self, move |c| c.kept_for(&recipient))
    }
    /// [`FileCache::withdraw_files`], awaited.
    fn withdraw_files_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<usize> {
        blocking(self, move |c| {
            c.withdraw_files(&sender, &recipient, &message_id)
        })
    }
    /// [`FileCache::release_file`], awaited.
    fn release_file_async(
        self: Arc<Self>,
        recipient: Address,
        attachment: AttachmentId,
    ) -> CacheFuture<bool> {
        blocking(self, move |c| c.release_file(&recipient, attachment))
    }
}

/// The chunks of a file not held yet, as half-open ranges.
pub fn missing_ranges(count: u32, held: impl Fn(u32) -> bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for i in (0..count).filter(|i| !held(*i)) {
        match out.last_mut() {
            Some((_, end)) if *end == i => *end += 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

/// Checks chunk `index` of a file against its size and chunk list.
pub fn chunk_matches(size: u64, hashes: &[Hash], index: u32, data: &[u8]) -> bool {
    cipher_len(size, index) == Some(data.len()) && hashes.get(index as usize) == Some(&sha256(data))
}

#[derive(Debug)]
struct MemFile {
    file: NewFile,
    chunks: BTreeMap<u32, Vec<u8>>,
}

/// Files in memory, lost when the process ends. For tests.
#[derive(Debug, Default)]
pub struct MemoryFiles {
    files: Mutex<BTreeMap<(Address, AttachmentId), MemFile>>,
}

impl MemoryFiles {
    pub fn new() -> Self {
        Self::default()
    }
    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Address, AttachmentId), MemFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FileCache for MemoryFiles {
    fn deposit_file(&self, file: NewFile, quota_bytes: u64) -> Result<FileDeposit, Error> {
        let mut files = self.files();
        let key = (file.recipient.clone(), file.attachment);
        if let Some(f) = files.get(&key) {
            if f.file.sender != file.sender
                || f.file.hashes != file.hashes
                || f.file.size != file.size
            {
                return Ok(FileDeposit::Conflict);
            }
            let count = f.file.hashes.len() as u32;
            return Ok(FileDeposit::Accepted {
                missing: missing_ranges(count, |i| f.chunks.contains_key(&i)),
            });
        }
        let used: u64 = files
            .iter()
            .filter(|((r, _), _)| *r == file.recipient)
            .map(|(_, f)| f.file.stored_bytes())
            .sum();
        if used + file.stored_bytes() > quota_bytes {
            return Ok(FileDeposit::QuotaExceeded);
        }
        let count = file.hashes.len() as u32;
        files.insert(
            key,
            MemFile {
                file,
                chunks: BTreeMap::new(),
            },
        );
        Ok(FileDeposit::Accepted {
            missing: missing_ranges(count, |_| false),
        })
    }

    fn deposit_chunk(
        &self,
        recipient: &Address,
        sender: &Address,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    ) -> Result<ChunkDeposit, Error> {
        let mut files = self.files();
        let Some(f) = files
            .get_mut(&(recipient.clone(), attachment))
            .filter(|f| &f.file.sender == sender)
        else {
            return Ok(ChunkDeposit::NoSuchFile);
        };
        if !chunk_matches(f.file.size, &f.file.hashes, index, &data) {
            return Ok(ChunkDeposit::Mismatch);
        }
        f.chunks.insert(index, data);
        Ok(ChunkDeposit::Stored)
    }

    fn file(
        &self,
        recipient: &Address,
        attachment: AttachmentId,
    ) -> Result<Option<KeptFile>, Error> {
        Ok(self
            .files()
            .get(&(recipient.clone(), attachment))
            .filter(|f| f.chunks.len() == f.file.hashes.len())
            .map(|f| KeptFile {
                sender: f.file.sender.clone(),
                size: f.file.size,
                hashes: f.file.hashes.clone(),
            }))
    }

    fn chunks(
        &self,
        recipient: &Address,
        attachment: AttachmentId,
        indices: &[u32],
    ) -> Result<Option<Chunks>, Error> {
        Ok(self
            .files()
            .get(&(recipient.clone(), attachment))
            .filter(|f| f.chunks.len() == f.file.hashes.len())
            .map(|f| {
                indices
                    .iter()
                    .filter_map(|i| f.chunks.get(i).map(|d| (*i, d.clone())))
                    .collect()
            }))
    }

    fn release_file(&self, recipient: &Address, attachment: AttachmentId) -> Result<bool, Error> {
        Ok(self
            .files()
            .remove(&(recipient.clone(), attachment))
            .is_some())
    }

    fn withdraw_files(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<usize, Error> {
        let mut files = self.files();
        let before = files.len();
        files.retain(|(r, _), f| {
            !(r == recipient && &f.file.sender == sender && &f.file.message_id == message_id)
        });
        Ok(before - files.len())
    }

    fn kept_for(&self, recipient: &Address) -> Result<Vec<FileItem>, Error> {
        let mut items: Vec<(Millis, FileItem)> = self
            .files()
            .iter()
            .filter(|((r, _), f)| r == recipient && f.chunks.len() == f.file.hashes.len())
            .map(|((_, id), f)| {
                (
                    f.file.deposited_at,
                    FileItem {
                        attachment: *id,
                        message_id: f.file.message_id.clone(),
                        from: f.file.sender.clone(),
                        size: f.file.size,
                    },
                )
            })
            .collect();
        items.sort_by_key(|(at, _)| *at);
        Ok(items.into_iter().map(|(_, i)| i).collect())
    }

    fn expire_files(&self, now: Millis) -> Result<usize, Error> {
        let mut files = self.files();
        let before = files.len();
        files.retain(|_, f| f.file.expires_at > now);
        Ok(before - files.len())
    }
}

/// The behaviour every [`FileCache`] shares, over a fresh, empty store.
pub mod conformance {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    /// A file of `chunks` full chunks and a 10-byte tail from alice@h for `to`, with its
    /// encrypted chunks (stand-ins: the store only checks sizes and hashes).
    pub fn file(to: &str, n: u8, chunks: u32, at: Millis) -> (NewFile, Vec<Vec<u8>>) {
        let size = u64::from(chunks) * CHUNK_BYTES as u64 + 10;
        let data: Vec<Vec<u8>> = (0..=chunks)
            .map(|i| vec![n ^ i as u8; cipher_len(size, i).unwrap()])
            .collect();
        let file = NewFile {
            recipient: a(to),
            attachment: AttachmentId([n; 16]),
            sender: a("alice@h"),
            message_id: MessageId::new([n; 16], "h"),
            size,
            hashes: data.iter().map(|d| sha256(d)).collect(),
            deposited_at: at,
            expires_at: at + 100,
        };
        (file, data)
    }

    /// Announce (idempotent, conflict, quota), chunks checked and resumable, fetch only
    /// whole and only by the recipient, release, expiry.
    pub fn files_are_kept_checked_fetched_released_and_expired(c: &dyn FileCache) {
        let (f, data) = file("bob@h", 1, 2, 10);
        let quota = f.stored_bytes() + 5;
        let whole = FileDeposit::Accepted {
            missing: vec![(0, 3)],
        };
        assert_eq!(c.deposit_file(f.clone(), quota).unwrap(), whole);
        assert_eq!(
            c.deposit_file(f.clone(), quota).unwrap(),
            whole,
            "idempotent"
        );
        // Another sender (or another chunk list) under the same id: refused.
        let mut other = f.clone();
        other.sender = a("mallory@h");
        assert_eq!(c.deposit_file(other, quota).unwrap(), FileDeposit::Conflict);
        // A second file would exceed bob's quota; carol has her own.
        let (g, _) = file("bob@h", 2, 0, 10);
        assert_eq!(
            c.deposit_file(g, quota).unwrap(),
            FileDeposit::QuotaExceeded
        );
        let (h, hdata) = file("carol@h", 3, 0, 10);
        assert!(matches!(
            c.deposit_file(h.clone(), quota).unwrap(),
            FileDeposit::Accepted { .. }
        ));
        // Chunks: checked against the list, only from the sender.
        let (bob, alice, id) = (a("bob@h"), a("alice@h"), f.attachment);
        assert_eq!(
            c.deposit_chunk(&bob, &alice, id, 1, data[0].clone())
                .unwrap(),
            ChunkDeposit::Mismatch,
            "chunk 0's bytes at index 1"
        );
        assert_eq!(
            c.deposit_chunk(&bob, &alice, id, 3, data[0].clone())
                .unwrap(),
            ChunkDeposit::Mismatch,
            "no chunk 3"
        );
        assert_eq!(
            c.deposit_chunk(&bob, &a("mallory@h"), id, 0, data[0].clone())
                .unwrap(),
            ChunkDeposit::NoSuchFile
        );
        assert_eq!(
            c.deposit_chunk(&bob, &alice, id, 2, data[2].clone())
                .unwrap(),
            ChunkDeposit::Stored
        );
        // Resuming: the announcement says what is missing.
        assert_eq!(
            c.deposit_file(f.clone(), quota).unwrap(),
            FileDeposit::Accepted {
                missing: vec![(0, 2)]
            }
        );
        // Not fetchable (nor listed) until whole.
        assert_eq!(c.file(&bob, id).unwrap(), None);
        assert_eq!(c.kept_for(&bob).unwrap(), vec![]);
        assert_eq!(c.chunks(&bob, id, &[2]).unwrap(), None);
        for i in 0..2 {
            assert_eq!(
                c.deposit_chunk(&bob, &alice, id, i, data[i as usize].clone())
                    .unwrap(),
                ChunkDeposit::Stored
            );
        }
        let kept = c.file(&bob, id).unwrap().expect("whole now");
        let item = FileItem {
            attachment: id,
            message_id: f.message_id.clone(),
            from: alice.clone(),
            size: f.size,
        };
        assert_eq!(c.kept_for(&bob).unwrap(), vec![item], "listed for bob only");
        assert_eq!(c.kept_for(&a("carol@h")).unwrap(), vec![], "not whole");
        assert_eq!(
            (kept.sender, kept.size, kept.hashes),
            (alice.clone(), f.size, f.hashes)
        );
        for (i, d) in data.iter().enumerate() {
            assert_eq!(
                c.chunks(&bob, id, &[i as u32]).unwrap(),
                Some(vec![(i as u32, d.clone())])
            );
        }
        // Only the recipient's key reaches it.
        assert_eq!(c.file(&a("carol@h"), id).unwrap(), None);
        assert_eq!(c.chunks(&a("carol@h"), id, &[0]).unwrap(), None);
        // Called back with its mail: only its sender's, for that recipient and mail.
        let m = f.message_id.clone();
        assert_eq!(c.withdraw_files(&a("carol@h"), &bob, &m).unwrap(), 0);
        assert_eq!(c.withdraw_files(&alice, &a("dan@h"), &m).unwrap(), 0);
        let other_mail = MessageId::new([77; 16], "h");
        assert_eq!(c.withdraw_files(&alice, &bob, &other_mail).unwrap(), 0);
        assert!(c.file(&bob, id).unwrap().is_some());
        // Released.
        assert!(c.release_file(&bob, id).unwrap());
        assert!(!c.release_file(&bob, id).unwrap());
        assert_eq!(c.file(&bob, id).unwrap(), None);
        // Carol's expires (not whole, still swept).
        c.deposit_chunk(&a("carol@h"), &alice, h.attachment, 0, hdata[0].clone())
            .unwrap();
        assert_eq!(c.expire_files(109).unwrap(), 0);
        assert_eq!(c.expire_files(110).unwrap(), 1);
        assert_eq!(c.file(&a("carol@h"), h.attachment).unwrap(), None);
        // Two files of one mail, called back with it; a file of another mail stays.
        let (one, one_data) = file("erin@h", 5, 1, 200);
        let two = NewFile {
            attachment: AttachmentId([6; 16]),
            ..one.clone()
        };
        let (other, other_data) = file("erin@h", 7, 1, 200);
        for (nf, data) in [(&one, &one_data), (&two, &one_data), (&other, &other_data)] {
            c.deposit_file(nf.clone(), u64::MAX).unwrap();
            for (i, d) in data.iter().enumerate() {
                c.deposit_chunk(&nf.recipient, &alice, nf.attachment, i as u32, d.clone())
                    .unwrap();
            }
            assert!(c.file(&nf.recipient, nf.attachment).unwrap().is_some());
        }
        assert_eq!(
            c.withdraw_files(&alice, &one.recipient, &one.message_id)
                .unwrap(),
            2
        );
        assert_eq!(c.file(&one.recipient, one.attachment).unwrap(), None);
        assert_eq!(
            c.chunks(&one.recipient, one.attachment, &[0]).unwrap(),
            None
        );
        assert_eq!(c.file(&one.recipient, two.attachment).unwrap(), None);
        assert!(c
            .file(&other.recipient, other.attachment)
            .unwrap()
            .is_some());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_files_conform() {
        super::conformance::files_are_kept_checked_fetched_released_and_expired(
            &super::MemoryFiles::new(),
        );
    }
}
