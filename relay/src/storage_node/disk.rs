//! The storage node's files on disk, in `<data dir>/files/`: per attachment (named by its
//! id in hex) the record (`.json`, a [`KeptFile`]), the chunk list (`.list`, the SHA-256 of
//! each encrypted chunk, concatenated) and the encrypted chunks (`.chunks`: chunk `i` at
//! offset `i × (CHUNK_BYTES + CHUNK_OVERHEAD)`, only the last one shorter). A chunk is
//! written before the record that counts it, and records and lists are replaced
//! atomically (written aside, synced, renamed), so after a crash the record never claims a
//! chunk that is not on disk.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use peermail_core::attach::{
    cipher_len, hashes_from_bytes, AttachmentId, Hash, CHUNK_BYTES, CHUNK_OVERHEAD,
};
use peermail_core::storage::KeptFile;

/// Where encrypted chunk `index` starts in a `.chunks` file.
fn offset(index: u32) -> u64 {
    u64::from(index) * (CHUNK_BYTES + CHUNK_OVERHEAD) as u64
}

/// The files a storage node keeps.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
}

impl Disk {
    /// Opens (creating) `<data_dir>/files`.
    pub fn open(data_dir: &Path) -> Result<Disk> {
        let dir = data_dir.join("files");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Disk { dir })
    }

    fn path(&self, id: AttachmentId, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", id.to_hex()))
    }

    /// Every record, with its chunk list when it has one.
    pub fn load(&self) -> Result<Vec<(KeptFile, Option<Vec<Hash>>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            let file: KeptFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a file record", path.display()))?;
            let list = match std::fs::read(self.path(file.id(), "list")) {
                Ok(bytes) => Some(hashes_from_bytes(&bytes).with_context(|| {
                    format!("the chunk list of {} is damaged", file.id().to_hex())
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            out.push((file, list));
        }
        Ok(out)
    }

    pub fn put_file(&self, file: &KeptFile) -> Result<()> {
        let json = serde_json::to_vec(file)?;
        write_atomically(&self.path(file.id(), "json"), &json)
    }

    pub fn put_list(&self, id: AttachmentId, hashes: &[Hash]) -> Result<()> {
        write_atomically(&self.path(id, "list"), &hashes.concat())
    }

    pub fn put_chunk(&self, id: AttachmentId, index: u32, data: &[u8]) -> Result<()> {
        let path = self.path(id, "chunks");
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        f.write_all_at(data, offset(index))?;
        Ok(())
    }

    /// Makes the chunks written so far durable (before a record that counts them).
    pub fn sync_chunks(&self, id: AttachmentId) -> Result<()> {
        match File::open(self.path(id, "chunks")) {
            Ok(f) => Ok(f.sync_data()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The chunk list of a file, if stored.
    pub fn list(&self, id: AttachmentId) -> Result<Option<Vec<Hash>>> {
        match std::fs::read(self.path(id, "list")) {
            Ok(bytes) => Ok(hashes_from_bytes(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a file: its record first (so that a crash midway leaves no record that
    /// claims chunks), then its chunk list and chunks. A part already gone is no error.
    pub fn delete(&self, id: AttachmentId) -> Result<()> {
        for ext in ["json", "list", "chunks"] {
            let path = self.path(id, ext);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete {}", path.display()))
                }
            }
        }
        Ok(())
    }

    /// Opens a file's chunks for reading.
    pub fn chunks(&self, id: AttachmentId) -> Result<Chunks> {
        let path = self.path(id, "chunks");
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Chunks { file })
    }
}

/// A file's encrypted chunks, open for reading.
pub struct Chunks {
    file: File,
}

impl Chunks {
    /// Chunk `index` of a file of `size` plaintext bytes.
    pub fn read(&self, size: u64, index: u32) -> Result<Vec<u8>> {
        let Some(len) = cipher_len(size, index) else {
            bail!("there is no chunk {index} in a file of {size} bytes");
        };
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset(index))?;
        Ok(buf)
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peermail_core::attach::{chunks_root, sha256, Download, FileSealer};
    use peermail_core::mail::MessageId;

    #[test]
    fn records_lists_and_chunks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES + 100)).map(|i| i as u8).collect();
        let id = AttachmentId([3; 16]);
        let mut sealer = FileSealer::new(id, [4; 32], "f.bin", "x/y", bytes.len() as u64).unwrap();
        let mut chunks = Vec::new();
        while let Some(r) = sealer.next_range() {
            chunks.push(
                sealer
                    .push(&bytes[r.start as usize..r.end as usize])
                    .unwrap()
                    .data,
            );
        }
        let hashes: Vec<Hash> = chunks.iter().map(|c| sha256(c)).collect();
        let mut progress = Download::for_file(id, bytes.len() as u64, chunks_root(&hashes));
        progress.accept_hashes(0, &hashes).unwrap();
        // Out of order, as a transfer may write them.
        for i in [2u32, 0, 1] {
            disk.put_chunk(id, i, &chunks[i as usize]).unwrap();
            progress.accept_chunk(i, &chunks[i as usize]).unwrap();
        }
        disk.put_list(id, &hashes).unwrap();
        let file = KeptFile {
            message_id: MessageId::new([1; 16], "h"),
            from: "alice@h".parse().unwrap(),
            progress: progress.persisted(),
            since: 5,
            sender_knows: false,
            via_relay: false,
        };
        disk.put_file(&file).unwrap();

        let disk = Disk::open(dir.path()).unwrap();
        let loaded = disk.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, file);
        assert_eq!(loaded[0].1.as_deref(), Some(&hashes[..]));
        let reader = disk.chunks(id).unwrap();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(&reader.read(bytes.len() as u64, i as u32).unwrap(), c);
        }
        assert!(reader.read(bytes.len() as u64, 3).is_err());
        assert_eq!(disk.list(AttachmentId([9; 16])).unwrap(), None);

        // Deleted, it is gone whole (and deleting again, or what was never there, is fine).
        disk.delete(id).unwrap();
        disk.delete(id).unwrap();
        disk.delete(AttachmentId([9; 16])).unwrap();
        assert!(disk.load().unwrap().is_empty());
        assert_eq!(disk.list(id).unwrap(), None);
        assert!(disk.chunks(id).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("files")).unwrap().count(),
            0
        );
    }
}
