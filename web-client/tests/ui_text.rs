//! The status texts the UI contract (`docs/ui-contract.md`) fixes, checked in the browser
//! (times are formatted with the browser's local clock). Run like `idb_store.rs`.

use peermail_core::attach::{AttachmentId, AttachmentRef};
use peermail_core::mail::{Mail, MessageId, Priority};
use peermail_core::node::{DownloadView, FetchingFrom};
use peermail_core::store::DownloadState;
use peermail_core::store::{DeliveryState, OutgoingMail, RecipientStatus};
use peermail_core::wire::signal::PresenceStatus;
use peermail_core::Address;
use peermail_web_client::text::{
    attachment_progress, attachment_source, attachment_state, duration_words, human_size,
    presence_str, recipient_line, sending_line, sent_attachment_status, summary,
};
use peermail_web_client::util::hms;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn check_line(state: DeliveryState, want_state: &str, want_text: &str) {
    let (st, text) = recipient_line(&addr("bob@localhost"), &state, None);
    assert_eq!((st, text.as_str()), (want_state, want_text), "{state:?}");
}

#[wasm_bindgen_test]
fn recipient_lines() {
    let at = 1_700_000_000_000;
    check_line(
        DeliveryState::Waiting,
        "waiting",
        "bob@localhost: waiting for bob@localhost",
    );
    check_line(
        DeliveryState::Sending {
            since: at,
            attempts: 1,
        },
        "sending",
        "bob@localhost: sending",
    );
    check_line(
        DeliveryState::Delivered { at },
        "delivered",
        &format!("bob@localhost: delivered {}", hms(at)),
    );
    check_line(
        DeliveryState::Failed {
            at,
            reason: "no such address: bob@localhost".into(),
        },
        "failed",
        "bob@localhost: failed — no such address: bob@localhost",
    );
    check_line(
        DeliveryState::Failed {
            at,
            reason: peermail_core::node::CANCELLED.into(),
        },
        "cancelled",
        "bob@localhost: not sent — you cancelled sending",
    );
    check_line(
        DeliveryState::Depositing { since: at },
        "depositing",
        "bob@localhost: handing to the relay cache",
    );
    check_line(
        DeliveryState::CachedAtRelay { at },
        "cached",
        "bob@localhost: cached at relay",
    );
    check_line(
        DeliveryState::HeldBy {
            holder: addr("carol@localhost"),
            at,
        },
        "held",
        "bob@localhost: held by carol@localhost",
    );
    let (st, text) = recipient_line(
        &addr("bob@localhost"),
        &DeliveryState::Waiting,
        Some("the relay cache of bob@localhost is full"),
    );
    assert_eq!(
        (st, text.as_str()),
        (
            "waiting",
            "bob@localhost: waiting for bob@localhost — relay refused: the relay cache of \
             bob@localhost is full"
        )
    );
    assert_eq!(hms(at).len(), 8, "HH:MM:SS");
}

fn outgoing(states: &[DeliveryState]) -> OutgoingMail {
    let names = ["bob@h", "carol@h", "dave@h"];
    let recipients: Vec<RecipientStatus> = states
        .iter()
        .zip(names)
        .map(|(s, n)| RecipientStatus {
            address: addr(n),
            state: s.clone(),
        })
        .collect();
    OutgoingMail {
        mail: Mail {
            message_id: MessageId::new([1; 16], "h"),
            from: addr("alice@h"),
            to: recipients.iter().map(|r| r.address.clone()).collect(),
            cc: vec![],
            subject: "s".into(),
            date: 0,
            body: String::new(),
            in_reply_to: None,
            references: vec![],
            priority: Priority::Normal,
            attachments: vec![],
        },
        recipients,
        fetched: vec![],
        relay_has: vec![],
        declined: vec![],
        cancelled: false,
    }
}

#[wasm_bindgen_test]
fn row_summaries() {
    use DeliveryState::*;
    let failed = || Failed {
        at: 1,
        reason: "x".into(),
    };
    let cancelled = || Failed {
        at: 1,
        reason: peermail_core::node::CANCELLED.into(),
    };
    for (states, want) in [
        (vec![Waiting], "waiting for bob@h"),
        (vec![Waiting, Waiting], "waiting for 2 recipients"),
        (
            vec![
                Sending {
                    since: 1,
                    attempts: 1,
                },
                Waiting,
            ],
            "sending",
        ),
        (vec![Delivered { at: 1 }, Delivered { at: 2 }], "delivered"),
        (vec![failed()], "failed"),
        (
            vec![Delivered { at: 1 }, failed(), failed()],
            "delivered to 1, failed 2",
        ),
        (vec![cancelled(), cancelled()], "cancelled"),
        (
            vec![Delivered { at: 1 }, cancelled()],
            "delivered to 1, cancelled 1",
        ),
        (
            vec![Delivered { at: 1 }, cancelled(), failed()],
            "delivered to 1, cancelled 1, failed 1",
        ),
    ] {
        assert_eq!(summary(&outgoing(&states)), want, "{states:?}");
    }
}

