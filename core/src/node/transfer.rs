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
use crate::attach::{
    hashes_from_bytes, Accepted, AttachError, AttachmentId, AttachmentRef, Download, FileCheck,
    Hash, RateMeter, HASHES_PER_PAGE,
};
use crate::store::{DownloadRecord, DownloadState};

/// Chunks sent to the relay before their `ChunkDeposited` (each committed on its own).
pub const UPLOAD_WINDOW: usize = 8;

/// What the driver reads and sends to the relay (see [`Output::Upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadRequest {
    /// `ClientFrame::DepositFile` with the file's size and chunk list.
    Announce { size: u64 },
    /// One `ClientFrame::DepositChunk` per index.
    Chunks { indices: Vec<u32> },
}

/// An attachment being copied to the relay for one offline recipient (this session).
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) message_id: MessageId,
    /// Chunks the relay still needs and that were not sent yet.
    queue: VecDeque<u32>,
    /// Sent, not yet confirmed.
    in_flight: BTreeSet<u32>,
    /// When the relay last answered (or the upload started).
    active_at: Millis,
}

/// Where a receiving transfer asks for chunks: the node of the sender or of another
/// recipient of the mail that has the whole file, or the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Peer(Address),
    Relay,
}

/// What this node knows of the relay's copy of a received attachment (this session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayCopy {
    /// Not asked yet.
    Unknown,
    /// `FetchFile` sent.
    Asked,
    /// The relay keeps the whole file: chunks can come from there.
    Available,
    /// The relay has no (whole) copy; asked again at the time given.
    Absent { until: Millis },
}

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
    relay: RelayCopy,
    /// Where the outstanding requests went.
    asked: Option<Source>,
    /// The whole-file check, run as chunks arrive in order (from the first chunk of this
    /// session); `None` once one arrives out of order, and the driver checks at the end.
    check: Option<FileCheck>,
    /// Co-recipients that said they cannot send the file (this session).
    refused_by: BTreeSet<Address>,
}

impl Incoming {
    pub(super) fn new(record: DownloadRecord) -> Self {
        let check =
            (record.progress.chunks_held() == 0).then(|| FileCheck::new(&record.attachment));
        Incoming {
            check,
            record,
            requested: BTreeSet::new(),
            list_requested: false,
            active_at: 0,
            unsaved: 0,
            unstored: 0,
            checking: false,
            rate: RateMeter::new(),
            progress_event_at: 0,
            relay: RelayCopy::Unknown,
            asked: None,
            refused_by: BTreeSet::new(),
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
    /// Some source of the chunks is reachable now (a data channel is open, or the relay
    /// keeps the file).
    pub source_connected: bool,
    /// Where the chunks come from now, while fetching.
    pub fetching_from: Option<FetchingFrom>,
    /// All chunks are held and the whole-file check is running.
    pub checking: bool,
}

/// Where a received attachment's chunks come from (see [`DownloadView::fetching_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchingFrom {
    /// This account's storage node.
    StorageNode(Address),
    /// The relay (inline-size files kept for offline recipients).
    Relay,
    /// The sender's node.
    Sender(Address),
    /// Another recipient's node that has the whole file.
    CoRecipient(Address),
}

impl Node {
    /// One received attachment.
    pub fn download(&self, id: &AttachmentId) -> Option<DownloadView> {
        self.downloads.get(id).map(|d| self.download_view(d))
    }

    /// This node holds received attachment `id` whole (cheaper than [`Node::download`]).
    pub fn has_whole_file(&self, id: &AttachmentId) -> bool {
        self.downloads
            .get(id)
            .is_some_and(|d| d.record.state.is_complete())
    }

