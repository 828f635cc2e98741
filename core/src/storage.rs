//! A storage node's state machine (sans-IO): the always-on peer that keeps one person's
//! attachments — encrypted chunks only; it never has a file's key or any mail key.
//!
//! Filling it: the sender of a mail tells the storage node of a recipient (the owner) what
//! to keep (`PeerFrame::StoreFile`: the mail, the attachment, its size and chunk-list root).
//! The node pulls the file from that sender over the same data channel, like a recipient
//! does: the chunk list page by page (checked against the root), then missing chunks in
//! windows of [`WINDOW`], each checked against the list before it is stored. The record
//! ([`KeptFile`]: which chunks are held) is stored after each chunk, so a transfer resumes
//! from stored chunks; when the sender goes away mid-transfer the node watches its presence
//! and goes on when it is back. With the whole file it tells the sender (`FileReceived`),
//! until acknowledged. A file for someone else, or beyond the node's quota, is refused
//! (`TransferRefused`).
//!
//! Taking over from the relay: signed in, the node lists the whole files the relay keeps
//! for its owner (`ListFiles`; the relay also pushes `FilesKept` when one becomes whole
//! while the node is signed in). A file it does not have is fetched from the relay
//! (`FetchFile` for the chunk list, `FetchChunks` in windows), checked the same way; once
//! the node has a file whole, it releases the relay's copy (`ReleaseFile`), so the relay
//! keeps it no longer.
//!
//! Serving it: the owner (any of their browsers) asks for the chunk list and chunks
//! (`GetChunkList` / `GetChunks`) of a file the node has whole; the driver reads and sends
//! them ([`StorageOutput::Serve`]). Anyone else, or a file not (yet) whole here, gets
//! `TransferRefused`, and the owner's browser asks the next source.
//!
//! Deleting from it: the owner's browser, when the person deletes a received mail, tells
//! the node to delete that mail's files (`PeerFrame::DropFiles`); the node deletes each
//! ([`StorageOutput::DeleteFile`]) and answers `FilesDropped` once it is gone, so the
//! owner stops asking. Only the owner may.
//!
//! Driving it: feed [`StorageInput`]s with the current time, execute the
//! [`StorageOutput`]s in order (a chunk's `PutChunk` comes before the `PutFile` that counts
//! it; answer each with `StorageInput::Stored`), call `Tick` at [`StorageNode::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::address::Address;
use base64::Engine as _;

use crate::attach::{
    chunks_root, hashes_from_bytes, Accepted, AttachmentId, Download, Hash, HASHES_PER_PAGE,
};
use crate::mail::{MessageId, Millis};
use crate::node::ServeRequest;
use crate::wire::peer::PeerFrame;
use crate::wire::signal::{ClientFrame, FileItem, PresenceStatus, ServerFrame};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Chunks asked for at once.
pub const WINDOW: u32 = crate::node::WINDOW;
/// A request not answered this long is made again.
pub const REQUEST_TIMEOUT_MS: Millis = 15_000;

/// One file the node keeps (or is fetching) for its owner; what the driver persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    pub message_id: MessageId,
    /// The sender, which the node pulls the file from.
    pub from: Address,
    /// Which chunks are held and verified (the chunk list is stored apart, `PutList`).
    pub progress: Download,
    /// When the sender asked the node to keep it.
    pub since: Millis,
    /// The sender acknowledged that the node has the whole file.
    pub sender_knows: bool,
    /// Fetched from the relay (which kept it for the owner), not from the sender.
    #[serde(default)]
    pub via_relay: bool,
}

impl KeptFile {
    pub fn id(&self) -> AttachmentId {
        self.progress.id
    }
    pub fn is_complete(&self) -> bool {
        self.progress.is_complete()
    }
}

