// Palyra console: countdowns, live refresh from the event log (server-sent events), and
// confirmation of destructive forms. No inline script anywhere (CSP script-src 'self').
"use strict";

(function () {
  const live = document.getElementById("live");
  const say = (text) => { if (live) live.textContent = text; };

  // Countdowns: <span class="countdown" data-expires="UNIX_MS">.
  const countdowns = Array.from(document.querySelectorAll(".countdown[data-expires]"));
  function tick() {
    const now = Date.now();
    for (const el of countdowns) {
      const left = Math.max(0, Math.round((Number(el.dataset.expires) - now) / 1000));
      if (left === 0) {
        el.textContent = "expired";
        el.classList.add("expired");
        const qr = document.getElementById("qr");
        if (qr) qr.classList.add("expired");
      } else {
        const m = Math.floor(left / 60);
        const s = String(left % 60).padStart(2, "0");
        el.textContent = `expires in ${m}:${s}`;
      }
    }
  }
  if (countdowns.length) { tick(); setInterval(tick, 1000); }

  // Forms with data-confirm ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  }

  // Regions with data-live="URL" data-live-kinds="prefix,prefix" reload from URL when an event
  // of a matching kind arrives. A region keeps its content while the operator types in it.
  const regions = Array.from(document.querySelectorAll("[data-live]"));
  if (!regions.length || !window.EventSource) return;
  async function refresh(region) {
    if (region.contains(document.activeElement) && document.activeElement.tagName === "INPUT" &&
        document.activeElement.value) {
      region.dataset.stale = "1";
      return;
    }
    const response = await fetch(region.dataset.live, { credentials: "same-origin", cache: "no-store" });
    if (response.ok) {
      region.innerHTML = await response.text();
      delete region.dataset.stale;
      for (const form of region.querySelectorAll("form[data-confirm]")) {
        form.addEventListener("submit", (e) => {
          if (!window.confirm(form.dataset.confirm)) e.preventDefault();
        });
      }
    }
  }
  const events = new EventSource("/events");
  events.onopen = () => say("Live updates on.");
  events.onerror = () => say("Live updates paused; reconnecting…");
  events.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    for (const region of regions) {
      const kinds = (region.dataset.liveKinds || "").split(",").filter(Boolean);
      if (kinds.some((k) => event.kind.startsWith(k))) {
        refresh(region).then(() => say(`Updated: ${event.kind}`)).catch(() => {});
      }
    }
  };
  document.addEventListener("focusout", () => {
    for (const region of regions) if (region.dataset.stale) refresh(region).catch(() => {});
  });
})();
