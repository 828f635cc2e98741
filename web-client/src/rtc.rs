//! The WebRTC driver: peer connections and their `mail` data channels.
//!
//! The node says *whom* to connect to ([`Output::Connect`](peermail_core::Output::Connect));
//! this module does the negotiation through the relay (offer / answer / trickled ICE
//! candidates, each in a `Signal` frame naming the connection) and reports back:
//!
//! - `PeerConnected(peer)` when the first data channel to `peer` opens;
//! - `PeerDisconnected(peer)` when the last open one closes, or when an attempt this side
//!   started fails (connection failed or closed, or no open channel [`CONNECT_TIMEOUT_MS`]
//!   after `Connect`), so that every `Connect` is answered;
//! - `Frame { peer, bytes }` for every binary message.
//!
//! Both sides may connect at the same time, so several connections to one peer can exist:
//! they are tracked by connection id (`conn`, random hex chosen by the offerer), and a peer
//! counts as connected while at least one of its channels is open. No ICE servers are
//! configured: host candidates only.
//!
//! JS callbacks never change state directly: they hand the work to a `spawn_local` task, so a
//! connection (and the callbacks it owns) is never dropped while one of them runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use peermail_core::wire::signal::{ClientFrame, SignalPayload};
use peermail_core::{Address, Input};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    MessageEvent, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit, RtcDataChannelState,
    RtcDataChannelType, RtcIceCandidateInit, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::util::{log, random_hex};

/// A connection with no open channel this long after it was created is given up.
pub const CONNECT_TIMEOUT_MS: u32 = 20_000;
/// The data channel's label.
const CHANNEL_LABEL: &str = "mail";

/// Where the driver sends what it produces.
pub struct Hooks {
    /// A frame for the relay (the negotiation messages).
    pub signal: Box<dyn Fn(ClientFrame)>,
    /// An input for the node.
    pub input: Box<dyn Fn(Input)>,
}

/// One RTCPeerConnection and what is known about it.
struct Conn {
    peer: Address,
    pc: RtcPeerConnection,
    /// Created by us (offerer) or received through `ondatachannel` (answerer).
    dc: Option<RtcDataChannel>,
    /// The data channel has fired `open` (and not `close`).
    open: bool,
    /// We created this connection because the node asked for it.
    offerer: bool,
    /// The remote description is set, so ICE candidates can be added.
    remote_set: bool,
    /// Candidates that arrived before the remote description.
    pending: Vec<RtcIceCandidateInit>,
    /// JS callbacks of `pc` and `dc`; dropped with the connection.
    _callbacks: Vec<Closure<dyn FnMut(JsValue)>>,
}

/// All peer connections of this page.
pub struct Rtc {
    conns: RefCell<HashMap<String, Conn>>,
    hooks: Hooks,
}

impl Rtc {
    pub fn new(hooks: Hooks) -> Rc<Self> {
        Rc::new(Rtc {
            conns: RefCell::new(HashMap::new()),
            hooks,
        })
    }

    fn is_connected(&self, peer: &Address) -> bool {
        self.conns
            .borrow()
            .values()
            .any(|c| &c.peer == peer && c.open)
    }

    /// Starts a connection to `peer` (the node's `Output::Connect`).
    pub fn connect(self: &Rc<Self>, peer: Address) {
        if self.is_connected(&peer) {
            return (self.hooks.input)(Input::PeerConnected(peer));
        }
        let id = random_hex(8);
        let pc = match RtcPeerConnection::new() {
            Ok(pc) => pc,
            Err(e) => {
                log(&format!("rtc: cannot create a peer connection: {e:?}"));
                return (self.hooks.input)(Input::PeerDisconnected(peer));
            }
        };
        let init = RtcDataChannelInit::new();
        init.set_ordered(true);
        let dc = pc.create_data_channel_with_data_channel_dict(CHANNEL_LABEL, &init);
        let mut callbacks = self.pc_callbacks(&id, &pc);
        callbacks.extend(self.dc_callbacks(&id, &dc));
        self.conns.borrow_mut().insert(
            id.clone(),
            Conn {
                peer: peer.clone(),
                pc: pc.clone(),
                dc: Some(dc),
                open: false,
                offerer: true,
                remote_set: false,
                pending: Vec::new(),
                _callbacks: callbacks,
            },
        );
        self.arm_timeout(&id);
        let me = self.clone();
        spawn_local(async move {
            match make_offer(&pc).await {
                Ok(sdp) => (me.hooks.signal)(ClientFrame::Signal {
                    to: peer,
                    conn: id,
                    payload: SignalPayload::Offer { sdp },
                }),
                Err(e) => {
                    log(&format!("rtc: offer to {peer} failed: {e:?}"));
                    me.close(&id, true);
                }
            }
        });
    }

