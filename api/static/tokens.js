// The token page: lists, creates and revokes the logged-in user's API tokens through
// /api/v1/tokens (authorised by the browser's login cookie).
// The page is served at <base>/account/tokens, the API at <base>.
const base = window.location.pathname.replace(/\/account\/tokens\/?$/, "");
document.getElementById("openai-base").textContent = window.location.origin + base + "/openai";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text || "—";
  return td;
}

function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString() : "";
}

function say(text) {
  document.getElementById("status").textContent = text;
}

async function call(method, path, body) {
  const response = await fetch(base + path, {
    method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    say("You are not logged in: log in to the chat first.");
    throw new Error("not logged in");
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    say(problem.detail || `The request failed (HTTP ${response.status}).`);
    throw new Error(problem.detail || response.statusText);
  }
  return response.status === 204 ? null : response.json();
}

async function refresh() {
  const list = await call("GET", "/tokens");
  const body = document.getElementById("tokens");
  body.replaceChildren();
  if (!list.data.length) {
    const row = document.createElement("tr");
    const td = cell("No tokens yet.");
    td.colSpan = 5;
    row.append(td);
    body.append(row);
  }
  for (const token of list.data) {
    const row = document.createElement("tr");
    row.append(cell(token.name), cell(when(token.created_at)), cell(when(token.last_used_at)), cell(when(token.expires_at)));
    const actions = document.createElement("td");
    const revoke = document.createElement("button");
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", async () => {
      if (!confirm(`Revoke the token "${token.name}"? Programs using it stop working at once.`)) return;
      await call("DELETE", `/tokens/${encodeURIComponent(token.id)}`);
      say(`Revoked "${token.name}".`);
      await refresh();
    });
    actions.append(revoke);
    row.append(actions);
    body.append(row);
  }
}

document.getElementById("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = document.getElementById("name").value.trim();
  const days = document.getElementById("expires").value;
  const created = await call("POST", "/tokens", { name, expires_in_days: days ? Number(days) : null });
  document.getElementById("secret").textContent = created.token;
  document.getElementById("created").hidden = false;
  document.getElementById("name").value = "";
  say("");
  await refresh();
});

refresh().catch(() => {});
