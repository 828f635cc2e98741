//! The account directory: which names exist at this relay and their public keys.

use std::collections::HashMap;
use std::sync::Mutex;

use peermail_core::identity::PublicKey;
use peermail_core::mail::Millis;

use crate::Error;

/// An account's storage node in the location registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageNode {
    /// The node's own signing key (it signs in as `name+node@host` with it).
    pub key: PublicKey,
    /// When it was paired, ms since the Unix epoch.
    pub paired_at: Millis,
    /// When it last signed in or sent a heartbeat, ms since the Unix epoch.
    pub last_seen: Option<Millis>,
}

/// Where accounts are kept. The relay implements it over SQLite; [`MemoryDirectory`] keeps
/// accounts in memory. Calls are short and synchronous (a primary-key lookup).
pub trait Directory: Send + Sync + 'static {
    /// Creates the account `name` (already validated and normalised) with `key`.
    /// Fails with [`Error::NameTaken`] if the name exists.
    fn register(&self, name: &str, key: &PublicKey) -> Result<(), Error>;
    /// The public key of account `name` (the local part of an address at this relay).
    fn lookup(&self, name: &str) -> Result<Option<PublicKey>, Error>;
    /// Whether account `name` exists (asked on every deposit; cheaper than [`lookup`]).
    ///
    /// [`lookup`]: Directory::lookup
    fn exists(&self, name: &str) -> Result<bool, Error> {
        Ok(self.lookup(name)?.is_some())
    }
    /// Sets the encryption key (X25519 public key, lower-case hex, already validated) of the
    /// existing account `name`, replacing any earlier one.
    fn publish_encryption_key(&self, name: &str, key: &str) -> Result<(), Error>;
    /// The encryption key account `name` published, if any.
    fn encryption_key(&self, name: &str) -> Result<Option<String>, Error>;
    /// Makes the node with `key` the storage node of the existing account `name`, replacing
    /// any earlier one; a key is the node of one account at most (another account's pairing
    /// with the same key is removed).
    fn pair_storage_node(&self, name: &str, key: &PublicKey, now: Millis) -> Result<(), Error>;
    /// Account `name` has no storage node any more; whether it had one.
    fn unpair_storage_node(&self, name: &str) -> Result<bool, Error>;
    /// The storage node of account `name`, if it has one.
    fn storage_node(&self, name: &str) -> Result<Option<StorageNode>, Error>;
    /// Account `name`'s storage node was heard from at `now`.
    fn storage_node_seen(&self, name: &str, now: Millis) -> Result<(), Error>;
}

/// Accounts in memory, lost when the process ends. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    /// name → public key.
    accounts: Mutex<HashMap<String, PublicKey>>,
    /// name → published encryption key.
    encryption_keys: Mutex<HashMap<String, String>>,
    /// name → its storage node.
    nodes: Mutex<HashMap<String, StorageNode>>,
}

impl MemoryDirectory {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Directory for MemoryDirectory {
    fn register(&self, name: &str, key: &PublicKey) -> Result<(), Error> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if accounts.contains_key(name) {
            return Err(Error::NameTaken(name.to_string()));
        }
        accounts.insert(name.to_string(), key.clone());
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<Option<PublicKey>, Error> {
        Ok(self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned())
    }

    fn publish_encryption_key(&self, name: &str, key: &str) -> Result<(), Error> {
        self.encryption_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), key.to_string());
        Ok(())
    }

    fn encryption_key(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .encryption_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned())
    }

    fn pair_storage_node(&self, name: &str, key: &PublicKey, now: Millis) -> Result<(), Error> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, n| n.key != *key);
        nodes.insert(
            name.to_string(),
            StorageNode {
                key: key.clone(),
                paired_at: now,
                last_seen: None,
            },
        );
        Ok(())
    }

    fn unpair_storage_node(&self, name: &str) -> Result<bool, Error> {
        Ok(self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some())
    }

    fn storage_node(&self, name: &str) -> Result<Option<StorageNode>, Error> {
        Ok(self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned())
    }

    fn storage_node_seen(&self, name: &str, now: Millis) -> Result<(), Error> {
        if let Some(n) = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            n.last_seen = Some(now);
        }
        Ok(())
    }
}
