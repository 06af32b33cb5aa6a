// The recsys page: every list comes from the JSON API of the same server (see /docs).
"use strict";
const $ = (sel) => document.querySelector(sel);
let catalog = null;

function showError(message) {
  const el = $("#error");
  el.textContent = message || "";
  el.hidden = !message;
}

async function api(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(`${res.status}: ${data.detail}`);
  return data;
}

function cell(row, content, cls) {
  const td = row.insertCell();
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "-";
  if (cls) td.className = cls;
  return td;
}

function genres(list) {
  const span = document.createElement("span");
  for (const g of list) {
    const tag = document.createElement("span");
    tag.className = "genre"; tag.textContent = g; span.appendChild(tag);
  }
  return span;
}

function link(text, onClick) {
  const a = document.createElement("a");
  a.textContent = text; a.href = "#"; a.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
  return a;
}

function fill(table, items, columns) {
  const body = $(table).tBodies[0];
  body.innerHTML = "";
  for (const item of items) {
    const row = body.insertRow();
    for (const col of columns) col(row, item);
  }
}

const rank = (row, it) => cell(row, String(it.rank), "num");
const title = (row, it) => cell(row, link(it.title, () => { switchTab("movie"); showMovie(it.movie_id); }));
const genreCol = (row, it) => cell(row, genres(it.genres));
const rating = (row, it) => cell(row, it.predicted_rating.toFixed(2), "num rating");
const similarity = (row, it) => cell(row, it.similarity.toFixed(3), "num");
const userCols = [rank,
  (row, it) => cell(row, link(String(it.user_id), () => { switchTab("user"); showUser(it.user_id); })),
  (row, it) => cell(row, it.gender), (row, it) => cell(row, it.age, "num"), (row, it) => cell(row, it.occupation),
  rating];

async function showUser(userId) {
  showError("");
  $("#user-id").value = userId;
  const k = Number($("#user-k").value) || 10;
  try {
    const [user, recs] = await Promise.all([api(`/api/users/${userId}?limit=100`),
                                            api(`/api/users/${userId}/recommendations?k=${k}`)]);
    $("#user-profile").textContent = `user ${user.user_id}: ${user.gender ?? "-"}, ${user.age ?? "-"} years, ` +
      `${user.occupation ?? "-"}; ${user.rated_count} movies rated in training`;
    $("#user-rated-count").textContent = `(${Math.min(user.rated.length, user.rated_count)} of ${user.rated_count}, highest predicted first)`;
    fill("#user-rated", user.rated, [title, genreCol, rating]);
    fill("#user-recs", recs.items, [rank, title, genreCol, rating]);
  } catch (err) { showError(err.message); }
}

async function showMovie(movieId) {
  showError("");
  $("#movie-id").value = movieId;
  const k = Number($("#movie-k").value) || 10;
  try {
    const [movie, similar, fans] = await Promise.all([api(`/api/movies/${movieId}`),
      api(`/api/movies/${movieId}/similar?k=${k}`), api(`/api/movies/${movieId}/fans?k=${k}`)]);
    $("#movie-info").textContent = `movie ${movie.movie_id}: ${movie.title} (${movie.genres.join(", ")})`;
    fill("#movie-similar", similar.items, [rank, title, genreCol, similarity]);
    fill("#movie-fans", fans.items, userCols);
  } catch (err) { showError(err.message); }
}

function switchTab(name) {
  for (const b of document.querySelectorAll("button.tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== `panel-${name}`;
}

async function init() {
  for (const b of document.querySelectorAll("button.tab")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  try {
    catalog = await api("/api/catalog");
  } catch (err) { showError(err.message); $("#status").textContent = "no index loaded"; return; }
  $("#status").textContent = `${catalog.users.toLocaleString()} users, ${catalog.movies.toLocaleString()} movies` +
    (catalog.cold_start ? "" : " (cold start unavailable: no model)");
  if (catalog.rates === false) {  // a model that does not predict ratings (BPR-MF): its score, unclipped
    for (const th of document.querySelectorAll("th")) {
      if (th.textContent === "predicted rating") { th.textContent = "score"; th.title = "the model's score (not a rating)"; }
    }
  }
  for (const [sel, values] of [["#nu-gender", catalog.genders], ["#nu-occupation", catalog.occupations]]) {
    for (const v of values) { const o = document.createElement("option"); o.value = o.textContent = v; $(sel).appendChild(o); }
  }
  for (const g of catalog.genres) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = g; box.name = "genre";
    label.appendChild(box); label.appendChild(document.createTextNode(" " + g));
    $("#nm-genres").appendChild(label);
  }
  $("#user-form").addEventListener("submit", (e) => { e.preventDefault(); showUser(Number($("#user-id").value)); });
  $("#user-random").addEventListener("click", async () => {
    const page = await api(`/api/users?offset=${Math.floor(Math.random() * catalog.users)}&limit=1`);
    showUser(page.user_ids[0]);
  });
  $("#movie-q").addEventListener("input", async () => {
    const q = $("#movie-q").value;
    $("#movie-id").value = "";
    if (q.length < 2) return;
    const found = await api(`/api/movies?q=${encodeURIComponent(q)}&limit=15`).catch(() => ({ movies: [] }));
    const list = $("#movie-options");
    list.innerHTML = "";
    for (const m of found.movies) { const o = document.createElement("option"); o.value = m.title; o.dataset.id = m.movie_id; list.appendChild(o); }
  });
  $("#movie-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const q = $("#movie-q").value.trim();
    if (q && !$("#movie-id").value) {
      const found = await api(`/api/movies?q=${encodeURIComponent(q)}&limit=1`).catch((err) => { showError(err.message); return null; });
      if (!found) return;
      if (!found.movies.length) { showError(`no movie title contains "${q}"`); return; }
      $("#movie-q").value = "";
      showMovie(found.movies[0].movie_id);
    } else {
      showMovie(Number($("#movie-id").value));
    }
  });
  $("#new-user-form").addEventListener("submit", async (e) => {
    e.preventDefault(); showError("");
    const body = { gender: $("#nu-gender").value || null, age: $("#nu-age").value ? Number($("#nu-age").value) : null,
                   occupation: $("#nu-occupation").value || null, k: Number($("#nu-k").value) || 10 };
    try { fill("#nu-recs", (await api("/api/new-user/recommendations", body)).items, [rank, title, genreCol, rating]); }
    catch (err) { showError(err.message); }
  });
  $("#new-movie-form").addEventListener("submit", async (e) => {
    e.preventDefault(); showError("");
    const body = { title: $("#nm-title").value, year: $("#nm-year").value ? Number($("#nm-year").value) : null,
                   genres: [...document.querySelectorAll("#nm-genres input:checked")].map((b) => b.value),
                   k: Number($("#nm-k").value) || 10 };
    try {
      const [similar, fans] = await Promise.all([api("/api/new-movie/similar", body), api("/api/new-movie/fans", body)]);
      fill("#nm-similar", similar.items, [rank, title, genreCol, similarity]);
      fill("#nm-fans", fans.items, userCols);
    } catch (err) { showError(err.message); }
  });
  const first = new URLSearchParams(location.search).get("user");
  if (first) showUser(Number(first));
}

init();
