//! The Yew UI. Element ids, classes and `data-*` attributes follow `docs/ui-contract.md`
//! exactly: the end-to-end tests select on them.

use std::cell::Cell;
use std::rc::Rc;

use peermail_core::groups::{expand_recipients, Group};
use peermail_core::store::{DeliveryState, InboxRecord, OutgoingMail};
use peermail_core::wire::signal::PresenceStatus;
use peermail_core::{Address, Draft, MessageId, Node};
use web_sys::{HtmlInputElement, HtmlTextAreaElement};
use yew::prelude::*;

use crate::compose_files::{seal_all, use_file_drop, ComposeFiles, FilesAction, PickedFiles};
use crate::runtime::{ConnStatus, Phase, Runtime};
use crate::state::{Action, Folder, Forwarded, Prefill, State};
use crate::text::{
    draft_matches, forward_body, forward_subject, join, mail_matches, not_forwarded, presence_str,
    recipient_line, sent_attachment_status, subject_or_placeholder, summary,
};
use crate::util::{full_date, log, page_hostname, short_date, stable};

/// The whole page.
#[function_component(App)]
pub fn app() -> Html {
    let rt: Rc<Rc<Runtime>> = use_memo((), |_| Runtime::new());
    // The draft whose form was open when the page went away opens again.
    let state = use_reducer(|| match crate::draft::open() {
        Some(kept) => State {
            composing: true,
            prefill: kept.prefill,
            draft_id: kept.id,
            ..State::default()
        },
        None => State::default(),
    });
    {
        let rt = (*rt).clone();
        let dispatcher = state.dispatcher();
        use_effect_with((), move |_| {
            let changes = dispatcher.clone();
            rt.set_on_change(move || changes.dispatch(Action::Refresh));
            // A click on a new-mail notification opens that mail (or the Inbox).
            let opener = rt.clone();
            crate::notify::listen_for_opens(move |id| {
                open_from_notification(&opener, &dispatcher, id.as_deref())
            });
            crate::shortcuts::install();
            wasm_bindgen_futures::spawn_local(rt.start());
            || ()
        });
    }
    {
        // A page opened by a click on a notification opens its mail once the mailbox is in.
        let running = matches!(rt.phase(), Phase::Running);
        let rt = (*rt).clone();
        let dispatcher = state.dispatcher();
        use_effect_with(running, move |running| {
            if *running {
                if let Some(id) = crate::notify::take_open_request() {
                    open_from_notification(&rt, &dispatcher, Some(&id));
                }
            }
            || ()
        });
    }
    let rt: &Rc<Runtime> = &rt;
    match rt.phase() {
        Phase::Loading => {
            html! { <div class="splash"><div class="brand">{ "Peermail" }</div><p>{ "Loading…" }</p></div> }
        }
        Phase::Waiting(what) => html! {
            <div class="splash"><div class="brand">{ "Peermail" }</div><p id="storage-waiting">{ what }</p></div>
        },
        Phase::Broken(why) => html! {
            <div class="splash"><div class="brand">{ "Peermail" }</div><p class="error">{ why }</p></div>
        },
        Phase::SignUp => html! { <SignUpView rt={RtHandle(rt.clone())} version={state.version} /> },
        Phase::Running => main_view(rt, &state),
    }
}

/// Opens the mail a notification announced (marked read), or the Inbox for `None` or a
/// mail no longer there.
fn open_from_notification(
    rt: &Rc<Runtime>,
    dispatcher: &UseReducerDispatcher<State>,
    id: Option<&str>,
) {
    // The folder that holds the mail (it may have been archived since), else the Inbox.
    let found = id.and_then(MessageId::parse).and_then(|id| {
        let archived = rt.with_node(|node| node.received(&id).map(|r| r.archived))??;
        Some((id, archived))
    });
    let Some((id, archived)) = found else {
        dispatcher.dispatch(Action::OpenFolder(Folder::Inbox));
        return;
    };
    dispatcher.dispatch(Action::OpenFolder(if archived {
        Folder::Archive
    } else {
        Folder::Inbox
    }));
    rt.mark_read(id.clone());
    dispatcher.dispatch(Action::Select(id));
}

/// Lets a runtime travel in props (compared by identity).
#[derive(Clone)]
pub struct RtHandle(pub Rc<Runtime>);

impl PartialEq for RtHandle {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Properties, PartialEq)]
pub struct SignUpProps {
    pub rt: RtHandle,
    /// Runtime version, so the view re-renders when the runtime changes.
    pub version: u64,
}

/// First visit: choose a name.
#[function_component(SignUpView)]
fn sign_up_view(props: &SignUpProps) -> Html {
    let rt = props.rt.0.clone();
    let name_ref = use_node_ref();
    let onsubmit = {
        let rt = rt.clone();
        let name_ref = name_ref.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if let Some(input) = name_ref.cast::<HtmlInputElement>() {
                rt.sign_up(&input.value());
            }
        })
    };
    let domain = rt.domain().unwrap_or_else(page_hostname);
    let busy = rt.signing_up();
    html! {
        <div class="signup">
            <form class="signup-card" {onsubmit}>
                <div class="brand big">{ "Peermail" }</div>
                <h1>{ "Choose your address" }</h1>
                <p class="hint">
                    { "Mail travels straight from browser to browser. Your keys are made here and stay in this browser." }
                </p>
                <div class="address-field">
                    <input id="signup-name" ref={name_ref} type="text" placeholder="yourname"
                        autocomplete="off" autocapitalize="off" spellcheck="false" maxlength="32" />
                    <span class="domain">{ format!("@{domain}") }</span>
                </div>
                <button id="signup-submit" class="primary" type="submit" disabled={busy}>
                    { if busy { "Creating…" } else { "Create address" } }
                </button>
                <div id="signup-error" class="error">{ rt.signup_error().unwrap_or_default() }</div>
                <div class="signup-status">
                    { match rt.status() {
                        ConnStatus::Online | ConnStatus::Connecting => "",
                        _ => "Waiting for the relay…",
                    } }
                </div>
            </form>
        </div>
    }
}

fn main_view(rt: &Rc<Runtime>, state: &UseReducerHandle<State>) -> Html {
    let node_view = rt.with_node(|node| {
        let header = header(rt, node);
        let sidebar = sidebar(rt, node, state);
        let list = message_list(rt, node, state);
        let pane = if state.composing {
            // Keyed by the draft: another draft is another form.
            html! { <ComposeForm key={state.draft_id.clone()} rt={RtHandle(rt.clone())} error={state.compose_error.clone()} prefill={state.prefill.clone()} draft_id={state.draft_id.clone()} drafts_shown={state.folder == Folder::Drafts} dispatcher={DispatcherHandle(state.dispatcher())} /> }
        } else {
            reading_pane(rt, node, state)
        };
        html! {
            <div class="app">
                { header }
                { notice(rt) }
                <div class="main">
                    { sidebar }
                    { list }
                    { pane }
                </div>
            </div>
        }
    });
    node_view.unwrap_or_default()
}

