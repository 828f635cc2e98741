//! End-to-end scenarios of issue 2: people exchange mail browser to browser.
//!
//! Run with `cargo xtask e2e` (it builds the relay and the web client and sets the
//! environment, see the crate docs). This binary re-executes itself inside a private network
//! namespace, starts one relay and one chromedriver, and runs the scenarios in order; later
//! scenarios reuse the people (browsers) of earlier ones, as a person would.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use peermail_core::address::Address;
use peermail_core::identity::Identity;
use peermail_core::mail::{Mail, MessageId, Priority};
use peermail_core::seal::{self, SealError};
use peermail_core::wire::signal::{ClientFrame, ErrorCode, ReceiptOutcome, ServerFrame};
use peermail_e2e::native::{random_bytes, NativeClient};
use peermail_e2e::runner::Runner;
use peermail_e2e::{netns, procs, Browser, Config, Harness};

mod archive;
mod deletion;
mod drafts;
mod groups;
mod native_peer;
mod notify;
mod saving;
mod shortcuts;
mod storage_node;
use archive::people_archive_mail;
use deletion::people_delete_mail_for_good;
use drafts::a_draft_survives_a_reload;
use groups::groups_expand_to_their_members;
use native_peer::native_peer_exchanges_mail_with_a_browser;
use notify::new_mail_is_announced_while_the_page_is_out_of_sight;
use saving::a_large_file_is_saved_without_holding_it_in_the_page;
use shortcuts::people_use_keyboard_shortcuts;
use storage_node::{
    relay_hands_over_to_a_returning_storage_node, storage_node_pairs_keeps_and_serves_attachments,
};

/// Scenario names in the order they run.
const SCENARIOS: &[&str] = &[
    "alice_mails_bob_online",
    "bob_reload_keeps_identity_and_inbox",
    "bob_offline_then_returns",
    "mail_to_bob_and_carol",
    "unknown_recipient_fails_alone",
    "signup_rejects_taken_and_invalid_names",
    "contacts_show_live_presence",
    "offline_recipient_via_relay_cache",
    "relay_stores_ciphertext_only",
    "tampered_envelope_rejected_visibly",
    "co_recipient_holds_when_relay_cache_refuses",
    "attachments_pulled_from_the_online_sender",
    "large_attachment_waits_for_its_sender_and_resumes",
    "small_attachment_reaches_an_offline_recipient_through_the_relay",
    "attachment_passed_on_by_a_co_recipient",
    "native_peer_exchanges_mail_with_a_browser",
    "storage_node_pairs_keeps_and_serves_attachments",
    "relay_hands_over_to_a_returning_storage_node",
    "groups_expand_to_their_members",
    "people_delete_mail_for_good",
    "people_archive_mail",
    "people_use_keyboard_shortcuts",
    "a_draft_survives_a_reload",
    "a_large_file_is_saved_without_holding_it_in_the_page",
    "new_mail_is_announced_while_the_page_is_out_of_sight",
];

/// The first mail (scenario a); scenario b looks for it after reloads.
const SUBJECT_A: &str = "Lunch on Friday?";
const BODY_A: &str = "Hi Bob, shall we have lunch on Friday? Alice";

