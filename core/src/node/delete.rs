//! Deleting mail: a received mail from the Inbox, a sent mail from Sent.
//!
//! Deletion is for good (the page asks first). The node writes one
//! [`StoreWrite::DeleteMail`]: the record goes, with the files of the mail this node keeps
//! (download records, encrypted chunks, chunk lists) unless another mail it keeps refers to
//! the same file (a mail sent to oneself is both received and sent), and a [`DeletedMail`]
//! stays behind so that a copy delivered again (the relay's listing, a co-recipient's held
//! copy, the sender retrying after a lost acknowledgement) is acknowledged, released and
//! not stored. A received mail's files still being fetched stop (the source is told), and
//! the relay is told to drop a copy it keeps for this account, and this person's storage
//! node to delete its copies (`PeerFrame::DropFiles`, asked from the deletion record,
//! `DeletedMail::on_node`, until the node answers `FilesDropped`). A sent mail is deleted
//! only once no recipient waits for it (the Outbox has no delete); recipients that have not
//! fetched its files yet are refused them from then on, with the reason.
//!
//! A recipient that deletes a mail tells its sender what became of the files the sender
//! has not heard about (`PeerFrame::MailDeleted`: fetched whole, or deleted unfetched),
//! from the deletion record ([`UntoldFiles`]) until the sender acknowledges it, over a
//! channel opened while the sender is online. The sender records them: files deleted
//! unfetched are no longer needed by that recipient, nor offered to its storage node.

use super::*;
use crate::store::{DownloadState, UntoldFiles};

/// The reason a recipient is given for a file of a mail its sender deleted.
pub const SENDER_DELETED: &str = "the sender deleted this mail; its files are no longer sent";
/// The reason a recipient's storage node is given for a file of a mail the recipient
/// deleted before fetching the file.
pub const RECIPIENT_DELETED: &str =
    "its recipient deleted this mail before fetching the file; it is no longer sent";

impl Node {
    /// True if the mail `id` is in the Inbox or was deleted from it: a copy delivered again
    /// is acknowledged without being stored.
    pub(super) fn has_received(&self, id: &MessageId) -> bool {
        self.inbox.contains_key(id) || self.deleted.get(id).is_some_and(|d| d.received)
    }

    /// Whether the sent mail `id` may be deleted now: `Err` with the reason, for people.
    pub fn may_delete_sent(&self, id: &MessageId) -> Result<(), String> {
        match self.outgoing.get(id) {
            None => Err("there is no such mail in Sent".into()),
            Some(o) if o.is_pending() => Err(
                "it is still on its way to some recipients; it can be deleted once they have it or it failed"
                    .into(),
            ),
            Some(_) => Ok(()),
        }
    }

    /// True if a mail this node keeps (received or sent) carries the file `a`.
    fn is_referenced(&self, a: AttachmentId) -> bool {
        self.inbox
            .values()
            .map(|r| &r.mail)
            .chain(self.outgoing.values().map(|o| &o.mail))
            .any(|m| m.attachments.iter().any(|x| x.id == a))
    }

    /// The files of `mail`, just taken out of its folder, that no mail this node keeps
    /// still carries (a mail sent to oneself is in both folders).
    fn files_only_in(&self, mail: &Mail) -> Vec<AttachmentId> {
        mail.attachments
            .iter()
            .map(|a| a.id)
            .filter(|a| !self.is_referenced(*a))
            .collect()
    }

    fn tombstone(&mut self, id: &MessageId, received: bool, sent: bool) -> DeletedMail {
        let d = self.deleted.entry(id.clone()).or_insert(DeletedMail {
            message_id: id.clone(),
            received: false,
            sent: false,
            at: self.now,
            untold: None,
            on_node: Vec::new(),
        });
        d.received |= received;
        d.sent |= sent;
        d.at = self.now;
        d.clone()
    }

