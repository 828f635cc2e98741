//! What a node keeps, and the storage contract every store implements.
//!
//! The [`Node`](crate::node::Node) holds the mailbox in memory and asks its driver to persist
//! changes as [`StoreWrite`]s; at start the driver loads a [`Snapshot`]. Stores: the
//! [`MemoryStore`] here (tests, harness) and the IndexedDB store in `web-client`. Both run
//! the same conformance tests through [`store_conformance_tests!`](crate::store_conformance_tests).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::attach::{AttachmentId, AttachmentRef, Download, Hash};
use crate::groups::{group_key, Group};
use crate::identity::{EncryptionKey, Identity, PublicKey};
use crate::mail::{Mail, MessageId, Millis};

/// A received mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRecord {
    pub mail: Mail,
    /// When this node stored it (receiver's clock).
    pub received_at: Millis,
    pub read: bool,
    /// Moved out of the Inbox into the Archive by the person: kept, listed there, and not
    /// counted among the Inbox's unread mail. Records written before there was an Archive
    /// read as not archived (and an older build that rewrites a record drops the field: the
    /// mail is back in its Inbox, nothing else changes).
    #[serde(default)]
    pub archived: bool,
}

/// Where one recipient's copy of an outgoing mail stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Not yet sent: the recipient is offline or no connection is up yet.
    Waiting,
    /// Sent over a data channel at `since`, acknowledgement not yet received.
    Sending { since: Millis, attempts: u32 },
    /// A sealed copy was handed to the relay cache at `since`; its commit not yet confirmed.
    Depositing { since: Millis },
    /// The node of `holder`, another recipient of the same mail, holds a sealed copy since
    /// `at` (the relay cache refused it or was unreachable); the recipient fetches it from
    /// there. Not final: the mail stays in the Outbox until the relay's receipt says delivered.
    HeldBy { holder: Address, at: Millis },
    /// The relay cache holds a sealed copy since `at`; the recipient fetches it from there.
    /// Not final: the mail stays in the Outbox until the relay's receipt says delivered.
    CachedAtRelay { at: Millis },
    /// The recipient's node acknowledged storing it.
    Delivered { at: Millis },
    /// Given up; `reason` is shown to the sender.
    Failed { at: Millis, reason: String },
}

/// Why a recipient failed after `Command::CancelSending` (the start of the reason; the
/// relay's answer may add to it).
pub const CANCELLED: &str = "you cancelled sending";

impl DeliveryState {
    /// Failed at `at` because the sender cancelled sending.
    pub fn cancelled(at: Millis) -> Self {
        DeliveryState::Failed {
            at,
            reason: CANCELLED.into(),
        }
    }

    /// Failed because the sender cancelled sending.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, DeliveryState::Failed { reason, .. } if reason.starts_with(CANCELLED))
    }

    /// Delivered or failed: nothing more will happen for this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            DeliveryState::Delivered { .. } | DeliveryState::Failed { .. }
        )
    }
}

/// One recipient of an outgoing mail and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub address: Address,
    pub state: DeliveryState,
}

/// A mail this user sent. It shows in the Outbox while any recipient is pending, in Sent after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMail {
    pub mail: Mail,
    pub recipients: Vec<RecipientStatus>,
    /// Which recipients have fetched (and verified) which attachment, as they told this
    /// node (`PeerFrame::FileReceived`).
    #[serde(default)]
    pub fetched: Vec<(AttachmentId, Address)>,
    /// Which attachment the relay keeps whole for which (offline) recipient.
    #[serde(default)]
    pub relay_has: Vec<(AttachmentId, Address)>,
    /// Which recipient deleted the mail before fetching which attachment, as it told this
    /// node (`PeerFrame::MailDeleted`): that file is no longer needed by, or sent to, it.
    #[serde(default)]
    pub declined: Vec<(AttachmentId, Address)>,
    /// The sender cancelled sending (`Command::CancelSending`): recipients not reached yet
    /// are not sent it any more, and the relay is asked to give back a deposited copy.
    #[serde(default)]
    pub cancelled: bool,
}

impl OutgoingMail {
    /// Recipients (not failed) that have not yet fetched attachment `id`, themselves or
    /// through their storage node, and still want it (did not delete the mail).
    pub fn still_needed_by(&self, id: AttachmentId) -> Vec<&Address> {
        self.recipients
            .iter()
            .filter(|r| !matches!(r.state, DeliveryState::Failed { .. }))
            .map(|r| &r.address)
            .filter(|a| {
                !self
                    .fetched
                    .iter()
                    .any(|(f, b)| *f == id && (b == *a || *b == a.storage_node()))
            })
            .filter(|a| !self.declined_by(id, a))
            .collect()
    }