fn header(rt: &Rc<Runtime>, node: &Node) -> Html {
    let status = rt.status();
    let label = match status {
        ConnStatus::Online => "online",
        ConnStatus::Connecting => "connecting…",
        ConnStatus::Offline => "offline — reconnecting",
        ConnStatus::Replaced => "open in another tab",
    };
    html! {
        <header class="topbar">
            <div class="brand">{ "Peermail" }</div>
            <div class="me">
                <span id="my-address">{ node.address().to_string() }</span>
                <span id="connection-status" class="status" data-status={status.as_str()}>
                    <span class="dot"></span>{ label }
                </span>
                { notify_toggle(rt) }
            </div>
        </header>
    }
}

/// `#notify-toggle`: turns desktop notifications of new mail on and off ([`crate::notify`]).
fn notify_toggle(rt: &Rc<Runtime>) -> Html {
    use crate::notify::{self, Status};
    let status = notify::status();
    let (text, title) = match status {
        Status::Unsupported => return html! {},
        Status::Off => (
            "Notify me of new mail",
            "Show a desktop notification, with the sender and subject, when mail arrives \
             while this page is out of sight",
        ),
        Status::On => (
            "Notifications on",
            "New mail is announced while this page is out of sight. Click to stop.",
        ),
        Status::Blocked => (
            "Notifications blocked",
            "This browser blocks notifications for this page: allow them in its site settings",
        ),
    };
    let onclick = {
        let rt = rt.clone();
        Callback::from(move |_: MouseEvent| {
            let rt = rt.clone();
            match status {
                Status::On => {
                    notify::turn_off();
                    rt.changed();
                }
                _ => wasm_bindgen_futures::spawn_local(async move {
                    notify::turn_on().await;
                    rt.changed();
                }),
            }
        })
    };
    html! {
        <button id="notify-toggle" type="button" class="link notify-toggle"
            data-state={status.as_str()} {title} {onclick}
            disabled={status == Status::Blocked}>{ text }</button>
    }
}

fn notice(rt: &Rc<Runtime>) -> Html {
    let Some(text) = rt.notice() else {
        return html! {};
    };
    let dismiss = {
        let rt = rt.clone();
        Callback::from(move |_: MouseEvent| rt.dismiss_notice())
    };
    let take_over = (rt.status() == ConnStatus::Replaced).then(|| {
        let rt = rt.clone();
        let onclick = Callback::from(move |_: MouseEvent| rt.take_over());
        html! { <button class="link" {onclick}>{ "Use it here instead" }</button> }
    });
    html! {
        <div class="notice-bar">
            <span id="notice">{ text }</span>
            { for take_over }
            <button class="link dismiss" onclick={dismiss} title="Dismiss">{ "×" }</button>
        </div>
    }
}

fn sidebar(rt: &Rc<Runtime>, node: &Node, state: &UseReducerHandle<State>) -> Html {
    let unread = node.unread_count();
    if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
        let title = if unread == 0 {
            "Peermail".to_string()
        } else {
            format!("({unread}) Peermail")
        };
        if doc.title() != title {
            doc.set_title(&title);
        }
    }
    let pending = node.outgoing().iter().filter(|o| o.is_pending()).count();
    let count = |n: usize| if n == 0 { String::new() } else { n.to_string() };
    let folders = [
        (Folder::Inbox, count(unread)),
        (Folder::Outbox, count(pending)),
        (Folder::Sent, String::new()),
        (Folder::Drafts, count(crate::draft::shown().len())),
        (Folder::Archive, String::new()),
    ];
    let compose = {
        let state = state.clone();
        Callback::from(move |_: MouseEvent| state.dispatch(Action::Compose))
    };
    html! {
        <aside class="sidebar">
            <button id="compose-button" class="primary compose-button" onclick={compose} title="Compose (c)" aria-keyshortcuts="c">{ "✎ Compose" }</button>
            <nav class="folders">
                { for folders.into_iter().map(|(f, n)| {
                    let onclick = { let state = state.clone(); Callback::from(move |_: MouseEvent| state.dispatch(Action::OpenFolder(f))) };
                    let active = (state.folder == f && !state.composing).then_some("active");
                    html! {
                        <button class={classes!("folder", active)} data-folder={f.key()} {onclick}>
                            <span class="name">{ f.title() }</span>
                            <span class="count">{ n }</span>
                        </button>
                    }
                }) }
            </nav>
            { contacts(rt, node, state) }
            { groups(rt, node, state) }
            { storage_node(rt, node) }
        </aside>
    }
}

fn contacts(rt: &Rc<Runtime>, node: &Node, state: &UseReducerHandle<State>) -> Html {
    let input_ref = NodeRef::default();
    let add = {
        let rt = rt.clone();
        let state = state.clone();
        let input_ref = input_ref.clone();
        move || {
            let Some(input) = input_ref.cast::<HtmlInputElement>() else {
                return;
            };
            let text = input.value();
            if text.trim().is_empty() {
                return;
            }
            match text.trim().parse::<Address>() {
                Ok(a) => {
                    rt.add_contact(a);
                    input.set_value("");
                    state.dispatch(Action::ContactFailed(None));
                }
                Err(e) => {
                    state.dispatch(Action::ContactFailed(Some(format!("{}: {e}", text.trim()))))
                }
            }
        }
    };
    let onsubmit = {
        let add = add.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            add()
        })
    };
    let onclick = Callback::from(move |e: MouseEvent| {
        e.prevent_default();
        add()
    });
    html! {
        <section class="contacts">
            <h2>{ "Contacts" }</h2>
            <form class="contact-add" {onsubmit}>
                <input id="contact-add-input" ref={input_ref} type="text" placeholder="name@host" autocomplete="off" />
                <button id="contact-add-button" type="button" {onclick}>{ "Add" }</button>
            </form>
            { stable(state.contact_error.clone().map(|e| html! { <div class="error small">{ e }</div> })) }
            <ul class="contact-list">
                { for node.contacts().map(|a| {
                    let status = presence_str(node.presence(a));
                    let remove = { let rt = rt.clone(); let a = a.clone(); Callback::from(move |_: MouseEvent| rt.remove_contact(a.clone())) };
                    html! {
                        <li class="contact" data-address={a.to_string()} title={format!("{a} is {status}")}>
                            <span class="presence-dot" data-status={status}></span>
                            <span class="address">{ a.to_string() }</span>
                            <button class="link remove" title="Remove contact" onclick={remove}>{ "×" }</button>
                        </li>
                    }
                }) }
            </ul>
        </section>
    }
}

