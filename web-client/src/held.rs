//! Received chunks kept in memory until their segment is whole.
//!
//! The chunk store ([`crate::chunks`]) keeps one record and one Blob per *segment* of
//! [`SEGMENT_CHUNKS`] chunks. Chunks written as they stream in would land in a segment a
//! few at a time, and every later write to the same segment builds a new Blob that copies
//! the stored part again (in the page and in the browser's IndexedDB files). So the node
//! pump hands each received chunk to [`Held`] first, and writes a segment once all of its
//! chunks are here: one Blob, one record and one transaction per segment, each byte
//! written once. Held chunks are written anyway once the oldest waited [`HELD_MS`] (a slow
//! or stalled transfer, a transfer that resumes in the middle of a segment, out-of-order
//! chunks), when more than [`HELD_MAX_CHUNKS`] are held, and before anything that reads
//! or deletes stored chunks runs.
//!
//! Nothing here is counted as stored before it is: the node hears `Stored` for a chunk
//! only after the transaction that wrote it, and the download record written beside a
//! segment lists only the chunks written so far (the ones still held are taken out of
//! the copy that is written). A page closed while chunks are held loses only those chunks,
//! and its download resumes from what the stored record lists.

use std::collections::{BTreeMap, HashMap};

use peermail_core::attach::AttachmentId;
use peermail_core::node::OpId;
use peermail_core::store::DownloadRecord;

use crate::chunks::SEGMENT_CHUNKS;

/// Longest a received chunk waits in memory for the rest of its segment, in milliseconds.
pub const HELD_MS: u64 = 250;
/// Most chunks held at once (four segments, about 4 MiB); more are written at once.
pub const HELD_MAX_CHUNKS: usize = 4 * SEGMENT_CHUNKS as usize;

/// Chunks and download records waiting to be written (see the module docs).
#[derive(Debug, Default)]
pub struct Held {
    /// `(attachment, first index of the segment)` → when its first held chunk came, and
    /// the chunks with the ops that asked for them.
    segments: BTreeMap<(AttachmentId, u32), Segment>,
    /// The latest download record of each attachment with held chunks, and the ops of the
    /// record writes not answered yet.
    records: HashMap<AttachmentId, (Vec<OpId>, Box<DownloadRecord>)>,
    chunks: usize,
}

#[derive(Debug)]
struct Segment {
    since: u64,
    chunks: Vec<(OpId, u32, Vec<u8>)>,
}

/// One write of held chunks: one IndexedDB transaction, then every op is answered with
/// its result.
#[derive(Debug, Default)]
pub struct Flush {
    pub chunks: Vec<(AttachmentId, u32, Vec<u8>)>,
    pub records: Vec<DownloadRecord>,
    pub ops: Vec<OpId>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.records.is_empty()
    }

    /// Number of chunks held.
    pub fn chunk_count(&self) -> usize {
        self.chunks
    }

    /// Something of `attachment` is held (so its record writes wait with its chunks).
    pub fn holds(&self, attachment: &AttachmentId) -> bool {
        self.records.contains_key(attachment)
            || self
                .segments
                .range((*attachment, 0)..=(*attachment, u32::MAX))
                .next()
                .is_some()
    }

    /// When the oldest held chunk came, if any is held.
    pub fn oldest(&self) -> Option<u64> {
        self.segments.values().map(|s| s.since).min()
    }

    /// Holds a received chunk of a file of `chunk_count` chunks. Returns its segment's key
    /// when the segment is now whole (every chunk of it held): write it with
    /// [`Held::take_segment`].
    pub fn put_chunk(
        &mut self,
        now: u64,
        op: OpId,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
        chunk_count: u32,
    ) -> Option<(AttachmentId, u32)> {
        let first = index - index % SEGMENT_CHUNKS;
        let key = (attachment, first);
        let seg = self.segments.entry(key).or_insert(Segment {
            since: now,
            chunks: Vec::new(),
        });
        // A chunk written again (fetched again after a failed write) replaces the older
        // copy; both ops are answered by the segment's write.
        if let Some(old) = seg.chunks.iter_mut().find(|(_, i, _)| *i == index) {
            old.2 = data;
            seg.chunks.push((op, index, Vec::new()));
        } else {
            seg.chunks.push((op, index, data));
            self.chunks += 1;
        }
        let want = chunk_count
            .min(first + SEGMENT_CHUNKS)
            .saturating_sub(first) as usize;
        let have = seg.chunks.iter().filter(|(_, _, d)| !d.is_empty()).count();
        (have >= want).then_some(key)
    }

    /// Holds a download record write of an attachment that [`Held::holds`] something of:
    /// the latest record is written with the attachment's next segment.
    pub fn put_record(&mut self, op: OpId, record: Box<DownloadRecord>) {
        let entry = self
            .records
            .entry(record.attachment.id)
            .or_insert_with(|| (Vec::new(), record.clone()));
        entry.0.push(op);
        entry.1 = record;
    }

    /// The write of one whole segment, with its attachment's latest record (less the chunks
    /// still held).
    pub fn take_segment(&mut self, key: (AttachmentId, u32)) -> Flush {
        let mut flush = Flush::default();
        if let Some(seg) = self.segments.remove(&key) {
            self.add(&mut flush, seg, key.0);
        }
        self.add_record(&mut flush, key.0);
        flush
    }

    /// The write of everything held.
    pub fn take_all(&mut self) -> Flush {
        let mut flush = Flush::default();
        for ((attachment, _), seg) in std::mem::take(&mut self.segments) {
            self.add(&mut flush, seg, attachment);
        }
        let attachments: Vec<AttachmentId> = self.records.keys().copied().collect();
        for attachment in attachments {
            self.add_record(&mut flush, attachment);
        }
        flush
    }

    fn add(&mut self, flush: &mut Flush, seg: Segment, attachment: AttachmentId) {
        for (op, index, data) in seg.chunks {
            flush.ops.push(op);
            if !data.is_empty() {
                self.chunks -= 1;
                flush.chunks.push((attachment, index, data));
            }
        }
    }

    /// Adds `attachment`'s record, if one waits, less the chunks still held; forgets it
    /// once none of the attachment's chunks are held.
    fn add_record(&mut self, flush: &mut Flush, attachment: AttachmentId) {
        let still_held: Vec<u32> = self
            .segments
            .range((attachment, 0)..=(attachment, u32::MAX))
            .flat_map(|(_, s)| s.chunks.iter().map(|(_, i, _)| *i))
            .collect();
        let Some((ops, record)) = self.records.get_mut(&attachment) else {
            return;
        };
        flush.ops.append(ops);
        let mut written = DownloadRecord::clone(record);
        for i in still_held.iter().copied() {
            written.progress.forget_chunk(i);
        }
        flush.records.push(written);
        if still_held.is_empty() {
            self.records.remove(&attachment);
        }
    }
}
