//! The attachments of the mail being read: for a received mail, each file's transfer
//! (where it stands, a progress bar with bytes, rate and time left, cancel / retry), and
//! once complete, Save, Open and, for images, a preview; for a sent mail, Save and Open
//! of the sender's own copy. Element ids and classes are in `docs/ui-contract.md`.

use peermail_core::attach::AttachmentRef;
use peermail_core::node::DownloadView;
use peermail_core::store::DownloadState;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use yew::prelude::*;

use crate::app::RtHandle;
use crate::runtime::SendingView;
use crate::text::{
    attachment_progress, attachment_source, attachment_state, human_size, sending_line,
};
use crate::util::log;

/// Largest image previewed inline.
const PREVIEW_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Properties, PartialEq)]
pub struct AttachmentsProps {
    pub rt: RtHandle,
    pub attachments: Vec<AttachmentRef>,
    /// The transfer of each attachment, for a received mail (`None`: this node sent it).
    pub downloads: Option<Vec<Option<DownloadView>>>,
    /// For a sent mail, what each attachment's line says (who still needs it).
    #[prop_or_default]
    pub sent_status: Vec<String>,
    /// For a sent mail, what this page sent of each attachment to whom, and whether the
    /// person stopped it.
    #[prop_or_default]
    pub sending: Vec<Vec<(SendingView, bool)>>,
}

/// The attachment list of one mail (`#attachments`).
#[function_component(Attachments)]
pub fn attachments(props: &AttachmentsProps) -> Html {
    if props.attachments.is_empty() {
        return html! {};
    }
    let items = props.attachments.iter().enumerate().map(|(i, att)| {
        let view = props
            .downloads
            .as_ref()
            .map(|d| d.get(i).cloned().flatten());
        let sent_status = props.sent_status.get(i).cloned();
        let sending = props.sending.get(i).cloned().unwrap_or_default();
        html! { <AttachmentItem rt={props.rt.clone()} att={att.clone()} {view} {sent_status} {sending} key={att.id.to_hex()} /> }
    });
    html! { <ul id="attachments" class="attachments">{ for items }</ul> }
}

#[derive(Properties, PartialEq)]
struct ItemProps {
    rt: RtHandle,
    att: AttachmentRef,
    /// `Some(None)`: received, but no transfer is known (yet); `None`: sent by this node.
    view: Option<Option<DownloadView>>,
    sent_status: Option<String>,
    sending: Vec<(SendingView, bool)>,
}

