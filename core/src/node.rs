//! The delivery state machine: one [`Node`] per signed-in user, driven without I/O.
//!
//! ```text
//! node.handle(Input::…, now);                 // returns nothing
//! while let Some(out) = node.poll_output() {  // ToServer / Connect / ToPeer / Store / Event
//!     driver.execute(out).await;              // in order
//! }
//! node.poll_timeout()                         // when to feed Input::Tick next
//! ```
//!
//! Drivers execute outputs **in order**, so a `Store` of an outgoing mail is done before the
//! `ToPeer` that sends it. A received mail is acknowledged only after its `Store` is reported
//! by `Input::Stored { op, result: Ok(()) }`: an ack never precedes durability.
//!
//! WebRTC negotiation itself (offer/answer/ICE) belongs to the driver: the node asks for a
//! connection with [`Output::Connect`] and is told of it by `PeerConnected` /
//! `PeerDisconnected`. A driver reports `PeerDisconnected` also when a connection attempt
//! fails, so every `Connect` is answered.
//!
//! # Routing per recipient
//!
//! - Online (or a data channel is open): directly over the data channel, acknowledged by the
//!   recipient's node after it stored the mail.
//! - Offline (the account exists): the relay cache. The node looks up the recipient's keys
//!   (once per signaling session; stored as [`KnownKeys`] so a changed key raises
//!   [`Event::KeyChanged`] — trust on first use), [`seal`](crate::seal::seal)s the mail for
//!   the recipient with fresh randomness from its ChaCha20 RNG and sends
//!   `Deposit`: `Waiting` → `Depositing` → (`Deposited`) `CachedAtRelay`. The mail stays in
//!   the Outbox until the relay's `Receipt` (delivered → `Delivered`, expired → `Failed`),
//!   acknowledged with `AckReceipt` once the new state is stored. While cached, the node
//!   does not also deliver directly: the recipient pulls it from the relay. A recipient
//!   without a published encryption key waits for direct delivery.
//! - A deposit the relay does not answer within `ack_timeout` (a lost reply) is repeated;
//!   the relay keeps one copy per sender and Message-ID.
//! - A refused deposit (quota, rate limit, relay failure) leaves the recipient `Waiting`
//!   with the relay's reason ([`Node::refusal`]) and is retried after
//!   [`Config::deposit_retry`]; `unknown_address` / `conflict` fail it. Errors are matched to
//!   the deposit by the error frame's `about`.
//! - At every sign-in the node asks the relay (`Check`) whether each `CachedAtRelay` copy
//!   is still kept; a relay whose data was reset answers `not_found`, and the copy goes
//!   back to `Waiting` and is deposited again.
//! - Co-recipient holding: when the relay cache refused a copy (with a reason worth retrying)
//!   or the relay has been unreachable for [`Config::deposit_retry`], and another recipient
//!   of the same mail already has it (delivered) over an open data channel, the node seals
//!   the copy and hands it to that node (`PeerFrame::HoldFor`). The holder checks it is a
//!   recipient of that mail from that sender and that the envelope's clear header matches,
//!   stores the copy ([`crate::store::HeldMail`]), answers `Holding` (→ `HeldBy`) and
//!   registers it at the relay (`ClientFrame::Hold`, again at every sign-in). Like a cached
//!   copy it is final only with the relay's receipt.
//! - Receiving: on `Waiting` the node fetches what it does not hold yet (and releases what
//!   it holds): from the relay (`Fetch`) or, for a copy at `MailLocation::Peer`, from the
//!   holder's node over a data channel (`FetchHeld`, once the holder is online). A sealed
//!   copy is opened with the claimed sender's freshly looked-up signing key, stored, and
//!   only then released at the relay (which sends the sender, and a holder, a delivered
//!   receipt) and acknowledged to the holder (`HeldAck`), which deletes its copy on either.
//!   An envelope that fails verification is neither stored nor released
//!   ([`Event::Rejected`]).
//! - Cancel sending ([`Command::CancelSending`], a mail still in the Outbox): recipients not
//!   reached yet (`Waiting`, or offered over a data channel) fail with [`CANCELLED`]; a
//!   `CachedAtRelay` copy is called back (`Withdraw` → `Withdrawn` → failed with
//!   [`CANCELLED`]; at the next sign-in if the relay is unreachable now); one being
//!   deposited is called back once deposited (or, its answer lost, like a cached one). The
//!   mail is never sent again to anyone. A copy a co-recipient's node holds cannot be
//!   called back. A recipient whose acknowledgement or delivered receipt comes anyway
//!   shows as delivered; a call-back the relay answers `not_found` (fetched meanwhile, or
//!   lost) fails the recipient unless that receipt follows.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

mod delete;
mod pushes;
mod transfer;
pub use delete::{RECIPIENT_DELETED, SENDER_DELETED};
pub use transfer::{
    DownloadView, FetchingFrom, FileCheckFailure, ServeRequest, UploadRequest, PERSIST_EVERY,
    WINDOW,
};

use base64::Engine as _;
use chacha20::ChaCha20Rng;
use hpke::rand_core::{Rng as _, SeedableRng};

use crate::address::Address;
use crate::attach::{AttachmentId, Hash};
use crate::groups::{group_key, Group};
use crate::identity::{auth_message, EncryptionKey, Identity, PublicKey};
use crate::mail::{Draft, Mail, MessageId, Millis};
use crate::seal;
use crate::store::{
    DeletedMail, DeliveryState, HeldMail, InboxRecord, KnownKeys, OutgoingMail, RecipientStatus,
    Snapshot, StoreWrite,
};
use crate::wire::peer::{PeerFrame, MAX_PEER_FRAME};
use crate::wire::signal::{
    ClientFrame, ErrorAbout, ErrorCode, MailLocation, PresenceStatus, ReceiptOutcome, ServerFrame,
    WaitingMail,
};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The most Message-IDs a reply's `References` names (see `Node::thread_references`):
/// about 1.5 KiB of a mail's room, however long the thread.
pub const MAX_REFERENCES: usize = 24;

/// Why a request for the relay was not sent.
const NOT_CONNECTED: &str = "not connected to the relay; try again once connected";

/// Timing policy. All durations in milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resend a mail on an open connection when no ack came within this time.
    pub ack_timeout: Millis,
    /// Give up on a connection attempt the driver has not answered after this time.
    pub connect_timeout: Millis,
    /// Wait this long before reconnecting to an online peer after a connection dropped.
    pub reconnect_backoff: Millis,
    /// After the relay cache refused a deposit (full, rate limit, failure), try again after
    /// this time.
    pub deposit_retry: Millis,
    /// How a recipient's storage node that could not be reached is tried again.
    pub node_retry: crate::route::RetryPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ack_timeout: 10_000,
            connect_timeout: 30_000,
            reconnect_backoff: 3_000,
            deposit_retry: 60_000,
            node_retry: crate::route::RetryPolicy::default(),
        }
    }
}

/// Identifies a `Store` output so its completion can be reported back.
pub type OpId = u64;

/// Everything that can happen to a node.
#[derive(Debug, Clone)]
pub enum Input {
    Command(Command),
    /// The signaling WebSocket opened (a challenge follows).
    SignalingConnected,
    /// The signaling WebSocket closed; presence is unknown until it reopens.
    SignalingDisconnected,
    /// A frame from the relay. `Signal` frames belong to the driver and are ignored here.
    Server(ServerFrame),
    /// A data channel to `peer` is open (whoever initiated it).
    PeerConnected(Address),
    /// The last data channel to `peer` closed, or a connection attempt failed.
    PeerDisconnected(Address),
    /// Bytes received from `peer` on a data channel.
    Frame {
        peer: Address,
        bytes: Vec<u8>,
    },
    /// A [`PeerFrame::Chunk`] received from `peer` that the driver decoded itself, with
    /// `sha256`, the SHA-256 of `data`, computed by the driver (a browser's native SHA-256,
    /// off the page's thread, is several times faster than this crate's in WebAssembly).
    /// Handled exactly as a `Frame` carrying the same chunk: checked against the chunk
    /// list by that hash.
    Chunk {
        peer: Address,
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
        sha256: Hash,
    },
    /// Result of an `Output::Store`.
    Stored {
        op: OpId,
        result: Result<(), String>,
    },
    /// Time passed; feed it at `poll_timeout()`.
    Tick,
    /// Result of an `Output::CheckFile`.
    FileChecked {
        attachment: AttachmentId,
        result: Result<(), FileCheckFailure>,
    },
}

/// What the person asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Send a draft. `random` seeds the Message-ID (the driver reads a CSPRNG).
    Send {
        draft: Draft,
        random: [u8; 16],
    },
    MarkRead(MessageId),
    /// Show a received mail as unread again.
    MarkUnread(MessageId),
    /// Move a received mail out of the Inbox into the Archive (kept; read or unread as it
    /// was). Not there, or archived already: nothing.
    Archive(MessageId),
    /// Move an archived mail back into the Inbox.
    Unarchive(MessageId),
    /// Delete a received mail for good, with its files (answered by `Event::Deleted`).
    DeleteReceived(MessageId),
    /// Delete a sent mail for good (answered by `Event::Deleted`, or `Event::DeleteRefused`
    /// while some recipient still waits for it: see [`Node::may_delete_sent`]).
    DeleteSent(MessageId),
    /// Stop fetching a received attachment (the chunks held are kept).
    CancelDownload(AttachmentId),
    /// Fetch a cancelled or failed attachment again.
    RetryDownload(AttachmentId),
    /// Stop sending an attachment of this node's mail to one recipient (until the page is
    /// opened again); the recipient is told and sees the transfer fail.
    StopSending {
        attachment: AttachmentId,
        to: Address,
    },
    AddContact(Address),
    RemoveContact(Address),
    /// Save an address-book group (replacing the one with the same name, in any case).
    PutGroup(Group),
    /// Remove the address-book group with this name (any case).
    RemoveGroup(String),
    /// Link the storage node showing this pairing code to this account (answered by
    /// `Event::NodePaired`, or `Event::PairingFailed`: a code refused, or no answer because
    /// the relay is not connected or the connection dropped).
    PairNode(String),
    /// Unlink this account's storage node (answered by `Event::NodeUnpaired`, or
    /// `Event::UnpairFailed` when the relay is not connected or the connection dropped
    /// before it answered).
    UnpairNode,
    /// Ask the relay about `address`'s storage node (answered by `Event::NodeLocated`).
    LocateNode(Address),
    /// Mark every mail of the Inbox read (one change event for all; archived mail keeps
    /// its state).
    MarkAllRead,
    /// Stop sending a mail still in the Outbox: recipients not reached yet fail with
    /// [`CANCELLED`]; a copy the relay keeps is called back (`Withdraw`; the recipient
    /// fails once the relay confirms); one being handed over is called back once the relay
    /// has it. A copy a co-recipient's node holds cannot be called back, nor one the
    /// recipient already took: whoever turns out to have the mail shows as delivered.
    CancelSending(MessageId),
}

pub use crate::store::CANCELLED;

/// Whether a recipient's delivery state may go from `current` to `new`: not once final,
/// except that of a cancelled mail, whoever turns out to have it after all (an
/// acknowledgement or a delivered receipt after the cancel) shows as delivered.
fn may_change(cancelled: bool, current: &DeliveryState, new: &DeliveryState) -> bool {
    !current.is_final()
        || (cancelled
            && matches!(new, DeliveryState::Delivered { .. })
            && matches!(current, DeliveryState::Failed { .. }))
}

