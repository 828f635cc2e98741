//! Attachments to recipients' storage nodes (the sender's side).
//!
//! For every recipient of this node's outgoing mail with attachments that recipient still
//! needs, the node asks the relay's location registry whether the recipient has a storage
//! node (`LocateNode`, once per signaling session). A recipient that has one: the node
//! watches the storage node's presence and, while it is online, opens a data channel to it
//! and tells it what to keep (`PeerFrame::StoreFile` per attachment); the storage node pulls
//! the file (this node serves it: a recipient's storage node may fetch like the recipient)
//! and answers `FileReceived`, recorded in the mail's `fetched` list, so the sender sees the
//! file kept for that recipient. A storage node that is offline is waited for (its presence
//! says when it is back); an attempt to reach it that fails is retried by
//! [`RetryPolicy`](crate::route::RetryPolicy) — backoff, then no more attempts after the
//! deadline. Meanwhile the other paths go on as before: the recipient pulls the file itself
//! when online, inline-size files go to the relay for an offline recipient, large ones stay
//! here (see [`crate::route`]).

use super::*;
use crate::attach::AttachmentRef;
use crate::route::RetryPolicy;

/// Attempts to reach one recipient's storage node.
#[derive(Debug, Clone)]
pub(super) struct NodePush {
    attempts: u32,
    first: Millis,
    /// No new attempt before then.
    next_at: Millis,
    /// A `Connect` is out and not answered.
    trying: bool,
    /// Past the policy's deadline: this node is no longer asked (this session).
    gave_up: bool,
}

impl Node {
    /// The storage node the registry gave for `person`, if any (learned this session).
    pub fn storage_node_of(&self, person: &Address) -> Option<&Address> {
        self.recipient_nodes.get(person)
    }

    /// What this node would still give `node` (a recipient's storage node) to keep: the
    /// attachments of outgoing mail to its owner that neither the owner nor the node has.
    fn files_for_node(&self, node: &Address) -> Vec<(MessageId, AttachmentRef)> {
        let owner = node.owner();
        let mut out = Vec::new();
        for o in self.outgoing.values() {
            let to_owner = o
                .recipients
                .iter()
                .any(|r| r.address == owner && !matches!(r.state, DeliveryState::Failed { .. }));
            if !to_owner {
                continue;
            }
            for att in &o.mail.attachments {
                let has = |who: &Address| o.fetched.iter().any(|(f, b)| *f == att.id && b == who);
                if has(&owner)
                    || has(node)
                    || o.declined_by(att.id, &owner)
                    || self.push_refused.contains(&(att.id, node.clone()))
                {
                    continue;
                }
                if self.sending_stopped(att.id, &owner) {
                    continue;
                }
                out.push((o.mail.message_id.clone(), att.clone()));
            }
        }
        out
    }

    /// Recipients whose storage node matters: some attachment of theirs is still needed.
    fn recipients_needing_files(&self) -> BTreeSet<Address> {
        let mut out = BTreeSet::new();
        for o in self.outgoing.values() {
            for att in &o.mail.attachments {
                for r in o.still_needed_by(att.id) {
                    out.insert(r.clone());
                }
            }
        }
        out.remove(&self.identity.address);
        out
    }

    /// Asks the registry about the storage nodes of recipients not asked this session, and
    /// hands new files to the nodes of those already known.
    pub(super) fn locate_recipient_nodes(&mut self) {
        if !self.authenticated {
            return;
        }
        let needing = self.recipients_needing_files();
        let (known, ask): (Vec<Address>, Vec<Address>) =
            needing.into_iter().partition(|r| self.located.contains(r));
        for address in ask {
            self.located.insert(address.clone());
            self.emit(Output::ToServer(ClientFrame::LocateNode { address }));
        }
        for person in known {
            if let Some(node) = self.recipient_nodes.get(&person).cloned() {
                self.subscribe([node.clone()]);
                self.push_to_node(&node);
            }
        }
    }

