//! Storage nodes in the simulated world: a [`StorageNode`] per paired node address, with a
//! durable file store (records, chunk lists, chunks) that outlives restarts, data channels
//! to and from the people's nodes, presence, and the relay model's location registry.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

use peermail_core::attach::{hash_page, AttachmentId, Hash};
use peermail_core::node::{Input, ServeRequest};
use peermail_core::storage::{KeptFile, StorageInput, StorageNode, StorageOutput};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{
    ClientFrame, ErrorAbout, ErrorCode, FileItem, PresenceStatus, ServerFrame,
};
use peermail_core::Address;

use super::World;

/// What happens on a data channel, for either kind of node.
pub(super) enum Link {
    Up(Address),
    Down(Address),
    Frame(Address, Vec<u8>),
}

/// A storage node: its durable files and, while running, its state machine.
#[derive(Default)]
pub struct SimStorage {
    pub node: Option<StorageNode>,
    pub quota: u64,
    pub records: BTreeMap<AttachmentId, KeptFile>,
    pub lists: BTreeMap<AttachmentId, Vec<Hash>>,
    pub chunks: BTreeMap<(AttachmentId, u32), Vec<u8>>,
    pub links: BTreeSet<Address>,
    pub subscriptions: BTreeSet<Address>,
    pub events: Vec<peermail_core::storage::StorageEvent>,
    /// Chunk frames this node served (to its owner).
    pub chunks_served: u32,
}

impl World {
    /// Pairs a storage node (offline until `storage_online`) with `owner`'s account.
    pub fn add_storage(&mut self, owner: &Address, quota: u64) -> Address {
        let node = owner.storage_node();
        self.storages.insert(
            node.clone(),
            SimStorage {
                quota,
                ..SimStorage::default()
            },
        );
        node
    }

    /// Starts the storage node from its durable files; it signs in.
    pub fn storage_online(&mut self, node: &Address) {
        if self.is_online(node) {
            return;
        }
        let s = self.storages.get_mut(node).expect("a paired storage node");
        let kept = s
            .records
            .values()
            .map(|r| (r.clone(), s.lists.get(&r.id()).cloned()))
            .collect();
        s.node = Some(StorageNode::new(node.owner(), s.quota, kept));
        s.subscriptions.clear();
        self.squeue
            .push_back((node.clone(), StorageInput::SignedIn));
        self.notify_presence(node);
        self.settle();
    }

    /// Stops the storage node (its files stay).
    pub fn storage_offline(&mut self, node: &Address) {
        if !self.is_online(node) {
            return;
        }
        let s = self.storages.get_mut(node).unwrap();
        s.node = None;
        s.subscriptions.clear();
        let peers: Vec<Address> = std::mem::take(&mut s.links).into_iter().collect();
        self.squeue.retain(|(to, _)| to != node);
        for p in peers {
            self.links_of(&p).remove(node);
            self.link_event(&p, Link::Down(node.clone()));
        }
        self.notify_presence(node);
        self.settle();
    }

    /// Whether the storage node has attachment `id` whole (records and every chunk).
    pub fn storage_has(&self, node: &Address, id: AttachmentId) -> bool {
        let s = &self.storages[node];
        s.records.get(&id).is_some_and(|r| {
            r.is_complete()
                && (0..r.progress.chunk_count()).all(|i| s.chunks.contains_key(&(id, i)))
        })
    }

    pub(super) fn links_of(&mut self, a: &Address) -> &mut BTreeSet<Address> {
        if self.storages.contains_key(a) {
            &mut self.storages.get_mut(a).unwrap().links
        } else {
            &mut self.users.get_mut(a).unwrap().links
        }
    }

    /// Queues a data-channel event for `to`, whichever kind of node it is.
    pub(super) fn link_event(&mut self, to: &Address, link: Link) {
        if self.storages.contains_key(to) {
            let input = match link {
                Link::Up(p) => StorageInput::PeerConnected(p),
                Link::Down(p) => StorageInput::PeerDisconnected(p),
                Link::Frame(peer, bytes) => StorageInput::Frame { peer, bytes },
            };
            self.squeue.push_back((to.clone(), input));
        } else {
            let input = match link {
                Link::Up(p) => Input::PeerConnected(p),
                Link::Down(p) => Input::PeerDisconnected(p),
                Link::Frame(peer, bytes) => match PeerFrame::decode(&bytes) {
                    Ok(PeerFrame::Chunk {
                        attachment,
                        index,
                        data,
                    }) if self.driver_hashes_chunks => Input::Chunk {
                        peer,
                        attachment,
                        index,
                        sha256: peermail_core::attach::sha256(&data),
                        data,
                    },
                    _ => Input::Frame { peer, bytes },
                },
            };
            self.queue.push_back((to.clone(), input));
        }
    }