    /// Sends `bytes` on an open channel to `peer`; false if there is none.
    pub fn send(&self, peer: &Address, bytes: &[u8]) -> bool {
        let conns = self.conns.borrow();
        for c in conns.values().filter(|c| &c.peer == peer && c.open) {
            if let Some(dc) = &c.dc {
                if dc.ready_state() == RtcDataChannelState::Open
                    && dc.send_with_u8_array(bytes).is_ok()
                {
                    return true;
                }
            }
        }
        false
    }

    /// The open data channel to `peer`, if any.
    fn open_channel(&self, peer: &Address) -> Option<RtcDataChannel> {
        self.conns
            .borrow()
            .values()
            .filter(|c| &c.peer == peer && c.open)
            .filter_map(|c| c.dc.clone())
            .find(|dc| dc.ready_state() == RtcDataChannelState::Open)
    }

    /// Bytes queued on the open channel to `peer` and not yet handed to the network;
    /// `None` if no channel to `peer` is open.
    pub fn buffered(&self, peer: &Address) -> Option<u32> {
        self.open_channel(peer).map(|dc| dc.buffered_amount())
    }

    /// Waits until the channel to `peer` has drained to `low` bytes queued (its
    /// `bufferedamountlow` event), or closed. Never a timer: the browser says when.
    pub async fn drained(&self, peer: &Address, low: u32) {
        let Some(dc) = self.open_channel(peer) else {
            return;
        };
        if dc.buffered_amount() <= low {
            return;
        }
        dc.set_buffered_amount_low_threshold(low);
        let target = dc.clone();
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let opts = web_sys::AddEventListenerOptions::new();
            opts.set_once(true);
            for event in ["bufferedamountlow", "close", "error"] {
                let _ = target.add_event_listener_with_callback_and_add_event_listener_options(
                    event, &resolve, &opts,
                );
            }
        });
        // Drained in the meantime (between the check and the listener): no event comes.
        if dc.buffered_amount() <= low {
            return;
        }
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }

    /// A negotiation message from `from` (a relay `Signal` frame).
    pub fn on_signal(self: &Rc<Self>, from: Address, conn: String, payload: SignalPayload) {
        let known_peer = self.conns.borrow().get(&conn).map(|c| c.peer.clone());
        if let Some(p) = &known_peer {
            if *p != from {
                return log(&format!(
                    "rtc: {from} sent a signal for another peer's connection"
                ));
            }
        }
        match payload {
            SignalPayload::Offer { sdp } => {
                if known_peer.is_none() {
                    self.answer(from, conn, sdp);
                }
            }
            SignalPayload::Answer { sdp } => {
                let pc = match self.conns.borrow().get(&conn) {
                    Some(c) if c.offerer && !c.remote_set => c.pc.clone(),
                    _ => return,
                };
                let me = self.clone();
                spawn_local(async move {
                    match set_remote(&pc, RtcSdpType::Answer, &sdp).await {
                        Ok(()) => me.remote_ready(&conn).await,
                        Err(e) => {
                            log(&format!("rtc: bad answer from {from}: {e:?}"));
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
                let init = RtcIceCandidateInit::new(&candidate);
                init.set_sdp_mid(sdp_mid.as_deref());
                init.set_sdp_m_line_index(sdp_m_line_index);
                let pc = {
                    let mut conns = self.conns.borrow_mut();
                    let Some(c) = conns.get_mut(&conn) else {
                        return;
                    };
                    if !c.remote_set {
                        c.pending.push(init);
                        return;
                    }
                    c.pc.clone()
                };
                spawn_local(async move { add_candidate(&pc, &init).await });
            }
            SignalPayload::Bye => {
                if known_peer.is_some() {
                    self.close(&conn, false);
                }
            }
        }
    }

    /// Answers an offer for a new connection `conn` from `peer`.
    fn answer(self: &Rc<Self>, peer: Address, conn: String, sdp: String) {
        let pc = match RtcPeerConnection::new() {
            Ok(pc) => pc,
            Err(e) => return log(&format!("rtc: cannot create a peer connection: {e:?}")),
        };
        let callbacks = self.pc_callbacks(&conn, &pc);
        self.conns.borrow_mut().insert(
            conn.clone(),
            Conn {
                peer: peer.clone(),
                pc: pc.clone(),
                dc: None,
                open: false,
                offerer: false,
                remote_set: false,
                pending: Vec::new(),
                _callbacks: callbacks,
            },
        );
        self.arm_timeout(&conn);
        let me = self.clone();
        spawn_local(async move {
            let result = async {
                set_remote(&pc, RtcSdpType::Offer, &sdp).await?;
                me.remote_ready(&conn).await;
                let answer = JsFuture::from(pc.create_answer()).await?;
                let sdp = sdp_of(&answer)?;
                let desc = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                desc.set_sdp(&sdp);
                JsFuture::from(pc.set_local_description(&desc)).await?;
                Ok::<String, JsValue>(sdp)
            }
            .await;
            match result {
                Ok(sdp) => (me.hooks.signal)(ClientFrame::Signal {
                    to: peer,
                    conn,
                    payload: SignalPayload::Answer { sdp },
                }),
                Err(e) => {
                    log(&format!("rtc: answering {peer} failed: {e:?}"));
                    me.close(&conn, true);
                }
            }
        });
    }

    /// The remote description of `conn` is set: add the candidates that waited for it.
    async fn remote_ready(&self, conn: &str) {
        let (pc, pending) = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(conn) else { return };
            c.remote_set = true;
            (c.pc.clone(), std::mem::take(&mut c.pending))
        };
        for init in pending {
            add_candidate(&pc, &init).await;
        }
    }

    /// Gives up on `conn` if no channel opened in time.
    fn arm_timeout(self: &Rc<Self>, conn: &str) {
        let me = Rc::downgrade(self);
        let conn = conn.to_string();
        spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(CONNECT_TIMEOUT_MS).await;
            let Some(me) = me.upgrade() else { return };
            let stale = me.conns.borrow().get(&conn).is_some_and(|c| !c.open);
            if stale {
                log(&format!("rtc: connection {conn} did not open in time"));
                me.close(&conn, true);
            }
        });
    }

    fn pc_callbacks(
        self: &Rc<Self>,
        conn: &str,
        pc: &RtcPeerConnection,
    ) -> Vec<Closure<dyn FnMut(JsValue)>> {
        let mut out = Vec::new();

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let on_ice = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let ev: RtcPeerConnectionIceEvent = ev.unchecked_into();
            let Some(c) = ev.candidate() else { return };
            if c.candidate().is_empty() {
                return;
            }
            let payload = SignalPayload::Candidate {
                candidate: c.candidate(),
                sdp_mid: c.sdp_mid(),
                sdp_m_line_index: c.sdp_m_line_index(),
            };
            let id = id.clone();
            with(&me, move |me| {
                let peer = me.conns.borrow().get(&id).map(|c| c.peer.clone());
                if let Some(to) = peer {
                    (me.hooks.signal)(ClientFrame::Signal {
                        to,
                        conn: id,
                        payload,
                    });
                }
            });
        });
        pc.set_onicecandidate(Some(on_ice.as_ref().unchecked_ref()));
        out.push(on_ice);

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let pc2 = pc.clone();
        let on_state = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let state = pc2.connection_state();
            if matches!(
                state,
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
            ) {
                let id = id.clone();
                with(&me, move |me| {
                    log(&format!("rtc: connection {id} is {state:?}"));
                    me.close(&id, true)
                });
            }
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        out.push(on_state);

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let on_channel = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let ev: RtcDataChannelEvent = ev.unchecked_into();
            let dc = ev.channel();
            let id = id.clone();
            with(&me, move |me| me.adopt_channel(&id, dc));
        });
        pc.set_ondatachannel(Some(on_channel.as_ref().unchecked_ref()));
        out.push(on_channel);
        out
    }

    /// The answering side got the offerer's data channel.
    fn adopt_channel(self: &Rc<Self>, conn: &str, dc: RtcDataChannel) {
        if dc.label() != CHANNEL_LABEL {
            return dc.close();
        }
        let callbacks = self.dc_callbacks(conn, &dc);
        let already_open = dc.ready_state() == RtcDataChannelState::Open;
        {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(conn) else {
                return dc.close();
            };
            c.dc = Some(dc);
            c._callbacks.extend(callbacks);
        }
        if already_open {
            self.opened(conn);
        }
    }

    fn dc_callbacks(
        self: &Rc<Self>,
        conn: &str,
        dc: &RtcDataChannel,
    ) -> Vec<Closure<dyn FnMut(JsValue)>> {
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        let mut out = Vec::new();

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let id = id.clone();
            with(&me, move |me| me.opened(&id));
        });
        dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        out.push(on_open);

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let id = id.clone();
            with(&me, move |me| me.close(&id, true));
        });
        dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        out.push(on_close);

        let me = Rc::downgrade(self);
        let id = conn.to_string();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let ev: MessageEvent = ev.unchecked_into();
            let data = ev.data();
            if !data.is_instance_of::<js_sys::ArrayBuffer>() {
                return log("rtc: ignoring a non-binary message");
            }
            let bytes = js_sys::Uint8Array::new(&data).to_vec();
            let id = id.clone();
            with(&me, move |me| {
                let peer = me.conns.borrow().get(&id).map(|c| c.peer.clone());
                if let Some(peer) = peer {
                    (me.hooks.input)(Input::Frame { peer, bytes });
                }
            });
        });
        dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        out.push(on_message);
        out
    }

    fn opened(&self, conn: &str) {
        let peer = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns.get_mut(conn) else { return };
            if c.open {
                return;
            }
            c.open = true;
            c.peer.clone()
        };
        let others_open = self
            .conns
            .borrow()
            .iter()
            .any(|(id, c)| id != conn && c.peer == peer && c.open);
        if !others_open {
            (self.hooks.input)(Input::PeerConnected(peer));
        }
    }

    /// Closes every connection (this tab stops being the account's session).
    pub fn close_all(&self) {
        let ids: Vec<String> = self.conns.borrow().keys().cloned().collect();
        for id in ids {
            self.close(&id, true);
        }
    }

    /// Closes and forgets `conn`, telling the peer (`Bye`) unless it told us.
    fn close(&self, conn: &str, say_bye: bool) {
        let Some(c) = self.conns.borrow_mut().remove(conn) else {
            return;
        };
        if let Some(dc) = &c.dc {
            dc.set_onclose(None);
            dc.close();
        }
        c.pc.set_onconnectionstatechange(None);
        c.pc.close();
        if say_bye {
            (self.hooks.signal)(ClientFrame::Signal {
                to: c.peer.clone(),
                conn: conn.to_string(),
                payload: SignalPayload::Bye,
            });
        }
        let still_connected = self.is_connected(&c.peer);
        if (c.open || c.offerer) && !still_connected {
            (self.hooks.input)(Input::PeerDisconnected(c.peer.clone()));
        }
        // The callbacks may be running right now: drop them on a later turn.
        spawn_local(async move { drop(c) });
    }
}

