// jobtable dashboard: live refresh of the page's #live part, and bulk
// selection helpers.  Plain JavaScript, no build step, no network other
// than this dashboard.
(function () {
  "use strict";

  function refreshLoop(live) {
    var seconds = parseFloat(live.getAttribute("data-refresh") || "0");
    if (!(seconds > 0)) return;
    var status = document.getElementById("live-status");
    var busy = false;
    var lastHtml = null;

    // A click is a press and a release on the same element: replacing the
    // element in between would swallow it.
    var pressed = false;
    document.addEventListener("pointerdown", function () { pressed = true; }, true);
    document.addEventListener("pointerup", function () { pressed = false; }, true);
    document.addEventListener("pointercancel", function () { pressed = false; }, true);

    function interacting() {
      if (pressed) return true;
      // Do not replace rows the user is selecting or a field being typed in.
      if (live.querySelector("input[type=checkbox]:checked")) return true;
      var active = document.activeElement;
      return !!(active && live.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName));
    }

    function tick() {
      if (busy || document.hidden || interacting()) return;
      busy = true;
      fetch(window.location.href, {
        headers: { "X-Jobtable-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          // The user may have started selecting rows while the request was
          // in flight: keep their page rather than this update.
          if (interacting()) return;
          if (html !== lastHtml) {
            live.innerHTML = html;
            lastHtml = html;
          }
          live.dispatchEvent(new CustomEvent("jobtable:refreshed", { bubbles: true }));
          if (status) status.textContent = "updated " + new Date().toLocaleTimeString();
          document.body.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function (err) {
          if (status) status.textContent = "not updating (" + err.message + ")";
        })
        .then(function () {
          busy = false;
        });
    }

    window.setInterval(tick, seconds * 1000);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) tick();
    });
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.hasAttribute || !box.hasAttribute("data-check-all")) return;
    var table = box.closest("table");
    if (!table) return;
    table.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (other) {
      other.checked = box.checked;
    });
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("form.bulk button[formaction]");
    if (!button) return;
    var form = button.form;
    if (!form.querySelector("input[type=checkbox][name=ids]:checked")) {
      event.preventDefault();
      window.alert("Select one or more rows first.");
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) refreshLoop(live);
  });
})();