    /// The registry answered about `person`'s storage node.
    pub(super) fn recipient_node_located(&mut self, person: Address, node: Option<Address>) {
        match node {
            Some(node) => {
                self.recipient_nodes.insert(person, node.clone());
                if !self.files_for_node(&node).is_empty() {
                    self.subscribe([node.clone()]);
                    self.push_to_node(&node);
                }
            }
            None => {
                self.recipient_nodes.remove(&person);
            }
        }
    }

    /// The storage nodes this node waits for (their presence is watched).
    pub(super) fn nodes_to_push(&self) -> Vec<Address> {
        self.recipient_nodes
            .values()
            .filter(|n| !self.node_pushes.get(*n).is_some_and(|p| p.gave_up))
            .filter(|n| !self.files_for_node(n).is_empty())
            .cloned()
            .collect()
    }

    /// Moves pushes to `node` on: asks for a channel while it is online (by the retry
    /// policy), and over an open one sends `StoreFile` for each file not sent yet.
    pub(super) fn push_to_node(&mut self, node: &Address) {
        if !node.is_storage_node() || !self.recipient_nodes.values().any(|n| n == node) {
            return;
        }
        let files = self.files_for_node(node);
        if files.is_empty() {
            return;
        }
        let now = self.now;
        let push = self.node_pushes.entry(node.clone()).or_insert(NodePush {
            attempts: 0,
            first: now,
            next_at: now,
            trying: false,
            gave_up: false,
        });
        if push.gave_up {
            return;
        }
        let linked = self.links.get(node).is_some_and(|l| l.connected);
        if !linked {
            let online = self.presence.get(node) == Some(&PresenceStatus::Online);
            if online && !push.trying && push.next_at <= now {
                push.trying = true;
                push.attempts += 1;
                self.ensure_link(node);
            }
            return;
        }
        push.trying = false;
        push.attempts = 0;
        push.first = now;
        let owner = node.owner();
        for (message_id, att) in files {
            if !self.pushed.insert((att.id, node.clone())) {
                continue;
            }
            self.send_peer(
                node,
                PeerFrame::StoreFile {
                    owner: owner.clone(),
                    message_id,
                    attachment: att.id,
                    size: att.size,
                    chunks_root: att.chunks_root,
                },
            );
        }
    }

    /// The channel to `peer` closed or could not be opened.
    pub(super) fn push_link_down(&mut self, peer: &Address) {
        self.pushed.retain(|(_, n)| n != peer);
        let now = self.now;
        let policy: RetryPolicy = self.config.node_retry;
        if let Some(push) = self.node_pushes.get_mut(peer) {
            if push.trying {
                push.trying = false;
                match policy.next_attempt(push.attempts, push.first, now) {
                    Some(at) => push.next_at = at,
                    None => {
                        push.gave_up = true;
                        let reason = format!(
                            "{peer} could not be reached since {} ms; the files stay where \
                             they are",
                            now.saturating_sub(push.first)
                        );
                        self.event(Event::PeerProtocolError {
                            peer: peer.clone(),
                            reason,
                        });
                    }
                }
            }
        }
    }

    /// A storage node refused to keep `attachment` (not its owner's, full, …): it is not
    /// asked again for it this session.
    pub(super) fn push_refused(
        &mut self,
        node: &Address,
        attachment: AttachmentId,
        reason: String,
    ) {
        if self.push_refused.insert((attachment, node.clone())) {
            self.event(Event::FileNotKept {
                to: node.clone(),
                attachment,
                reason,
            });
        }
    }

    /// Retries that are due.
    pub(super) fn pushes_tick(&mut self) {
        let now = self.now;
        let due: Vec<Address> = self
            .node_pushes
            .iter()
            .filter(|(_, p)| !p.gave_up && !p.trying && p.next_at <= now && p.attempts > 0)
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            self.push_to_node(&node);
        }
    }

    /// When `pushes_tick` has work.
    pub(super) fn pushes_timeout(&self) -> Option<Millis> {
        self.node_pushes
            .iter()
            .filter(|(n, p)| {
                !p.gave_up
                    && !p.trying
                    && p.attempts > 0
                    && self.presence.get(*n) == Some(&PresenceStatus::Online)
            })
            .map(|(_, p)| p.next_at.max(self.now))
            .min()
    }
}
