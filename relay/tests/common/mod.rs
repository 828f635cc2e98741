//! Test scaffolding shared by the relay's WebSocket tests: an in-process relay on
//! 127.0.0.1:0 and a tokio-tungstenite signaling client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peermail_core::address::Address;
use peermail_core::identity::{auth_message, register_message, Identity};
use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ErrorCode, ServerFrame};
use peermail_relay::Config;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for anything the relay should do; generous for a loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The relay router, run in-process on a free port until [`TestRelay::stop`].
pub struct TestRelay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), peermail_relay::Error>>,
}

impl TestRelay {
    pub async fn start(data_dir: &Path) -> TestRelay {
        Self::start_with(data_dir, |_| {}).await
    }

    pub async fn start_with(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, data_dir.to_path_buf());
        config.web_root = data_dir.join("no-web-root");
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(peermail_relay::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestRelay {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("relay stops")
            .unwrap()
            .unwrap();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A signaling connection and the nonce of the challenge it was sent.
pub struct Client {
    pub ws: Ws,
    pub nonce: String,
}

pub fn identity(name: &str, seed: u8) -> Identity {
    Identity::from_seed(Address::new(name, "localhost").unwrap(), [seed; 32])
}

pub fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

impl Client {
    /// Connects and reads the challenge.
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut client = Client {
            ws,
            nonce: String::new(),
        };
        match client.recv().await {
            ServerFrame::Challenge {
                nonce,
                domain,
                inline_limit,
            } => {
                assert_eq!(domain, "localhost");
                assert!(inline_limit.is_some(), "the relay says its inline limit");
                assert_eq!(nonce.len(), 32, "{nonce}");
                client.nonce = nonce;
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, frame: ClientFrame) {
        self.send_text(frame.encode()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// The next signaling frame (WebSocket pings are answered along the way).
    pub async fn recv(&mut self) -> ServerFrame {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("read");
            match message {
                Message::Text(text) => {
                    return parse_server_frame(text.as_str()).expect("server frame")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.recv().await {
            ServerFrame::Error {
                code: c, message, ..
            } if c == code => message,
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Sends a ping and expects its pong as the very next frame: nothing else was queued.
    pub async fn ping(&mut self, nonce: u64) {
        self.send(ClientFrame::Ping { nonce }).await;
        assert_eq!(self.recv().await, ServerFrame::Pong { nonce });
    }

    pub fn register_frame(&self, id: &Identity) -> ClientFrame {
        let name = id.address.local().to_string();
        let public_key = id.public_key();
        let signature = id.sign(&register_message(&self.nonce, &name, &public_key));
        ClientFrame::Register {
            name,
            public_key,
            signature,
        }
    }

    pub fn auth_frame(&self, id: &Identity) -> ClientFrame {
        ClientFrame::Auth {
            address: id.address.clone(),
            signature: id.sign(&auth_message(&self.nonce, &id.address)),
        }
    }

    pub async fn register(&mut self, id: &Identity) {
        self.send(self.register_frame(id)).await;
        assert_eq!(
            self.recv().await,
            ServerFrame::Registered {
                address: id.address.clone()
            }
        );
    }

    pub async fn auth(&mut self, id: &Identity) {
        self.send(self.auth_frame(id)).await;
        assert_eq!(
            self.recv().await,
            ServerFrame::Authenticated {
                address: id.address.clone()
            }
        );
    }

    /// A new connection, registered as `id`.
    pub async fn registered(addr: SocketAddr, id: &Identity) -> Client {
        let mut c = Client::connect(addr).await;
        c.register(id).await;
        c
    }

    /// A new connection, authenticated as the existing account `id`. The frames the relay
    /// sends right after the sign-in (waiting mail, receipts) are left to read.
    pub async fn authenticated(addr: SocketAddr, id: &Identity) -> Client {
        let mut c = Client::connect(addr).await;
        c.auth(id).await;
        c
    }
}

/// `bytes` encrypted as an inline attachment with id `[n; 16]`: its description, its chunk
/// list and its encrypted chunks.
#[allow(dead_code)] // not every test binary seals files
pub fn sealed_file(
    bytes: &[u8],
    n: u8,
) -> (
    peermail_core::attach::AttachmentRef,
    Vec<peermail_core::attach::Hash>,
    Vec<Vec<u8>>,
) {
    use peermail_core::attach::{AttachmentId, FileSealer};
    let mut sealer = FileSealer::new(
        AttachmentId([n; 16]),
        [n.wrapping_add(1); 32],
        "file.bin",
        "application/octet-stream",
        bytes.len() as u64,
    )
    .unwrap();
    let mut chunks = Vec::new();
    while let Some(r) = sealer.next_range() {
        chunks.push(
            sealer
                .push(&bytes[r.start as usize..r.end as usize])
                .unwrap()
                .data,
        );
    }
    let (att, hashes) = sealer.finish(true).unwrap();
    (att, hashes, chunks)
}
