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

// A click on a new-mail notification (web-client/src/notify.rs): bring the page forward (or
// open one) and ask it to open the mail, or the Inbox when the notification sums up several.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const id = (event.notification.data && event.notification.data.id) || null;
  const opened = (async () => {
    const all = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const pages = all.filter((p) => new URL(p.url).origin === self.location.origin);
    if (pages.length === 0) {
      await self.clients.openWindow("/");
      return;
    }
    // Every page of the origin is told (only Peermail's pages listen); the app's own page,
    // most recently focused first, comes forward.
    for (const p of pages) p.postMessage({ type: "peermail-open", id });
    const front = pages.find((p) => new URL(p.url).pathname === "/") || pages[0];
    try {
      await front.focus();
    } catch (_) {
      // Focusing needs the click's user activation; the page still opens the mail.
    }
  })();
  try {
    event.waitUntil(opened);
  } catch (_) {
    // Only a trusted event can extend its lifetime; the work above runs all the same.
  }
});