    /// True if recipient `who` deleted the mail before fetching attachment `id`.
    pub fn declined_by(&self, id: AttachmentId, who: &Address) -> bool {
        self.declined.iter().any(|(f, b)| *f == id && b == who)
    }

    /// Recipients' storage nodes that keep attachment `id` for them.
    pub fn kept_on_nodes(&self, id: AttachmentId) -> Vec<&Address> {
        self.fetched
            .iter()
            .filter(|(f, b)| *f == id && b.is_storage_node())
            .map(|(_, b)| b)
            .collect()
    }

    /// True while some recipient still waits for the mail (the Outbox folder).
    pub fn is_pending(&self) -> bool {
        self.recipients.iter().any(|r| !r.state.is_final())
    }
}

/// The public keys of another account as last seen in the relay's directory (trust on
/// first use: a later lookup that differs is reported as a changed key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownKeys {
    pub address: Address,
    pub signing_key: PublicKey,
    /// `None` until the account publishes one.
    pub encryption_key: Option<EncryptionKey>,
}

/// A sealed copy of someone else's mail that this node holds for a co-recipient (see
/// `PeerFrame::HoldFor`). Keyed by `(message_id, to)`. This node cannot read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMail {
    pub message_id: MessageId,
    /// The recipient it is sealed for.
    pub to: Address,
    /// The mail's sender, who handed it over.
    pub from: Address,
    pub sealed: Vec<u8>,
    pub held_at: Millis,
}

/// Where fetching one attachment of a received mail stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadState {
    /// Chunks are being fetched (or will be, when the node that has them is reachable).
    Fetching,
    /// Every chunk is held and the whole file matched the mail's hash.
    Complete { at: Millis },
    /// Given up; `reason` is for people. Nothing shows the file as complete.
    Failed { at: Millis, reason: String },
    /// The person cancelled it; it can be started again.
    Cancelled,
}

impl DownloadState {
    /// The whole file is held and verified.
    pub fn is_complete(&self) -> bool {
        matches!(self, DownloadState::Complete { .. })
    }
}

/// One attachment of a received mail and how much of it this node holds. The encrypted
/// chunks themselves are kept by the driver (IndexedDB Blobs), keyed by attachment id and
/// chunk index; `progress` lists only chunks whose storage completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub message_id: MessageId,
    /// The mail's sender, whose node has the chunks.
    pub from: Address,
    pub attachment: AttachmentRef,
    pub progress: Download,
    pub state: DownloadState,
    /// The sender acknowledged that this node has the whole file (`FileReceivedAck`).
    #[serde(default)]
    pub sender_knows: bool,
}

/// A mail the person deleted, kept (by Message-ID) so that a copy delivered again, by the
/// relay, a co-recipient's node or the sender retrying, is acknowledged and not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedMail {
    pub message_id: MessageId,
    /// Deleted from the Inbox (a received mail).
    pub received: bool,
    /// Deleted from Sent (a mail this account sent).
    pub sent: bool,
    /// When (this node's clock).
    pub at: Millis,
    /// A received mail's files whose fate its sender has not heard yet, told it
    /// (`PeerFrame::MailDeleted`) when next connected; `None` once it acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untold: Option<Box<UntoldFiles>>,
    /// Files of the mail on this person's storage node, to be deleted there: asked of the
    /// node (`PeerFrame::DropFiles`) until it answers that they are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_node: Vec<AttachmentId>,
}

/// What the recipient that deleted a mail still has to tell its sender: files it had
/// fetched whole without the sender knowing, and files it deleted before fetching them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntoldFiles {
    pub sender: Address,
    pub fetched: Vec<AttachmentId>,
    pub not_fetched: Vec<AttachmentId>,
}

