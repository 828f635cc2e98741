//! A mail being written is kept as a draft: a reload brings it back in the Compose form;
//! a form left for another folder keeps it in Drafts, from where it opens again; Cancel
//! discards it and Send ends it. Its files are kept with it.

use anyhow::{ensure, Context, Result};

use peermail_e2e::Browser;

use super::{noise, same_file, test_file, World};

/// The names of the files the open Compose form lists.
async fn form_files(b: &Browser) -> Result<Vec<String>> {
    b.eval(
        "return [...document.querySelectorAll('#compose-attachments .compose-attachment')]\
         .map(li => li.dataset.name)",
        vec![],
    )
    .await
}

/// Waits until the open Compose form lists these files, in this order.
async fn wait_form_files(b: &Browser, names: &[&str]) -> Result<()> {
    b.wait_until(
        &format!("the Compose form to list {names:?}"),
        || async move {
            let listed = form_files(b).await?;
            Ok(if listed == names {
                Ok(())
            } else {
                Err(format!("{listed:?}"))
            })
        },
    )
    .await
}

/// Waits until the page's database keeps `n` files for drafts.
async fn wait_kept_files(b: &Browser, n: u64) -> Result<()> {
    b.wait_idb_count("peermail", "draft_files", n).await
}

/// The Drafts folder's rows as shown now: (`data-draft-id`, subject), newest first.
async fn drafts(b: &Browser) -> Result<Vec<(String, String)>> {
    b.eval(
        "return [...document.querySelectorAll('#message-list .draft-row')].map(r => \
         [r.dataset.draftId, r.querySelector('.subject').textContent])",
        vec![],
    )
    .await
}

/// Waits until the Drafts folder (open) lists these subjects, in this order, and its count
/// reads `count`; returns the rows.
async fn wait_drafts(b: &Browser, subjects: &[&str], count: &str) -> Result<Vec<(String, String)>> {
    b.wait_until(&format!("Drafts to list {subjects:?}"), || async move {
        let rows = drafts(b).await?;
        let shown: Vec<&str> = rows.iter().map(|(_, s)| s.as_str()).collect();
        let n = b.folder_count("drafts").await?;
        Ok(if shown == subjects && n == count {
            Ok(rows)
        } else {
            Err(format!("{shown:?}, count {n:?}"))
        })
    })
    .await
}

/// Opens the draft of Drafts (open) whose subject is `subject` in the Compose form.
async fn open_draft(b: &Browser, subject: &str) -> Result<()> {
    let rows = drafts(b).await?;
    let (id, _) = rows
        .iter()
        .find(|(_, s)| s == subject)
        .with_context(|| format!("no draft {subject:?} in {rows:?}"))?;
    b.click(&format!("#message-list .draft-row[data-draft-id=\"{id}\"]"))
        .await
}

/// Waits until the Compose form, open, holds these To, Subject and body.
async fn wait_form(b: &Browser, to: &str, subject: &str, body: &str) -> Result<()> {
    b.wait_for("#compose-subject").await?;
    b.wait_until("the Compose form to hold the draft", || async move {
        let got = (
            b.input_value("#compose-to").await?,
            b.input_value("#compose-subject").await?,
            b.input_value("#compose-body").await?,
        );
        Ok(
            if (got.0.as_str(), got.1.as_str(), got.2.as_str()) == (to, subject, body) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            },
        )
    })
    .await
}

