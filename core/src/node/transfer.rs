//! Attachment transfers: a recipient pulls the encrypted chunks of each attachment of a
//! received mail from the sender's node, verifying each on arrival; the sender serves
//! them to the mail's recipients only.
//!
//! Receiving (per attachment, a [`DownloadRecord`]): created when the mail is stored.
//! While the node that has the chunks (the mail's sender) is reachable over a data channel,
//! the node asks for the chunk list (`GetChunkList`, page by page, checked against the
//! mail's root), then for missing chunks in windows of [`WINDOW`] (`GetChunks`). Each
//! arriving chunk is checked against the list ([`Download::accept_chunk`]); a good one is
//! stored (`StoreWrite::PutChunk`), a bad one is refused and asked for again. The record
//! (which chunks are held) is persisted every [`PERSIST_EVERY`] chunks, after the chunk
//! writes it covers, so after a restart the transfer resumes from stored chunks. When all
//! chunks are held the driver checks the whole file ([`Output::CheckFile`], answered by
//! `Input::FileChecked`); only then is it `Complete`. The sender unreachable: nothing is
//! asked; the UI says the file is available when the sender is online. No chunk within
//! `ack_timeout` of a request: the outstanding ones are asked for again.
//!
//! Serving: a `GetChunkList` / `GetChunks` from a peer that is a recipient of the outgoing
//! mail carrying that attachment becomes [`Output::Serve`]; the driver reads the stored
//! chunks and sends them, pacing itself on the data channel's buffer. Anyone else gets
//! `TransferRefused`. `CancelTransfer` becomes [`Output::StopServing`].

use super::*;
use crate::attach::{Accepted, AttachError, AttachmentId, AttachmentRef, Download, RateMeter};
use crate::store::{DownloadRecord, DownloadState};

/// Chunks asked for at once (60 KiB each: about 3.75 MiB in flight).
pub const WINDOW: u32 = 64;
/// The download record is persisted after this many new chunks (after the chunk writes
/// it covers): after a restart, the transfer resumes from the last stored chunk. Drivers
/// commit consecutive chunk and record writes together, keeping only the last record.
pub const PERSIST_EVERY: u32 = 1;
/// Progress events at most this often per attachment.
const PROGRESS_EVERY_MS: Millis = 250;

/// What the driver serves to a peer (see [`Output::Serve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeRequest {
    /// The chunk-list page starting at `start` (`PeerFrame::ChunkList`).
    ChunkList { start: u32 },
    /// These chunks, each as a `PeerFrame::Chunk`, in order.
    Chunks { ranges: Vec<(u32, u32)> },
}

/// Why the whole-file check failed (`Input::FileChecked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheckFailure {
    /// The stored chunk `index` is gone (storage cleared): it is fetched again.
    ChunkMissing(u32),
    /// The chunks, although each matched the chunk list, do not make the file the mail
    /// describes (they do not decrypt, or the file's hash differs): the sender's node sent
    /// something else. Final.
    Invalid(AttachError),
}

/// A receiving transfer: the persisted record and this session's bookkeeping.
#[derive(Debug)]
pub(super) struct Incoming {
    pub(super) record: DownloadRecord,
    /// Chunks asked for and not arrived (this connection).
    requested: BTreeSet<u32>,
    /// A chunk-list page asked for and not arrived.
    list_requested: bool,
    /// When something was last asked for or arrived.
    active_at: Millis,
    /// New chunks stored since the record was last persisted.
    unsaved: u32,
    /// Chunks arrived whose storage has not completed: they count against the window, so
    /// a store slower than the network holds back requests instead of piling up chunks.
    unstored: u32,
    /// The whole-file check is running.
    checking: bool,
    rate: RateMeter,
    progress_event_at: Millis,
}

impl Incoming {
    pub(super) fn new(record: DownloadRecord) -> Self {
        Incoming {
            record,
            requested: BTreeSet::new(),
            list_requested: false,
            active_at: 0,
            unsaved: 0,
            unstored: 0,
            checking: false,
            rate: RateMeter::new(),
            progress_event_at: 0,
        }
    }
    fn waiting_for_peer(&self) -> bool {
        self.list_requested || !self.requested.is_empty()
    }
}

