//! The store-and-forward cache: sealed envelopes waiting for offline recipients, and the
//! receipts their senders have not yet acknowledged.
//!
//! Envelopes are opaque bytes (sealed end to end for the recipient); the cache never looks
//! inside. The relay implements [`MailCache`] over SQLite; [`MemoryCache`] keeps everything in
//! memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use peermail_core::address::Address;
use peermail_core::mail::{MessageId, Millis};
use peermail_core::wire::signal::{MailLocation, ReceiptOutcome, WaitingMail};

use crate::Error;

/// An envelope to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    pub recipient: Address,
    pub message_id: MessageId,
    /// The authenticated account that deposited it.
    pub sender: Address,
    pub sealed: Vec<u8>,
    pub deposited_at: Millis,
    /// The sweep deletes it (and records an expired receipt) from this instant on.
    pub expires_at: Millis,
}

/// What [`MailCache::deposit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// Stored (and committed).
    Stored,
    /// `(recipient, message_id)` was already in the cache from the same sender; nothing
    /// changed.
    AlreadyStored,
    /// `(recipient, message_id)` is in the cache from another sender; nothing changed (a
    /// co-recipient cannot pre-empt a Message-ID).
    Conflict,
    /// Storing it would take the recipient over its quota; nothing was stored.
    QuotaExceeded,
}

/// A stored envelope, as fetched by its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedMail {
    pub sender: Address,
    pub sealed: Vec<u8>,
}

/// A receipt waiting to be acknowledged by `sender`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub sender: Address,
    pub recipient: Address,
    pub message_id: MessageId,
    pub outcome: ReceiptOutcome,
}

/// The answer of an asynchronous [`MailCache`] call.
pub type CacheFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Where cached envelopes and receipts are kept.
///
/// The plain methods define what each operation does; they block (the relay's
/// implementation writes to disk). Sessions use the `*_async` forms, which by default run
/// the plain method on tokio's blocking pool; an implementation that has its own way of
/// waiting (the relay's hands operations to a writer thread) overrides them.
///
/// Every method that answers a recipient's request is keyed by the recipient, so a session
/// can only see or touch mail that waits for its own account.
pub trait MailCache: Send + Sync + 'static {
    /// Stores `mail` unless `(recipient, message_id)` is already there, or the recipient's
    /// envelopes would then exceed `quota_bytes`. Returns only once the envelope is durable.
    fn deposit(&self, mail: NewMail, quota_bytes: u64) -> Result<Deposit, Error>;
    /// Everything waiting for `recipient`, oldest first.
    fn waiting(&self, recipient: &Address) -> Result<Vec<WaitingMail>, Error>;
    /// The envelope `message_id` if it waits for `recipient`.
    fn fetch(
        &self,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<Option<CachedMail>, Error>;
    /// Deletes the envelope `message_id` waiting for `recipient` and, in the same transaction,
    /// records a delivered receipt for its sender. Returns the sender, or `None` if no such
    /// envelope waits for `recipient`.
    fn release(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        now: Millis,
    ) -> Result<Option<Address>, Error>;
    /// Receipts waiting for `sender`'s acknowledgement.
    fn receipts(&self, sender: &Address) -> Result<Vec<Receipt>, Error>;
    /// Forgets the receipt of `sender` about `(recipient, message_id)`, if any.
    fn ack_receipt(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<(), Error>;
    /// Deletes every envelope whose expiry is at or before `now` and records an expired
    /// receipt for each; returns those receipts.
    fn expire(&self, now: Millis) -> Result<Vec<Receipt>, Error>;

    /// [`MailCache::deposit`], awaited.
    fn deposit_async(self: Arc<Self>, mail: NewMail, quota_bytes: u64) -> CacheFuture<Deposit> {
        on_blocking_pool(self, move |c| c.deposit(mail, quota_bytes))
    }
    /// [`MailCache::waiting`], awaited.
    fn waiting_async(self: Arc<Self>, recipient: Address) -> CacheFuture<Vec<WaitingMail>> {
        on_blocking_pool(self, move |c| c.waiting(&recipient))
    }
    /// [`MailCache::fetch`], awaited.
    fn fetch_async(
        self: Arc<Self>,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<Option<CachedMail>> {
        on_blocking_pool(self, move |c| c.fetch(&recipient, &message_id))
    }
    /// [`MailCache::release`], awaited.
    fn release_async(
        self: Arc<Self>,
        recipient: Address,
        message_id: MessageId,
        now: Millis,
    ) -> CacheFuture<Option<Address>> {
        on_blocking_pool(self, move |c| c.release(&recipient, &message_id, now))
    }
    /// [`MailCache::receipts`], awaited.
    fn receipts_async(self: Arc<Self>, sender: Address) -> CacheFuture<Vec<Receipt>> {
        on_blocking_pool(self, move |c| c.receipts(&sender))
    }
    /// [`MailCache::ack_receipt`], awaited.
    fn ack_receipt_async(
        self: Arc<Self>,
        sender: Address,
        recipient: Address,
        message_id: MessageId,
    ) -> CacheFuture<()> {
        on_blocking_pool(self, move |c| {
            c.ack_receipt(&sender, &recipient, &message_id)
        })
    }
}

/// Runs `f` on `cache` on tokio's blocking pool.
fn on_blocking_pool<C: MailCache + ?Sized, T: Send + 'static>(
    cache: Arc<C>,
    f: impl FnOnce(&C) -> Result<T, Error> + Send + 'static,
) -> CacheFuture<T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&cache))
            .await
            .map_err(|e| Error::Cache(format!("the cache task failed: {e}")))?
    })
}

