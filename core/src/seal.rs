//! Sealed envelopes: a mail encrypted for one recipient and signed by its sender.
//!
//! A mail to three people is sealed three times, once per recipient. Whoever carries a
//! sealed envelope (the relay's cache, a co-recipient's node) can read only its clear
//! [`EnvelopeHeader`] — which mail, from whom, for whom — and nothing of the mail itself.
//!
//! # Construction (standard parts only)
//!
//! - Encryption: HPKE, RFC 9180, base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//!   ChaCha20-Poly1305, single shot, to the recipient's X25519 key
//!   ([`Identity::encryption_public_key`]). `info` = [`HPKE_INFO`]; `aad` = the encoded
//!   header, so a ciphertext cannot be moved under another header. Plaintext = `postcard`
//!   of the [`Mail`].
//! - Signature: Ed25519 by the sender's account key ([`Identity::public_key`]) over
//!   [`SIGNATURE_DOMAIN`] followed by every byte of the envelope before the signature
//!   (header, encapsulated key, ciphertext). [`open`] verifies (strictly) before it decrypts.
//! - After decryption the inner mail must agree with the header: same `message_id`, same
//!   `from`, and the header's `to` among the mail's recipients; else [`SealError::Mismatch`].
//!
//! # Layout
//!
//! `postcard` of the header and three byte strings, in this order:
//!
//! ```text
//! version: u8 (= SEAL_VERSION, one raw byte)   ┐
//! message_id: string                           │ header (clear; the AEAD's aad)
//! from: string                                 │
//! to: string                                   ┘
//! encapsulated_key: bytes (32, X25519 ephemeral public key)
//! ciphertext: bytes (postcard(Mail) + 16-byte Poly1305 tag)
//! signature: bytes (64, Ed25519)
//! ```
//!
//! Strings and byte strings are a varint length followed by the bytes. Only the canonical
//! encoding is accepted (decoding then re-encoding must give the same bytes), so an envelope
//! has exactly one byte form. A sealed envelope is at most [`MAX_SEALED`] bytes, so its
//! base64 fits a 64 KiB signaling frame and it fits one peer frame.
//!
//! # Randomness
//!
//! `core` reads no OS randomness: [`seal`] takes 32 random bytes that seed a ChaCha20 RNG,
//! from which HPKE draws its ephemeral key. They MUST come fresh from a CSPRNG for every
//! call: sealing two different mails for the same recipient with the same `random` reuses
//! the AEAD key and nonce.

use hpke::rand_core::SeedableRng;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::identity::{EncryptionKey, Identity, PublicKey, SealKem};
use crate::mail::{Mail, MessageId};

/// The first byte of every sealed envelope.
pub const SEAL_VERSION: u8 = 1;
/// Largest sealed envelope, in bytes (46 KiB). Its base64 (62,808 characters) leaves room
/// for the rest of a 64 KiB signaling frame that carries it; 48 KiB would not (its base64
/// alone is exactly 64 KiB). The same limit as `wire::signal::MAX_SEALED_BYTES`.
pub const MAX_SEALED: usize = 46 * 1024;
/// HPKE `info`: binds every key schedule to this format.
pub const HPKE_INFO: &[u8] = b"peermail sealed mail v1";
/// Prefix of the bytes the sender signs, so the signature means nothing in other protocols.
pub const SIGNATURE_DOMAIN: &[u8] = b"peermail-seal-signature-v1\n";

type SealAead = hpke::aead::ChaCha20Poly1305;
type SealKdf = hpke::kdf::HkdfSha256;

/// Length of the encapsulated key (an X25519 public key).
const ENC_LEN: usize = 32;
/// Length of an Ed25519 signature.
const SIG_LEN: usize = 64;

/// Why an envelope could not be sealed, read or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the envelope is not well-formed")]
    Malformed,
    #[error("unsupported sealed envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("the sender's signature does not verify")]
    BadSignature,
    #[error("the envelope cannot be decrypted with this key")]
    Decrypt,
    #[error("the sealed mail does not match its envelope")]
    Mismatch,
    #[error("the sealed envelope of {0} bytes exceeds the {MAX_SEALED}-byte limit")]
    TooLarge(usize),
    #[error("the recipient's encryption key is not usable")]
    BadRecipientKey,
}

