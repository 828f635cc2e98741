//! One WebSocket connection: the challenge, authentication, the heartbeat and the dispatch of
//! client frames. Replies are written in order; frames for this session that come from other
//! sessions (presence, forwarded negotiation) arrive through its bounded outbox. A receipt
//! acknowledgement, which has no reply, is not waited for before the next frame is read
//! (see `Session::ack`); every later request still sees its effect.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use base64::Engine as _;
use futures_util::SinkExt as _;
use peermail_core::address::{validate_name, Address};
use peermail_core::attach::{
    chunk_count, hashes_from_bytes, AttachmentId, CHUNK_BYTES, CHUNK_OVERHEAD,
};
use peermail_core::identity::{auth_message, register_message, PublicKey};
use peermail_core::mail::MessageId;
use peermail_core::wire::signal::{
    parse_client_frame, ClientFrame, ErrorAbout, ErrorCode, MailLocation, PresenceStatus,
    ReceiptOutcome, ServerFrame, SignalPayload, WaitingMail, ENCRYPTION_KEY_BYTES,
    MAX_SEALED_BYTES, MAX_SIGNAL_FRAME,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cache::{self, CacheFuture, MailCache, NewHold, NewMail};
use crate::files::{ChunkDeposit, FileCache, FileDeposit, NewFile};
use crate::hub::{Ending, Outbox};
use crate::{now_millis, Error, Signaling};

mod nodes;
pub(crate) use nodes::PendingPairing;

/// Standard base64 (with padding), the encoding of sealed envelopes on the wire.
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Most entries in one [`ServerFrame::Waiting`] (about 200 bytes each), so it stays well under
/// [`MAX_SIGNAL_FRAME`].
const WAITING_PER_FRAME: usize = 200;

/// Most addresses one session may watch at once.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Frames from other sessions that may wait for this session's socket.
const OUTBOX_CAPACITY: usize = 64;
/// How long the server waits for the client's reply to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// WebSocket close codes (RFC 6455, 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;

/// Why a session loop ended.
enum End {
    /// The connection broke.
    Gone,
    /// The client sent a close frame.
    Closed,
    /// The client sent a frame over [`MAX_SIGNAL_FRAME`].
    TooLarge,
    /// Nothing arrived within the heartbeat timeout.
    Silent,
    /// The client did not sign in within the sign-in timeout of connecting.
    NoSignIn,
    /// A newer session authenticated as the same address.
    Replaced,
    /// This storage node's owner unpaired it.
    Unpaired,
    /// A signed-in storage node sent no heartbeat within the node timeout.
    NodeSilent,
    /// The relay is stopping.
    Shutdown,
}

/// The state of one connection. Kept small: thousands of these live at once.
struct Session {
    signaling: Arc<Signaling>,
    /// Tells this session apart from other sessions of the same address.
    id: u64,
    /// The challenge this session's client must sign.
    nonce: String,
    /// Set once the client registered or authenticated.
    address: Option<Address>,
    /// Addresses whose presence this session watches.
    watched: HashSet<Address>,
    /// This session's own outbox, handed to the hub for presence and forwarded frames.
    outbox: Outbox,
    /// Woken by the hub when a newer session of the same address takes over, or when this
    /// storage node is unpaired.
    ending: Arc<Ending>,
    /// The pairing code this (not yet paired) storage node's session shows, and its expiry.
    pairing: Option<(String, Instant)>,
    /// For a signed-in storage node: when its last heartbeat arrived.
    node_heard: Option<Instant>,
    /// Wrong pairing codes this session entered in a row, and when the last one was.
    wrong_codes: u8,
    wrong_codes_at: Option<Instant>,
    /// The receipt acknowledgement in flight, if any. `ack_receipt` has no reply, so the
    /// session does not wait for it before reading the next frame: it is settled (its
    /// error, if any, sent as an `internal` error frame) before any other cache request is
    /// awaited, after a deposit's answer (the deposit is handed to the cache while the
    /// acknowledgement is in flight, so both are written in one turn of the relay's cache
    /// writer), when the session is idle, and when it ends. (In a mutex only to keep
    /// `Session` `Sync`; it is always reached through `&mut`.)
    ack: std::sync::Mutex<Option<CacheFuture<()>>>,
}

/// Runs one connection to its end.
pub(crate) async fn run(signaling: Arc<Signaling>, mut socket: WebSocket) {
    let Some(nonce) = new_nonce() else {
        let frame =
            ServerFrame::error(ErrorCode::Internal, "the relay cannot make a challenge now");
        let _ = send_frame(&mut socket, &frame, CLOSE_GRACE).await;
        close(&mut socket, CLOSE_INTERNAL, "no challenge".to_string()).await;
        return;
    };
    let (outbox, mut inbox) = mpsc::channel(OUTBOX_CAPACITY);
    let mut session = Session {
        id: signaling.next_session_id(),
        nonce,
        address: None,
        watched: HashSet::new(),
        outbox,
        ending: Arc::new(Ending::default()),
        pairing: None,
        node_heard: None,
        wrong_codes: 0,
        wrong_codes_at: None,
        ack: std::sync::Mutex::new(None),
        signaling,
    };
    let write_timeout = session.signaling.config.heartbeat_timeout;
    tracing::debug!(session = session.id, "session started");

    let challenge_sent = {
        // Scoped so the frame is not kept for the life of the connection.
        let challenge = ServerFrame::Challenge {
            nonce: session.nonce.clone(),
            domain: session.signaling.config.domain.clone(),
            inline_limit: Some(session.signaling.config.cache.inline_limit),
        };
        send_frame(&mut socket, &challenge, write_timeout)
            .await
            .is_ok()
    };
    let end = if challenge_sent {
        session.serve(&mut socket, &mut inbox).await
    } else {
        End::Gone
    };

    session.leave();
    // An acknowledgement still in flight is carried out (nobody is left to hear its error).
    if let Some(ack) = session.ack_slot().take() {
        let _ = tokio::time::timeout(CLOSE_GRACE, ack).await;
    }
    let closing = match end {
        End::Gone | End::Silent => None,
        End::Closed => {
            // Reading on lets tungstenite write its queued reply to the client's close.
            drain(&mut socket).await;
            None
        }
        End::NoSignIn => Some((
            CLOSE_POLICY,
            "sign in (register or auth) sooner after connecting".to_string(),
        )),
        End::TooLarge => Some((
            CLOSE_POLICY,
            format!("frames are limited to {MAX_SIGNAL_FRAME} bytes"),
        )),
        End::Replaced => {
            let message = "another session signed in with this address; this one is closed";
            let frame = ServerFrame::error(ErrorCode::SessionReplaced, message);
            let _ = send_frame(&mut socket, &frame, CLOSE_GRACE).await;
            Some((CLOSE_NORMAL, "session replaced".to_string()))
        }
        End::Unpaired => {
            if let Some(node) = session.address.clone() {
                let frame = ServerFrame::NodeUnpaired {
                    owner: node.owner(),
                    node,
                };
                let _ = send_frame(&mut socket, &frame, CLOSE_GRACE).await;
            }
            Some((
                CLOSE_NORMAL,
                "this storage node was unpaired by its owner".to_string(),
            ))
        }
        End::Shutdown => Some((CLOSE_GOING_AWAY, "the relay is shutting down".to_string())),
        End::NodeSilent => Some((
            CLOSE_POLICY,
            "no heartbeat from this storage node in time; it is marked unavailable".to_string(),
        )),
    };
    if let Some((code, reason)) = closing {
        close(&mut socket, code, reason).await;
    }
    tracing::debug!(session = session.id, address = ?session.address, "session ended");
}

impl Session {
    async fn serve(
        &mut self,
        socket: &mut WebSocket,
        inbox: &mut mpsc::Receiver<Utf8Bytes>,
    ) -> End {
        // Copied out: these live as long as the connection, and a clone of the whole config
        // would keep a copy of the domain per connection.
        let config = &self.signaling.config;
        let (interval, timeout) = (config.heartbeat_interval, config.heartbeat_timeout);
        let node_timeout = config.node_timeout;
        let started = Instant::now();
        let sign_in_deadline = started + config.sign_in_timeout;
        let write_timeout = timeout;
        let mut ping = tokio::time::interval_at(started + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = started;
        // One timer for both deadlines: silence, and (until signed in) the sign-in deadline.
        let silence = tokio::time::sleep_until((started + timeout).min(sign_in_deadline));
        tokio::pin!(silence);
        let mut shutdown = self.signaling.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return End::Shutdown;
        }
        // Made once, not at every turn of the loop: each of these futures takes a lock to
        // register itself and another to leave when dropped. Both end the session.
        let ending = self.ending.clone();
        let ended = ending.notified();
        tokio::pin!(ended);
        let shutdown_signal = shutdown.changed();
        tokio::pin!(shutdown_signal);
        // A shutdown sender gone (the relay is being dropped) is no shutdown notice.
        let mut shutdown_gone = false;

        loop {
            // In this order, not at random: what ends the session (its deadlines too, so a
            // client that never stops sending is still held to them), then the client's next
            // frame. A frame that is already there is handled before the receipt
            // acknowledgement in flight is looked at, so that acknowledgement does not wake
            // the session by itself when the next frame will settle it anyway (below).
            tokio::select! {
                biased;
                () = &mut ended => {
                    return if ending.unpaired() { End::Unpaired } else { End::Replaced };
                }
                changed = &mut shutdown_signal, if !shutdown_gone => match changed {
                    Ok(()) => return End::Shutdown,
                    Err(_) => shutdown_gone = true,
                },
                () = &mut silence => {
                    let now = Instant::now();
                    let signed_in = self.address.is_some();
                    // Idle anonymous sockets must not pile up; a storage node waiting to be
                    // paired may wait as long as its code is valid.
                    let sign_in_by = self
                        .pairing_expires()
                        .map_or(sign_in_deadline, |e| e.max(sign_in_deadline));
                    if !signed_in && now >= sign_in_by {
                        tracing::debug!(session = self.id, "no sign-in in time");
                        return End::NoSignIn;
                    }
                    let mut deadline = last_heard + timeout;
                    if now >= deadline {
                        tracing::debug!(session = self.id, "heartbeat timeout");
                        return End::Silent;
                    }
                    if let Some(heard) = self.node_heard {
                        if now >= heard + node_timeout {
                            tracing::info!(session = self.id, address = ?self.address,
                                "storage node missed its heartbeat");
                            return End::NodeSilent;
                        }
                        deadline = deadline.min(heard + node_timeout);
                    }
                    silence
                        .as_mut()
                        .reset(if signed_in { deadline } else { deadline.min(sign_in_by) });
                }
                incoming = socket.recv() => {
                    let message = match incoming {
                        None => return End::Gone,
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return read_error(self.id, e),
                    };
                    last_heard = Instant::now();
                    let replies = match message {
                        Message::Text(text) => self.handle_text(text.as_str()).await,
                        Message::Binary(_) => {
                            tracing::debug!(session = self.id, "binary frame refused");
                            vec![ServerFrame::error(
                                ErrorCode::MalformedFrame,
                                "binary frames are not accepted; signaling frames are JSON text",
                            )]
                        }
                        Message::Ping(_) | Message::Pong(_) => Vec::new(),
                        Message::Close(_) => return End::Closed,
                    };
                    // A storage node that just signed in is due its first heartbeat sooner
                    // than the silence deadline.
                    if let Some(heard) = self.node_heard {
                        if silence.deadline() > heard + node_timeout {
                            silence.as_mut().reset(heard + node_timeout);
                        }
                    }
                    let replies = replies
                        .iter()
                        .map(|reply| Message::Text(reply.encode().into()));
                    if send_all(socket, replies, inbox, write_timeout).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(text) = inbox.recv() => {
                    let frames = std::iter::once(Message::Text(text));
                    if send_all(socket, frames, inbox, write_timeout).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(result) = settle(self.ack_slot()) => {
                    if let Err(e) = result {
                        let frames = std::iter::once(Message::Text(internal(&e).encode().into()));
                        if send_all(socket, frames, inbox, write_timeout).await.is_err() {
                            return End::Gone;
                        }
                    }
                }
                _ = ping.tick() => {
                    if send(socket, Message::Ping(Default::default()), write_timeout).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// Answers one text frame. Bad input gets an error frame; nothing here ends the session.
    /// Cache requests wait for the cache; their futures are boxed so that an idle
    /// connection does not carry their state.
    async fn handle_text(&mut self, text: &str) -> Vec<ServerFrame> {
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "bad frame");
                return vec![ServerFrame::error(e.code(), e.to_string())];
            }
        };
        // Requests see the effect of an earlier receipt acknowledgement: it is settled first
        // (a deposit settles it once answered, a further acknowledgement once handed over).
        if self.ack_slot().is_some()
            && !matches!(
                frame,
                ClientFrame::Deposit { .. } | ClientFrame::AckReceipt { .. }
            )
        {
            if let Some(error) = Box::pin(self.settle_ack()).await {
                let mut replies = vec![error];
                replies.extend(Box::pin(self.dispatch(frame)).await);
                return replies;
            }
        }
        self.dispatch(frame).await
    }

    /// Answers one parsed client frame.
    async fn dispatch(&mut self, frame: ClientFrame) -> Vec<ServerFrame> {
        let authenticated = self.address.is_some();
        let reply = match frame {
            ClientFrame::Ping { nonce } => ServerFrame::Pong { nonce },
            ClientFrame::Register { .. }
            | ClientFrame::Auth { .. }
            | ClientFrame::RequestPairing { .. }
                if authenticated =>
            {
                ServerFrame::error(
                    ErrorCode::AlreadyAuthenticated,
                    "this session is already signed in; open a new connection to change address",
                )
            }
            ClientFrame::Register {
                name,
                public_key,
                signature,
            } => {
                let reply = self.register(&name, &public_key, &signature);
                return Box::pin(self.with_pending(reply)).await;
            }
            ClientFrame::Auth { address, signature } => {
                let reply = self.auth(address, &signature);
                return Box::pin(self.with_pending(reply)).await;
            }
            ClientFrame::RequestPairing {
                public_key,
                signature,
            } => self.request_pairing(public_key, &signature),
            _ if !authenticated => ServerFrame::error(
                ErrorCode::NotAuthenticated,
                "sign the challenge first: send register or auth",
            ),
            ClientFrame::NodeHeartbeat => match self.node_heartbeat() {
                Some(error) => error,
                None => return Vec::new(),
            },
            ClientFrame::LocateNode { address } => self.locate_node(address),
            ref other
                if self.is_node()
                    && !matches!(
                        other,
                        ClientFrame::Subscribe { .. }
                            | ClientFrame::Unsubscribe { .. }
                            | ClientFrame::Signal { .. }
                            | ClientFrame::ListFiles
                            | ClientFrame::FetchFile { .. }
                            | ClientFrame::FetchChunks { .. }
                            | ClientFrame::ReleaseFile { .. }
                    ) =>
            {
                ServerFrame::error(
                    ErrorCode::NotAuthenticated,
                    "a storage node's session may only negotiate connections, watch presence, \
                     locate nodes, send heartbeats and fetch its owner's files from the relay",
                )
            }
            ClientFrame::PairNode { code } => self.pair_node(&code),
            ClientFrame::UnpairNode => self.unpair_node(),
            ClientFrame::ListFiles => Box::pin(self.list_files()).await,
            ClientFrame::Subscribe { addresses } => return self.subscribe(addresses),
            ClientFrame::Unsubscribe { addresses } => {
                self.unsubscribe(&addresses);
                return Vec::new();
            }
            ClientFrame::Signal { to, conn, payload } => match self.forward(to, conn, payload) {
                Some(error) => error,
                None => return Vec::new(),
            },
            ClientFrame::PublishKey { encryption_key } => self.publish_key(&encryption_key),
            ClientFrame::Lookup { address } => self.lookup(address),
            ClientFrame::Deposit {
                to,
                message_id,
                sealed,
            } => Box::pin(self.deposit(to, message_id, &sealed)).await,
            ClientFrame::Fetch { message_id } => Box::pin(self.fetch(message_id)).await,
            ClientFrame::Release { message_id } => {
                Box::pin(self.release(message_id, ReceiptOutcome::Delivered, None)).await
            }
            ClientFrame::Refuse { message_id, holder } => {
                Box::pin(self.release(message_id, ReceiptOutcome::Refused, holder)).await
            }
            ClientFrame::Hold {
                to,
                message_id,
                from,
                size,
            } => Box::pin(self.hold(to, message_id, from, size)).await,
            ClientFrame::Check { to, message_id } => Box::pin(self.check(to, message_id)).await,
            ClientFrame::Withdraw { to, message_id } => {
                Box::pin(self.withdraw(to, message_id)).await
            }
            ClientFrame::DepositFile {
                to,
                message_id,
                attachment,
                size,
                hashes,
            } => {
                let about = file_about(Some(&to), attachment);
                let frame =
                    Box::pin(self.deposit_file(to, message_id, attachment, size, &hashes)).await;
                with_about(frame, about)
            }
            ClientFrame::DepositChunk {
                to,
                attachment,
                index,
                data,
            } => {
                let about = file_about(Some(&to), attachment);
                let frame = Box::pin(self.deposit_chunk(to, attachment, index, &data)).await;
                with_about(frame, about)
            }
            ClientFrame::FetchFile { attachment } => {
                let frame = Box::pin(self.fetch_file(attachment)).await;
                with_about(frame, file_about(None, attachment))
            }
            ClientFrame::FetchChunks { attachment, ranges } => {
                return Box::pin(self.fetch_chunks(attachment, ranges)).await
            }
            ClientFrame::ReleaseFile { attachment } => {
                let frame = Box::pin(self.release_file(attachment)).await;
                with_about(frame, file_about(None, attachment))
            }
            ClientFrame::AckReceipt { to, message_id } => {
                match Box::pin(self.ack_receipt(to, message_id)).await {
                    Some(error) => error,
                    None => return Vec::new(),
                }
            }
        };
        vec![reply]
    }

    /// After a successful sign-in, `reply` followed by what waits for the account: the mail
    /// in the cache ([`ServerFrame::Waiting`]) and unacknowledged receipts. The session is
    /// attached to the hub before the cache is read, so a deposit committed in between is
    /// pushed to it rather than missed (it may then be listed twice).
    async fn with_pending(&mut self, reply: ServerFrame) -> Vec<ServerFrame> {
        let signed_in = matches!(
            reply,
            ServerFrame::Registered { .. } | ServerFrame::Authenticated { .. }
        );
        let mut replies = vec![reply];
        // A storage node gets no mail.
        let Some(me) = self
            .address
            .clone()
            .filter(|a| signed_in && !a.is_storage_node())
        else {
            return replies;
        };
        let waiting = self.cache().waiting_async(me.clone()).await;
        let pending = match waiting {
            Ok(waiting) => self
                .cache()
                .receipts_async(me)
                .await
                .map(|receipts| (waiting, receipts)),
            Err(e) => Err(e),
        };
        match pending {
            Ok((waiting, receipts)) => {
                for items in waiting.chunks(WAITING_PER_FRAME) {
                    replies.push(ServerFrame::Waiting {
                        items: items.to_vec(),
                    });
                }
                replies.extend(receipts.into_iter().map(|r| ServerFrame::Receipt {
                    to: r.recipient,
                    message_id: r.message_id,
                    outcome: r.outcome,
                }));
            }
            Err(e) => replies.push(internal(&e)),
        }
        replies
    }

    /// The mail cache, for one call.
    fn cache(&self) -> Arc<dyn MailCache> {
        self.signaling.cache.clone()
    }

    /// The file store, for one call.
    fn files(&self) -> Arc<dyn FileCache> {
        self.signaling.files.clone()
    }

    /// `DepositFile`: keep an inline attachment of this account's deposited mail for `to`.
    async fn deposit_file(
        &mut self,
        to: Address,
        message_id: MessageId,
        attachment: AttachmentId,
        size: u64,
        hashes: &str,
    ) -> ServerFrame {
        let Some(from) = self.address.clone() else {
            return not_authenticated();
        };
        let policy = self.signaling.config.cache;
        if size > policy.inline_limit {
            return ServerFrame::error(
                ErrorCode::TooLarge,
                format!(
                    "this relay keeps files of at most {} bytes; larger ones stay on the sender's node",
                    policy.inline_limit
                ),
            );
        }
        let count = chunk_count(size) as usize;
        let hashes = match BASE64
            .decode(hashes)
            .ok()
            .and_then(|b| hashes_from_bytes(&b))
        {
            Some(h) if h.len() == count => h,
            _ => {
                return ServerFrame::error(
                    ErrorCode::MalformedFrame,
                    format!("hashes must be {count} SHA-256 hashes in standard base64"),
                )
            }
        };
        // Only a file of mail this account left here for `to`.
        match self
            .cache()
            .has_deposit_async(from.clone(), to.clone(), message_id.clone())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return ServerFrame::error(
                    ErrorCode::NotFound,
                    format!("deposit the mail {message_id} for {to} before its files"),
                )
            }
            Err(e) => return internal(&e),
        }
        let now = now_millis();
        let retention = u64::try_from(policy.retention.as_millis()).unwrap_or(u64::MAX);
        let file = NewFile {
            recipient: to.clone(),
            attachment,
            sender: from,
            message_id,
            size,
            hashes,
            deposited_at: now,
            expires_at: now.saturating_add(retention),
        };
        match self
            .files()
            .deposit_file_async(file, policy.quota_bytes)
            .await
        {
            Ok(FileDeposit::Accepted { missing }) => ServerFrame::FileAccepted {
                to,
                attachment,
                missing,
            },
            Ok(FileDeposit::QuotaExceeded) => ServerFrame::error(
                ErrorCode::QuotaExceeded,
                format!("the files kept for {to} would exceed their quota; nothing was kept"),
            ),
            Ok(FileDeposit::Conflict) => ServerFrame::error(
                ErrorCode::Conflict,
                format!("another file {attachment} is kept for {to}"),
            ),
            Err(e) => internal(&e),
        }
    }

    /// `DepositChunk`: one chunk of an announced file, checked against its chunk list.
    async fn deposit_chunk(
        &mut self,
        to: Address,
        attachment: AttachmentId,
        index: u32,
        data: &str,
    ) -> ServerFrame {
        let Some(from) = self.address.clone() else {
            return not_authenticated();
        };
        let data = match BASE64.decode(data) {
            Ok(d) if d.len() <= CHUNK_BYTES + CHUNK_OVERHEAD => d,
            _ => {
                return ServerFrame::error(
                    ErrorCode::MalformedFrame,
                    "data must be one encrypted chunk in standard base64",
                )
            }
        };
        match self
            .files()
            .deposit_chunk_async(to.clone(), from, attachment, index, data)
            .await
        {
            Ok(ChunkDeposit::Stored) => {
                Box::pin(self.offer_to_node(&to, attachment)).await;
                ServerFrame::ChunkDeposited {
                    to,
                    attachment,
                    index,
                }
            }
            Ok(ChunkDeposit::NoSuchFile) => ServerFrame::error(
                ErrorCode::NotFound,
                format!("announce file {attachment} for {to} first (deposit_file)"),
            ),
            Ok(ChunkDeposit::Mismatch) => ServerFrame::error(
                ErrorCode::MalformedFrame,
                format!("chunk {index} does not match the chunk list of {attachment}"),
            ),
            Err(e) => internal(&e),
        }
    }

    async fn fetch_file(&mut self, attachment: AttachmentId) -> ServerFrame {
        let Some(me) = self.address.as_ref().map(Address::owner) else {
            return not_authenticated();
        };
        match self.files().file_async(me, attachment).await {
            Ok(Some(f)) => ServerFrame::FileInfo {
                attachment,
                from: f.sender,
                size: f.size,
                hashes: BASE64.encode(f.hashes.concat()),
            },
            Ok(None) => ServerFrame::error(
                ErrorCode::NotFound,
                format!("no whole file {attachment} is kept for you"),
            ),
            Err(e) => internal(&e),
        }
    }

    /// `FetchChunks`: at most [`MAX_CHUNKS_PER_FETCH`] chunks per request.
    async fn fetch_chunks(
        &mut self,
        attachment: AttachmentId,
        ranges: Vec<(u32, u32)>,
    ) -> Vec<ServerFrame> {
        let Some(me) = self.address.as_ref().map(Address::owner) else {
            return vec![not_authenticated()];
        };
        let count: u64 = ranges
            .iter()
            .map(|&(s, e)| u64::from(e.saturating_sub(s)))
            .sum();
        if count > MAX_CHUNKS_PER_FETCH || ranges.iter().any(|&(s, e)| s >= e) {
            return vec![with_about(
                ServerFrame::error(
                    ErrorCode::MalformedFrame,
                    format!("ask for 1 to {MAX_CHUNKS_PER_FETCH} chunks in non-empty ranges"),
                ),
                file_about(None, attachment),
            )];
        }
        let indices: Vec<u32> = ranges.into_iter().flat_map(|(s, e)| s..e).collect();
        match self.files().chunks_async(me, attachment, indices).await {
            Ok(Some(chunks)) if !chunks.is_empty() => chunks
                .into_iter()
                .map(|(index, data)| ServerFrame::FileChunk {
                    attachment,
                    index,
                    data: BASE64.encode(data),
                })
                .collect(),
            Ok(_) => vec![with_about(
                ServerFrame::error(
                    ErrorCode::NotFound,
                    format!("no such chunks of {attachment} are kept for you"),
                ),
                file_about(None, attachment),
            )],
            Err(e) => vec![with_about(internal(&e), file_about(None, attachment))],
        }
    }

    async fn release_file(&mut self, attachment: AttachmentId) -> ServerFrame {
        let Some(me) = self.address.as_ref().map(Address::owner) else {
            return not_authenticated();
        };
        match self.files().release_file_async(me, attachment).await {
            Ok(true) => ServerFrame::FileReleased { attachment },
            Ok(false) => ServerFrame::error(
                ErrorCode::NotFound,
                format!("no file {attachment} is kept for you"),
            ),
            Err(e) => internal(&e),
        }
    }

    fn publish_key(&mut self, key: &str) -> ServerFrame {
        let Some(me) = &self.address else {
            return not_authenticated();
        };
        let valid = key.len() == 2 * ENCRYPTION_KEY_BYTES && hex::decode(key).is_ok();
        if !valid {
            return ServerFrame::error(
                ErrorCode::MalformedFrame,
                format!(
                    "encryption_key must be {ENCRYPTION_KEY_BYTES} bytes in hex \
                     ({} hex digits)",
                    2 * ENCRYPTION_KEY_BYTES
                ),
            );
        }
        let key = key.to_ascii_lowercase();
        match self
            .signaling
            .directory
            .publish_encryption_key(me.local(), &key)
        {
            Ok(()) => ServerFrame::KeyPublished,
            Err(e) => internal(&e),
        }
    }

    fn lookup(&mut self, address: Address) -> ServerFrame {
        let about = ErrorAbout {
            to: Some(address.clone()),
            message_id: None,
            attachment: None,
        };
        let signing_key = match self.account_key(&address) {
            Ok(Some(key)) => key,
            Ok(None) => return with_about(unknown_address(&address), about),
            Err(e) => return with_about(internal(&e), about),
        };
        match self.signaling.directory.encryption_key(address.local()) {
            Ok(encryption_key) => ServerFrame::Keys {
                address,
                signing_key,
                encryption_key,
            },
            Err(e) => with_about(internal(&e), about),
        }
    }

    async fn deposit(&mut self, to: Address, message_id: MessageId, sealed: &str) -> ServerFrame {
        let Some(from) = self.address.clone() else {
            return not_authenticated();
        };
        let about = deposit_about(&to, &message_id);
        let frame = self.deposit_inner(from, to, message_id, sealed).await;
        with_about(frame, about)
    }

    async fn deposit_inner(
        &mut self,
        from: Address,
        to: Address,
        message_id: MessageId,
        sealed_b64: &str,
    ) -> ServerFrame {
        if MessageId::parse(message_id.as_str()).is_none() {
            return bad_message_id(&message_id);
        }
        let sealed = match decode_sealed(sealed_b64) {
            Ok(bytes) => bytes,
            Err(message) => return ServerFrame::error(ErrorCode::MalformedFrame, message),
        };
        match self.account_exists(&to) {
            Ok(true) => {}
            Ok(false) => return unknown_address(&to),
            Err(e) => return internal(&e),
        }
        let policy = self.signaling.config.cache;
        if !self.signaling.allow_deposit(&from) {
            return ServerFrame::error(
                ErrorCode::RateLimited,
                format!(
                    "this relay takes at most {} deposits per minute from one sender; \
                     nothing was stored, try again shortly",
                    policy.deposit_rate_per_minute
                ),
            );
        }
        let now = now_millis();
        let retention = u64::try_from(policy.retention.as_millis()).unwrap_or(u64::MAX);
        let mail = NewMail {
            recipient: to.clone(),
            message_id: message_id.clone(),
            sender: from.clone(),
            sealed,
            deposited_at: now,
            expires_at: now.saturating_add(retention),
        };
        let quota = policy.quota_bytes;
        // Handed to the cache before an acknowledgement in flight is settled: the relay's
        // cache writer then writes both in one turn, in the order they came, and answers
        // the acknowledgement first, so waiting for the deposit first wakes the session
        // once for both.
        let stored = self.cache().deposit_async(mail, quota).await;
        if let Some(error) = self.settle_ack().await {
            self.tell_self(&error);
        }
        match stored {
            Ok(cache::Deposit::Stored) => {
                tracing::debug!(session = self.id, %to, %message_id, "mail cached");
                // An online recipient gets the envelope itself, as a fetch would bring it:
                // its node stores and releases it without asking. (Were the push lost, the
                // envelope is listed at the recipient's next sign-in like any other.)
                self.signaling.push_with(&to, || {
                    ServerFrame::Cached {
                        message_id: message_id.clone(),
                        from,
                        sealed: sealed_b64.to_owned(),
                    }
                    .encode()
                });
                ServerFrame::Deposited { to, message_id }
            }
            Ok(cache::Deposit::AlreadyStored) => ServerFrame::Deposited { to, message_id },
            Ok(cache::Deposit::Conflict) => ServerFrame::error(
                ErrorCode::Conflict,
                format!(
                    "another sender already left a mail {message_id} for {to}; \
                     nothing was stored"
                ),
            ),
            Ok(cache::Deposit::QuotaExceeded) => ServerFrame::error(
                ErrorCode::QuotaExceeded,
                format!(
                    "the relay cache of {to} is full ({} MiB); nothing was stored, \
                     try again later",
                    quota / (1024 * 1024)
                ),
            ),
            Err(e) => internal(&e),
        }
    }

    async fn fetch(&mut self, message_id: MessageId) -> ServerFrame {
        let about_id = message_id.clone();
        let Some(me) = self.address.clone() else {
            return not_authenticated();
        };
        match self.cache().fetch_async(me, message_id.clone()).await {
            Ok(Some(mail)) => ServerFrame::Cached {
                message_id,
                from: mail.sender,
                sealed: BASE64.encode(&mail.sealed),
            },
            Ok(None) => not_found(&message_id),
            Err(e) => internal(&e),
        }
        .about_mail(&about_id)
    }

    /// `Release` (the recipient stored the mail: `Delivered`) or `Refuse` (it failed
    /// verification: `Refused`): the envelope is deleted and its sender (and holder) told.
    /// A `Refuse` naming `holder` drops only the listing of the copy that co-recipient's
    /// node holds, and tells the holder (and the sender, if the relay keeps no copy).
    async fn release(
        &mut self,
        message_id: MessageId,
        outcome: ReceiptOutcome,
        holder: Option<Address>,
    ) -> ServerFrame {
        let about_id = message_id.clone();
        let Some(me) = self.address.clone() else {
            return not_authenticated();
        };
        let now = now_millis();
        let (cache, id) = (self.cache(), message_id.clone());
        let told = match holder {
            None => cache.release_async(me.clone(), id, outcome, now).await,
            Some(h) => cache.refuse_held_async(me.clone(), id, h, now).await,
        };
        match told {
            Ok(told) if told.is_empty() => not_found(&message_id),
            Ok(told) => {
                tracing::debug!(session = self.id, %message_id, ?outcome, "waiting mail released");
                let receipt = ServerFrame::Receipt {
                    to: me,
                    message_id: message_id.clone(),
                    outcome,
                };
                for who in &told {
                    self.signaling.push(who, &receipt);
                }
                ServerFrame::Released { message_id }
            }
            Err(e) => internal(&e),
        }
        .about_mail(&about_id)
    }

    /// Is this account's deposit for `to` still kept (or its receipt)?
    async fn check(&mut self, to: Address, message_id: MessageId) -> ServerFrame {
        let Some(me) = self.address.clone() else {
            return not_authenticated();
        };
        let about = deposit_about(&to, &message_id);
        let frame = match self
            .cache()
            .has_deposit_async(me, to.clone(), message_id.clone())
            .await
        {
            Ok(true) => ServerFrame::Deposited { to, message_id },
            Ok(false) => ServerFrame::error(
                ErrorCode::NotFound,
                format!("this relay keeps no mail {message_id} from you for {to}"),
            ),
            Err(e) => internal(&e),
        };
        with_about(frame, about)
    }

    /// The sender calls back its deposit for `to` (`withdraw`), and the files it announced
    /// with it for `to`.
    async fn withdraw(&mut self, to: Address, message_id: MessageId) -> ServerFrame {
        let Some(me) = self.address.clone() else {
            return not_authenticated();
        };
        let about = deposit_about(&to, &message_id);
        let frame = match self
            .cache()
            .withdraw_async(me.clone(), to.clone(), message_id.clone())
            .await
        {
            Ok(true) => {
                // Its files go with it (were this to fail, they expire in time).
                let files = self
                    .files()
                    .withdraw_files_async(me, to.clone(), message_id.clone())
                    .await;
                match files {
                    Ok(n) => {
                        tracing::debug!(session = self.id, %to, %message_id, files = n, "deposit withdrawn")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %message_id, "the files of a withdrawn mail were not deleted")
                    }
                }
                ServerFrame::Withdrawn { to, message_id }
            }
            Ok(false) => ServerFrame::error(
                ErrorCode::NotFound,
                format!(
                    "this relay keeps no mail {message_id} from you for {to} \
                     (fetched already, or never deposited)"
                ),
            ),
            Err(e) => internal(&e),
        };
        with_about(frame, about)
    }

    /// A co-recipient's node holds a sealed copy for `to`: list it among `to`'s waiting mail
    /// (pushed at once if `to` is online).
    async fn hold(
        &mut self,
        to: Address,
        message_id: MessageId,
        from: Address,
        size: u64,
    ) -> ServerFrame {
        let Some(holder) = self.address.clone() else {
            return not_authenticated();
        };
        let about = deposit_about(&to, &message_id);
        let frame = self.hold_inner(holder, to, message_id, from, size).await;
        with_about(frame, about)
    }

    async fn hold_inner(
        &mut self,
        holder: Address,
        to: Address,
        message_id: MessageId,
        from: Address,
        size: u64,
    ) -> ServerFrame {
        if MessageId::parse(message_id.as_str()).is_none() {
            return bad_message_id(&message_id);
        }
        if to == holder || from == holder || size > MAX_SEALED_BYTES as u64 {
            return ServerFrame::error(
                ErrorCode::MalformedFrame,
                format!(
                    "a held copy is another account's mail for a third account, \
                     at most {MAX_SEALED_BYTES} bytes"
                ),
            );
        }
        for who in [&to, &from] {
            match self.account_exists(who) {
                Ok(true) => {}
                Ok(false) => return unknown_address(who),
                Err(e) => return internal(&e),
            }
        }
        if !self.signaling.allow_deposit(&holder) {
            return ServerFrame::error(
                ErrorCode::RateLimited,
                "too many deposits and held copies from this account; try again shortly",
            );
        }
        let now = now_millis();
        let retention =
            u64::try_from(self.signaling.config.cache.retention.as_millis()).unwrap_or(u64::MAX);
        let hold = NewHold {
            recipient: to.clone(),
            message_id: message_id.clone(),
            holder: holder.clone(),
            sender: from.clone(),
            size,
            held_at: now,
            expires_at: now.saturating_add(retention),
        };
        match self.cache().hold_async(hold).await {
            Ok(false) => ServerFrame::error(
                ErrorCode::Conflict,
                format!(
                    "another node already holds {message_id} for {to}; this copy is not needed"
                ),
            ),
            Ok(true) => {
                tracing::debug!(session = self.id, %to, %message_id, "held copy listed");
                let waiting = WaitingMail {
                    message_id: message_id.clone(),
                    from,
                    size,
                    deposited_at: now,
                    location: MailLocation::Peer { holder },
                };
                self.signaling.push(
                    &to,
                    &ServerFrame::Waiting {
                        items: vec![waiting],
                    },
                );
                ServerFrame::Held { to, message_id }
            }
            Err(e) => internal(&e),
        }
    }

    /// Hands the acknowledgement to the cache without waiting for it (see [`Session::ack`]);
    /// returns the error of the one before it, if any.
    async fn ack_receipt(&mut self, to: Address, message_id: MessageId) -> Option<ServerFrame> {
        let me = self.address.clone()?;
        let ack = self.cache().ack_receipt_async(me, to, message_id);
        let earlier = self.settle_ack().await;
        *self.ack_slot() = Some(ack);
        earlier
    }

    /// Waits for the receipt acknowledgement in flight, if any; its error frame if it failed.
    async fn settle_ack(&mut self) -> Option<ServerFrame> {
        match settle(self.ack_slot()).await? {
            Ok(()) => None,
            Err(e) => Some(internal(&e)),
        }
    }

    /// The receipt acknowledgement in flight ([`Session::ack`]).
    fn ack_slot(&mut self) -> &mut Option<CacheFuture<()>> {
        self.ack.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` for this session's own client, behind the reply being made.
    fn tell_self(&self, frame: &ServerFrame) {
        if self
            .outbox
            .try_send(Utf8Bytes::from(frame.encode()))
            .is_err()
        {
            tracing::debug!(session = self.id, "frame dropped: outbox full");
        }
    }

    fn register(&mut self, name: &str, public_key: &PublicKey, signature: &str) -> ServerFrame {
        let normalised = match validate_name(name) {
            Ok(n) => n,
            Err(e) => return ServerFrame::error(ErrorCode::InvalidName, e.to_string()),
        };
        let domain = &self.signaling.config.domain;
        let address = match Address::new(&normalised, domain) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%domain, error = %e, "the relay's domain is not a valid address host");
                return ServerFrame::error(
                    ErrorCode::Internal,
                    "the relay's domain is misconfigured",
                );
            }
        };
        // The client signed the name exactly as it sent it.
        if let Err(e) =
            public_key.verify(&register_message(&self.nonce, name, public_key), signature)
        {
            tracing::debug!(session = self.id, error = %e, "registration refused");
            return ServerFrame::error(ErrorCode::BadSignature, e.to_string());
        }
        let key = match PublicKey::parse(public_key.as_str()) {
            Ok(k) => k,
            Err(e) => return ServerFrame::error(ErrorCode::BadSignature, e.to_string()),
        };
        match self.signaling.directory.register(&normalised, &key) {
            Ok(()) => {}
            Err(Error::NameTaken(_)) => {
                return ServerFrame::error(
                    ErrorCode::NameTaken,
                    format!("the name {normalised} is taken"),
                )
            }
            Err(e) => return internal(&e),
        }
        self.sign_in(address.clone());
        ServerFrame::Registered { address }
    }

    fn auth(&mut self, address: Address, signature: &str) -> ServerFrame {
        let key = match self.signing_key(&address) {
            Ok(Some(key)) => key,
            Ok(None) => return unknown_address(&address),
            Err(e) => return internal(&e),
        };
        if let Err(e) = key.verify(&auth_message(&self.nonce, &address), signature) {
            tracing::debug!(session = self.id, %address, error = %e, "authentication refused");
            return ServerFrame::error(ErrorCode::BadSignature, e.to_string());
        }
        self.sign_in(address.clone());
        if address.is_storage_node() {
            self.node_signed_in();
            // Unpaired (or another node paired) between the key check and the sign-in?
            // `unpair_node` changes the registry first and then ends the node's live
            // session, so a node that reads the registry again after signing in either
            // sees the change or was already live when the session was ended.
            if !matches!(self.signing_key(&address), Ok(Some(k)) if k == key) {
                self.signaling.hub().unpaired(&address);
            }
        }
        ServerFrame::Authenticated { address }
    }

    fn sign_in(&mut self, address: Address) {
        self.signaling
            .hub()
            .attach(&address, self.id, self.outbox.clone(), self.ending.clone());
        tracing::debug!(session = self.id, %address, "signed in");
        self.address = Some(address);
    }

    /// The public key of `address` if it is an account at this relay.
    fn account_key(&self, address: &Address) -> Result<Option<PublicKey>, Error> {
        if address.host() != self.signaling.config.domain {
            return Ok(None);
        }
        self.signaling.directory.lookup(address.local())
    }

    /// Whether `address` is an account at this relay (cheaper than its key).
    fn account_exists(&self, address: &Address) -> Result<bool, Error> {
        if address.host() != self.signaling.config.domain {
            return Ok(false);
        }
        self.signaling.directory.exists(address.local())
    }

    fn subscribe(&mut self, addresses: Vec<Address>) -> Vec<ServerFrame> {
        let mut requested: Vec<Address> = Vec::with_capacity(addresses.len());
        for a in addresses {
            if !requested.contains(&a) {
                requested.push(a);
            }
        }
        let new = requested
            .iter()
            .filter(|a| !self.watched.contains(*a))
            .count();
        if self.watched.len() + new > MAX_SUBSCRIPTIONS {
            return vec![ServerFrame::error(
                ErrorCode::RateLimited,
                format!(
                    "a session may watch at most {MAX_SUBSCRIPTIONS} addresses \
                     (it watches {}); unsubscribe from some first",
                    self.watched.len()
                ),
            )];
        }
        // Start watching before reading the status, so no change between the two is missed.
        let online: Vec<bool> = {
            let mut hub = self.signaling.hub();
            requested
                .iter()
                .map(|a| {
                    if !self.watched.contains(a) {
                        hub.watch(a, self.id, &self.outbox);
                    }
                    hub.is_online(a)
                })
                .collect()
        };
        let mut replies = Vec::with_capacity(requested.len());
        for (address, online) in requested.into_iter().zip(online) {
            let status = if online {
                PresenceStatus::Online
            } else {
                match self.address_known(&address) {
                    Ok(true) => PresenceStatus::Offline,
                    Ok(false) => PresenceStatus::Unknown,
                    Err(e) => {
                        replies.push(internal(&e));
                        continue;
                    }
                }
            };
            self.watched.insert(address.clone());
            tracing::debug!(session = self.id, %address, ?status, "presence on subscribing");
            replies.push(ServerFrame::Presence { address, status });
        }
        replies
    }

    fn unsubscribe(&mut self, addresses: &[Address]) {
        let mut hub = self.signaling.hub();
        for a in addresses {
            if self.watched.remove(a) {
                hub.unwatch(a, self.id);
            }
        }
    }

    /// Forwards a negotiation message; returns the error to send back, if any.
    fn forward(
        &mut self,
        to: Address,
        conn: String,
        payload: SignalPayload,
    ) -> Option<ServerFrame> {
        let from = self.address.clone()?;
        let route = self.signaling.hub().route(&to);
        let Some(outbox) = route else {
            return Some(match self.address_known(&to) {
                Ok(true) => ServerFrame::error(ErrorCode::PeerOffline, format!("{to} is offline")),
                Ok(false) => unknown_address(&to),
                Err(e) => internal(&e),
            });
        };
        let text = Utf8Bytes::from(
            ServerFrame::Signal {
                from,
                conn,
                payload,
            }
            .encode(),
        );
        match outbox.try_send(text) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(ServerFrame::error(
                ErrorCode::RateLimited,
                format!("{to} is not keeping up with its messages; try again shortly"),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(ServerFrame::error(
                ErrorCode::PeerOffline,
                format!("{to} is offline"),
            )),
        }
    }

    /// Removes this session from the hub: its presence and its subscriptions.
    fn leave(&mut self) {
        self.forget_pairing();
        let mut hub = self.signaling.hub();
        if let Some(address) = &self.address {
            hub.detach(address, self.id);
        }
        for a in self.watched.drain() {
            hub.unwatch(&a, self.id);
        }
    }
}

/// Most chunks one `FetchChunks` may ask for: a receiving node's window (64 × 82 KB of
/// frames).
const MAX_CHUNKS_PER_FETCH: u64 = peermail_core::node::WINDOW as u64;

/// What an error about `message_id` for `to` is about (a deposit, its check or call-back,
/// a held copy's registration).
fn deposit_about(to: &Address, message_id: &MessageId) -> ErrorAbout {
    ErrorAbout {
        to: Some(to.clone()),
        message_id: Some(message_id.clone()),
        attachment: None,
    }
}

/// What an error about a file is about.
fn file_about(to: Option<&Address>, attachment: AttachmentId) -> ErrorAbout {
    ErrorAbout {
        to: to.cloned(),
        message_id: None,
        attachment: Some(attachment),
    }
}

/// Fills in what an error frame is about (other frames pass unchanged).
fn with_about(frame: ServerFrame, about: ErrorAbout) -> ServerFrame {
    match frame {
        ServerFrame::Error { code, message, .. } => ServerFrame::error_about(code, message, about),
        other => other,
    }
}

trait AboutMail {
    fn about_mail(self, message_id: &MessageId) -> ServerFrame;
}

impl AboutMail for ServerFrame {
    /// An error answering a fetch or release names the mail.
    fn about_mail(self, message_id: &MessageId) -> ServerFrame {
        with_about(
            self,
            ErrorAbout {
                to: None,
                message_id: Some(message_id.clone()),
                attachment: None,
            },
        )
    }
}

fn unknown_address(address: &Address) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::UnknownAddress,
        format!("there is no account {address} at this relay"),
    )
}

fn not_found(message_id: &MessageId) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::NotFound,
        format!("no mail {message_id} waits for this account"),
    )
}

fn not_authenticated() -> ServerFrame {
    ServerFrame::error(
        ErrorCode::NotAuthenticated,
        "sign the challenge first: send register or auth",
    )
}

fn bad_message_id(message_id: &MessageId) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::MalformedFrame,
        format!(
            "message_id {:?} is not a Message-ID (<left@right>)",
            message_id.as_str().chars().take(64).collect::<String>()
        ),
    )
}

/// Decodes a sealed envelope (standard base64), refusing one over [`MAX_SEALED_BYTES`]
/// before decoding it. The error is the message for the sender.
fn decode_sealed(sealed: &str) -> Result<Vec<u8>, String> {
    let too_large = || format!("a sealed envelope is limited to {MAX_SEALED_BYTES} bytes");
    if sealed.len() > MAX_SEALED_BYTES.div_ceil(3) * 4 {
        return Err(too_large());
    }
    let bytes = BASE64
        .decode(sealed)
        .map_err(|e| format!("sealed is not standard base64: {e}"))?;
    if bytes.is_empty() {
        return Err("the sealed envelope is empty".into());
    }
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

fn internal(e: &Error) -> ServerFrame {
    tracing::warn!(error = %e, "signaling request failed");
    ServerFrame::error(
        ErrorCode::Internal,
        "the relay could not complete the request; try again later",
    )
}

/// The result of the cache request in `slot`, which is then empty; `None` at once if it is
/// empty.
async fn settle<T>(slot: &mut Option<CacheFuture<T>>) -> Option<Result<T, Error>> {
    let result = slot.as_mut()?.await;
    *slot = None;
    Some(result)
}

/// Classifies a failed read: an oversized frame is a policy violation, anything else a
/// broken connection.
fn read_error(session: u64, e: axum::Error) -> End {
    // axum does not expose tungstenite's error type; its capacity error reads
    // "Space limit exceeded: Message too long: N > M".
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("Message too long") {
        tracing::debug!(session, error = %text, "oversized frame");
        End::TooLarge
    } else {
        tracing::debug!(session, error = %text, "read failed");
        End::Gone
    }
}

async fn send_frame(
    socket: &mut WebSocket,
    frame: &ServerFrame,
    limit: Duration,
) -> Result<(), ()> {
    send(socket, Message::Text(frame.encode().into()), limit).await
}

/// Writes `frames`, then whatever waits in the outbox (such as the `waiting` notice of a
/// deposit to one's own address, or the receipt of one's own release), and flushes them
/// together: one write to the socket for a reply and the frames pushed while it was being
/// made, instead of one per frame. Gives up (the caller then ends the session) if the
/// client does not take them within `limit`.
async fn send_all(
    socket: &mut WebSocket,
    frames: impl Iterator<Item = Message>,
    inbox: &mut mpsc::Receiver<Utf8Bytes>,
    limit: Duration,
) -> Result<(), ()> {
    let write = async {
        for frame in frames {
            socket.feed(frame).await?;
        }
        // Bounded: the outbox holds at most OUTBOX_CAPACITY frames.
        while let Ok(text) = inbox.try_recv() {
            socket.feed(Message::Text(text)).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Writes one message, giving up (the caller then ends the session) if the client does not
/// take it within `limit`.
async fn send(socket: &mut WebSocket, message: Message, limit: Duration) -> Result<(), ()> {
    match tokio::time::timeout(limit, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends a close frame and waits briefly for the client's answer, so the close frame is not
/// lost to a TCP reset caused by unread input.
async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if send(socket, Message::Close(Some(frame)), CLOSE_GRACE)
        .await
        .is_err()
    {
        return;
    }
    drain(socket).await;
}

/// Reads and discards until the connection ends, for at most [`CLOSE_GRACE`].
async fn drain(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// A fresh challenge: 16 random bytes from the OS, hex-encoded. `None` if the OS generator
/// failed: a predictable challenge would let signatures be replayed.
fn new_nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => Some(hex::encode(bytes)),
        Err(e) => {
            tracing::warn!(error = %e, "the system random generator failed");
            None
        }
    }
}