#[wasm_bindgen_test]
fn presence_dots() {
    assert_eq!(presence_str(Some(PresenceStatus::Online)), "online");
    assert_eq!(presence_str(Some(PresenceStatus::Offline)), "offline");
    assert_eq!(presence_str(Some(PresenceStatus::Unknown)), "unknown");
    assert_eq!(presence_str(None), "offline");
}

#[wasm_bindgen_test]
fn human_sizes() {
    let cases: [(u64, &str); 14] = [
        (0, "0 bytes"),
        (1, "1 byte"),
        (2, "2 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 KB"),
        (1536, "1.5 KB"),
        (10 * 1024 - 1, "10 KB"),
        (12 * 1024, "12 KB"),
        (1024 * 1024 - 1, "1.0 MB"),
        (3 * 1024 * 1024 + 300 * 1024, "3.3 MB"),
        (8 << 20, "8.0 MB"),
        (50 << 20, "50 MB"),
        (16 << 30, "16 GB"),
        (3 << 40, "3.0 TB"),
    ];
    for (bytes, want) in cases {
        assert_eq!(human_size(bytes), want, "{bytes} bytes");
    }
    assert_eq!(human_size(u64::MAX), "16777216 TB");
}

fn download_view(state: DownloadState, done: u64, connected: bool) -> DownloadView {
    let attachment = AttachmentRef {
        id: AttachmentId([1; 16]),
        name: "film.mkv".into(),
        mime: "video/x-matroska".into(),
        size: 48 * 1024 * 1024,
        key: [0; 32],
        chunks_root: [0; 32],
        file_hash: [0; 32],
        inline: false,
        file_hash_alg: peermail_core::attach::FileHashAlg::Blake3,
    };
    DownloadView {
        message_id: MessageId::new([1; 16], "h"),
        from: addr("alice@h"),
        state,
        bytes_done: done,
        bytes_per_sec: (connected && done > 0).then_some(2.0 * 1024.0 * 1024.0),
        eta_ms: (connected && done > 0).then_some(20_000),
        source_connected: connected,
        fetching_from: connected.then(|| FetchingFrom::Sender(addr("alice@h"))),
        checking: false,
        attachment,
    }
}

#[wasm_bindgen_test]
fn attachment_lines() {
    const MIB: u64 = 1024 * 1024;
    let waiting = download_view(DownloadState::Fetching, 0, false);
    assert_eq!(attachment_state(&waiting), "waiting");
    assert_eq!(
        attachment_progress(&waiting),
        "available when alice@h is online"
    );
    let partial = download_view(DownloadState::Fetching, 8 * MIB, false);
    assert_eq!(
        attachment_progress(&partial),
        "available when alice@h is online · 8.0 MB of 48 MB here"
    );
    let fetching = download_view(DownloadState::Fetching, 8 * MIB, true);
    assert_eq!(attachment_state(&fetching), "fetching");
    assert_eq!(
        attachment_progress(&fetching),
        "8.0 MB of 48 MB · 2.0 MB/s · 20 s left"
    );
    assert_eq!(
        attachment_source(&fetching).as_deref(),
        Some("from alice@h")
    );
    let mut from_node = fetching.clone();
    from_node.fetching_from = Some(FetchingFrom::StorageNode(addr("bob+node@h")));
    assert_eq!(
        attachment_source(&from_node).as_deref(),
        Some("from your storage node")
    );
    from_node.fetching_from = Some(FetchingFrom::Relay);
    assert_eq!(
        attachment_source(&from_node).as_deref(),
        Some("from the relay")
    );
    from_node.fetching_from = Some(FetchingFrom::CoRecipient(addr("carol@h")));
    assert_eq!(
        attachment_source(&from_node).as_deref(),
        Some("from carol@h (another recipient)")
    );
    assert_eq!(attachment_source(&waiting), None);
    let mut checking = fetching.clone();
    checking.checking = true;
    assert_eq!(attachment_state(&checking), "checking");
    let done = download_view(DownloadState::Complete { at: 1 }, 48 * MIB, true);
    assert_eq!(
        (attachment_state(&done), attachment_progress(&done).as_str()),
        ("complete", "complete")
    );
    let failed = download_view(
        DownloadState::Failed {
            at: 1,
            reason: "the file does not match the mail".into(),
        },
        48 * MIB,
        true,
    );
    assert_eq!(attachment_state(&failed), "failed");
    assert_eq!(
        attachment_progress(&failed),
        "failed: the file does not match the mail"
    );
    let cancelled = download_view(DownloadState::Cancelled, MIB, false);
    assert_eq!(
        (
            attachment_state(&cancelled),
            attachment_progress(&cancelled).as_str()
        ),
        ("cancelled", "cancelled · 1.0 MB of 48 MB here")
    );
    assert_eq!(duration_words(0), "less than a second");
    assert_eq!(duration_words(4_001), "5 s");
    assert_eq!(duration_words(200_000), "3 min 20 s");
    assert_eq!(duration_words(7_500_000), "2 h 5 min");
}