/// Address-book groups: save one (a name and its members; an existing name, in any case,
/// is replaced), see each with its members, remove one. Compose expands the names.
fn groups(rt: &Rc<Runtime>, node: &Node, state: &UseReducerHandle<State>) -> Html {
    let name_ref = NodeRef::default();
    let members_ref = NodeRef::default();
    let save = {
        let rt = rt.clone();
        let state = state.clone();
        let (name_ref, members_ref) = (name_ref.clone(), members_ref.clone());
        move || {
            let (Some(name), Some(members)) = (
                name_ref.cast::<HtmlInputElement>(),
                members_ref.cast::<HtmlInputElement>(),
            ) else {
                return;
            };
            match Group::parse(&name.value(), &members.value()) {
                Ok(g) => {
                    rt.put_group(g);
                    name.set_value("");
                    members.set_value("");
                    state.dispatch(Action::GroupFailed(None));
                }
                Err(e) => state.dispatch(Action::GroupFailed(Some(e.to_string()))),
            }
        }
    };
    let onsubmit = {
        let save = save.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            save()
        })
    };
    let onclick = Callback::from(move |e: MouseEvent| {
        e.prevent_default();
        save()
    });
    html! {
        <section class="groups" id="groups">
            <h2>{ "Groups" }</h2>
            <form class="group-add" {onsubmit}>
                <input id="group-name" ref={name_ref} type="text" placeholder="group name" autocomplete="off" maxlength="40" />
                <input id="group-members" ref={members_ref} type="text" placeholder="bob@host, carol@host" autocomplete="off" />
                <button id="group-add" type="submit" {onclick}>{ "Save group" }</button>
            </form>
            // Always present (empty without an error): an element appearing beside the form
            // would make yew rebuild the form and lose what is typed in it.
            <div id="group-error" class="error small">{ state.group_error.clone().unwrap_or_default() }</div>
            <ul id="group-list" class="group-list">
                { for node.groups().map(|g| {
                    let remove = { let rt = rt.clone(); let name = g.name().to_string(); Callback::from(move |_: MouseEvent| rt.remove_group(name.clone())) };
                    html! {
                        <li class="group" data-name={g.name().to_string()}>
                            <span class="group-name">{ g.name().to_string() }</span>
                            <button class="link remove remove-group" title="Remove group" onclick={remove}>{ "×" }</button>
                            <div class="group-members small">{ join(g.members()) }</div>
                        </li>
                    }
                }) }
            </ul>
        </section>
    }
}

/// The storage-node panel: this account's node and whether it is available, and the form
/// that pairs a node by the code it printed.
fn storage_node(rt: &Rc<Runtime>, node: &Node) -> Html {
    let input_ref = NodeRef::default();
    let pair = {
        let rt = rt.clone();
        let input_ref = input_ref.clone();
        move || {
            let Some(input) = input_ref.cast::<HtmlInputElement>() else {
                return;
            };
            let code = input.value();
            if code.trim().is_empty() {
                return;
            }
            input.set_value("");
            rt.pair_node(code.trim().to_string());
        }
    };
    let onsubmit = {
        let pair = pair.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            pair()
        })
    };
    let onclick = Callback::from(move |e: MouseEvent| {
        e.prevent_default();
        pair()
    });
    let pairing = rt.pairing();
    let unpair = |ask: bool| {
        let rt = rt.clone();
        Callback::from(move |e: MouseEvent| {
            e.prevent_default();
            rt.ask_unpair_node(ask)
        })
    };
    let confirm_unpair = {
        let rt = rt.clone();
        Callback::from(move |e: MouseEvent| {
            e.prevent_default();
            rt.unpair_node()
        })
    };
    let status = node.own_node().map(|n| {
        let available = node.presence(n) == Some(PresenceStatus::Online);
        let link = if node.is_linked(n) { "open" } else { "closed" };
        let (state, dot) = if available {
            ("available", "online")
        } else {
            ("unavailable", "offline")
        };
        html! {
            <div id="node-status" class="node-status" data-status={state} data-link={link}>
                <span class="presence-dot" data-status={dot}></span>
                <span class="address">{ n.to_string() }</span>
                <span class="small">{ format!(" — {state}") }</span>
            </div>
        }
    });
    let unpair_button = node.own_node().filter(|_| !pairing.confirm_unpair).map(|_| html! {
        <button id="unpair-node" type="button" onclick={unpair(true)} disabled={pairing.busy}>{ "Unpair" }</button>
    });
    let confirm = node.own_node().filter(|_| pairing.confirm_unpair).map(|n| html! {
        <div id="unpair-confirm" class="small">
            { format!("Unpair {n}? The node stops and can no longer sign in as your storage node. \
                       Files kept only on it cannot be opened from here until you pair it again \
                       (they stay on its disk). ") }
            <button id="unpair-yes" type="button" onclick={confirm_unpair}>{ "Unpair" }</button>
            <button id="unpair-no" type="button" onclick={unpair(false)}>{ "Cancel" }</button>
        </div>
    });
    html! {
        <section class="storage-node" id="storage-node">
            <h2>{ "Storage node" }</h2>
            { status.unwrap_or_else(|| html! {
                <p class="hint small" id="node-status" data-status="none">
                    { "No storage node. Run “relay node --relay-url <this relay>” on an always-on machine and enter the code it prints." }
                </p>
            }) }
            { stable(unpair_button) }
            { stable(confirm) }
            <form class="contact-add" {onsubmit}>
                <input id="pair-code" ref={input_ref} type="text" placeholder="pairing code" autocomplete="off" inputmode="numeric" />
                <button id="pair-node" type="button" {onclick} disabled={pairing.busy}>{ "Pair" }</button>
            </form>
            { stable(pairing.error.map(|e| html! { <div id="pair-error" class="error small">{ e }</div> })) }
            { stable(pairing.paired.map(|n| html! { <div id="pair-done" class="small">{ format!("Paired: {n} is your storage node.") }</div> })) }
            { stable(pairing.unpaired.map(|n| html! { <div id="unpair-done" class="small">{ format!("Unpaired: {n} is no longer your storage node.") }</div> })) }
        </section>
    }
}

/// Whether the outgoing mail `o` shows in `folder` (Outbox while pending, Sent after).
fn in_folder(o: &OutgoingMail, folder: Folder) -> bool {
    match folder {
        Folder::Outbox => o.is_pending(),
        Folder::Sent => !o.is_pending(),
        Folder::Inbox | Folder::Drafts | Folder::Archive => false,
    }
}

/// The received mail the Inbox (or, `archived`, Archive) lists matching `search`, newest
/// first.
fn received_in<'n>(node: &'n Node, archived: bool, search: &str) -> Vec<&'n InboxRecord> {
    let mut v = node.received_in(archived);
    v.retain(|r| mail_matches(&r.mail, search));
    v
}

/// The Message-IDs of the mail the list shows: of `folder`, matching `search`, in the
/// list's order.
fn folder_ids(node: &Node, folder: Folder, search: &str) -> Vec<MessageId> {
    match folder {
        Folder::Inbox | Folder::Archive => received_in(node, folder == Folder::Archive, search)
            .iter()
            .map(|r| r.mail.message_id.clone())
            .collect(),
        Folder::Drafts => Vec::new(),
        Folder::Outbox | Folder::Sent => node
            .outgoing()
            .iter()
            .filter(|o| in_folder(o, folder) && mail_matches(&o.mail, search))
            .map(|o| o.mail.message_id.clone())
            .collect(),
    }
}

