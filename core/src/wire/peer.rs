//! Peer frames: compact binary messages over a WebRTC data channel.
//!
//! Layout: one version byte ([`PEER_VERSION`]) followed by the `postcard` encoding of a
//! [`PeerFrame`]. Frames are at most [`MAX_PEER_FRAME`] bytes, a size every browser's
//! data channel carries in one message.

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::attach::{AttachmentId, Hash};
use crate::mail::{Mail, MessageId};

/// Version byte that starts every peer frame.
pub const PEER_VERSION: u8 = 1;
/// Largest peer frame, in bytes (64 KiB).
pub const MAX_PEER_FRAME: usize = 64 * 1024;

/// What one peer says to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A mail for the receiving peer's user. Answered by `Ack` once stored, or `Reject`.
    Mail(Mail),
    /// The mail is stored durably on the receiving side; the sender may stop retrying.
    Ack { message_id: MessageId },
    /// The receiving side will not take this mail; retrying will not help.
    Reject {
        message_id: MessageId,
        reason: String,
    },
    /// From the sender of mail `message_id` to one of its recipients that already has it:
    /// please hold this sealed copy for the co-recipient `to` (who is offline, and the relay
    /// cache refused it or is unreachable). Answered by `Holding` once stored, or
    /// `HoldRefused`.
    HoldFor {
        to: Address,
        message_id: MessageId,
        #[serde(with = "super::bytes")]
        sealed: Vec<u8>,
    },
    /// The copy for `to` is stored; this node registers it at the relay and hands it to `to`.
    Holding { to: Address, message_id: MessageId },
    /// This node will not hold the copy for `to`.
    HoldRefused {
        to: Address,
        message_id: MessageId,
        reason: String,
    },
    /// From a recipient to a node the relay listed as holding its mail: send me my copy.
    /// Answered by `HeldCopy` or `HeldMissing`.
    FetchHeld { message_id: MessageId },
    /// The sealed copy held for the asking peer.
    HeldCopy {
        message_id: MessageId,
        from: Address,
        #[serde(with = "super::bytes")]
        sealed: Vec<u8>,
    },
    /// No copy of `message_id` is held for the asking peer.
    HeldMissing { message_id: MessageId },
    /// The recipient stored its copy (and released it at the relay): the holder deletes its.
    HeldAck { message_id: MessageId },
    /// From a recipient of mail `message_id` to a node that has the encrypted chunks of one
    /// of its attachments: send the chunk list from `start` on. Answered by `ChunkList` or
    /// `TransferRefused`.
    GetChunkList {
        message_id: MessageId,
        attachment: AttachmentId,
        start: u32,
    },
    /// A page of an attachment's chunk list (at most
    /// [`HASHES_PER_PAGE`](crate::attach::HASHES_PER_PAGE) hashes).
    ChunkList {
        attachment: AttachmentId,
        start: u32,
        hashes: Vec<Hash>,
    },
    /// Send these chunks (half-open index ranges) of an attachment of mail `message_id`.
    /// Answered by one `Chunk` per index, or `TransferRefused`.
    GetChunks {
        message_id: MessageId,
        attachment: AttachmentId,
        ranges: Vec<(u32, u32)>,
    },
    /// One encrypted chunk (at most `CHUNK_BYTES` + 16 bytes).
    Chunk {
        attachment: AttachmentId,
        index: u32,
        #[serde(with = "super::bytes")]
        data: Vec<u8>,
    },
    /// This node will not (or can no longer) send that attachment to the asking peer.
    TransferRefused {
        attachment: AttachmentId,
        reason: String,
    },
    /// The receiver cancelled: stop sending chunks of this attachment.
    CancelTransfer { attachment: AttachmentId },
    /// From a recipient to the sender of mail `message_id`: I have attachment `attachment`
    /// whole and verified. Answered by `FileReceivedAck`.
    FileReceived {
        message_id: MessageId,
        attachment: AttachmentId,
    },
    /// The sender recorded the `FileReceived`.
    FileReceivedAck { attachment: AttachmentId },
    /// From the sender of mail `message_id` to the storage node of its recipient `owner`:
    /// fetch attachment `attachment` (`size` bytes of plaintext, chunk list with root
    /// `chunks_root`) from me and keep it for `owner`. The node pulls it with `GetChunkList`
    /// and `GetChunks` and answers `FileReceived` once it has the whole file, or
    /// `TransferRefused`.
    StoreFile {
        owner: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        size: u64,
        chunks_root: Hash,
    },
    /// From a recipient that deleted mail `message_id` to its sender: of its attachments,
    /// it had fetched `fetched` whole (the sender had not heard it yet) and deleted
    /// `not_fetched` before fetching them: the sender stops offering those to it (and to its
    /// storage node). Answered by `MailDeletedAck`.
    MailDeleted {
        message_id: MessageId,
        fetched: Vec<AttachmentId>,
        not_fetched: Vec<AttachmentId>,
    },
    /// The sender recorded the `MailDeleted`.
    MailDeletedAck { message_id: MessageId },
    /// From a person to their own storage node: delete these files (of mail the person
    /// deleted). Answered by `FilesDropped` once they are gone (or were not there).
    DropFiles { attachments: Vec<AttachmentId> },
    /// The storage node deleted these files (or never had them).
    FilesDropped { attachments: Vec<AttachmentId> },
}