#[wasm_bindgen_test]
fn sent_attachment_lines() {
    let id = AttachmentId([7; 16]);
    let mut o = outgoing(&[
        DeliveryState::Delivered { at: 1 },
        DeliveryState::CachedAtRelay { at: 1 },
        DeliveryState::Failed {
            at: 1,
            reason: "no such address".into(),
        },
    ]);
    assert_eq!(
        sent_attachment_status(&o, id),
        "still needed by bob@h, carol@h"
    );
    o.fetched.push((id, addr("bob+node@h")));
    assert_eq!(
        sent_attachment_status(&o, id),
        "still needed by carol@h; kept on the storage node of bob@h"
    );
    o.fetched.clear();
    o.fetched.push((id, addr("bob@h")));
    o.fetched.push((AttachmentId([8; 16]), addr("carol@h")));
    assert_eq!(sent_attachment_status(&o, id), "still needed by carol@h");
    o.relay_has.push((id, addr("carol@h")));
    assert_eq!(
        sent_attachment_status(&o, id),
        "still needed by carol@h (kept at the relay)"
    );
    o.fetched.push((id, addr("carol@h")));
    assert_eq!(sent_attachment_status(&o, id), "fetched by every recipient");
    o.fetched.push((id, addr("carol+node@h")));
    assert_eq!(
        sent_attachment_status(&o, id),
        "fetched by every recipient; kept on the storage node of carol@h"
    );
    // Recipients that deleted the mail before fetching the file.
    o.fetched.clear();
    o.relay_has.clear();
    o.fetched.push((id, addr("bob@h")));
    o.declined.push((id, addr("carol@h")));
    assert_eq!(
        sent_attachment_status(&o, id),
        "fetched by the other recipients; carol@h deleted the mail without fetching it"
    );
    o.fetched.clear();
    assert_eq!(
        sent_attachment_status(&o, id),
        "still needed by bob@h; carol@h deleted the mail without fetching it"
    );
    o.declined.push((id, addr("bob@h")));
    assert_eq!(
        sent_attachment_status(&o, id),
        "not needed any more; bob@h, carol@h deleted the mail without fetching it"
    );
}

#[wasm_bindgen_test]
fn sending_lines() {
    const MIB: u64 = 1024 * 1024;
    let bob = addr("bob@h");
    assert_eq!(
        sending_line(
            &bob,
            12 * MIB,
            48 * MIB,
            Some(2.0 * MIB as f64),
            Some(20_000),
            true,
            false
        ),
        "to bob@h: 12 MB of 48 MB · 2.0 MB/s · 20 s left"
    );
    assert_eq!(
        sending_line(&bob, 48 * MIB, 48 * MIB, None, None, true, false),
        "to bob@h: 48 MB sent"
    );
    assert_eq!(
        sending_line(&bob, 3 * MIB, 48 * MIB, None, None, false, false),
        "to bob@h: 3.0 MB sent"
    );
    assert_eq!(
        sending_line(&bob, 3 * MIB, 48 * MIB, None, None, true, true),
        "stopped sending to bob@h"
    );
}

