//! Issue 5, item 6: address-book groups. A group name in To expands to its members when
//! sending; the mail lists the addresses.

use anyhow::{ensure, Context, Result};
use peermail_e2e::Browser;
use serde_json::json;

use super::{contains, World};

/// Empties an input (typing appends).
async fn clear(b: &Browser, css: &str) -> Result<()> {
    b.eval::<()>(
        "document.querySelector(arguments[0]).value = ''; return null;",
        vec![json!(css)],
    )
    .await
}

/// Alice saves the group "team" (Bob and Carol) in her contacts panel — a name with '@' is
/// refused first — and sees it with its members. A To naming an unknown group shows the
/// error in the Compose form and sends nothing. A mail To "team" reaches Bob and Carol and
/// lists their addresses (not the group's name); one To "bob, team" goes to each once. The
/// group is still there after Alice reloads her page; removed, it stays removed.
pub(crate) async fn groups_expand_to_their_members(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Team meeting moved";
    const BODY: &str = "The team meeting is on Thursday this week.";
    const SUBJECT_TWICE: &str = "Team lunch";
    const SUBJECT_UNKNOWN: &str = "This goes nowhere";
    const TEAM: &str = ".group[data-name=\"team\"]";
    w.person("alice").await?;
    w.person("bob").await?;
    w.person("carol").await?;
    let (alice, bob, carol) = (w.get("alice")?, w.get("bob")?, w.get("carol")?);
    let (bob_addr, carol_addr) = (w.addr("bob"), w.addr("carol"));
    let members = format!("{bob_addr}, {carol_addr}");

    // A bad name is refused with the reason; the good one is saved.
    alice.type_into("#group-name", "team@work").await?;
    alice.type_into("#group-members", &members).await?;
    alice.click("#group-add").await?;
    alice
        .wait_for_text("#group-error", "a group name may contain only")
        .await
        .context("a group name with '@' is refused")?;
    clear(alice, "#group-name").await?;
    alice.type_into("#group-name", "team").await?;
    alice.click("#group-add").await?;
    alice.wait_for(TEAM).await?;
    alice
        .wait_for_text(&format!("{TEAM} .group-members"), &members)
        .await?;
    alice
        .wait_until("#group-error to be empty once saved", || async move {
            let t = alice.texts("#group-error").await?;
            Ok(if t == [""] {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            })
        })
        .await?;

    // An unknown group: the form says so and stays open; nothing is sent.
    alice.click("#compose-button").await?;
    alice.type_into("#compose-to", "teem").await?;
    alice.type_into("#compose-subject", SUBJECT_UNKNOWN).await?;
    alice.type_into("#compose-body", "Nobody").await?;
    alice.click("#compose-send").await?;
    alice
        .wait_for_text("#compose-error", "To: no contact group named “teem”")
        .await?;
    ensure!(
        !alice.texts("#compose-to").await?.is_empty(),
        "the Compose form closed after an unknown group"
    );
    alice.click("#compose-cancel").await?;
    for folder in ["outbox", "sent"] {
        alice.open_folder(folder).await?;
        let rows = alice.rows().await?;
        ensure!(
            !rows
                .iter()
                .any(|r| r.subject.as_deref() == Some(SUBJECT_UNKNOWN)),
            "a mail to an unknown group is in Alice's {folder}: {rows:?}"
        );
    }

    // To "team": Bob and Carol receive it, addressed to both of them.
    alice.compose("team", "", SUBJECT, BODY).await?;
    for (who, b) in [("Bob", bob), ("Carol", carol)] {
        let pane = b
            .open_mail("inbox", SUBJECT)
            .await
            .with_context(|| format!("{who} receiving the mail to the group"))?;
        ensure!(
            pane.to.as_deref() == Some(members.as_str()),
            "{who}'s reading pane shows To {:?}, expected {members:?}",
            pane.to
        );
        contains("the reading pane's .body", &pane.body, BODY)?;
    }
    for addr in [&bob_addr, &carol_addr] {
        alice
            .wait_recipient(&["sent", "outbox"], SUBJECT, addr, "delivered")
            .await?;
    }
    let pane = alice.pane().await?.context("Alice's reading pane")?;
    ensure!(
        pane.to.as_deref() == Some(members.as_str()) && pane.recipients.len() == 2,
        "Alice's copy shows To {:?} and recipients {:?}",
        pane.to,
        pane.recipients
    );

    // Bob typed and in the group: he is listed, and sent to, once.
    alice
        .compose(&format!("{bob_addr}, team"), "", SUBJECT_TWICE, BODY)
        .await?;
    for addr in [&bob_addr, &carol_addr] {
        alice
            .wait_recipient(&["sent", "outbox"], SUBJECT_TWICE, addr, "delivered")
            .await?;
    }
    let pane = alice.pane().await?.context("Alice's reading pane")?;
    ensure!(
        pane.to.as_deref() == Some(members.as_str()) && pane.recipients.len() == 2,
        "Alice's copy of the mail to Bob and the team shows To {:?} and recipients {:?}",
        pane.to,
        pane.recipients
    );
    bob.open_mail("inbox", SUBJECT_TWICE).await?;
    let twice = bob
        .rows()
        .await?
        .iter()
        .filter(|r| r.subject.as_deref() == Some(SUBJECT_TWICE))
        .count();
    ensure!(twice == 1, "Bob's Inbox lists {twice} copies of the mail");

    // The group survives a reload; a removal too.
    alice.reload().await?;
    w.person("alice").await?;
    let alice = w.get("alice")?;
    alice
        .wait_for_text(&format!("{TEAM} .group-members"), &members)
        .await
        .context("the group after Alice reloaded")?;
    alice.click(&format!("{TEAM} .remove-group")).await?;
    alice.wait_gone(TEAM).await?;
    alice.reload().await?;
    w.person("alice").await?;
    let alice = w.get("alice")?;
    alice.wait_for("#group-list").await?;
    ensure!(
        alice.texts(".group").await?.is_empty(),
        "the removed group is back after a reload"
    );
    Ok(())
}
