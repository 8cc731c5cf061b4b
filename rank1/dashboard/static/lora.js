// The LoRA activation dashboard: an overview of every layer, a feature search over names and explanations,
// then one layer at a time (loaded on demand). Explanations, ratings and held-out scores come from
// data/explanations.js, which 2.2 (autointerp) refreshes after this dashboard was written.
(function () {
  "use strict";
  const R = window.R, el = R.el;
  const ORDER = ["gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"];
  const SHOWN = 8;
  const LISTED = 100; // search results shown at a time
  let expl = null; // the explanations payload once loaded

  // What 2.2 says of one feature: explanation or why there is none, rating, category, held-out scores.
  function explained(name) {
    if (expl === null) return { pending: true };
    if (!expl.available) return { why: expl.reason };
    return expl.features[name] || { why: expl.missing };
  }

  function scoreText(s) {
    return s.v === undefined ? s.why : R.fmt(s.v, 2) + (s.n ? ` (n=${s.n})` : "");
  }

  function explBox(name) {
    const e = explained(name);
    if (e.pending) return el("p", { className: "expl muted small" }, "loading explanations ...");
    if (e.explanation === undefined || e.explanation === null) {
      return el("p", { className: "expl muted small", "data-feature": name }, e.why);
    }
    const facts = [`rating: ${e.rating || "none"}`, `detection: ${scoreText(e.detection)}`,
      `fuzzing: ${scoreText(e.fuzzing)}`];
    if (e.category) facts.push(`category: ${e.category.replace(/_/g, " ")}`);
    return el("div", { className: "expl", "data-feature": name }, [el("p", { className: "explanation" }, e.explanation),
      el("p", { className: "muted small" }, facts.join(" \u00b7 "))]);
  }

  function searchText(f) {
    const e = explained(f.name);
    const pol = f.polarity > 0 ? "positive" : "negative";
    return [f.name, `layer ${f.layer}`, `L${f.layer}`, f.proj, f.proj.replace("_proj", ""), pol,
      e.explanation || "", e.rating || "", e.category || ""].join("\u0000").toLowerCase();
  }

  // Feature search: every word of the query must appear in the feature's name or its explanation.
  function search(index, go) {
    const input = el("input", { type: "search", id: "feature-search", placeholder:
      "search features: name (L3, q_proj, positive) or explanation text", oninput: () => draw() });
    const count = el("span", { id: "feature-count", className: "muted" });
    const status = el("p", { id: "expl-status", className: "muted small" });
    const table = el("div", { className: "listwrap" });
    function row(f) {
      const e = explained(f.name);
      const text = e.explanation || e.why || "";
      return el("tr", { "data-feature": f.name, onclick: () => go(f.layer, f.name) }, [
        el("td", { className: "mono" }, f.name), el("td", {}, e.rating || ""),
        el("td", {}, e.detection ? scoreText(e.detection) : ""), el("td", {}, e.fuzzing ? scoreText(e.fuzzing) : ""),
        el("td", { className: e.explanation ? "expl" : "expl muted" }, text)]);
    }
    function draw() {
      const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      const hits = index.features.filter((f) => { const t = searchText(f); return words.every((w) => t.includes(w)); });
      count.textContent = `${hits.length} of ${index.features.length} features` +
        (hits.length > LISTED ? ` (first ${LISTED} shown; refine the search)` : "");
      status.textContent = expl === null ? "loading explanations ..." : !expl.available ? expl.reason :
        `explanations from ${expl.source} (${expl.explainer} explainer, ${expl.scorer} scorer)`;
      table.replaceChildren(el("table", { className: "flist", id: "features" }, [
        el("tr", {}, ["feature", "rating", "detection", "fuzzing", "explanation"].map((h) => el("th", {}, h))),
        ...hits.slice(0, LISTED).map(row)]));
    }
    draw();
    return { node: el("details", { open: true, className: "overview", id: "search-panel" }, [
      el("summary", {}, "Features and explanations"), el("div", { className: "controls" }, [input, count]), status,
      table]), draw };
  }

  function header(index) {
    const info = `run ${index.run} \u00b7 ${index.store.n_tokens.toLocaleString()} tokens in ` +
      `${index.store.n_docs} documents \u00b7 ${index.n_adapters} adapters \u00b7 top ${index.k} per feature`;
    return el("header", {}, [el("h1", {}, index.title), el("p", { className: "muted" }, info)]);
  }

  function nav(index, current, go) {
    const pos = index.layers.indexOf(current);
    const buttons = index.layers.map((l) => el("button", {
      className: l === current ? "layer active" : "layer", onclick: () => go(l), title: `layer ${l}` }, String(l)));
    return el("nav", { id: "layers" }, [
      el("button", { onclick: () => pos > 0 && go(index.layers[pos - 1]), disabled: pos <= 0 }, "\u2190"),
      el("span", { className: "label" }, "layer"), ...buttons,
      el("button", { onclick: () => pos < index.layers.length - 1 && go(index.layers[pos + 1]),
        disabled: pos >= index.layers.length - 1 }, "\u2192")]);
  }

  function overview(index) {
    const ov = index.overview;
    const kinds = Object.keys(index.cross_layer);
    const holder = el("div", {});
    const pick = el("select", { onchange: () => draw(pick.value) }, kinds.map((k) => el("option", { value: k }, k)));
    function draw(kind) {
      holder.replaceChildren(R.matrix(index.cross_layer[kind], index.layers.map(String), index.layers.map(String),
        { compact: true, scale: 1 }));
    }
    if (kinds.length) draw(kinds[0]);
    return el("details", { open: true, className: "overview" }, [
      el("summary", {}, "All layers"),
      el("div", { className: "row" }, [
        el("section", {}, [el("h3", {}, "Activation std (layer x adapter)"),
          R.matrix(ov.std, index.layers.map((l) => "L" + l), ov.projections.map((p) => p.replace("_proj", "")),
            { compact: index.layers.length > 12 })]),
        el("section", {}, [el("h3", {}, "Norms of A and B by layer"),
          R.lines(index.layers, index.norms.A.map((s) => ({ name: s.name + " |A|", values: s.values }))),
          R.lines(index.layers, index.norms.B.map((s) => ({ name: s.name + " |B|", values: s.values })))]),
        el("section", {}, [el("h3", {}, "|cos| across layers"), pick, holder])]),
      el("p", { className: "note" }, index.sign_note)]);
  }

  function examples(title, side, page, polarity, scale) {
    const list = el("div", { className: "examples" });
    const items = side.examples;
    function render(n) {
      list.replaceChildren(...items.slice(0, n).map((ex) => {
        const strings = R.texts(ex.t, page.vocab, page.bytes);
        const raw = ex.a.map((v) => v * polarity);
        return el("div", { className: "example" }, [
          el("span", { className: "value", title: `document ${ex.d}, position ${ex.p}` }, R.fmt(ex.v * polarity, 3)),
          R.tokens(strings, raw, ex.c, scale)]);
      }));
      if (items.length > n) {
        list.appendChild(el("button", { className: "more", onclick: () => render(items.length) },
          `show all ${items.length}`));
      }
    }
    render(SHOWN);
    const sub = side.threshold === null ? "never on this side of zero" :
      `${side.n_active.toLocaleString()} tokens above ${R.fmt(side.threshold, 3)}`;
    return el("section", { className: "side " + (polarity > 0 ? "pos" : "neg"), "data-feature": side.name }, [
      el("h4", {}, [title, el("span", { className: "muted" }, " \u00b7 " + sub)]), explBox(side.name),
      items.length ? list : el("p", { className: "muted" }, "no token in this polarity")]);
  }

  function card(ad, page) {
    const s = ad.stats;
    const q = ad.quantiles;
    const pairs = [["min", s.min], ["max", s.max], ["mean", s.mean], ["std", s.std]];
    q.levels.forEach((lv, i) => { if ([0.01, 0.5, 0.99].includes(lv)) pairs.push(["p" + lv * 100, q.values[i]]); });
    let log = false;
    const histHolder = el("div", {}, R.histogram(ad.hist.edges, ad.hist.counts));
    const toggle = el("label", { className: "muted small" }, [el("input", { type: "checkbox", onchange: (e) => {
      log = e.target.checked;
      histHolder.replaceChildren(R.histogram(ad.hist.edges, ad.hist.counts, { log }));
    } }), " log counts"]);
    return el("article", { className: "card", "data-proj": ad.proj }, [
      el("h3", {}, ad.proj),
      el("div", { className: "summary" }, [R.stats(pairs), el("div", {}, [histHolder, toggle])]),
      examples("positive", ad.positive, page, 1, ad.scale),
      examples("negative", ad.negative, page, -1, ad.scale)]);
  }

  function layerView(index, data) {
    const cards = ORDER.map((p) => data.adapters.find((a) => a.proj === p)).filter(Boolean)
      .map((a) => card(a, data));
    const cos = [];
    for (const [title, m] of [["residual side", data.cos_residual], ["MLP hidden side", data.cos_hidden]]) {
      if (m && m.labels.length > 1) {
        cos.push(el("section", {}, [el("h3", {}, `cosine, ${title}`),
          R.matrix(m.matrix, m.labels, m.labels, { scale: 1 })]));
      }
    }
    return el("main", { id: "layer", "data-layer": data.layer }, [
      el("h2", {}, `Layer ${data.layer}`),
      el("div", { className: "row" }, cos),
      el("div", { className: "cards" }, cards)]);
  }

  function start() {
    const index = R.index();
    if (!index) return;
    const app = document.getElementById("app");
    const holder = el("div", {});
    const navHolder = el("div", {});
    let current = null;
    let shown = null; // the layer payload on the page
    const finder = search(index, (layer, name) => go(layer, name));
    app.replaceChildren(header(index), overview(index), finder.node, navHolder, holder);
    function go(layer, feature) {
      current = layer;
      navHolder.replaceChildren(nav(index, layer, go));
      holder.replaceChildren(el("p", { className: "muted" }, `loading layer ${layer} ...`));
      if (location.hash !== "#layer=" + layer) history.replaceState(null, "", "#layer=" + layer);
      R.load(index.pages[String(layer)]).then((data) => {
        if (current !== layer) return;
        shown = data;
        holder.replaceChildren(layerView(index, data));
        const target = feature && holder.querySelector(`section.side[data-feature="${CSS.escape(feature)}"]`);
        if (target) target.scrollIntoView({ block: "start" });
      }, (err) => holder.replaceChildren(el("p", { className: "error" }, String(err))));
    }
    R.load("explanations").then((payload) => { expl = payload; }, () => {
      expl = { available: false, reason: "data/explanations.js did not load; run 2.2, then 2.3 again, to add " +
        "explanations" };
    }).then(() => {
      finder.draw();
      if (shown && current === shown.layer) holder.replaceChildren(layerView(index, shown));
    });
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
      const pos = index.layers.indexOf(current);
      if (e.key === "ArrowRight" && pos < index.layers.length - 1) go(index.layers[pos + 1]);
      if (e.key === "ArrowLeft" && pos > 0) go(index.layers[pos - 1]);
    });
    const m = /layer=(\d+)/.exec(location.hash);
    const first = m && index.layers.includes(+m[1]) ? +m[1] : index.layers[0];
    go(first);
    window.__rank1_go = go;
  }

  start();
})();
