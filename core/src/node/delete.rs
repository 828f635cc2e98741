//! Deleting mail: a received mail from the Inbox, a sent mail from Sent.
//!
//! Deletion is for good (the page asks first). The node writes one
//! [`StoreWrite::DeleteMail`]: the record goes, with the files of the mail this node keeps
//! (download records, encrypted chunks, chunk lists) unless another mail it keeps refers to
//! the same file (a mail sent to oneself is both received and sent), and a [`DeletedMail`]
//! stays behind so that a copy delivered again (the relay's listing, a co-recipient's held
//! copy, the sender retrying after a lost acknowledgement) is acknowledged, released and
//! not stored. A received mail's files still being fetched stop (the source is told), and
//! the relay is told to drop a copy it keeps for this account. A sent mail is deleted only
//! once no recipient waits for it (the Outbox has no delete); recipients that have not
//! fetched its files yet are refused them from then on, with the reason. A storage node's
//! copies of files are not deleted (a known limit: its owner cannot delete its files).

use super::*;
use crate::store::DownloadState;

/// The reason a recipient is given for a file of a mail its sender deleted.
pub const SENDER_DELETED: &str = "the sender deleted this mail; its files are no longer sent";

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
        let deleted = self.tombstone(&id, true, false);
        self.store(StoreWrite::DeleteMail {
            deleted,
            attachments: files,
        });
        self.release_files();
        self.event(Event::InboxChanged);
        self.event(Event::Deleted(id));
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