#[wasm_bindgen_test]
fn searching_mail() {
    use peermail_web_client::text::mail_matches;
    let mail = Mail {
        message_id: MessageId::new([1; 16], "h"),
        from: addr("alice@h"),
        to: vec![addr("bob@h")],
        cc: vec![addr("carol@h")],
        subject: "Quarterly Report".into(),
        date: 1,
        body: "Numbers attached.\nSee page 3.".into(),
        in_reply_to: None,
        references: vec![],
        priority: Priority::default(),
        attachments: vec![],
    };
    assert!(mail_matches(&mail, ""));
    assert!(mail_matches(&mail, "   "));
    assert!(mail_matches(&mail, "quarterly"));
    assert!(
        mail_matches(&mail, "REPORT page"),
        "every word, anywhere, any case"
    );
    assert!(mail_matches(&mail, "carol@h"), "recipients");
    assert!(mail_matches(&mail, "alice"), "the sender");
    assert!(
        !mail_matches(&mail, "report budget"),
        "every word must match"
    );
    assert!(!mail_matches(&mail, "dave"));
}

#[wasm_bindgen_test]
fn forwarding_mail() {
    use peermail_web_client::text::{forward_body, forward_subject, not_forwarded};
    assert_eq!(forward_subject("Minutes"), "Fwd: Minutes");
    assert_eq!(forward_subject("FWD: Minutes"), "FWD: Minutes");
    assert_eq!(forward_subject("Re: Minutes"), "Fwd: Re: Minutes");
    let mut mail = Mail {
        message_id: MessageId::new([2; 16], "h"),
        from: addr("alice@h"),
        to: vec![addr("bob@h"), addr("dave@h")],
        cc: vec![],
        subject: "Minutes".into(),
        date: 1,
        body: "Attached.\nAlice".into(),
        in_reply_to: None,
        references: vec![],
        priority: Priority::default(),
        attachments: vec![],
    };
    assert_eq!(
        forward_body(&mail, "Mon 2 Mar 12:00"),
        "\n\n---------- Forwarded message ----------\nFrom: alice@h\nDate: Mon 2 Mar 12:00\n\
         Subject: Minutes\nTo: bob@h, dave@h\n\nAttached.\nAlice"
    );
    mail.cc = vec![addr("carol@h")];
    assert!(
        forward_body(&mail, "d").contains("To: bob@h, dave@h\nCc: carol@h\n\nAttached."),
        "Cc after To"
    );
    assert_eq!(not_forwarded(&[]), None);
    assert_eq!(
        not_forwarded(&["a.pdf".into()]).as_deref(),
        Some("a.pdf is not in this browser yet, so it is not attached.")
    );
    assert_eq!(
        not_forwarded(&["a.pdf".into(), "b.bin".into(), "c.png".into()]).as_deref(),
        Some("a.pdf, b.bin and c.png are not in this browser yet, so they are not attached.")
    );
}

