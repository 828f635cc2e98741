//! The native peer's WebRTC driver: peer connections and their `mail` data channels, with
//! webrtc-rs. It speaks exactly what `web-client/src/rtc.rs` speaks, so a browser and this
//! peer negotiate with each other through the relay:
//!
//! - a connection is named by `conn`, random hex chosen by the offerer; negotiation messages
//!   are relay `Signal` frames carrying [`SignalPayload`] `Offer { sdp }` / `Answer { sdp }` /
//!   `Candidate { candidate, sdp_mid, sdp_m_line_index }` (trickled, host candidates only, no
//!   ICE servers) / `Bye`;
//! - the offerer creates one ordered data channel labelled `mail`; binary messages only
//!   (each one a postcard peer frame);
//! - `PeerConnected(peer)` when the first channel to `peer` opens, `PeerDisconnected(peer)`
//!   when the last open one closes or an attempt this side started fails (connection failed
//!   or closed, or no open channel [`CONNECT_TIMEOUT`] after `Connect`), so every `Connect`
//!   is answered; `Frame { peer, bytes }` for every binary message.
//!
//! Both sides may connect at once, so several connections to one peer can exist; a peer is
//! connected while at least one of its channels is open.
//!
//! A local description is signalled before any of its candidates: candidates gathered before
//! the offer (or answer) went out wait for it, since the browser drops candidates of a
//! connection it does not know yet.
//!
//! Everything this driver produces — frames for the relay and inputs for the node — goes,
//! in order, into one channel of [`RtcOut`] that the node driver consumes. webrtc-rs calls
//! its event handler on the connection's own driver task; the handler only hands work to a
//! new task, so no connection is closed from inside its own callback.
//!
//! Sending paces on the channel's buffer: [`Rtc::writable`] waits while more than
//! [`HIGH_WATER`] bytes are queued, until the channel's `OnBufferedAmountLow` event (the
//! threshold is [`LOW_WATER`]) — never on a timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use peermail_core::wire::signal::{ClientFrame, SignalPayload};
use peermail_core::{Address, Input};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{
    DataChannel, DataChannelEvent, RTCDataChannelInit, RTCDataChannelState,
};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};

/// A connection with no open channel this long after it was created is given up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The data channel's label.
pub const CHANNEL_LABEL: &str = "mail";
/// Most bytes queued on a channel before a sender waits (4 MiB, less one frame).
pub const HIGH_WATER: usize = 4 * 1024 * 1024 - 64 * 1024;
/// A waiting sender goes on when the channel's queue drained to this.
pub const LOW_WATER: u32 = 1024 * 1024;

/// What the driver produces, in order.
#[derive(Debug, Clone)]
pub enum RtcOut {
    /// A negotiation message for the relay.
    Signal(ClientFrame),
    /// An input for the node.
    Input(Input),
}

/// What [`Rtc::connections`] tells of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn: String,
    pub peer: Address,
    /// Its data channel is open.
    pub open: bool,
    /// This side made the offer.
    pub offerer: bool,
}

type Pc = Arc<dyn PeerConnection>;
type Dc = Arc<dyn DataChannel>;

/// One peer connection and what is known about it.
struct Conn {
    peer: Address,
    /// Set once built (the entry exists from the start, so candidates are kept for it).
    pc: Option<Pc>,
    /// Created by us (offerer) or received through `on_data_channel` (answerer).
    dc: Option<Dc>,
    /// The channel has opened (and not closed).
    open: bool,
    /// We created this connection because the node asked for it.
    offerer: bool,
    /// The remote description is set, so remote candidates can be added.
    remote_set: bool,
    /// Remote candidates that arrived before the remote description.
    pending_remote: Vec<RTCIceCandidateInit>,
    /// Our offer or answer went out, so our candidates can follow.
    local_sent: bool,
    /// Our candidates gathered before that.
    pending_local: Vec<SignalPayload>,
    /// The `mid` of our data m-line (from our local description), for our candidates.
    mid: Option<String>,
    /// Counts the channel's buffered-amount-low events; dropped with the connection, which
    /// wakes every waiting sender.
    low: watch::Sender<u64>,
}

