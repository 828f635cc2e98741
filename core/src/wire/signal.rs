//! Signaling frames: typed, versioned JSON over WebSocket.
//!
//! Every frame is an object `{"v": 1, "type": "...", ...}`. [`parse_client_frame`] and
//! [`parse_server_frame`] tell apart malformed JSON, an unknown `type` and an unsupported
//! `v`, so the relay can answer each with a precise [`ErrorCode`] and keep the connection.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::address::Address;
use crate::attach::AttachmentId;
use crate::identity::PublicKey;
use crate::mail::{MessageId, Millis};

/// Version written in (and required of) every signaling frame.
pub const SIGNAL_VERSION: u32 = 1;
/// Largest signaling frame accepted, in bytes. Larger frames close the socket (code 1008).
/// Room for one attachment chunk in base64 ([`ClientFrame::DepositChunk`],
/// [`ServerFrame::FileChunk`]: 61,456 bytes, 81,944 characters) and its header.
pub const MAX_SIGNAL_FRAME: usize = 96 * 1024;
/// Default largest attachment the relay keeps for offline recipients (8 MiB); larger files
/// stay on their sender's node until fetched. The relay operator sets it.
pub const DEFAULT_INLINE_LIMIT: u64 = 8 * 1024 * 1024;
/// Largest sealed envelope the relay cache takes, in bytes (before base64). Its base64 form
/// (62,806 characters) leaves room for the rest of a [`ClientFrame::Deposit`] or
/// [`ServerFrame::Cached`] within [`MAX_SIGNAL_FRAME`]; 48 KiB would not (its base64 alone is
/// exactly 64 KiB).
pub const MAX_SEALED_BYTES: usize = 46 * 1024;
/// Length in bytes of an X25519 public key ([`ClientFrame::PublishKey`], hex on the wire).
pub const ENCRYPTION_KEY_BYTES: usize = 32;

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
    /// Publish this account's encryption key (X25519 public key, 32 bytes, hex) in the relay's
    /// directory, replacing any earlier one. Answered by [`ServerFrame::KeyPublished`].
    PublishKey { encryption_key: String },
    /// Ask for the public keys of `address`. Answered by [`ServerFrame::Keys`], or an
    /// `unknown_address` error.
    Lookup { address: Address },
    /// Leave a sealed envelope (standard base64, at most [`MAX_SEALED_BYTES`] decoded) in the
    /// relay cache for `to`. Answered by [`ServerFrame::Deposited`] once it is durably stored
    /// (and, if `to` is online, the envelope is pushed to it as [`ServerFrame::Cached`]);
    /// depositing the same `(to, message_id)` again changes nothing and is answered the same.
    Deposit {
        to: Address,
        message_id: MessageId,
        sealed: String,
    },
    /// Fetch a cached envelope waiting for this account. Answered by [`ServerFrame::Cached`],
    /// or a `not_found` error.
    Fetch { message_id: MessageId },
    /// This account stored the envelope: the relay deletes its copy, answers
    /// [`ServerFrame::Released`] and tells the sender it was delivered.
    Release { message_id: MessageId },
    /// This account cannot accept the envelope: it fails verification (a forged or altered
    /// envelope). The relay deletes it as for [`ClientFrame::Release`], answers
    /// [`ServerFrame::Released`], and tells its sender (and a co-recipient holding a copy)
    /// that it was refused, so that they stop waiting and can send again; the recipient is
    /// not offered it again.
    ///
    /// With `holder`: only the copy that co-recipient's node holds failed. The relay drops
    /// that listing alone (its own copy, if any, still waits) and tells the holder, which
    /// deletes its copy, and the sender only if the relay keeps no copy of its own.
    Refuse {
        message_id: MessageId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<Address>,
    },
    /// The sender saw the receipt for `(to, message_id)`; the relay forgets it.
    AckReceipt { to: Address, message_id: MessageId },
    /// Does the relay still keep this account's deposit for `to` (or its receipt)? Answered
    /// by [`ServerFrame::Deposited`] if so, else a `not_found` error about `(to,
    /// message_id)`: the relay lost it (its data was reset), and the sender deposits again.
    Check { to: Address, message_id: MessageId },
    /// This account's node holds a sealed copy of `from`'s mail `message_id` for `to` (it is
    /// a co-recipient of that mail; the relay cache refused the copy or was unreachable). The
    /// relay lists it in `to`'s waiting mail at [`MailLocation::Peer`] until `to` releases it
    /// (which also sends `from` a delivered receipt). Answered by [`ServerFrame::Held`];
    /// registering the same `(to, message_id)` again changes nothing.
    Hold {
        to: Address,
        message_id: MessageId,
        from: Address,
        /// Size of the sealed copy in bytes.
        size: u64,
    },
    /// Keep attachment `attachment` of this account's mail `message_id` (already deposited
    /// for `to`) for `to`: its plaintext `size` and its chunk list (the SHA-256 of each
    /// encrypted chunk, concatenated, standard base64). Only files up to the relay's inline
    /// limit are kept. Answered by [`ServerFrame::FileAccepted`] with the chunks still to
    /// send; announcing the same file again is answered the same way.
    DepositFile {
        to: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        size: u64,
        hashes: String,
    },
    /// One encrypted chunk of an announced file (standard base64). The relay checks it
    /// against the chunk list and answers [`ServerFrame::ChunkDeposited`] once committed.
    DepositChunk {
        to: Address,
        attachment: AttachmentId,
        index: u32,
        data: String,
    },
    /// The chunk list of a file kept for this account, once every chunk is there. Answered
    /// by [`ServerFrame::FileInfo`] or a `not_found` error about the attachment.
    FetchFile { attachment: AttachmentId },
    /// Send these chunks (half-open index ranges) of a file kept for this account, each as
    /// a [`ServerFrame::FileChunk`].
    FetchChunks {
        attachment: AttachmentId,
        ranges: Vec<(u32, u32)>,
    },
    /// This account has the whole file: the relay deletes its copy
    /// ([`ServerFrame::FileReleased`]).
    ReleaseFile { attachment: AttachmentId },
    /// Sent before signing in by a storage node that is not paired yet: its own key, and
    /// `signature` over [`crate::identity::pairing_message`] for the session's challenge.
    /// Answered by [`ServerFrame::PairingCode`]; once a person enters the code, the session
    /// gets [`ServerFrame::NodePaired`] and signs in with [`ClientFrame::Auth`] as the node's
    /// address, signed with this key.
    RequestPairing {
        public_key: PublicKey,
        signature: String,
    },
    /// Link the storage node showing `code` to this account (replacing any earlier node).
    /// Answered by [`ServerFrame::NodePaired`], or a `not_found` error for a wrong or expired
    /// code (a few wrong codes in a row are `rate_limited`).
    PairNode { code: String },
    /// This account no longer has a storage node: the registry forgets it, its session (if
    /// signed in) is closed and its key no longer signs in. Answered by
    /// [`ServerFrame::NodeUnpaired`], also when no node was paired. The node's files stay
    /// on its machine.
    UnpairNode,
    /// A signed-in storage node is alive. Sent every [`NODE_HEARTBEAT_MS`]; a node not heard
    /// from for three intervals is unavailable and its session is closed. Not answered.
    NodeHeartbeat,
    /// Does `address` have a storage node, how is it reached, is it available now? Answered
    /// by [`ServerFrame::NodeLocation`].
    LocateNode { address: Address },
    /// The whole files the relay keeps for this account (or, from a storage node's session,
    /// for its owner). Answered by [`ServerFrame::FilesKept`].
    ListFiles,
    /// The sender calls back its deposit for `to`: the relay deletes the envelope if it
    /// still keeps it (`to` has not fetched and released it), and with it the files the
    /// sender left for `to` with that mail. Answered by
    /// [`ServerFrame::Withdrawn`], else a `not_found` error about `(to, message_id)`: it was
    /// fetched already (its receipt follows), or was never this account's.
    Withdraw { to: Address, message_id: MessageId },
}