/// How a received attachment stands, for the UI.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadView {
    pub message_id: MessageId,
    pub from: Address,
    pub attachment: AttachmentRef,
    pub state: DownloadState,
    /// Plaintext bytes held and verified.
    pub bytes_done: u64,
    pub bytes_per_sec: Option<f64>,
    pub eta_ms: Option<Millis>,
    /// The node that has the chunks is reachable now (a data channel is open).
    pub source_connected: bool,
    /// All chunks are held and the whole-file check is running.
    pub checking: bool,
}

impl Node {
    /// Every attachment of received mail and how far it is.
    pub fn downloads(&self) -> impl Iterator<Item = DownloadView> + '_ {
        self.downloads.values().map(|d| self.download_view(d))
    }

    /// One received attachment.
    pub fn download(&self, id: &AttachmentId) -> Option<DownloadView> {
        self.downloads.get(id).map(|d| self.download_view(d))
    }

    fn download_view(&self, d: &Incoming) -> DownloadView {
        let r = &d.record;
        let done = r.progress.bytes_held();
        DownloadView {
            message_id: r.message_id.clone(),
            from: r.from.clone(),
            attachment: r.attachment.clone(),
            state: r.state.clone(),
            bytes_done: done,
            bytes_per_sec: d.rate.bytes_per_sec(),
            eta_ms: d.rate.eta_ms(r.attachment.size - done),
            source_connected: self.links.get(&r.from).is_some_and(|l| l.connected),
            checking: d.checking,
        }
    }

    /// Starts fetching the attachments of a mail just stored in the Inbox.
    pub(super) fn start_downloads(&mut self, mail: &Mail) {
        if mail.from == self.identity.address {
            return;
        }
        for att in &mail.attachments {
            if self.downloads.contains_key(&att.id) {
                continue;
            }
            let state = match att.validate() {
                Ok(()) => DownloadState::Fetching,
                Err(e) => DownloadState::Failed {
                    at: self.now,
                    reason: format!("the attachment is not valid: {e}"),
                },
            };
            let record = DownloadRecord {
                message_id: mail.message_id.clone(),
                from: mail.from.clone(),
                attachment: att.clone(),
                progress: Download::new(att),
                state,
                sender_knows: false,
            };
            self.store(StoreWrite::PutDownload(Box::new(record.clone())));
            self.downloads.insert(att.id, Incoming::new(record));
            self.event(Event::DownloadChanged(att.id));
        }
        // Learn when the sender's node is reachable.
        self.subscribe([mail.from.clone()]);
        self.pump_downloads(&mail.from);
    }

    /// Some attachment is still to be fetched from `peer`.
    pub(super) fn has_downloads_from(&self, peer: &Address) -> bool {
        self.downloads
            .values()
            .any(|d| &d.record.from == peer && d.record.state == DownloadState::Fetching)
    }

    /// Tells `peer` (over an open channel) of every file of its mail this node completed
    /// and it has not acknowledged.
    pub(super) fn tell_sender(&mut self, peer: &Address) {
        if !self.links.get(peer).is_some_and(|l| l.connected) {
            return;
        }
        let done: Vec<(MessageId, AttachmentId)> = self
            .downloads
            .values()
            .filter(|d| {
                &d.record.from == peer
                    && !d.record.sender_knows
                    && matches!(d.record.state, DownloadState::Complete { .. })
            })
            .map(|d| (d.record.message_id.clone(), d.record.attachment.id))
            .collect();
        for (message_id, attachment) in done {
            self.send_peer(
                peer,
                PeerFrame::FileReceived {
                    message_id,
                    attachment,
                },
            );
        }
    }

    /// Moves every transfer from `peer` on: asks for a data channel while `peer` is online,
    /// and over an open one asks for what is missing.
    pub(super) fn pump_downloads(&mut self, peer: &Address) {
        if !self.has_downloads_from(peer) || !self.ensure_link(peer) {
            return;
        }
        let ids: Vec<AttachmentId> = self
            .downloads
            .iter()
            .filter(|(_, d)| &d.record.from == peer && d.record.state == DownloadState::Fetching)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.request_more(id);
        }
    }

    fn request_more(&mut self, id: AttachmentId) {
        let now = self.now;
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.state != DownloadState::Fetching || d.checking {
            return;
        }
        let peer = d.record.from.clone();
        let message_id = d.record.message_id.clone();
        if let Some(start) = d.record.progress.next_hash_page() {
            if !d.list_requested {
                d.list_requested = true;
                d.active_at = now;
                self.send_peer(
                    &peer,
                    PeerFrame::GetChunkList {
                        message_id,
                        attachment: id,
                        start,
                    },
                );
            }
            return;
        }
        if d.record.progress.is_complete() {
            d.checking = true;
            self.emit(Output::CheckFile(id));
            return;
        }
        // Top the window up once half of it arrived and was stored.
        let in_flight = d.requested.len() as u32 + d.unstored;
        if in_flight > WINDOW / 2 {
            return;
        }
        let mut want = WINDOW - in_flight;
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for r in d.record.progress.missing(WINDOW + in_flight) {
            for i in r {
                if want == 0 {
                    break;
                }
                if d.requested.insert(i) {
                    want -= 1;
                    match ranges.last_mut() {
                        Some((_, end)) if *end == i => *end += 1,
                        _ => ranges.push((i, i + 1)),
                    }
                }
            }
        }
        if ranges.is_empty() {
            return;
        }
        d.active_at = now;
        self.send_peer(
            &peer,
            PeerFrame::GetChunks {
                message_id,
                attachment: id,
                ranges,
            },
        );
    }

    /// A data channel to `peer` closed: what was asked of it is asked again next time.
    pub(super) fn downloads_peer_gone(&mut self, peer: &Address) {
        for d in self.downloads.values_mut() {
            if &d.record.from == peer {
                d.requested.clear();
                d.list_requested = false;
            }
        }
        self.emit(Output::StopServing {
            peer: peer.clone(),
            attachment: None,
        });
    }

    /// Transfers whose source went quiet are asked again; called on every tick.
    pub(super) fn downloads_tick(&mut self) {
        let now = self.now;
        let timeout = self.config.ack_timeout;
        let mut sources = BTreeSet::new();
        for d in self.downloads.values_mut() {
            if d.record.state != DownloadState::Fetching {
                continue;
            }
            if d.waiting_for_peer() && d.active_at + timeout <= now {
                d.requested.clear();
                d.list_requested = false;
            }
            sources.insert(d.record.from.clone());
        }
        for s in sources {
            self.pump_downloads(&s);
        }
    }

    /// When `downloads_tick` has work: an unanswered request times out.
    pub(super) fn downloads_timeout(&self) -> Option<Millis> {
        self.downloads
            .values()
            .filter(|d| d.record.state == DownloadState::Fetching && d.waiting_for_peer())
            .map(|d| (d.active_at + self.config.ack_timeout).max(self.now))
            .min()
    }

    pub(super) fn cancel_download(&mut self, id: AttachmentId) {
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.state != DownloadState::Fetching {
            return;
        }
        d.record.state = DownloadState::Cancelled;
        d.requested.clear();
        d.list_requested = false;
        d.checking = false;
        let (peer, record) = (d.record.from.clone(), d.record.clone());
        self.store(StoreWrite::PutDownload(Box::new(record)));
        self.send_peer(&peer, PeerFrame::CancelTransfer { attachment: id });
        self.event(Event::DownloadChanged(id));
    }

    /// Starts a cancelled or failed download again (keeping the chunks already held).
    pub(super) fn retry_download(&mut self, id: AttachmentId) {
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if !matches!(
            d.record.state,
            DownloadState::Cancelled | DownloadState::Failed { .. }
        ) || d.record.attachment.validate().is_err()
        {
            return;
        }
        d.record.state = DownloadState::Fetching;
        let (peer, record) = (d.record.from.clone(), d.record.clone());
        self.store(StoreWrite::PutDownload(Box::new(record)));
        self.event(Event::DownloadChanged(id));
        self.subscribe([peer.clone()]);
        self.pump_downloads(&peer);
    }

    pub(super) fn handle_transfer_frame(&mut self, peer: Address, frame: PeerFrame) {
        match frame {
            PeerFrame::GetChunkList {
                message_id,
                attachment,
                start,
            } => {
                if self.may_fetch(&peer, &message_id, attachment) {
                    self.emit(Output::Serve {
                        peer,
                        attachment,
                        request: ServeRequest::ChunkList { start },
                    });
                } else {
                    self.refuse_transfer(&peer, attachment);
                }
            }
            PeerFrame::GetChunks {
                message_id,
                attachment,
                ranges,
            } => {
                let count = self
                    .sent_attachment(&message_id, attachment)
                    .map_or(0, |a| a.chunk_count());
                let sane = ranges.iter().all(|&(s, e)| s < e && e <= count)
                    && ranges.iter().map(|&(s, e)| e - s).sum::<u32>() <= 4 * WINDOW;
                if !self.may_fetch(&peer, &message_id, attachment) {
                    self.refuse_transfer(&peer, attachment);
                } else if !sane {
                    self.event(Event::PeerProtocolError {
                        peer,
                        reason: format!("asked for chunks of {attachment} that do not exist"),
                    });
                } else {
                    self.emit(Output::Serve {
                        peer,
                        attachment,
                        request: ServeRequest::Chunks { ranges },
                    });
                }
            }
            PeerFrame::CancelTransfer { attachment } => self.emit(Output::StopServing {
                peer,
                attachment: Some(attachment),
            }),
            PeerFrame::FileReceived {
                message_id,
                attachment,
            } => {
                if !self.may_fetch(&peer, &message_id, attachment) {
                    return self.refuse_transfer(&peer, attachment);
                }
                let o = self
                    .outgoing
                    .get_mut(&message_id)
                    .expect("checked by may_fetch");
                let entry = (attachment, peer.clone());
                if !o.fetched.contains(&entry) {
                    o.fetched.push(entry);
                    self.persist_outgoing(&message_id);
                }
                self.send_peer(&peer, PeerFrame::FileReceivedAck { attachment });
            }
            PeerFrame::FileReceivedAck { attachment } => {
                if let Some(d) = self.downloads.get_mut(&attachment) {
                    if d.record.from == peer && !d.record.sender_knows {
                        d.record.sender_knows = true;
                        let record = d.record.clone();
                        self.store(StoreWrite::PutDownload(Box::new(record)));
                    }
                }
            }
            PeerFrame::ChunkList {
                attachment,
                start,
                hashes,
            } => self.receive_chunk_list(peer, attachment, start, &hashes),
            PeerFrame::Chunk {
                attachment,
                index,
                data,
            } => self.receive_chunk(peer, attachment, index, data),
            PeerFrame::TransferRefused { attachment, reason } => {
                let now = self.now;
                if let Some(d) = self.downloads.get_mut(&attachment) {
                    if d.record.from == peer && d.record.state == DownloadState::Fetching {
                        d.record.state = DownloadState::Failed {
                            at: now,
                            reason: format!("{peer} will not send it: {reason}"),
                        };
                        d.requested.clear();
                        d.list_requested = false;
                        let record = d.record.clone();
                        self.store(StoreWrite::PutDownload(Box::new(record)));
                        self.event(Event::DownloadChanged(attachment));
                    }
                }
            }
            _ => {}
        }
    }

    /// The attachment `id` of this node's outgoing mail `message_id`.
    fn sent_attachment(&self, message_id: &MessageId, id: AttachmentId) -> Option<&AttachmentRef> {
        self.outgoing
            .get(message_id)?
            .mail
            .attachments
            .iter()
            .find(|a| a.id == id)
    }

    /// `peer` is a recipient of this node's mail `message_id`, which carries `id`.
    fn may_fetch(&self, peer: &Address, message_id: &MessageId, id: AttachmentId) -> bool {
        self.sent_attachment(message_id, id).is_some()
            && self.outgoing[message_id].mail.recipients().contains(peer)
    }

    fn refuse_transfer(&mut self, peer: &Address, attachment: AttachmentId) {
        self.send_peer(
            peer,
            PeerFrame::TransferRefused {
                attachment,
                reason: "no such attachment for you here".into(),
            },
        );
    }

    fn receive_chunk_list(
        &mut self,
        peer: Address,
        id: AttachmentId,
        start: u32,
        hashes: &[crate::attach::Hash],
    ) {
        let now = self.now;
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.from != peer || d.record.state != DownloadState::Fetching {
            return;
        }
        d.list_requested = false;
        d.active_at = now;
        if let Err(e) = d.record.progress.accept_hashes(start, hashes) {
            self.event(Event::PeerProtocolError {
                peer: peer.clone(),
                reason: format!("chunk list of {id}: {e}"),
            });
        }
        self.request_more(id);
    }

    fn receive_chunk(&mut self, peer: Address, id: AttachmentId, index: u32, data: Vec<u8>) {
        let now = self.now;
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.from != peer || d.record.state != DownloadState::Fetching {
            return;
        }
        d.requested.remove(&index);
        d.active_at = now;
        match d.record.progress.accept_chunk(index, &data) {
            Ok(Accepted::New) => {
                d.unsaved += 1;
                d.rate.record(now, d.record.progress.bytes_held());
                let complete = d.record.progress.is_complete();
                let save = complete || d.unsaved >= PERSIST_EVERY;
                let progress_due = now >= d.progress_event_at + PROGRESS_EVERY_MS || complete;
                if progress_due {
                    d.progress_event_at = now;
                }
                if save {
                    d.unsaved = 0;
                }
                let record = save.then(|| d.record.clone());
                d.unstored += 1;
                let op = self.store(StoreWrite::PutChunk {
                    attachment: id,
                    index,
                    data,
                });
                self.chunk_writes.insert(op, (id, index));
                if let Some(r) = record {
                    self.store(StoreWrite::PutDownload(Box::new(r)));
                }
                if progress_due {
                    self.event(Event::DownloadChanged(id));
                }
            }
            Ok(Accepted::Duplicate) => {}
            Err(e) => self.event(Event::PeerProtocolError {
                peer,
                reason: format!("refused chunk {index} of {id}: {e}"),
            }),
        }
        self.request_more(id);
    }

    /// A chunk write completed (or failed: the chunk is fetched again).
    pub(super) fn chunk_stored(
        &mut self,
        id: AttachmentId,
        index: u32,
        result: Result<(), String>,
    ) {
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        d.unstored = d.unstored.saturating_sub(1);
        if let Err(reason) = result {
            // Storage is full or broken: asking again would only fail again. The person
            // can try again once there is room.
            d.record.progress.forget_chunk(index);
            if d.record.state == DownloadState::Fetching {
                d.record.state = DownloadState::Failed {
                    at: self.now,
                    reason: format!("could not store it: {reason}"),
                };
                d.requested.clear();
                d.list_requested = false;
                let (peer, record) = (d.record.from.clone(), d.record.clone());
                self.store(StoreWrite::PutDownload(Box::new(record)));
                self.send_peer(&peer, PeerFrame::CancelTransfer { attachment: id });
                self.event(Event::DownloadChanged(id));
            }
            return;
        }
        self.request_more(id);
    }

    /// The driver's whole-file check finished.
    pub(super) fn file_checked(&mut self, id: AttachmentId, result: Result<(), FileCheckFailure>) {
        let now = self.now;
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if !d.checking {
            return;
        }
        d.checking = false;
        match result {
            Ok(()) => d.record.state = DownloadState::Complete { at: now },
            Err(FileCheckFailure::ChunkMissing(i)) => d.record.progress.forget_chunk(i),
            Err(FileCheckFailure::Invalid(e)) => {
                d.record.state = DownloadState::Failed {
                    at: now,
                    reason: format!("the file does not match the mail: {e}"),
                }
            }
        }
        let (peer, record) = (d.record.from.clone(), d.record.clone());
        self.store(StoreWrite::PutDownload(Box::new(record)));
        self.event(Event::DownloadChanged(id));
        self.tell_sender(&peer);
        self.pump_downloads(&peer);
    }
}
