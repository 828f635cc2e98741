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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::address::Address;
use crate::identity::{auth_message, Identity};
use crate::mail::{Draft, Mail, MessageId, Millis};
use crate::store::{
    DeliveryState, InboxRecord, OutgoingMail, RecipientStatus, Snapshot, StoreWrite,
};
use crate::wire::peer::{PeerFrame, MAX_PEER_FRAME};
use crate::wire::signal::{ClientFrame, ErrorCode, PresenceStatus, ServerFrame};

/// Timing policy. All durations in milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resend a mail on an open connection when no ack came within this time.
    pub ack_timeout: Millis,
    /// Give up on a connection attempt the driver has not answered after this time.
    pub connect_timeout: Millis,
    /// Wait this long before reconnecting to an online peer after a connection dropped.
    pub reconnect_backoff: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ack_timeout: 10_000,
            connect_timeout: 30_000,
            reconnect_backoff: 3_000,
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
    /// Result of an `Output::Store`.
    Stored {
        op: OpId,
        result: Result<(), String>,
    },
    /// Time passed; feed it at `poll_timeout()`.
    Tick,
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
    AddContact(Address),
    RemoveContact(Address),
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
    ContactsChanged,
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
}

/// A received mail waiting for its `Store` to complete before it is acknowledged.
#[derive(Debug)]
struct PendingInbox {
    record: InboxRecord,
    /// Peers to acknowledge once stored (a retry may arrive while the first store runs).
    ack_to: BTreeSet<Address>,
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
    presence: HashMap<Address, PresenceStatus>,
    /// Addresses we asked the relay about in this signaling session.
    subscribed: BTreeSet<Address>,
    authenticated: bool,
    links: HashMap<Address, PeerLink>,
    pending_inbox: HashMap<OpId, PendingInbox>,
    next_op: OpId,
    outputs: VecDeque<Output>,
}

impl Node {
    /// A node for `identity`, starting from what its store held.
    pub fn new(identity: Identity, config: Config, snapshot: Snapshot, now: Millis) -> Self {
        let mut outgoing = BTreeMap::new();
        for mut o in snapshot.outgoing {
            // Nothing is in flight after a restart.
            for r in &mut o.recipients {
                if matches!(r.state, DeliveryState::Sending { .. }) {
                    r.state = DeliveryState::Waiting;
                }
            }
            outgoing.insert(o.mail.message_id.clone(), o);
        }
        Node {
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
            presence: HashMap::new(),
            subscribed: BTreeSet::new(),
            authenticated: false,
            links: HashMap::new(),
            pending_inbox: HashMap::new(),
            next_op: 1,
            outputs: VecDeque::new(),
        }
    }