/// The clear part of a sealed envelope: all a carrier (relay, co-recipient) may see.
///
/// Unauthenticated when read by [`peek`]: a carrier uses it to route and index; the
/// recipient trusts only what [`open`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    /// [`SEAL_VERSION`]; the first byte of the envelope.
    pub version: u8,
    pub message_id: MessageId,
    /// The sender, whose signing key [`open`] needs.
    pub from: Address,
    /// The one recipient this copy is sealed for.
    pub to: Address,
}

/// The whole envelope as it is encoded.
#[derive(Serialize, Deserialize)]
struct Envelope {
    header: EnvelopeHeader,
    encapsulated_key: Vec<u8>,
    ciphertext: Vec<u8>,
    signature: Vec<u8>,
}

/// Seals `mail` for `recipient`, whose encryption key is `recipient_key`, signed by `sender`.
///
/// `random` must be fresh CSPRNG output for each call (see the module docs). Fails with
/// [`SealError::Mismatch`] unless `mail.from` is the sender and `recipient` is among the
/// mail's recipients, [`SealError::TooLarge`] if the result would exceed [`MAX_SEALED`],
/// [`SealError::BadRecipientKey`] for a key HPKE refuses (small order).
pub fn seal(
    mail: &Mail,
    sender: &Identity,
    recipient: &Address,
    recipient_key: &EncryptionKey,
    random: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    if mail.from != sender.address || !mail.recipients().contains(recipient) {
        return Err(SealError::Mismatch);
    }
    let header = EnvelopeHeader {
        version: SEAL_VERSION,
        message_id: mail.message_id.clone(),
        from: mail.from.clone(),
        to: recipient.clone(),
    };
    seal_with_header(mail, header, sender, recipient_key, random)
}