/// One change to persist. Every write is an upsert keyed by Message-ID, address or group
/// name, so applying a write twice leaves the same state as applying it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreWrite {
    PutInbox(InboxRecord),
    PutOutgoing(Box<OutgoingMail>),
    PutContact(Address),
    RemoveContact(Address),
    /// Upsert by the group's [`key`](Group::key) (its name, case-insensitively).
    PutGroup(Group),
    /// Removes the group with this name (any case; not there is not an error).
    RemoveGroup(String),
    /// Upsert by address.
    PutKeys(KnownKeys),
    /// Upsert by `(message_id, to)`.
    PutHeld(HeldMail),
    RemoveHeld {
        message_id: MessageId,
        to: Address,
    },
    /// Upsert by attachment id.
    PutDownload(Box<DownloadRecord>),
    /// One encrypted attachment chunk (upsert by attachment and index), already checked
    /// against its chunk list. A driver may commit several consecutive chunk writes in one
    /// transaction, answering each after the commit.
    PutChunk {
        attachment: AttachmentId,
        index: u32,
        data: Vec<u8>,
    },
    /// The chunk list of an attachment this node has whole, to serve it (upsert by
    /// attachment).
    PutChunkList {
        attachment: AttachmentId,
        hashes: Vec<Hash>,
    },
    /// Deletes a mail, in one transaction: the Inbox record if `deleted.received`, the
    /// Outgoing record if `deleted.sent`, the download records, chunks and chunk lists of
    /// `attachments` (the node lists only files no other mail it keeps refers to), and
    /// upserts `deleted` by Message-ID.
    DeleteMail {
        deleted: DeletedMail,
        attachments: Vec<AttachmentId>,
    },
}

/// Everything a node needs at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub inbox: Vec<InboxRecord>,
    pub outgoing: Vec<OutgoingMail>,
    pub contacts: Vec<Address>,
    pub keys: Vec<KnownKeys>,
    pub held: Vec<HeldMail>,
    pub downloads: Vec<DownloadRecord>,
    /// Address-book groups.
    pub groups: Vec<Group>,
    /// Mail the person deleted.
    pub deleted: Vec<DeletedMail>,
}

/// A store failure, as text from the underlying engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// The storage contract. Futures need not be `Send` (the browser is single-threaded).
#[allow(async_fn_in_trait)]
pub trait MailStore {
    async fn load_identity(&self) -> Result<Option<Identity>, StoreError>;
    async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError>;
    async fn load(&self) -> Result<Snapshot, StoreError>;
    async fn apply(&self, write: StoreWrite) -> Result<(), StoreError>;
    /// One stored attachment chunk (not part of the snapshot: attachments can be large).
    async fn read_chunk(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// The chunk list of an attachment this node has whole.
    async fn read_chunk_list(
        &self,
        attachment: AttachmentId,
    ) -> Result<Option<Vec<Hash>>, StoreError>;
}

/// An in-memory store: the reference implementation of the contract.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RefCell<MemoryInner>,
}

#[derive(Debug, Default, Clone)]
struct MemoryInner {
    identity_json: Option<String>,
    inbox: BTreeMap<MessageId, InboxRecord>,
    outgoing: BTreeMap<MessageId, OutgoingMail>,
    contacts: BTreeMap<Address, ()>,
    keys: BTreeMap<Address, KnownKeys>,
    held: BTreeMap<(MessageId, Address), HeldMail>,
    downloads: BTreeMap<AttachmentId, DownloadRecord>,
    chunks: BTreeMap<(AttachmentId, u32), Vec<u8>>,
    chunk_lists: BTreeMap<AttachmentId, Vec<Hash>>,
    groups: BTreeMap<String, Group>,
    deleted: BTreeMap<MessageId, DeletedMail>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// Applies a write synchronously (for the in-process harness).
    pub fn apply_now(&self, write: StoreWrite) {
        let mut s = self.inner.borrow_mut();
        match write {
            StoreWrite::PutInbox(r) => {
                s.inbox.insert(r.mail.message_id.clone(), r);
            }
            StoreWrite::PutOutgoing(o) => {
                s.outgoing.insert(o.mail.message_id.clone(), *o);
            }
            StoreWrite::PutContact(a) => {
                s.contacts.insert(a, ());
            }
            StoreWrite::RemoveContact(a) => {
                s.contacts.remove(&a);
            }
            StoreWrite::PutGroup(g) => {
                s.groups.insert(g.key(), g);
            }
            StoreWrite::RemoveGroup(name) => {
                s.groups.remove(&group_key(&name));
            }
            StoreWrite::PutKeys(k) => {
                s.keys.insert(k.address.clone(), k);
            }
            StoreWrite::PutHeld(h) => {
                s.held.insert((h.message_id.clone(), h.to.clone()), h);
            }
            StoreWrite::RemoveHeld { message_id, to } => {
                s.held.remove(&(message_id, to));
            }
            StoreWrite::PutDownload(d) => {
                s.downloads.insert(d.attachment.id, *d);
            }
            StoreWrite::PutChunk {
                attachment,
                index,
                data,
            } => {
                s.chunks.insert((attachment, index), data);
            }
            StoreWrite::PutChunkList { attachment, hashes } => {
                s.chunk_lists.insert(attachment, hashes);
            }
            StoreWrite::DeleteMail {
                deleted,
                attachments,
            } => {
                if deleted.received {
                    s.inbox.remove(&deleted.message_id);
                }
                if deleted.sent {
                    s.outgoing.remove(&deleted.message_id);
                }
                for id in attachments {
                    s.downloads.remove(&id);
                    s.chunk_lists.remove(&id);
                    s.chunks.retain(|(a, _), _| *a != id);
                }
                s.deleted.insert(deleted.message_id.clone(), deleted);
            }
        }
    }
    /// A stored chunk, synchronously.
    pub fn chunk(&self, attachment: AttachmentId, index: u32) -> Option<Vec<u8>> {
        self.inner
            .borrow()
            .chunks
            .get(&(attachment, index))
            .cloned()
    }
    /// A stored chunk list, synchronously.
    pub fn chunk_list(&self, attachment: AttachmentId) -> Option<Vec<Hash>> {
        self.inner.borrow().chunk_lists.get(&attachment).cloned()
    }
    /// Number of chunks stored for `attachment`.
    pub fn chunk_count(&self, attachment: AttachmentId) -> usize {
        self.inner
            .borrow()
            .chunks
            .range((attachment, 0)..=(attachment, u32::MAX))
            .count()
    }
    /// Loses one stored chunk (tests: storage that went missing).
    pub fn lose_chunk(&self, attachment: AttachmentId, index: u32) {
        self.inner.borrow_mut().chunks.remove(&(attachment, index));
    }
    /// The snapshot, synchronously.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.inner.borrow();
        Snapshot {
            inbox: s.inbox.values().cloned().collect(),
            outgoing: s.outgoing.values().cloned().collect(),
            contacts: s.contacts.keys().cloned().collect(),
            keys: s.keys.values().cloned().collect(),
            held: s.held.values().cloned().collect(),
            downloads: s.downloads.values().cloned().collect(),
            groups: s.groups.values().cloned().collect(),
            deleted: s.deleted.values().cloned().collect(),
        }
    }
}