fn main() -> ExitCode {
    let mut runner = Runner::from_args();
    if runner.list {
        for s in SCENARIOS.iter().filter(|s| runner.wants(s)) {
            println!("{s}: test");
        }
        return ExitCode::SUCCESS;
    }
    if !SCENARIOS.iter().any(|s| runner.wants(s)) {
        println!("\n0 passed, 0 failed");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = netns::enter("e2e") {
        return code;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = rt.block_on(run_all(&mut runner, config));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_all(runner: &mut Runner, config: Config) -> bool {
    let out_dir = config.out_dir.clone();
    let harness = match Harness::start(config) {
        Ok(h) => h,
        Err(e) => {
            runner.fail_all(SCENARIOS, &format!("the harness did not start: {e:#}"));
            return runner.finish();
        }
    };
    println!(
        "e2e: relay at {} (page {}), chromedriver at {}",
        harness.relay.url,
        harness.app_url(),
        harness.driver.url
    );
    // PEERMAIL_E2E_CAPTURE=always keeps screenshots of passing scenarios too (for review).
    let capture_always = std::env::var("PEERMAIL_E2E_CAPTURE").is_ok_and(|v| v == "always");
    let mut w = World {
        h: harness,
        browsers: BTreeMap::new(),
        ready: BTreeSet::new(),
    };

    macro_rules! scenario {
        ($f:ident) => {
            let name = stringify!($f);
            if runner.wants(name) && (!runner.run(name, $f(&mut w)).await || capture_always) {
                w.capture(name).await;
            }
        };
    }
    scenario!(alice_mails_bob_online);
    scenario!(bob_reload_keeps_identity_and_inbox);
    scenario!(bob_offline_then_returns);
    scenario!(mail_to_bob_and_carol);
    scenario!(unknown_recipient_fails_alone);
    scenario!(signup_rejects_taken_and_invalid_names);
    scenario!(contacts_show_live_presence);
    scenario!(offline_recipient_via_relay_cache);
    scenario!(relay_stores_ciphertext_only);
    scenario!(tampered_envelope_rejected_visibly);
    scenario!(co_recipient_holds_when_relay_cache_refuses);
    scenario!(attachments_pulled_from_the_online_sender);
    scenario!(large_attachment_waits_for_its_sender_and_resumes);
    scenario!(small_attachment_reaches_an_offline_recipient_through_the_relay);
    scenario!(attachment_passed_on_by_a_co_recipient);
    scenario!(native_peer_exchanges_mail_with_a_browser);
    scenario!(storage_node_pairs_keeps_and_serves_attachments);
    scenario!(relay_hands_over_to_a_returning_storage_node);
    scenario!(groups_expand_to_their_members);
    scenario!(people_delete_mail_for_good);
    scenario!(people_archive_mail);
    scenario!(people_use_keyboard_shortcuts);
    scenario!(a_draft_survives_a_reload);
    scenario!(a_large_file_is_saved_without_holding_it_in_the_page);
    scenario!(new_mail_is_announced_while_the_page_is_out_of_sight);

    let relay_alive = w.h.relay.is_running();
    for b in w.browsers.values_mut() {
        let _ = b.close().await;
    }
    // Keep the process logs next to the screenshots.
    let _ = std::fs::copy(&w.h.relay.log, out_dir.join("relay.log"));
    let _ = std::fs::copy(&w.h.driver.log, out_dir.join("chromedriver.log"));
    let ok = runner.finish();
    if !relay_alive {
        println!(
            "note: the relay had exited by the end of the run; last lines:\n{}",
            procs::tail(&w.h.relay.log, 30)
        );
    }
    if !ok {
        println!("screenshots, page HTML and logs: {}", out_dir.display());
    }
    ok
}

/// The people taking part, shared across scenarios.
struct World {
    h: Harness,
    /// Each person's browser, by name (open or closed).
    browsers: BTreeMap<String, Browser>,
    /// People whose browser is signed up (showing their address).
    ready: BTreeSet<String>,
}

impl World {
    /// Makes sure `name` has an open browser showing the main view with their address
    /// (signing up on first use) and connected to the relay.
    async fn person(&mut self, name: &str) -> Result<&Browser> {
        if !self.browsers.contains_key(name) {
            let b = self.h.browser(name).await?;
            self.browsers.insert(name.to_string(), b);
        }
        let b = self.browsers.get_mut(name).expect("just inserted");
        if !b.is_open() {
            b.reopen().await?;
        }
        if !self.ready.contains(name) {
            // A fresh profile shows the sign-up form; a known one the main view.
            let addr = b.address();
            let (addr, b) = (addr.as_str(), &*b);
            let shown = b
                .wait_until("the sign-up form or the main view", || async move {
                    if b.texts("#signup-name").await?.len() == 1 {
                        return Ok(Ok(false));
                    }
                    let a = b.texts("#my-address").await?;
                    Ok(if a.iter().any(|a| a == addr) {
                        Ok(true)
                    } else {
                        Err(format!("#my-address {a:?}"))
                    })
                })
                .await?;
            if !shown {
                b.sign_up(name).await?;
            }
            self.ready.insert(name.to_string());
        }
        b.wait_online()
            .await
            .with_context(|| format!("{name} connecting to the relay"))?;
        Ok(b)
    }

    /// Closes `name`'s browser (the person leaves; their profile stays for [`World::person`]).
    async fn close(&mut self, name: &str) -> Result<()> {
        self.browsers
            .get_mut(name)
            .context(name.to_string())?
            .close()
            .await
    }

    /// `from` mails `to` once per subject (the same `body`), each only once the one before
    /// is listed in `to`'s Inbox: the Inbox then lists them newest first in this order.
    async fn mail_in_order(
        &mut self,
        from: &str,
        to: &str,
        subjects: &[&str],
        body: &str,
    ) -> Result<()> {
        self.person(from).await?;
        self.person(to).await?;
        let to_addr = self.addr(to);
        let (sender, recipient) = (self.get(from)?, self.get(to)?);
        for subject in subjects {
            sender.compose(&to_addr, "", subject, body).await?;
            recipient.wait_row("inbox", subject).await?;
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Result<&Browser> {
        self.browsers
            .get(name)
            .with_context(|| format!("{name} has no browser"))
    }

    fn addr(&self, name: &str) -> String {
        self.h.address(name)
    }

    /// Screenshots and HTML of every open browser, after a failed scenario.
    async fn capture(&self, scenario: &str) {
        for b in self.browsers.values().filter(|b| b.is_open()) {
            match b.capture(&self.h.config.out_dir, scenario).await {
                Ok(files) => {
                    for f in files {
                        println!("    saved {}", f.display());
                    }
                }
                Err(e) => println!("    (no capture of {}'s page: {e:#})", b.name),
            }
        }
    }
}

fn contains(field: &str, got: &Option<String>, want: &str) -> Result<()> {
    match got {
        Some(g) if g.contains(want) => Ok(()),
        _ => bail!("expected {field} to contain {want:?}, the page shows {got:?}"),
    }
}

/// (a) Alice and Bob sign up; Alice mails Bob while he is online: Bob's Inbox shows it
/// (unread, from Alice, with subject and body), Alice's Sent shows Bob delivered.
async fn alice_mails_bob_online(w: &mut World) -> Result<()> {
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice, bob) = (w.get("alice")?, w.get("bob")?);
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));

    alice.compose(&bob_addr, "", SUBJECT_A, BODY_A).await?;

    let row = bob.wait_row("inbox", SUBJECT_A).await?;
    contains("the inbox row's .from", &row.from, &alice_addr)?;
    ensure!(
        row.unread,
        "a new mail should be marked unread in Bob's inbox: {row:?}"
    );
    let count = bob.folder_count("inbox").await?;
    ensure!(
        !count.is_empty() && count != "0",
        "Bob's inbox unread .count shows {count:?}"
    );

    let pane = bob.open_mail("inbox", SUBJECT_A).await?;
    contains("the reading pane's .from", &pane.from, &alice_addr)?;
    contains("the reading pane's .body", &pane.body, BODY_A)?;

    let status = alice
        .wait_recipient(&["sent"], SUBJECT_A, &bob_addr, "delivered")
        .await?;
    ensure!(
        status.contains(&bob_addr) && status.contains("delivered"),
        "Alice's Sent status for Bob reads {status:?}"
    );
    Ok(())
}

/// (b) Reloading keeps identity and mail: Bob still is bob@ and has the mail in his Inbox;
/// Alice still has it in Sent as delivered.
async fn bob_reload_keeps_identity_and_inbox(w: &mut World) -> Result<()> {
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice, bob) = (w.get("alice")?, w.get("bob")?);
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));

    bob.reload().await?;
    bob.wait_for_text("#my-address", &bob_addr).await?;
    ensure!(
        bob.texts("#signup-name").await?.is_empty(),
        "Bob sees the sign-up form after a reload"
    );
    let pane = bob.open_mail("inbox", SUBJECT_A).await?;
    contains("the reading pane's .from", &pane.from, &alice_addr)?;
    contains("the reading pane's .body", &pane.body, BODY_A)?;

    alice.reload().await?;
    alice.wait_for_text("#my-address", &alice_addr).await?;
    alice
        .wait_recipient(&["sent"], SUBJECT_A, &bob_addr, "delivered")
        .await?;
    Ok(())
}

/// (c) Bob closes his browser; Alice sends: her Outbox shows "bob@…: cached at relay" (the
/// relay cache holds the sealed copy since issue 3), also after she reloads. Bob comes back
/// (same browser profile) and receives it by itself; Alice's mail moves to Sent, delivered.
async fn bob_offline_then_returns(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "While you were away";
    const BODY: &str = "Bob, this waited in my outbox until you came back.";
    w.person("alice").await?;
    w.person("bob").await?;
    let bob_addr = w.addr("bob");

    w.close("bob").await?;

    let alice = w.get("alice")?;
    alice.compose(&bob_addr, "", SUBJECT, BODY).await?;
    let status = alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    ensure!(
        status.contains(&format!("{bob_addr}: cached at relay")),
        "Alice's Outbox status for Bob reads {status:?}"
    );
    let count = alice.folder_count("outbox").await?;
    ensure!(
        !count.is_empty() && count != "0",
        "Alice's outbox .count shows {count:?}"
    );
    // The Outbox is kept across a reload, and the mail still waits.
    alice.reload().await?;
    alice.wait_online().await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await
        .context("after Alice reloaded")?;

    // Bob returns: a new browser on the same profile, so the same identity.
    let bob = w.person("bob").await?;
    let pane = bob.open_mail("inbox", SUBJECT).await?;
    contains("the reading pane's .body", &pane.body, BODY)?;

    let alice = w.get("alice")?;
    alice
        .wait_recipient(&["sent"], SUBJECT, &bob_addr, "delivered")
        .await?;
    alice.open_folder("outbox").await?;
    alice
        .wait_until(&format!("{SUBJECT:?} to leave the Outbox"), || async move {
            let rows = alice.rows().await?;
            Ok(
                if rows
                    .iter()
                    .any(|r| r.subject.as_deref().is_some_and(|s| s.contains(SUBJECT)))
                {
                    Err(format!(
                        "outbox rows {:?}",
                        rows.iter()
                            .map(|r| (&r.subject, &r.status))
                            .collect::<Vec<_>>()
                    ))
                } else {
                    Ok(())
                },
            )
        })
        .await?;
    Ok(())
}

