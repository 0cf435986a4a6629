// sage-opd view: renders the embedded rounds (see pipeline/view/data.py for the data's shape).
// An episode: {id, round, game, task, split, sample, won, error, turns}. A turn: t (index), o (observation),
// a (action), f (feedback), ok (format ok), ad (admissible), l (label), s (label source), r (rule flags),
// j (judge output), x (response token ids), c (teacher confidence per token, per mille), q (teacher
// probability of the sampled token, per mille), k (per token: [id, per mille, id, per mille, ...], best first).
// State lives in the URL hash, so a view (filters, episode, pinned token) can be linked and reloaded.
"use strict";
(function () {
  const started = performance.now();
  const data = JSON.parse(document.getElementById("data").textContent);
  const LABELS = ["skip", "weak", "strong"];
  const LOW = [215, 48, 39], MID = [254, 224, 139], HIGH = [26, 152, 80];
  const FILTERS = { round: "f-round", split: "f-split", task: "f-task", label: "f-label", won: "f-won" };
  const state = { round: "", split: "", task: "", label: "", won: "", episode: "", token: "" };
  const byKey = new Map(data.episodes.map((ep) => [key(ep), ep]));
  const tooltip = document.getElementById("tooltip");

  function key(ep) { return ep.round + "|" + ep.id; }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) node.append(child);
    return node;
  }

  function tokenText(id) {
    if (!data.vocab) return "#" + id + " ";
    const text = data.vocab[id];
    return text === undefined ? "<id " + id + ">" : text;
  }

  function visible(text) { return text.replace(/\n/g, "⏎\n").replace(/\t/g, "⇥"); }

  function pct(perMille) { return perMille ? (perMille / 10).toFixed(1) + "%" : "<0.1%"; }

  function shade(perMille) {
    const v = Math.min(Math.max(perMille / 1000, 0), 1);
    const [a, b, f] = v < 0.5 ? [LOW, MID, v * 2] : [MID, HIGH, v * 2 - 1];
    return "rgb(" + a.map((x, i) => Math.round(x + (b[i] - x) * f)).join(",") + ")";
  }

  function matches(ep) {
    return (!state.round || String(ep.round) === state.round) &&
      (!state.split || ep.split === state.split) &&
      (!state.task || ep.task === state.task) &&
      (!state.won || (state.won === "won") === ep.won) &&
      (!state.label || ep.turns.some((t) => t.l === state.label));
  }

  function shownTurns(ep) { return state.label ? ep.turns.filter((t) => t.l === state.label) : ep.turns; }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const name of Object.keys(state)) state[name] = params.get(name) || "";
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(state)) if (value) params.set(name, value);
    history.replaceState(null, "", "#" + params.toString());
  }

  function fillFilters() {
    const values = (pick) => [...new Set(data.episodes.map(pick))].sort();
    const options = {
      round: values((ep) => String(ep.round)).sort((a, b) => a - b),
      split: values((ep) => ep.split),
      task: values((ep) => ep.task),
      label: LABELS,
      won: ["won", "lost"],
    };
    for (const [name, id] of Object.entries(FILTERS)) {
      const select = document.getElementById(id);
      select.append(el("option", { value: "", textContent: "all" }));
      for (const value of options[name]) select.append(el("option", { value, textContent: value }));
      select.value = state[name];
      select.addEventListener("change", () => { state[name] = select.value; state.token = ""; render(); });
    }
  }

  function labelBar(ep) {
    const bar = el("div", { class: "bar" });
    for (const label of LABELS) {
      const share = ep.turns.filter((t) => t.l === label).length / Math.max(ep.turns.length, 1);
      bar.append(el("span", { style: "width:" + share * 100 + "%;background:var(--" + label + ")" }));
    }
    return bar;
  }

  function renderList(episodes) {
    const list = document.getElementById("episodes");
    list.replaceChildren();
    for (const ep of episodes) {
      const item = el("li", { "data-key": key(ep), class: key(ep) === state.episode ? "selected" : "" },
        el("div", {}, ep.id),
        el("div", { class: "meta" }, "round " + ep.round + " · " + ep.split + " · " + ep.task + " · ",
          el("span", { class: ep.won ? "won" : "lost" }, ep.won ? "won" : "lost"), " · " + ep.turns.length + " turns"),
        labelBar(ep));
      item.addEventListener("click", () => { state.episode = key(ep); state.token = ""; render(); });
      list.append(item);
    }
    if (!episodes.length) list.append(el("li", { class: "empty" }, "no episode matches these filters"));
  }

  function row(dl, name, ...content) { dl.append(el("dt", {}, name), el("dd", {}, ...content)); }

  function mark(ok, name) { return el("span", { class: ok ? "mark-ok" : "mark-bad" }, (ok ? " ✓ " : " ✗ ") + name); }

  function renderTurn(ep, turn) {
    const response = el("dd", { class: "response" });
    turn.x.forEach((id, i) => {
      response.append(el("span", {
        class: "tok", "data-i": String(i), style: "background:" + shade(turn.c[i]),
        textContent: visible(tokenText(id)),
      }));
    });
    const dl = el("dl");
    row(dl, "observation", turn.o);
    dl.append(el("dt", {}, "response"), response);
    row(dl, "action", turn.a, mark(turn.ok, "format"), mark(turn.ad, "admissible"));
    row(dl, "feedback", turn.f);
    if (turn.j) row(dl, "judge", turn.j);
    const flags = turn.r.length ? " · rule flags: " + turn.r.join(", ") : "";
    const item = el("li", { class: "turn", "data-label": turn.l, "data-turn": String(turn.t), "data-key": key(ep) },
      el("h3", {}, "turn " + turn.t + " ", el("span", { class: "badge " + turn.l }, turn.l),
        el("span", { class: "source" }, " (" + turn.s + ")"), el("span", { class: "flags" }, flags)),
      dl);
    return item;
  }

  function renderEpisode(ep) {
    const outcome = el("span", { class: ep.won ? "won" : "lost" }, ep.won ? "won" : "lost");
    const turns = shownTurns(ep);
    const count = turns.length === ep.turns.length ? ep.turns.length + " turns" :
      turns.length + " of " + ep.turns.length + " turns (" + state.label + ")";
    const section = el("section", { class: "episode", "data-key": key(ep) },
      el("h2", {}, "round " + ep.round + " · " + ep.id + " · " + ep.task + " · " + ep.split + " · ", outcome, " · " + count));
    if (ep.error) section.append(el("p", { class: "lost" }, "environment error: " + ep.error));
    const timeline = el("ol", { class: "timeline" });
    for (const turn of turns) timeline.append(renderTurn(ep, turn));
    section.append(timeline);
    return section;
  }

  // The same game in every round the page holds (same sample when there is one), oldest round first.
  function sideBySide(ep) {
    if (data.rounds.length < 2) return [ep];
    return data.rounds.map((number) => {
      const same = data.episodes.filter((other) => other.round === number && other.game === ep.game);
      return same.find((other) => other.sample === ep.sample) || same[0];
    }).filter(Boolean);
  }

  function renderMain(episodes) {
    const main = document.getElementById("main");
    main.replaceChildren();
    const chosen = byKey.get(state.episode);
    if (!chosen) { main.append(el("p", { class: "empty" }, "no episode selected")); return; }
    for (const ep of sideBySide(chosen)) main.append(renderEpisode(ep));
    const count = episodes.reduce((sum, ep) => sum + shownTurns(ep).length, 0);
    document.getElementById("stats").textContent = episodes.length + " of " + data.episodes.length +
      " episodes, " + count + " turns match";
  }

  function tooltipFor(span) {
    const ep = byKey.get(span.closest(".turn").dataset.key);
    const turn = ep.turns.find((t) => String(t.t) === span.closest(".turn").dataset.turn);
    const i = Number(span.dataset.i);
    const sampled = turn.x[i];
    const table = el("table");
    const alternatives = turn.k[i];
    for (let j = 0; j < alternatives.length; j += 2) {
      const id = alternatives[j];
      table.append(el("tr", { class: id === sampled ? "sampled" : "" },
        el("td", {}, String(j / 2 + 1)), el("td", {}, JSON.stringify(tokenText(id))),
        el("td", { class: "p" }, pct(alternatives[j + 1]))));
    }
    return [
      el("div", {}, "token ", el("b", {}, JSON.stringify(tokenText(sampled))), " (sampled)"),
      el("div", {}, "teacher confidence " + pct(turn.c[i]) + " · teacher p(token) " + pct(turn.q[i])),
      el("div", {}, "teacher top-" + alternatives.length / 2 + ":"),
      table,
    ];
  }

  function showTooltip(span) {
    tooltip.replaceChildren(...tooltipFor(span));
    tooltip.hidden = false;
    const box = span.getBoundingClientRect();
    tooltip.style.left = Math.min(box.left, window.innerWidth - tooltip.offsetWidth - 8) + "px";
    const below = box.bottom + 6;
    tooltip.style.top = (below + tooltip.offsetHeight < window.innerHeight ? below : box.top - tooltip.offsetHeight - 6) + "px";
  }

  function pinned() {
    if (!state.token) return null;
    const [turn, i] = state.token.split(":");
    return document.querySelector('.episode[data-key="' + CSS.escape(state.episode) + '"] .turn[data-turn="' +
      CSS.escape(turn) + '"] .tok[data-i="' + CSS.escape(i) + '"]');
  }

  function render() {
    const episodes = data.episodes.filter(matches);
    if (!episodes.some((ep) => key(ep) === state.episode)) state.episode = episodes.length ? key(episodes[0]) : "";
    renderList(episodes);
    renderMain(episodes);
    tooltip.hidden = true;
    const span = pinned();
    if (span) { span.classList.add("pinned"); showTooltip(span); }
    writeHash();
  }

  const main = document.getElementById("main");
  main.addEventListener("mouseover", (event) => {
    if (event.target.classList.contains("tok") && !state.token) showTooltip(event.target);
  });
  main.addEventListener("mouseout", (event) => {
    if (event.target.classList.contains("tok") && !state.token) tooltip.hidden = true;
  });
  main.addEventListener("click", (event) => {  // a click pins a token's tooltip (and puts it in the link)
    const span = event.target.closest(".tok");
    const here = span && span.closest(".episode").dataset.key === state.episode;
    state.token = here ? span.closest(".turn").dataset.turn + ":" + span.dataset.i : "";
    render();
  });

  document.getElementById("title").textContent = "sage-opd view · " + data.run + " · round" +
    (data.rounds.length > 1 ? "s " : " ") + data.rounds.join(", ");
  const legend = document.getElementById("legend");
  legend.append("teacher confidence");
  for (const v of [0, 250, 500, 750, 1000]) {
    legend.append(el("span", { class: "swatch", style: "background:" + shade(v) }, v / 10 + "%"));
  }
  document.getElementById("note").textContent = data.note;
  readHash();
  fillFilters();
  render();
  document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
})();