impl Conn {
    fn new(peer: Address, offerer: bool) -> Self {
        Conn {
            peer,
            pc: None,
            dc: None,
            open: false,
            offerer,
            remote_set: false,
            pending_remote: Vec::new(),
            local_sent: false,
            pending_local: Vec::new(),
            mid: None,
            low: watch::channel(0).0,
        }
    }
}

/// All peer connections of this node.
pub struct Rtc {
    me: Weak<Rtc>,
    conns: Mutex<HashMap<String, Conn>>,
    out: mpsc::UnboundedSender<RtcOut>,
    /// The local UDP addresses to bind (a wildcard means every non-loopback interface).
    udp_addrs: Vec<String>,
}

impl Rtc {
    /// A driver sending what it produces to `out`; connections bind `udp_addrs`
    /// (e.g. `["0.0.0.0:0"]`).
    pub fn new(out: mpsc::UnboundedSender<RtcOut>, udp_addrs: Vec<String>) -> Arc<Self> {
        Arc::new_cyclic(|me| Rtc {
            me: me.clone(),
            conns: Mutex::new(HashMap::new()),
            out,
            udp_addrs,
        })
    }

    fn arc(&self) -> Arc<Rtc> {
        self.me
            .upgrade()
            .expect("the driver is alive while its methods run")
    }

    fn input(&self, input: Input) {
        let _ = self.out.send(RtcOut::Input(input));
    }

    fn signal(&self, to: Address, conn: String, payload: SignalPayload) {
        let _ = self
            .out
            .send(RtcOut::Signal(ClientFrame::Signal { to, conn, payload }));
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while a channel to `peer` is open.
    pub fn is_connected(&self, peer: &Address) -> bool {
        self.conns().values().any(|c| &c.peer == peer && c.open)
    }

    /// The connections there are (for tests and logs).
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.conns()
            .iter()
            .map(|(id, c)| ConnInfo {
                conn: id.clone(),
                peer: c.peer.clone(),
                open: c.open,
                offerer: c.offerer,
            })
            .collect()
    }

    /// Builds the connection of the entry `conn`; `None` if that failed (the entry is
    /// closed) or the entry is gone meanwhile (the new connection is closed).
    async fn build_pc(&self, conn: &str) -> Option<Pc> {
        let pc = match self.new_pc(conn).await {
            Ok(pc) => pc,
            Err(e) => {
                tracing::warn!("rtc: cannot create a peer connection: {e}");
                self.close(conn, true);
                return None;
            }
        };
        match self.conns().get_mut(conn) {
            Some(c) => c.pc = Some(pc.clone()),
            None => {
                let pc2 = pc.clone();
                tokio::spawn(async move {
                    let _ = pc2.close().await;
                });
                return None;
            }
        }
        Some(pc)
    }

    async fn new_pc(&self, conn: &str) -> webrtc::error::Result<Pc> {
        let handler = Arc::new(Handler {
            rtc: self.me.clone(),
            conn: conn.to_string(),
        });
        let pc = PeerConnectionBuilder::new()
            // No ICE servers: host candidates only.
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_handler(handler)
            .with_udp_addrs(self.udp_addrs.clone())
            .build()
            .await?;
        Ok(Arc::new(pc))
    }