/// (d) One mail To Bob, Cc Carol: both receive it; Alice's Sent shows both delivered.
/// Carol answers with Reply all, which addresses Alice and Bob; both receive her answer.
async fn mail_to_bob_and_carol(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Plans for the weekend";
    const BODY: &str = "Bob and Carol: hiking on Saturday?";
    w.person("alice").await?;
    w.person("bob").await?;
    w.person("carol").await?;
    let (alice, bob, carol) = (w.get("alice")?, w.get("bob")?, w.get("carol")?);
    let (alice_addr, bob_addr, carol_addr) = (w.addr("alice"), w.addr("bob"), w.addr("carol"));

    alice.compose(&bob_addr, &carol_addr, SUBJECT, BODY).await?;

    for (who, b) in [("Bob", bob), ("Carol", carol)] {
        let pane = b
            .open_mail("inbox", SUBJECT)
            .await
            .with_context(|| format!("{who} receiving"))?;
        contains("the reading pane's .from", &pane.from, &alice_addr)?;
        contains("the reading pane's .to", &pane.to, &bob_addr)?;
        contains("the reading pane's .cc", &pane.cc, &carol_addr)?;
        contains("the reading pane's .body", &pane.body, BODY)?;
    }
    for addr in [&bob_addr, &carol_addr] {
        alice
            .wait_recipient(&["sent"], SUBJECT, addr, "delivered")
            .await?;
    }

    // Carol answers everyone: Reply all fills in Alice as To, Bob as Cc (not herself), the
    // subject and the quoted mail; both get her answer.
    let answer = format!("Re: {SUBJECT}");
    carol.open_mail("inbox", SUBJECT).await?;
    carol.click("#reading-pane .reply-all").await?;
    carol.wait_for("#compose-to").await?;
    let fields: Vec<String> = carol
        .eval(
            "return ['#compose-to', '#compose-cc', '#compose-subject', '#compose-body'] \
                     .map(s => document.querySelector(s).value);",
            vec![],
        )
        .await?;
    ensure!(
        fields.len() == 4
            && fields[0] == alice_addr
            && fields[1] == bob_addr
            && fields[2] == answer
            && fields[3].contains(&format!("{alice_addr} wrote:\n> {BODY}")),
        "Reply all starts as {fields:?}"
    );
    carol.click("#compose-send").await?;
    carol.wait_gone("#compose-to").await?;
    for (who, b) in [("Alice", alice), ("Bob", bob)] {
        let pane = b
            .open_mail("inbox", &answer)
            .await
            .with_context(|| format!("{who} receiving Carol's answer"))?;
        contains("the answer's .from", &pane.from, &carol_addr)?;
        contains("the answer's .body", &pane.body, &format!("> {BODY}"))?;
    }
    Ok(())
}

/// (e) A mail to Bob and to an address that does not exist: that recipient fails with
/// "no such address", Bob still gets the mail.
async fn unknown_recipient_fails_alone(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Meeting notes";
    const BODY: &str = "Notes from today's meeting.";
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice, bob) = (w.get("alice")?, w.get("bob")?);
    let bob_addr = w.addr("bob");
    let nobody = w.addr("nobody");

    alice
        .compose(&format!("{bob_addr}, {nobody}"), "", SUBJECT, BODY)
        .await?;

    let pane = bob.open_mail("inbox", SUBJECT).await?;
    contains("the reading pane's .body", &pane.body, BODY)?;

    let folders = ["sent", "outbox"];
    let failed = alice
        .wait_recipient(&folders, SUBJECT, &nobody, "failed")
        .await?;
    ensure!(
        failed.contains("no such address"),
        "Alice's status for {nobody} reads {failed:?}, expected the reason \"no such address\""
    );
    alice
        .wait_recipient(&folders, SUBJECT, &bob_addr, "delivered")
        .await?;
    Ok(())
}

/// (f) Sign-up refuses a taken name and an invalid one with a message in #signup-error, and
/// still accepts a good name afterwards.
async fn signup_rejects_taken_and_invalid_names(w: &mut World) -> Result<()> {
    w.person("alice").await?; // makes "alice" taken
    let m = w.h.browser("mallory").await?;
    w.browsers.insert("mallory".into(), m);
    let m = w.get("mallory")?;

    for (name, why) in [("alice", "taken"), ("-x y", "invalid")] {
        m.wait_for("#signup-name").await?;
        m.submit_signup(name).await?;
        let err = m
            .wait_for_nonempty("#signup-error")
            .await
            .with_context(|| format!("signing up with the {why} name {name:?}"))?;
        ensure!(
            m.texts("#my-address").await?.is_empty(),
            "signing up as {name:?} ({why}) was accepted; #signup-error said {err:?}"
        );
        println!("    #signup-error for {why} {name:?}: {err:?}");
        m.reload().await?;
    }
    m.sign_up("mallory")
        .await
        .context("a good name after two refusals")?;
    w.close("mallory").await?;
    Ok(())
}

/// (g) Alice adds Bob as a contact: his dot shows online; Bob closes his browser: it turns
/// offline; Bob comes back: online again.
async fn contacts_show_live_presence(w: &mut World) -> Result<()> {
    w.person("alice").await?;
    w.person("bob").await?;
    let bob_addr = w.addr("bob");
    let alice = w.get("alice")?;
    // Not an address: refused, and what was typed stays, to be put right.
    const TYPO: &str = "bob at localhost";
    alice.type_into("#contact-add-input", TYPO).await?;
    alice.click("#contact-add-button").await?;
    alice.wait_for_text(".contacts .error", TYPO).await?;
    let typed = alice.input_value("#contact-add-input").await?;
    ensure!(typed == TYPO, "after the refusal the field holds {typed:?}");
    alice.clear_input("#contact-add-input").await?;
    alice.add_contact(&bob_addr).await?;
    alice.wait_presence(&bob_addr, "online").await?;

    w.close("bob").await?;
    w.get("alice")?
        .wait_presence(&bob_addr, "offline")
        .await
        .context("after Bob closed his browser")?;

    w.person("bob").await?;
    w.get("alice")?
        .wait_presence(&bob_addr, "online")
        .await
        .context("after Bob came back")?;
    Ok(())
}