/// Received mails, newest first (ties by Message-ID, so the order is the same every time).
fn newest_first<'a>(records: impl Iterator<Item = &'a InboxRecord>) -> Vec<&'a InboxRecord> {
    let mut v: Vec<_> = records.collect();
    v.sort_by(|a, b| {
        b.received_at
            .cmp(&a.received_at)
            .then(a.mail.message_id.cmp(&b.mail.message_id))
    });
    v
}

/// The state of a deposit whose answer will not come (the connection dropped, the node
/// restarted, the answer is overdue): deposited again later (`Waiting`); of a cancelled
/// mail, possibly kept by the relay, so called back (`Withdraw`) like a copy it keeps.
fn unsettled_deposit(cancelled: bool, now: Millis) -> DeliveryState {
    if cancelled {
        DeliveryState::CachedAtRelay { at: now }
    } else {
        DeliveryState::Waiting
    }
}

/// What the node asks its driver to do, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    ToServer(ClientFrame),
    /// Open a data channel to `peer` (answered by `PeerConnected` or `PeerDisconnected`).
    Connect(Address),
    ToPeer {
        peer: Address,
        bytes: Vec<u8>,
    },
    Store {
        op: OpId,
        write: StoreWrite,
    },
    /// Send `peer` (a recipient of the mail) what it asked of `attachment`, read from the
    /// store, pacing on the data channel's buffer. Chunks or a list the store does not have
    /// are answered with `PeerFrame::TransferRefused`.
    Serve {
        peer: Address,
        attachment: AttachmentId,
        request: ServeRequest,
    },
    /// Copy an attachment of this node's mail to the relay for the offline `to`: read what
    /// `request` names from the store and send it (`ClientFrame::DepositFile` with the chunk
    /// list, or `ClientFrame::DepositChunk` per chunk).
    Upload {
        to: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        request: UploadRequest,
    },
    /// Drop what is queued for `peer` (of one attachment, or all).
    StopServing {
        peer: Address,
        attachment: Option<AttachmentId>,
    },
    /// Every chunk of this received attachment is stored: decrypt them in order with
    /// [`crate::attach::FileCheck`] and report `Input::FileChecked`.
    CheckFile(AttachmentId),
    Event(Event),
}

/// Things the UI (or a test) may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Authenticated,
    /// The relay said no to something; `message` is for people.
    ServerError {
        code: ErrorCode,
        message: String,
    },
    Presence {
        address: Address,
        status: PresenceStatus,
    },
    /// A new mail is stored in the Inbox.
    Received(MessageId),
    InboxChanged,
    /// An outgoing mail's recipient states changed.
    OutgoingChanged(MessageId),
    /// The mail was deleted (from the Inbox or from Sent, as the command said).
    Deleted(MessageId),
    /// `Command::DeleteSent` was refused; `reason` is for people.
    DeleteRefused {
        message_id: MessageId,
        reason: String,
    },
    ContactsChanged,
    /// An address-book group was saved or removed.
    GroupsChanged,
    /// The draft was not sent; the reason is for people.
    SendRejected {
        reason: String,
    },
    /// A peer sent something unreadable or not for us; logged, not fatal.
    PeerProtocolError {
        peer: Address,
        reason: String,
    },
    /// Persisting failed; the reason is for people.
    StoreFailed {
        reason: String,
    },
    /// The relay's directory now shows different keys for `address` than this node saw
    /// before. The new keys are used (trust on first use, with this warning).
    KeyChanged {
        address: Address,
    },
    /// A received attachment's transfer moved on (progress, state).
    DownloadChanged(AttachmentId),
    /// The relay will not keep this attachment for `to` (too large, quota, failure): `to`
    /// fetches it from this node when both are online. `reason` is for people.
    FileNotKept {
        to: Address,
        attachment: AttachmentId,
        reason: String,
    },
    /// A pairing code was not accepted (refused by the relay, or not answered: no
    /// connection); `reason` is for people.
    PairingFailed {
        reason: String,
    },
    /// This account's storage node is now `node` (after `Command::PairNode`).
    NodePaired {
        node: Address,
    },
    /// This account has no storage node now (after `Command::UnpairNode`); `node` was its
    /// address.
    NodeUnpaired {
        node: Address,
    },
    /// `Command::UnpairNode` was not answered (no connection, or it dropped); `reason` is
    /// for people.
    UnpairFailed {
        reason: String,
    },
    /// What the relay's location registry says about `address`'s storage node.
    NodeLocated {
        address: Address,
        node: Option<Address>,
        available: bool,
        last_seen: Option<Millis>,
    },
    /// A cached mail claiming to be from `from` failed verification (signature, decryption
    /// or consistency): it was neither stored nor released; `reason` is for people.
    Rejected {
        from: Address,
        message_id: MessageId,
        reason: String,
    },
}

/// A received mail waiting for its `Store` to complete before it is acknowledged.
#[derive(Debug)]
struct PendingInbox {
    record: InboxRecord,
    /// Peers to acknowledge once stored (a retry may arrive while the first store runs).
    ack_to: BTreeSet<Address>,
    /// Also release the relay's listing (cached copy or held copy) once stored.
    release: bool,
    /// Also tell this co-recipient's node, which held the copy, to delete it once stored.
    held_ack: Option<Address>,
}

/// A sealed copy handed to a co-recipient's node (`PeerFrame::HoldFor`), not answered yet.
#[derive(Debug, Clone)]
struct HoldAttempt {
    holder: Address,
    since: Millis,
    /// Set when the holder refused: no new attempt for this copy before then.
    blocked_until: Option<Millis>,
}

/// A mail the relay listed as held by a co-recipient's node, to be fetched from there.
#[derive(Debug, Clone)]
struct HeldFetch {
    holder: Address,
    /// When `FetchHeld` was last sent (resent after the ack timeout).
    requested_at: Option<Millis>,
}

/// A deposit the relay cache refused for now.
#[derive(Debug, Clone)]
struct Refusal {
    message: String,
    retry_at: Millis,
}

/// Per-peer connection bookkeeping.
#[derive(Debug, Default)]
struct PeerLink {
    connected: bool,
    /// When a `Connect` was emitted and not yet answered.
    connecting_since: Option<Millis>,
    /// Do not try to connect before this time (after a drop).
    retry_after: Millis,
}

/// One user's node. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Node {
    identity: Identity,
    config: Config,
    now: Millis,
    inbox: BTreeMap<MessageId, InboxRecord>,
    outgoing: BTreeMap<MessageId, OutgoingMail>,
    contacts: BTreeSet<Address>,
    /// Address-book groups by [`Group::key`].
    groups: BTreeMap<String, Group>,
    presence: HashMap<Address, PresenceStatus>,
    /// Addresses we asked the relay about in this signaling session.
    subscribed: BTreeSet<Address>,
    authenticated: bool,
    /// This account's storage node, as the relay's location registry last said.
    own_node: Option<Address>,
    /// `PairNode` requests not answered yet.
    pairing_requests: u32,
    /// `UnpairNode` requests not answered yet.
    unpair_requests: u32,
    links: HashMap<Address, PeerLink>,
    pending_inbox: HashMap<OpId, PendingInbox>,
    next_op: OpId,
    outputs: VecDeque<Output>,
    /// Fresh randomness for sealing (seeded by the driver from a CSPRNG).
    rng: ChaCha20Rng,
    /// Keys of other accounts: loaded from the store, refreshed by lookups.
    keys: HashMap<Address, KnownKeys>,
    /// Addresses whose keys were looked up in this signaling session.
    keys_fresh: BTreeSet<Address>,
    /// Lookups sent and not answered yet.
    lookups: BTreeSet<Address>,
    /// Deposits the relay refused, per (mail, recipient), until retried.
    refusals: HashMap<(MessageId, Address), Refusal>,
    /// Fetches sent and not answered yet.
    fetching: BTreeSet<MessageId>,
    /// Sealed copies waiting for their sender's keys: id → (claimed sender, bytes, holder
    /// if fetched from a co-recipient's node).
    unopened: BTreeMap<MessageId, (Address, Vec<u8>, Option<Address>)>,
    /// Fetches or releases the relay failed: retried at the time given.
    cache_retry: BTreeMap<MessageId, Millis>,
    /// Receipts to acknowledge once the delivery state they caused is stored.
    receipt_acks: HashMap<OpId, (Address, MessageId)>,
    /// Since when the relay has been unreachable (no authenticated session); `None` while
    /// signed in.
    relay_down_since: Option<Millis>,
    /// Sealed copies this node holds for co-recipients of mail it received, by
    /// (Message-ID, recipient).
    held: BTreeMap<(MessageId, Address), HeldMail>,
    /// Copies handed to this node whose `Store` has not completed: op → copy.
    pending_held: HashMap<OpId, HeldMail>,
    /// Held copies whose registration at the relay failed, retried at the time given.
    hold_register_retry: BTreeMap<(MessageId, Address), Millis>,
    /// Copies of this node's outgoing mail handed to a co-recipient, by (Message-ID, recipient).
    hold_attempts: HashMap<(MessageId, Address), HoldAttempt>,
    /// Mail waiting for this account at a co-recipient's node (this signaling session).
    held_fetch: BTreeMap<MessageId, HeldFetch>,
    /// Holders to tell (`HeldAck`) that this account stored its copy: id → holder.
    held_acks_due: BTreeMap<MessageId, Address>,
    /// Attachments of received mail, being fetched or done.
    downloads: BTreeMap<AttachmentId, transfer::Incoming>,
    /// Recipients' storage nodes, as the registry said (this session): person → node.
    recipient_nodes: BTreeMap<Address, Address>,
    /// Recipients whose storage node was asked about in this signaling session.
    located: BTreeSet<Address>,
    /// Attempts to reach recipients' storage nodes, by node.
    node_pushes: BTreeMap<Address, pushes::NodePush>,
    /// (attachment, storage node): the node refused to keep it (this session).
    push_refused: BTreeSet<(AttachmentId, Address)>,
    /// (attachment, storage node): `StoreFile` sent over the current channel.
    pushed: BTreeSet<(AttachmentId, Address)>,
    /// Chunk writes not yet reported stored: op → (attachment, chunk index).
    chunk_writes: HashMap<OpId, (AttachmentId, u32)>,
    /// Attachments being copied to the relay for offline recipients.
    uploads: HashMap<(AttachmentId, Address), transfer::Upload>,
    /// Files this node has whole whose relay copy (if any) is to be released.
    files_to_release: BTreeSet<AttachmentId>,
    /// Attachments the person stopped sending to a recipient (this session).
    sending_stopped: BTreeSet<(AttachmentId, Address)>,
    /// Mail the person deleted, by Message-ID.
    deleted: BTreeMap<MessageId, DeletedMail>,
}