impl MailStore for MemoryStore {
    async fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let s = self.inner.borrow();
        match &s.identity_json {
            None => Ok(None),
            Some(j) => serde_json::from_str(j)
                .map(Some)
                .map_err(|e| StoreError(e.to_string())),
        }
    }
    async fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        let mut s = self.inner.borrow_mut();
        s.identity_json =
            Some(serde_json::to_string(identity).map_err(|e| StoreError(e.to_string()))?);
        Ok(())
    }
    async fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot())
    }
    async fn apply(&self, write: StoreWrite) -> Result<(), StoreError> {
        self.apply_now(write);
        Ok(())
    }
    async fn read_chunk(
        &self,
        attachment: AttachmentId,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.chunk(attachment, index))
    }
    async fn read_chunk_list(
        &self,
        attachment: AttachmentId,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        Ok(self.chunk_list(attachment))
    }
}

/// The conformance checks, as plain async functions over a fresh, empty store.
pub mod conformance {
    use super::*;
    use crate::mail::Priority;

    fn addr(s: &str) -> Address {
        s.parse().expect("test address")
    }

    fn mail(n: u8) -> Mail {
        Mail {
            message_id: MessageId::new([n; 16], "h"),
            from: addr("alice@h"),
            to: vec![addr("bob@h")],
            cc: vec![addr("carol@h")],
            subject: format!("subject {n} ✓"),
            date: 1_000 + n as u64,
            body: format!("body {n}\nsecond line"),
            in_reply_to: None,
            references: vec![],
            priority: Priority::Normal,
            attachments: vec![],
        }
    }

    fn sorted(mut s: Snapshot) -> Snapshot {
        s.inbox
            .sort_by(|a, b| a.mail.message_id.cmp(&b.mail.message_id));
        s.outgoing
            .sort_by(|a, b| a.mail.message_id.cmp(&b.mail.message_id));
        s.contacts.sort();
        s.keys.sort_by(|a, b| a.address.cmp(&b.address));
        s.groups.sort_by_key(|g| g.key());
        s
    }

    pub async fn empty_store_is_empty(store: impl MailStore) {
        assert!(store.load_identity().await.unwrap().is_none());
        assert_eq!(store.load().await.unwrap(), Snapshot::default());
    }