/// [`seal`] without the consistency checks between `mail` and `header` (tests forge with it).
fn seal_with_header(
    mail: &Mail,
    header: EnvelopeHeader,
    sender: &Identity,
    recipient_key: &EncryptionKey,
    random: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    let plaintext = postcard::to_allocvec(mail).map_err(|_| SealError::Malformed)?;
    if plaintext.len() > MAX_SEALED {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let pk = recipient_key
        .hpke_key()
        .map_err(|_| SealError::BadRecipientKey)?;
    let aad = postcard::to_allocvec(&header).map_err(|_| SealError::Malformed)?;
    let mut rng = chacha20::ChaCha20Rng::from_seed(random);
    let (encapped, ciphertext) = hpke::single_shot_seal_with_rng::<SealAead, SealKdf, SealKem>(
        &OpModeS::Base,
        &pk,
        HPKE_INFO,
        &plaintext,
        &aad,
        &mut rng,
    )
    .map_err(|e| match e {
        hpke::HpkeError::EncapError => SealError::BadRecipientKey,
        _ => SealError::Malformed,
    })?;
    let mut envelope = Envelope {
        header,
        encapsulated_key: encapped.to_bytes().to_vec(),
        ciphertext,
        signature: Vec::new(),
    };
    envelope.signature = sender.sign_bytes(&signed_bytes(&envelope)?).to_vec();
    let out = postcard::to_allocvec(&envelope).map_err(|_| SealError::Malformed)?;
    if out.len() > MAX_SEALED {
        return Err(SealError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Reads the clear header without any key. Checks size, version and the whole envelope's
/// form, but not the signature: the result is what the envelope claims.
pub fn peek(bytes: &[u8]) -> Result<EnvelopeHeader, SealError> {
    decode(bytes).map(|e| e.header)
}

/// Verifies, decrypts and checks an envelope sealed for `me`.
///
/// `sender_signing_key` is the signing key of the claimed sender, [`peek`]`(bytes)?.from`,
/// as the caller knows it (contacts, the relay's directory). Order: size, form and version;
/// the signature ([`SealError::BadSignature`]); the header's `to` is `me`
/// ([`SealError::Mismatch`]); decryption ([`SealError::Decrypt`]); the inner mail agrees
/// with the header ([`SealError::Mismatch`]).
pub fn open(
    bytes: &[u8],
    me: &Identity,
    sender_signing_key: &PublicKey,
) -> Result<Mail, SealError> {
    let envelope = decode(bytes)?;
    let signature: &[u8; SIG_LEN] = envelope
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Malformed)?;
    sender_signing_key
        .verify_bytes(&signed_bytes(&envelope)?, signature)
        .map_err(|_| SealError::BadSignature)?;
    let header = &envelope.header;
    if header.to != me.address {
        return Err(SealError::Mismatch);
    }
    let encapped = <SealKem as hpke::Kem>::EncappedKey::from_bytes(&envelope.encapsulated_key)
        .map_err(|_| SealError::Malformed)?;
    let aad = postcard::to_allocvec(header).map_err(|_| SealError::Malformed)?;
    let plaintext = hpke::single_shot_open::<SealAead, SealKdf, SealKem>(
        &OpModeR::Base,
        &me.encryption_secret(),
        &encapped,
        HPKE_INFO,
        &envelope.ciphertext,
        &aad,
    )
    .map_err(|_| SealError::Decrypt)?;
    let mail = Mail::from_postcard(&plaintext).map_err(|_| SealError::Malformed)?;
    if mail.message_id != header.message_id
        || mail.from != header.from
        || !mail.recipients().contains(&header.to)
    {
        return Err(SealError::Mismatch);
    }
    Ok(mail)
}

/// The bytes the sender signs: the domain, then the envelope's encoding up to the signature.
fn signed_bytes(envelope: &Envelope) -> Result<Vec<u8>, SealError> {
    let mut out = SIGNATURE_DOMAIN.to_vec();
    let body = postcard::to_allocvec(&(
        &envelope.header,
        &envelope.encapsulated_key,
        &envelope.ciphertext,
    ))
    .map_err(|_| SealError::Malformed)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses an envelope: size, version, canonical form, fixed field lengths.
fn decode(bytes: &[u8]) -> Result<Envelope, SealError> {
    if bytes.len() > MAX_SEALED {
        return Err(SealError::TooLarge(bytes.len()));
    }
    match bytes.first() {
        None => return Err(SealError::Malformed),
        Some(&SEAL_VERSION) => {}
        Some(&other) => return Err(SealError::UnsupportedVersion(other)),
    }
    let envelope: Envelope = postcard::from_bytes(bytes).map_err(|_| SealError::Malformed)?;
    if envelope.encapsulated_key.len() != ENC_LEN || envelope.signature.len() != SIG_LEN {
        return Err(SealError::Malformed);
    }
    // One byte form per envelope: no trailing bytes, no alternative encodings.
    if postcard::to_allocvec(&envelope).map_err(|_| SealError::Malformed)? != bytes {
        return Err(SealError::Malformed);
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Priority;
    use proptest::prelude::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn id(name: &str, seed: u8) -> Identity {
        Identity::from_seed(addr(&format!("{name}@relay.test")), [seed; 32])
    }

    const SUBJECT: &str = "Quarterly secret: the owl flies at midnight";
    const BODY: &str = "Dear Bob, the combination is 4-8-15-16-23-42. Burn after reading.";

    fn mail_from(alice: &Identity, to: &[&Identity]) -> Mail {
        Mail {
            message_id: MessageId::new([9; 16], "relay.test"),
            from: alice.address.clone(),
            to: to.iter().map(|i| i.address.clone()).collect(),
            cc: vec![],
            subject: SUBJECT.into(),
            date: 1_700_000_000_000,
            body: BODY.into(),
            in_reply_to: None,
            references: vec![],
            priority: Priority::High,
            attachments: vec![],
        }
    }

    struct World {
        alice: Identity,
        bob: Identity,
        carol: Identity,
        mail: Mail,
        sealed: Vec<u8>,
    }

    fn world() -> World {
        let alice = id("alice", 1);
        let bob = id("bob", 2);
        let carol = id("carol", 3);
        let mail = mail_from(&alice, &[&bob, &carol]);
        let sealed = seal(
            &mail,
            &alice,
            &bob.address,
            &bob.encryption_public_key(),
            [7; 32],
        )
        .unwrap();
        World {
            alice,
            bob,
            carol,
            mail,
            sealed,
        }
    }

    fn decoded(bytes: &[u8]) -> Envelope {
        postcard::from_bytes(bytes).unwrap()
    }

    fn encode(e: &Envelope) -> Vec<u8> {
        postcard::to_allocvec(e).unwrap()
    }

    /// Re-signs a modified envelope with `signer`, as a sender (or anyone with its key) could.
    fn resign(mut e: Envelope, signer: &Identity) -> Vec<u8> {
        e.signature = signer.sign_bytes(&signed_bytes(&e).unwrap()).to_vec();
        encode(&e)
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_for_each_recipient() {
        let w = world();
        assert_eq!(w.sealed[0], SEAL_VERSION);
        assert!(w.sealed.len() <= MAX_SEALED);
        assert_eq!(
            peek(&w.sealed),
            Ok(EnvelopeHeader {
                version: SEAL_VERSION,
                message_id: w.mail.message_id.clone(),
                from: w.alice.address.clone(),
                to: w.bob.address.clone(),
            })
        );
        assert_eq!(
            open(&w.sealed, &w.bob, &w.alice.public_key()),
            Ok(w.mail.clone())
        );
        let for_carol = seal(
            &w.mail,
            &w.alice,
            &w.carol.address,
            &w.carol.encryption_public_key(),
            [8; 32],
        )
        .unwrap();
        assert_eq!(peek(&for_carol).unwrap().to, w.carol.address);
        assert_eq!(
            open(&for_carol, &w.carol, &w.alice.public_key()),
            Ok(w.mail.clone())
        );
        // Bob's copy is of no use to Carol, and the other way round.
        assert_eq!(
            open(&w.sealed, &w.carol, &w.alice.public_key()),
            Err(SealError::Mismatch)
        );
        assert_eq!(
            open(&for_carol, &w.bob, &w.alice.public_key()),
            Err(SealError::Mismatch)
        );
        // Cc recipients are recipients too.
        let mut cc = w.mail.clone();
        cc.to = vec![w.carol.address.clone()];
        cc.cc = vec![w.bob.address.clone()];
        let sealed = seal(
            &cc,
            &w.alice,
            &w.bob.address,
            &w.bob.encryption_public_key(),
            [1; 32],
        )
        .unwrap();
        assert_eq!(open(&sealed, &w.bob, &w.alice.public_key()), Ok(cc));
    }

    #[test]
    fn seal_refuses_inconsistent_arguments() {
        let w = world();
        let dave = id("dave", 4);
        // Not a recipient of the mail.
        assert_eq!(
            seal(
                &w.mail,
                &w.alice,
                &dave.address,
                &dave.encryption_public_key(),
                [1; 32]
            ),
            Err(SealError::Mismatch)
        );
        // Sender is not the mail's author.
        assert_eq!(
            seal(
                &w.mail,
                &dave,
                &w.bob.address,
                &w.bob.encryption_public_key(),
                [1; 32]
            ),
            Err(SealError::Mismatch)
        );
        // A small-order X25519 key (the identity point) is refused by HPKE.
        let zero = EncryptionKey::from_bytes([0; 32]);
        assert_eq!(
            seal(&w.mail, &w.alice, &w.bob.address, &zero, [1; 32]),
            Err(SealError::BadRecipientKey)
        );
    }

    #[test]
    fn tampering_with_any_part_is_detected() {
        let w = world();
        let alice_pk = w.alice.public_key();
        let open_bob = |bytes: &[u8]| open(bytes, &w.bob, &alice_pk);

        // Header fields, with the original signature.
        let mut e = decoded(&w.sealed);
        e.header.message_id = MessageId::new([1; 16], "relay.test");
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        let mut e = decoded(&w.sealed);
        e.header.from = w.carol.address.clone();
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        let mut e = decoded(&w.sealed);
        e.header.to = w.carol.address.clone();
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        // Encapsulated key.
        let mut e = decoded(&w.sealed);
        e.encapsulated_key[5] ^= 1;
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        // One ciphertext byte.
        let mut e = decoded(&w.sealed);
        e.ciphertext[20] ^= 0x80;
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        // One signature byte.
        let mut e = decoded(&w.sealed);
        e.signature[0] ^= 1;
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));
        let mut e = decoded(&w.sealed);
        e.signature[63] ^= 0x40;
        assert_eq!(open_bob(&encode(&e)), Err(SealError::BadSignature));

        // The header is also bound by HPKE's aad: re-signing a changed header (as the sender
        // could) still does not decrypt.
        let mut e = decoded(&w.sealed);
        e.header.message_id = MessageId::new([1; 16], "relay.test");
        assert_eq!(open_bob(&resign(e, &w.alice)), Err(SealError::Decrypt));
        // A changed ciphertext or encapsulated key, re-signed, does not decrypt either.
        let mut e = decoded(&w.sealed);
        e.ciphertext[20] ^= 0x80;
        assert_eq!(open_bob(&resign(e, &w.alice)), Err(SealError::Decrypt));
        let mut e = decoded(&w.sealed);
        e.encapsulated_key[5] ^= 1;
        assert_eq!(open_bob(&resign(e, &w.alice)), Err(SealError::Decrypt));

        // Version byte, truncation, trailing bytes, non-canonical lengths.
        let mut v = w.sealed.clone();
        v[0] = 2;
        assert_eq!(open_bob(&v), Err(SealError::UnsupportedVersion(2)));
        assert_eq!(peek(&v), Err(SealError::UnsupportedVersion(2)));
        assert_eq!(open_bob(&[]), Err(SealError::Malformed));
        assert_eq!(
            open_bob(&w.sealed[..w.sealed.len() - 1]),
            Err(SealError::Malformed)
        );
        let mut trailing = w.sealed.clone();
        trailing.push(0);
        assert_eq!(open_bob(&trailing), Err(SealError::Malformed));
        assert_eq!(peek(&trailing), Err(SealError::Malformed));
        let mut e = decoded(&w.sealed);
        e.encapsulated_key.push(0);
        assert_eq!(open_bob(&encode(&e)), Err(SealError::Malformed));
        let mut e = decoded(&w.sealed);
        e.signature.pop();
        assert_eq!(peek(&encode(&e)), Err(SealError::Malformed));
    }

    #[test]
    fn non_canonical_encoding_is_refused() {
        let w = world();
        // The message_id's length (< 128) is one varint byte right after the version; the same
        // number as a two-byte varint decodes to the same envelope but is not its byte form.
        let len = w.sealed[1];
        assert!(len < 0x80);
        let mut v = vec![SEAL_VERSION, len | 0x80, 0];
        v.extend_from_slice(&w.sealed[2..]);
        assert_eq!(peek(&v), Err(SealError::Malformed));
        assert_eq!(
            open(&v, &w.bob, &w.alice.public_key()),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn wrong_keys() {
        let w = world();
        // Bob's address but another encryption key (a reinstalled account, an impostor).
        let other_bob = Identity::from_seed(w.bob.address.clone(), [99; 32]);
        assert_eq!(
            open(&w.sealed, &other_bob, &w.alice.public_key()),
            Err(SealError::Decrypt)
        );
        // Sealed to a key that is not Bob's.
        let sealed = seal(
            &w.mail,
            &w.alice,
            &w.bob.address,
            &other_bob.encryption_public_key(),
            [1; 32],
        )
        .unwrap();
        assert_eq!(
            open(&sealed, &w.bob, &w.alice.public_key()),
            Err(SealError::Decrypt)
        );
        // Verified against someone else's signing key.
        assert_eq!(
            open(&w.sealed, &w.bob, &w.carol.public_key()),
            Err(SealError::BadSignature)
        );
        // Signed by Carol, claiming to be from Alice.
        let forged = resign(decoded(&w.sealed), &w.carol);
        assert_eq!(
            open(&forged, &w.bob, &w.alice.public_key()),
            Err(SealError::BadSignature)
        );
    }

    #[test]
    fn inner_mail_must_match_the_header() {
        let w = world();
        let bob_key = w.bob.encryption_public_key();
        let header = peek(&w.sealed).unwrap();
        let forge = |mail: &Mail| {
            seal_with_header(mail, header.clone(), &w.alice, &bob_key, [3; 32]).unwrap()
        };
        let open_bob = |bytes: &[u8]| open(bytes, &w.bob, &w.alice.public_key());
        // Addressed to Carol only, but the header names Bob.
        let mut to_carol = w.mail.clone();
        to_carol.to = vec![w.carol.address.clone()];
        assert_eq!(open_bob(&forge(&to_carol)), Err(SealError::Mismatch));
        // Another Message-ID inside.
        let mut other_id = w.mail.clone();
        other_id.message_id = MessageId::new([5; 16], "relay.test");
        assert_eq!(open_bob(&forge(&other_id)), Err(SealError::Mismatch));
        // Another author inside.
        let mut other_from = w.mail.clone();
        other_from.from = w.carol.address.clone();
        assert_eq!(open_bob(&forge(&other_from)), Err(SealError::Mismatch));
        // Control: the consistent forgery path opens.
        assert_eq!(open_bob(&forge(&w.mail)), Ok(w.mail.clone()));
    }

    #[test]
    fn subject_and_body_are_not_in_the_sealed_bytes() {
        let w = world();
        for secret in [SUBJECT, BODY, "owl flies", "4-8-15-16-23-42"] {
            assert!(!contains(&w.sealed, secret.as_bytes()), "{secret:?} leaked");
        }
        // The plaintext encoding would contain them (the test looks in the right way).
        let plaintext = postcard::to_allocvec(&w.mail).unwrap();
        assert!(contains(&plaintext, SUBJECT.as_bytes()));
        assert!(contains(&plaintext, BODY.as_bytes()));
    }

    #[test]
    fn size_limit() {
        let w = world();
        let seal_body = |len: usize| {
            let mut m = w.mail.clone();
            m.body = "x".repeat(len);
            seal(
                &m,
                &w.alice,
                &w.bob.address,
                &w.bob.encryption_public_key(),
                [1; 32],
            )
        };
        let big = seal_body(MAX_SEALED - 1024).unwrap();
        assert!(big.len() <= MAX_SEALED);
        assert!(open(&big, &w.bob, &w.alice.public_key()).is_ok());
        assert!(matches!(
            seal_body(MAX_SEALED - 100),
            Err(SealError::TooLarge(_))
        ));
        assert!(matches!(
            seal_body(MAX_SEALED + 1),
            Err(SealError::TooLarge(_))
        ));
        assert!(matches!(seal_body(1 << 20), Err(SealError::TooLarge(_))));
        let huge = vec![SEAL_VERSION; MAX_SEALED + 1];
        assert_eq!(peek(&huge), Err(SealError::TooLarge(MAX_SEALED + 1)));
        assert_eq!(
            open(&huge, &w.bob, &w.alice.public_key()),
            Err(SealError::TooLarge(MAX_SEALED + 1))
        );
        // The largest envelope, base64-encoded, leaves 2 KiB of a 64 KiB frame for the rest.
        assert!(MAX_SEALED.div_ceil(3) * 4 + 2048 <= 64 * 1024);
    }

    #[test]
    fn randomness_is_an_input() {
        let w = world();
        let bob_key = w.bob.encryption_public_key();
        let a = seal(&w.mail, &w.alice, &w.bob.address, &bob_key, [1; 32]).unwrap();
        let b = seal(&w.mail, &w.alice, &w.bob.address, &bob_key, [2; 32]).unwrap();
        assert_ne!(a, b);
        assert_ne!(decoded(&a).encapsulated_key, decoded(&b).encapsulated_key);
        assert_ne!(decoded(&a).ciphertext, decoded(&b).ciphertext);
        for s in [&a, &b] {
            assert_eq!(open(s, &w.bob, &w.alice.public_key()), Ok(w.mail.clone()));
        }
        // Same inputs, same bytes: sealing is a pure function.
        assert_eq!(
            seal(&w.mail, &w.alice, &w.bob.address, &bob_key, [1; 32]).unwrap(),
            a
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       versioned in any::<bool>()) {
            let w = world_cached();
            let mut bytes = bytes;
            if versioned && !bytes.is_empty() {
                bytes[0] = SEAL_VERSION;
            }
            let _ = peek(&bytes);
            prop_assert!(open(&bytes, &w.bob, &w.alice.public_key()).is_err());
        }

        #[test]
        fn any_single_change_to_an_envelope_fails(index in any::<prop::sample::Index>(),
                                                  flip in 1u8..=255) {
            let w = world_cached();
            let mut bytes = w.sealed.clone();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            let _ = peek(&bytes);
            prop_assert!(open(&bytes, &w.bob, &w.alice.public_key()).is_err());
        }

        #[test]
        fn truncations_and_extensions_fail(cut in any::<prop::sample::Index>(),
                                           extra in proptest::collection::vec(any::<u8>(), 0..64)) {
            let w = world_cached();
            let mut bytes = w.sealed[..cut.index(w.sealed.len())].to_vec();
            bytes.extend_from_slice(&extra);
            let _ = peek(&bytes);
            prop_assert!(open(&bytes, &w.bob, &w.alice.public_key()).is_err());
        }
    }

    fn world_cached() -> &'static World {
        static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
        W.get_or_init(world)
    }
}
