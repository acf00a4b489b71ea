// corem operator console: a small vanilla-JS app over the admin API (same origin).
// No framework, no build step. The operator token lives in this tab's sessionStorage only
// and goes out as a bearer token; nothing is rendered with innerHTML from data.
"use strict";

(() => {
  const TOKEN_KEY = "corem.console.token";
  const state = { token: null, who: null, tail: null, timers: [] };

  // -- DOM helpers --------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (sel, root) => (root || document).querySelector(sel);
  const present = (...xs) => xs.filter((x) => x !== null && x !== undefined && x !== false);
  const view = () => $("#view");
  const json = (v) => JSON.stringify(v, null, 2);
  const time = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "");
  const pre = (v, attrs) => h("pre", attrs || {}, typeof v === "string" ? v : json(v));
  function field(id, label, input) {
    return h("div", { class: "grow" }, h("label", { for: id }, label), input);
  }
  function table(headers, rows, attrs) {
    return h("div", { class: "table-wrap" },
      h("table", { class: "stack", ...(attrs || {}) },
        h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell, i) =>
          h("td", { "data-label": headers[i] }, cell)))))));
  }
  function errorText(res) {
    const e = res.body && res.body.error;
    return e ? `${res.status} ${e.code}: ${e.message}` : `HTTP ${res.status}`;
  }
  function clearTimers() {
    state.timers.forEach((t) => clearInterval(t));
    state.timers = [];
    if (state.tail) state.tail.stop();
    state.tail = null;
  }
  function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }

  // -- API ------------------------------------------------------------------------------------
  async function api(method, path, body, headers) {
    const init = { method, headers: { Authorization: `Bearer ${state.token}`, ...(headers || {}) } };
    if (body !== undefined) {
      if (typeof body === "string") init.body = body;
      else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (_e) { data = null; }
    if (resp.status === 401 && path !== "/api/v1/whoami") signOut("Your session ended: sign in again.");
    return { status: resp.status, ok: resp.ok, body: data };
  }
  const enc = encodeURIComponent;

  // The audit entry an action just wrote (newest record of this operator for that action).
  async function auditEntry(action) {
    const res = await api("GET", `/api/v1/audit?limit=1&action=${enc(action)}&actor=${enc(state.who.actor)}`);
    const rec = res.ok && res.body.records[0];
    return h("div", { class: "panel audit-entry", role: "status" },
      h("h3", {}, "Audit entry written"),
      rec ? pre(rec) : h("p", { class: "hint" }, "(no audit record found)"));
  }

  // A confirmation dialog (<dialog>, keyboard and screen-reader friendly): resolves true/false.
  function confirmAction(title, text) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.returnValue = "";
      dlg.showModal();
      $("#confirm-cancel").focus();
    });
  }

  // -- sign-in ------------------------------------------------------------------------------------
  async function signIn(token) {
    state.token = token;
    const res = await api("GET", "/api/v1/whoami");
    if (!res.ok) { state.token = null; return errorText(res); }
    state.who = res.body;
    sessionStorage.setItem(TOKEN_KEY, token);
    return null;
  }
  function signOut(message) {
    clearTimers();
    state.token = null; state.who = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("#sign-in-error").textContent = message || "";
    render();
  }

  // -- pages ----------------------------------------------------------------------------------
  const pages = {
    devices: devicesPage, device: devicePage, provision: provisionPage, sessions: sessionsPage,
    uplinks: uplinksPage, lwm2m: lwm2mPage, cas: casPage, audit: auditPage, health: healthPage,
  };

  function render() {
    clearTimers();
    const signedIn = !!state.who;
    $("#sign-in").hidden = signedIn;
    $("#menu").hidden = !signedIn;
    $("#sign-out").hidden = !signedIn;
    $("#who").textContent = signedIn ? `tenant ${state.who.tenant_id} · ${state.who.actor}` : "";
    view().replaceChildren();
    if (!signedIn) { $("#token").focus(); return; }
    const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "devices").split("/");
    const page = pages[name] || devicesPage;
    for (const a of document.querySelectorAll("#menu a")) {
      if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    page(...args.map(decodeURIComponent));
  }

  // Devices: search by device id or hardware id; paginated list.
  function devicesPage() {
    const results = h("div", { id: "device-results" });
    const cursors = [null];
    const q = h("input", { id: "device-search", type: "search", placeholder: "device id or hardware id" });
    async function showPage(i) {
      const cursor = cursors[i];
      const res = await api("GET", `/api/v1/devices?limit=20${cursor ? `&cursor=${enc(cursor)}` : ""}`);
      if (!res.ok) { results.replaceChildren(h("p", { class: "error" }, errorText(res))); return; }
      if (res.body.next_cursor) cursors[i + 1] = res.body.next_cursor;
      results.replaceChildren(deviceTable(res.body.devices), h("div", { class: "row" },
        h("button", { type: "button", disabled: i === 0, onclick: () => showPage(i - 1) }, "Previous page"),
        h("span", { class: "hint" }, `page ${i + 1}`),
        h("button", { type: "button", disabled: !res.body.next_cursor, onclick: () => showPage(i + 1) }, "Next page")));
    }
    async function search(ev) {
      ev.preventDefault();
      const text = q.value.trim();
      if (!text) { showPage(0); return; }
      if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text)) {
        const res = await api("GET", `/api/v1/devices/${enc(text)}`);
        if (res.ok) { results.replaceChildren(deviceTable([res.body])); return; }
      }
      const res = await api("GET", `/api/v1/devices?hardware_id=${enc(text)}`);
      if (!res.ok) { results.replaceChildren(h("p", { class: "error" }, errorText(res))); return; }
      results.replaceChildren(res.body.devices.length ? deviceTable(res.body.devices)
        : h("p", {}, "No device with that id or hardware id."));
    }
    view().append(h("h1", {}, "Devices"),
      h("form", { class: "row", onsubmit: search, role: "search" },
        field("device-search", "Search by device id or hardware id", q),
        h("button", { type: "submit", class: "primary" }, "Search")),
      results);
    showPage(0);
  }
  function deviceTable(devices) {
    return table(["Device", "Hardware id", "Credential", "Status", "Created"], devices.map((d) => [
      h("a", { href: `#/device/${enc(d.device_id)}`, class: "mono" }, d.device_id),
      d.hardware_id, d.credential_kind, h("span", { class: `badge ${d.status}` }, d.status), time(d.created_at),
    ]), { id: "device-table" });
  }

  // One device: credentials (history, actions), live sessions, last uplinks, downlinks, LwM2M.
  async function devicePage(deviceId) {
    const root = h("div", { id: "device-page" });
    view().append(root);
    const res = await api("GET", `/api/v1/devices/${enc(deviceId)}`);
    if (!res.ok) { root.append(h("h1", {}, "Device"), h("p", { class: "error" }, errorText(res))); return; }
    const d = res.body;
    const notice = h("div", { id: "action-result", "aria-live": "polite" });
    async function act(what, action, method, path, body, destructive, extraNote) {
      if (destructive && !(await confirmAction(what, destructive))) return null;
      const r = await api(method, path, body);
      if (!r.ok) { notice.replaceChildren(h("p", { class: "error", role: "alert" }, `${what}: ${errorText(r)}`)); return null; }
      notice.replaceChildren(h("p", { class: "ok" }, `${what}: done.${extraNote ? " " + extraNote : ""}`), await auditEntry(action));
      refreshCreds();
      return r;
    }
    const creds = h("div", { id: "credentials" });
    async function refreshCreds() {
      const r = await api("GET", `/api/v1/devices/${enc(deviceId)}`);
      if (r.ok) showCreds(r.body.credentials);
    }
    function showCreds(list) {
      creds.replaceChildren(table(["Credential", "Kind", "Status", "Created", "Revoked", "Overlap ends", "Actions"],
        credRowsOf(list), { id: "credential-table" }));
    }
    const credRowsOf = (list) => list.map((c) => {
      const actions = [];
      if (c.kind === "api_key" && (c.status === "active" || c.status === "rotated")) {
        const overlap = h("input", { type: "number", min: "0", value: "300", id: `overlap-${c.key_id}`, "aria-label": `Overlap seconds for ${c.key_id}` });
        if (c.status === "active") {
          actions.push(h("span", { class: "row" }, overlap, h("button", { type: "button", onclick: async () => {
            const r = await act("Rotate API key", "keys.rotate", "POST", `/api/v1/devices/${enc(deviceId)}/keys/${enc(c.key_id)}/rotate`, { overlap_s: Number(overlap.value) }, null);
            if (r) notice.prepend(secretBox("New API key", r.body.api_key), countdownLine(r.body.old_key_expires_at));
          } }, "Rotate")));
        }
        actions.push(h("button", { type: "button", class: "danger", "data-revoke": c.credential_id, onclick: async () => {
          if (await act("Revoke API key", "keys.revoke", "DELETE", `/api/v1/devices/${enc(deviceId)}/keys/${enc(c.key_id)}`, undefined,
            `Revoke ${c.key_id}? Devices using it are disconnected on every node at once and cannot authenticate with it again.`)) refreshSessions();
        } }, "Revoke"));
      }
      if (c.kind === "psk" && c.status === "active") {
        actions.push(h("button", { type: "button", onclick: async () => {
          const r = await act("Rotate PSK", "psk.rotate", "POST", `/api/v1/devices/${enc(deviceId)}/psk/rotate`, {},
            "Rotate the PSK? The old key stops at once: the device needs the new one.");
          if (r) notice.prepend(secretBox(`New PSK for identity ${r.body.psk_identity}`, r.body.psk));
        } }, "Rotate"), h("button", { type: "button", class: "danger", "data-revoke": c.credential_id, onclick: async () => {
          if (await act("Revoke PSK", "psk.revoke", "DELETE", `/api/v1/devices/${enc(deviceId)}/psk`, undefined,
            "Revoke the PSK? The device's sessions are closed on every node.")) refreshSessions();
        } }, "Revoke"));
      }
      if (c.kind === "x509" && c.status === "active") {
        actions.push(h("button", { type: "button", class: "danger", "data-revoke": c.credential_id, onclick: async () => {
          if (await act("Revoke certificate", "certs.revoke", "DELETE", `/api/v1/devices/certs/${enc(c.fingerprint)}`, undefined,
            `Revoke certificate ${c.fingerprint.slice(0, 16)}…? Its sessions are closed on every node.`)) refreshSessions();
        } }, "Revoke"));
      }
      const until = c.expires_at && c.expires_at * 1000 > Date.now()
        ? h("span", { "data-until": c.expires_at }, "") : (c.expires_at ? time(c.expires_at) : "");
      return [h("span", { class: "mono" }, c.credential_id), c.kind, h("span", { class: `badge ${c.status}` }, c.status),
        time(c.created_at), c.revoked_at ? time(c.revoked_at) : "", until, h("span", { class: "row" }, actions)];
    });
    const sessions = h("div", { id: "device-sessions" });
    async function refreshSessions() {
      const r = await api("GET", `/api/v1/sessions?device_id=${enc(deviceId)}`);
      sessions.replaceChildren(r.ok ? sessionsTable(r.body.sessions, notice, refreshSessions) : h("p", { class: "error" }, errorText(r)));
    }
    const uplinks = h("div", { id: "device-uplinks" });
    async function refreshUplinks() {
      const r = await api("GET", `/api/v1/uplinks?device_id=${enc(deviceId)}&limit=10`);
      uplinks.replaceChildren(r.ok ? (r.body.uplinks.length ? table(["Received", "Transport", "Kind", "Payload"],
        r.body.uplinks.map((u) => [time(u.received_at), u.transport, u.kind, h("code", {}, JSON.stringify(u.payload))]))
        : h("p", { class: "hint" }, "No uplinks in the stream.")) : h("p", { class: "error" }, errorText(r)));
    }
    const certPem = h("textarea", { id: "register-cert-pem", placeholder: "-----BEGIN CERTIFICATE-----" });
    root.append(...present(
      h("h1", {}, "Device ", h("span", { class: "mono" }, d.device_id)),
      h("dl", { class: "kv" }, h("dt", {}, "Hardware id"), h("dd", {}, d.hardware_id), h("dt", {}, "Credential kind"),
        h("dd", {}, d.credential_kind), h("dt", {}, "Status"), h("dd", {}, d.status), h("dt", {}, "Created"), h("dd", {}, time(d.created_at))),
      notice,
      h("h2", {}, "Credentials"),
      h("p", { class: "hint" }, "History of the device's credentials (never a secret)."),
      creds,
      d.credential_kind === "api_key" ? h("button", { type: "button", onclick: async () => {
        const r = await act("Create API key", "keys.create", "POST", `/api/v1/devices/${enc(deviceId)}/keys`, undefined, null);
        if (r) notice.prepend(secretBox("New API key", r.body.api_key));
      } }, "Create another API key") : null,
      d.credential_kind === "x509" ? h("details", {}, h("summary", {}, "Register a certificate"),
        h("label", { for: "register-cert-pem" }, "Device certificate (PEM)"), certPem,
        fileInput("register-cert-file", certPem),
        h("button", { type: "button", onclick: async () => {
          await act("Register certificate", "certs.register", "POST", `/api/v1/devices/${enc(deviceId)}/certs`, { pem: certPem.value }, null);
        } }, "Register")) : null,
      h("h2", {}, "Live sessions"), sessions,
      h("h2", {}, "Last uplinks"), uplinks,
      h("h2", {}, "Send a downlink"), downlinkForm(deviceId),
      h("h2", {}, "LwM2M"), h("div", { id: "device-lwm2m" }, await lwm2mTree(deviceId))));
    showCreds(d.credentials); refreshSessions(); refreshUplinks();
    every(3000, refreshSessions);
  }

  function secretBox(title, secret) {
    const code = h("code", { id: "secret-value" }, secret);
    const copied = h("span", { class: "ok", "aria-live": "polite" });
    return h("div", { class: "secret", role: "alert" },
      h("strong", {}, title), code,
      h("p", {}, "Copy it now: it cannot be shown again."),
      h("button", { type: "button", onclick: async () => {
        try { await navigator.clipboard.writeText(secret); copied.textContent = " Copied."; }
        catch (_e) { const r = document.createRange(); r.selectNodeContents(code); getSelection().removeAllRanges(); getSelection().addRange(r); copied.textContent = " Selected: press Ctrl+C."; }
      } }, "Copy"), copied);
  }
  function countdownLine(until) {
    if (!until) return h("p", {}, "The old key stopped now.");
    return h("p", {}, "The old key keeps working for ", h("span", { "data-until": until, id: "overlap-countdown" }, ""), ".");
  }
  function fileInput(id, target) {
    return h("div", {}, h("label", { for: id }, "…or upload a PEM file"),
      h("input", { type: "file", id, accept: ".pem,.crt,.cer", onchange: async (ev) => {
        const f = ev.target.files[0]; if (f) target.value = await f.text();
      } }));
  }

  function sessionsTable(list, notice, refresh) {
    if (!list.length) return h("p", { class: "hint" }, "No live session.");
    return table(["Device", "Transport", "Node", "Since", "From", "Credential", ""], list.map((s) => [
      h("a", { href: `#/device/${enc(s.device_id)}`, class: "mono" }, s.device_id), s.transport, s.node_id, time(s.since),
      s.peer || "", `${s.credential_kind} ${s.credential_id}`,
      h("button", { type: "button", "data-disconnect": s.session_id, onclick: async () => {
        if (!(await confirmAction("Disconnect session",
          "Disconnect this session? This is not a revocation: the credential stays valid and the device may connect again."))) return;
        const r = await api("DELETE", `/api/v1/sessions/${enc(s.session_id)}`);
        const out = notice || $("#action-result");
        if (!r.ok) { out.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(r))); return; }
        out.replaceChildren(h("p", { class: "ok" }, r.body.disconnected ? "Disconnected." : "Disconnect sent."), h("p", {}, r.body.note), await auditEntry("sessions.disconnect"));
        refresh();
      } }, "Disconnect"),
    ]), { class: "stack sessions" });
  }

  function downlinkForm(deviceId) {
    const kind = h("input", { type: "text", id: "downlink-kind", value: "command", pattern: "[a-z0-9_-]{1,64}" });
    const payload = h("textarea", { id: "downlink-payload" }, '{"reboot": false}');
    const qos = h("select", { id: "downlink-qos" }, h("option", { value: "1" }, "1 (at least once)"), h("option", { value: "0" }, "0 (at most once)"));
    const out = h("div", { id: "downlink-result", "aria-live": "polite" });
    return h("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      let value;
      try { value = JSON.parse(payload.value); } catch (_e) { value = payload.value; }
      const r = await api("POST", `/api/v1/devices/${enc(deviceId)}/downlinks`, { kind: kind.value, payload: value, qos: Number(qos.value) });
      out.replaceChildren(h("p", { class: r.ok ? "ok" : "error" }, r.ok ? `Answer ${r.status}` : errorText(r)), pre(r.body));
    } }, h("div", { class: "row" }, field("downlink-kind", "Kind", kind), field("downlink-qos", "QoS", qos)),
    h("label", { for: "downlink-payload" }, "Payload (JSON, or text)"), payload,
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Send downlink")), out);
  }

  // LwM2M: the registration's object tree (names from the server's object models), with
  // read / write / execute / observe / discover per path.
  let models = null;
  async function lwm2mModels() {
    if (models) return models;
    const r = await api("GET", "/api/v1/lwm2m/objects");
    models = new Map((r.ok ? r.body.objects : []).map((o) => [o.id, o]));
    return models;
  }
  async function lwm2mTree(deviceId) {
    const r = await api("GET", `/api/v1/devices/${enc(deviceId)}/lwm2m`);
    if (r.status === 404) return h("p", { class: "hint" }, "Not registered over LwM2M.");
    if (!r.ok) return h("p", { class: "error" }, errorText(r));
    const reg = r.body;
    const known = await lwm2mModels();
    const out = h("div", { class: "panel lwm2m-result", "aria-live": "polite" }, h("p", { class: "hint" }, "Pick an operation below; the device's answer shows here."));
    async function call(op, path, extra) {
      out.replaceChildren(h("p", { class: "hint" }, `${op} ${path}…`));
      const res = await api("POST", `/api/v1/devices/${enc(deviceId)}/lwm2m/${op}`, { path, ...(extra || {}) });
      out.replaceChildren(h("h3", {}, `${op} ${path}: ${res.ok ? res.body.code : errorText(res)}`), pre(res.body, { class: "lwm2m-json" }));
    }
    const objects = reg.objects.objects.filter((o) => /^\/\d+(\/\d+)?$/.test(o.path) && o.path !== "/0" && !o.path.startsWith("/0/"));
    const items = objects.map((o) => {
      const [oid, iid] = o.path.slice(1).split("/").map(Number);
      const model = known.get(oid);
      const name = model ? model.name : `Object ${oid}`;
      const buttons = (path) => ["read", "observe", "cancel-observe", "discover"].map((op) =>
        h("button", { type: "button", "data-op": op, "data-path": path, onclick: () => call(op, path) }, op));
      const resources = model && iid !== undefined ? model.resources.map((res) => {
        const path = `${o.path}/${res.id}`;
        const value = h("input", { type: "text", "aria-label": `Value for ${path}`, size: "10" });
        const ops = [];
        if (res.operations.includes("R")) ops.push(...buttons(path).slice(0, 2));
        if (res.operations.includes("W")) ops.push(value, h("button", { type: "button", "data-op": "write", "data-path": path, onclick: () =>
          call("write", path, { values: [{ path, value: res.type === "integer" || res.type === "float" || res.type === "unsigned" ? Number(value.value) : res.type === "boolean" ? value.value === "true" : value.value }] }) }, "write"));
        if (res.operations.includes("E")) ops.push(h("button", { type: "button", "data-op": "execute", "data-path": path, onclick: () => call("execute", path) }, "execute"));
        return h("li", {}, h("span", { class: "mono" }, `${res.id} ${res.name}`), " ", h("span", { class: "hint" }, `${res.type} ${res.operations}`), " ", ops);
      }) : [];
      return h("li", {}, h("details", {}, h("summary", {}, h("span", { class: "mono" }, o.path), ` ${name}${o.ver ? " v" + o.ver : ""}`),
        h("div", { class: "row" }, buttons(o.path)), h("ul", {}, resources)));
    });
    return h("div", {}, h("dl", { class: "kv" }, h("dt", {}, "Endpoint"), h("dd", {}, reg.endpoint), h("dt", {}, "Registration"), h("dd", {}, reg.registration_id),
      h("dt", {}, "Node"), h("dd", {}, reg.node_id), h("dt", {}, "Lifetime"), h("dd", {}, `${reg.lifetime_s} s (expires ${time(reg.expires_at)})`),
      h("dt", {}, "Queue mode"), h("dd", {}, String(reg.queue_mode))),
    out, h("ul", { class: "lwm2m-tree" }, items),
    h("p", { class: "hint" }, "Notifications of observed paths arrive as uplinks: see the live tail."));
  }

  function provisionPage() {
    const hw = h("input", { type: "text", id: "hw-id", required: true, pattern: "[A-Za-z0-9._:@+=-]{1,128}" });
    const kind = h("select", { id: "kind" }, ["api_key", "psk", "x509"].map((k) => h("option", { value: k }, k)));
    const pem = h("textarea", { id: "cert-pem", placeholder: "-----BEGIN CERTIFICATE-----" });
    const pskId = h("input", { type: "text", id: "psk-identity", placeholder: `${state.who.tenant_id}:…` });
    const x509 = h("div", { hidden: true }, h("label", { for: "cert-pem" }, "Device certificate (PEM)"), pem, fileInput("cert-file", pem));
    const psk = h("div", { hidden: true }, field("psk-identity", "PSK identity (optional)", pskId));
    const out = h("div", { id: "provision-result", "aria-live": "polite" });
    kind.addEventListener("change", () => { x509.hidden = kind.value !== "x509"; psk.hidden = kind.value !== "psk"; });
    view().append(h("h1", {}, "Provision a device"), h("form", { id: "provision-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { hardware_id: hw.value.trim(), credential_kind: kind.value };
      if (kind.value === "x509") body.cert_pem = pem.value;
      if (kind.value === "psk" && pskId.value.trim()) body.psk_identity = pskId.value.trim();
      const r = await api("POST", "/api/v1/devices", body);
      if (!r.ok) { out.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(r))); return; }
      const b = r.body;
      const secret = b.api_key || b.psk;
      out.replaceChildren(
        h("p", { class: "ok" }, b.created ? "Device provisioned." : "This hardware id was provisioned before: no new secret."),
        h("dl", { class: "kv" }, h("dt", {}, "Device id"), h("dd", { id: "new-device-id", class: "mono" }, b.device_id),
          b.key_id ? [h("dt", {}, "Key id"), h("dd", {}, b.key_id)] : null,
          b.psk_identity ? [h("dt", {}, "PSK identity"), h("dd", {}, b.psk_identity)] : null,
          b.fingerprint ? [h("dt", {}, "Fingerprint"), h("dd", {}, b.fingerprint)] : null),
        secret ? secretBox(b.api_key ? "API key" : "PSK (hex)", secret) : null,
        h("p", {}, h("a", { href: `#/device/${enc(b.device_id)}` }, "Open the device")),
        await auditEntry("devices.provision"));
      form.reset();
    } }, h("div", { class: "row" }, field("hw-id", "Hardware id", hw), field("kind", "Credential kind", kind)), x509, psk,
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: "provision-submit" }, "Provision"))), out);
    const form = $("#provision-form");
  }

  function sessionsPage() {
    const device = h("input", { type: "search", id: "sessions-device" });
    const transport = h("select", { id: "sessions-transport" }, h("option", { value: "" }, "any"),
      ["mqtt", "coap"].map((t) => h("option", { value: t }, t)));
    const list = h("div", { id: "sessions-list" });
    const notice = h("div", { id: "action-result", "aria-live": "polite" });
    async function refresh() {
      const q = [];
      if (device.value.trim()) q.push(`device_id=${enc(device.value.trim())}`);
      if (transport.value) q.push(`transport=${transport.value}`);
      const r = await api("GET", `/api/v1/sessions${q.length ? "?" + q.join("&") : ""}`);
      list.replaceChildren(r.ok ? h("div", {}, h("p", { class: "hint" }, `${r.body.sessions.length} live session(s)${r.body.truncated ? " (more not shown)" : ""}, every node.`),
        sessionsTable(r.body.sessions, notice, refresh)) : h("p", { class: "error" }, errorText(r)));
    }
    view().append(h("h1", {}, "Live sessions"),
      h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); refresh(); } },
        field("sessions-device", "Device id", device), field("sessions-transport", "Transport", transport),
        h("button", { type: "submit" }, "Filter")), notice, list);
    refresh(); every(3000, refresh);
  }

  // Live tail over Server-Sent Events, read with fetch (EventSource cannot send the token).
  function uplinksPage() {
    const device = h("input", { type: "search", id: "tail-device", placeholder: "all devices" });
    const items = h("ul", { class: "tail", id: "tail-list", "aria-live": "polite" });
    const status = h("span", { id: "tail-status", class: "hint" }, "stopped");
    const toggle = h("button", { type: "button", id: "tail-pause", disabled: true }, "Pause");
    let tail = null;
    function start() {
      if (tail) tail.stop();
      items.replaceChildren();
      tail = openTail(device.value.trim(), null, items, status);
      state.tail = tail;
      toggle.disabled = false; toggle.textContent = "Pause";
    }
    toggle.addEventListener("click", () => {
      if (!tail) return;
      if (tail.running) { tail.stop(); status.textContent = "paused"; toggle.textContent = "Resume"; }
      else { tail = openTail(device.value.trim(), tail.lastId, items, status); state.tail = tail; toggle.textContent = "Pause"; }
    });
    view().append(h("h1", {}, "Uplinks: live tail"),
      h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); start(); } },
        field("tail-device", "Device id (empty: the whole tenant)", device),
        h("button", { type: "submit", class: "primary", id: "tail-start" }, "Start"), toggle, status),
      h("p", { class: "hint" }, "Newest first; resuming after a pause delivers what came meanwhile."), items);
    start();
  }
  function openTail(deviceId, lastId, items, status) {
    const ctl = new AbortController();
    const t = { running: true, lastId, stop: () => { t.running = false; ctl.abort(); } };
    const headers = { Authorization: `Bearer ${state.token}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    (async () => {
      try {
        const resp = await fetch(`/api/v1/uplinks/stream${deviceId ? `?device_id=${enc(deviceId)}` : ""}`, { headers, signal: ctl.signal });
        if (!resp.ok) { let b = null; try { b = await resp.json(); } catch (_e) { /* */ } status.textContent = errorText({ status: resp.status, body: b }); t.running = false; return; }
        status.textContent = "live";
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
            const ev = {};
            for (const line of block.split("\n")) {
              if (!line || line.startsWith(":")) continue;
              const i = line.indexOf(":");
              ev[line.slice(0, i)] = line.slice(i + 1).replace(/^ /, "");
            }
            if (ev.event === "uplink" && ev.data) {
              t.lastId = ev.id;
              const u = JSON.parse(ev.data);
              items.prepend(h("li", { "data-id": ev.id }, h("span", { class: "hint" }, `${time(u.received_at)} ${u.transport} ${u.kind} `),
                h("a", { href: `#/device/${enc(u.device_id)}`, class: "mono" }, u.device_id), pre(u, { class: "uplink-json" })));
              while (items.children.length > 200) items.lastChild.remove();
            }
          }
        }
        if (t.running) status.textContent = "ended";
      } catch (e) {
        if (t.running) status.textContent = `error: ${e.message}`;
      }
      t.running = false;
    })();
    return t;
  }

  function lwm2mPage() {
    const id = h("input", { type: "search", id: "lwm2m-device" });
    const out = h("div", { id: "lwm2m-page" });
    view().append(h("h1", {}, "LwM2M"), h("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault(); out.replaceChildren(await lwm2mTree(id.value.trim()));
    } }, field("lwm2m-device", "Device id", id), h("button", { type: "submit", class: "primary" }, "Show registration")), out);
  }

  async function casPage() {
    const out = h("div", { id: "cas-list" });
    const notice = h("div", { "aria-live": "polite" });
    view().append(h("h1", {}, "Tenant CAs (trust anchors)"), notice, out, addCaForm(notice));
    const r = await api("GET", "/api/v1/cas");
    if (!r.ok) { out.replaceChildren(h("p", { class: "error" }, errorText(r))); return; }
    out.replaceChildren(r.body.cas.length ? table(["Fingerprint", "Subject", "Not after", "Device proof", ""], r.body.cas.map((c) => [
      h("span", { class: "mono" }, c.fingerprint), c.subject, time(c.not_after), String(c.require_device_proof),
      h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction("Remove CA", "Remove this CA? Devices whose certificates chain to it stop authenticating and their sessions are re-checked."))) return;
        const x = await api("DELETE", `/api/v1/cas/${enc(c.fingerprint)}`);
        notice.replaceChildren(x.ok ? h("p", { class: "ok" }, "Removed.") : h("p", { class: "error" }, errorText(x)), x.ok ? await auditEntry("cas.remove") : "");
      } }, "Remove")])) : h("p", { class: "hint" }, "No CA."));
  }

  // Adding a CA needs proof of possession of its key: a challenge from the server, signed
  // offline with the CA's key (the key never comes near the browser).
  function addCaForm(notice) {
    const pem = h("textarea", { id: "ca-pem", placeholder: "-----BEGIN CERTIFICATE-----" });
    const challenge = h("code", { id: "ca-challenge" });
    const signature = h("input", { type: "text", id: "ca-signature", spellcheck: "false" });
    const deviceProof = h("input", { type: "checkbox", id: "ca-device-proof" });
    const how = h("pre", { class: "hint", hidden: true });
    return h("details", {}, h("summary", {}, "Add a CA"),
      h("label", { for: "ca-pem" }, "CA certificate (PEM)"), pem, fileInput("ca-file", pem),
      h("div", { class: "row" }, h("button", { type: "button", onclick: async () => {
        const r = await api("POST", "/api/v1/challenges");
        if (!r.ok) { notice.replaceChildren(h("p", { class: "error" }, errorText(r))); return; }
        challenge.textContent = r.body.challenge;
        how.hidden = false;
        how.textContent = `printf %s '${r.body.challenge}' | openssl dgst -sha256 -sign ca.key | base64 -w0`;
      } }, "Get a challenge"), challenge), how,
      field("ca-signature", "Signature of the challenge by the CA's key (base64)", signature),
      h("label", { for: "ca-device-proof" }, deviceProof, " Ask proof of possession for every device certificate under this CA"),
      h("button", { type: "button", class: "primary", onclick: async () => {
        const r = await api("POST", "/api/v1/cas", { cert_pem: pem.value, require_device_proof: deviceProof.checked,
          proof: { challenge: challenge.textContent, signature: signature.value.trim() } });
        notice.replaceChildren(r.ok ? h("p", { class: "ok" }, "CA added.") : h("p", { class: "error", role: "alert" }, errorText(r)), r.ok ? await auditEntry("cas.add") : "");
        if (r.ok) setTimeout(render, 1500);
      } }, "Add CA"));
  }

  function auditPage() {
    const inputs = ["action", "actor", "target", "outcome"].map((n) => [n, h("input", { type: "text", id: `audit-${n}` })]);
    const out = h("div", { id: "audit-list" });
    let before = null;
    async function load(reset) {
      if (reset) before = null;
      const q = ["limit=50", ...inputs.filter(([, i]) => i.value.trim()).map(([n, i]) => `${n}=${enc(i.value.trim())}`)];
      if (before) q.push(`before=${enc(before)}`);
      const r = await api("GET", `/api/v1/audit?${q.join("&")}`);
      if (!r.ok) { out.replaceChildren(h("p", { class: "error" }, errorText(r))); return; }
      before = r.body.next_before;
      out.replaceChildren(table(["At", "Actor", "Action", "Target", "Outcome"], r.body.records.map((a) =>
        [time(a.at), a.actor, a.action, h("span", { class: "mono" }, a.target), a.outcome])),
      h("button", { type: "button", disabled: !before, onclick: () => load(false) }, "Older"));
    }
    view().append(h("h1", {}, "Audit log"), h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); load(true); } },
      inputs.map(([n, i]) => field(`audit-${n}`, n[0].toUpperCase() + n.slice(1), i)), h("button", { type: "submit" }, "Filter")), out);
    load(true);
  }

  // Health: per node, status and small inline-SVG charts (rates from successive readings).
  function healthPage() {
    const out = h("div", { id: "health", class: "grid" });
    const history = new Map();
    async function poll() {
      const r = await api("GET", "/api/v1/nodes");
      if (!r.ok) { out.replaceChildren(h("p", { class: "error" }, errorText(r))); return; }
      const now = Date.now() / 1000;
      out.replaceChildren(...r.body.nodes.map((n) => {
        const hist = history.get(n.node_id) || [];
        hist.push({ t: now, up: n.uplinks_total || 0, af: n.auth_failures_total || 0 });
        while (hist.length > 30) hist.shift();
        history.set(n.node_id, hist);
        const rate = (k) => hist.slice(1).map((p, i) => Math.max(0, (p[k] - hist[i][k]) / Math.max(0.001, p.t - hist[i].t)));
        const lat = n.revocations_total ? (1000 * n.revocation_latency_sum_s / n.revocations_total).toFixed(1) + " ms" : "–";
        const deps = Object.entries(n.dependencies || {}).map(([k, v]) => h("span", { class: `badge ${v ? "up" : "down"}` }, `${k} ${v ? "up" : "down"}`));
        return h("section", { class: "panel node", "aria-label": `Node ${n.node_id}` },
          h("h2", {}, n.node_id), h("p", {}, h("span", { class: `badge ${n.accepting ? "up" : "down"}` }, n.accepting ? "accepting" : "not accepting"), " ", deps),
          h("h3", {}, "Connections per transport (all tenants)"), bars(n.sessions || {}),
          h("h3", {}, "Your tenant's sessions"), bars(n.tenant_sessions || {}),
          h("h3", {}, "Uplinks/s"), spark(rate("up")),
          h("h3", {}, "Auth failures/s"), spark(rate("af")),
          h("p", {}, `Revocation → disconnect, mean: ${lat} (${n.revocations_total || 0} revocations)`));
      }));
    }
    view().append(h("h1", {}, "Health"), h("p", { class: "hint" }, "Every live node (sessions-index heartbeat); refreshed every 2 s."), out);
    poll(); every(2000, poll);
  }
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    kids.forEach((c) => el.append(c));
    return el;
  }
  function bars(counts) {
    const entries = Object.entries(counts);
    if (!entries.length) return h("p", { class: "hint" }, "none");
    const max = Math.max(...entries.map(([, v]) => v), 1);
    const w = 240, row = 18;
    const svg = s("svg", { viewBox: `0 0 ${w} ${row * entries.length}`, class: "chart", role: "img",
      "aria-label": entries.map(([k, v]) => `${k} ${v}`).join(", ") });
    entries.forEach(([k, v], i) => {
      svg.append(s("text", { x: 0, y: i * row + 13 }, document.createTextNode(k)),
        s("rect", { class: "bar", x: 60, y: i * row + 3, height: 12, width: Math.max(1, (w - 100) * v / max) }),
        s("text", { x: 64 + (w - 100) * v / max, y: i * row + 13 }, document.createTextNode(String(v))));
    });
    return svg;
  }
  function spark(values) {
    const w = 240, ht = 40;
    const last = values.length ? values[values.length - 1] : 0;
    const max = Math.max(...values, 1);
    const pts = values.map((v, i) => `${(i * w) / Math.max(1, values.length - 1)},${ht - 2 - ((ht - 4) * v) / max}`).join(" ");
    return s("svg", { viewBox: `0 0 ${w + 50} ${ht}`, class: "chart", role: "img", "aria-label": `now ${last.toFixed(2)} per second` },
      s("polyline", { class: "line", points: pts || `0,${ht - 2}` }),
      s("text", { x: w + 4, y: 14 }, document.createTextNode(last.toFixed(1))));
  }

  // Countdowns (rotation overlaps) tick every second wherever they are shown.
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-until]")) {
      const left = Math.round(Number(el.getAttribute("data-until")) - Date.now() / 1000);
      el.textContent = left > 0 ? `${left} s` : "ended";
    }
  }, 1000);

  document.addEventListener("DOMContentLoaded", async () => {
    $("#sign-in-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const err = await signIn($("#token").value.trim());
      $("#token").value = "";
      $("#sign-in-error").textContent = err || "";
      render();
      if (!err) $("#main").focus();
    });
    $("#sign-out").addEventListener("click", () => signOut(""));
    // The skip link moves focus without touching the hash (the hash is the page).
    $(".skip").addEventListener("click", (ev) => { ev.preventDefault(); $("#main").focus(); });
    window.addEventListener("hashchange", render);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) await signIn(saved);
    render();
  });
})();
