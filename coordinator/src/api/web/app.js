// The page's entry (served last): views chosen by the URL fragment (#/captures,
// #/captures/<id>, #/agents, #/ownership), polling for the view shown, signing in and out.
"use strict";

// ---------------------------------------------------------------- views and polling

let generation = 0;
let timer = null;
function poll(fn, ms) {
  clearTimeout(timer);
  const mine = generation;
  timer = setTimeout(() => { if (mine === generation) fn(mine); }, ms);
}

function show(view, title) {
  for (const s of document.querySelectorAll("[data-view-section]")) s.hidden = s.dataset.viewSection !== view;
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    const current = a.dataset.view === view || (view === "capture" && a.dataset.view === "captures");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  $("nav").hidden = !signedIn();
  $("whoami").hidden = !signedIn();
  $("whoami-account").textContent = session.account;
  document.title = `${title} · edgecap`;
}

let navigated = false; // the user moved: put the focus on the new view's heading
function route() {
  generation++;
  clearTimeout(timer);
  if (!signedIn()) {
    show("signin", "Sign in");
    if (navigated) $("signin-heading").focus();
    return;
  }
  const hash = location.hash;
  const capture = /^#\/captures\/([0-9a-f]{32})$/.exec(hash);
  if (capture) {
    show("capture", `Capture ${capture[1].slice(0, 8)}`);
    openCapture(capture[1], generation);
  } else if (hash === "#/agents") {
    show("agents", "Agents");
    refreshAgents(generation);
  } else if (hash === "#/ownership") {
    show("ownership", "Bucket ownership");
    refreshOwnerships(generation);
  } else {
    show("captures", "Captures");
    refreshCaptures(generation);
  }
  if (navigated) document.querySelector("section:not([hidden]) h2")?.focus();
}

function go(hash) {
  navigated = true;
  if (location.hash === hash) route(); else location.hash = hash;
}

// A refused token or account ends the session; anything else is said.
function trouble(e, where) {
  if (e.status === 401 || (e.errors && e.errors.some((x) => x.code === 1104))) {
    signOut();
    showErrors($("signin-form"), e, { 10000: "token", 1104: "account_id" });
    return;
  }
  say(`${where}: ${e.message}`, true);
}

function signOut() {
  sessionStorage.removeItem("edgecap.account");
  sessionStorage.removeItem("edgecap.token");
  session.account = "";
  session.token = "";
  forgetPreview();
  $("dry-run").hidden = true; // another account's answer
  say("");
  go("#/signin");
}

// ---------------------------------------------------------------- sign in

onSubmit($("signin-form"), async () => {
  const form = $("signin-form");
  clearErrors(form);
  const account = $("signin-account").value.trim(), token = $("signin-token").value.trim();
  const missing = { errors: [] };
  if (!account) missing.errors.push({ message: "account_id: required" });
  if (!token) missing.errors.push({ message: "token: required" });
  if (missing.errors.length) { showErrors(form, missing); return; }
  session.account = account;
  session.token = token;
  try {
    await call("GET", pcaps()); // proves the token is this account's
  } catch (e) {
    session.account = session.token = "";
    showErrors(form, e, { 10000: "token", 1104: "account_id" });
    return;
  }
  sessionStorage.setItem("edgecap.account", account);
  sessionStorage.setItem("edgecap.token", token);
  $("signin-token").value = "";
  say(`Signed in to account ${account}.`);
  refreshDestinations();
  go(/^#\/(captures|agents|ownership)/.test(location.hash) ? location.hash : "#/captures");
});
$("sign-out").addEventListener("click", signOut);

// ---------------------------------------------------------------- start

document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});
window.addEventListener("hashchange", () => { navigated = true; route(); });
if (signedIn()) refreshDestinations();
route();
