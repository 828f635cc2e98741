//! The IndexedDB store runs the same conformance checks as `core`'s in-memory store, in a
//! real headless Chromium.
//!
//! Run from the repository root:
//!
//! ```sh
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//! CHROMEDRIVER=/usr/bin/chromedriver \
//! cargo test -p peermail-web-client --target wasm32-unknown-unknown
//! ```
//!
//! `wasm-bindgen-test-runner` (0.2.130, the same version as the `wasm-bindgen` crate) reads
//! the browser capabilities from `webdriver.json` in its working directory — cargo runs test
//! binaries (and so the runner) in the package directory, so that is `web-client/webdriver.json`
//! — or from the file named by `WASM_BINDGEN_TEST_WEBDRIVER_JSON`. That file passes
//! `--no-sandbox` and the other flags Chromium needs to run headless as root.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use peermail_web_client::store::IdbStore;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Opens an empty store in a database no other test uses.
async fn fresh_store() -> IdbStore {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("peermail-test-{}-{n}", js_sys::Date::now() as u64);
    IdbStore::open(&name)
        .await
        .expect("open a fresh IndexedDB store")
}

peermail_core::store_conformance_tests!(wasm_bindgen_test, fresh_store());

/// Data survives closing and reopening the database (what a page reload does).
#[wasm_bindgen_test]
async fn reopen_keeps_data() {
    use peermail_core::store::{MailStore, StoreWrite};
    let name = format!("peermail-test-reopen-{}", js_sys::Date::now() as u64);
    let bob: peermail_core::Address = "bob@h".parse().unwrap();
    {
        let s = IdbStore::open(&name).await.unwrap();
        s.apply(StoreWrite::PutContact(bob.clone())).await.unwrap();
    }
    let s = IdbStore::open(&name).await.unwrap();
    assert_eq!(s.load().await.unwrap().contacts, vec![bob]);
}

/// A database made by schema version 1 (before the `keys` store) opens, upgraded, with its
/// data, and takes keys.
#[wasm_bindgen_test]
async fn a_version_1_database_is_upgraded() {
    use peermail_core::identity::Identity;
    use peermail_core::store::{KnownKeys, MailStore, StoreWrite};
    let name = format!("peermail-test-v1-{}", js_sys::Date::now() as u64);
    let bob: peermail_core::Address = "bob@h".parse().unwrap();
    {
        common::old_database(&name, 1).await.close();
    }
    {
        let s = IdbStore::open(&name).await.unwrap();
        s.apply(StoreWrite::PutContact(bob.clone())).await.unwrap();
        let id = Identity::from_seed(bob.clone(), [4; 32]);
        s.apply(StoreWrite::PutKeys(KnownKeys {
            address: bob.clone(),
            signing_key: id.public_key(),
            encryption_key: Some(id.encryption_public_key()),
        }))
        .await
        .unwrap();
    }
    let s = IdbStore::open(&name).await.unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.contacts, vec![bob.clone()]);
    assert_eq!(snap.keys.len(), 1);
    assert_eq!(snap.keys[0].address, bob);
}

/// A database made by schema version 4 (before the `groups` store), holding a contact,
/// opens upgraded with its data, and takes groups that survive a reopen.
#[wasm_bindgen_test]
async fn a_version_4_database_is_upgraded_and_takes_groups() {
    use peermail_core::groups::Group;
    use peermail_core::store::{MailStore, StoreWrite};
    let name = format!("peermail-test-v4-{}", js_sys::Date::now() as u64);
    let bob: peermail_core::Address = "bob@h".parse().unwrap();
    common::old_database_with(
        &name,
        4,
        "contacts",
        &bob.to_string(),
        serde_json::to_string(&bob).unwrap(),
    )
    .await;
    let team = Group::parse("Team", "bob@h, carol@h").unwrap();
    {
        let s = IdbStore::open(&name).await.unwrap();
        assert_eq!(s.load().await.unwrap().contacts, vec![bob.clone()]);
        s.apply(StoreWrite::PutGroup(team.clone())).await.unwrap();
    }
    let s = IdbStore::open(&name).await.unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.contacts, vec![bob]);
    assert_eq!(snap.groups, vec![team]);
}