fn message_list(rt: &Rc<Runtime>, node: &Node, state: &UseReducerHandle<State>) -> Html {
    let select = |id: &MessageId, mark_read: bool| {
        let state = state.clone();
        let rt = rt.clone();
        let id = id.clone();
        Callback::from(move |_: MouseEvent| {
            if mark_read {
                rt.mark_read(id.clone());
            }
            state.dispatch(Action::Select(id.clone()))
        })
    };
    let selected = |id: &MessageId| (state.selected.as_ref() == Some(id)).then_some("selected");
    let rows: Vec<Html> = match state.folder {
        Folder::Inbox | Folder::Archive => received_in(node, state.folder == Folder::Archive, &state.search)
            .into_iter()
            .map(|r: &InboxRecord| {
                let id = &r.mail.message_id;
                html! {
                    <div class={classes!("message-row", (!r.read).then_some("unread"), selected(id))}
                        data-message-id={id.to_string()} onclick={select(id, !r.read)}>
                        <span class="from">{ r.mail.from.to_string() }</span>
                        <span class="subject">{ subject_or_placeholder(&r.mail.subject) }</span>
                        <span class="date">{ short_date(r.mail.date) }</span>
                        <span class="snippet">{ r.mail.body.lines().next().unwrap_or_default().to_string() }</span>
                    </div>
                }
            })
            .collect(),
        Folder::Drafts => crate::draft::shown()
            .into_iter()
            .filter(|d| {
                let p = &d.prefill;
                draft_matches(&p.to, &p.cc, &p.subject, &p.body, &state.search)
            })
            .map(|d| {
                let to = [d.prefill.to.trim(), d.prefill.cc.trim()]
                    .into_iter()
                    .filter(|f| !f.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
                let first_line = d.prefill.body.trim().lines().next().unwrap_or_default();
                // Its files first: "📎 2 files · " (names in the tooltip).
                let (snippet, names) = match d.prefill.files.len() {
                    0 => (first_line.to_string(), None),
                    n => {
                        let names: Vec<&str> = d.prefill.files.iter().map(|f| f.name.as_str()).collect();
                        let files = if n == 1 { "1 file".to_string() } else { format!("{n} files") };
                        (format!("📎 {files} · {first_line}"), Some(names.join(", ")))
                    }
                };
                let id = d.id.clone();
                // The draft as kept now (this row may have been drawn before its last input).
                let onclick = {
                    let (state, d) = (state.clone(), d.clone());
                    Callback::from(move |_: MouseEvent| {
                        let kept = crate::draft::get(&d.id).unwrap_or_else(|| d.clone());
                        state.dispatch(Action::OpenDraft(kept))
                    })
                };
                let open = (state.composing && state.draft_id == id).then_some("selected");
                html! {
                    <div class={classes!("message-row", "draft-row", open)} data-draft-id={id} {onclick}>
                        <span class="to">{ if to.is_empty() { "(no recipient)".to_string() } else { to } }</span>
                        <span class="subject">{ subject_or_placeholder(&d.prefill.subject) }</span>
                        <span class="date">{ short_date(d.saved_at) }</span>
                        <span class="snippet" title={names}>{ snippet }</span>
                    </div>
                }
            })
            .collect(),
        folder => node
            .outgoing()
            .into_iter()
            .filter(|o| in_folder(o, folder) && mail_matches(&o.mail, &state.search))
            .map(|o| {
                let id = &o.mail.message_id;
                let st = summary(o);
                let kind = if st.starts_with("delivered") && !st.contains("failed") {
                    "ok"
                } else if st.contains("failed") {
                    "bad"
                } else {
                    "wait"
                };
                html! {
                    <div class={classes!("message-row", selected(id))} data-message-id={id.to_string()} onclick={select(id, false)}>
                        <span class="to">{ join(&o.mail.recipients()) }</span>
                        <span class="subject">{ subject_or_placeholder(&o.mail.subject) }</span>
                        <span class="date">{ short_date(o.mail.date) }</span>
                        <span class={classes!("status", kind)}>{ st }</span>
                    </div>
                }
            })
            .collect(),
    };
    let empty = rows.is_empty().then(|| {
        let text = match state.folder {
            _ if !state.search.trim().is_empty() => {
                format!("No mail here matches “{}”.", state.search.trim())
            }
            Folder::Inbox => "No mail yet.".into(),
            Folder::Outbox => "Nothing waiting to go out.".into(),
            Folder::Sent => "Nothing sent yet.".into(),
            Folder::Drafts => "No drafts.".into(),
            Folder::Archive => "Nothing archived.".into(),
        };
        html! { <div class="empty">{ text }</div> }
    });
    let on_search = {
        let state = state.clone();
        Callback::from(move |e: InputEvent| {
            let input: web_sys::HtmlInputElement = e.target_unchecked_into();
            state.dispatch(Action::Search(input.value()));
        })
    };
    // Every unread mail of the Inbox at once.
    let any_unread = node.unread_count() > 0;
    let mark_all_read = (state.folder == Folder::Inbox && any_unread).then(|| {
        let rt = rt.clone();
        let onclick = Callback::from(move |_: MouseEvent| rt.mark_all_read());
        html! { <button id="mark-all-read" class="link" type="button" {onclick}>{ "Mark all read" }</button> }
    });
    html! {
        <section class="list-pane">
            <div class="pane-head">
                <h2 class="pane-title">{ state.folder.title() }</h2>
                { for mark_all_read }
            </div>
            <input id="search" type="search" placeholder="Search mail" aria-label="Search mail" aria-keyshortcuts="/"
                value={state.search.clone()} oninput={on_search} />
            <div id="message-list">{ for rows }</div>
            // One child whether shown or not (see `stable`): the search field above keeps
            // its focus when the list empties.
            { stable(empty) }
        </section>
    }
}

/// A reply to `mail`: to its sender (and, for "reply all", everyone else but me in Cc).
fn reply_prefill(mail: &peermail_core::Mail, me: &Address, all: bool) -> Prefill {
    let subject = if mail.subject.to_ascii_lowercase().starts_with("re:") {
        mail.subject.clone()
    } else {
        format!("Re: {}", mail.subject)
    };
    let quoted: String = mail.body.lines().map(|l| format!("> {l}\n")).collect();
    let cc: Vec<Address> = if all {
        mail.recipients()
            .into_iter()
            .filter(|a| a != me && *a != mail.from)
            .collect()
    } else {
        Vec::new()
    };
    Prefill {
        to: mail.from.to_string(),
        cc: join(&cc),
        subject,
        body: format!(
            "\n\nOn {}, {} wrote:\n{quoted}",
            full_date(mail.date),
            mail.from
        ),
        in_reply_to: Some(mail.message_id.clone()),
        ..Prefill::default()
    }
}

/// Opens a forward of `mail`: its text below the person's, and those of its files this
/// browser holds whole, read back out of the chunk store, attached again (for a received
/// mail, the ones fetched completely; the sender holds all of its own).
fn forward(rt: &Rc<Runtime>, state: &UseReducerHandle<State>, mail: &peermail_core::Mail) {
    let holds: Vec<bool> = rt
        .with_node(|n| {
            // Mail this browser sent (to others, or to itself too) has all its files here.
            let sent = n
                .outgoing()
                .iter()
                .any(|o| o.mail.message_id == mail.message_id);
            let received = !sent
                && n.inbox()
                    .iter()
                    .any(|r| r.mail.message_id == mail.message_id);
            mail.attachments
                .iter()
                .map(|a| !received || n.has_whole_file(&a.id))
                .collect()
        })
        .unwrap_or_default();
    state.dispatch(Action::Forwarding);
    let (rt, state, mail) = (rt.clone(), state.clone(), mail.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let mut forwarded = Forwarded {
            of: Some(mail.message_id.clone()),
            ..Forwarded::default()
        };
        for (att, held) in mail.attachments.iter().zip(holds) {
            let file = if held {
                rt.attachment_blob(att).await.and_then(|blob| {
                    let parts = js_sys::Array::of1(&blob);
                    let opts = web_sys::FilePropertyBag::new();
                    opts.set_type(&att.mime);
                    web_sys::File::new_with_blob_sequence_and_options(&parts, &att.name, &opts)
                        .map_err(|e| format!("{e:?}"))
                })
            } else {
                Err("not here".to_string())
            };
            match file {
                Ok(file) => forwarded.files.push(file),
                Err(e) => {
                    log(&format!("forwarding {}: {e}", att.name));
                    forwarded.missing.push(att.name.clone());
                }
            }
        }
        state.dispatch(Action::ComposeWith(Prefill {
            subject: forward_subject(&mail.subject),
            body: forward_body(&mail, &full_date(mail.date)),
            forwarded,
            ..Prefill::default()
        }));
    });
}

