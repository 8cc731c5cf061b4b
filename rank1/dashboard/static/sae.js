// The SAE feature dashboard: a searchable, sortable, filterable list of features; one feature at a time in
// detail (its page of data is loaded on demand). Dataset strings reach the page only through textContent.
(function () {
  "use strict";
  const R = window.R, el = R.el;
  const STEP = 200; // list rows rendered at a time
  const SHOWN = 8; // examples shown before "show all"
  const SORTS = {
    latent: ["latent", 1], density: ["density", -1], max: ["max activation", -1], mass: ["activation mass", -1],
    score: ["score", -1],
  };

  function header(index) {
    const s = index.summary || {};
    const parts = [`run ${index.run}`, `${index.n_tokens.toLocaleString()} tokens in ${index.n_docs} documents`,
      `${index.n_features} alive of ${index.d_sae} latents`];
    if (s.fvu !== undefined) parts.push(`held-out FVU ${R.fmt(s.fvu, 4)}, L0 ${R.fmt(s.l0, 1)}`);
    if (s.loss_gap_share !== undefined && s.loss_gap_share !== null) {
      parts.push(`loss-gap share ${R.fmt(s.loss_gap_share, 3)}`);
    }
    return el("header", {}, [el("h1", {}, index.title), el("p", { className: "muted" }, parts.join(" \u00b7 "))]);
  }

  function rows(index) {
    const c = index.features;
    return c.name.map((name, i) => ({
      i, name, latent: c.latent[i], density: c.density[i], max: c.max[i], mass: c.mass[i], score: c.score[i],
      category: c.category[i], subcategory: c.subcategory[i], explanation: c.explanation[i], top: c.top[i],
      why: c.why[i].map((w) => index.reasons[w]),
      text: [name, c.explanation[i], c.category[i] || "", c.subcategory[i] || "", ...c.top[i]].join("\u0000")
        .toLowerCase(),
    }));
  }

  function controls(index, state, redraw) {
    const search = el("input", { type: "search", id: "search", placeholder: "search name, explanation, category, " +
      "top tokens", value: state.query, oninput: (e) => { state.query = e.target.value; redraw(); } });
    const sort = el("select", { id: "sort", onchange: (e) => { state.sort = e.target.value; redraw(); } },
      Object.entries(SORTS).filter(([k]) => k !== "score" || index.has_scores)
        .map(([k, [label]]) => el("option", { value: k, selected: k === state.sort }, "sort: " + label)));
    const cats = ["", ...index.categories, "(uncategorised)"];
    const filter = el("select", { id: "category", onchange: (e) => { state.category = e.target.value; redraw(); } },
      cats.map((c) => el("option", { value: c }, c ? c.replace(/_/g, " ") : "all categories")));
    if (!index.categories.length) filter.disabled = true;
    return el("div", { className: "controls" }, [search, sort, filter, el("span", { id: "count", className: "muted" })]);
  }

  function selected(all, state) {
    const q = state.query.trim().toLowerCase();
    let out = all.filter((r) => (!q || r.text.includes(q)) &&
      (!state.category || (state.category === "(uncategorised)" ? !r.category : r.category === state.category)));
    const [, dir] = SORTS[state.sort];
    const key = state.sort;
    out = out.slice().sort((a, b) => {
      const x = a[key], y = b[key];
      if (x === null || x === undefined) return (y === null || y === undefined) ? a.i - b.i : 1;
      if (y === null || y === undefined) return -1;
      return (x - y) * dir || a.i - b.i;
    });
    return out;
  }

  const HEADS = [["feature", "the latent's name"], ["density", "share of tokens on which the latent fires"],
    ["max", "largest activation"], ["score", "held-out detection balanced accuracy of the explanation (3.3.0); " +
      "a blank cell says why on hover, the footnote counts the reasons"],
    ["category", "category from 3.3.1; a blank cell says why on hover"],
    ["explanation / top tokens", "explanation from 3.3.0; without one, the most common top-example tokens " +
      "(quoted) and why there is no explanation"]];

  // A value, or a muted dash whose tooltip (and data-why) says why the value is missing.
  function cell(text, why) {
    return text ? el("td", {}, text) : el("td", { className: "why", title: why, "data-why": why }, "\u2013");
  }

  // Under the list: per column that can be blank, how many cells are blank and why.
  function footnote(items) {
    const lines = [];
    [["score", 1], ["explanation", 0], ["category", 2]].forEach(([col, k]) => {
      const counts = {};
      items.forEach((r) => { if (r.why[k]) counts[r.why[k]] = (counts[r.why[k]] || 0) + 1; });
      Object.entries(counts).forEach(([why, n]) => lines.push(`${col}: ${n} of ${items.length} blank \u2013 ${why}`));
    });
    return el("div", { className: "footnote", id: "blank-reasons" }, lines.map((l) => el("div", {}, l)));
  }

  function listView(items, state, open) {
    const table = el("table", { className: "flist" }, [el("tr", {}, HEADS.map(([h, tip]) =>
      el("th", { title: tip }, h)))]);
    items.slice(0, state.shown).forEach((r) => {
      table.appendChild(el("tr", { className: r.i === state.current ? "active" : "", "data-feature": r.i,
        onclick: () => open(r.i) }, [
        el("td", { className: "mono" }, r.name), el("td", {}, R.fmt(r.density, 4)), el("td", {}, R.fmt(r.max, 3)),
        cell(r.score === null || r.score === undefined ? "" : R.fmt(r.score, 2), r.why[1]),
        cell(r.category ? r.category.replace(/_/g, " ") : "", r.why[2]),
        r.explanation ? el("td", { className: "expl" }, r.explanation) : el("td", { className: "expl why",
          title: r.why[0], "data-why": r.why[0] }, "top tokens: " + r.top.map((t) => JSON.stringify(t)).join(" "))]));
    });
    const holder = el("div", { className: "listwrap" }, [table, footnote(items)]);
    if (items.length > state.shown) {
      holder.appendChild(el("button", { className: "more", onclick: () => { state.shown += STEP;
        holder.replaceWith(listView(items, state, open)); } }, `show ${Math.min(STEP, items.length - state.shown)} more`));
    }
    return holder;
  }

  function examples(title, items, page, scale, label) {
    const list = el("div", { className: "examples" });
    function render(n) {
      list.replaceChildren(...items.slice(0, n).map((ex) => el("div", { className: "example" }, [
        el("span", { className: label ? "value wide" : "value", title: `document ${ex.d}, position ${ex.p}` },
          label ? label(ex) : R.fmt(ex.v, 3)),
        R.tokens(R.texts(ex.t, page.vocab, page.bytes), ex.a, ex.c, scale)])));
      if (items.length > n) {
        list.appendChild(el("button", { className: "more", onclick: () => render(items.length) },
          `show all ${items.length}`));
      }
    }
    render(SHOWN);
    return el("section", { className: "side pos" }, [el("h4", {}, title),
      items.length ? list : el("p", { className: "muted" }, "none")]);
  }

  function detail(index, feat, page) {
    const scale = Math.max(1e-12, feat.max);
    const facts = [["latent", String(feat.latent)], ["density", R.fmt(feat.density, 5)],
      ["tokens fired", feat.firing_count.toLocaleString()], ["max activation", feat.max],
      ["activation mass", feat.mass]];
    facts.push(["detection score", feat.score !== null && feat.score !== undefined ? feat.score : feat.why[1]]);
    facts.push(["category", feat.category ? feat.category + (feat.subcategory ? " / " + feat.subcategory : "") :
      feat.why[2]]);
    const edges = feat.decile_edges;
    const deciles = edges.length ? [["firing p10", edges[1]], ["firing p50", edges[5]], ["firing p90", edges[9]]] : [];
    const loadings = el("section", {}, [el("h3", {}, "Decoder direction (unit norm) over adapters"),
      R.matrix(feat.loadings, index.projections.map((p) => p.replace("_proj", "")), index.layers.map(String),
        { compact: index.layers.length > 12, scale: Math.max(1e-9, ...feat.loadings.flat().map((v) => Math.abs(v || 0))) }),
      el("p", { className: "muted small" }, "largest: " + feat.top_loadings.map((l) =>
        `L${l.layer} ${l.proj.replace("_proj", "")} ${l.value > 0 ? "+" : ""}${R.fmt(l.value, 2)}`).join(", "))]);
    return el("main", { id: "feature", "data-feature": feat.feature }, [
      el("h2", {}, feat.name),
      feat.explanation ? el("p", { className: "explanation" }, feat.explanation) :
        el("p", { className: "muted" }, feat.why[0]),
      el("div", { className: "summary" }, [R.stats([...facts, ...deciles]),
        el("div", {}, [el("h4", {}, "firing values"), R.histogram(feat.hist.edges, feat.hist.counts, { log: true })])]),
      loadings,
      examples(`top ${feat.top.length} examples`, feat.top, page, scale),
      examples("samples by decile of the firing values", feat.deciles, page, scale,
        (ex) => `d${ex.decile} ${R.fmt(ex.v, 3)}`)]);
  }

  function start() {
    const index = R.index();
    if (!index) return;
    const app = document.getElementById("app");
    const all = rows(index);
    const state = { query: "", sort: "latent", category: "", shown: STEP, current: null };
    const listHolder = el("div", { className: "flistpane" });
    const detailHolder = el("div", { className: "detailpane" }, el("p", { className: "muted" },
      "pick a feature from the list"));
    function redraw() {
      state.shown = Math.max(state.shown, STEP);
      const items = selected(all, state);
      const count = document.getElementById("count");
      if (count) count.textContent = `${items.length} of ${all.length} features`;
      listHolder.replaceChildren(listView(items, state, open));
    }
    function open(i) {
      state.current = i;
      if (location.hash !== "#feature=" + i) history.replaceState(null, "", "#feature=" + i);
      listHolder.querySelectorAll("tr.active").forEach((tr) => tr.classList.remove("active"));
      const row = listHolder.querySelector(`tr[data-feature="${i}"]`);
      if (row) row.classList.add("active");
      detailHolder.replaceChildren(el("p", { className: "muted" }, `loading ${index.features.name[i]} ...`));
      const key = "feat_" + String(Math.floor(i / index.page_size)).padStart(4, "0");
      R.load(key).then((page) => {
        if (state.current === i) detailHolder.replaceChildren(detail(index, page.features[String(i)], page));
      }, (err) => detailHolder.replaceChildren(el("p", { className: "error" }, String(err))));
    }
    app.replaceChildren(header(index), controls(index, state, redraw),
      el("div", { className: "sae-layout" }, [listHolder, detailHolder]));
    redraw();
    const m = /feature=(\d+)/.exec(location.hash);
    open(m && +m[1] < all.length ? +m[1] : 0);
    window.__rank1_open = open;
  }

  start();
})();
