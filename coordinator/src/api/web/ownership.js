// Bucket ownership: create a challenge (the page names the challenge file), validate it with
// the file's text, delete.
"use strict";

function objectOf(destination, filename) {
  const [where] = (destination || "").split("?");
  return `${where.replace(/\/+$/, "")}/${filename}`;
}

async function refreshOwnerships(gen) {
  try {
    const list = await call("GET", `${pcaps()}/ownership`);
    if (gen !== undefined && gen !== generation) return;
    const body = $("ownerships-list");
    update(body, list, () => {
      body.replaceChildren(...list.map((o) => el("tr", { "data-id": o.id },
        el("td", { class: "mono", text: o.destination_conf }), statusCell(o.status),
        el("td", {}, el("code", { class: "challenge-file", text: o.filename }),
          el("div", { class: "muted", text: `in ${objectOf(o.destination_conf, "")}` })),
        td(utc(o.submitted)), td(utc(o.validated)),
        el("td", {},
          o.status === "success" ? null : el("button", {
            type: "button", class: "secondary", "data-key": `validate-${o.id}`,
            "aria-label": `Validate ${o.destination_conf}`, text: "Validate…",
            onclick: () => prepareValidate(o),
          }), " ",
          el("button", {
            type: "button", class: "danger", "data-key": `delete-${o.id}`,
            "aria-label": `Delete the ownership of ${o.destination_conf} (${o.filename})`, text: "Delete",
            onclick: () => deleteOwnership(o),
          })))));
      if (!list.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No bucket yet." })));
    });
    if (gen !== undefined) poll(refreshOwnerships, 5000);
  } catch (e) { trouble(e, "ownership"); }
}

function prepareValidate(o) {
  $("validate-destination_conf").value = o.destination_conf;
  $("challenge-note").textContent =
    `Read the text of ${objectOf(o.destination_conf, o.filename)} (challenge file ${o.filename}) and paste it below.`;
  $("validate-ownership_challenge").focus();
}

async function deleteOwnership(o) {
  try {
    await call("DELETE", `${pcaps()}/ownership/${o.id}`);
    say(`Deleted the ownership of ${o.destination_conf} (${o.filename}).`);
    await refreshOwnerships();
    $("ownership-heading").focus();
  } catch (e) { trouble(e, "delete"); }
}

onSubmit($("ownership-create-form"), async () => {
  const form = $("ownership-create-form");
  clearErrors(form);
  try {
    const o = await call("POST", `${pcaps()}/ownership`, formBody(form));
    say(`Challenge file ${o.filename} written into ${objectOf(o.destination_conf, "")}.`);
    await refreshOwnerships();
    prepareValidate(o);
  } catch (e) {
    if (e.status === 401) trouble(e, "ownership"); else showErrors(form, e);
  }
});

onSubmit($("ownership-validate-form"), async () => {
  const form = $("ownership-validate-form");
  clearErrors(form);
  try {
    const o = await call("POST", `${pcaps()}/ownership/validate`, formBody(form));
    say(`${o.destination_conf} is validated: full captures can be delivered there.`);
    $("validate-ownership_challenge").value = "";
    $("challenge-note").textContent = "";
    await refreshOwnerships();
    refreshDestinations();
  } catch (e) {
    if (e.status === 401) trouble(e, "ownership"); else showErrors(form, e);
    refreshOwnerships();
  }
});