/// How often a storage node sends [`ClientFrame::NodeHeartbeat`].
pub const NODE_HEARTBEAT_MS: u64 = 10_000;

/// Frames the relay sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every session: sign `nonce` to register or authenticate.
    /// `domain` is the host part of this relay's addresses.
    Challenge {
        nonce: String,
        domain: String,
        /// The largest attachment this relay keeps for offline recipients (its operator's
        /// setting); larger files stay on their sender's node. Absent from older relays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inline_limit: Option<u64>,
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
        /// Which request the error answers, when it concerns one mail or address
        /// (deposit, fetch, release, lookup), so a client with several requests in flight
        /// can tell which one failed. Absent on the wire when empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        about: Option<ErrorAbout>,
    },
    /// The encryption key of [`ClientFrame::PublishKey`] is in the directory.
    KeyPublished,
    /// The public keys of `address`: its signing key, and its encryption key once published.
    Keys {
        address: Address,
        signing_key: PublicKey,
        encryption_key: Option<String>,
    },
    /// The envelope for `to` is committed to the relay cache.
    Deposited {
        to: Address,
        message_id: MessageId,
    },
    /// Mail waiting for this account. Sent after every sign-in when anything waits (split
    /// over several frames if the list is long), and whenever a co-recipient's node starts
    /// holding a copy while the account is online (mail deposited in the relay cache while
    /// it is online comes at once as [`ServerFrame::Cached`]).
    Waiting {
        items: Vec<WaitingMail>,
    },
    /// A cached envelope (standard base64), answering [`ClientFrame::Fetch`], or pushed
    /// when it is deposited while this account is online. Either way the recipient's node
    /// stores it and releases it ([`ClientFrame::Release`]) or refuses it.
    Cached {
        message_id: MessageId,
        from: Address,
        sealed: String,
    },
    /// The relay deleted its copy of the envelope.
    Released {
        message_id: MessageId,
    },
    /// What became of mail this account deposited for `to` (or a co-recipient holds for
    /// `to`). Repeated at every sign-in until acknowledged with [`ClientFrame::AckReceipt`].
    Receipt {
        to: Address,
        message_id: MessageId,
        outcome: ReceiptOutcome,
    },
    /// The relay lists this account's held copy (see [`ClientFrame::Hold`]) for `to`.
    Held {
        to: Address,
        message_id: MessageId,
    },
    /// The relay keeps the announced file for `to`; `missing` lists the chunks (half-open
    /// ranges) it does not have yet — empty when the whole file is there.
    FileAccepted {
        to: Address,
        attachment: AttachmentId,
        missing: Vec<(u32, u32)>,
    },
    /// Chunk `index` of the file for `to` is committed.
    ChunkDeposited {
        to: Address,
        attachment: AttachmentId,
        index: u32,
    },
    /// A whole file kept for this account: who sent it, its size and chunk list (base64).
    FileInfo {
        attachment: AttachmentId,
        from: Address,
        size: u64,
        hashes: String,
    },
    /// One encrypted chunk of a file kept for this account (standard base64).
    FileChunk {
        attachment: AttachmentId,
        index: u32,
        data: String,
    },
    /// The relay deleted its copy of the file.
    FileReleased {
        attachment: AttachmentId,
    },
    /// The code a person enters to link this (storage node's) session to their account;
    /// valid until `expires_at` (ms since the Unix epoch) while this session stays open.
    PairingCode {
        code: String,
        expires_at: Millis,
    },
    /// The storage node `node` now belongs to `owner`. Sent to the person who entered the
    /// code and to the node's session (which then signs in as `node`).
    NodePaired {
        owner: Address,
        node: Address,
    },
    /// `owner` has no storage node now (after [`ClientFrame::UnpairNode`]); `node` is the
    /// address its node had. Sent to the person, and to the node's session before the
    /// relay closes it.
    NodeUnpaired {
        owner: Address,
        node: Address,
    },
    /// Whole files the relay keeps for the account (all of them in answer to
    /// [`ClientFrame::ListFiles`]; pushed to a signed-in storage node as one becomes whole
    /// for its owner).
    FilesKept {
        items: Vec<FileItem>,
    },
    /// The relay deleted this account's deposit for `to` ([`ClientFrame::Withdraw`]); `to`
    /// will not get it from the relay, and no receipt follows.
    Withdrawn {
        to: Address,
        message_id: MessageId,
    },
    /// The storage node of `address`: its signaling address (reach it with `Signal` frames)
    /// when `address` has one, whether it is available (signed in, heartbeats on time), and
    /// when it was last heard from (ms since the Unix epoch).
    NodeLocation {
        address: Address,
        node: Option<Address>,
        available: bool,
        last_seen: Option<Millis>,
    },
}

