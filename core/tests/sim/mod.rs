//! An in-process world for driving several [`Node`]s: a model of the relay's signaling
//! (challenge auth, presence subscriptions), instant data channels between online nodes,
//! durable per-user stores, simulated time and injectable frame loss.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use peermail_core::identity::{auth_message, Identity};
use peermail_core::node::{Command, Config, Event, Input, Node, Output};
use peermail_core::store::{MemoryStore, OutgoingMail};
use peermail_core::wire::peer::PeerFrame;
use peermail_core::wire::signal::{ClientFrame, PresenceStatus, ServerFrame};
use peermail_core::{Address, Draft, MessageId, Millis};

pub const DOMAIN: &str = "relay.test";

pub fn addr(name: &str) -> Address {
    Address::new(name, DOMAIN).unwrap()
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

pub struct World {
    pub now: Millis,
    pub users: BTreeMap<Address, User>,
    /// Inputs waiting to be handled, in order.
    queue: VecDeque<(Address, Input)>,
    pub drop_rule: Option<DropRule>,
    pub dropped: u32,
    seed: u8,
    pub config: Config,
}

impl World {
    pub fn new() -> Self {
        World {
            now: 1_000_000,
            users: BTreeMap::new(),
            queue: VecDeque::new(),
            drop_rule: None,
            dropped: 0,
            seed: 0,
            config: Config::default(),
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
    }

    fn status_of(&self, a: &Address) -> PresenceStatus {
        match self.users.get(a) {
            None => PresenceStatus::Unknown,
            Some(u) if u.node.is_some() => PresenceStatus::Online,
            Some(_) => PresenceStatus::Offline,
        }
    }

    fn notify_presence(&mut self, who: &Address) {
        let status = self.status_of(who);
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
        u.node = Some(Node::new(u.identity.clone(), config, snapshot, now));
        u.subscriptions.clear();
        self.queue.push_back((a.clone(), Input::SignalingConnected));
        self.queue.push_back((
            a.clone(),
            Input::Server(ServerFrame::Challenge {
                nonce: format!("nonce-{now}"),
                domain: DOMAIN.into(),
            }),
        ));
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
            if let Some(pu) = self.users.get_mut(&p) {
                pu.links.remove(a);
            }
            self.queue
                .push_back((p, Input::PeerDisconnected(a.clone())));
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
        self.seed = self.seed.wrapping_add(1);
        let mut random = [self.seed; 16];
        random[0] = from.local().len() as u8;
        random[1] = (self.now % 251) as u8;
        let draft = Draft {
            to: to.iter().map(|a| (*a).clone()).collect(),
            cc: cc.iter().map(|a| (*a).clone()).collect(),
            subject: subject.into(),
            body: format!("body of {subject}"),
            ..Draft::default()
        };
        self.queue.push_back((
            from.clone(),
            Input::Command(Command::Send { draft, random }),
        ));
        self.settle();
        let u = &self.users[from];
        u.store
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
        while let Some((to, input)) = self.queue.pop_front() {
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
            Output::Connect(peer) => {
                if self.is_online(&peer) && self.is_online(from) {
                    self.users.get_mut(from).unwrap().links.insert(peer.clone());
                    self.users
                        .get_mut(&peer)
                        .unwrap()
                        .links
                        .insert(from.clone());
                    self.queue
                        .push_back((from.clone(), Input::PeerConnected(peer.clone())));
                    self.queue
                        .push_back((peer, Input::PeerConnected(from.clone())));
                } else {
                    self.queue
                        .push_back((from.clone(), Input::PeerDisconnected(peer)));
                }
            }
            Output::ToPeer { peer, bytes } => {
                let linked = self.users[from].links.contains(&peer);
                if !linked {
                    return;
                }
                let frame = PeerFrame::decode(&bytes).expect("nodes send valid frames");
                if let Some(rule) = self.drop_rule.as_mut() {
                    if rule(from, &peer, &frame) {
                        self.dropped += 1;
                        return;
                    }
                }
                self.queue.push_back((
                    peer,
                    Input::Frame {
                        peer: from.clone(),
                        bytes,
                    },
                ));
            }
            Output::Store { op, write } => {
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

    /// The relay model: checks auth signatures for real, answers subscriptions.
    fn relay(&mut self, from: &Address, frame: ClientFrame) {
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
            other => panic!("unexpected frame in the simulation: {other:?}"),
        }
    }

    /// Lets `ms` of simulated time pass, waking nodes at their timeouts.
    pub fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        loop {
            let next = self
                .users
                .values()
                .filter_map(|u| u.node.as_ref().and_then(|n| n.poll_timeout()))
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

    pub fn received_count(&self, who: &Address, id: &MessageId) -> u32 {
        self.users[who].received.get(id).copied().unwrap_or(0)
    }
}
