// Feature pages: one index of every adapter feature (adapter x polarity) and SAE latent, sortable by any column and
// searchable by name or explanation, and one page per feature (#f=<name>) in three sections: what it reads, what
// it writes, what it does. A page's data file (one per adapter, one per 64 latents) loads when the page opens.
(function () {
  "use strict";
  const R = window.R, el = R.el;
  const PER_PAGE = 100;
  const COLUMNS = [
    ["name", "feature"], ["kind", "kind"], ["density", "density"], ["max", "max"], ["explanation", "explanation"],
    ["detection", "detection"], ["fuzzing", "fuzzing"], ["random_detection", "random dir. detection"],
    ["kl", "ablation KL"], ["kl_rank", "KL rank"], ["onset", "steering onset"], ["attr_share", "attribution share"]];
  const NUMERIC = new Set(["density", "max", "detection", "fuzzing", "random_detection", "kl", "kl_rank", "onset",
    "attr_share"]);

  const cell = (v, key) => (v === null || v === undefined || v === "" ? "" :
    NUMERIC.has(key) ? (key === "kl_rank" ? String(v) : R.fmt(v, 3)) : String(v));

  function indexView(index, state) {
    const rows = index.rows;
    const hay = rows.map((r) => [r.name, r.kind, r.proj || "", r.polarity || "", r.explanation, r.loads_on || ""]
      .join("\u0000").toLowerCase());
    const input = el("input", { type: "search", id: "search", value: state.query, placeholder:
      "search: name (L3, o_proj, negative, latent_0012) or explanation text", oninput: () => { state.page = 0; draw(); } });
    const count = el("span", { id: "count", className: "muted" });
    const table = el("div", { className: "listwrap" });
    const pager = el("div", { className: "controls" });
    function sorted(hits) {
      const k = state.sort, dir = state.desc ? -1 : 1;
      return hits.sort((a, b) => {
        const x = rows[a][k], y = rows[b][k];
        const xe = x === null || x === undefined || x === "", ye = y === null || y === undefined || y === "";
        if (xe || ye) return xe - ye; // blanks last either way
        return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * dir;
      });
    }
    function draw() {
      state.query = input.value;
      const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      const hits = sorted(rows.map((_, i) => i).filter((i) => words.every((w) => hay[i].includes(w))));
      const pages = Math.max(1, Math.ceil(hits.length / PER_PAGE));
      state.page = Math.min(state.page, pages - 1);
      const shown = hits.slice(state.page * PER_PAGE, (state.page + 1) * PER_PAGE);
      count.textContent = `${hits.length} of ${rows.length} features`;
      const head = el("tr", {}, COLUMNS.map(([k, label]) => el("th", {
        className: "sortable" + (state.sort === k ? (state.desc ? " desc" : " asc") : ""), "data-col": k,
        title: "sort by " + label, onclick: () => {
          state.desc = state.sort === k ? !state.desc : NUMERIC.has(k);
          state.sort = k;
          draw();
        } }, label)));
      table.replaceChildren(el("table", { className: "flist", id: "index" }, [head, ...shown.map((i) => {
        const r = rows[i];
        return el("tr", { "data-feature": r.name, onclick: () => { location.hash = "f=" + encodeURIComponent(r.name); } },
          COLUMNS.map(([k]) => el("td", { className: k === "explanation" ? "expl" : k === "name" ? "mono" : "",
            "data-col": k }, cell(r[k], k))));
      })]));
      pager.replaceChildren(
        el("button", { id: "prev", disabled: state.page === 0, onclick: () => { state.page--; draw(); } }, "\u2190"),
        el("span", { className: "muted" }, ` page ${state.page + 1} of ${pages} `),
        el("button", { id: "next", disabled: state.page >= pages - 1, onclick: () => { state.page++; draw(); } },
          "\u2192"));
    }
    draw();
    const info = `run ${index.run} \u00b7 ${index.n_adapters} adapters x 2 polarities \u00b7 ${index.n_latents} SAE ` +
      `latents \u00b7 ${index.n_tokens.toLocaleString()} tokens read`;
    return el("main", { id: "index-view" }, [el("header", {}, [el("h1", {}, index.title),
      el("p", { className: "muted" }, info)]), el("div", { className: "controls" }, [input, count]), table, pager,
    sources(index)]);
  }

  function sources(index) {
    return el("details", { className: "overview" }, [el("summary", {}, "Artifacts these pages were built from"),
      el("ul", {}, Object.entries(index.sources).map(([k, v]) => el("li", {}, [el("b", {}, k + ": "),
        el("span", { className: "mono" }, v)])))]);
  }

  function examples(list, page, sign, scale) {
    if (!list.length) return el("p", { className: "muted" }, "no example: it never fires on this side");
    return el("div", { className: "examples" }, list.map((ex) => el("div", { className: "example" }, [
      el("span", { className: "value" }, (ex.decile ? `d${ex.decile} ` : "") + R.fmt(ex.v * sign, 3)),
      R.tokens(R.texts(ex.t, page.vocab, page.bytes), ex.a.map((v) => (v === null ? 0 : v * sign)), ex.c, scale)])));
  }

  function scoreText(s) {
    if (!s) return "n/a";
    return s.v === null || s.v === undefined ? (s.why || "n/a") : R.fmt(s.v, 3) + (s.n ? ` (n=${s.n})` : "");
  }

  function explained(e, what) {
    if (e.why) return el("p", { className: "muted", "data-field": what }, e.why);
    const facts = [["rating", e.rating || "none"], ["detection", scoreText(e.detection)],
      ["fuzzing", scoreText(e.fuzzing)]];
    if (e.score !== undefined) facts.push(["score", R.fmt(e.score, 3)]);
    if (e.density !== undefined) facts.push(["density", R.fmt(e.density, 4)]);
    return el("div", { className: "expl", "data-field": what }, [el("p", { className: "explanation" }, e.explanation),
      R.stats(facts)]);
  }

  function fact(label, value, field, note) {
    return el("tr", {}, [el("th", {}, label), el("td", { "data-field": field }, value),
      el("td", { className: "muted small" }, note || "")]);
  }

  function link(name, text) {
    return el("a", { href: "#f=" + encodeURIComponent(name) }, text || name);
  }

  function ci(x) {
    return x && x.lo !== undefined && x.lo !== null ? ` [${R.fmt(x.lo, 3)}, ${R.fmt(x.hi, 3)}]` : "";
  }

  function adapterPage(row, data) {
    const side = data.polarities[row.polarity];
    const sign = row.polarity === "positive" ? 1 : -1;
    const scale = Math.max(Math.abs(data.stats.min), Math.abs(data.stats.max), 1e-12);
    const other = row.polarity === "positive" ? "negative" : "positive";
    const reads = el("section", { id: "reads" }, [el("h2", {}, "Reads"),
      el("table", { className: "stats" }, [
        fact("density", R.fmt(side.density, 4), "density", `${side.n_active.toLocaleString()} tokens past ` +
          `${R.fmt(side.threshold, 3)}`),
        fact("scalar range", `${R.fmt(data.stats.min, 3)} .. ${R.fmt(data.stats.max, 3)}`, "range",
          `mean ${R.fmt(data.stats.mean, 3)}, std ${R.fmt(data.stats.std, 3)}`)]),
      R.histogram(data.stats.hist.edges, data.stats.hist.counts, { log: true, width: 360 }),
      el("h3", {}, "Explanation"), explained(side.explained, "explanation"),
      el("h3", {}, "Random direction at the same site (control, for scale)"), explained(side.control, "control"),
      el("h3", {}, "Top contexts"), examples(side.top, data, sign, scale),
      el("h3", {}, "One context per decile"), examples(side.deciles, data, sign, scale),
      el("p", {}, ["The other polarity: ", link(side.name.replace(row.polarity, other))])]);
    const w = data.writes;
    const writes = el("section", { id: "writes" }, [el("h2", {}, "Writes"),
      el("p", { "data-field": "space" }, "B lives in " + w.space + "."),
      el("table", { className: "stats" }, [fact("|A|", R.fmt(w.a_norm, 4), "a_norm"), fact("|B|", R.fmt(w.b_norm, 4),
        "b_norm")])]);
    if (w.lens) {
      if (w.lens.why) writes.appendChild(el("p", { className: "muted" }, w.lens.why));
      else {
        const l = w.lens[row.polarity];
        const list = (items, field) => el("ol", { "data-field": field }, items.map(([t, v]) =>
          el("li", {}, [el("span", { className: "tok" }, R.showToken(t)), " " + R.fmt(v, 3)])));
        writes.append(el("p", { className: "note" }, l.note), el("div", { className: "row" }, [
          el("section", {}, [el("h4", {}, "promotes"), list(l.promotes, "promotes")]),
          el("section", {}, [el("h4", {}, "suppresses"), list(l.suppresses, "suppresses")])]));
        const uc = (w.unembed_cos || {})[row.polarity] || [];
        if (uc.length) {
          writes.append(el("h4", {}, "cos(B, unembedding of the tokens it fires on)"),
            R.stats(uc.map(([t, v]) => [R.showToken(t), v])));
        }
      }
    }
    const ss = w.same_space;
    writes.append(el("h4", {}, `cos(B, the layer's other vectors in B's space, dim ${ss.dim})`),
      ss.labels.length ? R.stats(ss.labels.map((l, i) => [l, ss.values[i]])) :
        el("p", { className: "muted" }, "no other vector of this layer lives in B's space"),
      el("p", { className: "muted small" }, `chance level of |cos| between random directions in R^${ss.dim}: ` +
        R.fmt(ss.chance, 3)));
    const d = data.does;
    const st = d.steering;
    const onset = (o, c) => (o === null || o === undefined ? "no onset inside the sweep" : R.fmt(o, 3)) + ci(c);
    const does = el("section", { id: "does" }, [el("h2", {}, "Does"), el("table", { className: "stats" }, [
      d.ablation.why ? fact("ablation KL", d.ablation.why, "kl") :
        fact("ablation KL", R.fmt(d.ablation.kl, 4) + ci(d.ablation), "kl", `rank ${d.ablation.rank} of ` +
          `${d.ablation.of} adapters (1 = largest); nats/token, zeroing this adapter`),
      st.why ? fact("steering onset", st.why, "onset") :
        fact("steering onset", onset(st.kl_onset, st.kl_onset_ci), "onset", "natural units: multiples of the " +
          `scalar's std (${R.fmt(st.std, 3)}) added to it; ` + (st.has_random ? "random direction at the same " +
          "norm: " + onset(st.random_kl_onset, st.random_kl_onset_ci) : "no random-direction control in 4.0's sweep")),
      d.attribution.why ? fact("attribution share", d.attribution.why, "attr_share") :
        fact("attribution share", R.fmt(d.attribution.share, 4), "attr_share", `rank ${d.attribution.rank} of ` +
          `${d.attribution.of}; share of the summed mean |attribution|`)]),
    el("h4", {}, "SAE latents that load on this adapter most (signed component of the unit decoder direction)"),
    d.sae_latents.why ? el("p", { className: "muted" }, d.sae_latents.why) :
      el("ol", { "data-field": "sae_latents" }, d.sae_latents.map((x) => el("li", {}, [link(x.name),
        " " + R.fmt(x.value, 3)])))]);
    return [reads, writes, does];
  }

  function latentPage(row, data) {
    const lat = data.latents[row.name];
    const scale = Math.max(lat.max || 0, 1e-12);
    const reads = el("section", { id: "reads" }, [el("h2", {}, "Reads"), el("table", { className: "stats" }, [
      fact("density", R.fmt(lat.density, 4), "density"), fact("max", R.fmt(lat.max, 4), "max"),
      fact("activation mass", R.fmt(lat.mass, 4), "mass")]),
    el("h3", {}, "Explanation"), explained(lat.explained, "explanation"),
    el("h3", {}, "Top contexts"), examples(lat.top, data, 1, scale),
    el("h3", {}, "One context per decile"), examples(lat.deciles, data, 1, scale)]);
    const writes = el("section", { id: "writes" }, [el("h2", {}, "Writes"), el("p", {}, "The decoder direction over " +
      "the adapters (unit norm, signed): what the SAE reconstructs when this latent fires."),
    el("ol", { "data-field": "loadings" }, lat.loadings.map((x) => el("li", {}, [
      link(`L${x.layer}_${x.proj}_${x.value >= 0 ? "positive" : "negative"}`, `L${x.layer} ${x.proj}`),
      " " + R.fmt(x.value, 3)])))]);
    const does = el("section", { id: "does" }, [el("h2", {}, "Does"), el("p", { className: "muted" },
      "No intervention on single latents is run; the SAE's share of the LoRA's loss gain as a whole is in " +
      "sae_metrics.json. Follow the loadings to the adapters' causal numbers.")]);
    return [reads, writes, does];
  }

  function featureView(index, name, holder) {
    const row = index.rows.find((r) => r.name === name);
    if (!row) return holder.replaceChildren(el("p", { className: "error" }, "no feature " + name), back());
    holder.replaceChildren(el("p", { className: "muted" }, "loading " + name + " ..."));
    R.load(row.key).then((data) => {
      if (decodeURIComponent(location.hash.slice(3)) !== name) return;
      const where = row.kind === "adapter" ? `layer ${row.layer} \u00b7 ${row.proj} \u00b7 ${row.polarity}` :
        `SAE latent ${data.latents[name].latent}`;
      const sections = row.kind === "adapter" ? adapterPage(row, data) : latentPage(row, data);
      holder.replaceChildren(el("main", { id: "feature", "data-feature": name }, [back(),
        el("h1", {}, name), el("p", { className: "muted" }, where), ...sections]));
    }, (err) => holder.replaceChildren(el("p", { className: "error" }, String(err)), back()));
  }

  function back() {
    return el("p", {}, el("a", { href: "#", id: "back" }, "\u2190 all features"));
  }

  function start() {
    const index = R.index();
    if (!index) return;
    const app = document.getElementById("app");
    const state = { sort: "kl", desc: true, page: 0, query: "" };
    let list = null;
    function route() {
      const m = /^#f=(.+)$/.exec(location.hash);
      if (m) featureView(index, decodeURIComponent(m[1]), app);
      else {
        list = list || indexView(index, state);
        app.replaceChildren(list);
      }
    }
    window.addEventListener("hashchange", route);
    route();
    window.__rank1_ready = performance.now();
  }

  start();
})();