/// (h) Issue 3: Alice mails Bob (browser closed) and Carol (online). Carol gets it directly;
/// Alice's status for Bob reads "cached at relay". Alice closes her browser; Bob returns and
/// receives the mail from the relay cache without Alice online. When Alice returns, her Sent
/// shows Bob delivered (the relay's receipt). Before she leaves, Alice cancels a second mail
/// for Bob in her Outbox: the relay gives its copy back, and Bob never gets it.
async fn offline_recipient_via_relay_cache(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Sealed while you were out";
    const BODY: &str = "Bob, this waited in the relay cache, sealed for you alone.";
    w.person("alice").await?;
    w.person("bob").await?;
    w.person("carol").await?;
    let (bob_addr, carol_addr) = (w.addr("bob"), w.addr("carol"));
    w.close("bob").await?;

    let alice = w.get("alice")?;
    alice.compose(&bob_addr, &carol_addr, SUBJECT, BODY).await?;
    let pane = w.get("carol")?.open_mail("inbox", SUBJECT).await?;
    contains("Carol's reading pane's .body", &pane.body, BODY)?;
    let alice = w.get("alice")?;
    let status = alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    ensure!(
        status.contains(&format!("{bob_addr}: cached at relay")),
        "Alice's Outbox status for Bob reads {status:?}"
    );
    alice
        .wait_recipient(&["outbox"], SUBJECT, &carol_addr, "delivered")
        .await?;

    // A second mail for Bob, sent too soon: Alice cancels it in the Outbox. The relay gives
    // its copy back, her line for Bob says so, the mail moves to Sent, and Bob never gets it.
    const TOO_SOON: &str = "Sent too soon";
    alice
        .compose(&bob_addr, "", TOO_SOON, "Please ignore this one.")
        .await?;
    alice
        .wait_recipient(&["outbox"], TOO_SOON, &bob_addr, "cached")
        .await?;
    alice.open_mail("outbox", TOO_SOON).await?;
    alice.click("#cancel-sending").await?;
    let status = alice
        .wait_recipient(&["sent", "outbox"], TOO_SOON, &bob_addr, "cancelled")
        .await?;
    ensure!(
        status == format!("{bob_addr}: not sent — you cancelled sending"),
        "Alice's line for Bob reads {status:?}"
    );
    alice.wait_row("sent", TOO_SOON).await?;

    w.close("alice").await?;
    let bob = w.person("bob").await?;
    let pane = bob
        .open_mail("inbox", SUBJECT)
        .await
        .context("Bob receiving from the relay cache while Alice is away")?;
    contains("Bob's reading pane's .body", &pane.body, BODY)?;
    let rows = bob.rows().await?;
    ensure!(
        !rows.iter().any(|r| r.subject.as_deref() == Some(TOO_SOON)),
        "Bob got the mail Alice called back: {rows:?}"
    );

    let alice = w.person("alice").await?;
    alice
        .wait_recipient(&["sent", "outbox"], SUBJECT, &bob_addr, "delivered")
        .await
        .context("Alice back: the relay's receipt")?;
    Ok(())
}

/// (i) Issue 3: the relay stores ciphertext only. After a deposit for the offline Bob, the
/// relay's database files (including the WAL) contain neither the subject nor the body.
async fn relay_stores_ciphertext_only(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Quarterly-figures-7c1e9a";
    const BODY: &str = "The-secret-number-is-4f0d2b-and-nobody-else-may-read-it";
    w.person("alice").await?;
    w.person("bob").await?;
    let bob_addr = w.addr("bob");
    w.close("bob").await?;
    let alice = w.get("alice")?;
    alice.compose(&bob_addr, "", SUBJECT, BODY).await?;
    // "cached" means the relay answered `deposited`: the envelope is committed.
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;

    relay_files_lack(w, &[SUBJECT, BODY])?;

    // The envelope is good for Bob.
    let bob = w.person("bob").await?;
    let pane = bob.open_mail("inbox", SUBJECT).await?;
    contains("Bob's reading pane's .body", &pane.body, BODY)?;
    Ok(())
}