    /// Deletes the received mail `id` (not there: nothing happens).
    pub(super) fn delete_received(&mut self, id: MessageId) {
        let Some(record) = self.inbox.remove(&id) else {
            return;
        };
        let untold = self.untold_files(&record.mail);
        let files = self.files_only_in(&record.mail);
        for a in &files {
            if let Some(d) = self.downloads.remove(a) {
                if d.record.state == DownloadState::Fetching {
                    let source = d.record.from.clone();
                    self.send_peer(&source, PeerFrame::CancelTransfer { attachment: *a });
                }
            }
            // A copy the relay keeps for this account is of no use any more.
            self.files_to_release.insert(*a);
        }
        self.tombstone(&id, true, false);
        let d = self.deleted.get_mut(&id).expect("just written");
        d.untold = untold.map(Box::new).or(d.untold.take());
        if self.own_node.is_some() {
            // The storage node may keep copies of the files: they go too.
            for a in &files {
                if !d.on_node.contains(a) {
                    d.on_node.push(*a);
                }
            }
        }
        let deleted = d.clone();
        self.store(StoreWrite::DeleteMail {
            deleted,
            attachments: files,
        });
        self.release_files();
        self.event(Event::InboxChanged);
        self.event(Event::Deleted(id));
        let sender = record.mail.from;
        if self.owes_sender(&sender) {
            self.subscribe([sender.clone()]);
            self.tell_sender(&sender);
        }
        if let Some(node) = self.own_node.clone() {
            self.tell_own_node(&node);
        }
    }

    /// Files of deleted mail this person's storage node is still to delete.
    pub(super) fn drops_pending(&self) -> bool {
        self.own_node.is_some() && self.deleted.values().any(|d| !d.on_node.is_empty())
    }