/// What a [`ServerFrame::Error`] is about: the recipient (deposit) or looked-up address
/// (lookup) in `to`, the mail in `message_id` (deposit, fetch, release).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAbout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// The file, for attachment requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentId>,
}

/// One file the relay keeps for an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileItem {
    pub attachment: AttachmentId,
    pub message_id: MessageId,
    pub from: Address,
    /// Plaintext size in bytes.
    pub size: u64,
}

/// One mail waiting for the account, and where it can be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingMail {
    pub message_id: MessageId,
    pub from: Address,
    /// Size of the sealed envelope in bytes.
    pub size: u64,
    /// When it was deposited, ms since the Unix epoch.
    pub deposited_at: Millis,
    pub location: MailLocation,
}

/// Where a waiting mail is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailLocation {
    /// This relay's cache: fetch with [`ClientFrame::Fetch`].
    Relay,
    /// The node of `holder`, a co-recipient of the same mail: fetch it over a data channel
    /// (`PeerFrame::FetchHeld`) while `holder` is online, then release it here.
    Peer { holder: Address },
}

/// What became of a deposited envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// The recipient fetched and stored it.
    Delivered,
    /// Nobody fetched it within the relay's retention time; the relay deleted it.
    Expired,
    /// The recipient refused it: it failed verification (forged, or altered on the way).
    Refused,
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
    /// The recipient's share of the relay cache is full.
    QuotaExceeded,
    /// Nothing by that id waits for this account.
    NotFound,
    /// A different sender already deposited a mail with this Message-ID for this recipient.
    Conflict,
    /// The file is larger than the relay keeps (its inline limit), or a chunk is not the
    /// size its file says.
    TooLarge,
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
    "publish_key",
    "lookup",
    "deposit",
    "fetch",
    "release",
    "refuse",
    "ack_receipt",
    "hold",
    "check",
    "deposit_file",
    "deposit_chunk",
    "fetch_file",
    "fetch_chunks",
    "release_file",
    "request_pairing",
    "pair_node",
    "unpair_node",
    "node_heartbeat",
    "locate_node",
    "list_files",
    "withdraw",
];
const SERVER_TYPES: &[&str] = &[
    "challenge",
    "registered",
    "authenticated",
    "presence",
    "signal",
    "pong",
    "error",
    "key_published",
    "keys",
    "deposited",
    "waiting",
    "cached",
    "released",
    "receipt",
    "held",
    "file_accepted",
    "chunk_deposited",
    "file_info",
    "file_chunk",
    "file_released",
    "pairing_code",
    "node_paired",
    "node_unpaired",
    "node_location",
    "files_kept",
    "withdrawn",
];

