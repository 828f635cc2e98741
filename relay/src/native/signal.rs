//! The native peer's signaling client: one WebSocket session with the relay's `/ws`.
//!
//! [`SignalClient::connect`] opens the socket and reads the challenge. A reader task owns the
//! receiving half and keeps reading for the whole session — so the relay's heartbeat pings
//! are answered even while nobody looks at the frames — and hands every [`ServerFrame`] to
//! an unbounded channel; a writer task owns the sending half and writes the [`ClientFrame`]s
//! queued with [`SignalSender::send`], in order. When the socket ends, the channel yields
//! [`SignalEvent::Closed`] once and then ends.
//!
//! Signing in: [`SignalClient::register`] creates the account of an [`Identity`] (the name
//! and key signed over the session's challenge, as the web client does at sign-up);
//! [`SignalClient::auth`] signs an existing account in. Both wait for the relay's answer.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use peermail_core::identity::{auth_message, register_message, Identity};
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ServerFrame};
use peermail_core::Address;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What the session's reader hands on.
#[derive(Debug, Clone)]
pub enum SignalEvent {
    Frame(ServerFrame),
    /// The socket ended (closed by the relay, or an error); the text says why.
    Closed(String),
}

/// The sending half of a session; cheap to clone. Frames queued after the socket ended are
/// dropped.
#[derive(Debug, Clone)]
pub struct SignalSender {
    tx: mpsc::UnboundedSender<ClientFrame>,
}

impl SignalSender {
    /// Queues `frame` for the relay; false if the session is over.
    pub fn send(&self, frame: ClientFrame) -> bool {
        self.tx.send(frame).is_ok()
    }
}

/// One signaling session (see the module docs).
pub struct SignalClient {
    sender: SignalSender,
    events: mpsc::UnboundedReceiver<SignalEvent>,
    /// The session's challenge nonce.
    pub nonce: String,
    /// The mail domain of the relay (from the challenge).
    pub domain: String,
    /// The relay's inline limit, if it said.
    pub inline_limit: Option<u64>,
    /// Upper bound for each wait of `register` / `auth`.
    pub wait: Duration,
}

/// `ws://HOST:PORT/ws` for a relay at `http://HOST:PORT` (or `https` → `wss`).
pub fn ws_url(relay_url: &str) -> String {
    let base = relay_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}/ws")
}

impl SignalClient {
    /// Connects to the relay at `relay_url` (`http://HOST:PORT`) and reads its challenge.
    pub async fn connect(relay_url: &str, wait: Duration) -> Result<Self> {
        let url = ws_url(relay_url);
        let (ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(&url))
            .await
            .with_context(|| format!("connecting to {url}: timed out"))?
            .with_context(|| format!("connecting to {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientFrame>();
        let (ev_tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Message::text(frame.encode())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => match parse_server_frame(text.as_str()) {
                        Ok(f) => {
                            if ev_tx.send(SignalEvent::Frame(f)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!("signal: unreadable frame ({e}): {text}"),
                    },
                    Some(Ok(Message::Close(c))) => break format!("the relay closed: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("reading the socket: {e}"),
                    None => break "the socket ended".to_string(),
                }
            };
            let _ = ev_tx.send(SignalEvent::Closed(why));
        });
        let first = tokio::time::timeout(wait, events.recv())
            .await
            .map_err(|_| anyhow!("no challenge from the relay within {wait:?}"))?;
        let (nonce, domain, inline_limit) = match first {
            Some(SignalEvent::Frame(ServerFrame::Challenge {
                nonce,
                domain,
                inline_limit,
            })) => (nonce, domain, inline_limit),
            other => bail!("expected a challenge first, got {other:?}"),
        };
        Ok(SignalClient {
            sender: SignalSender { tx: out_tx },
            events,
            nonce,
            domain,
            inline_limit,
            wait,
        })
    }

    /// A sender for this session.
    pub fn sender(&self) -> SignalSender {
        self.sender.clone()
    }

    /// Splits the session into its sender and the stream of what the relay says.
    pub fn into_parts(self) -> (SignalSender, mpsc::UnboundedReceiver<SignalEvent>) {
        (self.sender, self.events)
    }

    /// Waits for the first frame for which `pick` answers; earlier frames are returned too,
    /// so the caller can hand them on.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<Result<T>>,
    ) -> Result<(T, Vec<ServerFrame>)> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut other = Vec::new();
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("timed out waiting for {what}"))?;
            match ev {
                Some(SignalEvent::Frame(f)) => match pick(&f) {
                    Some(r) => return Ok((r?, other)),
                    None => other.push(f),
                },
                Some(SignalEvent::Closed(why)) => bail!("waiting for {what}: {why}"),
                None => bail!("waiting for {what}: the session ended"),
            }
        }
    }

    /// Creates the account of `id` (its local part at this relay) and signs the session in.
    /// Returns the frames that arrived meanwhile (after the `Registered`).
    pub async fn register(&mut self, id: &Identity) -> Result<(Address, Vec<ServerFrame>)> {
        let name = id.address.local().to_string();
        let public_key = id.public_key();
        let signature = id.sign(&register_message(&self.nonce, &name, &public_key));
        self.sender.send(ClientFrame::Register {
            name,
            public_key,
            signature,
        });
        let want = id.address.clone();
        self.wait_for(&format!("the registration of {want}"), |f| match f {
            ServerFrame::Registered { address } if *address == want => Some(Ok(address.clone())),
            ServerFrame::Error { code, message, .. } => {
                Some(Err(anyhow!("registering {want}: {code:?}: {message}")))
            }
            _ => None,
        })
        .await
    }

    /// Signs the session in as the existing account `id`.
    pub async fn auth(&mut self, id: &Identity) -> Result<(Address, Vec<ServerFrame>)> {
        self.sender.send(ClientFrame::Auth {
            address: id.address.clone(),
            signature: id.sign(&auth_message(&self.nonce, &id.address)),
        });
        let want = id.address.clone();
        self.wait_for(&format!("the authentication of {want}"), |f| match f {
            ServerFrame::Authenticated { address } if *address == want => Some(Ok(address.clone())),
            ServerFrame::Error { code, message, .. } => Some(Err(anyhow!(
                "authenticating as {want}: {code:?}: {message}"
            ))),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn ws_urls() {
        assert_eq!(ws_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("https://relay.example"), "wss://relay.example/ws");
    }
}
