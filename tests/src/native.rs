//! A native signaling client in the test process: registers an account with its own keys
//! and speaks the relay's `/ws` frames directly (`peermail_core::wire::signal`), without a
//! browser. Scenarios use it to play a party the web client would never be — an attacker
//! that deposits forged or tampered sealed envelopes in the relay cache.
//!
//! A reader task owns the receiving half of the WebSocket: it keeps reading (so the relay's
//! heartbeat pings are answered while a scenario drives browsers for minutes) and hands every
//! frame to the client, which keeps frames it was not waiting for in [`NativeClient::seen`].

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use peermail_core::address::Address;
use peermail_core::identity::{auth_message, register_message, EncryptionKey, Identity, PublicKey};
use peermail_core::mail::MessageId;
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ErrorCode, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One signaling session of a native client.
pub struct NativeClient {
    sink: SplitSink<Ws, Message>,
    frames: mpsc::UnboundedReceiver<std::result::Result<ServerFrame, String>>,
    reader: JoinHandle<()>,
    /// The nonce of this session's challenge.
    nonce: String,
    /// Frames that arrived while the client waited for something else, oldest first.
    pub seen: Vec<ServerFrame>,
    /// Upper bound for each wait.
    pub wait: Duration,
}

/// `N` bytes from the OS generator (seeds of identities and of sealing, Message-IDs).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use std::io::Read as _;
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .context("reading /dev/urandom")?;
    Ok(out)
}