impl Node {
    /// A node for `identity`, starting from what its store held.
    ///
    /// `rng_seed` must be fresh CSPRNG output (the driver reads it); the node draws the
    /// randomness of every sealed envelope from it.
    pub fn new(
        identity: Identity,
        config: Config,
        snapshot: Snapshot,
        now: Millis,
        rng_seed: [u8; 32],
    ) -> Self {
        let mut outgoing = BTreeMap::new();
        for mut o in snapshot.outgoing {
            // Nothing is in flight after a restart (a deposit is idempotent: redone).
            for r in &mut o.recipients {
                if matches!(
                    r.state,
                    DeliveryState::Sending { .. } | DeliveryState::Depositing { .. }
                ) {
                    r.state = unsettled_deposit(o.cancelled, now);
                }
            }
            outgoing.insert(o.mail.message_id.clone(), o);
        }
        let mut node = Node {
            identity,
            config,
            now,
            inbox: snapshot
                .inbox
                .into_iter()
                .map(|r| (r.mail.message_id.clone(), r))
                .collect(),
            outgoing,
            contacts: snapshot.contacts.into_iter().collect(),
            groups: snapshot.groups.into_iter().map(|g| (g.key(), g)).collect(),
            presence: HashMap::new(),
            subscribed: BTreeSet::new(),
            authenticated: false,
            own_node: None,
            pairing_requests: 0,
            unpair_requests: 0,
            links: HashMap::new(),
            pending_inbox: HashMap::new(),
            next_op: 1,
            outputs: VecDeque::new(),
            rng: ChaCha20Rng::from_seed(rng_seed),
            keys: snapshot
                .keys
                .into_iter()
                .map(|k| (k.address.clone(), k))
                .collect(),
            keys_fresh: BTreeSet::new(),
            lookups: BTreeSet::new(),
            refusals: HashMap::new(),
            fetching: BTreeSet::new(),
            unopened: BTreeMap::new(),
            receipt_acks: HashMap::new(),
            cache_retry: BTreeMap::new(),
            relay_down_since: Some(now),
            held: snapshot
                .held
                .into_iter()
                .map(|h| ((h.message_id.clone(), h.to.clone()), h))
                .collect(),
            pending_held: HashMap::new(),
            hold_register_retry: BTreeMap::new(),
            hold_attempts: HashMap::new(),
            recipient_nodes: BTreeMap::new(),
            located: BTreeSet::new(),
            node_pushes: BTreeMap::new(),
            push_refused: BTreeSet::new(),
            pushed: BTreeSet::new(),
            held_fetch: BTreeMap::new(),
            held_acks_due: BTreeMap::new(),
            downloads: snapshot
                .downloads
                .into_iter()
                .map(|d| (d.attachment.id, transfer::Incoming::new(d)))
                .collect(),
            chunk_writes: HashMap::new(),
            uploads: HashMap::new(),
            files_to_release: BTreeSet::new(),
            sending_stopped: BTreeSet::new(),
            deleted: snapshot
                .deleted
                .into_iter()
                .map(|d| (d.message_id.clone(), d))
                .collect(),
        };
        node.drop_orphaned_downloads();
        node
    }

    pub fn address(&self) -> &Address {
        &self.identity.address
    }
    /// How many mails of the Inbox are unread (archived ones are not counted; without
    /// sorting as [`Node::inbox`] does).
    pub fn unread_count(&self) -> usize {
        self.inbox
            .values()
            .filter(|r| !r.read && !r.archived)
            .count()
    }

    /// One received mail, by its Message-ID.
    pub fn received(&self, id: &MessageId) -> Option<&InboxRecord> {
        self.inbox.get(id)
    }

    /// The received mails of the Inbox (`archived` false) or of Archive (true), newest
    /// first.
    pub fn received_in(&self, archived: bool) -> Vec<&InboxRecord> {
        newest_first(self.inbox.values().filter(|r| r.archived == archived))
    }