    pub async fn identity_round_trips(store: impl MailStore) {
        let id = Identity::from_seed(addr("alice@h"), [3; 32]);
        store.save_identity(&id).await.unwrap();
        let back = store
            .load_identity()
            .await
            .unwrap()
            .expect("saved identity");
        assert_eq!(back.address, id.address);
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.sign(b"x"), id.sign(b"x"));
    }

    pub async fn inbox_upserts_by_message_id(store: impl MailStore) {
        let r1 = InboxRecord {
            mail: mail(1),
            received_at: 5,
            read: false,
            archived: false,
        };
        let r2 = InboxRecord {
            mail: mail(2),
            received_at: 6,
            read: false,
            archived: false,
        };
        store.apply(StoreWrite::PutInbox(r1.clone())).await.unwrap();
        store.apply(StoreWrite::PutInbox(r2.clone())).await.unwrap();
        store.apply(StoreWrite::PutInbox(r1.clone())).await.unwrap();
        // Read, and moved to the Archive: both kept.
        let read = InboxRecord {
            read: true,
            archived: true,
            ..r2.clone()
        };
        store
            .apply(StoreWrite::PutInbox(read.clone()))
            .await
            .unwrap();
        let snap = sorted(store.load().await.unwrap());
        let mut expect = vec![r1, read];
        expect.sort_by(|a, b| a.mail.message_id.cmp(&b.mail.message_id));
        assert_eq!(snap.inbox, expect);
    }

    pub async fn outgoing_upserts_with_states(store: impl MailStore) {
        let mut o = OutgoingMail {
            mail: mail(3),
            recipients: vec![
                RecipientStatus {
                    address: addr("bob@h"),
                    state: DeliveryState::Waiting,
                },
                RecipientStatus {
                    address: addr("carol@h"),
                    state: DeliveryState::Sending {
                        since: 9,
                        attempts: 1,
                    },
                },
            ],
            fetched: vec![(crate::attach::AttachmentId([1; 16]), addr("bob@h"))],
            relay_has: vec![],
            declined: vec![],
            cancelled: false,
        };
        store
            .apply(StoreWrite::PutOutgoing(Box::new(o.clone())))
            .await
            .unwrap();
        o.recipients[0].state = DeliveryState::Delivered { at: 10 };
        o.recipients[1].state = DeliveryState::Failed {
            at: 11,
            reason: "no such address".into(),
        };
        store
            .apply(StoreWrite::PutOutgoing(Box::new(o.clone())))
            .await
            .unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.outgoing, vec![o]);
        assert!(snap.inbox.is_empty());
    }

    pub async fn contacts_add_and_remove(store: impl MailStore) {
        for a in ["bob@h", "carol@h", "bob@h"] {
            store.apply(StoreWrite::PutContact(addr(a))).await.unwrap();
        }
        store
            .apply(StoreWrite::RemoveContact(addr("carol@h")))
            .await
            .unwrap();
        store
            .apply(StoreWrite::RemoveContact(addr("nobody@h")))
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap().contacts, vec![addr("bob@h")]);
    }

    pub async fn groups_upsert_and_remove_by_name(store: impl MailStore) {
        let group = |name: &str, members: &[&str]| {
            Group::new(name, members.iter().map(|m| addr(m)).collect()).expect("test group")
        };
        let team = group("team", &["bob@h", "carol@h"]);
        let club = group("Book club", &["dan@h"]);
        let old = group("old friends", &["eve@h"]);
        for g in [team.clone(), club.clone(), old.clone()] {
            store.apply(StoreWrite::PutGroup(g)).await.unwrap();
        }
        // The same name in another case replaces the group (name and members).
        let team2 = group("Team", &["carol@h", "dan@h", "bob@h"]);
        store
            .apply(StoreWrite::PutGroup(team2.clone()))
            .await
            .unwrap();
        store
            .apply(StoreWrite::RemoveGroup("OLD  Friends".into()))
            .await
            .unwrap();
        // Removing what is not there is not an error.
        store
            .apply(StoreWrite::RemoveGroup("nobody".into()))
            .await
            .unwrap();
        let snap = store.load().await.unwrap();
        let mut groups = snap.groups.clone();
        groups.sort_by_key(|g| g.key());
        assert_eq!(groups, vec![club, team2]);
        assert!(snap.contacts.is_empty() && snap.inbox.is_empty());
    }

    pub async fn keys_upsert_by_address(store: impl MailStore) {
        let bob = Identity::from_seed(addr("bob@h"), [4; 32]);
        let carol = Identity::from_seed(addr("carol@h"), [5; 32]);
        let first = KnownKeys {
            address: bob.address.clone(),
            signing_key: bob.public_key(),
            encryption_key: None,
        };
        let later = KnownKeys {
            encryption_key: Some(bob.encryption_public_key()),
            ..first.clone()
        };
        let c = KnownKeys {
            address: carol.address.clone(),
            signing_key: carol.public_key(),
            encryption_key: Some(carol.encryption_public_key()),
        };
        for k in [first, c.clone(), later.clone()] {
            store.apply(StoreWrite::PutKeys(k)).await.unwrap();
        }
        let snap = sorted(store.load().await.unwrap());
        assert_eq!(snap.keys, vec![later, c]);
        assert!(snap.inbox.is_empty() && snap.outgoing.is_empty() && snap.contacts.is_empty());
    }

    pub async fn held_copies_upsert_and_remove(store: impl MailStore) {
        let copy = |n: u8, to: &str| HeldMail {
            message_id: MessageId::new([n; 16], "h"),
            to: addr(to),
            from: addr("alice@h"),
            sealed: vec![n; 100 + n as usize],
            held_at: 1_000 + n as u64,
        };
        // The same mail for two recipients is two copies; a repeated put replaces.
        let (a, b, c) = (copy(1, "bob@h"), copy(1, "dan@h"), copy(2, "bob@h"));
        for h in [a.clone(), b.clone(), c.clone(), a.clone()] {
            store.apply(StoreWrite::PutHeld(h)).await.unwrap();
        }
        let mut held = store.load().await.unwrap().held;
        held.sort_by(|x, y| (&x.message_id, &x.to).cmp(&(&y.message_id, &y.to)));
        assert_eq!(held, vec![a.clone(), b.clone(), c.clone()]);
        store
            .apply(StoreWrite::RemoveHeld {
                message_id: a.message_id.clone(),
                to: a.to.clone(),
            })
            .await
            .unwrap();
        // Removing what is not there is not an error.
        store
            .apply(StoreWrite::RemoveHeld {
                message_id: MessageId::new([9; 16], "h"),
                to: addr("bob@h"),
            })
            .await
            .unwrap();
        let mut held = store.load().await.unwrap().held;
        held.sort_by(|x, y| (&x.message_id, &x.to).cmp(&(&y.message_id, &y.to)));
        assert_eq!(held, vec![b, c]);
    }

    pub async fn downloads_upsert_by_attachment(store: impl MailStore) {
        let att = |n: u8| AttachmentRef {
            id: AttachmentId([n; 16]),
            name: format!("file {n}.bin"),
            mime: "application/octet-stream".into(),
            size: 3 * crate::attach::CHUNK_BYTES as u64 + 7,
            key: [n; 32],
            chunks_root: [n + 1; 32],
            file_hash: [n + 2; 32],
            inline: n % 2 == 0,
            file_hash_alg: if n % 2 == 0 {
                crate::attach::FileHashAlg::Blake3
            } else {
                crate::attach::FileHashAlg::Sha256
            },
        };
        let record = |n: u8| DownloadRecord {
            message_id: MessageId::new([n; 16], "h"),
            from: addr("alice@h"),
            attachment: att(n),
            progress: Download::new(&att(n)),
            state: DownloadState::Fetching,
            sender_knows: false,
        };
        let (a, b) = (record(1), record(2));
        store
            .apply(StoreWrite::PutDownload(Box::new(a.clone())))
            .await
            .unwrap();
        store
            .apply(StoreWrite::PutDownload(Box::new(b.clone())))
            .await
            .unwrap();
        let failed = DownloadRecord {
            state: DownloadState::Failed {
                at: 9,
                reason: "the file does not match".into(),
            },
            ..a.clone()
        };
        store
            .apply(StoreWrite::PutDownload(Box::new(failed.clone())))
            .await
            .unwrap();
        let mut got = store.load().await.unwrap().downloads;
        got.sort_by_key(|d| d.attachment.id);
        assert_eq!(got, vec![failed, b]);
    }

    pub async fn chunks_and_chunk_lists_round_trip(store: impl MailStore) {
        let (a, b) = (AttachmentId([1; 16]), AttachmentId([2; 16]));
        for (att, index, len) in [(a, 0u32, 61_456usize), (a, 1, 17), (b, 0, 5), (a, 1, 18)] {
            store
                .apply(StoreWrite::PutChunk {
                    attachment: att,
                    index,
                    data: vec![index as u8 + att.0[0]; len],
                })
                .await
                .unwrap();
        }
        assert_eq!(store.read_chunk(a, 0).await.unwrap(), Some(vec![1; 61_456]));
        assert_eq!(store.read_chunk(a, 1).await.unwrap(), Some(vec![2; 18]));
        assert_eq!(store.read_chunk(b, 0).await.unwrap(), Some(vec![2; 5]));
        assert_eq!(store.read_chunk(b, 1).await.unwrap(), None);
        assert_eq!(store.read_chunk_list(a).await.unwrap(), None);
        let hashes = vec![[7u8; 32], [8; 32], [9; 32]];
        store
            .apply(StoreWrite::PutChunkList {
                attachment: a,
                hashes: hashes.clone(),
            })
            .await
            .unwrap();
        assert_eq!(store.read_chunk_list(a).await.unwrap(), Some(hashes));
        // Chunks are not part of the snapshot.
        assert_eq!(store.load().await.unwrap(), Snapshot::default());
    }

    pub async fn deleting_a_mail_removes_it_and_its_files(store: impl MailStore) {
        let (a, b) = (AttachmentId([1; 16]), AttachmentId([2; 16]));
        let att = |id: AttachmentId| AttachmentRef {
            id,
            name: "f.bin".into(),
            mime: "application/octet-stream".into(),
            size: 40 * crate::attach::CHUNK_BYTES as u64,
            key: [3; 32],
            chunks_root: [4; 32],
            file_hash: [5; 32],
            inline: false,
            file_hash_alg: crate::attach::FileHashAlg::Sha256,
        };
        let (one, two) = (mail(1), mail(2));
        let download = |m: &Mail, id| DownloadRecord {
            message_id: m.message_id.clone(),
            from: addr("alice@h"),
            attachment: att(id),
            progress: Download::new(&att(id)),
            state: DownloadState::Fetching,
            sender_knows: false,
        };
        let sent = OutgoingMail {
            mail: mail(3),
            recipients: vec![],
            fetched: vec![],
            relay_has: vec![],
            declined: vec![],
            cancelled: false,
        };
        let mut writes = vec![
            StoreWrite::PutInbox(InboxRecord {
                mail: one.clone(),
                received_at: 5,
                read: false,
                archived: false,
            }),
            StoreWrite::PutInbox(InboxRecord {
                mail: two.clone(),
                received_at: 6,
                read: true,
                archived: true,
            }),
            StoreWrite::PutOutgoing(Box::new(sent.clone())),
            StoreWrite::PutDownload(Box::new(download(&one, a))),
            StoreWrite::PutDownload(Box::new(download(&two, b))),
            StoreWrite::PutChunkList {
                attachment: a,
                hashes: vec![[1; 32]],
            },
            StoreWrite::PutChunkList {
                attachment: b,
                hashes: vec![[2; 32]],
            },
        ];
        // Chunks in more than one of a store's groups of chunks (see the web client's
        // segments), and the other file's.
        for index in [0u32, 1, 16, 33] {
            writes.push(StoreWrite::PutChunk {
                attachment: a,
                index,
                data: vec![9; 10],
            });
        }
        writes.push(StoreWrite::PutChunk {
            attachment: b,
            index: 0,
            data: vec![8; 10],
        });
        for w in writes {
            store.apply(w).await.unwrap();
        }
        let received = DeletedMail {
            message_id: one.message_id.clone(),
            received: true,
            sent: false,
            at: 7,
            untold: Some(Box::new(UntoldFiles {
                sender: sent.mail.from.clone(),
                fetched: vec![b],
                not_fetched: vec![a],
            })),
            on_node: vec![a],
        };
        for _ in 0..2 {
            // Deleting twice leaves the same state as once.
            store
                .apply(StoreWrite::DeleteMail {
                    deleted: received.clone(),
                    attachments: vec![a],
                })
                .await
                .unwrap();
            let snap = store.load().await.unwrap();
            let inbox: Vec<_> = snap.inbox.iter().map(|r| &r.mail.message_id).collect();
            assert_eq!(inbox, vec![&two.message_id]);
            assert_eq!(snap.outgoing, vec![sent.clone()]);
            assert_eq!(snap.downloads, vec![download(&two, b)]);
            assert_eq!(snap.deleted, vec![received.clone()]);
            for index in [0u32, 1, 16, 33] {
                assert_eq!(store.read_chunk(a, index).await.unwrap(), None);
            }
            assert_eq!(store.read_chunk_list(a).await.unwrap(), None);
            assert_eq!(store.read_chunk(b, 0).await.unwrap(), Some(vec![8; 10]));
            assert_eq!(store.read_chunk_list(b).await.unwrap(), Some(vec![[2; 32]]));
        }
        // A sent mail; and the same Message-ID deleted from both folders replaces its record.
        let gone = DeletedMail {
            message_id: sent.mail.message_id.clone(),
            received: false,
            sent: true,
            at: 8,
            untold: None,
            on_node: vec![],
        };
        let both = DeletedMail {
            sent: true,
            at: 9,
            ..received.clone()
        };
        // The sender heard what became of the files: the record is written again without.
        let told = DeletedMail {
            untold: None,
            on_node: vec![],
            ..both.clone()
        };
        for deleted in [gone.clone(), both, told.clone()] {
            store
                .apply(StoreWrite::DeleteMail {
                    deleted,
                    attachments: vec![],
                })
                .await
                .unwrap();
        }
        let mut snap = store.load().await.unwrap();
        assert!(snap.outgoing.is_empty());
        assert_eq!(snap.inbox.len(), 1);
        snap.deleted.sort_by(|x, y| x.message_id.cmp(&y.message_id));
        let mut want = vec![told, gone];
        want.sort_by(|x, y| x.message_id.cmp(&y.message_id));
        assert_eq!(snap.deleted, want);
        assert_eq!(store.read_chunk(b, 0).await.unwrap(), Some(vec![8; 10]));
    }
}