/// Alice starts a mail to Bob and reloads the page (as after a crash or a closed tab): the
/// Compose form is open again with what she typed. Cancel discards it: after a reload no
/// form opens, and Compose starts empty. She leaves a draft for her Inbox and starts
/// another, with a file: Drafts lists both, newest first, and opens each with what was
/// typed in it, and the second with its file (the picked file is gone from disk by then:
/// the draft keeps a copy); Cancel discards one, Send takes the other out of Drafts, and
/// the mail sent carries the file's bytes. Sent, a draft is gone too, and its files.
pub(crate) async fn a_draft_survives_a_reload(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Half-written plans";
    const BODY: &str = "Dear Bob,\nabout the trip";
    w.person("alice").await?;
    let bob_addr = w.addr("bob");
    let alice = w.get("alice")?;
    alice.click("#compose-button").await?;
    alice.type_into("#compose-to", &bob_addr).await?;
    alice.type_into("#compose-subject", SUBJECT).await?;
    alice.type_into("#compose-body", BODY).await?;
    alice.reload().await?;
    alice.wait_online().await?;
    wait_form(alice, &bob_addr, SUBJECT, BODY).await?;

    // Discarded with Cancel: gone, also after a reload.
    alice.click("#compose-cancel").await?;
    alice.wait_gone("#compose-subject").await?;
    alice.reload().await?;
    // The form, when there is a draft, is there with the main view's first rendering.
    alice.wait_online().await?;
    ensure!(
        alice.texts("#compose-subject").await?.is_empty(),
        "a discarded draft opened again after a reload"
    );
    alice.click("#compose-button").await?;
    wait_form(alice, "", "", "").await?;
    alice.click("#compose-cancel").await?;

    // Several drafts. One to Bob is left for the Inbox: the form closes, the draft stays.
    // Compose then starts another, empty; a reload opens the one being written.
    alice.click("#compose-button").await?;
    alice.type_into("#compose-to", &bob_addr).await?;
    alice.type_into("#compose-subject", "Draft one").await?;
    alice.type_into("#compose-body", "the first").await?;
    alice.open_folder("inbox").await?;
    alice.wait_gone("#compose-subject").await?;
    alice.click("#compose-button").await?;
    wait_form(alice, "", "", "").await?;
    alice.type_into("#compose-to", &bob_addr).await?;
    alice.type_into("#compose-subject", "Draft two").await?;
    alice.type_into("#compose-body", "the second").await?;
    // A file attached to it is kept with it, also once it is gone from the disk.
    let plan = noise(300_000 + 7, 21);
    let path = test_file(w, "plan.bin", &plan)?;
    alice.attach(&path).await?;
    wait_kept_files(alice, 1).await?;
    std::fs::remove_file(&path)?;
    alice.reload().await?;
    alice.wait_online().await?;
    wait_form(alice, &bob_addr, "Draft two", "the second").await?;
    wait_form_files(alice, &["plan.bin"]).await?;
    // Both are in Drafts, the newest first; each opens with what was typed in it.
    alice.open_folder("drafts").await?;
    alice.wait_gone("#compose-subject").await?;
    wait_drafts(alice, &["Draft two", "Draft one"], "2").await?;
    let snippets = alice.texts("#message-list .draft-row .snippet").await?;
    ensure!(
        snippets.first().is_some_and(|s| s.starts_with("📎 1 file")),
        "Drafts' rows read {snippets:?}: the first should say it has a file"
    );
    open_draft(alice, "Draft one").await?;
    wait_form(alice, &bob_addr, "Draft one", "the first").await?;
    wait_form_files(alice, &[]).await?;
    // Written on, its row beside the form says so as it is typed; clicked again, the form
    // keeps what was typed.
    alice.type_into("#compose-body", ", and more").await?;
    alice
        .wait_until("Draft one's row to show what was typed", || async move {
            let snippets = alice.texts("#message-list .draft-row .snippet").await?;
            Ok(if snippets.iter().any(|s| s == "the first, and more") {
                Ok(())
            } else {
                Err(format!("{snippets:?}"))
            })
        })
        .await?;
    open_draft(alice, "Draft one").await?;
    // A reset would come with the click's rendering, well within this.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    wait_form(alice, &bob_addr, "Draft one", "the first, and more").await?;
    // Cancel discards only the draft open.
    alice.click("#compose-cancel").await?;
    alice.wait_gone("#compose-subject").await?;
    wait_drafts(alice, &["Draft two"], "1").await?;
    // Sent from Drafts, it leaves them, with its file, which the mail carries.
    open_draft(alice, "Draft two").await?;
    wait_form(alice, &bob_addr, "Draft two", "the second").await?;
    wait_form_files(alice, &["plan.bin"]).await?;
    alice.click("#compose-send").await?;
    alice.wait_gone("#compose-subject").await?;
    // The mail sent is shown: its file saved is the file picked.
    alice.wait_attachment("plan.bin", &["sent"]).await?;
    alice
        .click("li.attachment[data-name=\"plan.bin\"] .save-attachment")
        .await?;
    let saved = alice.wait_saved("plan.bin").await?;
    same_file("the file of the mail sent from Drafts", &saved, &plan)?;
    wait_kept_files(alice, 0).await?;

    // A forward of it starts with its file, and is no draft until she writes in it; then
    // it is kept with the file, and opens again as a forward after a reload.
    alice.click("button.forward").await?;
    wait_form_files(alice, &["plan.bin"]).await?;
    // A draft would be listed with the rendering that listed the file, well within this.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let count = alice.folder_count("drafts").await?;
    ensure!(
        count.is_empty(),
        "an untouched forward made a draft (Drafts count {count:?})"
    );
    ensure!(
        alice.idb_count("peermail", "draft_files").await? == 0,
        "an untouched forward kept its files"
    );
    alice.type_into("#compose-to", &bob_addr).await?;
    wait_kept_files(alice, 1).await?;
    ensure!(
        alice.folder_count("drafts").await? == "1",
        "the forward is no draft"
    );
    alice.reload().await?;
    alice.wait_online().await?;
    wait_form(
        alice,
        &bob_addr,
        "Fwd: Draft two",
        &alice.input_value("#compose-body").await?,
    )
    .await?;
    wait_form_files(alice, &["plan.bin"]).await?;
    let title = alice.texts(".compose-pane h1").await?;
    ensure!(title == ["Forward"], "the forward reopened as {title:?}");
    // Discarded: its file goes with it.
    alice.click("#compose-cancel").await?;
    alice.wait_gone("#compose-subject").await?;
    wait_kept_files(alice, 0).await?;
    alice.open_folder("drafts").await?;
    wait_drafts(alice, &[], "").await?;
    alice.reload().await?;
    alice.wait_online().await?;
    ensure!(
        alice.texts("#compose-subject").await?.is_empty(),
        "a form opened after a reload with no draft open"
    );

    // Sent: no draft is left.
    alice
        .compose(&bob_addr, "", "A short note", "Sent, not kept as a draft.")
        .await?;
    alice.reload().await?;
    alice.wait_online().await?;
    alice.click("#compose-button").await?;
    wait_form(alice, "", "", "").await?;
    alice.click("#compose-cancel").await?;
    Ok(())
}