/// (j) A sealed mail that does not verify is rejected visibly and never shown as from its
/// claimed sender. An attacker, `trudy` (a native client in the test process with her own
/// account keys), leaves envelopes for the offline Bob in the relay cache:
/// 1. a mail whose sealed header and inner `From` claim Alice (an existing account), sealed
///    for Bob's published key but signed with Trudy's key — it does not verify as Alice's;
/// 2. after Bob's first return, a genuine envelope of Trudy's with one ciphertext byte
///    flipped in transit — its signature no longer verifies;
/// 3. a control: a genuine envelope of Trudy's, deposited the same way, which Bob must get.
///
/// Each time Bob comes back (same browser profile), the page shows the notice "A mail
/// claiming to be from … failed verification and was not delivered (…)", his Inbox has the
/// control mail (from Trudy) and no mail with a forged subject, and the relay tells Trudy
/// the control mail was delivered while the rejected ones were not.
///
/// The relay attributes a cached envelope to the session that deposited it, so Bob's client
/// opens the forgery with Trudy's key and refuses it because its sealed `From` (Alice) is not
/// its depositor: the notice names Trudy, never Alice as the sender of a delivered mail.
async fn tampered_envelope_rejected_visibly(w: &mut World) -> Result<()> {
    const FORGED: &str = "Forged-as-Alice-3d9b: new bank details";
    const FLIPPED: &str = "Flipped-in-transit-8a41";
    const CONTROL: &str = "Genuine-from-Trudy-5e27";
    const REJECTED: &str = "failed verification and was not delivered";
    w.person("alice").await?;
    w.person("bob").await?;
    let domain = w.h.config.domain.clone();
    let address = |name: &str| Address::new(name, &domain).context("an address");
    let (alice, bob, trudy_addr) = (address("alice")?, address("bob")?, address("trudy")?);
    let (alice_s, trudy_s) = (alice.to_string(), trudy_addr.to_string());
    w.close("bob").await?;

    // Trudy: a native account. She reads the directory like any sender would.
    let trudy_seed = random_bytes::<32>()?;
    let trudy = Identity::from_seed(trudy_addr.clone(), trudy_seed);
    let mut relay = NativeClient::connect(&w.h.relay.url, w.h.config.wait).await?;
    relay.register(&trudy).await?;
    let (alice_signing_key, _) = relay.lookup(&alice).await.context("Alice's account")?;
    let (_, bob_key) = relay.lookup(&bob).await?;
    let bob_key = bob_key.context("Bob has published no encryption key")?;

    // `first` orders the Message-IDs (`<uuid@host>`, the uuid starting with this byte): the
    // client opens envelopes that waited together for their sender's keys in Message-ID
    // order, so with the forged one before the flipped one, the notice left after both is
    // the flipped one's.
    let message_id = |first: u8| -> Result<MessageId> {
        let mut r = random_bytes::<16>()?;
        r[0] = first;
        Ok(MessageId::new(r, &domain))
    };
    let mail = |id: &MessageId, from: &Address, subject: &str| Mail {
        message_id: id.clone(),
        from: from.clone(),
        to: vec![bob.clone()],
        cc: vec![],
        subject: subject.into(),
        date: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        body: format!("{subject}: please act today."),
        in_reply_to: None,
        references: vec![],
        priority: Priority::Normal,
        attachments: vec![],
    };

    // (1) Claims Alice, signed with Trudy's key (an identity with Alice's address and
    // Trudy's seed): well-formed, for Bob, but not Alice's signature.
    let forged_id = message_id(0x10)?;
    let as_alice = Identity::from_seed(alice.clone(), trudy_seed);
    let forged = seal::seal(
        &mail(&forged_id, &alice, FORGED),
        &as_alice,
        &bob,
        &bob_key,
        random_bytes()?,
    )?;
    let header = seal::peek(&forged)?;
    ensure!(
        header.from == alice && header.to == bob,
        "forged header {header:?}"
    );
    ensure!(
        seal::open(&forged, &trudy, &alice_signing_key) == Err(SealError::BadSignature),
        "the forged envelope must not verify with Alice's signing key"
    );
    // (3) The control: genuine. Its signature verifies with Trudy's key (opening then stops
    // only because it is sealed for Bob, not for Trudy).
    let control_id = message_id(0x80)?;
    let control = seal::seal(
        &mail(&control_id, &trudy_addr, CONTROL),
        &trudy,
        &bob,
        &bob_key,
        random_bytes()?,
    )?;
    ensure!(
        seal::open(&control, &trudy, &trudy.public_key()) == Err(SealError::Mismatch),
        "the control envelope's signature should verify"
    );
    relay.deposit(&bob, &forged_id, &forged).await?;
    relay.deposit(&bob, &control_id, &control).await?;

    // Bob returns (same profile): the control mail arrives, the forgery is refused visibly.
    let b = w.person("bob").await?;
    let row = b
        .wait_row("inbox", CONTROL)
        .await
        .context("the genuine control mail deposited by the native client")?;
    contains("the control row's .from", &row.from, trudy_s.as_str())?;
    let notice = b.wait_for_text("#notice", REJECTED).await?;
    println!("    #notice after the forgery: {notice:?}");
    ensure!(
        notice.contains(trudy_s.as_str()) || notice.contains(alice_s.as_str()),
        "the notice names neither the claimed sender nor the depositor: {notice:?}"
    );
    no_row_with(b, "inbox", &[FORGED, FLIPPED]).await?;
    let pane = b.open_mail("inbox", CONTROL).await?;
    contains("the control mail's .from", &pane.from, trudy_s.as_str())?;

    // The relay's receipts: the control mail was delivered (released after Bob stored it).
    let delivered = receipt_of(&mut relay, &control_id).await?;
    ensure!(
        delivered == ReceiptOutcome::Delivered,
        "control receipt {delivered:?}"
    );
    // The forgery was refused at the relay: deleted there, and its depositor told.
    let refused = receipt_of(&mut relay, &forged_id).await?;
    ensure!(
        refused == ReceiptOutcome::Refused,
        "receipt of the forgery {refused:?}"
    );

    // (2) Bob leaves again; a genuine envelope of Trudy's is altered in transit: one byte of
    // the ciphertext (which ends right before the signature's length byte and 64 bytes).
    w.close("bob").await?;
    let flipped_id = message_id(0xe0)?;
    let mut flipped = seal::seal(
        &mail(&flipped_id, &trudy_addr, FLIPPED),
        &trudy,
        &bob,
        &bob_key,
        random_bytes()?,
    )?;
    let i = flipped.len() - 1 - 64 - 8;
    flipped[i] ^= 0x80;
    ensure!(
        seal::peek(&flipped)?.message_id == flipped_id,
        "the flipped envelope should still be well-formed"
    );
    ensure!(
        seal::open(&flipped, &trudy, &trudy.public_key()) == Err(SealError::BadSignature),
        "the flipped byte should break the signature"
    );
    relay.deposit(&bob, &flipped_id, &flipped).await?;

    let b = w.person("bob").await?;
    let trudy_str = trudy_s.as_str();
    // The tampered one's notice names the broken signature.
    let notice = b
        .wait_until(
            &format!("#notice: {trudy_str}'s mail {REJECTED}, the signature named"),
            || async move {
                let t = b.texts("#notice").await?;
                Ok(
                    match t.iter().find(|t| {
                        t.contains(REJECTED) && t.contains(trudy_str) && t.contains("signature")
                    }) {
                        Some(t) => Ok(t.clone()),
                        None => Err(format!("#notice {t:?}")),
                    },
                )
            },
        )
        .await
        .context("Bob back after the tampered deposit")?;
    println!("    #notice after the tampered envelope: {notice:?}");
    b.wait_row("inbox", CONTROL).await?;
    no_row_with(b, "inbox", &[FORGED, FLIPPED]).await?;
    let refused = receipt_of(&mut relay, &flipped_id).await?;
    ensure!(
        refused == ReceiptOutcome::Refused,
        "receipt of the tampered envelope {refused:?}"
    );
    // Acknowledged, the receipts go; the relay then keeps nothing of either envelope (a
    // `check` finds neither), so a later sign-in has nothing to reject again.
    for id in [&forged_id, &flipped_id] {
        relay
            .send(ClientFrame::AckReceipt {
                to: bob.clone(),
                message_id: id.clone(),
            })
            .await?;
        relay
            .send(ClientFrame::Check {
                to: bob.clone(),
                message_id: id.clone(),
            })
            .await?;
        let kept = relay
            .wait_for(
                &format!("the relay's answer to `check` of {id}"),
                |f| match f {
                    ServerFrame::Deposited { message_id, .. } if message_id == id => Some(Ok(true)),
                    ServerFrame::Error {
                        code: ErrorCode::NotFound,
                        about: Some(about),
                        ..
                    } if about.message_id.as_ref() == Some(id) => Some(Ok(false)),
                    _ => None,
                },
            )
            .await?;
        ensure!(!kept, "the relay still keeps the refused {id}");
    }
    w.close("bob").await?;
    let b = w.person("bob").await?;
    b.wait_row("inbox", CONTROL).await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let notices = b.texts("#notice").await?;
    ensure!(
        !notices.iter().any(|t| t.contains(REJECTED)),
        "a later sign-in rejected mail again: {notices:?}"
    );
    no_row_with(b, "inbox", &[FORGED, FLIPPED]).await?;
    relay.close().await;
    Ok(())
}

/// The outcome of the receipt `relay` (the depositor) gets for its envelope `id`.
async fn receipt_of(relay: &mut NativeClient, id: &MessageId) -> Result<ReceiptOutcome> {
    relay
        .wait_for(&format!("the receipt of {id}"), |f| match f {
            ServerFrame::Receipt {
                message_id,
                outcome,
                ..
            } if message_id == id => Some(Ok(*outcome)),
            _ => None,
        })
        .await
}

/// Fails if `folder` lists a row whose subject contains any of `subjects`.
pub(crate) async fn no_row_with(b: &Browser, folder: &str, subjects: &[&str]) -> Result<()> {
    b.open_folder(folder).await?;
    let rows = b.rows().await?;
    for s in subjects {
        if let Some(r) = peermail_e2e::browser::row_about(&rows, s) {
            bail!("{}'s {folder} shows {s:?}: {r:?}", b.name);
        }
    }
    Ok(())
}

/// Fails unless the relay's data directory holds a database file, and unless none of its
/// files (the database, its WAL and shared memory) contains any of `needles` in clear.
fn relay_files_lack(w: &World, needles: &[&str]) -> Result<()> {
    let dir = w.h.scratch.path().join("relay-data");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    ensure!(
        files.iter().any(|f| f.to_string_lossy().contains(".sqlite")
            || f.to_string_lossy().contains(".db")),
        "no database file in {}: {files:?}",
        dir.display()
    );
    let mut total = 0;
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        total += bytes.len();
        for needle in needles {
            ensure!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains {needle:?} in clear",
                f.display()
            );
        }
    }
    println!(
        "    searched {} files ({total} bytes): {files:?}",
        files.len()
    );
    Ok(())
}

