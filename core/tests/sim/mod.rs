//! An in-process world for driving several [`Node`]s: a model of the relay's signaling
//! (challenge auth, presence subscriptions), instant data channels between online nodes,
//! durable per-user stores, simulated time and injectable frame loss; and a model of the
//! relay's key directory and cache (deposit, waiting notices, fetch, release, receipts) that
//! can be switched off (the default, as if no account published a key), up, full (quota
//! refusal) or down (every cache request fails).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use base64::Engine as _;
use peermail_core::attach::{
    hash_page, AttachError, AttachmentId, AttachmentRef, FileCheck, FileSealer,
};
use peermail_core::identity::{auth_message, Identity};
use peermail_core::node::{
    Command, Config, Event, FileCheckFailure, Input, Node, Output, ServeRequest, UploadRequest,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
use peermail_core::store::{DownloadRecord, MemoryStore, OutgoingMail, StoreWrite};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{
    ClientFrame, ErrorAbout, ErrorCode, MailLocation, PresenceStatus, ReceiptOutcome, ServerFrame,
    WaitingMail,
};
use peermail_core::{Address, Draft, Mail, MessageId, Millis};

mod storage;
use storage::Link;
pub use storage::SimStorage;

pub const DOMAIN: &str = "relay.test";

/// A world with these accounts registered (all offline).
pub fn world_with(names: &[&str]) -> World {
    let mut w = World::new();
    for n in names {
        w.register(n);
    }
    w
}

/// `len` bytes of file content, different for each `salt`.
pub fn file(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ salt)
        .collect()
}

pub fn addr(name: &str) -> Address {
    Address::new(name, DOMAIN).unwrap()
}

/// The relay model's answer to a check or call-back of a deposit it does not keep.
fn no_such_deposit(to: Address, message_id: MessageId) -> ServerFrame {
    ServerFrame::error_about(
        ErrorCode::NotFound,
        "no such deposit",
        ErrorAbout {
            to: Some(to),
            message_id: Some(message_id),
            attachment: None,
        },
    )
}

/// One user: durable store plus, while online, a running node.
pub struct User {
    pub identity: Identity,
    pub store: MemoryStore,
    pub node: Option<Node>,
    /// Addresses this user's live session subscribed to (relay-side state).
    pub subscriptions: BTreeSet<Address>,
    /// Peers with an open data channel.
    pub links: BTreeSet<Address>,
    /// How many times each Message-ID was newly received (must end at exactly 1).
    pub received: BTreeMap<MessageId, u32>,
    pub events: Vec<Event>,
}

/// Decides whether a peer frame in flight is lost.
pub type DropRule = Box<dyn FnMut(&Address, &Address, &PeerFrame) -> bool>;
/// May alter a peer frame in flight; returns whether it did.
pub type MangleRule = Box<dyn FnMut(&Address, &Address, &mut PeerFrame) -> bool>;

/// How the relay cache behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The directory serves no encryption keys: senders keep mail for direct delivery.
    Off,
    Up,
    /// Deposits are refused with `quota_exceeded`.
    Full,
    /// Every cache request fails with `internal`.
    Down,
}

/// A copy a co-recipient's node registered as holding (the relay's location registry).
#[derive(Debug, Clone)]
pub struct HeldAt {
    pub holder: Address,
    pub from: Address,
    pub size: u64,
}

/// A file the relay model keeps for an offline recipient.
#[derive(Debug, Clone)]
pub struct SimFile {
    pub from: Address,
    pub message_id: MessageId,
    pub size: u64,
    pub hashes: Vec<peermail_core::attach::Hash>,
    pub chunks: BTreeMap<u32, Vec<u8>>,
}

/// One envelope in the relay cache.
#[derive(Debug, Clone)]
pub struct CachedMail {
    pub from: Address,
    pub sealed: String,
}

pub struct World {
    pub cache_mode: CacheMode,
    /// How many `Deposited` replies the relay model stores the mail for but never sends
    /// (a reply lost on a live connection).
    pub lose_deposit_replies: u32,
    /// Published encryption keys.
    pub directory: BTreeMap<Address, String>,
    /// The relay cache: (recipient, Message-ID) → envelope.
    pub cache: BTreeMap<(Address, MessageId), CachedMail>,
    /// Copies held by co-recipients' nodes: (recipient, Message-ID) → where.
    pub held: BTreeMap<(Address, MessageId), HeldAt>,
    /// Hold registrations accepted (for assertions).
    pub holds: u32,
    /// Files kept for offline recipients: (recipient, attachment) → file.
    pub files: BTreeMap<(Address, AttachmentId), SimFile>,
    /// Chunks the relay model sent to recipients (for assertions).
    pub relay_chunks_served: u32,
    /// Receipts not yet acknowledged: sender → (recipient, id, outcome).
    pub receipts: BTreeMap<Address, BTreeSet<(Address, MessageId, ReceiptOutcome)>>,
    /// Deposits accepted (for assertions).
    pub deposits: u32,
    pub now: Millis,
    pub users: BTreeMap<Address, User>,
    /// Inputs waiting to be handled, in order.
    queue: VecDeque<(Address, Input)>,
    pub drop_rule: Option<DropRule>,
    pub dropped: u32,
    pub mangle_rule: Option<MangleRule>,
    /// Peer frames delivered, except chunks and mails: (from, to, frame).
    pub frame_log: Vec<(Address, Address, PeerFrame)>,
    /// The whole relay is unreachable (see [`World::relay_outage`]).
    pub relay_down: bool,
    /// Chunk frames sent by serving nodes (for assertions about resuming).
    pub chunks_served: u32,
    /// Every chunk write fails (storage full).
    pub fail_chunk_writes: bool,
    /// People's drivers decode chunk frames and hash the chunks themselves
    /// (`Input::Chunk`), as the web client does with the browser's SHA-256.
    pub driver_hashes_chunks: bool,
    seed: u8,
    pub config: Config,
    /// Storage nodes, by their address (`name+node@…`).
    pub storages: BTreeMap<Address, SimStorage>,
    /// Inputs waiting for storage nodes, in order.
    squeue: VecDeque<(Address, peermail_core::storage::StorageInput)>,
    /// Connection attempts to these addresses fail (a node that cannot be reached).
    pub unreachable: BTreeSet<Address>,
}

