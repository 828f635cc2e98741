//! The account directory: which names exist at this relay and their public keys.

use std::collections::HashMap;
use std::sync::Mutex;

use peermail_core::identity::PublicKey;

use crate::Error;

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
}

/// Accounts in memory, lost when the process ends. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    /// name → public key.
    accounts: Mutex<HashMap<String, PublicKey>>,
    /// name → published encryption key.
    encryption_keys: Mutex<HashMap<String, String>>,
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
}