fn reading_pane(rt: &Rc<Runtime>, node: &Node, state: &UseReducerHandle<State>) -> Html {
    let Some(id) = state.selected.as_ref() else {
        return html! { <section id="reading-pane" class="reading-pane"><div class="empty">{ "Select a mail to read it." }</div></section> };
    };
    let received_record = node.received(id);
    let archived = received_record.is_some_and(|r| r.archived);
    let inbox = received_record.map(|r| r.mail.clone());
    let outgoing = node
        .outgoing()
        .into_iter()
        .find(|o| &o.mail.message_id == id)
        .cloned();
    let Some(mail) = inbox
        .clone()
        .or_else(|| outgoing.as_ref().map(|o| o.mail.clone()))
    else {
        return html! { <section id="reading-pane" class="reading-pane"><div class="empty">{ "This mail is gone." }</div></section> };
    };
    let field = |label: &str, class: &'static str, value: String| {
        let empty = value.is_empty().then_some("empty");
        html! {
            <div class={classes!("field", empty)}><span class="label">{ label }</span><span class={class}>{ value }</span></div>
        }
    };
    let statuses = match (&outgoing, inbox.is_some()) {
        (Some(o), false) => html! {
            <ul class="recipients">
                { for o.recipients.iter().map(|r| {
                    let (st, text) = recipient_line(&r.address, &r.state, node.refusal(&mail.message_id, &r.address));
                    // Sent and delivered instants (sender's clock, ms): benchmarks read them.
                    let delivered_at = match r.state {
                        DeliveryState::Delivered { at } => Some(at.to_string()),
                        _ => None,
                    };
                    html! {
                        <li class={classes!("recipient-status", st)} data-address={r.address.to_string()} data-state={st}
                            data-sent-at={mail.date.to_string()} data-delivered-at={delivered_at}>{ text }</li>
                    }
                }) }
            </ul>
        },
        _ => html! {},
    };
    // Delete acts on the folder shown: a mail sent to oneself is in both.
    let received = matches!(state.folder, Folder::Inbox | Folder::Archive) && inbox.is_some();
    // As in other three-pane mail clients, when the mail leaves the list (`leave_list`
    // runs what takes it out: deleted, archived or moved back to the Inbox) the next mail
    // of the list as it was at the click (or the one before, at the end) opens in its
    // place; a received one is read then (a no-op for one read already).
    let leave_list = {
        let (rt, state, id) = (rt.clone(), state.clone(), id.clone());
        move |take_out: &dyn Fn()| {
            let next = rt
                .with_node(|node| {
                    let ids = folder_ids(node, state.folder, &state.search);
                    let at = ids.iter().position(|m| *m == id)?;
                    ids.get(at + 1)
                        .or_else(|| at.checked_sub(1).and_then(|j| ids.get(j)))
                        .cloned()
                })
                .flatten();
            take_out();
            if let (Some(n), true) = (&next, received) {
                rt.mark_read(n.clone());
            }
            state.dispatch(Action::LeftList { next });
        }
    };
    let delete_blocked = if received {
        None
    } else {
        node.may_delete_sent(id).err()
    };
    let ask_delete = |ask: bool| {
        let state = state.clone();
        Callback::from(move |_: MouseEvent| state.dispatch(Action::AskDelete(ask)))
    };
    let delete_button = html! {
        <button id="delete-mail" class="delete" type="button" onclick={ask_delete(true)}
            disabled={delete_blocked.is_some() || state.confirm_delete}
            title={delete_blocked.as_ref().map_or_else(|| "Delete (#)".to_string(), |r| format!("Cannot be deleted yet: {r}"))}
            aria-keyshortcuts="#">{ "Delete" }</button>
    };
    let reply_buttons = inbox.is_some().then(|| {
        let reply = |all: bool| {
            let state = state.clone();
            let p = reply_prefill(&mail, node.address(), all);
            Callback::from(move |_: MouseEvent| state.dispatch(Action::ComposeWith(p.clone())))
        };
        let mark_unread = {
            let (rt, state, id) = (rt.clone(), state.clone(), id.clone());
            Callback::from(move |_: MouseEvent| {
                rt.mark_unread(id.clone());
                // Back to the list: the open mail would be read again.
                state.dispatch(Action::CloseMail);
            })
        };
        html! {
            <>
                <button class="reply" onclick={reply(false)} title="Reply (r)" aria-keyshortcuts="r">{ "↩ Reply" }</button>
                <button class="reply-all" onclick={reply(true)} title="Reply all (a)" aria-keyshortcuts="a">{ "Reply all" }</button>
                <button id="mark-unread" type="button" onclick={mark_unread} title="Mark unread (Shift+U)" aria-keyshortcuts="Shift+U">{ "Mark unread" }</button>
            </>
        }
    });
    // Out of the Inbox into the Archive, or back: for the received mail of those lists.
    let archive_button = received.then(|| {
        let (rt, id, leave_list) = (rt.clone(), id.clone(), leave_list.clone());
        let onclick = Callback::from(move |_: MouseEvent| {
            leave_list(&|| {
                if archived {
                    rt.unarchive(id.clone());
                } else {
                    rt.archive(id.clone());
                }
            })
        });
        if archived {
            html! { <button id="unarchive-mail" type="button" {onclick} title="Back into the Inbox (e)" aria-keyshortcuts="e">{ "Move to Inbox" }</button> }
        } else {
            html! { <button id="archive-mail" type="button" {onclick} title="Out of the Inbox; kept in Archive (e)" aria-keyshortcuts="e">{ "Archive" }</button> }
        }
    });
    // A mail still on its way can be stopped.
    let cancel_button = outgoing
        .as_ref()
        .filter(|o| o.is_pending() && !o.cancelled && !received)
        .map(|_| {
            let (rt, id) = (rt.clone(), id.clone());
            let onclick = Callback::from(move |_: MouseEvent| rt.cancel_sending(id.clone()));
            html! {
                <button id="cancel-sending" type="button" {onclick}
                    title="Recipients it has not reached do not get it; a copy waiting at the relay is called back">
                    { "Cancel sending" }</button>
            }
        });
    let forward_button = {
        // Reading large files back takes a moment.
        let busy = state.forwarding;
        let label = if busy { "Preparing…" } else { "Forward" };
        let (rt, state, mail) = (rt.clone(), state.clone(), mail.clone());
        let onclick = Callback::from(move |_: MouseEvent| forward(&rt, &state, &mail));
        html! { <button class="forward" type="button" {onclick} disabled={busy} title="Forward (f)" aria-keyshortcuts="f">{ label }</button> }
    };
    let actions = html! {
        <div class="mail-actions">
            { for reply_buttons }
            { for archive_button }
            { for cancel_button }
            { forward_button }
            { delete_button }
        </div>
    };
    let confirm = (state.confirm_delete && delete_blocked.is_none()).then(|| {
        let text = if received {
            let kept = node
                .own_node()
                .filter(|_| !mail.attachments.is_empty())
                .map(|n| format!(" Copies of its files on your storage node ({n}) are deleted there too."))
                .unwrap_or_default();
            // Its sender is told, so that its browser stops keeping them for this person.
            let missing: Vec<&str> = mail
                .attachments
                .iter()
                .filter(|a| !node.has_whole_file(&a.id))
                .map(|a| a.name.as_str())
                .collect();
            let told = if !missing.is_empty() && mail.from != *node.address() {
                format!(
                    " {} is told that you no longer need {}.",
                    mail.from,
                    missing.join(", ")
                )
            } else {
                String::new()
            };
            format!("Delete this mail and its files from this browser for good?{kept}{told}")
        } else {
            let waiting: Vec<String> = outgoing
                .iter()
                .flat_map(|o| {
                    mail.attachments.iter().filter_map(move |a| {
                        // Those the relay keeps the file for still get it from there.
                        let who: Vec<Address> = o
                            .still_needed_by(a.id)
                            .into_iter()
                            .filter(|r| !o.relay_has.contains(&(a.id, (*r).clone())))
                            .cloned()
                            .collect();
                        (!who.is_empty())
                            .then(|| format!("{} has not fetched {} yet", join(&who), a.name))
                    })
                })
                .collect();
            let warning = if waiting.is_empty() {
                String::new()
            } else {
                format!(
                    " {}; once the mail is deleted, this browser no longer sends it.",
                    waiting.join("; ")
                )
            };
            format!("Delete this mail from Sent for good?{warning}")
        };
        let confirm_delete = {
            let (rt, id, leave_list) = (rt.clone(), id.clone(), leave_list.clone());
            Callback::from(move |_: MouseEvent| {
                leave_list(&|| {
                    if received {
                        rt.delete_received(id.clone());
                    } else {
                        rt.delete_sent(id.clone());
                    }
                })
            })
        };
        html! {
            <div id="delete-confirm" class="delete-confirm small">
                <span class="text">{ text }</span>
                <button id="delete-yes" class="danger" type="button" onclick={confirm_delete}>{ "Delete" }</button>
                <button id="delete-no" type="button" onclick={ask_delete(false)}>{ "Cancel" }</button>
            </div>
        }
    });
    html! {
        <section id="reading-pane" class="reading-pane">
            { actions }
            { stable(confirm) }
            <h1 class="subject">{ subject_or_placeholder(&mail.subject) }</h1>
            <div class="headers">
                { field("From", "from", mail.from.to_string()) }
                { field("To", "to", join(&mail.to)) }
                { field("Cc", "cc", join(&mail.cc)) }
                { field("Date", "date", full_date(mail.date)) }
            </div>
            { statuses }
            <div class="body">{ mail.body.clone() }</div>
            <crate::attachments_view::Attachments rt={RtHandle(rt.clone())} attachments={mail.attachments.clone()}
                downloads={inbox.is_some().then(|| mail.attachments.iter().map(|a| node.download(&a.id)).collect::<Vec<_>>())}
                sent_status={outgoing.as_ref().filter(|_| inbox.is_none()).map(|o| mail.attachments.iter().map(|a| sent_attachment_status(o, a.id)).collect::<Vec<_>>()).unwrap_or_default()}
                sending={if inbox.is_none() { mail.attachments.iter().map(|a| rt.sending_progress(a).into_iter().map(|s| { let stopped = node.sending_stopped(a.id, &s.to); (s, stopped) }).collect::<Vec<_>>()).collect::<Vec<_>>() } else { Vec::new() }} />
        </section>
    }
}