    /// Starts a connection to `peer` (the node's `Output::Connect`).
    pub fn connect(&self, peer: Address) {
        if self.is_connected(&peer) {
            return self.input(Input::PeerConnected(peer));
        }
        let id = random_hex(8);
        self.conns()
            .insert(id.clone(), Conn::new(peer.clone(), true));
        self.arm_timeout(&id);
        let me = self.arc();
        tokio::spawn(async move {
            let Some(pc) = me.build_pc(&id).await else {
                return;
            };
            let init = RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            };
            let dc = match pc.create_data_channel(CHANNEL_LABEL, Some(init)).await {
                Ok(dc) => dc,
                Err(e) => {
                    tracing::warn!("rtc: cannot create the data channel: {e}");
                    return me.close(&id, true);
                }
            };
            match me.conns().get_mut(&id) {
                Some(c) => c.dc = Some(dc.clone()),
                None => return,
            }
            me.watch_channel(&id, dc);
            let offer = async {
                let offer = pc.create_offer(None).await?;
                let sdp = offer.sdp.clone();
                pc.set_local_description(offer).await?;
                Ok::<String, webrtc::error::Error>(sdp)
            }
            .await;
            match offer {
                Ok(sdp) => me.local_ready(&id, SignalPayload::Offer { sdp }),
                Err(e) => {
                    tracing::warn!("rtc: offer to {peer} failed: {e}");
                    me.close(&id, true);
                }
            }
        });
    }

    /// Sends `bytes` on an open channel to `peer`; false if there is none or it failed.
    pub async fn send(&self, peer: &Address, bytes: &[u8]) -> bool {
        let Some((dc, _)) = self.open_channel(peer) else {
            return false;
        };
        match dc.send(BytesMut::from(bytes)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("rtc: sending to {peer} failed: {e}");
                false
            }
        }
    }

    /// The open channel to `peer` and its low-buffer events, if any.
    fn open_channel(&self, peer: &Address) -> Option<(Dc, watch::Receiver<u64>)> {
        self.conns()
            .values()
            .filter(|c| &c.peer == peer && c.open)
            .find_map(|c| c.dc.clone().map(|dc| (dc, c.low.subscribe())))
    }

    /// Waits until the open channel to `peer` has at most [`HIGH_WATER`] bytes queued; when
    /// it has more, until its buffered-amount-low event (never a timer). Returns how many
    /// times it waited for that event, or `None` when no channel to `peer` is open (or it
    /// closed meanwhile).
    ///
    /// The queue is measured with webrtc-rs's `outstanding_bytes` (handed to `send`, not
    /// yet acknowledged by the peer); the low event is the SCTP stream's buffered amount
    /// falling to [`LOW_WATER`], which `send` raises at once, so a queue above the high
    /// water mark always passes through it.
    pub async fn writable(&self, peer: &Address) -> Option<u32> {
        let mut waited = 0;
        loop {
            let (dc, mut low) = self.open_channel(peer)?;
            // Events from before the check below do not count.
            low.borrow_and_update();
            if dc.outstanding_bytes().await.ok()? <= HIGH_WATER {
                return Some(waited);
            }
            // The connection closing drops the sender: no more waiting.
            low.changed().await.ok()?;
            waited += 1;
        }
    }

    /// A negotiation message from `from` (a relay `Signal` frame).
    pub fn on_signal(&self, from: Address, conn: String, payload: SignalPayload) {
        let known_peer = self.conns().get(&conn).map(|c| c.peer.clone());
        if let Some(p) = &known_peer {
            if *p != from {
                tracing::warn!("rtc: {from} sent a signal for another peer's connection");
                return;
            }
        }
        match payload {
            SignalPayload::Offer { sdp } => {
                if known_peer.is_none() {
                    self.answer(from, conn, sdp);
                }
            }
            SignalPayload::Answer { sdp } => {
                let pc = match self.conns().get(&conn) {
                    Some(c) if c.offerer && !c.remote_set => c.pc.clone(),
                    _ => return,
                };
                let Some(pc) = pc else { return };
                let me = self.arc();
                tokio::spawn(async move {
                    let set = match RTCSessionDescription::answer(sdp) {
                        Ok(desc) => pc.set_remote_description(desc).await,
                        Err(e) => Err(e),
                    };
                    match set {
                        Ok(()) => me.remote_ready(&conn).await,
                        Err(e) => {
                            tracing::warn!("rtc: bad answer from {from}: {e}");
                            me.close(&conn, true);
                        }
                    }
                });
            }
            SignalPayload::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                if candidate.is_empty() {
                    return;
                }
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index: sdp_m_line_index,
                    ..Default::default()
                };
                let pc = {
                    let mut conns = self.conns();
                    let Some(c) = conns.get_mut(&conn) else {
                        return;
                    };
                    match (&c.pc, c.remote_set) {
                        (Some(pc), true) => pc.clone(),
                        _ => {
                            c.pending_remote.push(init);
                            return;
                        }
                    }
                };
                tokio::spawn(async move { add_candidate(&pc, init).await });
            }
            SignalPayload::Bye => {
                if known_peer.is_some() {
                    self.close(&conn, false);
                }
            }
        }
    }

    /// Answers an offer for a new connection `conn` from `peer`.
    fn answer(&self, peer: Address, conn: String, sdp: String) {
        // Registered at once (before the connection exists), so candidates that follow the
        // offer are kept for it; the connection itself is made on the task.
        self.conns()
            .insert(conn.clone(), Conn::new(peer.clone(), false));
        self.arm_timeout(&conn);
        let me = self.arc();
        tokio::spawn(async move {
            let Some(pc) = me.build_pc(&conn).await else {
                return;
            };
            let answer = async {
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                    .await?;
                me.remote_ready(&conn).await;
                let answer = pc.create_answer(None).await?;
                let sdp = answer.sdp.clone();
                pc.set_local_description(answer).await?;
                Ok::<String, webrtc::error::Error>(sdp)
            }
            .await;
            match answer {
                Ok(sdp) => me.local_ready(&conn, SignalPayload::Answer { sdp }),
                Err(e) => {
                    tracing::warn!("rtc: answering {peer} failed: {e}");
                    me.close(&conn, true);
                }
            }
        });
    }

    /// Our offer or answer for `conn` is ready: send it, then the candidates that waited.
    fn local_ready(&self, conn: &str, payload: SignalPayload) {
        let (peer, pending) = {
            let mut conns = self.conns();
            let Some(c) = conns.get_mut(conn) else { return };
            let sdp = match &payload {
                SignalPayload::Offer { sdp } | SignalPayload::Answer { sdp } => sdp.as_str(),
                _ => "",
            };
            c.mid = first_mid(sdp);
            c.local_sent = true;
            let mid = c.mid.clone();
            let mut pending = std::mem::take(&mut c.pending_local);
            for p in &mut pending {
                if let SignalPayload::Candidate { sdp_mid, .. } = p {
                    *sdp_mid = mid.clone();
                }
            }
            (c.peer.clone(), pending)
        };
        self.signal(peer.clone(), conn.to_string(), payload);
        for p in pending {
            self.signal(peer.clone(), conn.to_string(), p);
        }
    }

    /// One of our ICE candidates for `conn`.
    fn local_candidate(&self, conn: &str, candidate: String) {
        let mut conns = self.conns();
        let Some(c) = conns.get_mut(conn) else { return };
        let payload = SignalPayload::Candidate {
            candidate,
            sdp_mid: c.mid.clone(),
            sdp_m_line_index: Some(0),
        };
        if !c.local_sent {
            c.pending_local.push(payload);
            return;
        }
        let peer = c.peer.clone();
        drop(conns);
        self.signal(peer, conn.to_string(), payload);
    }

    /// The remote description of `conn` is set: add the candidates that waited for it.
    async fn remote_ready(&self, conn: &str) {
        let (pc, pending) = {
            let mut conns = self.conns();
            let Some(c) = conns.get_mut(conn) else { return };
            let Some(pc) = c.pc.clone() else { return };
            c.remote_set = true;
            (pc, std::mem::take(&mut c.pending_remote))
        };
        for init in pending {
            add_candidate(&pc, init).await;
        }
    }

    /// Gives up on `conn` if no channel opened in time.
    fn arm_timeout(&self, conn: &str) {
        let me = self.me.clone();
        let conn = conn.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(CONNECT_TIMEOUT).await;
            let Some(me) = me.upgrade() else { return };
            let stale = me.conns().get(&conn).is_some_and(|c| !c.open);
            if stale {
                tracing::info!("rtc: connection {conn} did not open in time");
                me.close(&conn, true);
            }
        });
    }

    /// The answering side got the offerer's data channel.
    async fn adopt_channel(&self, conn: &str, dc: Dc) {
        if dc.label().await.ok().as_deref() != Some(CHANNEL_LABEL) {
            let _ = dc.close().await;
            return;
        }
        let known = match self.conns().get_mut(conn) {
            Some(c) => {
                c.dc = Some(dc.clone());
                true
            }
            None => false,
        };
        if !known {
            let _ = dc.close().await;
            return;
        }
        self.watch_channel(conn, dc.clone());
        if dc.ready_state().await.ok() == Some(RTCDataChannelState::Open) {
            self.opened(conn);
        }
    }

    /// Reads the channel's events until it closes: open, messages, buffer drained.
    fn watch_channel(&self, conn: &str, dc: Dc) {
        let me = self.me.clone();
        let conn = conn.to_string();
        tokio::spawn(async move {
            let _ = dc.set_buffered_amount_low_threshold(LOW_WATER).await;
            while let Some(ev) = dc.poll().await {
                let Some(rtc) = me.upgrade() else { return };
                match ev {
                    DataChannelEvent::OnOpen => rtc.opened(&conn),
                    DataChannelEvent::OnMessage(msg) => {
                        if msg.is_string {
                            tracing::debug!("rtc: ignoring a text message");
                            continue;
                        }
                        let peer = rtc.conns().get(&conn).map(|c| c.peer.clone());
                        if let Some(peer) = peer {
                            rtc.input(Input::Frame {
                                peer,
                                bytes: msg.data.to_vec(),
                            });
                        }
                    }
                    DataChannelEvent::OnBufferedAmountLow => {
                        if let Some(c) = rtc.conns().get(&conn) {
                            c.low.send_modify(|n| *n += 1);
                        }
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            if let Some(rtc) = me.upgrade() {
                rtc.close(&conn, true);
            }
        });
    }

    fn opened(&self, conn: &str) {
        let peer = {
            let mut conns = self.conns();
            let Some(c) = conns.get_mut(conn) else { return };
            if c.open {
                return;
            }
            c.open = true;
            let peer = c.peer.clone();
            tracing::info!("rtc: channel {conn} to {peer} is open");
            let others_open = conns
                .iter()
                .any(|(id, c)| id != conn && c.peer == peer && c.open);
            if others_open {
                return;
            }
            peer
        };
        self.input(Input::PeerConnected(peer));
    }

    /// Closes every connection (the node stops).
    pub fn close_all(&self) {
        let ids: Vec<String> = self.conns().keys().cloned().collect();
        for id in ids {
            self.close(&id, true);
        }
    }

    /// Closes and forgets `conn`, telling the peer (`Bye`) unless it told us.
    fn close(&self, conn: &str, say_bye: bool) {
        let Some(c) = self.conns().remove(conn) else {
            return;
        };
        if say_bye {
            self.signal(c.peer.clone(), conn.to_string(), SignalPayload::Bye);
        }
        if (c.open || c.offerer) && !self.is_connected(&c.peer) {
            self.input(Input::PeerDisconnected(c.peer.clone()));
        }
        // Closed on a task of its own: this may run inside one of the connection's callbacks.
        tokio::spawn(async move {
            if let Some(dc) = &c.dc {
                let _ = dc.close().await;
            }
            if let Some(pc) = &c.pc {
                let _ = pc.close().await;
            }
        });
    }
}

/// The event handler of one connection: hands each event to a task of its own.
struct Handler {
    rtc: Weak<Rtc>,
    conn: String,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(rtc) = self.rtc.upgrade() else {
            return;
        };
        match event.candidate.to_json() {
            Ok(init) if !init.candidate.is_empty() => {
                rtc.local_candidate(&self.conn, init.candidate)
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("rtc: cannot encode a local candidate: {e}"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            let (rtc, conn) = (self.rtc.clone(), self.conn.clone());
            tokio::spawn(async move {
                if let Some(rtc) = rtc.upgrade() {
                    tracing::info!("rtc: connection {conn} is {state}");
                    rtc.close(&conn, true);
                }
            });
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let (rtc, conn) = (self.rtc.clone(), self.conn.clone());
        tokio::spawn(async move {
            if let Some(rtc) = rtc.upgrade() {
                rtc.adopt_channel(&conn, dc).await;
            }
        });
    }
}

async fn add_candidate(pc: &Pc, init: RTCIceCandidateInit) {
    let text = init.candidate.clone();
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!("rtc: candidate refused ({e}): {text}");
    }
}

/// The first `a=mid:` of an SDP (the data channel's m-line: the only one).
fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| m.trim().to_string())
}

/// `bytes` random bytes as hex, from the OS generator.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("the OS random generator works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mid_of_an_sdp() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        assert_eq!(first_mid(sdp).as_deref(), Some("0"));
        assert_eq!(first_mid("v=0\r\n"), None);
    }

    #[test]
    fn conn_ids_are_hex() {
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