    /// The attachment of a download (cheaper than [`Node::download`]'s whole view).
    pub fn download_attachment(&self, id: &AttachmentId) -> Option<&AttachmentRef> {
        self.downloads.get(id).map(|d| &d.record.attachment)
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
            source_connected: self.links.get(&r.from).is_some_and(|l| l.connected)
                || self.source_of(d).is_some(),
            fetching_from: self.source_of(d).map(|s| match s {
                Source::Relay => FetchingFrom::Relay,
                Source::Peer(p) if self.own_node.as_ref() == Some(&p) => {
                    FetchingFrom::StorageNode(p)
                }
                Source::Peer(p) if p == r.from => FetchingFrom::Sender(p),
                Source::Peer(p) => FetchingFrom::CoRecipient(p),
            }),
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
            self.store(StoreWrite::PutDownload(stored(&record)));
            self.downloads.insert(att.id, Incoming::new(record));
            self.event(Event::DownloadChanged(att.id));
        }
        // Learn when the sender's node (or another recipient's, which may pass the file
        // on) is reachable.
        let me = self.identity.address.clone();
        let others = mail.recipients().into_iter().filter(|a| *a != me);
        self.subscribe(std::iter::once(mail.from.clone()).chain(others));
        // This account's storage node first, if it is there.
        if let Some(node) = self.own_node.clone() {
            self.pump_downloads(&node);
        }
        self.pump_downloads(&mail.from);
    }

    /// Some attachment is still to be fetched from `peer`.
    pub(super) fn has_downloads_from(&self, peer: &Address) -> bool {
        self.downloads.values().any(|d| self.could_serve(d, peer))
    }