#[function_component(AttachmentItem)]
fn attachment_item(props: &ItemProps) -> Html {
    let rt = props.rt.0.clone();
    let att = props.att.clone();
    let preview = use_state(|| None::<String>);
    let error = use_state(|| None::<String>);
    let received = props.view.is_some();
    let view = props.view.clone().flatten();
    let complete = match &view {
        Some(v) => matches!(v.state, DownloadState::Complete { .. }),
        None => !received,
    };
    // The preview of a complete image, made once and revoked when the item goes away.
    {
        let (rt, att, preview) = (rt.clone(), att.clone(), preview.clone());
        let wants = complete && att.mime.starts_with("image/") && att.size <= PREVIEW_MAX_BYTES;
        use_effect_with(wants, move |wants| {
            if *wants {
                let p = preview.clone();
                spawn_local(async move {
                    match rt.attachment_blob(&att).await {
                        Ok(blob) => p.set(web_sys::Url::create_object_url_with_blob(&blob).ok()),
                        Err(e) => log(&format!("preview of {}: {e}", att.name)),
                    }
                });
            }
            move || {
                if let Some(url) = (*preview).clone() {
                    let _ = web_sys::Url::revoke_object_url(&url);
                }
            }
        });
    }
    let state =
        view.as_ref()
            .map(attachment_state)
            .unwrap_or(if received { "fetching" } else { "sent" });
    let status = view
        .as_ref()
        .map(attachment_progress)
        .or_else(|| props.sent_status.clone());
    let progress = view.as_ref().and_then(|v| {
        (v.state == DownloadState::Fetching && v.source_connected && !v.checking).then(|| {
            html! { <progress class="attachment-progress" max={att.size.max(1).to_string()} value={v.bytes_done.to_string()} /> }
        })
    });
    let open = |download: bool| {
        let (rt, att, error) = (rt.clone(), att.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            let (rt, att, error) = (rt.clone(), att.clone(), error.clone());
            spawn_local(async move {
                match rt.attachment_blob(&att).await {
                    Ok(blob) => {
                        if let Err(e) = hand_to_browser(&blob, &att.name, download) {
                            error.set(Some(e));
                        }
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        })
    };
    let buttons = if complete {
        html! {
            // Kept together when a long status line wraps the row.
            <span class="attachment-actions">
                <button class="save-attachment" onclick={open(true)}>{ "Save" }</button>
                <button class="open-attachment" onclick={open(false)}>{ "Open" }</button>
            </span>
        }
    } else if let Some(v) = &view {
        let id = att.id;
        match v.state {
            DownloadState::Fetching => {
                let rt = rt.clone();
                html! { <button class="cancel-attachment" onclick={Callback::from(move |_: MouseEvent| rt.cancel_download(id))}>{ "Cancel" }</button> }
            }
            DownloadState::Failed { .. } | DownloadState::Cancelled => {
                let rt = rt.clone();
                html! { <button class="retry-attachment" onclick={Callback::from(move |_: MouseEvent| rt.retry_download(id))}>{ "Try again" }</button> }
            }
            DownloadState::Complete { .. } => html! {},
        }
    } else {
        html! {}
    };
    let sending = props.sending.iter().map(|(s, stopped)| {
        let line = sending_line(&s.to, s.bytes, att.size, s.bytes_per_sec, s.eta_ms, s.active, *stopped);
        let st = if *stopped { "stopped" } else if s.active && s.bytes < att.size { "sending" } else { "idle" };
        let stop = (st == "sending").then(|| {
            let (rt, to, id) = (rt.clone(), s.to.clone(), att.id);
            let onclick = Callback::from(move |_: MouseEvent| rt.stop_sending(id, to.clone()));
            html! { <button class="stop-sending" {onclick}>{ "Stop" }</button> }
        });
        let bar = (st == "sending").then(|| html! {
            <progress class="sending-progress" max={att.size.max(1).to_string()} value={s.bytes.to_string()} />
        });
        html! {
            <li class="sending-to" data-to={s.to.to_string()} data-state={st} data-sent={s.bytes.to_string()}>
                <span class="sending-status">{ line }</span>{ for bar }{ for stop }
            </li>
        }
    });
    html! {
        <li class={classes!("attachment", state)} data-name={att.name.clone()} data-state={state}
            data-size={att.size.to_string()} data-done={view.as_ref().map(|v| v.bytes_done.to_string())}>
            <span class="attachment-name">{ att.name.clone() }</span>
            <span class="attachment-size">{ human_size(att.size) }</span>
            { for status.map(|s| html! { <span class="attachment-status">{ s }</span> }) }
            { for view.as_ref().and_then(attachment_source).map(|s| html! { <span class="attachment-source">{ s }</span> }) }
            { for progress }
            { buttons }
            { crate::util::stable((*error).clone().map(|e| html! { <span class="attachment-error">{ e }</span> })) }
            { crate::util::stable((*preview).clone().map(|url| html! { <img class="attachment-preview" src={url} alt={att.name.clone()} /> })) }
            if !props.sending.is_empty() {
                <ul class="sending">{ for sending }</ul>
            }
        </li>
    }
}

/// Saves (`download`) or opens in a new tab a file the page holds.
fn hand_to_browser(blob: &web_sys::Blob, name: &str, download: bool) -> Result<(), String> {
    let url = web_sys::Url::create_object_url_with_blob(blob).map_err(|e| format!("{e:?}"))?;
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let a: web_sys::HtmlAnchorElement = document
        .create_element("a")
        .map_err(|e| format!("{e:?}"))?
        .dyn_into()
        .map_err(|_| "not an anchor".to_string())?;
    a.set_href(&url);
    if download {
        a.set_download(name);
    } else {
        a.set_target("_blank");
        a.set_rel("noopener");
    }
    a.click();
    // The browser has started using the URL; release it a little later.
    let later = url.clone();
    gloo_timers::callback::Timeout::new(60_000, move || {
        let _ = web_sys::Url::revoke_object_url(&later);
    })
    .forget();
    Ok(())
}
