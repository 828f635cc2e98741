//! Issue 5: a person's storage node — the real `relay node` process, a native WebRTC peer —
//! paired from the web client, kept up to date by the location registry, handed a large
//! attachment by the sender's browser, and read from by its owner's browser.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peermail_e2e::procs::StorageNodeProc;

use super::{leave_file_at_relay, noise, same_file, test_file, World};

/// Bob starts `relay node`, which prints a pairing code. In his page's Storage node panel a
/// wrong code is refused with the relay's reason; the right one pairs the node, which signs
/// in and shows as available. Bob closes his browser; Alice mails him a 50 MiB file (above
/// the inline limit): her browser hands it to Bob's node, which pulls it over a data
/// channel (the node prints it kept the whole file) and Alice's page says it is kept on
/// Bob's storage node. Alice closes her browser; Bob opens his and his page fetches the file
/// from his node; the relay is stopped in the middle of the transfer, which goes on over the
/// open channel to the end — byte for byte the original. The relay starts again. The node stopped, Bob's panel shows it unavailable;
/// started again from its data directory, it signs in without pairing. Bob deletes the mail:
/// the node deletes its copy of the file (it prints so, and its files are gone).
pub(crate) async fn storage_node_pairs_keeps_and_serves_attachments(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "The raw footage";
    const NAME: &str = "footage.raw";
    const MIB: usize = 1024 * 1024;
    let wait = w.h.config.wait;
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));
    let node_addr = bob_addr.replacen('@', "+node@", 1);
    let data_dir = w.h.scratch.path().join("bob-storage-node");
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    let code = node.wait_line("pairing code:", wait)?;

    let bob = w.get("bob")?;
    bob.wait_for("#storage-node #node-status[data-status=\"none\"]")
        .await
        .context("before pairing, Bob's panel says he has no storage node")?;
    // A wrong code (the right one with its last digit changed) is refused.
    let last = code.chars().last().context("an empty code")?;
    let wrong_last = if last == '9' {
        '0'
    } else {
        (last as u8 + 1) as char
    };
    let wrong = format!("{}{wrong_last}", &code[..code.len() - 1]);
    bob.type_into("#pair-code", &wrong).await?;
    bob.click("#pair-node").await?;
    bob.wait_for_text(
        "#pair-error",
        "no storage node is waiting with the pairing code",
    )
    .await?;
    bob.type_into("#pair-code", &code).await?;
    bob.click("#pair-node").await?;
    bob.wait_for_text(
        "#pair-done",
        &format!("Paired: {node_addr} is your storage node"),
    )
    .await?;
    let online = node.wait_line("storage node", wait)?;
    ensure!(
        online == format!("{node_addr} online"),
        "the node printed `storage node {online}`"
    );
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("once signed in, Bob's node shows as available")?;

    // Alice mails Bob (away) a large file; her browser hands it to Bob's node.
    w.close("bob").await?;
    let footage = noise(50 * MIB + 321, 31);
    let path = test_file(w, NAME, &footage)?;
    let alice = w.get("alice")?;
    alice
        .compose_with_files(&bob_addr, SUBJECT, "From the shoot.", &[&path])
        .await?;
    alice
        .wait_recipient(&["outbox"], SUBJECT, &bob_addr, "cached")
        .await?;
    let kept = node.wait_line("kept", Duration::from_secs(300).max(wait))?;
    ensure!(
        kept.contains(&format!("({} bytes) from {alice_addr}", footage.len())),
        "the node printed `kept {kept}`"
    );
    let alice = w.get("alice")?;
    alice
        .wait_attachment_status(&format!("kept on the storage node of {bob_addr}"))
        .await?;
    w.close("alice").await?;

    // Bob, with Alice away, gets the file from his node. Once it comes from there, the relay
    // stops: the transfer goes on over the open data channel.
    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.wait_for_text(
        &format!("li.attachment[data-name=\"{NAME}\"] .attachment-source"),
        "from your storage node",
    )
    .await?;
    let relay_data = w.h.scratch.path().join("relay-data");
    w.h.relay.stop();
    let bob = w.get("bob")?;
    let at_stop = bob
        .wait_attachment(NAME, &["fetching", "checking", "complete"])
        .await?;
    ensure!(
        at_stop.state.as_deref() == Some("fetching"),
        "the file was whole before the relay stopped ({at_stop:?}): nothing was read without it"
    );
    // 50 MiB over a data channel on a busy two-core machine: more time than one wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let listed = bob.attachments().await?;
        let a = listed.iter().find(|a| a.name.as_deref() == Some(NAME));
        match a.and_then(|a| a.state.as_deref()) {
            Some("complete") => break,
            Some("fetching" | "checking") => {}
            _ => anyhow::bail!("with the relay stopped, Bob's copy of {NAME} reads {a:?}"),
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "Bob's copy of {NAME} is not complete after 300 s: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bob.click(&format!(
        "li.attachment[data-name=\"{NAME}\"] .save-attachment"
    ))
    .await?;
    let saved = bob.wait_saved(NAME).await?;
    same_file(NAME, &saved, &footage)?;

    // The relay again (same port and data): the pages and the node sign in again.
    let config = w.h.config.clone();
    w.h.relay.restart(&config, &relay_data)?;
    w.get("bob")?.wait_online().await?;
    // The node signs in again (with its backoff) after the line saying it kept the file.
    let kept_at = node
        .seen
        .iter()
        .position(|l| l.starts_with("kept"))
        .context("the node's `kept` line")?;
    node.wait_line_from(
        "storage node",
        kept_at + 1,
        Duration::from_secs(90).max(wait),
    )?;

    // The node goes away and comes back from its data directory, without pairing.
    node.kill();
    let bob = w.get("bob")?;
    bob.wait_for("#node-status[data-status=\"unavailable\"]")
        .await
        .context("with the node stopped, Bob's panel shows it unavailable")?;
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    let online = node.wait_line("storage node", wait)?;
    ensure!(
        online == format!("{node_addr} online") && !node.seen.iter().any(|l| l.contains("pairing")),
        "restarted, the node printed {:?}",
        node.seen
    );
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("restarted, Bob's node shows as available again")?;

    // Bob deletes the mail: his node deletes its copy of the file too.
    let hex = kept
        .split_whitespace()
        .next()
        .context("the kept line's id")?;
    bob.open_mail("inbox", SUBJECT).await?;
    bob.click("#delete-mail").await?;
    bob.wait_for_text("#delete-confirm", "are deleted there too")
        .await?;
    bob.click("#delete-yes").await?;
    let dropped = node.wait_line("dropped", wait)?;
    ensure!(
        dropped.starts_with(hex),
        "the node printed `dropped {dropped}`"
    );
    let left: Vec<String> = std::fs::read_dir(data_dir.join("files"))?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(hex))
        .collect();
    ensure!(left.is_empty(), "the node still has {left:?}");
    Ok(())
}