impl World {
    pub fn new() -> Self {
        World {
            cache_mode: CacheMode::Off,
            lose_deposit_replies: 0,
            directory: BTreeMap::new(),
            cache: BTreeMap::new(),
            held: BTreeMap::new(),
            holds: 0,
            files: BTreeMap::new(),
            relay_chunks_served: 0,
            receipts: BTreeMap::new(),
            deposits: 0,
            now: 1_000_000,
            users: BTreeMap::new(),
            queue: VecDeque::new(),
            drop_rule: None,
            dropped: 0,
            mangle_rule: None,
            frame_log: Vec::new(),
            relay_down: false,
            chunks_served: 0,
            fail_chunk_writes: false,
            driver_hashes_chunks: false,
            seed: 0,
            config: Config::default(),
            storages: BTreeMap::new(),
            squeue: VecDeque::new(),
            unreachable: BTreeSet::new(),
        }
    }

    /// Registers an account (offline until `online`).
    pub fn register(&mut self, name: &str) -> Address {
        let a = addr(name);
        let mut seed = [0u8; 32];
        seed[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        self.users.insert(
            a.clone(),
            User {
                identity: Identity::from_seed(a.clone(), seed),
                store: MemoryStore::new(),
                node: None,
                subscriptions: BTreeSet::new(),
                links: BTreeSet::new(),
                received: BTreeMap::new(),
                events: Vec::new(),
            },
        );
        a
    }

    pub fn is_online(&self, a: &Address) -> bool {
        self.users.get(a).is_some_and(|u| u.node.is_some())
            || self.storages.get(a).is_some_and(|s| s.node.is_some())
    }

    fn status_of(&self, a: &Address) -> PresenceStatus {
        if let Some(s) = self.storages.get(a) {
            return if s.node.is_some() {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            };
        }
        match self.users.get(a) {
            None => PresenceStatus::Unknown,
            Some(u) if u.node.is_some() => PresenceStatus::Online,
            Some(_) => PresenceStatus::Offline,
        }
    }

    fn notify_presence(&mut self, who: &Address) {
        let status = self.status_of(who);
        self.notify_presence_as(who, status);
    }

    fn notify_presence_as(&mut self, who: &Address, status: PresenceStatus) {
        if self.relay_down {
            return;
        }
        let watchers: Vec<Address> = self
            .users
            .iter()
            .filter(|(_, u)| u.node.is_some() && u.subscriptions.contains(who))
            .map(|(a, _)| a.clone())
            .collect();
        for w in watchers {
            self.queue.push_back((
                w,
                Input::Server(ServerFrame::Presence {
                    address: who.clone(),
                    status,
                }),
            ));
        }
        self.tell_storages_presence(who, status);
    }

    /// Opens the user's page: a node loaded from its store connects to signaling.
    pub fn online(&mut self, a: &Address) {
        if self.is_online(a) {
            return;
        }
        let now = self.now;
        let config = self.config.clone();
        let u = self.users.get_mut(a).unwrap();
        let snapshot = u.store.snapshot();
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&now.to_le_bytes());
        rng_seed[8] = a.local().len() as u8;
        rng_seed[9] = a.local().as_bytes()[0];
        u.node = Some(Node::new(
            u.identity.clone(),
            config,
            snapshot,
            now,
            rng_seed,
        ));
        u.subscriptions.clear();
        if !self.relay_down {
            self.queue.push_back((a.clone(), Input::SignalingConnected));
            self.queue.push_back((
                a.clone(),
                Input::Server(ServerFrame::Challenge {
                    nonce: format!("nonce-{now}"),
                    domain: DOMAIN.into(),
                    inline_limit: None,
                }),
            ));
        }
        self.settle();
    }

    /// Closes the user's page: in-memory state is gone, the store stays.
    pub fn offline(&mut self, a: &Address) {
        if !self.is_online(a) {
            return;
        }
        let u = self.users.get_mut(a).unwrap();
        u.node = None;
        u.subscriptions.clear();
        let peers: Vec<Address> = std::mem::take(&mut u.links).into_iter().collect();
        // Inputs still queued for the closed node are lost with it.
        self.queue.retain(|(to, _)| to != a);
        for p in peers {
            self.links_of(&p).remove(a);
            self.link_event(&p, Link::Down(a.clone()));
        }
        self.notify_presence(a);
        self.settle();
    }

