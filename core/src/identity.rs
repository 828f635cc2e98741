//! Account keys and the signed-challenge authentication of signaling sessions.
//!
//! No passwords: the relay sends a random challenge, the client signs a domain-separated
//! message containing it with the account's Ed25519 key. Key generation takes its seed as
//! an input (the driver reads the platform's CSPRNG), keeping `core` free of I/O.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::address::Address;

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the public key is not valid hex-encoded Ed25519")]
    BadPublicKey,
    #[error("the signature is not valid hex-encoded Ed25519")]
    BadSignatureEncoding,
    #[error("the signature does not verify")]
    BadSignature,
}

/// A public signing key, hex-encoded on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(hex_str: &str) -> Result<Self, KeyError> {
        let k = PublicKey(hex_str.to_ascii_lowercase());
        k.verifying_key()?;
        Ok(k)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let bytes: [u8; 32] = hex::decode(&self.0)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::BadPublicKey)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey)
    }
    /// Verifies a hex-encoded signature over `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> Result<(), KeyError> {
        let key = self.verifying_key()?;
        let bytes: [u8; 64] = hex::decode(signature_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::BadSignatureEncoding)?;
        key.verify(message, &Signature::from_bytes(&bytes))
            .map_err(|_| KeyError::BadSignature)
    }
}

/// The account's secret keys, as kept in the browser's IndexedDB.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub address: Address,
    /// Ed25519 secret seed, hex. Never leaves the user's devices.
    signing_seed: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds the identity from a 32-byte random seed supplied by the driver.
    pub fn from_seed(address: Address, seed: [u8; 32]) -> Self {
        Identity {
            address,
            signing_seed: hex::encode(seed),
        }
    }
    fn signing_key(&self) -> SigningKey {
        let mut seed = [0u8; 32];
        // The seed was written by `from_seed`; a corrupt store yields a different (useless) key,
        // which the relay then refuses, rather than a panic.
        if let Ok(b) = hex::decode(&self.signing_seed) {
            if b.len() == 32 {
                seed.copy_from_slice(&b);
            }
        }
        SigningKey::from_bytes(&seed)
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(hex::encode(self.signing_key().verifying_key().to_bytes()))
    }
    /// Hex-encoded Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.signing_key().sign(message).to_bytes())
    }
}

/// The bytes signed to authenticate a session as `address` for challenge `nonce`.
pub fn auth_message(nonce: &str, address: &Address) -> Vec<u8> {
    format!("peermail-auth-v1\n{nonce}\n{address}").into_bytes()
}

/// The bytes signed to register `name` with public key `key` for challenge `nonce`.
pub fn register_message(nonce: &str, name: &str, key: &PublicKey) -> Vec<u8> {
    format!("peermail-register-v1\n{nonce}\n{name}\n{}", key.as_str()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let a: Address = "alice@h".parse().unwrap();
        let id = Identity::from_seed(a.clone(), [1; 32]);
        let pk = id.public_key();
        let msg = auth_message("n1", &a);
        let sig = id.sign(&msg);
        assert_eq!(pk.verify(&msg, &sig), Ok(()));
        assert_eq!(
            pk.verify(&auth_message("n2", &a), &sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(pk.verify(&msg, "zz"), Err(KeyError::BadSignatureEncoding));
        let other = Identity::from_seed(a, [2; 32]).public_key();
        assert_eq!(other.verify(&msg, &sig), Err(KeyError::BadSignature));
        assert_eq!(PublicKey::parse("abc"), Err(KeyError::BadPublicKey));
        assert_eq!(PublicKey::parse(pk.as_str()), Ok(pk));
    }
}
