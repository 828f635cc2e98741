//! Peer frames: compact binary messages over a WebRTC data channel.
//!
//! Layout: one version byte ([`PEER_VERSION`]) followed by the `postcard` encoding of a
//! [`PeerFrame`]. Frames are at most [`MAX_PEER_FRAME`] bytes, a size every browser's
//! data channel carries in one message.

use serde::{Deserialize, Serialize};

use crate::address::Address;
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
        sealed: Vec<u8>,
    },
    /// No copy of `message_id` is held for the asking peer.
    HeldMissing { message_id: MessageId },
    /// The recipient stored its copy (and released it at the relay): the holder deletes its.
    HeldAck { message_id: MessageId },
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
        let (frame, rest) = postcard::take_from_bytes::<PeerFrame>(body)
            .map_err(|e| PeerFrameError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PeerFrameError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(frame)
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
        assert!(matches!(
            PeerFrame::decode(&vec![1; MAX_PEER_FRAME + 1]),
            Err(PeerFrameError::TooLarge(_))
        ));
    }
}
