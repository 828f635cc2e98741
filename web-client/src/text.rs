//! The words the UI shows for states: presence, delivery, summaries. Kept apart from the
//! components so the texts the UI contract fixes are tested on their own
//! (`tests/ui_text.rs`).

use peermail_core::store::{DeliveryState, OutgoingMail};
use peermail_core::wire::signal::PresenceStatus;
use peermail_core::Address;

use crate::util::hms;

/// The `data-status` of a presence dot: a contact whose presence is not known yet shows
/// as offline; `unknown` means the relay has no such account.
pub fn presence_str(p: Option<PresenceStatus>) -> &'static str {
    match p {
        Some(PresenceStatus::Online) => "online",
        Some(PresenceStatus::Unknown) => "unknown",
        Some(PresenceStatus::Offline) | None => "offline",
    }
}

/// Addresses as a To/Cc field shows them.
pub fn join(addrs: &[Address]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A subject as lists and the reading pane show it.
pub fn subject_or_placeholder(s: &str) -> String {
    if s.trim().is_empty() {
        "(no subject)".into()
    } else {
        s.to_string()
    }
}

/// `data-state` and the text of one recipient's status line. `refusal` is why the relay
/// cache last refused the mail, while it waits to retry.
pub fn recipient_line(
    address: &Address,
    state: &DeliveryState,
    refusal: Option<&str>,
) -> (&'static str, String) {
    match state {
        DeliveryState::Waiting => match refusal {
            Some(why) => (
                "waiting",
                format!("{address}: waiting for {address} — relay refused: {why}"),
            ),
            None => ("waiting", format!("{address}: waiting for {address}")),
        },
        DeliveryState::Sending { .. } => ("sending", format!("{address}: sending")),
        DeliveryState::Depositing { .. } => (
            "depositing",
            format!("{address}: handing to the relay cache"),
        ),
        DeliveryState::CachedAtRelay { .. } => ("cached", format!("{address}: cached at relay")),
        DeliveryState::HeldBy { holder, .. } => ("held", format!("{address}: held by {holder}")),
        DeliveryState::Delivered { at } => {
            ("delivered", format!("{address}: delivered {}", hms(*at)))
        }
        DeliveryState::Failed { reason, .. } if state.is_cancelled() => {
            ("cancelled", format!("{address}: not sent — {reason}"))
        }
        DeliveryState::Failed { reason, .. } => ("failed", format!("{address}: failed — {reason}")),
    }
}

/// The short summary in an Outbox/Sent row.
pub fn summary(o: &OutgoingMail) -> String {
    let n = o.recipients.len();
    let delivered = o
        .recipients
        .iter()
        .filter(|r| matches!(r.state, DeliveryState::Delivered { .. }))
        .count();
    let cancelled = o
        .recipients
        .iter()
        .filter(|r| r.state.is_cancelled())
        .count();
    let failed = o
        .recipients
        .iter()
        .filter(|r| matches!(r.state, DeliveryState::Failed { .. }))
        .count()
        - cancelled;
    let sending = o.recipients.iter().any(|r| {
        matches!(
            r.state,
            DeliveryState::Sending { .. } | DeliveryState::Depositing { .. }
        )
    });
    let cached = o
        .recipients
        .iter()
        .filter(|r| matches!(r.state, DeliveryState::CachedAtRelay { .. }))
        .count();
    let held = o
        .recipients
        .iter()
        .filter(|r| matches!(r.state, DeliveryState::HeldBy { .. }))
        .count();
    let waiting: Vec<&Address> = o
        .recipients
        .iter()
        .filter(|r| r.state == DeliveryState::Waiting)
        .map(|r| &r.address)
        .collect();
    if delivered == n {
        "delivered".into()
    } else if failed == n {
        "failed".into()
    } else if cancelled == n {
        "cancelled".into()
    } else if !o.is_pending() && cancelled == 0 {
        format!("delivered to {delivered}, failed {failed}")
    } else if !o.is_pending() {
        let failed = if failed > 0 {
            format!(", failed {failed}")
        } else {
            String::new()
        };
        format!("delivered to {delivered}, cancelled {cancelled}{failed}")
    } else if sending {
        "sending".into()
    } else if waiting.is_empty() && held == 0 && cached > 0 {
        "cached at relay".into()
    } else if waiting.is_empty() && cached == 0 && held > 0 {
        "held by a co-recipient".into()
    } else if waiting.is_empty() {
        "cached at relay and held by a co-recipient".into()
    } else if waiting.len() == 1 {
        format!("waiting for {}", waiting[0])
    } else {
        format!("waiting for {} recipients", waiting.len())
    }
}

/// A size in bytes as people read it: `0 bytes`, `1 byte`, `900 bytes`, `1.5 KB`, `12 KB`,
/// `3.2 MB`, `16 GB` (units of 1024, one decimal below 10 of a unit).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes == 1 {
        return "1 byte".into();
    }
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Round first, so 1023.99 KB reads as 1.0 MB rather than 1024 KB.
    while unit + 1 < UNITS.len() && value >= 1023.95 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// The `data-state` of a received attachment: `waiting` (its sender's node is not