    /// A `Connect` from `from`: a channel opens if both are online and `peer` can be reached.
    pub(super) fn try_connect(&mut self, from: &Address, peer: Address) {
        let ok = self.is_online(&peer)
            && self.is_online(from)
            && !self.relay_down
            && !self.unreachable.contains(&peer)
            && !self.unreachable.contains(from);
        if ok {
            self.links_of(from).insert(peer.clone());
            self.links_of(&peer).insert(from.clone());
            self.link_event(from, Link::Up(peer.clone()));
            self.link_event(&peer, Link::Up(from.clone()));
        } else {
            self.link_event(from, Link::Down(peer));
        }
    }

    pub(super) fn tell_storages_presence(&mut self, who: &Address, status: PresenceStatus) {
        if self.relay_down {
            return;
        }
        let watchers: Vec<Address> = self
            .storages
            .iter()
            .filter(|(_, s)| s.node.is_some() && s.subscriptions.contains(who))
            .map(|(a, _)| a.clone())
            .collect();
        for w in watchers {
            self.squeue.push_back((
                w,
                StorageInput::Server(ServerFrame::Presence {
                    address: who.clone(),
                    status,
                }),
            ));
        }
    }

    pub(super) fn step_storage(&mut self, to: &Address, input: StorageInput) {
        let now = self.now;
        let Some(node) = self.storages.get_mut(to).and_then(|s| s.node.as_mut()) else {
            return;
        };
        node.handle(input, now);
        let mut outs = Vec::new();
        while let Some(o) = node.poll_output() {
            outs.push(o);
        }
        for o in outs {
            self.execute_storage(to, o);
        }
    }

    fn execute_storage(&mut self, from: &Address, out: StorageOutput) {
        match out {
            StorageOutput::ToServer(ClientFrame::Subscribe { addresses }) => {
                for a in addresses {
                    let status = self.status_of(&a);
                    self.storages
                        .get_mut(from)
                        .unwrap()
                        .subscriptions
                        .insert(a.clone());
                    self.squeue.push_back((
                        from.clone(),
                        StorageInput::Server(ServerFrame::Presence { address: a, status }),
                    ));
                }
            }
            StorageOutput::ToServer(frame) => self.storage_to_relay(from, frame),
            StorageOutput::Connect(peer) => self.try_connect(from, peer),
            StorageOutput::ToPeer { peer, bytes } => self.send_frame(from, peer, bytes),
            StorageOutput::PutChunk {
                attachment,
                index,
                data,
            } => {
                let s = self.storages.get_mut(from).unwrap();
                s.chunks.insert((attachment, index), data);
                self.squeue.push_back((
                    from.clone(),
                    StorageInput::Stored {
                        attachment,
                        chunk: Some(index),
                        result: Ok(()),
                    },
                ));
            }
            StorageOutput::PutList { attachment, hashes } => {
                self.storages
                    .get_mut(from)
                    .unwrap()
                    .lists
                    .insert(attachment, hashes);
                self.squeue.push_back((
                    from.clone(),
                    StorageInput::Stored {
                        attachment,
                        chunk: None,
                        result: Ok(()),
                    },
                ));
            }
            StorageOutput::PutFile(file) => {
                let attachment = file.id();
                self.storages
                    .get_mut(from)
                    .unwrap()
                    .records
                    .insert(attachment, file);
                self.squeue.push_back((
                    from.clone(),
                    StorageInput::Stored {
                        attachment,
                        chunk: None,
                        result: Ok(()),
                    },
                ));
            }
            StorageOutput::Serve {
                peer,
                attachment,
                request,
            } => {
                let s = &self.storages[from];
                let mut frames = Vec::new();
                match (request, s.lists.get(&attachment)) {
                    (_, None) => frames.push(PeerFrame::TransferRefused {
                        attachment,
                        reason: "not stored here".into(),
                    }),
                    (ServeRequest::ChunkList { start }, Some(list)) => {
                        frames.push(PeerFrame::ChunkList {
                            attachment,
                            start,
                            hashes: hash_page(list, start).to_vec(),
                        })
                    }
                    (ServeRequest::Chunks { ranges }, Some(_)) => {
                        for (a, b) in ranges {
                            for index in a..b {
                                frames.push(match s.chunks.get(&(attachment, index)) {
                                    Some(data) => PeerFrame::Chunk {
                                        attachment,
                                        index,
                                        data: data.clone(),
                                    },
                                    None => PeerFrame::TransferRefused {
                                        attachment,
                                        reason: format!("chunk {index} is not stored here"),
                                    },
                                });
                            }
                        }
                    }
                }
                for f in frames {
                    if matches!(f, PeerFrame::Chunk { .. }) {
                        self.storages.get_mut(from).unwrap().chunks_served += 1;
                    }
                    self.send_frame(from, peer.clone(), f.encode().unwrap());
                }
            }
            StorageOutput::StopServing { .. } => {}
            StorageOutput::DeleteFile(attachment) => {
                let s = self.storages.get_mut(from).unwrap();
                s.records.remove(&attachment);
                s.lists.remove(&attachment);
                s.chunks.retain(|(a, _), _| *a != attachment);
                self.squeue.push_back((
                    from.clone(),
                    StorageInput::Deleted {
                        attachment,
                        result: Ok(()),
                    },
                ));
            }
            StorageOutput::Event(e) => self.storages.get_mut(from).unwrap().events.push(e),
        }
    }
}

