// Live updates for the dashboard. Every page reads fully without this script; with it,
// the page listens to the hub's event stream (/ui/events) and, when something it shows
// changes, fetches itself again and swaps in its regions marked data-live. No framework,
// no build: one file served by the hub.
(function () {
  "use strict";
  var body = document.body;
  var scope = body.getAttribute("data-live-scope") || "";
  var status = document.getElementById("live-status");
  var timer = null, busy = false, again = false;

  function say(text) { if (status) { status.textContent = text; } }

  function wanted(kind, data) {
    if (scope === "all") { return true; }
    var parts = scope.split(":"), what = parts[0], id = parts.slice(1).join(":");
    if (kind === "agent") {
      return (what === "agent" && data.id === id) || (what === "board" && data.board_id === id) ||
        (what === "gateway" && data.gateway_id === id);
    }
    if (kind === "gateway") { return what === "gateway" && data.id === id; }
    return false;
  }

  function focusKey() {
    var el = document.activeElement;
    if (!el || el === body) { return null; }
    return { id: el.id || null, href: el.getAttribute("href"), region: el.closest("[data-live]") };
  }

  function restoreFocus(key) {
    if (!key || !key.region) { return; }
    var region = document.getElementById(key.region.id);
    if (!region) { return; }
    var target = key.id ? document.getElementById(key.id) : null;
    if (!target && key.href) {
      var links = region.querySelectorAll("a[href]");
      for (var i = 0; i < links.length; i++) {
        if (links[i].getAttribute("href") === key.href) { target = links[i]; break; }
      }
    }
    if (target) { target.focus(); }
  }

  function fetchPage(url) {
    return fetch(url, { credentials: "same-origin", headers: { "X-MC-Live": "1" } })
      .then(function (response) {
        if (response.status === 401 || response.url.indexOf("/ui/login") !== -1) {
          throw new Error("session");
        }
        return response.text();
      })
      .then(function (text) { return new DOMParser().parseFromString(text, "text/html"); });
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetchPage(window.location.href).then(function (doc) {
      var key = focusKey();
      var regions = document.querySelectorAll("[data-live][id]");
      for (var i = 0; i < regions.length; i++) {
        var fresh = doc.getElementById(regions[i].id);
        if (fresh) { regions[i].replaceWith(document.importNode(fresh, true)); }
      }
      restoreFocus(key);
      body.setAttribute("data-refreshed", String(Date.now()));
    }).catch(function (error) {
      if (error && error.message === "session") { stop("Session ended: log in again."); }
    }).then(function () {
      busy = false;
      if (again) { again = false; schedule(); }
    });
  }

  // A page about one thing follows it closely; a page about the whole fleet refreshes at
  // most every two seconds, however busy the fleet is.
  var delayMs = scope === "all" ? 2000 : 250;

  function schedule() {
    if (timer !== null) { return; }
    timer = window.setTimeout(function () { timer = null; refresh(); loadFragments(); }, delayMs);
  }

  function loadFragments() {
    var panels = document.querySelectorAll("[data-fragment]");
    Array.prototype.forEach.call(panels, function (panel) {
      fetchPage(panel.getAttribute("data-fragment")).then(function (doc) {
        var part = doc.getElementById("gateway-live");
        if (part) {
          panel.replaceChildren(document.importNode(part, true));
          panel.setAttribute("data-loaded", "1");
        }
      }).catch(function () { /* the panel keeps its link to the live page */ });
    });
  }

  var source = null;
  function stop(text) { if (source) { source.close(); } say(text); }

  if (scope && window.EventSource) {
    source = new EventSource("/ui/events");
    say("Connecting to live updates…");
    source.onopen = function () { say("Live"); body.setAttribute("data-live-connected", "1"); };
    source.onerror = function () {
      body.removeAttribute("data-live-connected");
      if (source.readyState === EventSource.CLOSED) {
        say("Live updates stopped: reload the page.");
      } else {
        say("Reconnecting to live updates…");
      }
    };
    ["agent", "gateway"].forEach(function (kind) {
      source.addEventListener(kind, function (message) {
        var data;
        try { data = JSON.parse(message.data); } catch (e) { return; }
        if (wanted(kind, data)) { schedule(); }
      });
    });
  } else if (status) {
    say("");
  }
  loadFragments();
})();