/// Drafts (`draft.rs`, in this page's `localStorage`): an older build's one draft joins the
/// list as the open form's; each form keeps its own draft, listed newest first; `save`
/// says when the list grew or shrank; one being sent is not shown; an emptied form keeps
/// none; `remove` drops one.
#[wasm_bindgen_test]
fn drafts_are_kept_each_on_its_own_and_an_older_builds_draft_joins_them() {
    use peermail_web_client::draft;
    use peermail_web_client::state::Prefill;
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    storage.clear().unwrap();
    let prefill = |subject: &str| Prefill {
        to: "bob@localhost".into(),
        subject: subject.into(),
        body: format!("text of {subject}"),
        ..Prefill::default()
    };
    // Saved times are milliseconds: each save below comes a millisecond after the last.
    let next_ms = || {
        let t = js_sys::Date::now();
        while js_sys::Date::now() == t {}
    };
    storage
        .set_item(
            "peermail-draft",
            &serde_json::to_string(&prefill("Older")).unwrap(),
        )
        .unwrap();
    let older = draft::open().expect("the older build's draft opens with the page");
    assert_eq!(older.prefill, prefill("Older"));
    assert_eq!(storage.get_item("peermail-draft").unwrap(), None);
    assert_eq!(draft::list(), vec![older.clone()]);

    next_ms();
    assert!(draft::save("one", &prefill("One")), "a new draft is listed");
    next_ms();
    assert!(draft::save("two", &prefill("Two")));
    next_ms();
    assert!(!draft::save("one", &prefill("One, again")), "written again");
    let subjects = || -> Vec<String> {
        draft::list()
            .into_iter()
            .map(|d| d.prefill.subject)
            .collect()
    };
    assert_eq!(subjects(), ["One, again", "Two", "Older"]);
    // A draft whose mail is being sent is not shown in Drafts; not sent after all, it is.
    let shown = || -> Vec<String> {
        draft::shown()
            .into_iter()
            .map(|d| d.prefill.subject)
            .collect()
    };
    draft::set_sending("two", true);
    assert_eq!(shown(), ["One, again", "Older"]);
    assert_eq!(subjects(), ["One, again", "Two", "Older"]);
    draft::set_sending("two", false);
    assert_eq!(shown(), ["One, again", "Two", "Older"]);
    // A mark its page has not renewed for SENDING_STALE_MS (it went away) no longer hides it.
    draft::set_sending("two", true);
    let mut kept = draft::list();
    for d in kept.iter_mut().filter(|d| d.id == "two") {
        d.sending_at = d.sending_at.map(|t| t - draft::SENDING_STALE_MS);
    }
    storage
        .set_item("peermail-drafts", &serde_json::to_string(&kept).unwrap())
        .unwrap();
    assert_eq!(shown(), ["One, again", "Two", "Older"]);
    // The open form's draft.
    draft::set_open("two");
    assert_eq!(draft::open().map(|d| d.prefill), Some(prefill("Two")));
    draft::set_sending("two", true);
    assert_eq!(
        draft::open(),
        None,
        "a draft being sent opens with no other page"
    );
    draft::set_sending("two", false);
    // Emptied, a form keeps no draft; removed, a draft is gone, and no longer open.
    assert!(
        draft::save("one", &Prefill::default()),
        "an emptied draft goes"
    );
    draft::remove("two");
    assert_eq!(subjects(), ["Older"]);
    assert_eq!(draft::open(), None);
    draft::remove(&older.id);
    assert_eq!(draft::list(), vec![]);
    assert_eq!(storage.get_item("peermail-drafts").unwrap(), None);

    // The Drafts folder's search: every word, any case, in To, Cc, subject or text.
    use peermail_web_client::text::draft_matches;
    let d = ("bob@localhost", "carol@localhost", "Plans", "for Friday");
    let matches = |q: &str| draft_matches(d.0, d.1, d.2, d.3, q);
    assert!(matches(""));
    assert!(matches("friday PLANS"));
    assert!(matches("carol"));
    assert!(!matches("plans monday"));
}

#[wasm_bindgen_test]
fn new_mail_notifications_sum_up_what_arrived_out_of_sight() {
    use peermail_web_client::notify::{self, Status, Unseen, LISTED, SETTING_KEY};
    let mail = |n: u8, from: &str, subject: &str| Unseen {
        id: MessageId::new([n; 16], "localhost"),
        from: from.to_string(),
        subject: subject.to_string(),
    };
    assert_eq!(notify::summary(&[]), None);
    let first = mail(1, "alice@localhost", "Tickets");
    assert_eq!(
        notify::summary(std::slice::from_ref(&first)),
        Some((
            "From alice@localhost".to_string(),
            "Tickets".to_string(),
            Some(first.id.clone())
        ))
    );
    // A blank subject is named as such; several mails list the newest first and open the
    // Inbox rather than one of them.
    let blank = mail(2, "bob@localhost", "  ");
    assert_eq!(
        notify::summary(&[first.clone(), blank.clone()]),
        Some((
            "2 new mails".to_string(),
            "bob@localhost: (no subject)\nalice@localhost: Tickets".to_string(),
            None
        ))
    );
    let many: Vec<Unseen> = (0..LISTED as u8 + 2)
        .map(|n| mail(n, "carol@localhost", &format!("Note {n}")))
        .collect();
    let (title, body, open) = notify::summary(&many).unwrap();
    assert_eq!(title, format!("{} new mails", LISTED + 2));
    assert_eq!(body.lines().count(), LISTED + 1, "{body}");
    assert_eq!(body.lines().next(), Some("carol@localhost: Note 4"));
    assert_eq!(body.lines().last(), Some("and 2 more"));
    assert_eq!(open, None);

    // The setting alone does not turn notifications on: the browser must allow them too
    // (the test browser was never asked).
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    storage.set_item(SETTING_KEY, "on").unwrap();
    assert_eq!(notify::status(), Status::Off);
    notify::turn_off();
    assert_eq!(storage.get_item(SETTING_KEY).unwrap(), None);
    assert_eq!(notify::status(), Status::Off);
}
