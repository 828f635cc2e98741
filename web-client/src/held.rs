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

use std::collections::hash_map::Entry;
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
    /// `(attachment, first index of the segment)` → the segment's held chunks.
    segments: BTreeMap<(AttachmentId, u32), Segment>,
    /// The latest download record of each attachment with held chunks, and the ops of the
    /// record writes not answered yet.
    records: HashMap<AttachmentId, (Vec<OpId>, Box<DownloadRecord>)>,
}

#[derive(Debug)]
struct Segment {
    /// When its first held chunk came.
    since: u64,
    /// The chunks by index (a chunk written again replaces the older copy).
    chunks: BTreeMap<u32, Vec<u8>>,
    /// The ops that asked for them, all answered by the segment's write.
    ops: Vec<OpId>,
}

/// One write of held chunks: one IndexedDB transaction, then every op is answered with
/// its result.
#[derive(Debug, Default)]
pub struct Flush {
    pub chunks: Vec<(AttachmentId, u32, Vec<u8>)>,
    pub records: Vec<DownloadRecord>,
    pub ops: Vec<OpId>,
}

impl Flush {
    /// Adds a download record write; only the latest record of an attachment is written.
    pub fn push_record(&mut self, op: OpId, record: DownloadRecord) {
        self.ops.push(op);
        let id = record.attachment.id;
        match self.records.iter_mut().find(|r| r.attachment.id == id) {
            Some(r) => *r = record,
            None => self.records.push(record),
        }
    }
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.records.is_empty()
    }

    /// Number of chunks held.
    pub fn chunk_count(&self) -> usize {
        self.segments.values().map(|s| s.chunks.len()).sum()
    }

    /// Something of `attachment` is held (so its record writes wait with its chunks).
    pub fn holds(&self, attachment: &AttachmentId) -> bool {
        self.records.contains_key(attachment) || self.of(*attachment).next().is_some()
    }

    /// The held segments of `attachment`.
    fn of(&self, attachment: AttachmentId) -> impl Iterator<Item = &Segment> {
        self.segments
            .range((attachment, 0)..=(attachment, u32::MAX))
            .map(|(_, s)| s)
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
            chunks: BTreeMap::new(),
            ops: Vec::new(),
        });
        seg.chunks.insert(index, data);
        seg.ops.push(op);
        let want = chunk_count
            .min(first + SEGMENT_CHUNKS)
            .saturating_sub(first) as usize;
        (seg.chunks.len() >= want).then_some(key)
    }

    /// Holds a download record write of an attachment that [`Held::holds`] something of:
    /// the latest record is written with the attachment's next segment.
    pub fn put_record(&mut self, op: OpId, record: Box<DownloadRecord>) {
        match self.records.entry(record.attachment.id) {
            Entry::Occupied(mut e) => {
                let (ops, latest) = e.get_mut();
                ops.push(op);
                *latest = record;
            }
            Entry::Vacant(e) => {
                e.insert((vec![op], record));
            }
        }
    }

    /// The write of one whole segment, with its attachment's latest record (less the chunks
    /// still held).
    pub fn take_segment(&mut self, key: (AttachmentId, u32)) -> Flush {
        let mut flush = Flush::default();
        if let Some(seg) = self.segments.remove(&key) {
            Self::add(&mut flush, seg, key.0);
        }
        self.add_record(&mut flush, key.0);
        flush
    }

    /// The write of everything held.
    pub fn take_all(&mut self) -> Flush {
        let mut flush = Flush::default();
        for ((attachment, _), seg) in std::mem::take(&mut self.segments) {
            Self::add(&mut flush, seg, attachment);
        }
        let attachments: Vec<AttachmentId> = self.records.keys().copied().collect();
        for attachment in attachments {
            self.add_record(&mut flush, attachment);
        }
        flush
    }

    fn add(flush: &mut Flush, seg: Segment, attachment: AttachmentId) {
        flush.ops.extend(seg.ops);
        flush
            .chunks
            .extend(seg.chunks.into_iter().map(|(i, d)| (attachment, i, d)));
    }

    /// Adds `attachment`'s record, if one waits, less the chunks still held; forgets it
    /// once none of the attachment's chunks are held.
    fn add_record(&mut self, flush: &mut Flush, attachment: AttachmentId) {
        let still_held: Vec<u32> = self
            .of(attachment)
            .flat_map(|s| s.chunks.keys().copied())
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