/// Generates one test per conformance check.
///
/// `$attr` is the test attribute (`tokio::test`, `wasm_bindgen_test`), `$make` an async
/// expression yielding a fresh, empty store each time it is evaluated.
#[macro_export]
macro_rules! store_conformance_tests {
    ($attr:meta, $make:expr) => {
        #[$attr]
        async fn conformance_empty_store_is_empty() {
            $crate::store::conformance::empty_store_is_empty($make.await).await
        }
        #[$attr]
        async fn conformance_identity_round_trips() {
            $crate::store::conformance::identity_round_trips($make.await).await
        }
        #[$attr]
        async fn conformance_inbox_upserts_by_message_id() {
            $crate::store::conformance::inbox_upserts_by_message_id($make.await).await
        }
        #[$attr]
        async fn conformance_outgoing_upserts_with_states() {
            $crate::store::conformance::outgoing_upserts_with_states($make.await).await
        }
        #[$attr]
        async fn conformance_contacts_add_and_remove() {
            $crate::store::conformance::contacts_add_and_remove($make.await).await
        }
        #[$attr]
        async fn conformance_groups_upsert_and_remove_by_name() {
            $crate::store::conformance::groups_upsert_and_remove_by_name($make.await).await
        }
        #[$attr]
        async fn conformance_keys_upsert_by_address() {
            $crate::store::conformance::keys_upsert_by_address($make.await).await
        }
        #[$attr]
        async fn conformance_held_copies_upsert_and_remove() {
            $crate::store::conformance::held_copies_upsert_and_remove($make.await).await
        }
        #[$attr]
        async fn conformance_downloads_upsert_by_attachment() {
            $crate::store::conformance::downloads_upsert_by_attachment($make.await).await
        }
        #[$attr]
        async fn conformance_chunks_and_chunk_lists_round_trip() {
            $crate::store::conformance::chunks_and_chunk_lists_round_trip($make.await).await
        }
        #[$attr]
        async fn conformance_deleting_a_mail_removes_it_and_its_files() {
            $crate::store::conformance::deleting_a_mail_removes_it_and_its_files($make.await).await
        }
    };
}