impl World {
    /// The relay model answering a storage node about its owner's files.
    fn storage_to_relay(&mut self, node: &Address, frame: ClientFrame) {
        if self.relay_down {
            return;
        }
        let owner = node.owner();
        let reply = |w: &mut World, f: ServerFrame| {
            w.squeue.push_back((node.clone(), StorageInput::Server(f)));
        };
        match frame {
            ClientFrame::ListFiles => {
                let items = self.whole_files_for(&owner);
                reply(self, ServerFrame::FilesKept { items });
            }
            ClientFrame::FetchFile { attachment } => {
                let f = self
                    .files
                    .get(&(owner.clone(), attachment))
                    .filter(|f| f.chunks.len() == f.hashes.len());
                let frame = match f {
                    Some(f) => ServerFrame::FileInfo {
                        attachment,
                        from: f.from.clone(),
                        size: f.size,
                        hashes: super::B64.encode(f.hashes.concat()),
                    },
                    None => ServerFrame::error_about(
                        ErrorCode::NotFound,
                        "no such file",
                        ErrorAbout {
                            attachment: Some(attachment),
                            ..ErrorAbout::default()
                        },
                    ),
                };
                reply(self, frame);
            }
            ClientFrame::FetchChunks { attachment, ranges } => {
                let Some(f) = self.files.get(&(owner.clone(), attachment)).cloned() else {
                    return;
                };
                for index in ranges.into_iter().flat_map(|(s, e)| s..e) {
                    if let Some(data) = f.chunks.get(&index) {
                        self.relay_chunks_served += 1;
                        let data = super::B64.encode(data);
                        reply(
                            self,
                            ServerFrame::FileChunk {
                                attachment,
                                index,
                                data,
                            },
                        );
                    }
                }
            }
            ClientFrame::ReleaseFile { attachment } => {
                self.files.remove(&(owner, attachment));
                reply(self, ServerFrame::FileReleased { attachment });
            }
            other => panic!("a storage node sent {other:?}"),
        }
    }

    fn whole_files_for(&self, owner: &Address) -> Vec<FileItem> {
        self.files
            .iter()
            .filter(|((r, _), f)| r == owner && f.chunks.len() == f.hashes.len())
            .map(|((_, id), f)| FileItem {
                attachment: *id,
                message_id: f.message_id.clone(),
                from: f.from.clone(),
                size: f.size,
            })
            .collect()
    }

    /// After a chunk deposit: a file for `to` that is now whole is offered to `to`'s
    /// signed-in storage node.
    pub(super) fn relay_file_whole(&mut self, to: &Address, attachment: AttachmentId) {
        let node = to.storage_node();
        if !self.is_online(&node) {
            return;
        }
        let items: Vec<FileItem> = self
            .whole_files_for(to)
            .into_iter()
            .filter(|i| i.attachment == attachment)
            .collect();
        if !items.is_empty() {
            self.squeue
                .push_back((node, StorageInput::Server(ServerFrame::FilesKept { items })));
        }
    }
}