    /// Received mails, newest first: those of the Inbox and the archived ones (see
    /// [`InboxRecord::archived`]).
    pub fn inbox(&self) -> Vec<&InboxRecord> {
        newest_first(self.inbox.values())
    }
    /// Outgoing mails (Outbox and Sent), newest first.
    pub fn outgoing(&self) -> Vec<&OutgoingMail> {
        let mut v: Vec<_> = self.outgoing.values().collect();
        v.sort_by(|a, b| {
            b.mail
                .date
                .cmp(&a.mail.date)
                .then(a.mail.message_id.cmp(&b.mail.message_id))
        });
        v
    }
    pub fn contacts(&self) -> impl Iterator<Item = &Address> {
        self.contacts.iter()
    }
    /// Address-book groups, by name (case-insensitively).
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }
    /// The group named `name` (any case).
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(&group_key(name))
    }
    /// This account's storage node, if it has one (its availability is its presence).
    pub fn own_node(&self) -> Option<&Address> {
        self.own_node.as_ref()
    }

    pub fn presence(&self, address: &Address) -> Option<PresenceStatus> {
        self.presence.get(address).copied()
    }
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }
    /// Why the relay cache refused the mail `id` for `to` last time, while it waits to retry.
    pub fn refusal(&self, id: &MessageId, to: &Address) -> Option<&str> {
        self.refusals
            .get(&(id.clone(), to.clone()))
            .map(|r| r.message.as_str())
    }
    /// The keys this node knows for `address`.
    pub fn known_keys(&self, address: &Address) -> Option<&KnownKeys> {
        self.keys.get(address)
    }
    /// Sealed copies this node holds for co-recipients (it cannot read them).
    pub fn held_copies(&self) -> impl Iterator<Item = &HeldMail> {
        self.held.values()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest time at which `Input::Tick` has work to do.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t: Option<Millis> = None;
        let mut consider = |x: Millis| t = Some(t.map_or(x, |t| t.min(x)));
        for o in self.outgoing.values() {
            for r in &o.recipients {
                match r.state {
                    DeliveryState::Sending { since, .. } => {
                        consider(since + self.config.ack_timeout)
                    }
                    // A deposit the relay has not answered is repeated (see `handle_tick`).
                    DeliveryState::Depositing { since } if self.authenticated => {
                        consider(since + self.config.ack_timeout)
                    }
                    _ => {}
                }
            }
        }
        if self.authenticated {
            for r in self.refusals.values().filter(|r| r.retry_at != Millis::MAX) {
                consider(r.retry_at.max(self.now));
            }
            for t in self.cache_retry.values() {
                consider((*t).max(self.now));
            }
            for t in self.hold_register_retry.values() {
                consider((*t).max(self.now));
            }
        } else if let Some(down) = self.relay_down_since {
            // The relay unreachable this long: copies for offline recipients go to holders.
            let due = down + self.config.deposit_retry;
            if due > self.now && self.has_waiting() {
                consider(due);
            }
        }
        for a in self.hold_attempts.values() {
            consider(
                a.blocked_until
                    .unwrap_or(a.since + self.config.ack_timeout)
                    .max(self.now),
            );
        }
        for f in self.held_fetch.values() {
            if let Some(at) = f.requested_at {
                consider((at + self.config.ack_timeout).max(self.now));
            }
        }
        if let Some(d) = self.downloads_timeout() {
            consider(d);
        }
        if let Some(p) = self.pushes_timeout() {
            consider(p);
        }
        for (addr, link) in &self.links {
            if let Some(s) = link.connecting_since {
                consider(s + self.config.connect_timeout);
            } else if !link.connected
                && link.retry_after > self.now
                && self.presence.get(addr) == Some(&PresenceStatus::Online)
                && self.wants_link(addr)
            {
                consider(link.retry_after);
            }
        }
        t
    }

    pub fn handle(&mut self, input: Input, now: Millis) {
        self.now = self.now.max(now);
        match input {
            Input::Command(c) => self.handle_command(c),
            Input::SignalingConnected => self.signaling_reset(false),
            Input::SignalingDisconnected => self.signaling_reset(true),
            Input::Server(frame) => self.handle_server(frame),
            Input::PeerConnected(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.connected = true;
                link.connecting_since = None;
                self.flush(&peer);
                self.pull_held(&peer);
                self.tell_sender(&peer);
                self.tell_own_node(&peer);
                self.downloads_link_changed(&peer);
                self.pump_downloads(&peer);
                self.push_to_node(&peer);
            }
            Input::PeerDisconnected(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.connected = false;
                link.connecting_since = None;
                link.retry_after = self.now + self.config.reconnect_backoff;
                self.requeue(&peer);
                // Go on at once: an offline peer's mail goes to the relay cache now (a
                // reconnect to an online one waits for the backoff).
                self.try_deliver(&peer);
                // Copies handed to `peer` and not confirmed are handed again later.
                self.hold_attempts
                    .retain(|_, a| a.holder != peer || a.blocked_until.is_some());
                for f in self.held_fetch.values_mut() {
                    if f.holder == peer {
                        f.requested_at = None;
                    }
                }
                self.downloads_peer_gone(&peer);
                self.push_link_down(&peer);
            }
            Input::Frame { peer, bytes } => self.handle_frame(peer, &bytes),
            Input::Chunk {
                peer,
                attachment,
                index,
                data,
                sha256,
            } => self.receive_chunk(Some(peer), attachment, index, data, Some(sha256)),
            Input::Stored { op, result } => self.handle_stored(op, result),
            Input::Tick => self.handle_tick(),
            Input::FileChecked { attachment, result } => self.file_checked(attachment, result),
        }
    }

    /// A new signaling session: requests of the old one are unanswered and redone.
    fn signaling_reset(&mut self, clear_presence: bool) {
        self.authenticated = false;
        // Requests the relay may or may not have carried out: the person is told, and the
        // panel shows the registry's word at the next sign-in.
        if std::mem::take(&mut self.pairing_requests) > 0 {
            self.event(Event::PairingFailed {
                reason: "the connection to the relay dropped before it answered; if the node \
                         does not show as yours once connected again, enter a new code"
                    .into(),
            });
        }
        if std::mem::take(&mut self.unpair_requests) > 0 {
            self.event(Event::UnpairFailed {
                reason: "the connection to the relay dropped before it answered; if the node \
                         still shows once connected again, unpair it again"
                    .into(),
            });
        }
        self.files_signaling_reset();
        self.relay_down_since.get_or_insert(self.now);
        // Listed again at the next sign-in.
        self.held_fetch.clear();
        self.located.clear();
        self.subscribed.clear();
        if clear_presence {
            self.presence.clear();
        }
        self.keys_fresh.clear();
        self.lookups.clear();
        self.fetching.clear();
        self.unopened.clear();
        let mut changed = Vec::new();
        let now = self.now;
        for o in self.outgoing.values_mut() {
            for r in &mut o.recipients {
                if matches!(r.state, DeliveryState::Depositing { .. }) {
                    r.state = unsettled_deposit(o.cancelled, now);
                    changed.push(o.mail.message_id.clone());
                }
            }
        }
        changed.dedup();
        for id in changed {
            self.persist_outgoing(&id);
        }
    }

    fn emit(&mut self, o: Output) {
        self.outputs.push_back(o);
    }
    fn event(&mut self, e: Event) {
        self.emit(Output::Event(e));
    }
    fn store(&mut self, write: StoreWrite) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        self.emit(Output::Store { op, write });
        op
    }
    fn persist_outgoing(&mut self, id: &MessageId) {
        if let Some(o) = self.outgoing.get(id).cloned() {
            self.store(StoreWrite::PutOutgoing(Box::new(o)));
            self.event(Event::OutgoingChanged(id.clone()));
        }
    }

    /// Sets the flag `flag` picks (read, archived) of the received mail `id` to `to`, and
    /// keeps the change (not there, or so already: nothing).
    fn set_flag(&mut self, id: &MessageId, flag: fn(&mut InboxRecord) -> &mut bool, to: bool) {
        if let Some(r) = self.inbox.get_mut(id) {
            if *flag(r) != to {
                *flag(r) = to;
                let r = r.clone();
                self.store(StoreWrite::PutInbox(r));
                self.event(Event::InboxChanged);
            }
        }
    }

    fn handle_command(&mut self, c: Command) {
        match c {
            Command::Send { draft, random } => self.send(draft, random),
            Command::CancelDownload(id) => self.cancel_download(id),
            Command::RetryDownload(id) => self.retry_download(id),
            Command::StopSending { attachment, to } => self.stop_sending(attachment, to),
            Command::DeleteReceived(id) => self.delete_received(id),
            Command::DeleteSent(id) => self.delete_sent(id),
            Command::MarkRead(id) => self.set_flag(&id, |r| &mut r.read, true),
            Command::MarkUnread(id) => self.set_flag(&id, |r| &mut r.read, false),
            Command::Archive(id) => self.set_flag(&id, |r| &mut r.archived, true),
            Command::Unarchive(id) => self.set_flag(&id, |r| &mut r.archived, false),
            Command::MarkAllRead => {
                let unread: Vec<InboxRecord> = self
                    .inbox
                    .values_mut()
                    .filter(|r| !r.read && !r.archived)
                    .map(|r| {
                        r.read = true;
                        r.clone()
                    })
                    .collect();
                if !unread.is_empty() {
                    for r in unread {
                        self.store(StoreWrite::PutInbox(r));
                    }
                    self.event(Event::InboxChanged);
                }
            }
            Command::CancelSending(id) => self.cancel_sending(&id),
            Command::AddContact(a) => {
                if self.contacts.insert(a.clone()) {
                    self.store(StoreWrite::PutContact(a.clone()));
                    self.event(Event::ContactsChanged);
                    self.subscribe([a]);
                }
            }
            Command::RemoveContact(a) => {
                if self.contacts.remove(&a) {
                    self.store(StoreWrite::RemoveContact(a));
                    self.event(Event::ContactsChanged);
                    self.unsubscribe_unneeded();
                }
            }
            Command::PutGroup(g) => {
                if self.groups.get(&g.key()) != Some(&g) {
                    self.groups.insert(g.key(), g.clone());
                    self.store(StoreWrite::PutGroup(g));
                    self.event(Event::GroupsChanged);
                }
            }
            Command::RemoveGroup(name) => {
                if self.groups.remove(&group_key(&name)).is_some() {
                    self.store(StoreWrite::RemoveGroup(name));
                    self.event(Event::GroupsChanged);
                }
            }
            Command::PairNode(code) => {
                if self.authenticated {
                    self.pairing_requests += 1;
                    self.emit(Output::ToServer(ClientFrame::PairNode { code }));
                } else {
                    self.event(Event::PairingFailed {
                        reason: NOT_CONNECTED.into(),
                    });
                }
            }
            Command::UnpairNode => {
                if self.authenticated {
                    self.unpair_requests += 1;
                    self.emit(Output::ToServer(ClientFrame::UnpairNode));
                } else {
                    self.event(Event::UnpairFailed {
                        reason: NOT_CONNECTED.into(),
                    });
                }
            }
            Command::LocateNode(address) => {
                self.emit(Output::ToServer(ClientFrame::LocateNode { address }));
            }
        }
    }

    /// The `References` of a reply to `parent` (RFC 5322 §3.6.4): the parent's own
    /// `References` (or, without them, its `In-Reply-To`) followed by the parent, so every
    /// mail of a thread names the mails before it. Just the parent when this node no longer
    /// has it. A long thread keeps its first mail and the latest [`MAX_REFERENCES`] − 1.
    fn thread_references(&self, parent: &MessageId) -> Vec<MessageId> {
        let found = self
            .inbox
            .get(parent)
            .map(|r| &r.mail)
            .or_else(|| self.outgoing.get(parent).map(|o| &o.mail));
        let mut refs: Vec<MessageId> = match found {
            Some(m) if !m.references.is_empty() => m.references.clone(),
            Some(m) => m.in_reply_to.iter().cloned().collect(),
            None => Vec::new(),
        };
        refs.retain(|r| r != parent);
        refs.push(parent.clone());
        if refs.len() > MAX_REFERENCES {
            refs.drain(1..refs.len() - (MAX_REFERENCES - 1));
        }
        refs
    }

    fn send(&mut self, draft: Draft, random: [u8; 16]) {
        if let Some((a, e)) = draft
            .attachments
            .iter()
            .find_map(|a| a.validate().err().map(|e| (a, e)))
        {
            return self.event(Event::SendRejected {
                reason: format!("attachment “{}”: {e}", a.name),
            });
        }
        let me = self.identity.address.clone();
        let mail = Mail {
            message_id: MessageId::new(random, me.host()),
            from: me.clone(),
            to: draft.to,
            cc: draft.cc,
            subject: draft.subject,
            date: self.now,
            body: draft.body,
            references: draft
                .in_reply_to
                .as_ref()
                .map(|parent| self.thread_references(parent))
                .unwrap_or_default(),
            in_reply_to: draft.in_reply_to,
            priority: draft.priority,
            attachments: draft.attachments,
        };
        let recipients = mail.recipients();
        if recipients.is_empty() {
            return self.event(Event::SendRejected {
                reason: "add at least one recipient".into(),
            });
        }
        match PeerFrame::Mail(mail.clone()).encode() {
            Ok(_) => {}
            Err(_) => {
                return self.event(Event::SendRejected {
                    reason: format!(
                        "the mail is too large; the limit is {} KiB",
                        MAX_PEER_FRAME / 1024 - 1
                    ),
                })
            }
        }
        let id = mail.message_id.clone();
        let mut o = OutgoingMail {
            mail,
            recipients: recipients
                .iter()
                .map(|a| RecipientStatus {
                    address: a.clone(),
                    state: DeliveryState::Waiting,
                })
                .collect(),
            fetched: Vec::new(),
            relay_has: Vec::new(),
            declined: Vec::new(),
            cancelled: false,
        };
        // A copy to oneself is delivered on the spot.
        if let Some(r) = o.recipients.iter_mut().find(|r| r.address == me) {
            r.state = DeliveryState::Delivered { at: self.now };
            let rec = InboxRecord {
                mail: o.mail.clone(),
                received_at: self.now,
                read: false,
                archived: false,
            };
            self.inbox.insert(id.clone(), rec.clone());
            self.store(StoreWrite::PutInbox(rec));
            self.event(Event::Received(id.clone()));
            self.event(Event::InboxChanged);
        }
        self.outgoing.insert(id.clone(), o);
        self.persist_outgoing(&id);
        let others: Vec<Address> = recipients.into_iter().filter(|a| *a != me).collect();
        self.subscribe(others.iter().cloned());
        for a in others {
            self.apply_presence_to(&a);
            self.try_deliver(&a);
        }
        self.locate_recipient_nodes();
    }

    /// Subscribes (when authenticated) to addresses not yet subscribed in this session.
    fn subscribe(&mut self, addrs: impl IntoIterator<Item = Address>) {
        if !self.authenticated {
            return;
        }
        let new: Vec<Address> = addrs
            .into_iter()
            .filter(|a| self.subscribed.insert(a.clone()))
            .collect();
        if !new.is_empty() {
            self.emit(Output::ToServer(ClientFrame::Subscribe { addresses: new }));
        }
    }

    /// True if the sender cancelled sending mail `id`.
    fn is_cancelled(&self, id: &MessageId) -> bool {
        self.outgoing.get(id).is_some_and(|o| o.cancelled)
    }

    /// [`Command::CancelSending`].
    fn cancel_sending(&mut self, id: &MessageId) {
        let Some(o) = self.outgoing.get_mut(id) else {
            return;
        };
        if o.cancelled || !o.is_pending() {
            return;
        }
        o.cancelled = true;
        let now = self.now;
        let mut withdraw = Vec::new();
        for r in &mut o.recipients {
            match r.state {
                // Not handed to anyone yet, or offered over a data channel (should the
                // recipient's acknowledgement still come, it shows as delivered).
                DeliveryState::Waiting | DeliveryState::Sending { .. } => {
                    r.state = DeliveryState::cancelled(now);
                }
                DeliveryState::CachedAtRelay { .. } => withdraw.push(r.address.clone()),
                // Being deposited (called back once the relay has it), held by a
                // co-recipient's node (it cannot be), or final.
                _ => {}
            }
        }
        self.refusals.retain(|(m, _), _| m != id);
        self.hold_attempts.retain(|(m, _), _| m != id);
        // Files being left at the relay for it stop (those left go with the mail).
        self.uploads.retain(|_, u| &u.message_id != id);
        self.persist_outgoing(id);
        self.event(Event::OutgoingChanged(id.clone()));
        for to in withdraw {
            self.call_back(to, id.clone());
        }
    }

    /// Asks the relay to give back the copy of cancelled mail `message_id` it keeps for
    /// `to` (`Withdraw`). Not connected, it is asked at the next sign-in, where every
    /// `CachedAtRelay` copy of a cancelled mail is.
    fn call_back(&mut self, to: Address, message_id: MessageId) {
        if self.authenticated {
            self.emit(Output::ToServer(ClientFrame::Withdraw { to, message_id }));
        }
    }

    /// Stops watching the presence of addresses subscribed in this session that nothing
    /// needs any more (a removed contact, a storage node unpaired), so a long session's
    /// subscriptions do not pile up at the relay (which limits them). Not called on every
    /// delivery: those recipients go at the next sign-in.
    fn unsubscribe_unneeded(&mut self) {
        if !self.authenticated {
            return;
        }
        let needed = self.interesting();
        let gone: Vec<Address> = self
            .subscribed
            .iter()
            .filter(|a| !needed.contains(*a))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        for a in &gone {
            self.subscribed.remove(a);
            self.presence.remove(a);
        }
        self.emit(Output::ToServer(ClientFrame::Unsubscribe {
            addresses: gone,
        }));
    }

    /// Every address this node needs presence for: contacts and pending recipients.
    fn interesting(&self) -> BTreeSet<Address> {
        let mut s: BTreeSet<Address> = self.contacts.clone();
        for o in self.outgoing.values() {
            for r in &o.recipients {
                if !r.state.is_final() {
                    s.insert(r.address.clone());
                }
            }
        }
        s.extend(self.held_fetch.values().map(|f| f.holder.clone()));
        s.extend(self.held_acks_due.values().cloned());
        s.extend(
            self.deleted
                .values()
                .filter_map(|d| Some(d.untold.as_ref()?.sender.clone())),
        );
        s.extend(
            self.downloads
                .values()
                .filter(|d| {
                    d.record.state == crate::store::DownloadState::Fetching
                        || (!d.record.sender_knows
                            && matches!(
                                d.record.state,
                                crate::store::DownloadState::Complete { .. }
                            ))
                })
                .map(|d| d.record.from.clone()),
        );
        // Other recipients of mail whose files are still coming: they may have them.
        let co: Vec<Address> = self
            .downloads
            .values()
            .filter(|d| d.record.state == crate::store::DownloadState::Fetching)
            .flat_map(|d| self.co_recipients(d))
            .collect();
        s.extend(co);
        s.extend(self.own_node.clone());
        s.extend(self.nodes_to_push());
        s.remove(&self.identity.address);
        s
    }

    /// Records this account's storage node and watches its presence (its availability).
    fn set_own_node(&mut self, node: Option<Address>) {
        if self.own_node != node {
            self.own_node = node;
            let all = self.interesting();
            self.subscribe(all);
            self.unsubscribe_unneeded();
        }
    }

    /// A data channel to `peer` is open.
    pub fn is_linked(&self, peer: &Address) -> bool {
        self.links.get(peer).is_some_and(|l| l.connected)
    }

    fn handle_server(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Challenge { nonce, .. } => {
                let address = self.identity.address.clone();
                let signature = self.identity.sign(&auth_message(&nonce, &address));
                self.emit(Output::ToServer(ClientFrame::Auth { address, signature }));
            }
            ServerFrame::Authenticated { .. } | ServerFrame::Registered { .. } => {
                self.authenticated = true;
                self.relay_down_since = None;
                self.event(Event::Authenticated);
                let encryption_key = self.identity.encryption_public_key().as_str().to_string();
                self.emit(Output::ToServer(ClientFrame::PublishKey { encryption_key }));
                let all = self.interesting();
                self.subscribe(all);
                self.emit(Output::ToServer(ClientFrame::LocateNode {
                    address: self.identity.address.clone(),
                }));
                self.locate_recipient_nodes();
                // Mail left at the relay cache: is it still there? (A relay whose data was
                // reset answers not_found, and the mail is deposited again.)
                let cached: Vec<(Address, MessageId)> = self
                    .outgoing
                    .values()
                    .flat_map(|o| {
                        o.recipients
                            .iter()
                            .filter(|r| matches!(r.state, DeliveryState::CachedAtRelay { .. }))
                            .map(|r| (r.address.clone(), o.mail.message_id.clone()))
                    })
                    .collect();
                for (to, message_id) in cached {
                    let frame = if self.is_cancelled(&message_id) {
                        ClientFrame::Withdraw { to, message_id }
                    } else {
                        ClientFrame::Check { to, message_id }
                    };
                    self.emit(Output::ToServer(frame));
                }
                self.downloads_signed_in();
                // (Re-)register every held copy: registration is idempotent, and one made
                // while the relay was unreachable (or lost) is made now.
                self.hold_register_retry.clear();
                let keys: Vec<_> = self.held.keys().cloned().collect();
                for key in keys {
                    self.register_held(&key);
                }
            }
            ServerFrame::Presence { address, status } => {
                self.presence.insert(address.clone(), status);
                self.event(Event::Presence {
                    address: address.clone(),
                    status,
                });
                self.apply_presence_to(&address);
                self.try_deliver(&address);
                self.pull_held(&address);
                self.pump_downloads(&address);
                self.tell_sender(&address);
                self.tell_own_node(&address);
                self.push_to_node(&address);
            }
            // A pairing code the relay did not accept (wrong, expired, too many tries).
            ServerFrame::Error {
                code: ErrorCode::NotFound | ErrorCode::RateLimited,
                message,
                about: None,
            } if self.pairing_requests > 0 => {
                self.pairing_requests -= 1;
                self.event(Event::PairingFailed { reason: message });
            }
            // A relay from before unpairing: it does not know the request.
            ServerFrame::Error {
                code: ErrorCode::UnknownType,
                message,
                about: None,
            } if self.unpair_requests > 0 && message.contains("unpair_node") => {
                self.unpair_requests -= 1;
                self.event(Event::UnpairFailed {
                    reason: format!("this relay cannot unpair storage nodes ({message})"),
                });
            }
            ServerFrame::Error {
                code,
                message,
                about,
            } => self.handle_error(code, message, about),
            ServerFrame::Keys {
                address,
                signing_key,
                encryption_key,
            } => self.handle_keys(address, signing_key, encryption_key),
            ServerFrame::Deposited { to, message_id } => {
                let at = self.now;
                self.start_uploads(&to, &message_id);
                self.refusals.remove(&(message_id.clone(), to.clone()));
                let cached =
                    self.set_state_if(&message_id, &to, DeliveryState::CachedAtRelay { at }, |s| {
                        matches!(s, DeliveryState::Waiting | DeliveryState::Depositing { .. })
                    });
                // Cancelled while it was being handed over: call it back.
                if cached.is_some() && self.is_cancelled(&message_id) {
                    self.call_back(to, message_id);
                }
            }
            ServerFrame::Withdrawn { to, message_id } => {
                let state = DeliveryState::cancelled(self.now);
                self.set_state_if(&message_id, &to, state, |s| {
                    matches!(s, DeliveryState::CachedAtRelay { .. })
                });
            }
            ServerFrame::Receipt {
                to,
                message_id,
                outcome,
            } => self.handle_receipt(to, message_id, outcome),
            ServerFrame::Waiting { items } => self.handle_waiting(items),
            ServerFrame::Cached {
                message_id,
                from,
                sealed,
            } => self.handle_cached(message_id, from, sealed),
            ServerFrame::Held { to, message_id } => {
                self.hold_register_retry.remove(&(message_id, to));
            }
            ServerFrame::FileAccepted { .. }
            | ServerFrame::ChunkDeposited { .. }
            | ServerFrame::FileInfo { .. }
            | ServerFrame::FileChunk { .. }
            | ServerFrame::FileReleased { .. } => self.handle_file_frame(frame),
            ServerFrame::NodePaired { node, .. } => {
                self.pairing_requests = self.pairing_requests.saturating_sub(1);
                self.set_own_node(Some(node.clone()));
                self.event(Event::NodePaired { node });
            }
            ServerFrame::NodeUnpaired { node, .. } => {
                self.unpair_requests = self.unpair_requests.saturating_sub(1);
                self.set_own_node(None);
                self.event(Event::NodeUnpaired { node });
            }
            ServerFrame::NodeLocation {
                address,
                node,
                available,
                last_seen,
            } => {
                if address == self.identity.address {
                    self.set_own_node(node.clone());
                } else {
                    self.recipient_node_located(address.clone(), node.clone());
                }
                self.event(Event::NodeLocated {
                    address,
                    node,
                    available,
                    last_seen,
                });
            }
            ServerFrame::Signal { .. }
            | ServerFrame::PairingCode { .. }
            | ServerFrame::FilesKept { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::KeyPublished
            | ServerFrame::Released { .. } => {}
        }
    }

    /// Sets the state of `to`'s copy of mail `id` when `cond` holds for the current one.
    fn set_state_if(
        &mut self,
        id: &MessageId,
        to: &Address,
        state: DeliveryState,
        cond: impl Fn(&DeliveryState) -> bool,
    ) -> Option<OpId> {
        let o = self.outgoing.get_mut(id)?;
        let cancelled = o.cancelled;
        let r = o.recipients.iter_mut().find(|r| &r.address == to)?;
        if !may_change(cancelled, &r.state, &state) || !cond(&r.state) {
            return None;
        }
        // A cancelled mail is not sent again to anyone.
        let state = match state {
            DeliveryState::Waiting if cancelled => DeliveryState::cancelled(self.now),
            s => s,
        };
        r.state = state;
        let o = o.clone();
        let op = self.store(StoreWrite::PutOutgoing(Box::new(o)));
        self.event(Event::OutgoingChanged(id.clone()));
        Some(op)
    }

    fn handle_error(&mut self, code: ErrorCode, message: String, about: Option<ErrorAbout>) {
        let about = about.unwrap_or_default();
        if let Some(attachment) = about.attachment {
            return self.file_error(code, message, attachment, about.to);
        }
        match (about.to, about.message_id) {
            // The registration of a copy this node holds for `to`.
            (Some(to), Some(id)) if self.held.contains_key(&(id.clone(), to.clone())) => {
                let key = (id, to);
                // Nobody to hold it for any more, or another co-recipient's node holds it (a
                // sender that did not hear back from one holder handed it to another).
                if matches!(code, ErrorCode::UnknownAddress | ErrorCode::Conflict) {
                    self.held.remove(&key);
                    self.store(StoreWrite::RemoveHeld {
                        message_id: key.0,
                        to: key.1,
                    });
                } else {
                    self.hold_register_retry
                        .insert(key, self.now + self.config.deposit_retry);
                }
            }
            // A withdrawal the relay could not make: the recipient took the copy already (its
            // receipt follows and shows it delivered), or the relay lost it.
            (Some(to), Some(id)) if code == ErrorCode::NotFound && self.is_cancelled(&id) => {
                let state = DeliveryState::Failed {
                    at: self.now,
                    reason: format!(
                        "{CANCELLED}; the relay no longer had it (it may have been fetched)"
                    ),
                };
                self.set_state_if(&id, &to, state, |s| {
                    matches!(s, DeliveryState::CachedAtRelay { .. })
                });
            }
            // A deposit of `id` for `to` the relay no longer has (a `Check`): deposit again.
            (Some(to), Some(id)) if code == ErrorCode::NotFound => {
                let changed = self.set_state_if(&id, &to, DeliveryState::Waiting, |s| {
                    matches!(s, DeliveryState::CachedAtRelay { .. })
                });
                if changed.is_some() {
                    self.try_deliver(&to);
                }
            }
            // A deposit of `id` for `to`.
            (Some(to), Some(id)) => {
                let now = self.now;
                match code {
                    ErrorCode::UnknownAddress | ErrorCode::Conflict | ErrorCode::MalformedFrame => {
                        self.refusals.remove(&(id.clone(), to.clone()));
                        let reason = if code == ErrorCode::UnknownAddress {
                            format!("no such address: {to}")
                        } else {
                            format!("the relay refused it: {message}")
                        };
                        self.set_state_if(
                            &id,
                            &to,
                            DeliveryState::Failed { at: now, reason },
                            |_| true,
                        );
                    }
                    // Full, rate-limited, failing: nothing lost, the mail waits and is retried.
                    _ => {
                        self.refusals.insert(
                            (id.clone(), to.clone()),
                            Refusal {
                                message,
                                retry_at: now + self.config.deposit_retry,
                            },
                        );
                        let changed = self.set_state_if(&id, &to, DeliveryState::Waiting, |s| {
                            matches!(s, DeliveryState::Depositing { .. })
                        });
                        if changed.is_none() {
                            self.event(Event::OutgoingChanged(id));
                        }
                        // A co-recipient's node may hold it instead.
                        self.try_hold(&to);
                    }
                }
            }
            // A lookup of `to`.
            (Some(to), None) => {
                self.lookups.remove(&to);
                let parked: Vec<MessageId> = self
                    .unopened
                    .iter()
                    .filter(|(_, (from, _, _))| from == &to)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in parked {
                    self.unopened.remove(&id);
                    self.event(Event::Rejected {
                        from: to.clone(),
                        message_id: id,
                        reason: format!("the keys of {to} could not be looked up: {message}"),
                    });
                }
            }
            // A fetch or release of `id`: the relay no longer has it, or failed; the next
            // sign-in lists it again if it still waits.
            (None, Some(id)) => {
                self.fetching.remove(&id);
                if code != ErrorCode::NotFound {
                    self.cache_retry
                        .insert(id, self.now + self.config.deposit_retry);
                }
            }
            (None, None) => self.event(Event::ServerError { code, message }),
        }
    }

    fn handle_keys(
        &mut self,
        address: Address,
        signing_key: PublicKey,
        encryption_key: Option<String>,
    ) {
        self.lookups.remove(&address);
        // An unusable key is treated as none published: direct delivery only.
        let encryption_key = encryption_key.and_then(|k| EncryptionKey::parse(&k).ok());
        let new = KnownKeys {
            address: address.clone(),
            signing_key,
            encryption_key,
        };
        let old = self.keys.get(&address);
        if old != Some(&new) {
            let changed = old.is_some_and(|old| {
                old.signing_key != new.signing_key
                    || matches!((&old.encryption_key, &new.encryption_key), (Some(a), Some(b)) if a != b)
            });
            if changed {
                self.event(Event::KeyChanged {
                    address: address.clone(),
                });
            }
            self.keys.insert(address.clone(), new.clone());
            self.store(StoreWrite::PutKeys(new));
        }
        self.keys_fresh.insert(address.clone());
        // Continue what waited for these keys.
        let parked: Vec<MessageId> = self
            .unopened
            .iter()
            .filter(|(_, (from, _, _))| from == &address)
            .map(|(id, _)| id.clone())
            .collect();
        for id in parked {
            if let Some((from, bytes, holder)) = self.unopened.remove(&id) {
                self.open_cached(id, from, bytes, holder);
            }
        }
        self.try_deliver(&address);
    }

    /// The keys of `address` if looked up in this session; else asks the relay (once).
    fn fresh_keys(&mut self, address: &Address) -> Option<KnownKeys> {
        if self.keys_fresh.contains(address) {
            return self.keys.get(address).cloned();
        }
        if self.authenticated && self.lookups.insert(address.clone()) {
            self.emit(Output::ToServer(ClientFrame::Lookup {
                address: address.clone(),
            }));
        }
        None
    }

    fn handle_receipt(&mut self, to: Address, message_id: MessageId, outcome: ReceiptOutcome) {
        // A copy this node held for `to` was delivered (or expired): delete it, then
        // acknowledge.
        let key = (message_id.clone(), to.clone());
        if self.held.remove(&key).is_some() {
            self.hold_register_retry.remove(&key);
            let op = self.store(StoreWrite::RemoveHeld {
                message_id: message_id.clone(),
                to: to.clone(),
            });
            self.receipt_acks.insert(op, (to, message_id));
            return;
        }
        let now = self.now;
        let state = match outcome {
            ReceiptOutcome::Delivered => DeliveryState::Delivered { at: now },
            ReceiptOutcome::Expired => {
                let since = self
                    .outgoing
                    .get(&message_id)
                    .and_then(|o| o.recipients.iter().find(|r| r.address == to))
                    .and_then(|r| match r.state {
                        DeliveryState::CachedAtRelay { at } => Some(at),
                        _ => None,
                    });
                let reason = match since {
                    Some(at) => format!(
                        "expired in the relay cache after {} days without being fetched",
                        now.saturating_sub(at) / 86_400_000
                    ),
                    None => "expired in the relay cache without being fetched".to_string(),
                };
                DeliveryState::Failed { at: now, reason }
            }
            ReceiptOutcome::Refused => DeliveryState::Failed {
                at: now,
                reason: "refused by the recipient: the envelope failed verification or \
                         could not be opened there; send it again"
                    .into(),
            },
        };
        self.refusals.remove(&(message_id.clone(), to.clone()));
        match self.set_state_if(&message_id, &to, state, |_| true) {
            // Acknowledged once the new state is durable.
            Some(op) => {
                self.receipt_acks.insert(op, (to, message_id));
            }
            None => self.emit(Output::ToServer(ClientFrame::AckReceipt { to, message_id })),
        }
    }

    fn handle_waiting(&mut self, items: Vec<WaitingMail>) {
        for item in items {
            let id = item.message_id;
            let holder = match item.location {
                MailLocation::Relay => None,
                MailLocation::Peer { holder } if holder != self.identity.address => Some(holder),
                MailLocation::Peer { .. } => continue,
            };
            if self.has_received(&id) {
                self.emit(Output::ToServer(ClientFrame::Release {
                    message_id: id.clone(),
                }));
                if let Some(h) = holder {
                    self.held_ack(h, id);
                }
                continue;
            }
            let busy = self.fetching.contains(&id)
                || self.held_fetch.contains_key(&id)
                || self.unopened.contains_key(&id)
                || self
                    .pending_inbox
                    .values()
                    .any(|p| p.record.mail.message_id == id);
            if busy {
                continue;
            }
            match holder {
                None => {
                    self.fetching.insert(id.clone());
                    self.emit(Output::ToServer(ClientFrame::Fetch { message_id: id }));
                }
                Some(holder) => {
                    self.held_fetch.insert(
                        id,
                        HeldFetch {
                            holder: holder.clone(),
                            requested_at: None,
                        },
                    );
                    self.subscribe([holder.clone()]);
                    self.pull_held(&holder);
                }
            }
        }
    }

    /// Asks `holder` (once a data channel is open; asking for one while it is online) for
    /// the copies it holds for this account, and tells it which ones this account stored.
    fn pull_held(&mut self, holder: &Address) {
        let wanted: Vec<MessageId> = self
            .held_fetch
            .iter()
            .filter(|(_, f)| &f.holder == holder && f.requested_at.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let acks = self.held_acks_due.values().any(|h| h == holder);
        if wanted.is_empty() && !acks {
            return;
        }
        if !self.ensure_link(holder) {
            return;
        }
        let now = self.now;
        for id in wanted {
            if let Some(f) = self.held_fetch.get_mut(&id) {
                f.requested_at = Some(now);
            }
            self.send_peer(holder, PeerFrame::FetchHeld { message_id: id });
        }
        let done: Vec<MessageId> = self
            .held_acks_due
            .iter()
            .filter(|(_, h)| *h == holder)
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.held_acks_due.remove(&id);
            self.send_peer(holder, PeerFrame::HeldAck { message_id: id });
        }
    }

    /// Tells `holder` that this account stored mail `id` (now, or when next connected).
    fn held_ack(&mut self, holder: Address, id: MessageId) {
        self.held_acks_due.insert(id, holder.clone());
        self.subscribe([holder.clone()]);
        self.pull_held(&holder);
    }

    fn send_peer(&mut self, peer: &Address, frame: PeerFrame) {
        match frame.encode() {
            Ok(bytes) => self.emit(Output::ToPeer {
                peer: peer.clone(),
                bytes,
            }),
            Err(e) => self.event(Event::PeerProtocolError {
                peer: peer.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// True if a data channel to `peer` is open; otherwise asks for one while `peer` is
    /// online (and no attempt is running or backing off).
    fn ensure_link(&mut self, peer: &Address) -> bool {
        let now = self.now;
        let online = self.presence.get(peer) == Some(&PresenceStatus::Online);
        let link = self.links.entry(peer.clone()).or_default();
        if link.connected {
            return true;
        }
        if online && link.connecting_since.is_none() && link.retry_after <= now {
            link.connecting_since = Some(now);
            self.emit(Output::Connect(peer.clone()));
        }
        false
    }

    fn handle_cached(&mut self, message_id: MessageId, from: Address, sealed: String) {
        self.fetching.remove(&message_id);
        let bytes = match BASE64.decode(sealed.as_bytes()) {
            Ok(b) => b,
            Err(_) if !self.has_received(&message_id) => {
                return self.refuse(
                    from,
                    message_id,
                    None,
                    "the cached envelope is not valid base64".into(),
                );
            }
            Err(_) => Vec::new(),
        };
        self.take_sealed(message_id, from, bytes, None);
    }

    /// A sealed copy fetched from the relay cache (`holder` `None`) or from a co-recipient's
    /// node: opened once the claimed sender's keys are fresh.
    fn take_sealed(
        &mut self,
        message_id: MessageId,
        from: Address,
        bytes: Vec<u8>,
        holder: Option<Address>,
    ) {
        if self.has_received(&message_id) {
            self.emit(Output::ToServer(ClientFrame::Release {
                message_id: message_id.clone(),
            }));
            if let Some(h) = holder {
                self.held_ack(h, message_id);
            }
            return;
        }
        if let Some(p) = self
            .pending_inbox
            .values_mut()
            .find(|p| p.record.mail.message_id == message_id)
        {
            p.release = true;
            if holder.is_some() {
                p.held_ack = holder;
            }
            return;
        }
        if self.fresh_keys(&from).is_some() {
            self.open_cached(message_id, from, bytes, holder);
        } else {
            self.unopened.insert(message_id, (from, bytes, holder));
        }
    }

    /// Verifies and decrypts a sealed copy whose sender's keys are fresh; stores it and
    /// releases the relay's listing (and the holder's copy) once stored, or rejects it
    /// visibly.
    fn open_cached(
        &mut self,
        message_id: MessageId,
        from: Address,
        bytes: Vec<u8>,
        holder: Option<Address>,
    ) {
        let Some(keys) = self.keys.get(&from).cloned() else {
            return;
        };
        let mail = match seal::open(&bytes, &self.identity, &keys.signing_key) {
            Ok(m) => m,
            Err(e) => return self.refuse(from, message_id, holder, e.to_string()),
        };
        if mail.from != from || mail.message_id != message_id {
            let reason = "the sealed mail does not match its envelope".to_string();
            return self.refuse(from, message_id, holder, reason);
        }
        self.store_received(mail, BTreeSet::new(), true, holder);
    }

    /// A sealed copy failed verification: the person is told, and a copy from the relay
    /// cache is refused there ([`ClientFrame::Refuse`]), which deletes it and tells its
    /// sender, so it is neither offered again at every sign-in nor left for the sender to
    /// wait on until it expires. A copy from a co-recipient's node is refused naming its
    /// holder: the relay drops that listing alone (it may keep a good copy under the same
    /// id) and tells the holder, which deletes its copy.
    fn refuse(
        &mut self,
        from: Address,
        message_id: MessageId,
        holder: Option<Address>,
        reason: String,
    ) {
        self.emit(Output::ToServer(ClientFrame::Refuse {
            message_id: message_id.clone(),
            holder,
        }));
        self.event(Event::Rejected {
            from,
            message_id,
            reason,
        });
    }

    /// Stores a newly received mail; once the store completes, `ack_to` peers are
    /// acknowledged, (if `release`) the relay's listing is released and the holder of a
    /// co-recipient copy is told.
    fn store_received(
        &mut self,
        mail: Mail,
        ack_to: BTreeSet<Address>,
        release: bool,
        held_ack: Option<Address>,
    ) {
        let record = InboxRecord {
            mail,
            received_at: self.now,
            read: false,
            archived: false,
        };
        let op = self.store(StoreWrite::PutInbox(record.clone()));
        self.pending_inbox.insert(
            op,
            PendingInbox {
                record,
                ack_to,
                release,
                held_ack,
            },
        );
    }

    /// Seals and deposits every waiting copy for the offline `peer` at the relay cache, once
    /// its keys are known. Without a published encryption key the mail waits for direct
    /// delivery.
    fn deposit_for(&mut self, peer: &Address) {
        let now = self.now;
        let due: Vec<MessageId> = self
            .outgoing
            .values()
            .filter(|o| {
                o.recipients
                    .iter()
                    .any(|r| &r.address == peer && r.state == DeliveryState::Waiting)
            })
            .map(|o| o.mail.message_id.clone())
            .filter(|id| {
                self.refusals
                    .get(&(id.clone(), peer.clone()))
                    .is_none_or(|r| r.retry_at <= now)
                    && !self.hold_attempts.contains_key(&(id.clone(), peer.clone()))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let Some(keys) = self.fresh_keys(peer) else {
            return;
        };
        let Some(key) = keys.encryption_key else {
            return;
        };
        for id in due {
            let Some(sealed) = self.seal_copy(&id, peer, &key) else {
                continue;
            };
            match sealed {
                Ok(bytes) => {
                    self.set_state_if(&id, peer, DeliveryState::Depositing { since: now }, |s| {
                        *s == DeliveryState::Waiting
                    });
                    self.emit(Output::ToServer(ClientFrame::Deposit {
                        to: peer.clone(),
                        message_id: id,
                        sealed: BASE64.encode(bytes),
                    }));
                }
                // Unsealable (a bad key, too large once sealed): keep it for direct delivery.
                Err(e) => {
                    self.refusals.insert(
                        (id.clone(), peer.clone()),
                        Refusal {
                            message: e.to_string(),
                            retry_at: Millis::MAX,
                        },
                    );
                    self.event(Event::OutgoingChanged(id));
                }
            }
        }
    }

    /// Seals outgoing mail `id` for `to` with fresh randomness; `None` if there is no such
    /// mail.
    fn seal_copy(
        &mut self,
        id: &MessageId,
        to: &Address,
        key: &EncryptionKey,
    ) -> Option<Result<Vec<u8>, seal::SealError>> {
        let mail = &self.outgoing.get(id)?.mail;
        let mut random = [0u8; 32];
        self.rng.fill_bytes(&mut random);
        Some(seal::seal(mail, &self.identity, to, key, random))
    }

    /// Fails pending deliveries to an address the relay does not know.
    fn apply_presence_to(&mut self, address: &Address) {
        if self.presence.get(address) != Some(&PresenceStatus::Unknown) {
            return;
        }
        let reason = format!("no such address: {address}");
        let now = self.now;
        let mut changed = Vec::new();
        for o in self.outgoing.values_mut() {
            for r in &mut o.recipients {
                if &r.address == address && !r.state.is_final() {
                    r.state = DeliveryState::Failed {
                        at: now,
                        reason: reason.clone(),
                    };
                    changed.push(o.mail.message_id.clone());
                }
            }
        }
        for id in changed {
            self.persist_outgoing(&id);
        }
    }

    /// Something for `peer` still to be delivered by this node (not left with the relay).
    fn has_pending_for(&self, peer: &Address) -> bool {
        self.outgoing.values().any(|o| {
            o.recipients.iter().any(|r| {
                &r.address == peer
                    && matches!(
                        r.state,
                        DeliveryState::Waiting | DeliveryState::Sending { .. }
                    )
            })
        })
    }

    /// Moves towards delivering everything pending for `peer`.
    ///
    /// An open data channel is used whatever presence says (the peer's signaling socket may
    /// be down while the channel is up); a new connection is asked for only while the peer
    /// is online.
    fn try_deliver(&mut self, peer: &Address) {
        if !self.has_pending_for(peer) {
            return;
        }
        if self.ensure_link(peer) {
            return self.flush(peer);
        }
        let status = self.presence.get(peer).copied();
        if status == Some(PresenceStatus::Offline) && self.authenticated {
            self.deposit_for(peer);
        }
        self.try_hold(peer);
    }

    /// Some recipient of some outgoing mail waits (for anything).
    fn has_waiting(&self) -> bool {
        self.outgoing.values().any(|o| {
            o.recipients
                .iter()
                .any(|r| r.state == DeliveryState::Waiting)
        })
    }

    /// This node needs a data channel to `peer`: mail to deliver, or a held copy to fetch
    /// or acknowledge.
    fn wants_link(&self, peer: &Address) -> bool {
        self.has_pending_for(peer)
            || self.held_fetch.values().any(|f| &f.holder == peer)
            || self.held_acks_due.values().any(|h| h == peer)
            || self.has_downloads_from(peer)
            || self.owes_sender(peer)
            || (self.own_node.as_ref() == Some(peer) && self.drops_pending())
    }

    /// Hands sealed copies for the offline `to` to another recipient of the same mail,
    /// when the relay cache refused them or the relay has been unreachable for
    /// [`Config::deposit_retry`]. The holder must already have the mail (delivered) and a
    /// data channel open to this node.
    fn try_hold(&mut self, to: &Address) {
        let now = self.now;
        if self.presence.get(to) == Some(&PresenceStatus::Online) {
            return;
        }
        let relay_unreachable = !self.authenticated
            && self
                .relay_down_since
                .is_some_and(|t| t + self.config.deposit_retry <= now);
        // The common case (called on every delivery attempt): nothing refused, relay up.
        if !relay_unreachable && !self.refusals.keys().any(|(_, a)| a == to) {
            return;
        }
        let me = self.identity.address.clone();
        let mut plan: Vec<(MessageId, Address)> = Vec::new();
        for o in self.outgoing.values() {
            let id = &o.mail.message_id;
            let key = (id.clone(), to.clone());
            let waiting = o
                .recipients
                .iter()
                .any(|r| &r.address == to && r.state == DeliveryState::Waiting);
            let refused = self
                .refusals
                .get(&key)
                .is_some_and(|r| r.retry_at != Millis::MAX);
            if !waiting || !(refused || relay_unreachable) || self.hold_attempts.contains_key(&key)
            {
                continue;
            }
            let holder = o.recipients.iter().find(|r| {
                &r.address != to
                    && r.address != me
                    && matches!(r.state, DeliveryState::Delivered { .. })
                    && self.links.get(&r.address).is_some_and(|l| l.connected)
            });
            if let Some(h) = holder {
                plan.push((id.clone(), h.address.clone()));
            }
        }
        if plan.is_empty() {
            return;
        }
        // With the relay reachable the keys were just looked up; without it, the stored ones.
        let keys = if self.authenticated {
            self.fresh_keys(to)
        } else {
            self.keys.get(to).cloned()
        };
        let Some(key) = keys.and_then(|k| k.encryption_key) else {
            return;
        };
        for (id, holder) in plan {
            let Some(Ok(sealed)) = self.seal_copy(&id, to, &key) else {
                continue;
            };
            self.hold_attempts.insert(
                (id.clone(), to.clone()),
                HoldAttempt {
                    holder: holder.clone(),
                    since: now,
                    blocked_until: None,
                },
            );
            self.send_peer(
                &holder,
                PeerFrame::HoldFor {
                    to: to.clone(),
                    message_id: id,
                    sealed,
                },
            );
        }
    }

    /// Registers a held copy at the relay (when signed in).
    fn register_held(&mut self, key: &(MessageId, Address)) {
        if !self.authenticated {
            return;
        }
        let Some(h) = self.held.get(key) else {
            return;
        };
        let frame = ClientFrame::Hold {
            to: h.to.clone(),
            message_id: h.message_id.clone(),
            from: h.from.clone(),
            size: h.sealed.len() as u64,
        };
        self.emit(Output::ToServer(frame));
    }

    /// A sender asks this node to hold a sealed copy of its mail for a co-recipient.
    fn handle_hold_for(
        &mut self,
        peer: Address,
        to: Address,
        message_id: MessageId,
        sealed: Vec<u8>,
    ) {
        let refuse = |reason: &str| PeerFrame::HoldRefused {
            to: to.clone(),
            message_id: message_id.clone(),
            reason: reason.to_string(),
        };
        let header_ok = seal::peek(&sealed)
            .is_ok_and(|h| h.from == peer && h.to == to && h.message_id == message_id);
        let co_recipient = self
            .inbox
            .get(&message_id)
            .is_some_and(|r| r.mail.from == peer && r.mail.recipients().contains(&to));
        let problem = if to == self.identity.address {
            Some("the copy is for this node's own account")
        } else if !co_recipient {
            Some("this node has no such mail from you for that recipient")
        } else if !header_ok {
            Some("the sealed copy does not match the mail")
        } else {
            None
        };
        if let Some(reason) = problem {
            self.event(Event::PeerProtocolError {
                peer: peer.clone(),
                reason: format!("refused to hold a copy for {to}: {reason}"),
            });
            return self.send_peer(&peer, refuse(reason));
        }
        let key = (message_id.clone(), to.clone());
        if self.held.contains_key(&key) {
            return self.send_peer(&peer, PeerFrame::Holding { to, message_id });
        }
        if self
            .pending_held
            .values()
            .any(|h| h.message_id == key.0 && h.to == key.1)
        {
            return;
        }
        let held = HeldMail {
            message_id,
            to,
            from: peer,
            sealed,
            held_at: self.now,
        };
        let op = self.store(StoreWrite::PutHeld(held.clone()));
        self.pending_held.insert(op, held);
    }

    /// Sends every waiting mail for `peer` over the open connection, and resends those whose
    /// acknowledgement is overdue.
    fn flush(&mut self, peer: &Address) {
        let now = self.now;
        let timeout = self.config.ack_timeout;
        let mut to_send = Vec::new();
        for o in self.outgoing.values_mut() {
            for r in &mut o.recipients {
                if &r.address != peer {
                    continue;
                }
                let attempts = match r.state {
                    DeliveryState::Waiting => 0,
                    DeliveryState::Sending { since, attempts } if since + timeout <= now => {
                        attempts
                    }
                    _ => continue,
                };
                r.state = DeliveryState::Sending {
                    since: now,
                    attempts: attempts + 1,
                };
                to_send.push(o.mail.clone());
            }
        }
        for mail in to_send {
            let id = mail.message_id.clone();
            self.persist_outgoing(&id);
            self.send_peer(peer, PeerFrame::Mail(mail));
        }
    }

    /// After a connection drop, in-flight mails to `peer` wait again.
    fn requeue(&mut self, peer: &Address) {
        let mut changed = Vec::new();
        for o in self.outgoing.values_mut() {
            for r in &mut o.recipients {
                if &r.address == peer && matches!(r.state, DeliveryState::Sending { .. }) {
                    r.state = DeliveryState::Waiting;
                    changed.push(o.mail.message_id.clone());
                }
            }
        }
        for id in changed {
            self.persist_outgoing(&id);
        }
    }

    fn handle_tick(&mut self) {
        let now = self.now;
        self.pushes_tick();
        self.refusals.retain(|_, r| r.retry_at > now);
        if self.authenticated {
            // No `deposited` within the ack timeout on a live connection: the reply was lost.
            // Deposit again (the relay keeps one copy per sender and Message-ID).
            let timeout = self.config.ack_timeout;
            let mut overdue = Vec::new();
            let mut withdraw = Vec::new();
            for o in self.outgoing.values_mut() {
                for r in &mut o.recipients {
                    if matches!(r.state, DeliveryState::Depositing { since } if since + timeout <= now)
                    {
                        r.state = unsettled_deposit(o.cancelled, now);
                        overdue.push(o.mail.message_id.clone());
                        if o.cancelled {
                            withdraw.push((r.address.clone(), o.mail.message_id.clone()));
                        }
                    }
                }
            }
            for (to, message_id) in withdraw {
                self.call_back(to, message_id);
            }
            overdue.dedup();
            for id in overdue {
                self.persist_outgoing(&id);
            }
        }
        if self.authenticated {
            let due: Vec<MessageId> = self
                .cache_retry
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                self.cache_retry.remove(&id);
                let frame = if self.has_received(&id) {
                    ClientFrame::Release { message_id: id }
                } else {
                    self.fetching.insert(id.clone());
                    ClientFrame::Fetch { message_id: id }
                };
                self.emit(Output::ToServer(frame));
            }
            let due: Vec<(MessageId, Address)> = self
                .hold_register_retry
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                self.hold_register_retry.remove(&key);
                self.register_held(&key);
            }
        }
        // Hand-overs not answered in time are forgotten (and redone); refused ones are
        // redone after their pause.
        let timeout = self.config.ack_timeout;
        self.hold_attempts.retain(|_, a| match a.blocked_until {
            Some(t) => t > now,
            None => a.since + timeout > now,
        });
        let mut holders = BTreeSet::new();
        for f in self.held_fetch.values_mut() {
            if f.requested_at.is_some_and(|t| t + timeout <= now) {
                f.requested_at = None;
            }
            holders.insert(f.holder.clone());
        }
        holders.extend(self.held_acks_due.values().cloned());
        for h in holders {
            self.pull_held(&h);
        }
        let mut timed_out = Vec::new();
        for (addr, link) in self.links.iter_mut() {
            if let Some(s) = link.connecting_since {
                if s + self.config.connect_timeout <= now {
                    link.connecting_since = None;
                    link.retry_after = now + self.config.reconnect_backoff;
                    timed_out.push(addr.clone());
                }
            }
        }
        let peers: BTreeSet<Address> = self
            .outgoing
            .values()
            .flat_map(|o| {
                o.recipients
                    .iter()
                    .filter(|r| !r.state.is_final())
                    .map(|r| r.address.clone())
            })
            .collect();
        for p in peers {
            self.try_deliver(&p);
        }
        // What deleted mail leaves to tell its senders and this person's storage node, once
        // a channel may be tried again (over an open one it was told when it opened).
        let mut owed: BTreeSet<Address> = self
            .deleted
            .values()
            .filter_map(|d| Some(d.untold.as_ref()?.sender.clone()))
            .collect();
        owed.extend(self.own_node.clone().filter(|_| self.drops_pending()));
        for p in owed {
            if !self.links.get(&p).is_some_and(|l| l.connected) {
                self.tell_sender(&p);
                self.tell_own_node(&p);
            }
        }
        self.downloads_tick();
    }

    fn handle_frame(&mut self, peer: Address, bytes: &[u8]) {
        let frame = match PeerFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                return self.event(Event::PeerProtocolError {
                    peer,
                    reason: e.to_string(),
                })
            }
        };
        match frame {
            PeerFrame::GetChunkList { .. }
            | PeerFrame::ChunkList { .. }
            | PeerFrame::GetChunks { .. }
            | PeerFrame::Chunk { .. }
            | PeerFrame::TransferRefused { .. }
            | PeerFrame::CancelTransfer { .. }
            | PeerFrame::FileReceived { .. }
            | PeerFrame::FileReceivedAck { .. } => self.handle_transfer_frame(peer, frame),
            PeerFrame::MailDeleted {
                message_id,
                fetched,
                not_fetched,
            } => self.recipient_deleted(peer, message_id, fetched, not_fetched),
            PeerFrame::MailDeletedAck { message_id } => self.sender_heard(&peer, &message_id),
            PeerFrame::FilesDropped { attachments } => self.node_dropped(&peer, &attachments),
            PeerFrame::DropFiles { .. } => self.event(Event::PeerProtocolError {
                peer,
                reason: "only a storage node deletes files it keeps for someone".into(),
            }),
            // Only storage nodes keep files for others.
            PeerFrame::StoreFile { attachment, .. } => self.send_peer(
                &peer,
                PeerFrame::TransferRefused {
                    attachment,
                    reason: format!("{} is not a storage node", self.identity.address),
                },
            ),
            PeerFrame::Mail(mail) => self.receive(peer, mail),
            PeerFrame::Ack { message_id } => self.settle(
                &peer,
                &message_id,
                DeliveryState::Delivered { at: self.now },
            ),
            PeerFrame::Reject { message_id, reason } => {
                let reason = format!("refused by {peer}: {reason}");
                self.settle(
                    &peer,
                    &message_id,
                    DeliveryState::Failed {
                        at: self.now,
                        reason,
                    },
                )
            }
            PeerFrame::HoldFor {
                to,
                message_id,
                sealed,
            } => self.handle_hold_for(peer, to, message_id, sealed),
            PeerFrame::Holding { to, message_id } => {
                let key = (message_id.clone(), to.clone());
                if self
                    .hold_attempts
                    .get(&key)
                    .is_some_and(|a| a.holder == peer)
                {
                    self.hold_attempts.remove(&key);
                    self.refusals.remove(&key);
                    let at = self.now;
                    self.set_state_if(
                        &message_id,
                        &to,
                        DeliveryState::HeldBy { holder: peer, at },
                        |s| *s == DeliveryState::Waiting,
                    );
                }
            }
            PeerFrame::HoldRefused {
                to,
                message_id,
                reason,
            } => {
                let until = self.now + self.config.deposit_retry;
                if let Some(a) = self.hold_attempts.get_mut(&(message_id, to.clone())) {
                    if a.holder == peer {
                        a.blocked_until = Some(until);
                    }
                }
                self.event(Event::PeerProtocolError {
                    peer,
                    reason: format!("would not hold a copy for {to}: {reason}"),
                });
            }
            PeerFrame::FetchHeld { message_id } => {
                let frame = match self.held.get(&(message_id.clone(), peer.clone())) {
                    Some(h) => PeerFrame::HeldCopy {
                        message_id,
                        from: h.from.clone(),
                        sealed: h.sealed.clone(),
                    },
                    None => PeerFrame::HeldMissing { message_id },
                };
                self.send_peer(&peer, frame);
            }
            PeerFrame::HeldCopy {
                message_id,
                from,
                sealed,
            } => {
                if self
                    .held_fetch
                    .get(&message_id)
                    .is_none_or(|f| f.holder != peer)
                {
                    return self.event(Event::PeerProtocolError {
                        peer,
                        reason: format!("sent {message_id}, which was not asked of it"),
                    });
                }
                self.held_fetch.remove(&message_id);
                self.take_sealed(message_id, from, sealed, Some(peer));
            }
            PeerFrame::HeldMissing { message_id } => {
                if self
                    .held_fetch
                    .get(&message_id)
                    .is_some_and(|f| f.holder == peer)
                {
                    self.held_fetch.remove(&message_id);
                }
            }
            PeerFrame::HeldAck { message_id } => {
                let key = (message_id, peer);
                if self.held.remove(&key).is_some() {
                    self.hold_register_retry.remove(&key);
                    self.store(StoreWrite::RemoveHeld {
                        message_id: key.0,
                        to: key.1,
                    });
                }
            }
        }
    }

    fn reject(&mut self, peer: Address, message_id: MessageId, reason: String) {
        self.event(Event::PeerProtocolError {
            peer: peer.clone(),
            reason: reason.clone(),
        });
        self.send_peer(&peer, PeerFrame::Reject { message_id, reason });
    }

    fn ack(&mut self, peer: Address, message_id: MessageId) {
        self.send_peer(&peer, PeerFrame::Ack { message_id });
    }

    fn receive(&mut self, peer: Address, mail: Mail) {
        let id = mail.message_id.clone();
        if mail.from != peer {
            return self.reject(
                peer,
                id,
                "the mail's sender is not the connected peer".into(),
            );
        }
        if !mail.recipients().contains(&self.identity.address) {
            return self.reject(
                peer,
                id,
                format!("{} is not a recipient", self.identity.address),
            );
        }
        if self.has_received(&id) {
            return self.ack(peer, id);
        }
        if let Some(p) = self
            .pending_inbox
            .values_mut()
            .find(|p| p.record.mail.message_id == id)
        {
            p.ack_to.insert(peer);
            return;
        }
        self.store_received(mail, BTreeSet::from([peer]), false, None);
    }

    fn handle_stored(&mut self, op: OpId, result: Result<(), String>) {
        if let Some((attachment, index)) = self.chunk_writes.remove(&op) {
            return self.chunk_stored(attachment, index, result);
        }
        if let Some((to, message_id)) = self.receipt_acks.remove(&op) {
            if result.is_ok() {
                self.emit(Output::ToServer(ClientFrame::AckReceipt { to, message_id }));
            }
        }
        if let Some(h) = self.pending_held.remove(&op) {
            let key = (h.message_id.clone(), h.to.clone());
            let (giver, message_id, to) = (h.from.clone(), h.message_id.clone(), h.to.clone());
            match &result {
                Ok(()) => {
                    self.held.insert(key.clone(), h);
                    self.send_peer(&giver, PeerFrame::Holding { to, message_id });
                    self.register_held(&key);
                }
                Err(reason) => {
                    let reason = format!("could not store it: {reason}");
                    self.send_peer(
                        &giver,
                        PeerFrame::HoldRefused {
                            to,
                            message_id,
                            reason,
                        },
                    );
                }
            }
        }
        let pending = self.pending_inbox.remove(&op);
        match (pending, result) {
            (Some(p), Ok(())) => {
                let id = p.record.mail.message_id.clone();
                self.inbox.insert(id.clone(), p.record);
                for peer in p.ack_to {
                    self.ack(peer, id.clone());
                }
                if p.release {
                    self.emit(Output::ToServer(ClientFrame::Release {
                        message_id: id.clone(),
                    }));
                }
                if let Some(h) = p.held_ack {
                    self.held_ack(h, id.clone());
                }
                if let Some(mail) = self.inbox.get(&id).map(|r| r.mail.clone()) {
                    self.start_downloads(&mail);
                }
                self.event(Event::Received(id));
                self.event(Event::InboxChanged);
            }
            // Not acknowledged: the sender keeps the mail and retries.
            (_, Err(reason)) => self.event(Event::StoreFailed { reason }),
            (None, Ok(())) => {}
        }
    }

    fn settle(&mut self, peer: &Address, id: &MessageId, state: DeliveryState) {
        let Some(o) = self.outgoing.get_mut(id) else {
            return;
        };
        let cancelled = o.cancelled;
        let Some(r) = o.recipients.iter_mut().find(|r| &r.address == peer) else {
            return;
        };
        if !may_change(cancelled, &r.state, &state) {
            return;
        }
        let delivered = matches!(state, DeliveryState::Delivered { .. });
        r.state = state;
        self.persist_outgoing(id);
        if delivered {
            // `peer` has the mail now: it may hold copies for recipients the relay refused.
            let others: Vec<Address> = self.outgoing[id]
                .recipients
                .iter()
                .filter(|r| r.state == DeliveryState::Waiting)
                .map(|r| r.address.clone())
                .collect();
            for a in others {
                self.try_hold(&a);
            }
        }
    }
}