    /// Asks `peer`, if it is this person's storage node, to delete the files of deleted
    /// mail it may keep (over a channel opened for it while the node is online).
    pub(super) fn tell_own_node(&mut self, peer: &Address) {
        if self.own_node.as_ref() != Some(peer) || !self.drops_pending() || !self.ensure_link(peer)
        {
            return;
        }
        let ids: Vec<AttachmentId> = self
            .deleted
            .values()
            .flat_map(|d| d.on_node.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Well within a frame: 17 bytes an id.
        for page in ids.chunks(1_000) {
            let frame = PeerFrame::DropFiles {
                attachments: page.to_vec(),
            };
            self.send_peer(peer, frame);
        }
    }

    /// This person's storage node deleted `attachments` (`FilesDropped`): the deletion
    /// records asking for them are written again without them.
    pub(super) fn node_dropped(&mut self, peer: &Address, attachments: &[AttachmentId]) {
        if self.own_node.as_ref() != Some(peer) {
            return;
        }
        let mut changed = Vec::new();
        for d in self.deleted.values_mut() {
            let before = d.on_node.len();
            d.on_node.retain(|a| !attachments.contains(a));
            if d.on_node.len() != before {
                changed.push(d.clone());
            }
        }
        for deleted in changed {
            self.store(StoreWrite::DeleteMail {
                deleted,
                attachments: Vec::new(),
            });
        }
    }

    /// What the sender of the received `mail`, about to be deleted, has not heard of its
    /// files: those fetched whole without telling it yet, and those not fetched (it stops
    /// offering them). `None` when there is nothing to tell (or the mail is from oneself).
    fn untold_files(&self, mail: &Mail) -> Option<UntoldFiles> {
        if mail.from == self.identity.address {
            return None;
        }
        let (mut fetched, mut not_fetched) = (Vec::new(), Vec::new());
        for a in mail.attachments.iter().map(|a| a.id) {
            match self
                .downloads
                .get(&a)
                .map(|d| (&d.record.state, d.record.sender_knows))
            {
                Some((DownloadState::Complete { .. }, true)) => {}
                Some((DownloadState::Complete { .. }, false)) => fetched.push(a),
                _ => not_fetched.push(a),
            }
        }
        (!fetched.is_empty() || !not_fetched.is_empty()).then(|| UntoldFiles {
            sender: mail.from.clone(),
            fetched,
            not_fetched,
        })
    }

    /// Deleted mail from `peer` whose files' fate `peer` has not heard yet.
    pub(super) fn untold_sender<'a>(
        &'a self,
        peer: &'a Address,
    ) -> impl Iterator<Item = (&'a MessageId, &'a UntoldFiles)> + 'a {
        self.deleted.iter().filter_map(move |(id, d)| {
            d.untold
                .as_deref()
                .filter(|u| &u.sender == peer)
                .map(|u| (id, u))
        })
    }

    /// The sender `peer` recorded what this node told it of deleted mail `id`
    /// (`MailDeletedAck`): the deletion record is written again without it.
    pub(super) fn sender_heard(&mut self, peer: &Address, id: &MessageId) {
        let Some(d) = self.deleted.get_mut(id) else {
            return;
        };
        if d.untold.as_ref().is_some_and(|u| &u.sender == peer) {
            d.untold = None;
            let deleted = d.clone();
            self.store(StoreWrite::DeleteMail {
                deleted,
                attachments: Vec::new(),
            });
        }
    }

    /// A recipient, `peer`, deleted this node's sent mail `id` (`MailDeleted`): the files
    /// it had fetched are recorded as such, those it had not are no longer offered to it or
    /// its storage node (their requests are refused from then on). Acknowledged whatever
    /// this node still keeps of the mail, so that `peer` stops telling it.
    pub(super) fn recipient_deleted(
        &mut self,
        peer: Address,
        id: MessageId,
        fetched: Vec<AttachmentId>,
        not_fetched: Vec<AttachmentId>,
    ) {
        let mut stop = Vec::new();
        if let Some(o) = self.outgoing.get_mut(&id) {
            let carries = |a: &AttachmentId| o.mail.attachments.iter().any(|x| x.id == *a);
            if !peer.is_storage_node() && o.mail.recipients().contains(&peer) {
                let mut changed = false;
                for a in fetched.into_iter().filter(carries) {
                    let entry = (a, peer.clone());
                    if !o.fetched.contains(&entry) {
                        o.fetched.push(entry);
                        changed = true;
                    }
                }
                for a in not_fetched.into_iter().filter(carries) {
                    let entry = (a, peer.clone());
                    if !o.declined.contains(&entry) && !o.fetched.contains(&entry) {
                        o.declined.push(entry);
                        stop.push(a);
                        changed = true;
                    }
                }
                if changed {
                    self.persist_outgoing(&id);
                }
            }
        }
        let node = peer.storage_node();
        for a in stop {
            self.uploads
                .retain(|(u, to), _| !(*u == a && (*to == peer || *to == node)));
            for to in [peer.clone(), node.clone()] {
                self.emit(Output::StopServing {
                    peer: to,
                    attachment: Some(a),
                });
            }
        }
        self.send_peer(&peer, PeerFrame::MailDeletedAck { message_id: id });
    }

    /// Deletes the sent mail `id`, if [`may_delete_sent`](Self::may_delete_sent) allows it.
    pub(super) fn delete_sent(&mut self, id: MessageId) {
        if let Err(reason) = self.may_delete_sent(&id) {
            return self.event(Event::DeleteRefused {
                message_id: id,
                reason,
            });
        }
        let o = self
            .outgoing
            .remove(&id)
            .expect("checked by may_delete_sent");
        let files = self.files_only_in(&o.mail);
        for a in o.mail.attachments.iter().map(|a| a.id) {
            self.uploads.retain(|(u, _), _| *u != a);
            for r in o.mail.recipients() {
                for peer in [r.storage_node(), r] {
                    self.emit(Output::StopServing {
                        peer,
                        attachment: Some(a),
                    });
                }
            }
        }
        let deleted = self.tombstone(&id, false, true);
        self.store(StoreWrite::DeleteMail {
            deleted,
            attachments: files,
        });
        self.event(Event::OutgoingChanged(id.clone()));
        self.event(Event::Deleted(id));
    }

    /// At start: download records of deleted mail (a write that raced with the deletion)
    /// are dropped, and deleted again with their files.
    pub(super) fn drop_orphaned_downloads(&mut self) {
        let orphans: Vec<(MessageId, AttachmentId)> = self
            .downloads
            .values()
            .map(|d| (d.record.message_id.clone(), d.record.attachment.id))
            .filter(|(m, _)| !self.inbox.contains_key(m) && self.has_received(m))
            .collect();
        for (message_id, a) in orphans {
            self.downloads.remove(&a);
            if !self.is_referenced(a) {
                let deleted = self.deleted[&message_id].clone();
                self.store(StoreWrite::DeleteMail {
                    deleted,
                    attachments: vec![a],
                });
            }
        }
    }
}