    pub fn send(
        &mut self,
        from: &Address,
        to: &[&Address],
        cc: &[&Address],
        subject: &str,
    ) -> MessageId {
        let draft = Draft {
            to: to.iter().map(|a| (*a).clone()).collect(),
            cc: cc.iter().map(|a| (*a).clone()).collect(),
            subject: subject.into(),
            body: format!("body of {subject}"),
            ..Draft::default()
        };
        self.send_draft(from, draft)
    }

    /// `from` sends `draft`; its Message-ID (found by subject in the sender's store).
    pub fn send_draft(&mut self, from: &Address, draft: Draft) -> MessageId {
        self.seed = self.seed.wrapping_add(1);
        let mut random = [self.seed; 16];
        random[0] = from.local().len() as u8;
        random[1] = (self.now % 251) as u8;
        let subject = draft.subject.clone();
        self.queue.push_back((
            from.clone(),
            Input::Command(Command::Send { draft, random }),
        ));
        self.settle();
        self.users[from]
            .store
            .snapshot()
            .outgoing
            .iter()
            .find(|o| o.mail.subject == subject)
            .map(|o| o.mail.message_id.clone())
            .expect("the sent mail is in the sender's store")
    }

    /// Handles queued inputs until nothing is left.
    pub fn settle(&mut self) {
        let mut steps = 0;
        loop {
            if let Some((to, input)) = self.squeue.pop_front() {
                steps += 1;
                assert!(steps < 100_000, "the world does not settle (livelock?)");
                self.step_storage(&to, input);
                continue;
            }
            let Some((to, input)) = self.queue.pop_front() else {
                break;
            };
            steps += 1;
            assert!(steps < 100_000, "the world does not settle (livelock?)");
            let now = self.now;
            let Some(u) = self.users.get_mut(&to) else {
                continue;
            };
            let Some(node) = u.node.as_mut() else {
                continue;
            };
            node.handle(input, now);
            let mut outs = Vec::new();
            while let Some(o) = node.poll_output() {
                outs.push(o);
            }
            for o in outs {
                self.execute(&to, o);
            }
        }
    }

    fn execute(&mut self, from: &Address, out: Output) {
        match out {
            Output::ToServer(frame) => self.relay(from, frame),
            Output::Connect(peer) => self.try_connect(from, peer),
            Output::ToPeer { peer, bytes } => self.send_frame(from, peer, bytes),
            Output::Serve {
                peer,
                attachment,
                request,
            } => self.serve(from, peer, attachment, request),
            Output::Upload {
                to,
                message_id,
                attachment,
                request,
            } => {
                let store = &self.users[from].store;
                let frames: Vec<ClientFrame> = match request {
                    UploadRequest::Announce { size } => store
                        .chunk_list(attachment)
                        .map(|list| ClientFrame::DepositFile {
                            to: to.clone(),
                            message_id,
                            attachment,
                            size,
                            hashes: B64.encode(list.concat()),
                        })
                        .into_iter()
                        .collect(),
                    UploadRequest::Chunks { indices } => indices
                        .into_iter()
                        .filter_map(|index| {
                            store
                                .chunk(attachment, index)
                                .map(|d| ClientFrame::DepositChunk {
                                    to: to.clone(),
                                    attachment,
                                    index,
                                    data: B64.encode(d),
                                })
                        })
                        .collect(),
                };
                for f in frames {
                    self.relay(from, f);
                }
            }
            // Serving is instant here: nothing stays queued.
            Output::StopServing { .. } => {}
            Output::CheckFile(attachment) => {
                let result = self.check_file(from, attachment);
                self.queue
                    .push_back((from.clone(), Input::FileChecked { attachment, result }));
            }
            Output::Store { op, write } => {
                if self.fail_chunk_writes && matches!(write, StoreWrite::PutChunk { .. }) {
                    let result = Err("the storage quota is used up".to_string());
                    self.queue
                        .push_back((from.clone(), Input::Stored { op, result }));
                    return;
                }
                let u = self.users.get_mut(from).unwrap();
                u.store.apply_now(write);
                self.queue
                    .push_back((from.clone(), Input::Stored { op, result: Ok(()) }));
            }
            Output::Event(e) => {
                let u = self.users.get_mut(from).unwrap();
                if let Event::Received(id) = &e {
                    *u.received.entry(id.clone()).or_default() += 1;
                }
                u.events.push(e);
            }
        }
    }