#[cfg(test)]
mod tests {
    async fn fresh() -> super::MemoryStore {
        super::MemoryStore::new()
    }
    crate::store_conformance_tests!(tokio::test, fresh());

    /// Inbox records stored before there was an Archive (stores keep them as JSON) have no
    /// `archived` field: they read as in the Inbox.
    #[test]
    fn inbox_records_from_before_the_archive_read_as_not_archived() {
        use super::InboxRecord;
        use crate::mail::{Mail, MessageId, Priority};
        let record = InboxRecord {
            mail: Mail {
                message_id: MessageId::new([7; 16], "h"),
                from: "alice@h".parse().unwrap(),
                to: vec!["bob@h".parse().unwrap()],
                cc: vec![],
                subject: "kept from before".into(),
                date: 1,
                body: String::new(),
                in_reply_to: None,
                references: vec![],
                priority: Priority::Normal,
                attachments: vec![],
            },
            received_at: 2,
            read: true,
            archived: true,
        };
        let mut old = serde_json::to_value(&record).unwrap();
        assert_eq!(
            old.as_object_mut().unwrap().remove("archived"),
            Some(serde_json::Value::Bool(true))
        );
        let back: InboxRecord = serde_json::from_value(old).unwrap();
        assert_eq!(
            back,
            InboxRecord {
                archived: false,
                ..record
            }
        );
    }
}