/// reachable), `fetching`, `checking` (all parts here, the whole file being verified),
/// `complete`, `failed` or `cancelled`.
pub fn attachment_state(v: &peermail_core::node::DownloadView) -> &'static str {
    use peermail_core::store::DownloadState as S;
    match &v.state {
        S::Fetching if v.checking => "checking",
        S::Fetching if !v.source_connected => "waiting",
        S::Fetching => "fetching",
        S::Complete { .. } => "complete",
        S::Failed { .. } => "failed",
        S::Cancelled => "cancelled",
    }
}

/// What a received attachment's line says: where it is, how far, how fast, how long.
pub fn attachment_progress(v: &peermail_core::node::DownloadView) -> String {
    use peermail_core::store::DownloadState as S;
    let size = v.attachment.size;
    let partial = (v.bytes_done > 0 && v.bytes_done < size).then(|| {
        format!(
            " · {} of {} here",
            human_size(v.bytes_done),
            human_size(size)
        )
    });
    match &v.state {
        S::Fetching if v.checking => "checking the file…".into(),
        S::Fetching if !v.source_connected => format!(
            "available when {} is online{}",
            v.from,
            partial.unwrap_or_default()
        ),
        S::Fetching => {
            let mut s = format!("{} of {}", human_size(v.bytes_done), human_size(size));
            if let Some(rate) = v.bytes_per_sec {
                s.push_str(&format!(" · {}/s", human_size(rate as u64)));
            }
            if let Some(eta) = v.eta_ms {
                s.push_str(&format!(" · {} left", duration_words(eta)));
            }
            s
        }
        S::Complete { .. } => "complete".into(),
        S::Failed { reason, .. } => format!("failed: {reason}"),
        S::Cancelled => format!("cancelled{}", partial.unwrap_or_default()),
    }
}

/// Where a received attachment's chunks come from while fetching (`.attachment-source`):
/// `from your storage node`, `from the relay`, `from alice@h`, `from carol@h (another
/// recipient)`.
pub fn attachment_source(v: &peermail_core::node::DownloadView) -> Option<String> {
    use peermail_core::node::FetchingFrom as F;
    use peermail_core::store::DownloadState as S;
    if v.state != S::Fetching || v.checking {
        return None;
    }
    Some(match v.fetching_from.as_ref()? {
        F::StorageNode(_) => "from your storage node".into(),
        F::Relay => "from the relay".into(),
        F::Sender(a) => format!("from {a}"),
        F::CoRecipient(a) => format!("from {a} (another recipient)"),
    })
}

/// What the sender's copy of an attachment says: who still has to fetch it, which
/// recipients' storage nodes keep it for them, and who deleted the mail without fetching it.
pub fn sent_attachment_status(o: &OutgoingMail, id: peermail_core::attach::AttachmentId) -> String {
    let needed = o.still_needed_by(id);
    let nodes = o.kept_on_nodes(id);
    let kept = (!nodes.is_empty()).then(|| {
        let owners: Vec<String> = nodes.iter().map(|n| n.owner().to_string()).collect();
        format!("kept on the storage node of {}", owners.join(", "))
    });
    let fetched_by = |a: &Address| {
        o.fetched
            .iter()
            .any(|(f, b)| *f == id && (b == a || *b == a.storage_node()))
    };
    let live: Vec<&Address> = o
        .recipients
        .iter()
        .filter(|r| !matches!(r.state, DeliveryState::Failed { .. }))
        .map(|r| &r.address)
        .collect();
    let declined: Vec<String> = live
        .iter()
        .filter(|a| o.declined_by(id, a) && !fetched_by(a))
        .map(|a| a.to_string())
        .collect();
    let mut line = if !needed.is_empty() {
        let names: Vec<String> = needed
            .iter()
            .map(|a| {
                if o.relay_has.iter().any(|(f, b)| *f == id && b == *a) {
                    format!("{a} (kept at the relay)")
                } else {
                    a.to_string()
                }
            })
            .collect();
        format!("still needed by {}", names.join(", "))
    } else if declined.is_empty() {
        "fetched by every recipient".to_string()
    } else if declined.len() == live.len() {
        "not needed any more".to_string()
    } else {
        "fetched by the other recipients".to_string()
    };
    if let Some(kept) = kept {
        line.push_str(&format!("; {kept}"));
    }
    if !declined.is_empty() {
        line.push_str(&format!(
            "; {} deleted the mail without fetching it",
            declined.join(", ")
        ));
    }
    line
}