/// The version and type of a frame, read without copying anything else.
#[derive(Deserialize)]
struct Head<'a> {
    v: Option<u64>,
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
}

fn parse<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, FrameError> {
    if text.len() > MAX_SIGNAL_FRAME {
        return Err(FrameError::TooLarge(text.len()));
    }
    // Fast path, for a well-formed frame of this version and a known type: straight from the
    // text into the frame (the frame types ignore the extra "v"), without building a
    // `serde_json::Value` first. Anything else takes the path below, which tells the errors
    // apart; both accept exactly the same frames.
    if let Ok(Head {
        v: Some(v),
        ty: Some(ty),
    }) = serde_json::from_str::<Head<'_>>(text)
    {
        if v == u64::from(SIGNAL_VERSION) && known.contains(&ty.as_ref()) {
            if let Ok(frame) = serde_json::from_str(text) {
                return Ok(frame);
            }
        }
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

/// `{"v":1,` followed by the frame's own fields, serialised straight into the output (no
/// `serde_json::Value` in between). Frames are internally tagged enums, so each serialises
/// as an object with at least its `type`.
fn encode<T: Serialize>(frame: &T) -> String {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("{{\"v\":{SIGNAL_VERSION}").as_bytes());
    let brace = out.len();
    serde_json::to_writer(&mut out, frame).expect("frames always serialise");
    debug_assert!(out[brace] == b'{' && out[brace + 1] != b'}');
    // `{"v":1{"type":…}` → `{"v":1,"type":…}`
    out[brace] = b',';
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Whether serde_json would escape anything in `text` (a control character, `"` or `\`).
/// Written without an early exit, so that it runs over whole vectors of bytes.
fn needs_escape(text: &str) -> bool {
    text.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// [`ServerFrame::Cached`] as [`encode`] writes it, byte for byte, with the envelope (which
/// has nothing to escape: the caller checked) copied in once instead of being escaped byte
/// by byte into a buffer that grows as it goes. Fetches make this the largest frame the
/// relay sends most often.
fn encode_cached(message_id: &MessageId, from: &Address, sealed: &str) -> String {
    use std::fmt::Write as _;
    let id = serde_json::to_string(message_id).expect("a message id serialises");
    let from = serde_json::to_string(from).expect("an address serialises");
    let mut out = String::with_capacity(64 + id.len() + from.len() + sealed.len());
    let _ = write!(
        out,
        "{{\"v\":{SIGNAL_VERSION},\"type\":\"cached\",\"message_id\":{id},\"from\":{from},\"sealed\":\""
    );
    out.push_str(sealed);
    out.push_str("\"}");
    out
}

/// The version and type of a client's frame, with the fields of the frames a busy relay
/// reads most (deposit, fetch, release, receipt acknowledgement), read in one pass. For
/// those, this is the whole parse: the general one reads the text twice (the version and
/// type, then the frame), and serde's internally tagged enums first copy every field into
/// a buffer of their own (the deposit's envelope too).
#[derive(Deserialize)]
struct ClientHead<'a> {
    v: Option<u64>,
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
    to: Option<Address>,
    message_id: Option<MessageId>,
    sealed: Option<String>,
}

impl ClientHead<'_> {
    /// The frame, if it is one of those read here and has all its fields.
    fn frame(self) -> Option<ClientFrame> {
        let message_id = self.message_id?;
        Some(match self.ty?.as_ref() {
            "deposit" => ClientFrame::Deposit {
                to: self.to?,
                message_id,
                sealed: self.sealed?,
            },
            "fetch" => ClientFrame::Fetch { message_id },
            "release" => ClientFrame::Release { message_id },
            "ack_receipt" => ClientFrame::AckReceipt {
                to: self.to?,
                message_id,
            },
            _ => return None,
        })
    }
}

/// Reads a frame sent by a client. A first pass reads its version and type, with the
/// fields of the busiest frames (deposit, fetch, release, receipt acknowledgement), which
/// then need no second; other frames of this version and a known type are read straight
/// into the frame by a second pass. Anything else takes the general parse, which tells
/// malformed frames, unknown types and unsupported versions apart.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    if text.len() <= MAX_SIGNAL_FRAME {
        if let Ok(head) = serde_json::from_str::<ClientHead<'_>>(text) {
            let known = head
                .ty
                .as_deref()
                .is_some_and(|ty| CLIENT_TYPES.contains(&ty));
            if head.v == Some(u64::from(SIGNAL_VERSION)) && known {
                if let Some(frame) = head.frame() {
                    return Ok(frame);
                }
                if let Ok(frame) = serde_json::from_str(text) {
                    return Ok(frame);
                }
            }
        }
    }
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
        match self {
            ServerFrame::Cached {
                message_id,
                from,
                sealed,
            } if !needs_escape(sealed) => encode_cached(message_id, from, sealed),
            _ => encode(self),
        }
    }
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            about: None,
        }
    }
    /// An error about one request: see [`ErrorAbout`].
    pub fn error_about(code: ErrorCode, message: impl Into<String>, about: ErrorAbout) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            about: Some(about),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `cached` frame's own encoder writes what serde writes.
    #[test]
    fn cached_frames_encode_as_serde_does() {
        for sealed in ["", "AAEC", "QUJD+/==", "not \"base64\" \\ \u{1}", "é"] {
            let frame = ServerFrame::Cached {
                message_id: MessageId::new([7; 16], "h"),
                from: "a@h".parse().unwrap(),
                sealed: sealed.into(),
            };
            assert_eq!(frame.encode(), encode(&frame), "{sealed:?}");
            assert_eq!(parse_server_frame(&frame.encode()), Ok(frame));
        }
    }

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
        check_client(
            r#"{"v":1,"type":"node_heartbeat"}"#,
            Ok(ClientFrame::NodeHeartbeat),
        );
        check_client(
            r#"{"v":1,"type":"pair_node","code":"1234-5678"}"#,
            Ok(ClientFrame::PairNode {
                code: "1234-5678".into(),
            }),
        );
        check_client(
            r#"{"v":1,"type":"unpair_node"}"#,
            Ok(ClientFrame::UnpairNode),
        );
        assert_eq!(
            ClientFrame::UnpairNode.encode(),
            r#"{"v":1,"type":"unpair_node"}"#
        );
        check_client(
            r#"{"v":1,"type":"locate_node","address":"alice+node@h"}"#,
            Ok(ClientFrame::LocateNode {
                address: "alice@h".parse::<Address>().unwrap().storage_node(),
            }),
        );
        check_client(
            r#"{"v":1,"type":"locate_node","address":"alice+nod@h"}"#,
            Err(ErrorCode::MalformedFrame),
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
                inline_limit: None,
            },
            ServerFrame::Challenge {
                nonce: "n".into(),
                domain: "h".into(),
                inline_limit: Some(8 << 20),
            },
            ServerFrame::Presence {
                address: "a@h".parse().unwrap(),
                status: PresenceStatus::Unknown,
            },
            ServerFrame::error(ErrorCode::PeerOffline, "bob@h is offline"),
            ServerFrame::error(ErrorCode::QuotaExceeded, "full"),
            ServerFrame::error(ErrorCode::NotFound, "no"),
            ServerFrame::error_about(
                ErrorCode::Conflict,
                "taken",
                ErrorAbout {
                    to: Some("b@h".parse().unwrap()),
                    message_id: Some(id()),
                    attachment: None,
                },
            ),
            ServerFrame::error_about(
                ErrorCode::TooLarge,
                "too large",
                ErrorAbout {
                    to: Some("b@h".parse().unwrap()),
                    attachment: Some(AttachmentId([0xab; 16])),
                    ..ErrorAbout::default()
                },
            ),
            ServerFrame::FileAccepted {
                to: "b@h".parse().unwrap(),
                attachment: AttachmentId([1; 16]),
                missing: vec![(0, 3), (5, 6)],
            },
            ServerFrame::FileChunk {
                attachment: AttachmentId([2; 16]),
                index: 7,
                data: "AAAA".into(),
            },
            ServerFrame::KeyPublished,
            ServerFrame::Keys {
                address: "a@h".parse().unwrap(),
                signing_key: serde_json::from_value(serde_json::Value::String("3b".repeat(32)))
                    .unwrap(),
                encryption_key: Some("ab".repeat(32)),
            },
            ServerFrame::Keys {
                address: "a@h".parse().unwrap(),
                signing_key: serde_json::from_str("\"00\"").unwrap(),
                encryption_key: None,
            },
            ServerFrame::Deposited {
                to: "b@h".parse().unwrap(),
                message_id: id(),
            },
            ServerFrame::Waiting {
                items: vec![WaitingMail {
                    message_id: id(),
                    from: "a@h".parse().unwrap(),
                    size: 1234,
                    deposited_at: 1_700_000_000_000,
                    location: MailLocation::Relay,
                }],
            },
            ServerFrame::Cached {
                message_id: id(),
                from: "a@h".parse().unwrap(),
                sealed: "AAEC".into(),
            },
            ServerFrame::Released { message_id: id() },
            ServerFrame::NodeUnpaired {
                owner: "a@h".parse().unwrap(),
                node: "a@h".parse::<Address>().unwrap().storage_node(),
            },
            ServerFrame::Receipt {
                to: "b@h".parse().unwrap(),
                message_id: id(),
                outcome: ReceiptOutcome::Delivered,
            },
            ServerFrame::Receipt {
                to: "b@h".parse().unwrap(),
                message_id: id(),
                outcome: ReceiptOutcome::Expired,
            },
            ServerFrame::Receipt {
                to: "b@h".parse().unwrap(),
                message_id: id(),
                outcome: ReceiptOutcome::Refused,
            },
            ServerFrame::Held {
                to: "b@h".parse().unwrap(),
                message_id: id(),
            },
            ServerFrame::Waiting {
                items: vec![WaitingMail {
                    message_id: id(),
                    from: "a@h".parse().unwrap(),
                    size: 1,
                    deposited_at: 2,
                    location: MailLocation::Peer {
                        holder: "c@h".parse().unwrap(),
                    },
                }],
            },
        ] {
            assert_eq!(parse_server_frame(&f.encode()), Ok(f));
        }
    }

    fn id() -> MessageId {
        MessageId::new([7; 16], "h")
    }

    /// The fast paths (direct encoding, parsing without a `Value`) read and write the same
    /// frames as the general one: the version first, any key order, odd input still refused
    /// with the right code.
    #[test]
    fn version_and_key_order() {
        let text = ServerFrame::Released { message_id: id() }.encode();
        assert!(text.starts_with(r#"{"v":1,"type":"released","#), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["v"],
            1
        );
        check_client(
            r#"{"nonce":5,"type":"ping","v":1}"#,
            Ok(ClientFrame::Ping { nonce: 5 }),
        );
        // Duplicate keys: the last one counts, as with a `serde_json::Value`.
        check_client(
            r#"{"v":1,"type":"ping","nonce":4,"nonce":5}"#,
            Ok(ClientFrame::Ping { nonce: 5 }),
        );
        check_client(
            r#"{"v":"1","type":"ping","nonce":5}"#,
            Err(ErrorCode::MalformedFrame),
        );
        check_client(
            r#"{"v":1.0,"type":"ping","nonce":5}"#,
            Err(ErrorCode::UnsupportedVersion),
        );
        check_client(
            r#"{"v":1,"type":"ping","nonce":"5"}"#,
            Err(ErrorCode::MalformedFrame),
        );
    }

    /// The one-pass parse of the busiest client frames gives what the general parse gives,
    /// whatever the key order, extra or duplicate keys, or fields of the wrong kind.
    #[test]
    fn busiest_client_frames_parse_as_the_general_parse_does() {
        let id = r#""message_id":"<x@h>""#;
        let texts = [
            format!(r#"{{"v":1,"type":"deposit","to":"bob@h",{id},"sealed":"AAEC"}}"#),
            format!(r#"{{"sealed":"AA\/C","to":"Bob@H","type":"deposit",{id},"v":1}}"#),
            format!(r#"{{"v":1,"type":"deposit","to":"bob@h",{id},"sealed":"A","x":[1]}}"#),
            format!(r#"{{"v":1,"type":"deposit","to":"bob@h",{id},"sealed":"A","sealed":"B"}}"#),
            format!(r#"{{"v":1,"type":"deposit","to":"bob",{id},"sealed":"AAEC"}}"#),
            format!(r#"{{"v":1,"type":"deposit","to":"bob@h",{id},"sealed":7}}"#),
            format!(r#"{{"v":1,"type":"deposit","to":"bob@h",{id}}}"#),
            format!(r#"{{"v":2,"type":"deposit","to":"bob@h",{id},"sealed":"AAEC"}}"#),
            format!(r#"{{"v":1,"type":"fetch",{id}}}"#),
            format!(r#"{{"v":1,"type":"fetch",{id},"to":"not an address"}}"#),
            format!(r#"{{"v":1,"type":"release",{id}}}"#),
            format!(r#"{{"v":1,"type":"release",{id},"sealed":5}}"#),
            format!(r#"{{"v":1,"type":"release",{id},{id}}}"#),
            r#"{"v":1,"type":"release","message_id":5}"#.to_string(),
            r#"{"v":1,"type":"release"}"#.to_string(),
            format!(r#"{{"v":1,"type":"ack_receipt","to":"bob@h",{id}}}"#),
            format!(r#"{{"v":1,"type":"ack_receipt",{id}}}"#),
            format!(r#"{{"v":1,"type":"refuse",{id},"to":"bob@h"}}"#),
            format!(r#"{{"v":1,"type":"check","to":"bob@h",{id}}}"#),
            format!(r#"{{"v":1,"type":"lookup","address":"bob@h",{id}}}"#),
        ];
        for text in &texts {
            let general: Result<ClientFrame, _> = parse(text, CLIENT_TYPES);
            assert_eq!(parse_client_frame(text), general, "{text}");
        }
        assert!(matches!(
            parse_client_frame(&texts[1]),
            Ok(ClientFrame::Deposit { sealed, .. }) if sealed == "AA/C"
        ));
        assert!(matches!(
            parse_client_frame(&texts[10]),
            Ok(ClientFrame::Release { .. })
        ));
        assert!(matches!(
            parse_client_frame(&texts[15]),
            Ok(ClientFrame::AckReceipt { .. })
        ));
    }

    #[test]
    fn cache_client_frames_round_trip() {
        let bob: Address = "bob@h".parse().unwrap();
        for f in [
            ClientFrame::PublishKey {
                encryption_key: "ab".repeat(32),
            },
            ClientFrame::Lookup {
                address: bob.clone(),
            },
            ClientFrame::Deposit {
                to: bob.clone(),
                message_id: id(),
                sealed: "AAEC".into(),
            },
            ClientFrame::Fetch { message_id: id() },
            ClientFrame::Release { message_id: id() },
            ClientFrame::Refuse {
                message_id: id(),
                holder: None,
            },
            ClientFrame::Refuse {
                message_id: id(),
                holder: Some(bob.clone()),
            },
            ClientFrame::AckReceipt {
                to: bob.clone(),
                message_id: id(),
            },
            ClientFrame::Hold {
                to: bob.clone(),
                message_id: id(),
                from: "a@h".parse().unwrap(),
                size: 900,
            },
            ClientFrame::Check {
                to: bob.clone(),
                message_id: id(),
            },
            ClientFrame::Withdraw {
                to: bob.clone(),
                message_id: id(),
            },
        ] {
            check_client(&f.encode(), Ok(f));
        }
        let withdrawn = ServerFrame::Withdrawn {
            to: bob.clone(),
            message_id: id(),
        };
        assert_eq!(parse_server_frame(&withdrawn.encode()), Ok(withdrawn));
        let text = ServerFrame::Waiting {
            items: vec![WaitingMail {
                message_id: id(),
                from: bob,
                size: 1,
                deposited_at: 2,
                location: MailLocation::Relay,
            }],
        }
        .encode();
        assert!(text.contains(r#""location":{"kind":"relay"}"#), "{text}");
        check_client(
            r#"{"v":1,"type":"deposit","to":"bob@h","message_id":"<a@b>"}"#,
            Err(ErrorCode::MalformedFrame),
        );
    }

    #[test]
    fn a_largest_envelope_fits_a_frame() {
        // Base64 of MAX_SEALED_BYTES, with a long address and Message-ID around it.
        let sealed = "A".repeat(MAX_SEALED_BYTES.div_ceil(3) * 4);
        let f = ServerFrame::Cached {
            message_id: MessageId::parse(&format!("<{}@{}>", "u".repeat(199), "h".repeat(199)))
                .unwrap(),
            from: format!("{}@{}", "a".repeat(32), "h".repeat(60))
                .parse()
                .unwrap(),
            sealed,
        };
        assert!(f.encode().len() < MAX_SIGNAL_FRAME, "{}", f.encode().len());
    }
}