/// (k) Issue 3, co-recipient holding: when the relay cache refuses a sealed copy for an
/// offline recipient, another recipient of the same mail that already has it holds the copy.
///
/// Dan signs up (publishing his key) and closes his browser. A native client, `filler`, fills
/// Dan's share of the relay cache (the harness starts the relay with
/// `--cache-quota-mib` [`procs::CACHE_QUOTA_MIB`]) with genuine sealed mails for Dan until
/// the relay answers `quota_exceeded`, ending with envelopes smaller than Alice's mail will
/// be, so the cache has no room for it. Alice (online) mails Dan and Carol (online): Carol
/// gets it directly; the relay refuses Dan's copy, and Alice's node hands it to Carol's node:
/// Alice's Outbox shows "dan@…: held by carol@…", Carol delivered. Carol's browser keeps the
/// sealed copy; the relay's files never contain the mail in clear. Alice closes her browser;
/// Dan comes back and gets the mail (from Carol's node, sealed by Alice) together with the
/// filler mails from the relay cache; Carol's copy is deleted. Alice comes back: the relay's
/// receipt makes Dan delivered and the mail moves to Sent.
async fn co_recipient_holds_when_relay_cache_refuses(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Held-by-Carol-2b7f: the minutes";
    const BODY: &str =
        "Dan and Carol, the minutes of Tuesday. Dan: Carol's browser kept this for you.";
    const FILLER: &str = "Filler-for-Dan-91c4";
    /// Body sizes of the filler mails, largest first: at each size the filler deposits until
    /// the relay refuses, so the room left ends up smaller than the last (empty-bodied) one.
    const FILLER_BODIES: &[usize] = &[44 * 1024, 16 * 1024, 4 * 1024, 1024, 256, 0];
    /// IndexedDB of the web client and its store of held copies (web-client/src/store.rs).
    const DB: &str = "peermail";
    const HELD_STORE: &str = "held";

    let domain = w.h.config.domain.clone();
    let address = |name: &str| Address::new(name, &domain).context("an address");
    let (dan, carol, alice, filler_addr) = (
        address("dan")?,
        address("carol")?,
        address("alice")?,
        address("filler")?,
    );
    let (dan_s, carol_s, alice_s) = (dan.to_string(), carol.to_string(), alice.to_string());

    // Dan signs up (his client publishes his encryption key) and leaves.
    w.person("dan").await?;
    let mut relay = NativeClient::connect(&w.h.relay.url, w.h.config.wait).await?;
    let filler = Identity::from_seed(filler_addr.clone(), random_bytes()?);
    relay.register(&filler).await?;
    let mut dan_key = None;
    for _ in 0..40 {
        if let (_, Some(k)) = relay.lookup(&dan).await? {
            dan_key = Some(k);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let dan_key = dan_key.context("Dan's browser published no encryption key within 10 s")?;
    w.close("dan").await?;

    // The filler fills Dan's share of the relay cache with genuine mails for him.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    };
    let mut stored = 0usize;
    let mut stored_bytes = 0usize;
    let mut smallest_refused = None;
    for (level, &body_len) in FILLER_BODIES.iter().enumerate() {
        loop {
            ensure!(
                stored < 200,
                "the relay took {stored} filler mails ({stored_bytes} bytes) for Dan and \
                 never answered quota_exceeded (quota {} MiB)",
                procs::CACHE_QUOTA_MIB
            );
            let id = MessageId::new(random_bytes()?, &domain);
            let mail = Mail {
                message_id: id.clone(),
                from: filler_addr.clone(),
                to: vec![dan.clone()],
                cc: vec![],
                subject: format!("{FILLER} {stored}"),
                date: now_ms(),
                body: "f".repeat(body_len),
                in_reply_to: None,
                references: vec![],
                priority: Priority::Normal,
                attachments: vec![],
            };
            let sealed = seal::seal(&mail, &filler, &dan, &dan_key, random_bytes()?)?;
            match relay.try_deposit(&dan, &id, &sealed).await? {
                Ok(()) => {
                    stored += 1;
                    stored_bytes += sealed.len();
                }
                Err((ErrorCode::QuotaExceeded, message)) => {
                    if level == 0 {
                        println!(
                            "    the relay refused filler mail {} ({} bytes): {message}",
                            stored + 1,
                            sealed.len()
                        );
                    }
                    smallest_refused = Some(sealed.len());
                    break;
                }
                Err((code, message)) => {
                    bail!("depositing filler mail {stored} for Dan: {code:?}: {message}")
                }
            }
        }
    }
    let smallest_refused = smallest_refused.context("no filler mail was refused")?;
    ensure!(stored > 0, "the relay stored no filler mail for Dan");
    println!(
        "    {stored} filler mails ({stored_bytes} bytes) wait for Dan; the relay refused one \
         of {smallest_refused} bytes"
    );
    // Alice's mail, sealed for Dan, is larger than the last refused filler mail, so the
    // relay cache has no room for it either.
    let like_alices = Mail {
        message_id: MessageId::new(random_bytes()?, &domain),
        from: alice.clone(),
        to: vec![dan.clone(), carol.clone()],
        cc: vec![],
        subject: SUBJECT.into(),
        date: now_ms(),
        body: BODY.into(),
        in_reply_to: None,
        references: vec![],
        priority: Priority::Normal,
        attachments: vec![],
    };
    let alice_like = Identity::from_seed(alice.clone(), random_bytes()?);
    let size = seal::seal(&like_alices, &alice_like, &dan, &dan_key, random_bytes()?)?.len();
    ensure!(
        size > smallest_refused,
        "Alice's mail sealed for Dan ({size} bytes) would fit where a {smallest_refused}-byte \
         filler mail did not — the test's premise is broken"
    );

    // Alice mails Dan (offline, cache full) and Carol (online).
    w.person("alice").await?;
    w.person("carol").await?;
    w.get("alice")?
        .compose(&format!("{dan_s}, {carol_s}"), "", SUBJECT, BODY)
        .await?;
    let pane = w
        .get("carol")?
        .open_mail("inbox", SUBJECT)
        .await
        .context("Carol receiving directly")?;
    contains("Carol's reading pane's .from", &pane.from, &alice_s)?;
    contains("Carol's reading pane's .body", &pane.body, BODY)?;

    let a = w.get("alice")?;
    let status = a
        .wait_recipient(&["outbox"], SUBJECT, &dan_s, "held")
        .await
        .context("the relay cache refused Dan's copy: Carol's node should hold it")?;
    ensure!(
        status.contains(&format!("{dan_s}: held by {carol_s}")),
        "Alice's Outbox status for Dan reads {status:?}"
    );
    a.wait_recipient(&["outbox"], SUBJECT, &carol_s, "delivered")
        .await?;
    let row = a.wait_row("outbox", SUBJECT).await?;
    contains(
        "the Outbox row's .status",
        &row.status,
        "held by a co-recipient",
    )?;

    // Carol's browser keeps the sealed copy; the relay has nothing readable of the mail.
    let c = w.get("carol")?;
    c.wait_idb_count(DB, HELD_STORE, 1)
        .await
        .context("Carol's browser to keep one held copy")?;
    println!("    Carol's browser holds 1 sealed copy");
    relay_files_lack(w, &[SUBJECT, BODY])?;

    // Alice leaves; Dan comes back and fetches the copy from Carol's node.
    w.close("alice").await?;
    let d = w.person("dan").await?;
    let pane = d
        .open_mail("inbox", SUBJECT)
        .await
        .context("Dan receiving the copy Carol's node held, with Alice away")?;
    contains("Dan's reading pane's .from", &pane.from, &alice_s)?;
    contains("Dan's reading pane's .subject", &pane.subject, SUBJECT)?;
    contains("Dan's reading pane's .body", &pane.body, BODY)?;
    // The filler mails come from the relay cache meanwhile.
    d.open_folder("inbox").await?;
    let fillers = d
        .wait_until(
            &format!("the {stored} filler mails in Dan's Inbox"),
            || async move {
                let n = d
                    .rows()
                    .await?
                    .iter()
                    .filter(|r| r.subject.as_deref().is_some_and(|s| s.contains(FILLER)))
                    .count();
                Ok(if n == stored {
                    Ok(n)
                } else {
                    Err(format!("{n} filler rows"))
                })
            },
        )
        .await?;
    println!("    Dan's Inbox shows the {fillers} filler mails");

    // Carol's node deletes its copy once Dan has it.
    let c = w.get("carol")?;
    c.wait_idb_count(DB, HELD_STORE, 0)
        .await
        .context("Carol's browser to delete the held copy")?;

    // Alice comes back: the relay's receipt says Dan has it; the mail is in Sent.
    let a = w.person("alice").await?;
    let status = a
        .wait_recipient(&["sent"], SUBJECT, &dan_s, "delivered")
        .await
        .context("Alice back: the relay's receipt for Dan")?;
    ensure!(
        status.contains(&format!("{dan_s}: delivered")),
        "Alice's Sent status for Dan reads {status:?}"
    );
    a.wait_recipient(&["sent"], SUBJECT, &carol_s, "delivered")
        .await?;
    no_row_with(a, "outbox", &[SUBJECT]).await?;
    relay.close().await;
    Ok(())
}

// ----- issue 4: attachments -----

/// Deterministic, incompressible-looking bytes (xorshift), so a test file is reproducible.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A valid `w`×`h` RGB PNG (stored, uncompressed zlib), so the page can preview it.
fn png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            raw.extend_from_slice(&[(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128]);
        }
    }
    // zlib: header, stored blocks of at most 65535 bytes, Adler-32.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes a test file for attaching and returns its path.
pub(crate) fn test_file(w: &World, name: &str, bytes: &[u8]) -> Result<std::path::PathBuf> {
    let dir = w.h.config.out_dir.join("files");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// Bob closes his browser; Alice mails him the file at `path` and waits until the relay
/// keeps both the mail and the file for him ("cached", "kept at the relay").
async fn leave_file_at_relay(
    w: &mut World,
    bob_addr: &str,
    subject: &str,
    body: &str,
    path: &std::path::Path,
) -> Result<()> {
    w.close("bob").await?;
    let alice = w.get("alice")?;
    alice
        .compose_with_files(bob_addr, subject, body, &[path])
        .await?;
    alice
        .wait_recipient(&["outbox"], subject, bob_addr, "cached")
        .await?;
    alice
        .wait_attachment_status(&format!("still needed by {bob_addr} (kept at the relay)"))
        .await?;
    Ok(())
}

pub(crate) fn same_file(what: &str, got: &[u8], want: &[u8]) -> Result<()> {
    let (g, h) = (
        peermail_core::attach::sha256(got),
        peermail_core::attach::sha256(want),
    );
    ensure!(
        g == h,
        "{what}: the saved file ({} bytes, SHA-256 {}) is not the original ({} bytes, SHA-256 {})",
        got.len(),
        hex(&g),
        want.len(),
        hex(&h)
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Issue 4: Alice attaches a photo and a 3 MiB file with the file picker and mails Bob, who
/// is online. Bob's node pulls both from Alice's over the data channel, verifying every
/// chunk and the whole file; his reading pane shows them complete, previews the photo, and
/// the file he saves is byte for byte the original. Alice's Sent mail lists them too. Then
/// Bob forwards the mail to Carol: its text and both files go with it, and the file Carol
/// saves is the original too.
async fn attachments_pulled_from_the_online_sender(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Photos from the weekend";
    w.person("alice").await?;
    w.person("bob").await?;
    let photo = png(64, 48);
    let data = noise(3 * 1024 * 1024 + 4_321, 11);
    let photo_path = test_file(w, "weekend.png", &photo)?;
    let data_path = test_file(w, "notes.bin", &data)?;
    let bob_addr = w.addr("bob");
    w.get("alice")?
        .compose_with_files(
            &bob_addr,
            SUBJECT,
            "Two files for you.",
            &[&photo_path, &data_path],
        )
        .await?;

    let bob = w.get("bob")?;
    bob.open_mail("inbox", SUBJECT).await?;
    let done = bob.wait_attachment("notes.bin", &["complete"]).await?;
    ensure!(
        done.size == Some(data.len() as u64) && done.done == Some(data.len() as u64),
        "notes.bin complete with the wrong size: {done:?}"
    );
    bob.wait_attachment("weekend.png", &["complete"]).await?;
    let width: u64 = bob
        .wait_until("the photo's preview to load", || async move {
            let w: Option<u64> = bob
                .eval(
                    "const i = document.querySelector('li.attachment[data-name=\"weekend.png\"] img.attachment-preview'); \
                     return i && i.complete ? i.naturalWidth : null;",
                    vec![],
                )
                .await?;
            Ok(w.filter(|w| *w > 0).ok_or_else(|| "no preview yet".to_string()))
        })
        .await?;
    ensure!(
        width == 64,
        "the preview is {width} pixels wide, the photo 64"
    );
    bob.click("li.attachment[data-name=\"notes.bin\"] .save-attachment")
        .await?;
    let saved = bob.wait_saved("notes.bin").await?;
    same_file("notes.bin", &saved, &data)?;

    // Alice's copy in Sent lists both files, fetched by Bob (his node told hers), and what
    // her page sent him.
    let alice = w.get("alice")?;
    alice.open_mail("sent", SUBJECT).await?;
    let sent: Option<String> = alice
        .attr(
            &format!(
                "li.attachment[data-name=\"notes.bin\"] li.sending-to[data-to=\"{bob_addr}\"]"
            ),
            "data-sent",
        )
        .await?;
    ensure!(
        sent == Some(data.len().to_string()),
        "Alice's page says it sent {sent:?} bytes of notes.bin to Bob, not {}",
        data.len()
    );
    alice
        .wait_until(
            "Alice's Sent mail to show both files fetched",
            || async move {
                let listed = alice.attachments().await?;
                let fetched = listed.len() == 2
                    && listed.iter().all(|a| {
                        a.state.as_deref() == Some("sent")
                            && a.status == "fetched by every recipient"
                    });
                Ok(if fetched {
                    Ok(())
                } else {
                    Err(format!("{listed:?}"))
                })
            },
        )
        .await?;

    // Bob forwards the mail to Carol: the forward starts with Alice's text and both files
    // (read back out of Bob's store), and Carol gets them from Bob's page.
    w.person("carol").await?;
    let carol_addr = w.addr("carol");
    let forwarded = format!("Fwd: {SUBJECT}");
    let bob = w.get("bob")?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.click("#reading-pane .forward").await?;
    bob.wait_until("the forward to list both files", || async move {
        let names = bob
            .texts("#compose-attachments .compose-attachment")
            .await?;
        let both = names.len() == 2
            && names.iter().any(|n| n.contains("weekend.png"))
            && names.iter().any(|n| n.contains("notes.bin"));
        Ok(if both {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        })
    })
    .await?;
    let (subject, body): (String, String) = bob
        .eval(
            "return [document.querySelector('#compose-subject').value, \
                     document.querySelector('#compose-body').value];",
            vec![],
        )
        .await?;
    ensure!(
        subject == forwarded,
        "the forward's subject is {subject:?}, not {forwarded:?}"
    );
    let alice_addr = w.addr("alice");
    ensure!(
        body.contains("---------- Forwarded message ----------")
            && body.contains(&format!("From: {alice_addr}"))
            && body.ends_with("Two files for you."),
        "the forward's body: {body:?}"
    );
    ensure!(
        bob.texts("#compose-note").await?.is_empty(),
        "Bob's page holds both files, yet Compose says some are not attached"
    );
    bob.type_into("#compose-to", &carol_addr).await?;
    bob.click("#compose-send").await?;
    bob.wait_gone("#compose-to").await?;

    let carol = w.get("carol")?;
    carol.open_mail("inbox", &forwarded).await?;
    let pane = carol.pane().await?.context("Carol's reading pane")?;
    ensure!(
        pane.from.as_deref() == Some(bob_addr.as_str())
            && pane
                .body
                .as_deref()
                .is_some_and(|b| b.contains("Two files for you.") && b.contains(&alice_addr)),
        "Carol's forward: {pane:?}"
    );
    let done = carol.wait_attachment("notes.bin", &["complete"]).await?;
    ensure!(
        done.size == Some(data.len() as u64),
        "the forwarded notes.bin has the wrong size: {done:?}"
    );
    carol.wait_attachment("weekend.png", &["complete"]).await?;
    carol
        .click("li.attachment[data-name=\"notes.bin\"] .save-attachment")
        .await?;
    let saved = carol.wait_saved("notes.bin").await?;
    same_file("forwarded notes.bin", &saved, &data)?;
    Ok(())
}

/// Issue 4: a large attachment waits on its sender's node. Alice mails Bob (offline) a
/// 48 MiB file and closes her browser; the mail reaches Bob through the relay cache, and
/// the file shows "available when alice@… is online". When Alice is back, Bob's node pulls
/// it; Bob closes his browser in the middle of the transfer. When he opens it again, the
/// transfer resumes from the chunks already stored, and the saved file is the original.
async fn large_attachment_waits_for_its_sender_and_resumes(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "The whole film";
    const NAME: &str = "film.mkv";
    const MIB: u64 = 1024 * 1024;
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));
    let film = noise(48 * MIB as usize + 777, 12);
    let path = test_file(w, NAME, &film)?;
    w.close("bob").await?;
    let alice = w.get("alice")?;
    alice
        .compose_with_files(&bob_addr, SUBJECT, "Enjoy.", &[&path])
        .await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    let listed = alice.attachments().await?;
    ensure!(
        listed.len() == 1 && listed[0].status == format!("still needed by {bob_addr}"),
        "Alice's Outbox mail lists {listed:?}"
    );
    w.close("alice").await?;

    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    let waiting = bob.wait_attachment(NAME, &["waiting"]).await?;
    ensure!(
        waiting
            .status
            .contains(&format!("available when {alice_addr} is online")),
        "while Alice is away the file reads {:?}",
        waiting.status
    );

    w.person("alice").await?;
    let bob = w.get("bob")?;
    let part = bob
        .wait_until("part of the film to arrive", || async move {
            let all = bob.attachments().await?;
            let a = all.iter().find(|a| a.name.as_deref() == Some(NAME));
            Ok(match a {
                Some(a) if a.done.unwrap_or(0) >= 6 * MIB => Ok(a.clone()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    ensure!(
        part.state.as_deref() != Some("complete"),
        "the film arrived too fast to interrupt: {part:?}"
    );
    // Bob closes his browser in the middle of the transfer.
    w.close("bob").await?;
    let before = part.done.unwrap_or(0);

    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    let first = bob
        .wait_attachment(NAME, &["waiting", "fetching", "checking", "complete"])
        .await?;
    // Chunk writes still queued at the close (at most one batch of 64) may be lost.
    ensure!(
        first.done.unwrap_or(0) + 4 * MIB >= before,
        "after reopening, Bob's page holds {:?} bytes of the film; {before} had arrived",
        first.done
    );
    bob.wait_attachment(NAME, &["complete"]).await?;
    bob.click(&format!(
        "li.attachment[data-name=\"{NAME}\"] .save-attachment"
    ))
    .await?;
    let saved = bob.wait_saved(NAME).await?;
    same_file(NAME, &saved, &film)?;
    Ok(())
}

/// Issue 4: a small attachment travels with its mail to an offline recipient. Alice mails
/// Bob (offline) a 700 KB file; her node leaves the sealed mail and the encrypted file at
/// the relay ("kept at the relay"), and she closes her browser. Bob opens his: the mail and
/// the whole file come from the relay, verified, with Alice away; the file he saves is the
/// original, and the relay's database never held its plaintext.
async fn small_attachment_reaches_an_offline_recipient_through_the_relay(
    w: &mut World,
) -> Result<()> {
    const SUBJECT: &str = "Minutes of the meeting";
    const NAME: &str = "minutes.txt";
    const MARKER: &str = "Minutes-secret-marker-5d21c7";
    w.person("alice").await?;
    w.person("bob").await?;
    let bob_addr = w.addr("bob");
    let mut text = String::new();
    while text.len() < 700 * 1024 {
        text.push_str(MARKER);
        text.push_str(": the committee agreed on everything.\n");
    }
    let path = test_file(w, NAME, text.as_bytes())?;
    leave_file_at_relay(w, &bob_addr, SUBJECT, "The minutes are attached.", &path).await?;
    relay_files_lack(w, &[MARKER])?;
    w.close("alice").await?;

    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    let done = bob.wait_attachment(NAME, &["complete"]).await?;
    ensure!(
        done.done == Some(text.len() as u64),
        "the file is complete with {:?} of {} bytes",
        done.done,
        text.len()
    );
    bob.click(&format!(
        "li.attachment[data-name=\"{NAME}\"] .save-attachment"
    ))
    .await?;
    let saved = bob.wait_saved(NAME).await?;
    same_file(NAME, &saved, text.as_bytes())?;
    Ok(())
}

/// Issue 4: another recipient passes a file on. Alice mails Bob (online) and Carol
/// (offline) a 9 MiB file — above the relay's 8 MiB inline limit, so it stays on Alice's
/// node — and closes her browser once Bob has it. When Carol opens hers, her mail comes from
/// the relay cache and the file from Bob's browser, verified; the file she saves is the
/// original.
async fn attachment_passed_on_by_a_co_recipient(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Photos for both of you";
    const NAME: &str = "photos.tar";
    w.person("alice").await?;
    w.person("bob").await?;
    w.person("carol").await?;
    let (bob_addr, carol_addr) = (w.addr("bob"), w.addr("carol"));
    let photos = noise(9 * 1024 * 1024 + 3, 13);
    let path = test_file(w, NAME, &photos)?;
    w.close("carol").await?;
    w.get("alice")?
        .compose_with_files(
            &format!("{bob_addr}, {carol_addr}"),
            SUBJECT,
            "For Bob and Carol.",
            &[&path],
        )
        .await?;
    let bob = w.get("bob")?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.wait_attachment(NAME, &["complete"]).await?;
    w.get("alice")?
        .wait_recipient(&["outbox"], SUBJECT, &carol_addr, "cached")
        .await?;
    w.close("alice").await?;

    let carol = w.person("carol").await?;
    carol.open_mail("inbox", SUBJECT).await?;
    carol
        .wait_attachment(NAME, &["complete"])
        .await
        .context("Carol fetching the file from Bob's browser while Alice is away")?;
    carol
        .click(&format!(
            "li.attachment[data-name=\"{NAME}\"] .save-attachment"
        ))
        .await?;
    let saved = carol.wait_saved(NAME).await?;
    same_file(NAME, &saved, &photos)?;
    // Alice comes back for the scenarios after this one.
    w.person("alice").await?;
    Ok(())
}