/// Why bytes from a peer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes exceeds the {MAX_PEER_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unsupported peer protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl PeerFrame {
    /// Encodes the frame; fails only if the result would exceed [`MAX_PEER_FRAME`].
    pub fn encode(&self) -> Result<Vec<u8>, PeerFrameError> {
        let mut out = vec![PEER_VERSION];
        let body =
            postcard::to_allocvec(self).map_err(|e| PeerFrameError::Malformed(e.to_string()))?;
        out.extend_from_slice(&body);
        if out.len() > MAX_PEER_FRAME {
            return Err(PeerFrameError::TooLarge(out.len()));
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, PeerFrameError> {
        if bytes.len() > MAX_PEER_FRAME {
            return Err(PeerFrameError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(PeerFrameError::Empty)?;
        if version != PEER_VERSION {
            return Err(PeerFrameError::UnsupportedVersion(version));
        }
        let error = match postcard::take_from_bytes::<PeerFrame>(body) {
            Ok((frame, [])) => return Ok(frame),
            Ok((_, rest)) => PeerFrameError::Malformed(format!("{} trailing bytes", rest.len())),
            Err(e) => PeerFrameError::Malformed(e.to_string()),
        };
        // A mail from a peer running a build from before attachments named their
        // whole-file hash (`Mail` is variant 0): read as `Mail::from_postcard` reads it.
        match body.split_first() {
            Some((0, mail)) => Mail::from_postcard(mail)
                .map(PeerFrame::Mail)
                .map_err(|_| error),
            _ => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let f = PeerFrame::Ack {
            message_id: MessageId::new([1; 16], "h"),
        };
        let bytes = f.encode().unwrap();
        assert_eq!(bytes[0], PEER_VERSION);
        assert_eq!(PeerFrame::decode(&bytes), Ok(f));
        assert_eq!(PeerFrame::decode(&[]), Err(PeerFrameError::Empty));
        assert_eq!(
            PeerFrame::decode(&[9, 0]),
            Err(PeerFrameError::UnsupportedVersion(9))
        );
        assert!(matches!(
            PeerFrame::decode(&[PEER_VERSION, 250, 3]),
            Err(PeerFrameError::Malformed(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            PeerFrame::decode(&trailing),
            Err(PeerFrameError::Malformed(_))
        ));
        let held = PeerFrame::HeldCopy {
            message_id: MessageId::new([2; 16], "h"),
            from: "a@h".parse().unwrap(),
            sealed: vec![9; crate::wire::signal::MAX_SEALED_BYTES],
        };
        assert_eq!(PeerFrame::decode(&held.encode().unwrap()), Ok(held));
        // The largest chunk, with a long Message-ID-free header, fits in one frame.
        let chunk = PeerFrame::Chunk {
            attachment: AttachmentId([0xff; 16]),
            index: u32::MAX,
            data: vec![7; crate::attach::CHUNK_BYTES + crate::attach::CHUNK_OVERHEAD],
        };
        assert_eq!(PeerFrame::decode(&chunk.encode().unwrap()), Ok(chunk));
        let page = PeerFrame::ChunkList {
            attachment: AttachmentId([0xff; 16]),
            start: u32::MAX,
            hashes: vec![[0xff; 32]; crate::attach::HASHES_PER_PAGE],
        };
        assert_eq!(PeerFrame::decode(&page.encode().unwrap()), Ok(page));
        assert!(matches!(
            PeerFrame::decode(&vec![1; MAX_PEER_FRAME + 1]),
            Err(PeerFrameError::TooLarge(_))
        ));
    }

    #[test]
    fn a_mail_from_a_build_before_attachments_named_their_hash_is_read() {
        let mail = crate::mail::mail_with_sha256_attachments();
        let mut old = vec![PEER_VERSION, 0]; // `Mail`: variant 0
        old.extend(crate::mail::postcard_before_file_hash_alg(&mail));
        assert_eq!(PeerFrame::decode(&old), Ok(PeerFrame::Mail(mail.clone())));
        // Cut short, it is still malformed.
        assert!(matches!(
            PeerFrame::decode(&old[..old.len() - 1]),
            Err(PeerFrameError::Malformed(_))
        ));
        // And as this build encodes it.
        let now = PeerFrame::Mail(mail);
        assert_eq!(PeerFrame::decode(&now.encode().unwrap()), Ok(now));
    }
}
