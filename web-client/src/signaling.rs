//! The signaling WebSocket: one socket to `/ws` on the page's origin, reopened with backoff.
//!
//! This module only moves frames: it parses what the relay sends with
//! `peermail_core::wire::signal` and reports [`SocketEvent`]s to one handler. What the frames
//! mean (sign-up, authentication, presence, WebRTC negotiation) is decided by
//! [`Runtime`](crate::runtime::Runtime) and the node.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use peermail_core::wire::signal::{parse_server_frame, ClientFrame, ServerFrame};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::util::log;

/// First reconnect delay; doubled after each failed attempt up to [`MAX_BACKOFF_MS`].
const MIN_BACKOFF_MS: u32 = 1_000;
const MAX_BACKOFF_MS: u32 = 10_000;

/// What happened on the socket.
#[derive(Debug)]
pub enum SocketEvent {
    Opened,
    Frame(ServerFrame),
    /// The socket closed; a reconnect is scheduled unless [`Signaling::stop`] was called.
    Closed,
}

type Handler = Rc<dyn Fn(SocketEvent)>;

/// The socket plus the JS callbacks that must live as long as it does.
struct Live {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(JsValue)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

/// A self-reconnecting signaling connection.
pub struct Signaling {
    url: String,
    handler: Handler,
    live: RefCell<Option<Live>>,
    /// Bumped for every socket; events from an older socket are ignored.
    generation: Cell<u32>,
    /// Delay before the next reconnect.
    backoff: Cell<u32>,
    /// Set by [`stop`](Self::stop): no more reconnects.
    stopped: Cell<bool>,
}

impl Signaling {
    pub fn new(url: String, handler: impl Fn(SocketEvent) + 'static) -> Rc<Self> {
        Rc::new(Signaling {
            url,
            handler: Rc::new(handler),
            live: RefCell::new(None),
            generation: Cell::new(0),
            backoff: Cell::new(MIN_BACKOFF_MS),
            stopped: Cell::new(false),
        })
    }

    /// Opens the socket (closing any previous one without reporting it).
    pub fn connect(self: &Rc<Self>) {
        self.stopped.set(false);
        let gen = self.generation.get().wrapping_add(1);
        self.generation.set(gen);
        retire(self.live.borrow_mut().take());
        let ws = match WebSocket::new(&self.url) {
            Ok(ws) => ws,
            Err(e) => {
                log(&format!("signaling: cannot open {}: {e:?}", self.url));
                return self.schedule_reconnect(gen);
            }
        };
        ws.set_binary_type(BinaryType::Arraybuffer);

        let me = Rc::downgrade(self);
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(me) = me.upgrade() {
                if me.generation.get() == gen {
                    me.backoff.set(MIN_BACKOFF_MS);
                    (me.handler)(SocketEvent::Opened);
                }
            }
        });
        let me = Rc::downgrade(self);
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let Some(me) = me.upgrade() else { return };
            if me.generation.get() != gen {
                return;
            }
            let Some(text) = ev.data().as_string() else {
                return log("signaling: ignoring a binary frame");
            };
            match parse_server_frame(&text) {
                Ok(frame) => (me.handler)(SocketEvent::Frame(frame)),
                Err(e) => log(&format!("signaling: unreadable frame from the relay: {e}")),
            }
        });
        let me = Rc::downgrade(self);
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            let Some(me) = me.upgrade() else { return };
            if me.generation.get() != gen {
                return;
            }
            log(&format!(
                "signaling: closed (code {}, {:?})",
                ev.code(),
                ev.reason()
            ));
            (me.handler)(SocketEvent::Closed);
            me.schedule_reconnect(gen);
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.live.borrow_mut() = Some(Live {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        });
    }

    fn schedule_reconnect(self: &Rc<Self>, gen: u32) {
        if self.stopped.get() {
            return;
        }
        let delay = self.backoff.get();
        self.backoff.set((delay * 2).min(MAX_BACKOFF_MS));
        let me = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(delay).await;
            if let Some(me) = me.upgrade() {
                // Only if nothing else (stop, an explicit reconnect) happened meanwhile.
                if me.generation.get() == gen && !me.stopped.get() {
                    me.connect();
                }
            }
        });
    }

    /// Sends a frame; false if the socket is not open (the frame is dropped).
    pub fn send(&self, frame: &ClientFrame) -> bool {
        let live = self.live.borrow();
        let Some(live) = live.as_ref() else {
            return false;
        };
        if live.ws.ready_state() != WebSocket::OPEN {
            return false;
        }
        live.ws.send_with_str(&frame.encode()).is_ok()
    }

    /// Closes the socket for good (e.g. the session moved to another tab).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.generation.set(self.generation.get().wrapping_add(1));
        retire(self.live.borrow_mut().take());
    }
}

/// Closes a socket and drops its callbacks on a later turn (one of them may be running now).
fn retire(live: Option<Live>) {
    if let Some(old) = live {
        old.ws.set_onclose(None);
        old.ws.set_onmessage(None);
        old.ws.set_onopen(None);
        let _ = old.ws.close();
        wasm_bindgen_futures::spawn_local(async move { drop(old) });
    }
}
