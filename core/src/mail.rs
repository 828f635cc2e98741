//! Mails, Message-IDs and drafts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::attach::AttachmentRef;

/// Milliseconds since the Unix epoch. Time is an input to `core`; it never reads a clock.
pub type Millis = u64;

/// A mail's identity everywhere: `<uuid@host>`, RFC 5322 style.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A new Message-ID from 16 random bytes (supplied by the driver) and the sender's host.
    pub fn new(random: [u8; 16], host: &str) -> Self {
        let uuid = uuid::Builder::from_random_bytes(random).into_uuid();
        MessageId(format!("<{uuid}@{host}>"))
    }
    /// Accepts an existing id of the form `<left@right>`.
    pub fn parse(s: &str) -> Option<Self> {
        let inner = s.strip_prefix('<')?.strip_suffix('>')?;
        let (l, r) = inner.split_once('@')?;
        let ok = |p: &str| !p.is_empty() && p.len() < 200 && !p.contains(['<', '>', ' ', '@']);
        (ok(l) && ok(r)).then(|| MessageId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How urgent the sender says a mail is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

/// A mail as written by its sender. Identity is `message_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub message_id: MessageId,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    /// When the sender sent it (sender's clock).
    pub date: Millis,
    /// Plain-text body.
    pub body: String,
    pub in_reply_to: Option<MessageId>,
    pub references: Vec<MessageId>,
    pub priority: Priority,
    /// Attached files: their descriptions and keys (the bytes travel separately, in
    /// encrypted chunks; see [`crate::attach`]).
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

/// The fields of a mail before `attachments`: a whole mail as encoded before attachments
/// existed (envelopes sealed then still open), and the start of one encoded before
/// attachments had a `file_hash_alg`.
#[derive(Deserialize)]
struct MailWithoutAttachments {
    message_id: MessageId,
    from: Address,
    to: Vec<Address>,
    cc: Vec<Address>,
    subject: String,
    date: Millis,
    body: String,
    in_reply_to: Option<MessageId>,
    references: Vec<MessageId>,
    priority: Priority,
}

/// An attachment as encoded before `file_hash_alg` existed: its `file_hash` is SHA-256.
#[derive(Deserialize)]
struct AttachmentRefWithoutAlg {
    id: crate::attach::AttachmentId,
    name: String,
    mime: String,
    size: u64,
    key: [u8; 32],
    chunks_root: crate::attach::Hash,
    file_hash: crate::attach::Hash,
    inline: bool,
}

impl Mail {
    /// Reads a `postcard`-encoded mail, including one encoded before mails had attachments
    /// and one encoded before attachments named their whole-file hash (SHA-256, then).
    /// Every byte must belong to the mail.
    pub fn from_postcard(bytes: &[u8]) -> Result<Mail, postcard::Error> {
        let err = match postcard::take_from_bytes::<Mail>(bytes) {
            Ok((mail, [])) => return Ok(mail),
            Ok(_) => postcard::Error::DeserializeBadEncoding,
            Err(e) => e,
        };
        let (old, rest) =
            postcard::take_from_bytes::<MailWithoutAttachments>(bytes).map_err(|_| err.clone())?;
        let attachments = if rest.is_empty() {
            Vec::new()
        } else {
            match postcard::take_from_bytes::<Vec<AttachmentRefWithoutAlg>>(rest) {
                Ok((atts, [])) => atts
                    .into_iter()
                    .map(|a| AttachmentRef {
                        id: a.id,
                        name: a.name,
                        mime: a.mime,
                        size: a.size,
                        key: a.key,
                        chunks_root: a.chunks_root,
                        file_hash: a.file_hash,
                        inline: a.inline,
                        file_hash_alg: crate::attach::FileHashAlg::Sha256,
                    })
                    .collect(),
                _ => return Err(err),
            }
        };
        Ok(Mail {
            message_id: old.message_id,
            from: old.from,
            to: old.to,
            cc: old.cc,
            subject: old.subject,
            date: old.date,
            body: old.body,
            in_reply_to: old.in_reply_to,
            references: old.references,
            priority: old.priority,
            attachments,
        })
    }

    /// Everyone the mail is addressed to, To first then Cc, without duplicates.
    pub fn recipients(&self) -> Vec<Address> {
        let mut out: Vec<Address> = Vec::new();
        for a in self.to.iter().chain(&self.cc) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// What a person fills in on the Compose form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    pub body: String,
    pub in_reply_to: Option<MessageId>,
    pub priority: Priority,
    /// Files already sealed into chunks by the driver ([`crate::attach::FileSealer`]).
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

/// A mail with three attachments whose whole-file hashes are SHA-256 (tests).
#[cfg(test)]
pub(crate) fn mail_with_sha256_attachments() -> Mail {
    use crate::attach::{AttachmentId, AttachmentRef, FileHashAlg};
    let att = |n: u8| AttachmentRef {
        id: AttachmentId([n; 16]),
        name: format!("f{n}.bin"),
        mime: "application/octet-stream".into(),
        size: u64::from(n) * 1000,
        key: [n; 32],
        chunks_root: [n + 1; 32],
        file_hash: [n + 2; 32],
        inline: n % 2 == 0,
        file_hash_alg: FileHashAlg::Sha256,
    };
    Mail {
        message_id: MessageId::new([1; 16], "h"),
        from: "a@h".parse().unwrap(),
        to: vec!["b@h".parse().unwrap()],
        cc: vec![],
        subject: "s".into(),
        date: 5,
        body: "body".into(),
        in_reply_to: None,
        references: vec![],
        priority: Priority::Normal,
        // Ids whose first byte is 0 or 1 would also read as a `file_hash_alg`.
        attachments: vec![att(1), att(0), att(7)],
    }
}

/// `mail` as builds from before attachments named their whole-file hash encoded it: no
/// `file_hash_alg` after each attachment's `inline` (tests).
#[cfg(test)]
pub(crate) fn postcard_before_file_hash_alg(mail: &Mail) -> Vec<u8> {
    use crate::attach::{AttachmentId, Hash};
    #[derive(Serialize)]
    struct OldAttachment<'a>(
        AttachmentId,
        &'a str,
        &'a str,
        u64,
        [u8; 32],
        Hash,
        Hash,
        bool,
    );
    let mut without = mail.clone();
    without.attachments.clear();
    let mut bytes = postcard::to_allocvec(&without).unwrap();
    bytes.pop(); // the empty attachment list
    let old: Vec<OldAttachment<'_>> = mail
        .attachments
        .iter()
        .map(|a| {
            OldAttachment(
                a.id,
                &a.name,
                &a.mime,
                a.size,
                a.key,
                a.chunks_root,
                a.file_hash,
                a.inline,
            )
        })
        .collect();
    bytes.extend(postcard::to_allocvec(&old).unwrap());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids() {
        let id = MessageId::new([7; 16], "relay.example");
        assert!(id.as_str().starts_with('<') && id.as_str().ends_with("@relay.example>"));
        assert_eq!(MessageId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(MessageId::parse("nope"), None);
        assert_eq!(MessageId::parse("<a@b@c>"), None);
        assert_ne!(id, MessageId::new([8; 16], "relay.example"));
    }

    #[test]
    fn mails_encoded_before_attachments_still_decode() {
        #[derive(Serialize)]
        struct Old<'a>(
            &'a MessageId,
            &'a Address,
            Vec<Address>,
            Vec<Address>,
            &'a str,
            Millis,
            &'a str,
            Option<MessageId>,
            Vec<MessageId>,
            Priority,
        );
        let id = MessageId::new([1; 16], "h");
        let from: Address = "a@h".parse().unwrap();
        let to: Address = "b@h".parse().unwrap();
        let old = postcard::to_allocvec(&Old(
            &id,
            &from,
            vec![to.clone()],
            vec![],
            "s",
            5,
            "body",
            None,
            vec![],
            Priority::High,
        ))
        .unwrap();
        let mail = Mail::from_postcard(&old).unwrap();
        assert_eq!((mail.subject.as_str(), mail.body.as_str()), ("s", "body"));
        assert!(mail.attachments.is_empty());
        let mut new = mail.clone();
        new.attachments.push(crate::attach::AttachmentRef {
            id: crate::attach::AttachmentId([3; 16]),
            name: "f.txt".into(),
            mime: "text/plain".into(),
            size: 3,
            key: [4; 32],
            chunks_root: [5; 32],
            file_hash: [6; 32],
            inline: true,
            file_hash_alg: crate::attach::FileHashAlg::Blake3,
        });
        let bytes = postcard::to_allocvec(&new).unwrap();
        assert_eq!(Mail::from_postcard(&bytes).unwrap(), new);
        assert!(Mail::from_postcard(&bytes[..bytes.len() - 3]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Mail::from_postcard(&longer).is_err(), "a trailing byte");
    }

    #[test]
    fn mails_encoded_before_attachments_named_their_hash_read_it_as_sha256() {
        let mail = mail_with_sha256_attachments();
        let bytes = postcard_before_file_hash_alg(&mail);
        assert_eq!(Mail::from_postcard(&bytes).unwrap(), mail);
        assert!(Mail::from_postcard(&bytes[..bytes.len() - 1]).is_err());
        // The same mail encoded now names its hash and reads back as it was.
        let mut now = mail.clone();
        now.attachments[1].file_hash_alg = crate::attach::FileHashAlg::Blake3;
        let encoded = postcard::to_allocvec(&now).unwrap();
        assert_ne!(encoded, bytes);
        assert_eq!(Mail::from_postcard(&encoded).unwrap(), now);
    }
}