/// A database made by schema version 6 (before the `deleted` store), holding a received
/// mail, opens upgraded with it; deleting it then leaves a record that survives a reopen.
#[wasm_bindgen_test]
async fn a_version_6_database_is_upgraded_and_remembers_deleted_mail() {
    use peermail_core::mail::{Mail, MessageId, Priority};
    use peermail_core::store::{DeletedMail, InboxRecord, MailStore, StoreWrite};
    let name = format!("peermail-test-v6-{}", js_sys::Date::now() as u64);
    let id = MessageId::new([6; 16], "h");
    let record = InboxRecord {
        mail: Mail {
            message_id: id.clone(),
            from: "alice@h".parse().unwrap(),
            to: vec!["bob@h".parse().unwrap()],
            cc: vec![],
            subject: "old".into(),
            date: 1,
            body: "kept from version 6".into(),
            in_reply_to: None,
            references: vec![],
            priority: Priority::Normal,
            attachments: vec![],
        },
        received_at: 2,
        read: false,
        archived: false,
    };
    // As version 6 wrote it: without `archived`, which came later.
    let mut old = serde_json::to_value(&record).unwrap();
    old.as_object_mut().unwrap().remove("archived");
    common::old_database_with(&name, 6, "inbox", id.as_str(), old.to_string()).await;
    let deleted = DeletedMail {
        message_id: id.clone(),
        received: true,
        sent: false,
        at: 3,
        untold: None,
        on_node: vec![],
    };
    {
        let s = IdbStore::open(&name).await.unwrap();
        assert_eq!(s.load().await.unwrap().inbox, vec![record]);
        s.apply(StoreWrite::DeleteMail {
            deleted: deleted.clone(),
            attachments: vec![],
        })
        .await
        .unwrap();
    }
    let s = IdbStore::open(&name).await.unwrap();
    let snap = s.load().await.unwrap();
    assert!(snap.inbox.is_empty());
    assert_eq!(snap.deleted, vec![deleted]);
}

/// A tab still running an older version keeps its connection open: opening the store then
/// waits (and says so through `on_blocked`) and completes once that connection is closed.
/// A store that watches for upgrades closes its own connection when a newer version opens
/// the database, instead of holding that tab up, and says so.
#[wasm_bindgen_test]
async fn upgrades_wait_for_older_tabs_and_newer_ones_close_this_one() {
    use std::cell::Cell;
    use std::rc::Rc;

    use indexed_db_futures::database::Database;
    use peermail_core::store::{MailStore, StoreWrite};
    let name = format!("peermail-test-tabs-{}", js_sys::Date::now() as u64);
    let older_tab = common::old_database(&name, 5).await;
    let blocked = Rc::new(Cell::new(false));
    {
        let blocked = blocked.clone();
        wasm_bindgen_futures::spawn_local(async move {
            // The older tab closes (is reloaded) a little after it held the upgrade up.
            while !blocked.get() {
                gloo_timers::future::TimeoutFuture::new(10).await;
            }
            older_tab.close();
        });
    }
    let b = blocked.clone();
    let store = IdbStore::open_or_wait(&name, move || b.set(true))
        .await
        .unwrap();
    assert!(blocked.get(), "the upgrade waited for the older tab");
    let bob: peermail_core::Address = "bob@h".parse().unwrap();
    store
        .apply(StoreWrite::PutContact(bob.clone()))
        .await
        .unwrap();

    let told = Rc::new(Cell::new(false));
    let t = told.clone();
    store.close_on_upgrade(&name, move || t.set(true)).unwrap();
    // Let the watching connection open before the newer tab comes.
    gloo_timers::future::TimeoutFuture::new(50).await;
    let newer_tab = Database::open(&name).with_version(99u32).await.unwrap();
    assert!(told.get(), "this store was told of the newer version");
    assert!(
        store.apply(StoreWrite::PutContact(bob)).await.is_err(),
        "its connection is closed"
    );
    newer_tab.close();
}
