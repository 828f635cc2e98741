//! Account keys and the signed-challenge authentication of signaling sessions.
//!
//! No passwords: the relay sends a random challenge, the client signs a domain-separated
//! message containing it with the account's Ed25519 key. Key generation takes its seed as
//! an input (the driver reads the platform's CSPRNG), keeping `core` free of I/O.
//!
//! One 32-byte seed makes both of an account's key pairs:
//! - signing: Ed25519, the seed itself is the Ed25519 secret key ([`Identity::public_key`]);
//! - encryption: X25519 for HPKE ([`crate::seal`]). Its secret key is the 32-byte output of
//!   HKDF-SHA256 (RFC 5869; no salt, the seed as input keying material, `info` =
//!   [`ENCRYPTION_KEY_INFO`]), clamped by X25519 as RFC 7748 prescribes
//!   ([`Identity::encryption_public_key`]). Distinct `info` keeps the two keys independent.
//!
//! The encryption key is derived, not stored, so identities saved before it existed (the
//! stored form is `{address, signing_seed}`) have it too, and both keys move together.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable};
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
    #[error("the encryption key is not valid hex-encoded X25519")]
    BadEncryptionKey,
}

/// The HKDF `info` that derives the X25519 encryption secret from the account seed.
pub const ENCRYPTION_KEY_INFO: &[u8] = b"peermail x25519 encryption key v1";

/// The HPKE KEM of sealed envelopes: DHKEM(X25519, HKDF-SHA256).
pub(crate) type SealKem = hpke::kem::X25519HkdfSha256;

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
    /// Verifies a raw 64-byte signature over `message` (strict Ed25519: canonical `S`, no
    /// small-order key or `R`).
    pub(crate) fn verify_bytes(
        &self,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), KeyError> {
        self.verifying_key()?
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| KeyError::BadSignature)
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

/// A public encryption key (X25519, for HPKE), 32 bytes hex-encoded on the wire.
///
/// Any 32 bytes are an X25519 public key; a key of small order is refused when sealing
/// ([`crate::seal::SealError::BadRecipientKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EncryptionKey(String);

impl EncryptionKey {
    /// Accepts 64 hex digits (either case; kept lower-case).
    pub fn parse(hex_str: &str) -> Result<Self, KeyError> {
        let k = EncryptionKey(hex_str.to_ascii_lowercase());
        k.to_bytes()?;
        Ok(k)
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey(hex::encode(bytes))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn to_bytes(&self) -> Result<[u8; 32], KeyError> {
        hex::decode(&self.0)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::BadEncryptionKey)
    }
    /// The key as HPKE takes it.
    pub(crate) fn hpke_key(&self) -> Result<<SealKem as hpke::Kem>::PublicKey, KeyError> {
        <SealKem as hpke::Kem>::PublicKey::from_bytes(&self.to_bytes()?)
            .map_err(|_| KeyError::BadEncryptionKey)
    }
}

impl TryFrom<String> for EncryptionKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        EncryptionKey::parse(&s)
    }
}

impl From<EncryptionKey> for String {
    fn from(k: EncryptionKey) -> String {
        k.0
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
    fn seed(&self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        // The seed was written by `from_seed`; a corrupt store yields a different (useless) key,
        // which the relay then refuses, rather than a panic.
        if let Ok(b) = hex::decode(&self.signing_seed) {
            if b.len() == 32 {
                seed.copy_from_slice(&b);
            }
        }
        seed
    }
    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.seed())
    }
    /// The X25519 secret key: HKDF-SHA256 of the seed with [`ENCRYPTION_KEY_INFO`].
    pub(crate) fn encryption_secret(&self) -> <SealKem as hpke::Kem>::PrivateKey {
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(None, &self.seed())
            .expand(ENCRYPTION_KEY_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        // Every 32-byte string is an X25519 secret key (clamped when used).
        <SealKem as hpke::Kem>::PrivateKey::from_bytes(&okm)
            .expect("any 32 bytes are an X25519 secret key")
    }
    /// The public half of the account's encryption key, published in the relay's directory.
    pub fn encryption_public_key(&self) -> EncryptionKey {
        let pk = SealKem::sk_to_pk(&self.encryption_secret());
        EncryptionKey(hex::encode(pk.to_bytes()))
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(hex::encode(self.signing_key().verifying_key().to_bytes()))
    }
    /// Hex-encoded Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.sign_bytes(message))
    }
    /// Raw Ed25519 signature over `message`.
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.signing_key().sign(message).to_bytes()
    }
}

