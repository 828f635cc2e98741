//! A mail being written is kept as a draft: a reload brings it back in the Compose form;
//! Cancel discards it and Send ends it.

use anyhow::{ensure, Result};

use peermail_e2e::Browser;

use super::World;

/// The value of the form field matching `css`.
async fn field(b: &Browser, css: &str) -> Result<String> {
    b.eval(
        "return document.querySelector(arguments[0]).value",
        vec![serde_json::json!(css)],
    )
    .await
}

/// Waits until the Compose form, open, holds these To, Subject and body.
async fn wait_form(b: &Browser, to: &str, subject: &str, body: &str) -> Result<()> {
    b.wait_for("#compose-subject").await?;
    b.wait_until("the Compose form to hold the draft", || async move {
        let got = (
            field(b, "#compose-to").await?,
            field(b, "#compose-subject").await?,
            field(b, "#compose-body").await?,
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
/// Compose form is open again with what she typed; closed and opened again with Compose, it
/// still is. Cancel discards it: after a reload no form opens, and Compose starts empty.
/// Sent, a draft is gone too.
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