/// What happened, for the driver's log or a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageEvent {
    /// A sender asked the node to keep a new file.
    FileStarted(AttachmentId),
    /// Every chunk of the file is stored.
    FileComplete(AttachmentId),
    /// The owner had the file deleted (it is gone from the store).
    FileDropped(AttachmentId),
    /// A peer's request was refused; `reason` is what it was told.
    Refused { peer: Address, reason: String },
    /// A peer sent something unreadable or wrong.
    ProtocolError { peer: Address, reason: String },
    /// A write failed: the transfer stops until the driver restarts.
    StoreFailed {
        attachment: AttachmentId,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageInput {
    /// Frames from the relay (presence of senders the node waits for).
    Server(ServerFrame),
    /// The signaling session is signed in (again).
    SignedIn,
    /// The signaling session ended (data channels may stay open).
    SignedOut,
    PeerConnected(Address),
    PeerDisconnected(Address),
    Frame {
        peer: Address,
        bytes: Vec<u8>,
    },
    /// A write of this attachment finished: `PutChunk` (`chunk` is its index), or
    /// `PutFile` / `PutList` (`chunk` is `None`).
    Stored {
        attachment: AttachmentId,
        chunk: Option<u32>,
        result: Result<(), String>,
    },
    /// A `DeleteFile` finished.
    Deleted {
        attachment: AttachmentId,
        result: Result<(), String>,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOutput {
    ToServer(ClientFrame),
    /// Open a data channel to `peer` (answered by `PeerConnected` or `PeerDisconnected`).
    Connect(Address),
    ToPeer {
        peer: Address,
        bytes: Vec<u8>,
    },
    /// Store a verified chunk. Answered by `Stored`.
    PutChunk {
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    },
    /// Store a file's whole, checked chunk list (before its chunks are served).
    PutList {
        attachment: AttachmentId,
        hashes: Vec<Hash>,
    },
    /// Store the record. Answered by `Stored`.
    PutFile(KeptFile),
    /// Send the owner what it asked of a whole file, read from the store.
    Serve {
        peer: Address,
        attachment: AttachmentId,
        request: ServeRequest,
    },
    /// Drop what is queued for `peer` of this file.
    StopServing {
        peer: Address,
        attachment: AttachmentId,
    },
    /// Delete the file: its record, chunk list and chunks (the record first). Answered by
    /// `StorageInput::Deleted`.
    DeleteFile(AttachmentId),
    Event(StorageEvent),
}

/// A file being kept, and this session's bookkeeping of its transfer.
#[derive(Debug)]
struct Keeping {
    file: KeptFile,
    /// Chunks asked for and not arrived.
    requested: BTreeSet<u32>,
    list_requested: bool,
    /// Chunks arrived and not yet stored (they count against the window).
    unstored: u32,
    /// When something was last asked for or arrived.
    active_at: Millis,
    /// A write failed or the sender refused: nothing more is asked this session.
    stopped: bool,
    /// The relay keeps a copy for the owner, to be released once the node has the file.
    relay_has: bool,
    /// Fetched from the relay and its chunk list not in yet (nothing persisted so far).
    awaiting_info: bool,
}

/// The storage node of `owner` (see the module docs).
#[derive(Debug)]
pub struct StorageNode {
    owner: Address,
    /// Most bytes (plaintext sizes) kept at once.
    quota: u64,
    files: BTreeMap<AttachmentId, Keeping>,
    links: BTreeSet<Address>,
    presence: BTreeMap<Address, PresenceStatus>,
    subscribed: BTreeSet<Address>,
    signed_in: bool,
    now: Millis,
    out: VecDeque<StorageOutput>,
    /// Files being deleted, and who asked (answered `FilesDropped` once gone).
    dropping: BTreeMap<AttachmentId, Address>,
    /// Files whose deletion failed: deleted again when the owner asks again.
    undeleted: BTreeSet<AttachmentId>,
}

impl StorageNode {
    /// A node for `owner` keeping at most `quota` bytes, with the files (and the chunk lists
    /// of those that have one) its store holds.
    pub fn new(owner: Address, quota: u64, kept: Vec<(KeptFile, Option<Vec<Hash>>)>) -> Self {
        let mut node = StorageNode {
            owner,
            quota,
            files: BTreeMap::new(),
            links: BTreeSet::new(),
            presence: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            signed_in: false,
            now: 0,
            out: VecDeque::new(),
            dropping: BTreeMap::new(),
            undeleted: BTreeSet::new(),
        };
        for (mut file, hashes) in kept {
            if let Some(hashes) = hashes {
                for (i, page) in hashes.chunks(HASHES_PER_PAGE).enumerate() {
                    let start = (i * HASHES_PER_PAGE) as u32;
                    if file.progress.accept_hashes(start, page).is_err() {
                        break;
                    }
                }
            }
            node.files.insert(
                file.id(),
                Keeping {
                    file,
                    requested: BTreeSet::new(),
                    list_requested: false,
                    unstored: 0,
                    active_at: 0,
                    stopped: false,
                    relay_has: false,
                    awaiting_info: false,
                },
            );
        }
        node
    }

    pub fn owner(&self) -> &Address {
        &self.owner
    }

    /// The files kept or being fetched.
    pub fn files(&self) -> impl Iterator<Item = &KeptFile> {
        self.files.values().map(|k| &k.file)
    }

    /// Plaintext bytes of the files kept or being fetched.
    pub fn bytes_kept(&self) -> u64 {
        self.files.values().map(|k| k.file.progress.size()).sum()
    }

    pub fn poll_output(&mut self) -> Option<StorageOutput> {
        self.out.pop_front()
    }

    /// When to call `Tick` next: the first outstanding request's timeout.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.files
            .values()
            .filter(|k| (!k.requested.is_empty() || k.list_requested) && !k.awaiting_info)
            .map(|k| (k.active_at + REQUEST_TIMEOUT_MS).max(self.now))
            .min()
    }

    pub fn handle(&mut self, input: StorageInput, now: Millis) {
        self.now = self.now.max(now);
        match input {
            StorageInput::SignedIn => {
                self.signed_in = true;
                self.subscribed.clear();
                self.watch_senders();
                // Whatever waited at the relay while the node was away.
                self.emit(StorageOutput::ToServer(ClientFrame::ListFiles));
                let relayed: Vec<AttachmentId> = self
                    .files
                    .iter()
                    .filter(|(_, k)| k.file.via_relay && !k.file.is_complete())
                    .map(|(id, _)| *id)
                    .collect();
                for id in relayed {
                    if self.files[&id].awaiting_info {
                        let frame = ClientFrame::FetchFile { attachment: id };
                        self.emit(StorageOutput::ToServer(frame));
                    } else {
                        self.request_more(id);
                    }
                }
            }
            StorageInput::SignedOut => {
                self.signed_in = false;
                self.subscribed.clear();
                // Requests to the relay are lost with the session: asked again at sign-in.
                for k in self.files.values_mut() {
                    if k.file.via_relay {
                        k.requested.clear();
                    }
                }
            }
            StorageInput::Server(ServerFrame::Presence { address, status }) => {
                self.presence.insert(address.clone(), status);
                if status == PresenceStatus::Online {
                    self.pump(&address);
                }
            }
            StorageInput::Server(frame) => self.relay_frame(frame),
            StorageInput::PeerConnected(peer) => {
                self.links.insert(peer.clone());
                self.pump(&peer);
                self.tell_sender(&peer);
            }
            StorageInput::PeerDisconnected(peer) => {
                self.links.remove(&peer);
                for k in self.files.values_mut() {
                    if k.file.from == peer {
                        k.requested.clear();
                        k.list_requested = false;
                    }
                }
            }
            StorageInput::Frame { peer, bytes } => match PeerFrame::decode(&bytes) {
                Ok(frame) => self.frame(peer, frame),
                Err(e) => self.event(StorageEvent::ProtocolError {
                    peer,
                    reason: e.to_string(),
                }),
            },
            StorageInput::Stored {
                attachment,
                chunk,
                result,
            } => self.stored(attachment, chunk, result),
            StorageInput::Deleted { attachment, result } => self.deleted(attachment, result),
            StorageInput::Tick => {
                let now = self.now;
                let mut senders = BTreeSet::new();
                let mut relayed = Vec::new();
                for (id, k) in self.files.iter_mut() {
                    let waiting = !k.requested.is_empty() || k.list_requested;
                    if waiting && !k.awaiting_info && k.active_at + REQUEST_TIMEOUT_MS <= now {
                        k.requested.clear();
                        k.list_requested = false;
                        if k.file.via_relay {
                            relayed.push(*id);
                        } else {
                            senders.insert(k.file.from.clone());
                        }
                    }
                }
                for s in senders {
                    self.pump(&s);
                }
                for id in relayed {
                    self.request_more(id);
                }
            }
        }
    }

    fn frame(&mut self, peer: Address, frame: PeerFrame) {
        match frame {
            PeerFrame::StoreFile {
                owner,
                message_id,
                attachment,
                size,
                chunks_root,
            } => self.store_file(peer, owner, message_id, attachment, size, chunks_root),
            PeerFrame::ChunkList {
                attachment,
                start,
                hashes,
            } => self.chunk_list(peer, attachment, start, &hashes),
            PeerFrame::Chunk {
                attachment,
                index,
                data,
            } => self.chunk(Some(peer), attachment, index, data),
            PeerFrame::TransferRefused { attachment, reason } => {
                if let Some(k) = self.files.get_mut(&attachment) {
                    if k.file.from == peer && !k.file.is_complete() {
                        k.stopped = true;
                        k.requested.clear();
                        k.list_requested = false;
                        self.event(StorageEvent::Refused {
                            peer,
                            reason: format!("the sender will not send it: {reason}"),
                        });
                    }
                }
            }
            PeerFrame::DropFiles { attachments } => self.drop_files(peer, attachments),
            PeerFrame::FileReceivedAck { attachment } => {
                if let Some(k) = self.files.get_mut(&attachment) {
                    if k.file.from == peer && !k.file.sender_knows {
                        k.file.sender_knows = true;
                        let file = k.file.clone();
                        self.emit(StorageOutput::PutFile(file));
                    }
                }
            }
            PeerFrame::GetChunkList {
                message_id,
                attachment,
                start,
            } => {
                if self.may_serve(&peer, &message_id, attachment) {
                    self.emit(StorageOutput::Serve {
                        peer,
                        attachment,
                        request: ServeRequest::ChunkList { start },
                    });
                } else {
                    self.refuse_serving(peer, attachment);
                }
            }
            PeerFrame::GetChunks {
                message_id,
                attachment,
                ranges,
            } => {
                if !self.may_serve(&peer, &message_id, attachment) {
                    return self.refuse_serving(peer, attachment);
                }
                let count = self.files[&attachment].file.progress.chunk_count();
                let sane = ranges.iter().all(|&(s, e)| s < e && e <= count)
                    && ranges.iter().map(|&(s, e)| e - s).sum::<u32>() <= 4 * WINDOW;
                if sane {
                    self.emit(StorageOutput::Serve {
                        peer,
                        attachment,
                        request: ServeRequest::Chunks { ranges },
                    });
                } else {
                    self.event(StorageEvent::ProtocolError {
                        peer,
                        reason: format!("asked for chunks of {attachment} that do not exist"),
                    });
                }
            }
            PeerFrame::CancelTransfer { attachment } => {
                self.emit(StorageOutput::StopServing { peer, attachment });
            }
            PeerFrame::Mail(mail) => {
                let message_id = mail.message_id.clone();
                self.send(
                    &peer,
                    &PeerFrame::Reject {
                        message_id,
                        reason: "a storage node keeps attachments, not mail".into(),
                    },
                );
            }
            other => self.event(StorageEvent::ProtocolError {
                peer,
                reason: format!("a storage node does not take {}", frame_name(&other)),
            }),
        }
    }

    /// The owner deletes `attachments` (files of mail they deleted). Files this node does
    /// not have are answered at once; the others once deleted.
    fn drop_files(&mut self, peer: Address, attachments: Vec<AttachmentId>) {
        if peer != self.owner {
            return self.event(StorageEvent::Refused {
                peer,
                reason: "only the owner deletes files from a storage node".into(),
            });
        }
        let mut absent = Vec::new();
        for id in attachments {
            if self.files.remove(&id).is_some() || self.undeleted.remove(&id) {
                self.emit(StorageOutput::StopServing {
                    peer: peer.clone(),
                    attachment: id,
                });
                self.dropping.insert(id, peer.clone());
                self.emit(StorageOutput::DeleteFile(id));
            } else if !self.dropping.contains_key(&id) {
                absent.push(id);
            }
        }
        if !absent.is_empty() {
            self.send(
                &peer,
                &PeerFrame::FilesDropped {
                    attachments: absent,
                },
            );
        }
    }

    fn deleted(&mut self, id: AttachmentId, result: Result<(), String>) {
        let Some(peer) = self.dropping.remove(&id) else {
            return;
        };
        match result {
            Ok(()) => {
                self.event(StorageEvent::FileDropped(id));
                let frame = PeerFrame::FilesDropped {
                    attachments: vec![id],
                };
                self.send(&peer, &frame);
            }
            // Not answered: the owner asks again at its next connection.
            Err(reason) => {
                self.undeleted.insert(id);
                self.event(StorageEvent::StoreFailed {
                    attachment: id,
                    reason,
                })
            }
        }
    }

    fn store_file(
        &mut self,
        peer: Address,
        owner: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        size: u64,
        chunks_root: Hash,
    ) {
        if owner != self.owner {
            let reason = format!("this is the storage node of {}, not of {owner}", self.owner);
            return self.refuse(peer, attachment, reason);
        }
        if let Some(k) = self.files.get_mut(&attachment) {
            if k.file.message_id != message_id || k.file.progress.size() != size {
                let reason = "this node keeps a different file by that id".to_string();
                return self.refuse(peer, attachment, reason);
            }
            if k.file.is_complete() {
                return self.tell_sender(&peer);
            }
            // Fetching it already: go on from whoever asks now (it is their file too).
            k.file.from = peer.clone();
            k.stopped = false;
            return self.pump(&peer);
        }
        if self.bytes_kept().saturating_add(size) > self.quota {
            let reason = format!(
                "the storage node of {} is full ({} of {} bytes kept)",
                self.owner,
                self.bytes_kept(),
                self.quota
            );
            return self.refuse(peer, attachment, reason);
        }
        let file = KeptFile {
            message_id,
            from: peer.clone(),
            progress: Download::for_file(attachment, size, chunks_root),
            since: self.now,
            sender_knows: false,
            via_relay: false,
        };
        self.emit(StorageOutput::PutFile(file.clone()));
        self.files.insert(
            attachment,
            Keeping {
                file,
                requested: BTreeSet::new(),
                list_requested: false,
                unstored: 0,
                active_at: self.now,
                stopped: false,
                relay_has: false,
                awaiting_info: false,
            },
        );
        self.event(StorageEvent::FileStarted(attachment));
        self.watch_senders();
        if self.files[&attachment].file.is_complete() {
            // An empty file: nothing to fetch.
            return self.tell_sender(&peer);
        }
        self.pump(&peer);
    }

    fn chunk_list(&mut self, peer: Address, id: AttachmentId, start: u32, page: &[Hash]) {
        let Some(k) = self.files.get_mut(&id) else {
            return;
        };
        if k.file.from != peer {
            return;
        }
        k.list_requested = false;
        k.active_at = self.now;
        if let Err(e) = k.file.progress.accept_hashes(start, page) {
            return self.event(StorageEvent::ProtocolError {
                peer,
                reason: format!("chunk list of {id}: {e}"),
            });
        }
        if let Some(hashes) = k.file.progress.hashes() {
            let hashes = hashes.to_vec();
            self.emit(StorageOutput::PutList {
                attachment: id,
                hashes,
            });
        }
        self.request_more(id);
    }

    /// A chunk from `peer` (`None`: the relay).
    fn chunk(&mut self, peer: Option<Address>, id: AttachmentId, index: u32, data: Vec<u8>) {
        let Some(k) = self.files.get_mut(&id) else {
            return;
        };
        let expected = match &peer {
            None => k.file.via_relay,
            Some(p) => !k.file.via_relay && &k.file.from == p,
        };
        if !expected {
            return;
        }
        let peer = peer.unwrap_or_else(|| k.file.from.clone());
        k.requested.remove(&index);
        k.active_at = self.now;
        match k.file.progress.accept_chunk(index, &data) {
            Ok(Accepted::New) => {
                k.unstored += 1;
                let file = k.file.clone();
                self.emit(StorageOutput::PutChunk {
                    attachment: id,
                    index,
                    data,
                });
                self.emit(StorageOutput::PutFile(file));
            }
            Ok(Accepted::Duplicate) => {}
            Err(e) => self.event(StorageEvent::ProtocolError {
                peer,
                reason: format!("chunk {index} of {id}: {e}"),
            }),
        }
        self.request_more(id);
    }

    fn stored(&mut self, id: AttachmentId, chunk: Option<u32>, result: Result<(), String>) {
        let Some(k) = self.files.get_mut(&id) else {
            return;
        };
        if let Err(reason) = result {
            k.stopped = true;
            k.requested.clear();
            k.list_requested = false;
            return self.event(StorageEvent::StoreFailed {
                attachment: id,
                reason,
            });
        }
        if chunk.is_some() {
            k.unstored = k.unstored.saturating_sub(1);
            return self.request_more(id);
        }
        // The record after the last chunk is stored: the file is here for good.
        if k.file.is_complete() && k.unstored == 0 && !k.stopped {
            let from = k.file.from.clone();
            let release = k.relay_has || k.file.via_relay;
            k.stopped = true;
            self.event(StorageEvent::FileComplete(id));
            self.tell_sender(&from);
            if release {
                self.emit(StorageOutput::ToServer(ClientFrame::ReleaseFile {
                    attachment: id,
                }));
            }
        }
    }

    /// What the relay says about the owner's files it keeps.
    fn relay_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Presence { .. } => {}
            ServerFrame::FilesKept { items } => {
                for item in items {
                    self.relay_keeps(item);
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
                Ok(data) => self.chunk(None, attachment, index, data),
                Err(_) => self.event(StorageEvent::ProtocolError {
                    peer: self.owner.clone(),
                    reason: format!("the relay sent chunk {index} of {attachment} in bad base64"),
                }),
            },
            ServerFrame::FileReleased { attachment } => {
                if let Some(k) = self.files.get_mut(&attachment) {
                    k.relay_has = false;
                }
            }
            ServerFrame::Error {
                about: Some(about),
                message,
                ..
            } => {
                let Some(id) = about.attachment else {
                    return;
                };
                let Some(k) = self.files.get_mut(&id) else {
                    return;
                };
                if k.awaiting_info {
                    // The relay no longer has it (released or expired): nothing was kept.
                    self.files.remove(&id);
                } else if k.file.via_relay && !k.file.is_complete() {
                    k.stopped = true;
                    k.requested.clear();
                    self.event(StorageEvent::Refused {
                        peer: self.owner.clone(),
                        reason: format!("the relay: {message}"),
                    });
                } else {
                    k.relay_has = false;
                }
            }
            _ => {}
        }
    }

    /// The relay keeps `item` for the owner: released at once if the node has it whole,
    /// fetched from the relay if the node does not have it at all.
    fn relay_keeps(&mut self, item: FileItem) {
        let id = item.attachment;
        if let Some(k) = self.files.get_mut(&id) {
            k.relay_has = true;
            if k.file.is_complete() && k.unstored == 0 {
                self.emit(StorageOutput::ToServer(ClientFrame::ReleaseFile {
                    attachment: id,
                }));
            }
            return;
        }
        if self.bytes_kept().saturating_add(item.size) > self.quota {
            return self.event(StorageEvent::Refused {
                peer: self.owner.clone(),
                reason: format!("no room for {id} from the relay ({} bytes)", item.size),
            });
        }
        self.files.insert(
            id,
            Keeping {
                file: KeptFile {
                    message_id: item.message_id,
                    from: item.from,
                    // The real root comes with the chunk list (`FileInfo`).
                    progress: Download::for_file(id, item.size, [0; 32]),
                    since: self.now,
                    sender_knows: false,
                    via_relay: true,
                },
                requested: BTreeSet::new(),
                list_requested: true,
                unstored: 0,
                active_at: self.now,
                stopped: false,
                relay_has: true,
                awaiting_info: true,
            },
        );
        self.emit(StorageOutput::ToServer(ClientFrame::FetchFile {
            attachment: id,
        }));
    }

    fn relay_file_info(&mut self, id: AttachmentId, from: Address, size: u64, hashes: &str) {
        let Some(k) = self.files.get_mut(&id) else {
            return;
        };
        if !k.awaiting_info {
            return;
        }
        let list = BASE64
            .decode(hashes.as_bytes())
            .ok()
            .and_then(|b| hashes_from_bytes(&b))
            .filter(|l| l.len() as u32 == crate::attach::chunk_count(size));
        let Some(list) = list else {
            self.files.remove(&id);
            return self.event(StorageEvent::ProtocolError {
                peer: self.owner.clone(),
                reason: format!("the relay's chunk list of {id} is not valid"),
            });
        };
        let mut progress = Download::for_file(id, size, chunks_root(&list));
        for (i, page) in list.chunks(HASHES_PER_PAGE).enumerate() {
            let _ = progress.accept_hashes((i * HASHES_PER_PAGE) as u32, page);
        }
        k.file.from = from;
        k.file.progress = progress;
        k.awaiting_info = false;
        k.list_requested = false;
        let file = k.file.clone();
        self.emit(StorageOutput::PutList {
            attachment: id,
            hashes: list,
        });
        self.emit(StorageOutput::PutFile(file));
        self.event(StorageEvent::FileStarted(id));
        self.request_more(id);
    }

    /// Asks `peer` for more of every file it is sending, or for a channel to it.
    fn pump(&mut self, peer: &Address) {
        let ids: Vec<AttachmentId> = self
            .files
            .iter()
            .filter(|(_, k)| {
                &k.file.from == peer && !k.file.via_relay && !k.file.is_complete() && !k.stopped
            })
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        if !self.links.contains(peer) {
            if self.presence.get(peer) == Some(&PresenceStatus::Online) {
                self.emit(StorageOutput::Connect(peer.clone()));
            }
            return;
        }
        for id in ids {
            self.request_more(id);
        }
    }

    fn request_more(&mut self, id: AttachmentId) {
        let now = self.now;
        let Some(k) = self.files.get_mut(&id) else {
            return;
        };
        if k.stopped || k.file.is_complete() || k.awaiting_info {
            return;
        }
        if k.file.via_relay {
            if !self.signed_in {
                return;
            }
        } else if !self.links.contains(&k.file.from) {
            return;
        }
        let peer = k.file.from.clone();
        let message_id = k.file.message_id.clone();
        if let Some(start) = k.file.progress.next_hash_page() {
            if !k.list_requested {
                k.list_requested = true;
                k.active_at = now;
                let frame = PeerFrame::GetChunkList {
                    message_id,
                    attachment: id,
                    start,
                };
                self.send(&peer, &frame);
            }
            return;
        }
        let ranges = k
            .file
            .progress
            .next_request(&mut k.requested, k.unstored, WINDOW);
        if ranges.is_empty() {
            return;
        }
        k.active_at = now;
        if k.file.via_relay {
            let frame = ClientFrame::FetchChunks {
                attachment: id,
                ranges,
            };
            return self.emit(StorageOutput::ToServer(frame));
        }
        let frame = PeerFrame::GetChunks {
            message_id,
            attachment: id,
            ranges,
        };
        self.send(&peer, &frame);
    }

    /// Tells `peer` of every file from it the node has whole and it has not acknowledged.
    fn tell_sender(&mut self, peer: &Address) {
        if !self.links.contains(peer) {
            return;
        }
        let done: Vec<(MessageId, AttachmentId)> = self
            .files
            .values()
            .filter(|k| &k.file.from == peer && k.file.is_complete() && !k.file.sender_knows)
            .map(|k| (k.file.message_id.clone(), k.file.id()))
            .collect();
        for (message_id, attachment) in done {
            self.send(
                peer,
                &PeerFrame::FileReceived {
                    message_id,
                    attachment,
                },
            );
        }
    }

    /// The owner asks for a file this node has whole.
    fn may_serve(&self, peer: &Address, message_id: &MessageId, id: AttachmentId) -> bool {
        peer == &self.owner
            && self.files.get(&id).is_some_and(|k| {
                &k.file.message_id == message_id
                    && k.file.is_complete()
                    && k.file.progress.hashes().is_some()
            })
    }

    fn refuse_serving(&mut self, peer: Address, attachment: AttachmentId) {
        let reason = if peer == self.owner {
            "this storage node does not have the whole file (yet)".to_string()
        } else {
            format!("this storage node serves only {}", self.owner)
        };
        self.refuse(peer, attachment, reason);
    }

    fn refuse(&mut self, peer: Address, attachment: AttachmentId, reason: String) {
        self.send(
            &peer,
            &PeerFrame::TransferRefused {
                attachment,
                reason: reason.clone(),
            },
        );
        self.event(StorageEvent::Refused { peer, reason });
    }

    /// Watches the presence of senders of files not yet whole (to go on when they are back).
    fn watch_senders(&mut self) {
        if !self.signed_in {
            return;
        }
        let new: Vec<Address> = self
            .files
            .values()
            .filter(|k| !k.file.is_complete() && !k.file.via_relay)
            .map(|k| k.file.from.clone())
            .filter(|a| !self.subscribed.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !new.is_empty() {
            self.subscribed.extend(new.iter().cloned());
            self.emit(StorageOutput::ToServer(ClientFrame::Subscribe {
                addresses: new,
            }));
        }
    }

    fn send(&mut self, peer: &Address, frame: &PeerFrame) {
        match frame.encode() {
            Ok(bytes) => self.emit(StorageOutput::ToPeer {
                peer: peer.clone(),
                bytes,
            }),
            Err(e) => self.event(StorageEvent::ProtocolError {
                peer: peer.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn emit(&mut self, out: StorageOutput) {
        self.out.push_back(out);
    }

    fn event(&mut self, e: StorageEvent) {
        self.emit(StorageOutput::Event(e));
    }
}

fn frame_name(frame: &PeerFrame) -> String {
    let debug = format!("{frame:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("that")
        .to_string()
}