/// The relay hands over to a storage node that comes back. Bob's node is down and Bob away
/// when Alice mails him a small file: the relay keeps it ("kept at the relay"). Alice
/// leaves; Bob's node starts, takes the file from the relay (it prints it kept it, from
/// Alice) and the relay deletes its copy (its database lists nothing for Bob). The node
/// stops; Bob opens his page: the mail comes from the relay cache and the file waits (its
/// only copy is on the node). The node starts again: Bob's page gets the file from it —
/// byte for byte the original. Alice opens her page: her copy of the mail says Bob's node
/// keeps the file (no longer "kept at the relay"). Then Bob unpairs his node from his page:
/// the node stops, and is refused when started again.
pub(crate) async fn relay_hands_over_to_a_returning_storage_node(w: &mut World) -> Result<()> {
    const SUBJECT: &str = "Contract draft";
    const NAME: &str = "contract.txt";
    let wait = w.h.config.wait;
    w.person("alice").await?;
    w.person("bob").await?;
    let (alice_addr, bob_addr) = (w.addr("alice"), w.addr("bob"));
    let bob_address: peermail_core::Address =
        bob_addr.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Paired in the scenario before; not running now.
    let data_dir = w.h.scratch.path().join("bob-storage-node");
    ensure!(
        data_dir.join("owner").exists(),
        "Bob's storage node was paired by storage_node_pairs_keeps_and_serves_attachments"
    );
    let text = noise(600 * 1024 + 5, 77);
    let path = test_file(w, NAME, &text)?;
    leave_file_at_relay(w, &bob_addr, SUBJECT, "Please read.", &path).await?;
    w.close("alice").await?;

    // The node comes back: the relay hands the file over and deletes its copy.
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    node.wait_line("storage node", wait)?;
    let kept = node.wait_line("kept", wait)?;
    ensure!(
        kept.contains(&format!("({} bytes) from {alice_addr}", text.len())),
        "the node printed `kept {kept}`"
    );
    let relay_db = peermail_relay::Db::open(&w.h.scratch.path().join("relay-data"))
        .context("opening the relay's database")?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = peermail_signaling::FileCache::kept_for(&relay_db, &bob_address)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if left.is_empty() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the relay still keeps {left:?} for Bob after handing it over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.kill();

    // Bob's page: the mail from the relay cache; the file's only copy is on the node.
    let bob = w.person("bob").await?;
    bob.open_mail("inbox", SUBJECT).await?;
    let waiting = bob.wait_attachment(NAME, &["waiting"]).await?;
    ensure!(
        waiting.done == Some(0),
        "with its only copy on the stopped node, the file reads {waiting:?}"
    );

    // The node is back: Bob's page gets the file from it, with Alice away and the relay no
    // longer keeping it.
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    node.wait_line("storage node", wait)?;
    let bob = w.get("bob")?;
    bob.wait_for("#node-status[data-status=\"available\"]")
        .await
        .context("Bob's page sees his node available again")?;
    bob.wait_attachment(NAME, &["complete"]).await?;
    bob.click(&format!(
        "li.attachment[data-name=\"{NAME}\"] .save-attachment"
    ))
    .await?;
    let saved = bob.wait_saved(NAME).await?;
    same_file(NAME, &saved, &text)?;

    // Alice is back: her copy of the mail says Bob's node keeps the file, not the relay.
    let alice = w.person("alice").await?;
    alice
        .wait_recipient(&["sent"], SUBJECT, &bob_addr, "delivered")
        .await?;
    alice.open_mail("sent", SUBJECT).await?;
    alice
        .wait_attachment_status(&format!(
            "fetched by every recipient; kept on the storage node of {bob_addr}"
        ))
        .await?;

    // Bob unpairs the node (after confirming): it hears it, says so and stops; his panel
    // says he has no node; started again, it is refused and stops.
    let node_addr = bob_addr.replacen('@', "+node@", 1);
    let bob = w.get("bob")?;
    bob.click("#unpair-node").await?;
    bob.wait_for_text("#unpair-confirm", &format!("Unpair {node_addr}?"))
        .await?;
    bob.click("#unpair-yes").await?;
    bob.wait_for_text(
        "#unpair-done",
        &format!("Unpaired: {node_addr} is no longer your storage node"),
    )
    .await?;
    bob.wait_for("#storage-node #node-status[data-status=\"none\"]")
        .await
        .context("unpaired, Bob's panel says he has no storage node")?;
    let said = node.wait_line("unpaired:", wait)?;
    ensure!(
        said.starts_with(&format!("{bob_addr} unpaired this storage node")),
        "the node printed `unpaired: {said}`"
    );
    let status = node.wait_exit(wait)?;
    ensure!(!status.success(), "the unpaired node stopped with {status}");
    let mut node = StorageNodeProc::start(&w.h.config, &w.h.relay.url, &data_dir)?;
    let status = node.wait_exit(wait)?;
    let log = std::fs::read_to_string(&node.log)?;
    ensure!(
        !status.success() && log.contains("was it unpaired"),
        "started again, the unpaired node stopped with {status}; its log:\n{log}"
    );
    Ok(())
}
