// Peermail service worker: keeps the app shell so the mailbox (in IndexedDB) opens without a
// network. Network first, so a new build is picked up at once; the cache is only a fallback.
// Mail never passes through here: signaling is a WebSocket and mail a WebRTC data channel.
// It also takes clicks on new-mail notifications (below).
const CACHE = "peermail-shell-v1";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== self.location.origin || url.pathname === "/ws") {
    return;
  }
  event.respondWith(
    fetch(req)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(CACHE).then((c) => c.put(req, copy));
        }
        return res;
      })
      .catch(async () => {
        const hit = await caches.match(req);
        if (hit) return hit;
        if (req.mode === "navigate") {
          const shell = await caches.match("/");
          if (shell) return shell;
        }
        return Response.error();
      })
  );
});

// A click on a new-mail notification (web-client/src/notify.rs): tell the open pages which
// mail to open (null: the Inbox; only Peermail's pages listen) and bring Peermail's page
// forward, the most recently focused first; with none open, open one at /?open=<id>.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const id = (event.notification.data && event.notification.data.id) || null;
  const opened = (async () => {
    const all = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const pages = all.filter((p) => new URL(p.url).origin === self.location.origin);
    const app = pages.find((p) => new URL(p.url).pathname === "/");
    if (!app) {
      await self.clients.openWindow(id ? "/?open=" + encodeURIComponent(id) : "/");
      return;
    }
    for (const p of pages) p.postMessage({ type: "peermail-open", id });
    try {
      await app.focus();
    } catch (_) {
      // Not allowed (the click's permission to focus a window has lapsed): the page still
      // opens the mail, and the person finds it there.
    }
  })();
  event.waitUntil(opened);
});