/// Lets a reducer dispatcher travel in props.
#[derive(Clone)]
pub struct DispatcherHandle(pub UseReducerDispatcher<State>);

impl PartialEq for DispatcherHandle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Properties, PartialEq)]
pub struct ComposeProps {
    pub rt: RtHandle,
    pub error: Option<String>,
    pub prefill: Prefill,
    /// The draft this form writes ([`crate::draft`]).
    pub draft_id: String,
    /// The Drafts folder is the list shown beside the form: its row of this draft is
    /// redrawn as the draft changes.
    pub drafts_shown: bool,
    pub dispatcher: DispatcherHandle,
}

/// Hands a finished draft to the node and closes the form (its kept draft `draft_id`
/// goes), or shows why it was refused.
fn send_draft(
    rt: &Rc<Runtime>,
    dispatch: &UseReducerDispatcher<State>,
    draft: Draft,
    draft_id: &str,
) -> bool {
    match rt.send(draft) {
        Ok(id) => {
            forget_draft(rt, draft_id);
            let pending = rt
                .with_node(|n| {
                    n.outgoing()
                        .iter()
                        .any(|o| o.mail.message_id == id && o.is_pending())
                })
                .unwrap_or(true);
            let folder = if pending {
                Folder::Outbox
            } else {
                Folder::Sent
            };
            dispatch.dispatch(Action::Sent { folder, id });
            true
        }
        Err(e) => {
            dispatch.dispatch(Action::ComposeFailed(e));
            false
        }
    }
}

/// Drops draft `id` and the files kept with it (its mail was sent, or it was discarded).
fn forget_draft(rt: &Rc<Runtime>, id: &str) {
    crate::draft::remove(id);
    if let Some(db) = rt.database() {
        let id = id.to_string();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = crate::draft::drop_files(&db, &id).await {
                log(&format!(
                    "the files of draft {id} could not be dropped: {e}"
                ));
            }
        });
    }
}

/// Keeps `files` as draft `id`'s files (see [`crate::draft::keep_files`]; calls take
/// effect in the order they are made).
fn keep_draft_files(rt: &Rc<Runtime>, id: &str, files: &PickedFiles) {
    let Some(db) = rt.database() else { return };
    let (rt, id) = (rt.clone(), id.to_string());
    let (keyed, preserved) = (files.keyed(), files.preserved_keys());
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = crate::draft::keep_files(&db, &id, &keyed, &preserved).await {
            rt.tell(format!(
                "The files of a draft could not be kept with it ({e}); they stay attached \
                 while its form is open."
            ));
        }
    });
}

/// The Compose form's text fields.
#[derive(Clone)]
struct FormFields {
    to: NodeRef,
    cc: NodeRef,
    subject: NodeRef,
    body: NodeRef,
}