    pub fn address(&self) -> &Address {
        &self.identity.address
    }
    /// Received mails, newest first.
    pub fn inbox(&self) -> Vec<&InboxRecord> {
        let mut v: Vec<_> = self.inbox.values().collect();
        v.sort_by(|a, b| {
            b.received_at
                .cmp(&a.received_at)
                .then(a.mail.message_id.cmp(&b.mail.message_id))
        });
        v
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
    pub fn presence(&self, address: &Address) -> Option<PresenceStatus> {
        self.presence.get(address).copied()
    }
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
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
                if let DeliveryState::Sending { since, .. } = r.state {
                    consider(since + self.config.ack_timeout);
                }
            }
        }
        for (addr, link) in &self.links {
            if let Some(s) = link.connecting_since {
                consider(s + self.config.connect_timeout);
            } else if !link.connected
                && link.retry_after > self.now
                && self.presence.get(addr) == Some(&PresenceStatus::Online)
                && self.has_pending_for(addr)
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
            Input::SignalingConnected => {
                self.authenticated = false;
                self.subscribed.clear();
            }
            Input::SignalingDisconnected => {
                self.authenticated = false;
                self.subscribed.clear();
                self.presence.clear();
            }
            Input::Server(frame) => self.handle_server(frame),
            Input::PeerConnected(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.connected = true;
                link.connecting_since = None;
                self.flush(&peer);
            }
            Input::PeerDisconnected(peer) => {
                let link = self.links.entry(peer.clone()).or_default();
                link.connected = false;
                link.connecting_since = None;
                link.retry_after = self.now + self.config.reconnect_backoff;
                self.requeue(&peer);
            }
            Input::Frame { peer, bytes } => self.handle_frame(peer, &bytes),
            Input::Stored { op, result } => self.handle_stored(op, result),
            Input::Tick => self.handle_tick(),
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
            self.store(StoreWrite::PutOutgoing(o));
            self.event(Event::OutgoingChanged(id.clone()));
        }
    }

    fn handle_command(&mut self, c: Command) {
        match c {
            Command::Send { draft, random } => self.send(draft, random),
            Command::MarkRead(id) => {
                if let Some(r) = self.inbox.get_mut(&id) {
                    if !r.read {
                        r.read = true;
                        let r = r.clone();
                        self.store(StoreWrite::PutInbox(r));
                        self.event(Event::InboxChanged);
                    }
                }
            }
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
                }
            }
        }
    }

    fn send(&mut self, draft: Draft, random: [u8; 16]) {
        let me = self.identity.address.clone();
        let mail = Mail {
            message_id: MessageId::new(random, me.host()),
            from: me.clone(),
            to: draft.to,
            cc: draft.cc,
            subject: draft.subject,
            date: self.now,
            body: draft.body,
            in_reply_to: draft.in_reply_to.clone(),
            references: draft.in_reply_to.into_iter().collect(),
            priority: draft.priority,
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
        };
        // A copy to oneself is delivered on the spot.
        if let Some(r) = o.recipients.iter_mut().find(|r| r.address == me) {
            r.state = DeliveryState::Delivered { at: self.now };
            let rec = InboxRecord {
                mail: o.mail.clone(),
                received_at: self.now,
                read: false,
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
        s.remove(&self.identity.address);
        s
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
                self.event(Event::Authenticated);
                let all = self.interesting();
                self.subscribe(all);
            }
            ServerFrame::Presence { address, status } => {
                self.presence.insert(address.clone(), status);
                self.event(Event::Presence {
                    address: address.clone(),
                    status,
                });
                self.apply_presence_to(&address);
                self.try_deliver(&address);
            }
            ServerFrame::Error { code, message } => {
                self.event(Event::ServerError { code, message })
            }
            // The relay cache is not used by the node yet.
            ServerFrame::Signal { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::KeyPublished
            | ServerFrame::Keys { .. }
            | ServerFrame::Deposited { .. }
            | ServerFrame::Waiting { .. }
            | ServerFrame::Cached { .. }
            | ServerFrame::Released { .. }
            | ServerFrame::Receipt { .. } => {}
        }
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

    fn has_pending_for(&self, peer: &Address) -> bool {
        self.outgoing.values().any(|o| {
            o.recipients
                .iter()
                .any(|r| &r.address == peer && !r.state.is_final())
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
        let now = self.now;
        let online = self.presence.get(peer) == Some(&PresenceStatus::Online);
        let link = self.links.entry(peer.clone()).or_default();
        if link.connected {
            return self.flush(peer);
        }
        if online && link.connecting_since.is_none() && link.retry_after <= now {
            link.connecting_since = Some(now);
            self.emit(Output::Connect(peer.clone()));
        }
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
            if let Ok(bytes) = PeerFrame::Mail(mail).encode() {
                self.emit(Output::ToPeer {
                    peer: peer.clone(),
                    bytes,
                });
            }
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
        }
    }

    fn reject(&mut self, peer: Address, message_id: MessageId, reason: String) {
        self.event(Event::PeerProtocolError {
            peer: peer.clone(),
            reason: reason.clone(),
        });
        if let Ok(bytes) = (PeerFrame::Reject { message_id, reason }).encode() {
            self.emit(Output::ToPeer { peer, bytes });
        }
    }

    fn ack(&mut self, peer: Address, message_id: MessageId) {
        if let Ok(bytes) = (PeerFrame::Ack { message_id }).encode() {
            self.emit(Output::ToPeer { peer, bytes });
        }
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
        if self.inbox.contains_key(&id) {
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
        let record = InboxRecord {
            mail,
            received_at: self.now,
            read: false,
        };
        let op = self.store(StoreWrite::PutInbox(record.clone()));
        self.pending_inbox.insert(
            op,
            PendingInbox {
                record,
                ack_to: BTreeSet::from([peer]),
            },
        );
    }

    fn handle_stored(&mut self, op: OpId, result: Result<(), String>) {
        let pending = self.pending_inbox.remove(&op);
        match (pending, result) {
            (Some(p), Ok(())) => {
                let id = p.record.mail.message_id.clone();
                self.inbox.insert(id.clone(), p.record);
                for peer in p.ack_to {
                    self.ack(peer, id.clone());
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
        let Some(r) = o.recipients.iter_mut().find(|r| &r.address == peer) else {
            return;
        };
        if r.state.is_final() {
            return;
        }
        r.state = state;
        self.persist_outgoing(id);
    }
}