/// A stored envelope in [`MemoryCache`].
#[derive(Debug, Clone)]
struct Stored {
    sender: Address,
    sealed: Vec<u8>,
    deposited_at: Millis,
    expires_at: Millis,
}

#[derive(Debug, Default)]
struct State {
    /// (recipient, message id) → envelope.
    mail: BTreeMap<(Address, MessageId), Stored>,
    /// (sender, recipient, message id) → outcome.
    receipts: BTreeMap<(Address, Address, MessageId), ReceiptOutcome>,
}

/// The cache in memory, lost when the process ends. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryCache {
    state: Mutex<State>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MailCache for MemoryCache {
    fn deposit(&self, mail: NewMail, quota_bytes: u64) -> Result<Deposit, Error> {
        let mut state = self.state();
        let key = (mail.recipient, mail.message_id);
        if let Some(old) = state.mail.get(&key) {
            return Ok(if old.sender == mail.sender {
                Deposit::AlreadyStored
            } else {
                Deposit::Conflict
            });
        }
        let used: u64 = state
            .mail
            .iter()
            .filter(|((r, _), _)| *r == key.0)
            .map(|(_, m)| m.sealed.len() as u64)
            .sum();
        if used + mail.sealed.len() as u64 > quota_bytes {
            return Ok(Deposit::QuotaExceeded);
        }
        state.mail.insert(
            key,
            Stored {
                sender: mail.sender,
                sealed: mail.sealed,
                deposited_at: mail.deposited_at,
                expires_at: mail.expires_at,
            },
        );
        Ok(Deposit::Stored)
    }

    fn waiting(&self, recipient: &Address) -> Result<Vec<WaitingMail>, Error> {
        let state = self.state();
        let mut items: Vec<WaitingMail> = state
            .mail
            .iter()
            .filter(|((r, _), _)| r == recipient)
            .map(|((_, id), m)| WaitingMail {
                message_id: id.clone(),
                from: m.sender.clone(),
                size: m.sealed.len() as u64,
                deposited_at: m.deposited_at,
                location: MailLocation::Relay,
            })
            .collect();
        items.sort_by_key(|w| w.deposited_at);
        Ok(items)
    }

    fn fetch(
        &self,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<Option<CachedMail>, Error> {
        Ok(self
            .state()
            .mail
            .get(&(recipient.clone(), message_id.clone()))
            .map(|m| CachedMail {
                sender: m.sender.clone(),
                sealed: m.sealed.clone(),
            }))
    }

    fn release(
        &self,
        recipient: &Address,
        message_id: &MessageId,
        _now: Millis,
    ) -> Result<Option<Address>, Error> {
        let mut state = self.state();
        let Some(m) = state.mail.remove(&(recipient.clone(), message_id.clone())) else {
            return Ok(None);
        };
        state.receipts.insert(
            (m.sender.clone(), recipient.clone(), message_id.clone()),
            ReceiptOutcome::Delivered,
        );
        Ok(Some(m.sender))
    }

    fn receipts(&self, sender: &Address) -> Result<Vec<Receipt>, Error> {
        Ok(self
            .state()
            .receipts
            .iter()
            .filter(|((s, _, _), _)| s == sender)
            .map(|((s, r, id), outcome)| Receipt {
                sender: s.clone(),
                recipient: r.clone(),
                message_id: id.clone(),
                outcome: *outcome,
            })
            .collect())
    }

    fn ack_receipt(
        &self,
        sender: &Address,
        recipient: &Address,
        message_id: &MessageId,
    ) -> Result<(), Error> {
        self.state()
            .receipts
            .remove(&(sender.clone(), recipient.clone(), message_id.clone()));
        Ok(())
    }

    fn expire(&self, now: Millis) -> Result<Vec<Receipt>, Error> {
        let mut state = self.state();
        let expired: Vec<(Address, MessageId)> = state
            .mail
            .iter()
            .filter(|(_, m)| m.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut receipts = Vec::with_capacity(expired.len());
        for key in expired {
            if let Some(m) = state.mail.remove(&key) {
                let (recipient, message_id) = key;
                state.receipts.insert(
                    (m.sender.clone(), recipient.clone(), message_id.clone()),
                    ReceiptOutcome::Expired,
                );
                receipts.push(Receipt {
                    sender: m.sender,
                    recipient,
                    message_id,
                    outcome: ReceiptOutcome::Expired,
                });
            }
        }
        Ok(receipts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn mail(to: &str, n: u8, len: usize, at: Millis) -> NewMail {
        NewMail {
            recipient: a(to),
            message_id: MessageId::new([n; 16], "h"),
            sender: a("alice@h"),
            sealed: vec![n; len],
            deposited_at: at,
            expires_at: at + 100,
        }
    }

    #[test]
    fn memory_cache_deposit_quota_release_and_expiry() {
        let c = MemoryCache::new();
        assert_eq!(
            c.deposit(mail("bob@h", 1, 6, 10), 10).unwrap(),
            Deposit::Stored
        );
        assert_eq!(
            c.deposit(mail("bob@h", 1, 6, 10), 10).unwrap(),
            Deposit::AlreadyStored
        );
        let other = NewMail {
            sender: a("carol@h"),
            ..mail("bob@h", 1, 6, 10)
        };
        assert_eq!(c.deposit(other, 10).unwrap(), Deposit::Conflict);
        assert_eq!(
            c.deposit(mail("bob@h", 2, 5, 20), 10).unwrap(),
            Deposit::QuotaExceeded
        );
        assert_eq!(
            c.deposit(mail("bob@h", 3, 4, 20), 10).unwrap(),
            Deposit::Stored
        );
        assert_eq!(
            c.deposit(mail("carol@h", 2, 5, 50), 10).unwrap(),
            Deposit::Stored
        );
        let waiting = c.waiting(&a("bob@h")).unwrap();
        assert_eq!(waiting.len(), 2);
        assert_eq!((waiting[0].size, waiting[1].size), (6, 4));

        let id1 = MessageId::new([1; 16], "h");
        assert_eq!(c.fetch(&a("carol@h"), &id1).unwrap(), None);
        assert_eq!(c.release(&a("carol@h"), &id1, 30).unwrap(), None);
        assert_eq!(
            c.fetch(&a("bob@h"), &id1).unwrap().unwrap().sealed,
            vec![1; 6]
        );
        assert_eq!(
            c.release(&a("bob@h"), &id1, 30).unwrap(),
            Some(a("alice@h"))
        );
        assert_eq!(c.fetch(&a("bob@h"), &id1).unwrap(), None);
        let receipts = c.receipts(&a("alice@h")).unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].outcome, ReceiptOutcome::Delivered);
        c.ack_receipt(&a("alice@h"), &a("bob@h"), &id1).unwrap();
        assert!(c.receipts(&a("alice@h")).unwrap().is_empty());

        // Bob's second mail expires at 120, Carol's at 150.
        assert!(c.expire(119).unwrap().is_empty());
        let expired = c.expire(120).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].recipient, a("bob@h"));
        assert_eq!(expired[0].outcome, ReceiptOutcome::Expired);
        assert!(c.waiting(&a("bob@h")).unwrap().is_empty());
        assert_eq!(c.receipts(&a("alice@h")).unwrap(), expired);
        assert_eq!(c.waiting(&a("carol@h")).unwrap().len(), 1);
    }
}
