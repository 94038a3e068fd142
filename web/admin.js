// The admin page: lists auctions and acts on them through the bidder's
// /admin/... routes (same origin, as behind nginx), with a token that has
// the admin role, kept in this tab's sessionStorage only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "auction-admin-token";
  let token = sessionStorage.getItem(TOKEN_KEY) || "";

  function status(text, failed) {
    const element = $("admin-status");
    element.textContent = text;
    element.dataset.state = failed ? "error" : "ok";
  }

  async function call(method, path, body) {
    const init = { method, headers: { Authorization: `Bearer ${token}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      return { ok: false, body: { error: "unreachable", message: "the bidder cannot be reached" } };
    }
    let json = null;
    try { json = await response.json(); } catch (_) { /* no body */ }
    return { ok: response.ok, status: response.status, body: json };
  }

  function failure(result) {
    const body = result.body || {};
    if (result.status === 401) return "sign in: the token is missing or not valid";
    if (result.status === 403 && body.error === "forbidden") return "this token does not have the admin role";
    return body.message || body.error || `refused (${result.status})`;
  }

  function when(ms) {
    return new Date(ms).toLocaleString();
  }

  function cents(amount) {
    return `$${(amount / 100).toFixed(2)}`;
  }

  function button(label, action, id, secondary) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    element.dataset.action = action;
    element.dataset.auction = id;
    if (secondary) element.className = "secondary";
    return element;
  }

  async function loadAuctions() {
    const result = await call("GET", "/auctions?limit=100");
    if (!result.ok) return status(`Cannot list auctions: ${failure(result)}`, true);
    const rows = result.body.auctions.map((auction) => {
      const row = document.createElement("tr");
      row.dataset.auction = auction.id;
      row.dataset.status = auction.status;
      const cells = [
        `${auction.title} (${auction.id})`,
        auction.status,
        when(auction.ends_at),
        auction.current ? `${cents(auction.current.amount)} by ${auction.current.bidder} (${auction.current.bidder_id})` : "none",
      ].map((text) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        return cell;
      });
      const actions = document.createElement("td");
      if (auction.status === "open") {
        actions.append(
          button("Close now", "close", auction.id),
          button("Extend", "extend", auction.id, true),
          button("Cancel", "cancel", auction.id, true),
        );
      }
      actions.append(button("Delete", "delete", auction.id, true));
      row.append(...cells, actions);
      return row;
    });
    $("auctions").tBodies[0].replaceChildren(...rows);
  }

  async function loadSuspended() {
    const result = await call("GET", "/admin/suspended");
    if (!result.ok) return;
    $("suspended").replaceChildren(...result.body.bidders.map((id) => {
      const li = document.createElement("li");
      li.textContent = id;
      return li;
    }));
  }

  async function loadRecent() {
    const result = await call("GET", "/admin/actions");
    if (!result.ok) return status(`Cannot read the admin log: ${failure(result)}`, true);
    $("recent").replaceChildren(...result.body.actions.map((entry) => {
      const li = document.createElement("li");
      li.dataset.action = entry.action;
      const target = entry.auction ? `${entry.title || ""} (${entry.auction})` : entry.bidder;
      const by = entry.by && entry.by.name ? entry.by.name : "an admin";
      li.textContent = `${when(entry.at)}: ${entry.action} ${target} by ${by}${entry.reason ? `: ${entry.reason}` : ""}`;
      return li;
    }));
  }

  async function refresh() {
    $("admin").dataset.phase = token ? "signed-in" : "signed-out";
    await loadAuctions();
    if (token) await Promise.all([loadSuspended(), loadRecent()]);
  }

  function reason() {
    const text = $("reason").value.trim();
    return text ? { reason: text } : {};
  }

  async function act(action, id) {
    const row = document.querySelector(`tr[data-auction="${CSS.escape(id)}"]`);
    const body = reason();
    if (action === "extend") {
      const minutes = Number($("extend-minutes").value);
      if (!Number.isFinite(minutes) || minutes <= 0) return status("Extend by a positive number of minutes.", true);
      const listed = await call("GET", `/auctions/${encodeURIComponent(id)}`);
      if (!listed.ok) return status(`Cannot read ${id}: ${failure(listed)}`, true);
      body.ends_at = listed.body.ends_at + Math.round(minutes * 60000);
    }
    if (action === "delete" && !window.confirm(`Delete ${id}? Its pages will say it was removed.`)) return;
    const result = await call("POST", `/admin/auctions/${encodeURIComponent(id)}/${action}`, body);
    if (result.ok) status(`${action}: done for ${id}.`);
    else status(`${action} ${id}: ${failure(result)}`, true);
    if (row) row.dataset.last = action;
    await refresh();
  }

  async function actOnBidder(action) {
    const id = $("bidder-id").value.trim();
    if (!id) return status("Enter a bidder id.", true);
    const result = await call("POST", `/admin/bidders/${encodeURIComponent(id)}/${action}`, reason());
    if (result.ok) status(`${action}: done for ${id}.`);
    else status(`${action} ${id}: ${failure(result)}`, true);
    await refresh();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("admin-token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    status(token ? "Token set." : "No token.");
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("admin-token").value = "";
    status("Token forgotten.");
    refresh();
  });
  $("auctions").addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (target) act(target.dataset.action, target.dataset.auction);
  });
  $("refresh").addEventListener("click", refresh);
  $("suspend").addEventListener("click", () => actOnBidder("suspend"));
  $("reinstate").addEventListener("click", () => actOnBidder("reinstate"));
  refresh();
})();