/// Runs `f` on a later turn, if the driver still exists.
fn with(me: &Weak<Rtc>, f: impl FnOnce(Rc<Rtc>) + 'static) {
    let me = me.clone();
    spawn_local(async move {
        if let Some(me) = me.upgrade() {
            f(me)
        }
    });
}

fn sdp_of(desc: &JsValue) -> Result<String, JsValue> {
    js_sys::Reflect::get(desc, &JsValue::from_str("sdp"))?
        .as_string()
        .ok_or_else(|| JsValue::from_str("session description without sdp"))
}

async fn make_offer(pc: &RtcPeerConnection) -> Result<String, JsValue> {
    let offer = JsFuture::from(pc.create_offer()).await?;
    let sdp = sdp_of(&offer)?;
    let desc = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    desc.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&desc)).await?;
    Ok(sdp)
}

async fn set_remote(pc: &RtcPeerConnection, kind: RtcSdpType, sdp: &str) -> Result<(), JsValue> {
    let desc = RtcSessionDescriptionInit::new(kind);
    desc.set_sdp(sdp);
    JsFuture::from(pc.set_remote_description(&desc)).await?;
    Ok(())
}

async fn add_candidate(pc: &RtcPeerConnection, init: &RtcIceCandidateInit) {
    if let Err(e) =
        JsFuture::from(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(init))).await
    {
        log(&format!("rtc: candidate refused: {e:?}"));
    }
}