    /// A driver's serving: reads the sender's store and sends frames over the link.
    fn serve(
        &mut self,
        from: &Address,
        peer: Address,
        attachment: AttachmentId,
        request: ServeRequest,
    ) {
        let store = &self.users[from].store;
        let mut frames = Vec::new();
        match (request, store.chunk_list(attachment)) {
            (_, None) => frames.push(PeerFrame::TransferRefused {
                attachment,
                reason: "not stored here".into(),
            }),
            (ServeRequest::ChunkList { start }, Some(list)) => frames.push(PeerFrame::ChunkList {
                attachment,
                start,
                hashes: hash_page(&list, start).to_vec(),
            }),
            (ServeRequest::Chunks { ranges }, Some(_)) => {
                for (s, e) in ranges {
                    for index in s..e {
                        frames.push(match store.chunk(attachment, index) {
                            Some(data) => PeerFrame::Chunk {
                                attachment,
                                index,
                                data,
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
                self.chunks_served += 1;
            }
            self.send_frame(from, peer.clone(), f.encode().unwrap());
        }
    }

    /// A driver's whole-file check over the stored chunks.
    fn check_file(&self, who: &Address, id: AttachmentId) -> Result<(), FileCheckFailure> {
        let store = &self.users[who].store;
        let d = store
            .snapshot()
            .downloads
            .into_iter()
            .find(|d| d.attachment.id == id)
            .expect("a download record for the checked file");
        let mut check = FileCheck::new(&d.attachment);
        for i in 0..d.attachment.chunk_count() {
            let data = store
                .chunk(id, i)
                .ok_or(FileCheckFailure::ChunkMissing(i))?;
            check.push(i, &data).map_err(FileCheckFailure::Invalid)?;
        }
        check.finish().map_err(FileCheckFailure::Invalid)
    }

    /// Seals `bytes` as an attachment into `who`'s store (as the web client does when a
    /// file is added to a mail) and returns its description; it travels with the mail
    /// (`inline`) when it is at most the default inline limit.
    pub fn attach_file(
        &mut self,
        who: &Address,
        name: &str,
        bytes: &[u8],
        seed: u8,
    ) -> AttachmentRef {
        let inline = bytes.len() as u64 <= peermail_core::wire::signal::DEFAULT_INLINE_LIMIT;
        self.attach_file_with(who, name, bytes, seed, inline)
    }

    /// [`World::attach_file`] with the inline flag chosen by the caller.
    pub fn attach_file_with(
        &mut self,
        who: &Address,
        name: &str,
        bytes: &[u8],
        seed: u8,
        inline: bool,
    ) -> AttachmentRef {
        let mut s = FileSealer::new(
            AttachmentId([seed; 16]),
            [seed.wrapping_add(1); 32],
            name,
            "application/octet-stream",
            bytes.len() as u64,
        )
        .unwrap();
        let store = &self.users[who].store;
        while let Some(r) = s.next_range() {
            let c = s.push(&bytes[r.start as usize..r.end as usize]).unwrap();
            store.apply_now(StoreWrite::PutChunk {
                attachment: AttachmentId([seed; 16]),
                index: c.index,
                data: c.data,
            });
        }
        let (att, hashes) = s.finish(inline).unwrap();
        store.apply_now(StoreWrite::PutChunkList {
            attachment: att.id,
            hashes,
        });
        att
    }

    /// Sends a mail with attachments.
    pub fn send_with(
        &mut self,
        from: &Address,
        to: &[&Address],
        subject: &str,
        attachments: Vec<AttachmentRef>,
    ) -> MessageId {
        let draft = Draft {
            to: to.iter().map(|a| (*a).clone()).collect(),
            subject: subject.into(),
            body: format!("body of {subject}"),
            attachments,
            ..Draft::default()
        };
        self.send_draft(from, draft)
    }

    /// A command from the person at `who`'s page.
    pub fn command(&mut self, who: &Address, c: Command) {
        self.queue.push_back((who.clone(), Input::Command(c)));
        self.settle();
    }

    /// `who`'s persisted record of a received attachment.
    pub fn download(&self, who: &Address, id: AttachmentId) -> Option<DownloadRecord> {
        self.users[who]
            .store
            .snapshot()
            .downloads
            .into_iter()
            .find(|d| d.attachment.id == id)
    }

    /// The file `who` holds for a received attachment, decrypted and checked; an error if
    /// a chunk is missing or it does not verify.
    pub fn received_file(
        &self,
        who: &Address,
        att: &AttachmentRef,
    ) -> Result<Vec<u8>, AttachError> {
        let store = &self.users[who].store;
        let mut check = FileCheck::new(att);
        let mut out = Vec::new();
        for i in 0..att.chunk_count() {
            let data = store
                .chunk(att.id, i)
                .ok_or(AttachError::Incomplete { missing: 1 })?;
            out.extend(check.push(i, &data)?);
        }
        check.finish()?;
        Ok(out)
    }

    /// A peer frame over the data channel between `from` and `peer`, if one is open: may
    /// be lost (`drop_rule`) or altered (`mangle_rule`) on the way.
    fn send_frame(&mut self, from: &Address, peer: Address, bytes: Vec<u8>) {
        if !self.links_of(from).contains(&peer) {
            return;
        }
        let mut frame = PeerFrame::decode(&bytes).expect("nodes send valid frames");
        if let Some(rule) = self.drop_rule.as_mut() {
            if rule(from, &peer, &frame) {
                self.dropped += 1;
                return;
            }
        }
        let mut bytes = bytes;
        if let Some(rule) = self.mangle_rule.as_mut() {
            if rule(from, &peer, &mut frame) {
                bytes = frame.encode().unwrap();
            }
        }
        if !matches!(frame, PeerFrame::Chunk { .. } | PeerFrame::Mail(_)) {
            self.frame_log.push((from.clone(), peer.clone(), frame));
        }
        self.link_event(&peer, Link::Frame(from.clone(), bytes));
    }

    /// Opens a data channel between two online nodes (people's or storage nodes), as their
    /// drivers would.
    pub fn connect(&mut self, a: &Address, b: &Address) {
        self.links_of(a).insert(b.clone());
        self.links_of(b).insert(a.clone());
        self.link_event(a, Link::Up(b.clone()));
        self.link_event(b, Link::Up(a.clone()));
        self.settle();
    }

    /// `from` sends `frame` to `to` over their open data channel (a node misbehaving).
    pub fn inject(&mut self, from: &Address, to: &Address, frame: PeerFrame) {
        self.send_frame(from, to.clone(), frame.encode().unwrap());
        self.settle();
    }

    /// The relay model: checks auth signatures for real, answers subscriptions.
    fn relay(&mut self, from: &Address, frame: ClientFrame) {
        if self.relay_down {
            return;
        }
        match frame {
            ClientFrame::Auth { address, signature } => {
                let u = &self.users[from];
                let nonce = format!("nonce-{}", self.now);
                let ok = &address == from
                    && u.identity
                        .public_key()
                        .verify(&auth_message(&nonce, &address), &signature)
                        .is_ok();
                assert!(ok, "the node signs the challenge correctly");
                self.queue.push_back((
                    from.clone(),
                    Input::Server(ServerFrame::Authenticated { address }),
                ));
                self.notify_presence(&from.clone());
                self.sign_in_notices(from);
            }
            ClientFrame::Subscribe { addresses } => {
                for a in addresses {
                    self.users
                        .get_mut(from)
                        .unwrap()
                        .subscriptions
                        .insert(a.clone());
                    let status = self.status_of(&a);
                    self.queue.push_back((
                        from.clone(),
                        Input::Server(ServerFrame::Presence { address: a, status }),
                    ));
                }
            }
            ClientFrame::Unsubscribe { addresses } => {
                let u = self.users.get_mut(from).unwrap();
                for a in &addresses {
                    u.subscriptions.remove(a);
                }
            }
            ClientFrame::PublishKey { encryption_key } => {
                self.directory.insert(from.clone(), encryption_key);
                self.reply(from, ServerFrame::KeyPublished);
            }
            ClientFrame::Lookup { address } => {
                let frame = match self.users.get(&address) {
                    None => ServerFrame::error_about(
                        ErrorCode::UnknownAddress,
                        format!("there is no account {address}"),
                        ErrorAbout {
                            to: Some(address),
                            message_id: None,
                            attachment: None,
                        },
                    ),
                    Some(u) => ServerFrame::Keys {
                        signing_key: u.identity.public_key(),
                        encryption_key: match self.cache_mode {
                            CacheMode::Off => None,
                            _ => self.directory.get(&address).cloned(),
                        },
                        address,
                    },
                };
                self.reply(from, frame);
            }
            ClientFrame::Deposit {
                to,
                message_id,
                sealed,
            } => {
                let about = ErrorAbout {
                    to: Some(to.clone()),
                    message_id: Some(message_id.clone()),
                    attachment: None,
                };
                let frame = match self.cache_mode {
                    CacheMode::Full => ServerFrame::error_about(
                        ErrorCode::QuotaExceeded,
                        format!("the relay cache of {to} is full"),
                        about,
                    ),
                    CacheMode::Down | CacheMode::Off => ServerFrame::error_about(
                        ErrorCode::Internal,
                        "the relay could not complete the request",
                        about,
                    ),
                    CacheMode::Up if !self.users.contains_key(&to) => ServerFrame::error_about(
                        ErrorCode::UnknownAddress,
                        format!("there is no account {to}"),
                        about,
                    ),
                    CacheMode::Up => {
                        let key = (to.clone(), message_id.clone());
                        if !self.cache.contains_key(&key) {
                            self.deposits += 1;
                            self.cache.insert(
                                key,
                                CachedMail {
                                    from: from.clone(),
                                    sealed,
                                },
                            );
                            if self.is_online(&to) {
                                // As the relay does: the envelope itself to an online
                                // recipient.
                                let mail = &self.cache[&(to.clone(), message_id.clone())];
                                let frame = ServerFrame::Cached {
                                    message_id: message_id.clone(),
                                    from: mail.from.clone(),
                                    sealed: mail.sealed.clone(),
                                };
                                self.reply(&to, frame);
                            }
                        }
                        ServerFrame::Deposited { to, message_id }
                    }
                };
                if matches!(frame, ServerFrame::Deposited { .. }) && self.lose_deposit_replies > 0 {
                    self.lose_deposit_replies -= 1;
                    return;
                }
                self.reply(from, frame);
            }
            ClientFrame::DepositFile {
                to,
                message_id,
                attachment,
                size,
                hashes,
            } => {
                let about = ErrorAbout {
                    to: Some(to.clone()),
                    message_id: None,
                    attachment: Some(attachment),
                };
                let hashes = peermail_core::attach::hashes_from_bytes(
                    &B64.decode(hashes.as_bytes()).unwrap(),
                )
                .unwrap();
                let frame = match self.cache_mode {
                    CacheMode::Full => ServerFrame::error_about(
                        ErrorCode::QuotaExceeded,
                        format!("the relay cache of {to} is full"),
                        about,
                    ),
                    CacheMode::Down | CacheMode::Off => ServerFrame::error_about(
                        ErrorCode::Internal,
                        "the relay could not complete the request",
                        about,
                    ),
                    CacheMode::Up
                        if self
                            .cache
                            .get(&(to.clone(), message_id.clone()))
                            .is_none_or(|m| &m.from != from) =>
                    {
                        ServerFrame::error_about(
                            ErrorCode::NotFound,
                            "deposit the mail first",
                            about,
                        )
                    }
                    CacheMode::Up => {
                        let f = self
                            .files
                            .entry((to.clone(), attachment))
                            .or_insert_with(|| SimFile {
                                from: from.clone(),
                                message_id: message_id.clone(),
                                size,
                                hashes,
                                chunks: BTreeMap::new(),
                            });
                        let missing = (0..f.hashes.len() as u32)
                            .filter(|i| !f.chunks.contains_key(i))
                            .map(|i| (i, i + 1))
                            .collect();
                        ServerFrame::FileAccepted {
                            to,
                            attachment,
                            missing,
                        }
                    }
                };
                self.reply(from, frame);
            }
            ClientFrame::DepositChunk {
                to,
                attachment,
                index,
                data,
            } => {
                let data = B64.decode(data.as_bytes()).unwrap();
                let ok = self.cache_mode == CacheMode::Up
                    && self.files.get(&(to.clone(), attachment)).is_some_and(|f| {
                        &f.from == from
                            && f.hashes.get(index as usize)
                                == Some(&peermail_core::attach::sha256(&data))
                    });
                let frame = if ok {
                    self.files
                        .get_mut(&(to.clone(), attachment))
                        .unwrap()
                        .chunks
                        .insert(index, data);
                    self.relay_file_whole(&to, attachment);
                    ServerFrame::ChunkDeposited {
                        to,
                        attachment,
                        index,
                    }
                } else {
                    ServerFrame::error_about(
                        ErrorCode::NotFound,
                        "no such chunk",
                        ErrorAbout {
                            to: Some(to),
                            message_id: None,
                            attachment: Some(attachment),
                        },
                    )
                };
                self.reply(from, frame);
            }
            ClientFrame::FetchFile { attachment } => {
                let frame = match self.files.get(&(from.clone(), attachment)) {
                    Some(f)
                        if self.cache_mode != CacheMode::Down
                            && f.chunks.len() == f.hashes.len() =>
                    {
                        ServerFrame::FileInfo {
                            attachment,
                            from: f.from.clone(),
                            size: f.size,
                            hashes: B64.encode(f.hashes.concat()),
                        }
                    }
                    _ => ServerFrame::error_about(
                        ErrorCode::NotFound,
                        "no such file",
                        ErrorAbout {
                            attachment: Some(attachment),
                            ..ErrorAbout::default()
                        },
                    ),
                };
                self.reply(from, frame);
            }
            ClientFrame::FetchChunks { attachment, ranges } => {
                let Some(f) = self.files.get(&(from.clone(), attachment)).cloned() else {
                    return;
                };
                for index in ranges.into_iter().flat_map(|(s, e)| s..e) {
                    if let Some(data) = f.chunks.get(&index) {
                        self.relay_chunks_served += 1;
                        self.reply(
                            from,
                            ServerFrame::FileChunk {
                                attachment,
                                index,
                                data: B64.encode(data),
                            },
                        );
                    }
                }
            }
            ClientFrame::ReleaseFile { attachment } => {
                self.files.remove(&(from.clone(), attachment));
                self.reply(from, ServerFrame::FileReleased { attachment });
            }
            ClientFrame::Fetch { message_id } => {
                let about = ErrorAbout {
                    to: None,
                    message_id: Some(message_id.clone()),
                    attachment: None,
                };
                let frame = match self.cache_mode {
                    CacheMode::Down => ServerFrame::error_about(
                        ErrorCode::Internal,
                        "the relay could not complete the request",
                        about,
                    ),
                    _ => match self.cache.get(&(from.clone(), message_id.clone())) {
                        Some(c) => ServerFrame::Cached {
                            message_id,
                            from: c.from.clone(),
                            sealed: c.sealed.clone(),
                        },
                        None => ServerFrame::error_about(
                            ErrorCode::NotFound,
                            "no such mail waits",
                            about,
                        ),
                    },
                };
                self.reply(from, frame);
            }
            ClientFrame::Release { ref message_id }
            | ClientFrame::Refuse { ref message_id, .. } => {
                let (outcome, holder) = match frame {
                    ClientFrame::Refuse { ref holder, .. } => {
                        (ReceiptOutcome::Refused, holder.clone())
                    }
                    _ => (ReceiptOutcome::Delivered, None),
                };
                let message_id = message_id.clone();
                let about = ErrorAbout {
                    to: None,
                    message_id: Some(message_id.clone()),
                    attachment: None,
                };
                if self.cache_mode == CacheMode::Down {
                    let e = ServerFrame::error_about(ErrorCode::Internal, "down", about);
                    return self.reply(from, e);
                }
                let key = (from.clone(), message_id.clone());
                let senders: BTreeSet<Address> = match holder {
                    // The sender learns it was delivered (or refused), and so does a holder
                    // (which then deletes its copy).
                    None => {
                        let held = self.held.remove(&key);
                        [
                            self.cache.remove(&key).map(|c| c.from),
                            held.as_ref().map(|h| h.from.clone()),
                            held.map(|h| h.holder),
                        ]
                        .into_iter()
                        .flatten()
                        .collect()
                    }
                    // As the relay does: that holder's listing alone; the holder told, and
                    // the sender if the relay keeps no copy of its own.
                    Some(holder) => match self.held.get(&key) {
                        Some(h) if h.holder == holder => {
                            let h = self.held.remove(&key).expect("just found");
                            let sender = (!self.cache.contains_key(&key)).then_some(h.from);
                            [Some(h.holder), sender].into_iter().flatten().collect()
                        }
                        _ => BTreeSet::new(),
                    },
                };
                if senders.is_empty() {
                    let e = ServerFrame::error_about(ErrorCode::NotFound, "gone", about);
                    return self.reply(from, e);
                }
                for sender in senders {
                    self.receipts.entry(sender.clone()).or_default().insert((
                        from.clone(),
                        message_id.clone(),
                        outcome,
                    ));
                    if self.is_online(&sender) {
                        self.reply(
                            &sender,
                            ServerFrame::Receipt {
                                to: from.clone(),
                                message_id: message_id.clone(),
                                outcome,
                            },
                        );
                    }
                }
                self.reply(from, ServerFrame::Released { message_id });
            }
            ClientFrame::Hold {
                to,
                message_id,
                from: sender,
                size,
            } => {
                let about = ErrorAbout {
                    to: Some(to.clone()),
                    message_id: Some(message_id.clone()),
                    attachment: None,
                };
                if self.cache_mode == CacheMode::Down {
                    let e = ServerFrame::error_about(ErrorCode::Internal, "down", about);
                    return self.reply(from, e);
                }
                if !self.users.contains_key(&to) {
                    let e = ServerFrame::error_about(ErrorCode::UnknownAddress, "no such", about);
                    return self.reply(from, e);
                }
                let key = (to.clone(), message_id.clone());
                if self.held.get(&key).is_some_and(|h| &h.holder != from) {
                    let e = ServerFrame::error_about(ErrorCode::Conflict, "held elsewhere", about);
                    return self.reply(from, e);
                }
                if !self.held.contains_key(&key) {
                    self.holds += 1;
                    self.held.insert(
                        key,
                        HeldAt {
                            holder: from.clone(),
                            from: sender,
                            size,
                        },
                    );
                    if self.is_online(&to) {
                        let item = self.held_item(&to, &message_id);
                        self.reply(&to, ServerFrame::Waiting { items: vec![item] });
                    }
                }
                self.reply(from, ServerFrame::Held { to, message_id });
            }
            ClientFrame::Check { to, message_id } => {
                let kept =
                    self.cache
                        .get(&(to.clone(), message_id.clone()))
                        .is_some_and(|c| &c.from == from)
                        || self.receipts.get(from).is_some_and(|r| {
                            r.iter().any(|(t, id, _)| t == &to && id == &message_id)
                        });
                let frame = if kept {
                    ServerFrame::Deposited { to, message_id }
                } else {
                    no_such_deposit(to, message_id)
                };
                self.reply(from, frame);
            }
            ClientFrame::Withdraw { to, message_id } => {
                let key = (to.clone(), message_id.clone());
                let frame = if self.cache.get(&key).is_some_and(|c| &c.from == from) {
                    self.cache.remove(&key);
                    self.files.retain(|(r, _), f| {
                        !(r == &to && &f.from == from && f.message_id == message_id)
                    });
                    ServerFrame::Withdrawn { to, message_id }
                } else {
                    no_such_deposit(to, message_id)
                };
                self.reply(from, frame);
            }
            ClientFrame::AckReceipt { to, message_id } => {
                if let Some(r) = self.receipts.get_mut(from) {
                    r.retain(|(t, id, _)| !(t == &to && id == &message_id));
                }
            }
            ClientFrame::LocateNode { address } => {
                let node = address.owner().storage_node();
                let known = self.storages.contains_key(&node);
                let available = self.is_online(&node);
                self.reply(
                    from,
                    ServerFrame::NodeLocation {
                        address: address.owner(),
                        node: known.then_some(node),
                        available,
                        last_seen: None,
                    },
                );
            }
            ClientFrame::UnpairNode => {
                let node = from.storage_node();
                if let Some(mut s) = self.storages.remove(&node) {
                    // The relay closes the node's session and the node stops; its links go.
                    self.squeue.retain(|(to, _)| to != &node);
                    for p in std::mem::take(&mut s.links) {
                        self.links_of(&p).remove(&node);
                        self.link_event(&p, Link::Down(node.clone()));
                    }
                    if s.node.is_some() {
                        self.notify_presence_as(&node, PresenceStatus::Offline);
                    }
                }
                self.reply(
                    from,
                    ServerFrame::NodeUnpaired {
                        owner: from.clone(),
                        node,
                    },
                );
            }
            other => panic!("unexpected frame in the simulation: {other:?}"),
        }
    }

    fn reply(&mut self, to: &Address, frame: ServerFrame) {
        if self.relay_down {
            return;
        }
        self.queue.push_back((to.clone(), Input::Server(frame)));
    }

    fn waiting_item(&self, to: &Address, id: &MessageId) -> WaitingMail {
        let c = &self.cache[&(to.clone(), id.clone())];
        WaitingMail {
            message_id: id.clone(),
            from: c.from.clone(),
            size: c.sealed.len() as u64,
            deposited_at: self.now,
            location: MailLocation::Relay,
        }
    }

    fn held_item(&self, to: &Address, id: &MessageId) -> WaitingMail {
        let h = &self.held[&(to.clone(), id.clone())];
        WaitingMail {
            message_id: id.clone(),
            from: h.from.clone(),
            size: h.size,
            deposited_at: self.now,
            location: MailLocation::Peer {
                holder: h.holder.clone(),
            },
        }
    }

    /// What the relay tells a session at sign-in: mail waiting for it, receipts for it.
    fn sign_in_notices(&mut self, who: &Address) {
        let mut items: Vec<WaitingMail> = self
            .cache
            .keys()
            .filter(|(to, _)| to == who)
            .map(|(to, id)| self.waiting_item(to, id))
            .collect();
        items.extend(
            self.held
                .keys()
                .filter(|(to, _)| to == who)
                .map(|(to, id)| self.held_item(to, id)),
        );
        if !items.is_empty() {
            self.reply(who, ServerFrame::Waiting { items });
        }
        let receipts: Vec<_> = self
            .receipts
            .get(who)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        for (to, message_id, outcome) in receipts {
            self.reply(
                who,
                ServerFrame::Receipt {
                    to,
                    message_id,
                    outcome,
                },
            );
        }
    }

    /// Flips one byte of the ciphertext of a cached envelope (as a malicious relay could).
    pub fn tamper_cached(&mut self, to: &Address, id: &MessageId) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let c = self
            .cache
            .get_mut(&(to.clone(), id.clone()))
            .expect("a cached envelope to tamper with");
        let mut bytes = b64.decode(&c.sealed).unwrap();
        let i = bytes.len() - 80;
        bytes[i] ^= 0x40;
        c.sealed = b64.encode(bytes);
    }

    /// The relay expires a cached envelope: deleted, the sender gets an `expired` receipt.
    pub fn expire_cached(&mut self, to: &Address, id: &MessageId) {
        if let Some(c) = self.cache.remove(&(to.clone(), id.clone())) {
            self.receipts.entry(c.from.clone()).or_default().insert((
                to.clone(),
                id.clone(),
                ReceiptOutcome::Expired,
            ));
        }
    }

    /// The relay's cache, receipts and held-copy listings are lost (its data was reset);
    /// accounts and published keys stay (a real relay re-learns them at sign-in).
    pub fn wipe_relay_cache(&mut self) {
        self.cache.clear();
        self.receipts.clear();
        self.held.clear();
    }

    /// The whole relay goes away (`true`) or comes back: signaling sockets close, frames to
    /// it are lost, no new data channel can be negotiated; open data channels stay up.
    pub fn relay_outage(&mut self, down: bool) {
        if self.relay_down == down {
            return;
        }
        self.relay_down = down;
        let online: Vec<Address> = self
            .users
            .iter()
            .filter(|(_, u)| u.node.is_some())
            .map(|(a, _)| a.clone())
            .collect();
        let now = self.now;
        for a in online {
            self.users.get_mut(&a).unwrap().subscriptions.clear();
            if down {
                self.queue.push_back((a, Input::SignalingDisconnected));
            } else {
                self.queue.push_back((a.clone(), Input::SignalingConnected));
                self.queue.push_back((
                    a,
                    Input::Server(ServerFrame::Challenge {
                        nonce: format!("nonce-{now}"),
                        domain: DOMAIN.into(),
                        inline_limit: None,
                    }),
                ));
            }
        }
        self.settle();
    }

    /// Lets `ms` of simulated time pass, waking nodes at their timeouts.
    pub fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        loop {
            let next = self
                .users
                .values()
                .filter_map(|u| u.node.as_ref().and_then(|n| n.poll_timeout()))
                .chain(
                    self.storages
                        .values()
                        .filter_map(|s| s.node.as_ref().and_then(|n| n.poll_timeout())),
                )
                .filter(|t| *t <= end)
                .min();
            match next {
                Some(t) => {
                    self.now = self.now.max(t);
                    let online: Vec<Address> = self
                        .users
                        .iter()
                        .filter(|(_, u)| u.node.is_some())
                        .map(|(a, _)| a.clone())
                        .collect();
                    for a in online {
                        self.queue.push_back((a, Input::Tick));
                    }
                    let storages: Vec<Address> = self
                        .storages
                        .iter()
                        .filter(|(_, s)| s.node.is_some())
                        .map(|(a, _)| a.clone())
                        .collect();
                    for a in storages {
                        self.squeue
                            .push_back((a, peermail_core::storage::StorageInput::Tick));
                    }
                    self.settle();
                    if self.now >= end {
                        break;
                    }
                }
                None => {
                    self.now = end;
                    break;
                }
            }
        }
    }

    pub fn outgoing(&self, from: &Address, id: &MessageId) -> OutgoingMail {
        self.users[from]
            .store
            .snapshot()
            .outgoing
            .into_iter()
            .find(|o| &o.mail.message_id == id)
            .expect("outgoing mail persisted")
    }

    pub fn inbox_has(&self, who: &Address, id: &MessageId) -> bool {
        self.users[who]
            .store
            .snapshot()
            .inbox
            .iter()
            .any(|r| &r.mail.message_id == id)
    }

    /// The mail `who` received as `id`.
    pub fn received_mail(&self, who: &Address, id: &MessageId) -> Mail {
        self.users[who]
            .store
            .snapshot()
            .inbox
            .into_iter()
            .find(|r| &r.mail.message_id == id)
            .map(|r| r.mail)
            .expect("the mail is in the inbox")
    }

    pub fn received_count(&self, who: &Address, id: &MessageId) -> u32 {
        self.users[who].received.get(id).copied().unwrap_or(0)
    }
}