/// The sender's line for one recipient of an attachment this page is sending: `to
/// bob@h: 12 MB of 48 MB · 2.0 MB/s · 20 s left`, `to bob@h: 48 MB sent`, or `stopped
/// sending to bob@h`.
pub fn sending_line(
    to: &Address,
    bytes: u64,
    size: u64,
    rate: Option<f64>,
    eta_ms: Option<u64>,
    active: bool,
    stopped: bool,
) -> String {
    if stopped {
        return format!("stopped sending to {to}");
    }
    if !active || bytes >= size {
        return format!("to {to}: {} sent", human_size(bytes));
    }
    let mut s = format!("to {to}: {} of {}", human_size(bytes), human_size(size));
    if let Some(r) = rate {
        s.push_str(&format!(" · {}/s", human_size(r as u64)));
    }
    if let Some(eta) = eta_ms {
        s.push_str(&format!(" · {} left", duration_words(eta)));
    }
    s
}

/// A duration as people read it: `less than a second`, `5 s`, `3 min 20 s`, `2 h 5 min`.
pub fn duration_words(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0 => "less than a second".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Whether `mail` matches a search of the mail list: every word of `query` (any case)
/// appears in its subject, body, sender, recipients or attachment names. An empty query
/// matches every mail.
pub fn mail_matches(mail: &peermail_core::Mail, query: &str) -> bool {
    if query.trim().is_empty() {
        return true;
    }
    let mut text = format!("{}\n{}\n{}", mail.subject, mail.body, mail.from);
    for a in mail.recipients() {
        text.push('\n');
        text.push_str(&a.to_string());
    }
    for a in &mail.attachments {
        text.push('\n');
        text.push_str(&a.name);
    }
    words_in(&text, query)
}

/// Whether a draft matches a search of the Drafts folder: every word of `query` (any
/// case) appears in its To, Cc, subject or text.
pub fn draft_matches(to: &str, cc: &str, subject: &str, body: &str, query: &str) -> bool {
    words_in(&format!("{to}\n{cc}\n{subject}\n{body}"), query)
}

/// Whether every word of `query` appears in `text`, in any case (an empty query: yes).
fn words_in(text: &str, query: &str) -> bool {
    let text = text.to_lowercase();
    query
        .split_whitespace()
        .all(|w| text.contains(w.to_lowercase().as_str()))
}

/// The subject of a forward: `Fwd: ` before the original's, unless it starts so already.
pub fn forward_subject(subject: &str) -> String {
    if subject.to_ascii_lowercase().starts_with("fwd:") {
        subject.to_string()
    } else {
        format!("Fwd: {subject}")
    }
}

/// The body a forward starts with, below room for the person's own words: the forwarded
/// mail's header lines (`date` as the page shows dates) and its text, as mail clients
/// forward inline.
pub fn forward_body(mail: &peermail_core::Mail, date: &str) -> String {
    let mut body = format!(
        "\n\n---------- Forwarded message ----------\nFrom: {}\nDate: {date}\nSubject: {}\nTo: {}\n",
        mail.from,
        mail.subject,
        join(&mail.to)
    );
    if !mail.cc.is_empty() {
        body.push_str(&format!("Cc: {}\n", join(&mail.cc)));
    }
    body.push('\n');
    body.push_str(&mail.body);
    body
}

/// Why some files of a forwarded mail are not attached to the forward (`#compose-note`):
/// this browser does not hold them whole. `None` when every file is attached.
pub fn not_forwarded(names: &[String]) -> Option<String> {
    match names {
        [] => None,
        [one] => Some(format!(
            "{one} is not in this browser yet, so it is not attached."
        )),
        [init @ .., last] => Some(format!(
            "{} and {last} are not in this browser yet, so they are not attached.",
            init.join(", ")
        )),
    }
}
