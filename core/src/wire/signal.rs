//! Signaling frames: typed, versioned JSON over WebSocket.
//!
//! Every frame is an object `{"v": 1, "type": "...", ...}`. [`parse_client_frame`] and
//! [`parse_server_frame`] tell apart malformed JSON, an unknown `type` and an unsupported
//! `v`, so the relay can answer each with a precise [`ErrorCode`] and keep the connection.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::address::Address;
use crate::identity::PublicKey;

/// Version written in (and required of) every signaling frame.
pub const SIGNAL_VERSION: u32 = 1;
/// Largest signaling frame accepted, in bytes. Larger frames close the socket (code 1008).
pub const MAX_SIGNAL_FRAME: usize = 64 * 1024;

/// Frames a client sends to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Create the account `name@<domain>` with this public key; `signature` signs
    /// [`crate::identity::register_message`] for the session's challenge. Success also
    /// authenticates the session.
    Register {
        name: String,
        public_key: PublicKey,
        signature: String,
    },
    /// Authenticate the session as `address`; `signature` signs
    /// [`crate::identity::auth_message`] for the session's challenge.
    Auth { address: Address, signature: String },
    /// Ask for the presence of these addresses now and whenever it changes.
    Subscribe { addresses: Vec<Address> },
    /// Stop presence updates for these addresses.
    Unsubscribe { addresses: Vec<Address> },
    /// Forward a WebRTC negotiation message to `to`'s session.
    Signal {
        to: Address,
        conn: String,
        payload: SignalPayload,
    },
    /// Application-level echo, answered by [`ServerFrame::Pong`] (used to measure round trips).
    Ping { nonce: u64 },
}

/// Frames the relay sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every session: sign `nonce` to register or authenticate.
    /// `domain` is the host part of this relay's addresses.
    Challenge {
        nonce: String,
        domain: String,
    },
    Registered {
        address: Address,
    },
    Authenticated {
        address: Address,
    },
    Presence {
        address: Address,
        status: PresenceStatus,
    },
    /// A negotiation message from the authenticated session of `from`.
    Signal {
        from: Address,
        conn: String,
        payload: SignalPayload,
    },
    Pong {
        nonce: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Whether an address has a live session at the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
    /// No such account at this relay.
    Unknown,
}

/// WebRTC negotiation content. `conn` in the enclosing frame names the peer connection
/// (chosen by the offerer), so several connections between two peers never get mixed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalPayload {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    },
    /// The sender closed connection `conn`.
    Bye,
}

/// Machine-readable reason in an [`ServerFrame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedFrame,
    UnknownType,
    UnsupportedVersion,
    FrameTooLarge,
    NotAuthenticated,
    AlreadyAuthenticated,
    BadSignature,
    UnknownAddress,
    InvalidName,
    NameTaken,
    PeerOffline,
    SessionReplaced,
    RateLimited,
    Internal,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {0} bytes; the limit is {MAX_SIGNAL_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("unsupported protocol version {0} (this relay speaks {SIGNAL_VERSION})")]
    UnsupportedVersion(u64),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge(_) => ErrorCode::FrameTooLarge,
            FrameError::Malformed(_) => ErrorCode::MalformedFrame,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        }
    }
}

const CLIENT_TYPES: &[&str] = &[
    "register",
    "auth",
    "subscribe",
    "unsubscribe",
    "signal",
    "ping",
];
const SERVER_TYPES: &[&str] = &[
    "challenge",
    "registered",
    "authenticated",
    "presence",
    "signal",
    "pong",
    "error",
];

fn parse<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, FrameError> {
    if text.len() > MAX_SIGNAL_FRAME {
        return Err(FrameError::TooLarge(text.len()));
    }
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| FrameError::Malformed("a frame is a JSON object".into()))?;
    match obj.remove("v") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(SIGNAL_VERSION as u64) => {}
        Some(serde_json::Value::Number(n)) => {
            return Err(FrameError::UnsupportedVersion(n.as_u64().unwrap_or(0)))
        }
        _ => {
            return Err(FrameError::Malformed(
                "missing numeric \"v\" (protocol version)".into(),
            ))
        }
    }
    let ty = obj
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| FrameError::Malformed("missing string \"type\"".into()))?;
    if !known.contains(&ty) {
        return Err(FrameError::UnknownType(ty.chars().take(64).collect()));
    }
    serde_json::from_value(value).map_err(|e| FrameError::Malformed(e.to_string()))
}

fn encode<T: Serialize>(frame: &T) -> String {
    let mut value = serde_json::to_value(frame).expect("frames always serialise");
    if let Some(obj) = value.as_object_mut() {
        obj.insert("v".into(), SIGNAL_VERSION.into());
    }
    value.to_string()
}

/// Reads a frame sent by a client.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    parse(text, CLIENT_TYPES)
}

/// Reads a frame sent by the relay.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, FrameError> {
    parse(text, SERVER_TYPES)
}

impl ClientFrame {
    pub fn encode(&self) -> String {
        encode(self)
    }
}

impl ServerFrame {
    pub fn encode(&self) -> String {
        encode(self)
    }
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_client(text: &str, expect: Result<ClientFrame, ErrorCode>) {
        assert_eq!(
            parse_client_frame(text).map_err(|e| e.code()),
            expect,
            "{text}"
        );
    }

    #[test]
    fn client_frames() {
        let bob: Address = "bob@h".parse().unwrap();
        let f = ClientFrame::Signal {
            to: bob.clone(),
            conn: "c1".into(),
            payload: SignalPayload::Offer { sdp: "v=0".into() },
        };
        let text = f.encode();
        assert!(text.contains("\"v\":1"), "{text}");
        check_client(&text, Ok(f));
        check_client(
            r#"{"v":1,"type":"ping","nonce":5}"#,
            Ok(ClientFrame::Ping { nonce: 5 }),
        );
        check_client(
            r#"{"v":1,"type":"subscribe","addresses":["bob@h"],"extra":true}"#,
            Ok(ClientFrame::Subscribe {
                addresses: vec![bob],
            }),
        );
        check_client("{not json", Err(ErrorCode::MalformedFrame));
        check_client("[1,2]", Err(ErrorCode::MalformedFrame));
        check_client(
            r#"{"type":"ping","nonce":5}"#,
            Err(ErrorCode::MalformedFrame),
        );
        check_client(
            r#"{"v":2,"type":"ping","nonce":5}"#,
            Err(ErrorCode::UnsupportedVersion),
        );
        check_client(r#"{"v":1,"type":"launch"}"#, Err(ErrorCode::UnknownType));
        check_client(r#"{"v":1,"type":"ping"}"#, Err(ErrorCode::MalformedFrame));
        check_client(
            r#"{"v":1,"type":"subscribe","addresses":["x"]}"#,
            Err(ErrorCode::MalformedFrame),
        );
        check_client(
            &" ".repeat(MAX_SIGNAL_FRAME + 1),
            Err(ErrorCode::FrameTooLarge),
        );
    }

    #[test]
    fn server_frames_round_trip() {
        for f in [
            ServerFrame::Challenge {
                nonce: "n".into(),
                domain: "h".into(),
            },
            ServerFrame::Presence {
                address: "a@h".parse().unwrap(),
                status: PresenceStatus::Unknown,
            },
            ServerFrame::error(ErrorCode::PeerOffline, "bob@h is offline"),
        ] {
            assert_eq!(parse_server_frame(&f.encode()), Ok(f));
        }
    }
}