    /// The other recipients of the mail carrying `d` (who may have the whole file).
    pub(super) fn co_recipients(&self, d: &Incoming) -> Vec<Address> {
        let me = &self.identity.address;
        self.inbox
            .get(&d.record.message_id)
            .map(|r| {
                r.mail
                    .recipients()
                    .into_iter()
                    .filter(|a| a != me && *a != d.record.from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `peer` may send chunks of `d` now: its sender, or — while the sender's node is out of
    /// reach and the relay has no copy — another recipient that has not said no.
    fn could_serve(&self, d: &Incoming, peer: &Address) -> bool {
        if d.record.state != DownloadState::Fetching {
            return false;
        }
        if &d.record.from == peer {
            return true;
        }
        if self.own_node.as_ref() == Some(peer) {
            return !d.refused_by.contains(peer);
        }
        let sender_reachable = self.links.get(&d.record.from).is_some_and(|l| l.connected)
            || d.relay == RelayCopy::Available;
        !sender_reachable && !d.refused_by.contains(peer) && self.co_recipients(d).contains(peer)
    }

    /// Chunks or a chunk list of `d` may come from `peer`: its sender or a co-recipient
    /// (whatever comes is checked against the mail).
    fn may_send_us(&self, d: &Incoming, peer: &Address) -> bool {
        &d.record.from == peer
            || self.own_node.as_ref() == Some(peer)
            || self.co_recipients(d).contains(peer)
    }

    /// This node has whole files of `peer`'s mail that `peer` does not know of yet, or
    /// deleted mail of `peer`'s whose files `peer` has not heard the fate of.
    pub(super) fn owes_sender(&self, peer: &Address) -> bool {
        self.downloads.values().any(|d| {
            &d.record.from == peer
                && !d.record.sender_knows
                && matches!(d.record.state, DownloadState::Complete { .. })
        }) || self.untold_sender(peer).next().is_some()
    }

    /// Tells `peer` (over an open channel, asked for while `peer` is online) of every file
    /// of its mail this node completed and it has not acknowledged.
    pub(super) fn tell_sender(&mut self, peer: &Address) {
        if !self.owes_sender(peer) || !self.ensure_link(peer) {
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
        let deleted: Vec<PeerFrame> = self
            .untold_sender(peer)
            .map(|(message_id, u)| PeerFrame::MailDeleted {
                message_id: message_id.clone(),
                fetched: u.fetched.clone(),
                not_fetched: u.not_fetched.clone(),
            })
            .collect();
        for frame in deleted {
            self.send_peer(peer, frame);
        }
    }

    /// Moves every transfer from `peer` on: asks for a data channel while `peer` is online,
    /// and over an open one asks for what is missing.
    pub(super) fn pump_downloads(&mut self, peer: &Address) {
        if !self.has_downloads_from(peer) {
            return;
        }
        // Asks for a channel while `peer` is online; meanwhile the relay may have the file.
        self.ensure_link(peer);
        let ids: Vec<AttachmentId> = self
            .downloads
            .iter()
            .filter(|(_, d)| self.could_serve(d, peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.request_more(id);
        }
    }

    /// Where chunks of `d` can be asked for now: the sender's node over an open channel,
    /// else the relay if it keeps the whole file.
    fn source_of(&self, d: &Incoming) -> Option<Source> {
        let linked = |a: &Address| self.links.get(a).is_some_and(|l| l.connected);
        // This account's storage node first, while it has not said it lacks the file.
        if let Some(node) = self.own_node.as_ref() {
            if linked(node) && !d.refused_by.contains(node) {
                return Some(Source::Peer(node.clone()));
            }
        }
        // Then the relay (which keeps inline files for recipients who were offline), then
        // the sender's node.
        if self.authenticated && d.relay == RelayCopy::Available {
            Some(Source::Relay)
        } else if linked(&d.record.from) {
            Some(Source::Peer(d.record.from.clone()))
        } else {
            // Another recipient's node with an open channel, while it has not said no.
            self.co_recipients(d)
                .into_iter()
                .find(|c| linked(c) && !d.refused_by.contains(c))
                .map(Source::Peer)
        }
    }

    /// While `d`'s sender is out of reach and the relay has no copy, asks for channels to
    /// the other recipients that are online (one of them may have the whole file).
    fn reach_co_recipients(&mut self, id: AttachmentId) {
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        let online: Vec<Address> = self
            .co_recipients(d)
            .into_iter()
            .filter(|c| {
                self.could_serve(d, c) && self.presence.get(c) == Some(&PresenceStatus::Online)
            })
            .collect();
        for c in online {
            self.ensure_link(&c);
        }
    }

    fn request_more(&mut self, id: AttachmentId) {
        let now = self.now;
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        if d.record.state != DownloadState::Fetching || d.checking {
            return;
        }
        let source = self.source_of(d);
        // Before the sender's node (or when nothing else is there), the relay is asked
        // whether it keeps an inline file; not while this account's storage node serves it.
        let from_own_node =
            matches!(&source, Some(Source::Peer(p)) if self.own_node.as_ref() == Some(p));
        // (Not in the middle of a transfer from a peer: that goes on.)
        let peer_busy = matches!(d.asked, Some(Source::Peer(_)))
            && (!d.requested.is_empty() || d.list_requested);
        let ask_relay = !from_own_node
            && !peer_busy
            && self.authenticated
            && d.relay == RelayCopy::Unknown
            && d.record.attachment.inline;
        let d = self.downloads.get_mut(&id).expect("looked up above");
        if ask_relay {
            // Before the sender's node: does the relay keep the file?
            d.relay = RelayCopy::Asked;
            d.active_at = now;
            self.emit(Output::ToServer(ClientFrame::FetchFile { attachment: id }));
            return;
        }
        let Some(source) = source else {
            if d.relay != RelayCopy::Asked {
                self.reach_co_recipients(id);
            }
            return;
        };
        let message_id = d.record.message_id.clone();
        // Requests go to one source at a time; a new one is asked afresh.
        if d.asked.as_ref().is_some_and(|a| *a != source) {
            d.requested.clear();
            d.list_requested = false;
        }
        d.asked = Some(source.clone());
        if let Some(start) = d.record.progress.next_hash_page() {
            // (The relay sends the whole list with `FileInfo`, so this is a peer.)
            if let (false, Source::Peer(peer)) = (d.list_requested, &source) {
                d.list_requested = true;
                d.active_at = now;
                let peer = peer.clone();
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
            // Complete once every chunk is stored too.
            if d.unstored > 0 {
                return;
            }
            d.checking = true;
            match d.check.take() {
                // Checked on the way in: decide now.
                Some(c) if c.next_index() == d.record.attachment.chunk_count() => {
                    let result = c.finish().map_err(FileCheckFailure::Invalid);
                    self.file_checked(id, result);
                }
                _ => self.emit(Output::CheckFile(id)),
            }
            return;
        }
        // Top the window up once half of it arrived and was stored.
        let ranges = d
            .record
            .progress
            .next_request(&mut d.requested, d.unstored, WINDOW);
        if ranges.is_empty() {
            return;
        }
        d.active_at = now;
        match source {
            Source::Peer(peer) => self.send_peer(
                &peer,
                PeerFrame::GetChunks {
                    message_id,
                    attachment: id,
                    ranges,
                },
            ),
            Source::Relay => self.emit(Output::ToServer(ClientFrame::FetchChunks {
                attachment: id,
                ranges,
            })),
        }
    }

    /// A data channel to `peer` opened or closed: the UI's "available when … is online" /
    /// progress of the files `peer` sends changes.
    pub(super) fn downloads_link_changed(&mut self, peer: &Address) {
        let ids: Vec<AttachmentId> = self
            .downloads
            .iter()
            .filter(|(_, d)| &d.record.from == peer && d.record.state == DownloadState::Fetching)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.event(Event::DownloadChanged(id));
        }
    }

    /// A data channel to `peer` closed: what was asked of it is asked again next time.
    pub(super) fn downloads_peer_gone(&mut self, peer: &Address) {
        self.downloads_link_changed(peer);
        for d in self.downloads.values_mut() {
            if d.asked.as_ref() == Some(&Source::Peer(peer.clone())) {
                d.requested.clear();
                d.list_requested = false;
                d.asked = None;
            }
        }
        self.emit(Output::StopServing {
            peer: peer.clone(),
            attachment: None,
        });
    }

    /// Transfers whose source went quiet are asked again; called on every tick.
    pub(super) fn downloads_tick(&mut self) {
        self.files_tick();
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
            sources.extend(self.own_node.clone());
        }
        for s in sources {
            self.pump_downloads(&s);
        }
    }

    /// When `downloads_tick` has work: an unanswered request times out.
    pub(super) fn downloads_timeout(&self) -> Option<Millis> {
        let transfers = self
            .downloads
            .values()
            .filter(|d| d.record.state == DownloadState::Fetching && d.waiting_for_peer())
            .map(|d| (d.active_at + self.config.ack_timeout).max(self.now));
        transfers.chain(self.files_timeout()).min()
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
        self.store(StoreWrite::PutDownload(stored(&record)));
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
        self.store(StoreWrite::PutDownload(stored(&record)));
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
                if self.sending_stopped.contains(&(attachment, peer.clone())) {
                    self.refuse_stopped(&peer, attachment);
                } else if self.may_fetch(&peer, &message_id, attachment) {
                    self.emit(Output::Serve {
                        peer,
                        attachment,
                        request: ServeRequest::ChunkList { start },
                    });
                } else {
                    self.refuse_transfer(&peer, &message_id, attachment);
                }
            }
            PeerFrame::GetChunks {
                message_id,
                attachment,
                ranges,
            } => {
                let count = self
                    .attachment_of(&message_id, attachment)
                    .map_or(0, |a| a.chunk_count());
                let sane = ranges.iter().all(|&(s, e)| s < e && e <= count)
                    && ranges.iter().map(|&(s, e)| e - s).sum::<u32>() <= 4 * WINDOW;
                if self.sending_stopped.contains(&(attachment, peer.clone())) {
                    self.refuse_stopped(&peer, attachment);
                } else if !self.may_fetch(&peer, &message_id, attachment) {
                    self.refuse_transfer(&peer, &message_id, attachment);
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
                    return self.refuse_transfer(&peer, &message_id, attachment);
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
                        self.store(StoreWrite::PutDownload(stored(&record)));
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
            } => self.receive_chunk(Some(peer), attachment, index, data, None),
            PeerFrame::TransferRefused { attachment, reason } if peer.is_storage_node() => {
                if self
                    .outgoing
                    .values()
                    .any(|o| o.mail.attachments.iter().any(|a| a.id == attachment))
                {
                    self.push_refused(&peer, attachment, reason);
                } else {
                    self.own_node_refused(&peer, attachment);
                }
            }
            PeerFrame::TransferRefused { attachment, reason } => {
                let now = self.now;
                if let Some(d) = self.downloads.get_mut(&attachment) {
                    if d.record.from != peer && d.record.state == DownloadState::Fetching {
                        // A co-recipient without the whole file: ask elsewhere.
                        return self.refused_by_other(&peer, attachment);
                    }
                    if d.record.from == peer && d.record.state == DownloadState::Fetching {
                        d.record.state = DownloadState::Failed {
                            at: now,
                            reason: format!("{peer} will not send it: {reason}"),
                        };
                        d.requested.clear();
                        d.list_requested = false;
                        let record = d.record.clone();
                        self.store(StoreWrite::PutDownload(stored(&record)));
                        self.event(Event::DownloadChanged(attachment));
                    }
                }
            }
            _ => {}
        }
    }

    /// A node other than the sender's (this account's storage node, a co-recipient's) does
    /// not have attachment `id` whole: the next source is asked.
    fn refused_by_other(&mut self, peer: &Address, id: AttachmentId) {
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.state != DownloadState::Fetching {
            return;
        }
        if d.refused_by.insert(peer.clone()) && d.asked == Some(Source::Peer(peer.clone())) {
            d.requested.clear();
            d.list_requested = false;
            d.asked = None;
        }
        self.request_more(id);
    }

    /// This account's storage node does not have attachment `id` (yet).
    pub(super) fn own_node_refused(&mut self, node: &Address, id: AttachmentId) {
        if self.own_node.as_ref() == Some(node) {
            self.refused_by_other(node, id);
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

    /// `peer` is a recipient of mail `message_id`, which carries `id`, and this node has
    /// the file: it sent the mail, or received it and has the whole file.
    fn may_fetch(&self, peer: &Address, message_id: &MessageId, id: AttachmentId) -> bool {
        if self.sent_attachment(message_id, id).is_some() {
            // A recipient, or a recipient's storage node (only its paired key signs in as
            // `name+node`), unless the recipient deleted the mail before fetching the file.
            let o = &self.outgoing[message_id];
            return o.mail.recipients().iter().any(|r| {
                (r == peer || (peer.is_storage_node() && r.storage_node() == *peer))
                    && !o.declined_by(id, r)
            });
        }
        let whole = self.downloads.get(&id).is_some_and(|d| {
            &d.record.message_id == message_id
                && matches!(d.record.state, DownloadState::Complete { .. })
        });
        whole
            && peer != &self.identity.address
            && self
                .inbox
                .get(message_id)
                .is_some_and(|r| r.mail.recipients().contains(peer))
    }

    /// The attachment `id` of mail `message_id`, sent or received by this node.
    fn attachment_of(&self, message_id: &MessageId, id: AttachmentId) -> Option<&AttachmentRef> {
        self.sent_attachment(message_id, id).or_else(|| {
            self.inbox
                .get(message_id)?
                .mail
                .attachments
                .iter()
                .find(|a| a.id == id)
        })
    }

    /// The person stops sending attachment `id` to `to` (for this session of the page):
    /// what is queued is dropped and `to` is told; its later requests are refused.
    pub(super) fn stop_sending(&mut self, id: AttachmentId, to: Address) {
        if !self.sending_stopped.insert((id, to.clone())) {
            return;
        }
        self.emit(Output::StopServing {
            peer: to.clone(),
            attachment: Some(id),
        });
        self.refuse_stopped(&to, id);
    }

    /// Sending `id` to `to` was stopped by the person (see [`Node::sending_stopped`]).
    pub fn sending_stopped(&self, id: AttachmentId, to: &Address) -> bool {
        self.sending_stopped.contains(&(id, to.clone()))
    }

    fn refuse_stopped(&mut self, peer: &Address, attachment: AttachmentId) {
        self.send_peer(
            peer,
            PeerFrame::TransferRefused {
                attachment,
                reason: "the sender stopped sending it".into(),
            },
        );
    }

    fn refuse_transfer(
        &mut self,
        peer: &Address,
        message_id: &MessageId,
        attachment: AttachmentId,
    ) {
        let deleted = !self.outgoing.contains_key(message_id)
            && self.deleted.get(message_id).is_some_and(|d| d.sent);
        let declined = self
            .outgoing
            .get(message_id)
            .is_some_and(|o| o.declined_by(attachment, &peer.owner()));
        let reason = if deleted {
            super::SENDER_DELETED
        } else if declined {
            super::RECIPIENT_DELETED
        } else {
            "no such attachment for you here"
        };
        self.send_peer(
            peer,
            PeerFrame::TransferRefused {
                attachment,
                reason: reason.into(),
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
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        if !self.may_send_us(d, &peer) || d.record.state != DownloadState::Fetching {
            return;
        }
        let d = self.downloads.get_mut(&id).expect("looked up above");
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

    /// A chunk from the sender's node (`peer`), or from the relay (`None`); `sha256` is its
    /// hash if the driver computed it (`Input::Chunk`).
    pub(super) fn receive_chunk(
        &mut self,
        peer: Option<Address>,
        id: AttachmentId,
        index: u32,
        data: Vec<u8>,
        sha256: Option<Hash>,
    ) {
        let now = self.now;
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        if peer.as_ref().is_some_and(|p| !self.may_send_us(d, p))
            || d.record.state != DownloadState::Fetching
        {
            return;
        }
        let d = self.downloads.get_mut(&id).expect("looked up above");
        let peer = peer.unwrap_or_else(|| d.record.from.clone());
        d.requested.remove(&index);
        d.active_at = now;
        let accepted = match sha256 {
            Some(h) => d.record.progress.accept_hashed_chunk(index, &data, || h),
            None => d.record.progress.accept_chunk(index, &data),
        };
        match accepted {
            Ok(Accepted::New) => {
                // Decrypt and hash it now if it is the next in order (saves reading the
                // whole file back at the end).
                if let Some(c) = &mut d.check {
                    if c.next_index() != index || c.push(index, &data).is_err() {
                        d.check = None;
                    }
                }
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
                let record = save.then(|| stored(&d.record));
                d.unstored += 1;
                let op = self.store(StoreWrite::PutChunk {
                    attachment: id,
                    index,
                    data,
                });
                self.chunk_writes.insert(op, (id, index));
                if let Some(r) = record {
                    self.store(StoreWrite::PutDownload(r));
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
            // The streaming check cannot go on past a chunk that is not stored.
            d.check = None;
            let first = d.record.state == DownloadState::Fetching;
            if first {
                d.record.state = DownloadState::Failed {
                    at: self.now,
                    reason: format!("could not store it: {reason}"),
                };
                d.requested.clear();
                d.list_requested = false;
            }
            // Persisted after every failed chunk: the record lists only stored chunks.
            let (peer, record) = (d.record.from.clone(), stored(&d.record));
            self.store(StoreWrite::PutDownload(record));
            if first {
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
        let inline = d.record.attachment.inline;
        let mut list = None;
        match result {
            Ok(()) => {
                d.record.state = DownloadState::Complete { at: now };
                list = d.record.progress.hashes().map(<[Hash]>::to_vec);
                // The relay may keep a copy for this account: it can go.
                if inline {
                    self.files_to_release.insert(id);
                }
            }
            Err(FileCheckFailure::ChunkMissing(i)) => d.record.progress.forget_chunk(i),
            Err(FileCheckFailure::Invalid(e)) => {
                d.record.state = DownloadState::Failed {
                    at: now,
                    reason: format!("the file does not match the mail: {e}"),
                }
            }
        }
        let (peer, record) = (d.record.from.clone(), d.record.clone());
        // Kept so this node can pass the file on to other recipients of the mail.
        if let Some(hashes) = list {
            self.store(StoreWrite::PutChunkList {
                attachment: id,
                hashes,
            });
        }
        self.store(StoreWrite::PutDownload(stored(&record)));
        self.event(Event::DownloadChanged(id));
        self.release_files();
        self.tell_sender(&peer);
        self.pump_downloads(&peer);
    }

    // ----- files the relay keeps for offline recipients -----

    /// Copies the inline attachments of mail `message_id` to the relay for `to`, whose
    /// sealed copy the relay just confirmed (`Deposited`).
    pub(super) fn start_uploads(&mut self, to: &Address, message_id: &MessageId) {
        let Some(o) = self.outgoing.get(message_id) else {
            return;
        };
        // A mail called back leaves no files at the relay.
        if o.cancelled {
            return;
        }
        let todo: Vec<(AttachmentId, u64)> = o
            .mail
            .attachments
            .iter()
            .filter(|a| a.inline)
            .filter(|a| {
                let key = (a.id, to.clone());
                !o.relay_has.contains(&key) && !o.fetched.contains(&key)
            })
            .map(|a| (a.id, a.size))
            .collect();
        for (attachment, size) in todo {
            let key = (attachment, to.clone());
            if self.uploads.contains_key(&key) {
                continue;
            }
            self.uploads.insert(
                key,
                Upload {
                    message_id: message_id.clone(),
                    queue: VecDeque::new(),
                    in_flight: BTreeSet::new(),
                    active_at: self.now,
                },
            );
            self.emit(Output::Upload {
                to: to.clone(),
                message_id: message_id.clone(),
                attachment,
                request: UploadRequest::Announce { size },
            });
        }
    }

    fn upload_more(&mut self, to: &Address, attachment: AttachmentId) {
        let key = (attachment, to.clone());
        let Some(u) = self.uploads.get_mut(&key) else {
            return;
        };
        u.active_at = self.now;
        if u.queue.is_empty() && u.in_flight.is_empty() {
            // The relay has the whole file.
            let message_id = u.message_id.clone();
            self.uploads.remove(&key);
            if let Some(o) = self.outgoing.get_mut(&message_id) {
                if !o.relay_has.contains(&key) {
                    o.relay_has.push(key);
                    self.persist_outgoing(&message_id);
                }
            }
            return;
        }
        let mut indices = Vec::new();
        while u.in_flight.len() < UPLOAD_WINDOW {
            let Some(i) = u.queue.pop_front() else { break };
            u.in_flight.insert(i);
            indices.push(i);
        }
        if !indices.is_empty() {
            let message_id = u.message_id.clone();
            self.emit(Output::Upload {
                to: to.clone(),
                message_id,
                attachment,
                request: UploadRequest::Chunks { indices },
            });
        }
    }

    pub(super) fn handle_file_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::FileAccepted {
                to,
                attachment,
                missing,
            } => {
                if let Some(u) = self.uploads.get_mut(&(attachment, to.clone())) {
                    u.queue = missing.iter().flat_map(|&(s, e)| s..e).collect();
                    u.in_flight.clear();
                    self.upload_more(&to, attachment);
                }
            }
            ServerFrame::ChunkDeposited {
                to,
                attachment,
                index,
            } => {
                if let Some(u) = self.uploads.get_mut(&(attachment, to.clone())) {
                    u.in_flight.remove(&index);
                    self.upload_more(&to, attachment);
                }
            }
            ServerFrame::FileInfo {
                attachment,
                from,
                size,
                hashes,
            } => self.relay_file_info(attachment, from, size, &hashes),
            ServerFrame::FileChunk {
                attachment,
                index,
                data,
            } => match BASE64.decode(data.as_bytes()) {
                Ok(bytes) => self.receive_chunk(None, attachment, index, bytes, None),
                Err(_) => self.event(Event::ServerError {
                    code: ErrorCode::MalformedFrame,
                    message: format!("the relay sent chunk {index} of {attachment} unreadable"),
                }),
            },
            _ => {}
        }
    }

    fn relay_file_info(&mut self, id: AttachmentId, from: Address, size: u64, hashes: &str) {
        let now = self.now;
        let retry = self.config.deposit_retry;
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if d.record.state != DownloadState::Fetching {
            return;
        }
        let list = BASE64
            .decode(hashes.as_bytes())
            .ok()
            .and_then(|b| hashes_from_bytes(&b));
        let ok = from == d.record.from && size == d.record.attachment.size && {
            match (&list, d.record.progress.next_hash_page()) {
                (Some(list), Some(_)) => {
                    list.chunks(HASHES_PER_PAGE).enumerate().all(|(p, page)| {
                        d.record
                            .progress
                            .accept_hashes((p * HASHES_PER_PAGE) as u32, page)
                            .is_ok()
                    })
                }
                (Some(list), None) => d.record.progress.hashes() == Some(&list[..]),
                (None, _) => false,
            }
        };
        if ok && d.record.progress.hashes().is_some() {
            d.relay = RelayCopy::Available;
            self.request_more(id);
        } else {
            // Not the file the mail describes: fetch it from the sender instead.
            d.relay = RelayCopy::Absent { until: now + retry };
            let message = format!(
                "the relay's copy of {} does not match the mail",
                d.record.attachment.name
            );
            self.event(Event::ServerError {
                code: ErrorCode::Internal,
                message,
            });
            self.request_more(id);
        }
    }

    /// An error the relay sent about attachment `id` (for the recipient `to` of an upload,
    /// or about this node's own fetch).
    pub(super) fn file_error(
        &mut self,
        code: ErrorCode,
        message: String,
        id: AttachmentId,
        to: Option<Address>,
    ) {
        if let Some(to) = to {
            if self.uploads.remove(&(id, to.clone())).is_some() {
                self.event(Event::FileNotKept {
                    to,
                    attachment: id,
                    reason: message,
                });
            }
            return;
        }
        let until = self.now + self.config.deposit_retry;
        if let Some(d) = self.downloads.get_mut(&id) {
            d.relay = RelayCopy::Absent { until };
            // Requests the relay can no longer answer are asked of the sender later.
            if !self.links.get(&d.record.from).is_some_and(|l| l.connected) {
                d.requested.clear();
            }
            if code != ErrorCode::NotFound {
                self.event(Event::ServerError { code, message });
            }
            // The next source (the sender's node, a co-recipient's) is asked now.
            self.request_more(id);
        }
    }

    /// The signaling session ended: uploads and relay fetches are redone in the next one.
    pub(super) fn files_signaling_reset(&mut self) {
        self.uploads.clear();
        let links = &self.links;
        for d in self.downloads.values_mut() {
            d.relay = RelayCopy::Unknown;
            if !links.get(&d.record.from).is_some_and(|l| l.connected) {
                d.requested.clear();
            }
        }
    }

    /// Tells the relay to drop its copies of files this node now has whole.
    pub(super) fn release_files(&mut self) {
        if !self.authenticated {
            return;
        }
        for attachment in std::mem::take(&mut self.files_to_release) {
            self.emit(Output::ToServer(ClientFrame::ReleaseFile { attachment }));
        }
    }

    /// Signed in: every transfer may go on (from the relay if the sender is away).
    pub(super) fn downloads_signed_in(&mut self) {
        self.release_files();
        let sources: BTreeSet<Address> = self
            .downloads
            .values()
            .filter(|d| d.record.state == DownloadState::Fetching)
            .map(|d| d.record.from.clone())
            .collect();
        for s in sources {
            self.pump_downloads(&s);
        }
    }

    /// Uploads the relay stopped answering are dropped (redone at the next sign-in), and
    /// relay copies found absent are asked about again when their pause is over.
    fn files_tick(&mut self) {
        let now = self.now;
        let timeout = self.config.ack_timeout;
        self.uploads.retain(|_, u| u.active_at + timeout > now);
        for d in self.downloads.values_mut() {
            if matches!(d.relay, RelayCopy::Absent { until } if until <= now) {
                d.relay = RelayCopy::Unknown;
            }
            if d.relay == RelayCopy::Asked && d.active_at + timeout <= now {
                d.relay = RelayCopy::Unknown;
            }
        }
    }

    fn files_timeout(&self) -> Option<Millis> {
        let timeout = self.config.ack_timeout;
        let uploads = self.uploads.values().map(|u| u.active_at + timeout);
        let relay = self.downloads.values().filter_map(|d| match d.relay {
            RelayCopy::Absent { until } if d.record.state == DownloadState::Fetching => Some(until),
            RelayCopy::Asked => Some(d.active_at + timeout),
            _ => None,
        });
        uploads.chain(relay).map(|t| t.max(self.now)).min()
    }
}

/// The record to persist: without the chunk list (not persisted anyway), so it is cheap to
/// make after every stored chunk.
fn stored(r: &DownloadRecord) -> Box<DownloadRecord> {
    Box::new(DownloadRecord {
        message_id: r.message_id.clone(),
        from: r.from.clone(),
        attachment: r.attachment.clone(),
        progress: r.progress.persisted(),
        state: r.state.clone(),
        sender_knows: r.sender_knows,
    })
}