impl FormFields {
    /// What the form holds now, as a draft: these fields, `files`, and what the form
    /// answers or forwards (from its prefill, `base`).
    fn read(&self, base: &Prefill, files: &PickedFiles) -> Prefill {
        let input = |r: &NodeRef| {
            r.cast::<HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default()
        };
        Prefill {
            to: input(&self.to),
            cc: input(&self.cc),
            subject: input(&self.subject),
            body: self
                .body
                .cast::<HtmlTextAreaElement>()
                .map(|t| t.value())
                .unwrap_or_default(),
            in_reply_to: base.in_reply_to.clone(),
            forwarded: Forwarded {
                files: Vec::new(),
                ..base.forwarded.clone()
            },
            // Until the draft's own files are back, the list it has (what the form shows
            // meanwhile is not what the draft keeps).
            files: if files.restored {
                files.kept()
            } else {
                base.files.clone()
            },
        }
    }
}

/// The Compose form.
#[function_component(ComposeForm)]
fn compose_form(props: &ComposeProps) -> Html {
    let to_ref = use_node_ref();
    let cc_ref = use_node_ref();
    let subject_ref = use_node_ref();
    let body_ref = use_node_ref();
    let fields = FormFields {
        to: to_ref.clone(),
        cc: cc_ref.clone(),
        subject: subject_ref.clone(),
        body: body_ref.clone(),
    };
    let files = use_reducer(PickedFiles::default);
    // Percent of the attachments encrypted, while sealing them for a Send.
    let sealing = use_state(|| None::<u8>);
    let drop = use_file_drop(files.dispatcher(), sealing.is_some());
    // A forward's files are attached as if picked.
    {
        let add = files.dispatcher();
        use_effect_with(props.prefill.forwarded.clone(), move |f| {
            if !f.files.is_empty() {
                add.dispatch(FilesAction::Forwarded(f.files.clone()));
            }
        });
    }
    // A kept draft's files are read back (until then its files are not written, so that
    // the empty list the form starts with does not replace them).
    {
        let (rt, add) = (props.rt.0.clone(), files.dispatcher());
        let (id, listed) = (props.draft_id.clone(), props.prefill.files.clone());
        use_effect_with((), move |_| {
            if listed.is_empty() {
                add.dispatch(FilesAction::Restore(Vec::new()));
                return;
            }
            wasm_bindgen_futures::spawn_local(async move {
                let kept = match rt.database() {
                    Some(db) => crate::draft::kept_files(&db, &id).await,
                    None => Err("storage is not open".to_string()),
                };
                match kept {
                    Ok(mut kept) => {
                        // Only those the draft lists (one removed just before the page
                        // went away may still be stored; it goes with the next change).
                        kept.retain(|(key, _)| listed.iter().any(|l| l.key == *key));
                        let lost: Vec<String> = listed
                            .iter()
                            .filter(|l| kept.iter().all(|(key, _)| *key != l.key))
                            .map(|l| l.name.clone())
                            .collect();
                        add.dispatch(FilesAction::Restore(kept));
                        if !lost.is_empty() {
                            rt.tell(format!(
                                "This draft's files {} were not kept; attach them again.",
                                lost.join(", ")
                            ));
                        }
                    }
                    // The draft keeps listing its files (and they stay stored); Send
                    // goes without them.
                    Err(e) => {
                        add.dispatch(FilesAction::Unreadable(listed));
                        rt.tell(format!(
                            "This draft's files could not be read ({e}); a mail sent from \
                             it goes without them."
                        ));
                    }
                }
            });
        });
    }
    // The fields start from the prefill once; after that they are the person's. (A `value`
    // attribute would put the prefill back each time the form re-renders, e.g. when a file
    // is added.)
    {
        let refs = (
            to_ref.clone(),
            cc_ref.clone(),
            subject_ref.clone(),
            body_ref.clone(),
        );
        use_effect_with(props.prefill.clone(), move |p| {
            let set = |r: &NodeRef, v: &str| {
                if let Some(i) = r.cast::<HtmlInputElement>() {
                    i.set_value(v);
                } else if let Some(t) = r.cast::<HtmlTextAreaElement>() {
                    t.set_value(v);
                }
            };
            set(&refs.0, &p.to);
            set(&refs.1, &p.cc);
            set(&refs.2, &p.subject);
            set(&refs.3, &p.body);
        });
    }
    // Cleared when the form closes: a sealing in progress then no longer shows in it (and
    // its mail is sent all the same).
    let open = use_memo((), |_| Rc::new(Cell::new(true)));
    // The draft's files are being read back: it is not sent without them.
    let files_pending = !files.restored;
    // Set by Cancel: a sealing in progress stops and nothing is sent.
    let cancelled = use_memo((), |_| Rc::new(Cell::new(false)));
    {
        let open = (*open).clone();
        use_effect_with((), move |_| move || open.set(false));
    }
    // Every change of the files is kept with the draft, once the draft's own files are
    // back. A form whose draft is not listed yet lists it when the person adds or removes
    // a file (a forward's files alone do not).
    {
        let (rt, dispatch) = (props.rt.0.clone(), props.dispatcher.0.clone());
        let (id, base, fields, files) = (
            props.draft_id.clone(),
            props.prefill.clone(),
            fields.clone(),
            files.clone(),
        );
        let (sending, drafts_shown) = (sealing.is_some(), props.drafts_shown);
        use_effect_with((files.restored, files.kept()), move |(restored, kept)| {
            // Its mail is being sent: the draft stays as it was sent (see `onsubmit`).
            if sending {
                return;
            }
            let listed = crate::draft::get(&id);
            let changed = listed.as_ref().map(|d| &d.prefill.files) != Some(kept);
            if *restored && changed && (listed.is_some() || files.touched) {
                if crate::draft::save(&id, &fields.read(&base, &files)) || drafts_shown {
                    dispatch.dispatch(Action::Refresh);
                }
                keep_draft_files(&rt, &id, &files);
            }
        });
    }
    let onsubmit = {
        let rt = props.rt.0.clone();
        let dispatch = props.dispatcher.0.clone();
        let base = props.prefill.clone();
        let draft_id = props.draft_id.clone();
        let fields = fields.clone();
        let files = files.clone();
        let sealing = sealing.clone();
        let open = (*open).clone();
        let cancelled = (*cancelled).clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            // Not while the draft's files are being read back (Send is disabled then).
            if sealing.is_some() || files_pending {
                return;
            }
            let typed = fields.read(&base, &files);
            // Group names expand to their members here: a draft holds addresses only.
            let parse = |field: &str, text: &str| {
                rt.with_node(|n| expand_recipients(text, n.groups()))
                    .unwrap_or_else(|| Ok(Vec::new()))
                    .map_err(|e| format!("{field}: {e}"))
            };
            let draft = (|| {
                let to = parse("To", &typed.to)?;
                let cc = parse("Cc", &typed.cc)?;
                if to.is_empty() && cc.is_empty() {
                    return Err("add at least one recipient".to_string());
                }
                Ok(Draft {
                    to,
                    cc,
                    subject: typed.subject.clone(),
                    body: typed.body.clone(),
                    in_reply_to: typed.in_reply_to.clone(),
                    ..Draft::default()
                })
            })();
            let mut draft = match draft {
                Ok(d) => d,
                Err(e) => return dispatch.dispatch(Action::ComposeFailed(e)),
            };
            let handles = files.handles();
            if handles.is_empty() {
                send_draft(&rt, &dispatch, draft, &draft_id);
                return;
            }
            // Seal the files into the chunk store first, then send as without files. That
            // goes on if the person leaves the form meanwhile (only Cancel stops it), so the
            // draft leaves Drafts now (it could be sent twice from there) and comes back if
            // the mail cannot be sent, or if the page goes away first.
            sealing.set(Some(0));
            crate::draft::save(&draft_id, &typed);
            // A forward sent untouched was no draft yet: its files are kept now, so that
            // they are back with it if it cannot be sent.
            if files.restored {
                keep_draft_files(&rt, &draft_id, &files);
            }
            crate::draft::set_sending(&draft_id, true);
            dispatch.dispatch(Action::Refresh);
            let (rt, dispatch, sealing, open, cancelled, draft_id) = (
                rt.clone(),
                dispatch.clone(),
                sealing.clone(),
                open.clone(),
                cancelled.clone(),
                draft_id.clone(),
            );
            wasm_bindgen_futures::spawn_local(async move {
                let progress = {
                    let (sealing, open, cancelled, draft_id) = (
                        sealing.clone(),
                        open.clone(),
                        cancelled.clone(),
                        draft_id.clone(),
                    );
                    let (mut shown, mut marked) = (0, crate::util::now());
                    move |done: u64, total: u64| {
                        let pct = (done * 100).checked_div(total).unwrap_or(100) as u8;
                        if pct != shown && open.get() {
                            shown = pct;
                            sealing.set(Some(pct));
                        }
                        // Still being sent: kept out of Drafts (see `draft::Kept::sending_at`).
                        let now = crate::util::now();
                        if now.saturating_sub(marked) >= 1_000 && !cancelled.get() {
                            marked = now;
                            crate::draft::set_sending(&draft_id, true);
                        }
                        !cancelled.get()
                    }
                };
                let subject = draft.subject.clone();
                let failed = match seal_all(&handles, rt.inline_limit(), progress).await {
                    // Cancelled meanwhile: nothing is sent.
                    Ok(sealed) if cancelled.get() => {
                        sealed.discard().await;
                        return;
                    }
                    Ok(sealed) if open.get() => {
                        draft.attachments = sealed.refs.clone();
                        if send_draft(&rt, &dispatch, draft, &draft_id) {
                            sealed.into_refs();
                            return;
                        }
                        sealing.set(None);
                        sealed.discard().await;
                        None
                    }
                    // The form was left meanwhile: sent all the same.
                    Ok(sealed) => {
                        draft.attachments = sealed.refs.clone();
                        match rt.send(draft) {
                            Ok(_) => {
                                forget_draft(&rt, &draft_id);
                                sealed.into_refs();
                                return;
                            }
                            Err(e) => {
                                sealed.discard().await;
                                Some(e)
                            }
                        }
                    }
                    Err(_) if cancelled.get() => return,
                    Err(e) if open.get() => {
                        sealing.set(None);
                        dispatch.dispatch(Action::ComposeFailed(e));
                        None
                    }
                    Err(e) => Some(e),
                };
                // Not sent: the draft is back in Drafts, with its files.
                crate::draft::set_sending(&draft_id, false);
                dispatch.dispatch(Action::Refresh);
                if let Some(e) = failed {
                    rt.tell(format!(
                        "“{}” was not sent: {e}. It is back in Drafts.",
                        subject_or_placeholder(&subject)
                    ));
                }
            });
        })
    };
    // Cancel discards the draft.
    let cancel = {
        let rt = props.rt.0.clone();
        let dispatch = props.dispatcher.0.clone();
        let draft_id = props.draft_id.clone();
        let cancelled = (*cancelled).clone();
        Callback::from(move |_: MouseEvent| {
            cancelled.set(true);
            forget_draft(&rt, &draft_id);
            dispatch.dispatch(Action::CancelCompose)
        })
    };
    // While the form is open its draft is the one the page opens again after a reload; a
    // form closed another way than Send or Cancel leaves its draft in the Drafts folder.
    use_effect_with(props.draft_id.clone(), |id| {
        crate::draft::set_open(id);
        let id = id.clone();
        move || crate::draft::closed(&id)
    });
    // Every change is kept as the draft (see `crate::draft`).
    let oninput = {
        let rt = props.rt.0.clone();
        let draft_id = props.draft_id.clone();
        let dispatch = props.dispatcher.0.clone();
        let fields = fields.clone();
        let base = props.prefill.clone();
        let files = files.clone();
        let sealing = sealing.clone();
        let drafts_shown = props.drafts_shown;
        Callback::from(move |_: InputEvent| {
            // Its mail is being sent (the fields are read-only meanwhile): the draft stays
            // as it was sent (see `onsubmit`).
            if sealing.is_some() {
                return;
            }
            let counted = crate::draft::save(&draft_id, &fields.read(&base, &files));
            // The Drafts folder's count changed: the draft was listed (or, emptied, taken
            // out), and its files go with it (a forward's, which were not kept before).
            if counted && files.restored {
                keep_draft_files(&rt, &draft_id, &files);
            }
            if counted || drafts_shown {
                dispatch.dispatch(Action::Refresh);
            }
        })
    };
    let p = &props.prefill;
    let title = if p.in_reply_to.is_some() {
        "Reply"
    } else if p.forwarded.of.is_some() {
        "Forward"
    } else {
        "New message"
    };
    let note = not_forwarded(&p.forwarded.missing);
    let busy = sealing.is_some();
    html! {
        <section class="reading-pane compose-pane">
            <form class={classes!("compose", drop.dragging.then_some("dragging"))} {onsubmit} {oninput}
                ondragover={drop.ondragover} ondragleave={drop.ondragleave} ondrop={drop.ondrop}>
                <h1>{ title }</h1>
                <label class="row"><span class="label">{ "To" }</span>
                    <input id="compose-to" ref={to_ref} type="text" placeholder="bob@host, carol@host or a group name" autocomplete="off" readonly={busy} /></label>
                <label class="row"><span class="label">{ "Cc" }</span>
                    <input id="compose-cc" ref={cc_ref} type="text" autocomplete="off" readonly={busy} /></label>
                <label class="row"><span class="label">{ "Subject" }</span>
                    <input id="compose-subject" ref={subject_ref} type="text" readonly={busy} /></label>
                <textarea id="compose-body" ref={body_ref} rows="14" placeholder="Write your message…" readonly={busy}></textarea>
                <ComposeFiles files={files.clone()} disabled={busy} />
                { stable(note.map(|n| html! { <div id="compose-note" class="note">{ n }</div> })) }
                <div id="compose-error" class="error">{ props.error.clone().unwrap_or_default() }</div>
                <div class="actions">
                    <button id="compose-send" class="primary" type="submit" disabled={busy || files_pending}>
                        { if busy { "Encrypting attachments…" } else { "Send" } }
                    </button>
                    { stable((*sealing).map(|pct| html! {
                        <progress id="compose-progress" max="100" value={pct.to_string()}>{ format!("{pct}%") }</progress>
                    })) }
                    <button id="compose-cancel" type="button" onclick={cancel}>{ "Cancel" }</button>
                </div>
            </form>
        </section>
    }
}