/// The bytes signed to authenticate a session as `address` for challenge `nonce`.
pub fn auth_message(nonce: &str, address: &Address) -> Vec<u8> {
    format!("peermail-auth-v1\n{nonce}\n{address}").into_bytes()
}

/// The bytes a storage node signs with its own key `key` to ask challenge `nonce`'s relay
/// for a pairing code. Once paired, it signs in as `owner+node@host` with
/// [`auth_message`] and the same key.
pub fn pairing_message(nonce: &str, key: &PublicKey) -> Vec<u8> {
    format!("peermail-pair-node-v1\n{nonce}\n{}", key.as_str()).into_bytes()
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

    #[test]
    fn signing_matches_rfc8032() {
        // RFC 8032 §7.1, TEST 1: existing accounts keep their keys and signatures.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let id = Identity::from_seed("a@h".parse().unwrap(), seed);
        assert_eq!(
            id.public_key().as_str(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        assert_eq!(id.sign(b""), sig);
        assert_eq!(id.public_key().verify(b"", sig), Ok(()));
    }

    #[test]
    fn encryption_key_is_derived_from_the_seed() {
        let a: Address = "alice@h".parse().unwrap();
        let id = Identity::from_seed(a.clone(), [1; 32]);
        let ek = id.encryption_public_key();
        // Fixed vector: the derivation is part of the account format and must never change.
        assert_eq!(ek.as_str(), EXPECTED_SEED1_ENCRYPTION_KEY);
        // Deterministic, independent of the address, different from the signing key.
        assert_eq!(
            Identity::from_seed("bob@h".parse().unwrap(), [1; 32]).encryption_public_key(),
            ek
        );
        assert_ne!(ek.as_str(), id.public_key().as_str());
        assert_ne!(
            Identity::from_seed(a.clone(), [2; 32]).encryption_public_key(),
            ek
        );
        // The stored form is unchanged: `{address, signing_seed}`, and it round-trips.
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"address": "alice@h", "signing_seed": hex::encode([1u8; 32])})
        );
        let back: Identity = serde_json::from_value(json).unwrap();
        assert_eq!(back.encryption_public_key(), ek);
    }

    /// X25519 public key for `HKDF-SHA256(ikm = [1; 32], info = ENCRYPTION_KEY_INFO)`, computed
    /// independently (Python hmac/hashlib + `cryptography`, i.e. OpenSSL).
    const EXPECTED_SEED1_ENCRYPTION_KEY: &str =
        "9485f2f33ec5da91e340e71dd18b801c43cf6df90a20de2da7d468f7178f6f66";

    #[test]
    fn encryption_key_parsing() {
        let ek = Identity::from_seed("a@h".parse().unwrap(), [3; 32]).encryption_public_key();
        assert_eq!(
            EncryptionKey::parse(&ek.as_str().to_uppercase()),
            Ok(ek.clone())
        );
        assert_eq!(EncryptionKey::from_bytes(ek.to_bytes().unwrap()), ek);
        for bad in ["", "abc", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            assert_eq!(EncryptionKey::parse(bad), Err(KeyError::BadEncryptionKey));
        }
        let json = serde_json::to_string(&ek).unwrap();
        assert_eq!(json, format!("\"{}\"", ek.as_str()));
        assert_eq!(serde_json::from_str::<EncryptionKey>(&json).unwrap(), ek);
        assert!(serde_json::from_str::<EncryptionKey>("\"00\"").is_err());
    }
}