impl NativeClient {
    /// Connects to the relay at `relay_url` (`http://HOST:PORT`) and reads its challenge.
    pub async fn connect(relay_url: &str, wait: Duration) -> Result<Self> {
        let ws_url = format!("{}/ws", relay_url.replacen("http://", "ws://", 1));
        let (ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(&ws_url))
            .await
            .with_context(|| format!("connecting to {ws_url}: timed out"))?
            .with_context(|| format!("connecting to {ws_url}"))?;
        let (sink, mut stream) = ws.split();
        let (tx, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let item = match message {
                    Ok(Message::Text(text)) => {
                        parse_server_frame(text.as_str()).map_err(|e| format!("{e}: {text}"))
                    }
                    Ok(Message::Close(c)) => Err(format!("the relay closed the socket: {c:?}")),
                    Ok(_) => continue,
                    Err(e) => Err(format!("reading the socket: {e}")),
                };
                let end = item.is_err();
                if tx.send(item).is_err() || end {
                    break;
                }
            }
        });
        let mut c = Self {
            sink,
            frames,
            reader,
            nonce: String::new(),
            seen: Vec::new(),
            wait,
        };
        match c.next().await? {
            ServerFrame::Challenge { nonce, .. } => c.nonce = nonce,
            other => bail!("expected a challenge first, got {other:?}"),
        }
        Ok(c)
    }

    async fn next(&mut self) -> Result<ServerFrame> {
        match tokio::time::timeout(self.wait, self.frames.recv()).await {
            Err(_) => bail!("no frame from the relay within {}s", self.wait.as_secs()),
            Ok(None) => bail!("the connection to the relay ended"),
            Ok(Some(Err(e))) => bail!("{e}"),
            Ok(Some(Ok(f))) => Ok(f),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: ClientFrame) -> Result<()> {
        self.sink
            .send(Message::text(frame.encode()))
            .await
            .context("sending a frame to the relay")
    }

    /// The first frame (earlier unclaimed ones first) for which `pick` returns `Some`;
    /// other frames are kept in [`NativeClient::seen`].
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<Result<T>>,
    ) -> Result<T> {
        if let Some(i) = self.seen.iter().position(|f| pick(f).is_some()) {
            let f = self.seen.remove(i);
            return pick(&f).expect("matched above");
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = tokio::time::timeout(left, self.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for {what}"))?
                .with_context(|| format!("waiting for {what}"))?;
            match pick(&f) {
                Some(r) => return r,
                None => self.seen.push(f),
            }
        }
    }

    /// Creates the account of `id` (`name@domain`) and signs the session in.
    pub async fn register(&mut self, id: &Identity) -> Result<()> {
        let name = id.address.local().to_string();
        let public_key = id.public_key();
        let signature = id.sign(&register_message(&self.nonce, &name, &public_key));
        self.send(ClientFrame::Register {
            name,
            public_key,
            signature,
        })
        .await?;
        let want = id.address.clone();
        self.wait_for(&format!("registration of {want}"), |f| match f {
            ServerFrame::Registered { address } if *address == want => Some(Ok(())),
            ServerFrame::Error { code, message, .. } => {
                Some(Err(anyhow!("registering {want}: {code:?}: {message}")))
            }
            _ => None,
        })
        .await
    }

    /// Signs the session in as the existing account `id`.
    pub async fn auth(&mut self, id: &Identity) -> Result<()> {
        self.send(ClientFrame::Auth {
            address: id.address.clone(),
            signature: id.sign(&auth_message(&self.nonce, &id.address)),
        })
        .await?;
        let want = id.address.clone();
        self.wait_for(&format!("authentication as {want}"), |f| match f {
            ServerFrame::Authenticated { address } if *address == want => Some(Ok(())),
            ServerFrame::Error { code, message, .. } => Some(Err(anyhow!(
                "authenticating as {want}: {code:?}: {message}"
            ))),
            _ => None,
        })
        .await
    }

    /// The directory's keys of `address`: its signing key and its encryption key, if published.
    pub async fn lookup(
        &mut self,
        address: &Address,
    ) -> Result<(PublicKey, Option<EncryptionKey>)> {
        self.send(ClientFrame::Lookup {
            address: address.clone(),
        })
        .await?;
        self.wait_for(&format!("the keys of {address}"), |f| match f {
            ServerFrame::Keys {
                address: a,
                signing_key,
                encryption_key,
            } if a == address => Some(Ok((
                signing_key.clone(),
                match encryption_key {
                    Some(k) => match EncryptionKey::parse(k) {
                        Ok(k) => Some(k),
                        Err(e) => return Some(Err(anyhow!("{address}'s encryption key: {e}"))),
                    },
                    None => None,
                },
            ))),
            ServerFrame::Error {
                code,
                message,
                about: Some(about),
            } if about.to.as_ref() == Some(address) => {
                Some(Err(anyhow!("looking up {address}: {code:?}: {message}")))
            }
            _ => None,
        })
        .await
    }

    /// Leaves `sealed` in the relay cache for `to` and waits until the relay says it is
    /// stored (`deposited`).
    pub async fn deposit(
        &mut self,
        to: &Address,
        message_id: &MessageId,
        sealed: &[u8],
    ) -> Result<()> {
        match self.try_deposit(to, message_id, sealed).await? {
            Ok(()) => Ok(()),
            Err((code, message)) => {
                bail!("depositing {message_id} for {to}: {code:?}: {message}")
            }
        }
    }

    /// Like [`NativeClient::deposit`], but a refusal by the relay (an error frame about this
    /// mail, e.g. `quota_exceeded`) is an answer, `Ok(Err((code, message)))`, not a failure.
    pub async fn try_deposit(
        &mut self,
        to: &Address,
        message_id: &MessageId,
        sealed: &[u8],
    ) -> Result<std::result::Result<(), (ErrorCode, String)>> {
        self.send(ClientFrame::Deposit {
            to: to.clone(),
            message_id: message_id.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        })
        .await?;
        self.wait_for(
            &format!("the relay to answer the deposit of {message_id}"),
            |f| match f {
                ServerFrame::Deposited {
                    to: t,
                    message_id: m,
                } if t == to && m == message_id => Some(Ok(Ok(()))),
                ServerFrame::Error {
                    code,
                    message,
                    about: Some(about),
                } if about.message_id.as_ref() == Some(message_id) => {
                    Some(Ok(Err((*code, message.clone()))))
                }
                _ => None,
            },
        )
        .await
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
