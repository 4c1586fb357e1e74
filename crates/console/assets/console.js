// mbx Group Hub: the little script the pages need. Live regions are fetched again every
// 2 s (server-rendered, escaped HTML); "select all" ticks a page's checkboxes.
"use strict";
for (const el of document.querySelectorAll("[data-live]")) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(el.dataset.live, { credentials: "same-origin" });
      if (r.ok) el.innerHTML = await r.text();
    } catch (_) {
      // the console restarted or the network blinked: the next tick tries again
    } finally {
      busy = false;
    }
  }, 2000);
}
for (const box of document.querySelectorAll("[data-select-all]")) {
  box.addEventListener("change", () => {
    for (const c of document.querySelectorAll(`input[name="${box.dataset.selectAll}"]`)) c.checked = box.checked;
  });
}
