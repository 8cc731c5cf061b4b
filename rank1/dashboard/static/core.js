// Shared renderer of the rank1 dashboards. Dataset strings only ever reach the page through
// textContent and DOM properties (never innerHTML), so any token is displayed as text.
(function () {
  "use strict";
  const registry = {};
  const waiting = {};
  window.__rank1_register = function (key, payload) {
    registry[key] = payload;
    (waiting[key] || []).forEach((resolve) => resolve(payload));
    delete waiting[key];
  };

  const SVG = "http://www.w3.org/2000/svg";
  const R = {};

  // Data files are scripts (file:// pages cannot fetch()): add a <script> tag once, resolve on register.
  R.load = function (key) {
    if (key in registry) return Promise.resolve(registry[key]);
    return new Promise((resolve, reject) => {
      const first = !(key in waiting);
      (waiting[key] = waiting[key] || []).push(resolve);
      if (!first) return;
      const s = document.createElement("script");
      s.src = "data/" + encodeURIComponent(key) + ".js";
      s.charset = "utf-8";
      s.onerror = () => reject(new Error("cannot load data/" + key + ".js"));
      document.head.appendChild(s);
    });
  };
  R.get = (key) => registry[key];

  // The dashboard's index (data/index.js) with the page titled after it; null, said on the page, if it did not load.
  R.index = function () {
    const index = registry.index;
    if (!index) {
      document.getElementById("app").replaceChildren(R.el("p", {}, "data/index.js did not load"));
      return null;
    }
    document.title = index.title;
    return index;
  };

  // el("div", {className: "x", title: "..."}, [children or strings]): properties, never HTML.
  R.el = function (tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "style") Object.assign(node.style, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k.startsWith("data-")) node.setAttribute(k, String(v));
      else node[k] = v;
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  };
  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of [].concat(children || [])) if (c) node.appendChild(c);
    return node;
  }
  function svgTitle(text) {
    const t = document.createElementNS(SVG, "title");
    t.textContent = text;
    return t;
  }

  R.fmt = function (x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "n/a";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits);
  };

  // red for positive, blue for negative; alpha = |v| / scale
  R.color = function (v, scale) {
    const a = Math.min(1, Math.abs(v) / (scale || 1));
    return v >= 0 ? `rgba(220, 38, 38, ${a.toFixed(3)})` : `rgba(37, 99, 235, ${a.toFixed(3)})`;
  };

  // Newlines and tabs made visible (a token that is only a newline still has a width); spaces stay spaces.
  R.showToken = (s) => s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");

  // Display strings of a window of token ids. `vocab` maps id -> text; `bytes` (optional) maps id -> hex of
  // the raw bytes of a token that holds only part of a UTF-8 character: those are joined by a streaming
  // decoder, so the character appears whole on the token that completes it (the tokens before it are empty).
  R.texts = function (ids, vocab, bytes) {
    bytes = bytes || {};
    const dec = new TextDecoder("utf-8");
    let pending = false;
    return ids.map((id) => {
      const hex = bytes[id];
      if (hex !== undefined) {
        const buf = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
        pending = true;
        return dec.decode(buf, { stream: true });
      }
      const flushed = pending ? dec.decode() : "";
      pending = false;
      return flushed + (id in vocab ? vocab[id] : "\u2047");
    });
  };

  // Colour scale key: a gradient from -scale (blue) through 0 to +scale (red), or 0..scale when unsigned,
  // with its numbers; `label` says what the colour measures.
  R.legend = function (scale, label, unsigned) {
    const stops = unsigned ? [0, 0.5, 1] : [-1, -0.5, 0, 0.5, 1];
    const bar = R.el("span", { className: "legend-bar", style: { background: unsigned ?
      `linear-gradient(to right, ${R.color(0, 1)}, ${R.color(1, 1)})` :
      `linear-gradient(to right, ${R.color(-1, 1)}, ${R.color(0, 1)}, ${R.color(1, 1)})` } });
    const ticks = R.el("span", { className: "legend-ticks" }, stops.map((t) => R.el("span", {}, R.fmt(t * scale, 3))));
    return R.el("div", { className: "colour-legend" }, [R.el("span", { className: "legend-label" }, label),
      R.el("span", { className: "legend-scale" }, [bar, ticks])]);
  };

  // One example: tokens (strings), values (raw, signed), index of the target token, colour scale.
  R.tokens = function (strings, values, center, scale) {
    const row = R.el("div", { className: "tokens" });
    strings.forEach((s, i) => {
      row.appendChild(R.el("span", {
        className: "tok" + (i === center ? " target" : ""),
        title: JSON.stringify(s) + "  " + R.fmt(values[i], 4),
        style: { background: R.color(values[i], scale) },
      }, R.showToken(s)));
    });
    return row;
  };

  // Histogram of counts over bins [edges[i], edges[i+1]); log scale option; bars red/blue by sign.
  R.histogram = function (edges, counts, opts) {
    opts = opts || {};
    const W = opts.width || 280, H = opts.height || 90, n = counts.length;
    const tf = opts.log ? (c) => Math.log10(1 + c) : (c) => c;
    const peak = Math.max(1e-9, ...counts.map(tf));
    const bars = counts.map((c, i) => {
      const h = (tf(c) / peak) * (H - 14);
      const mid = (edges[i] + edges[i + 1]) / 2;
      return svg("rect", { x: (i * W) / n, y: H - 12 - h, width: Math.max(1, W / n - 0.5), height: h,
        fill: mid >= 0 ? "#dc2626" : "#2563eb" },
      [svgTitle(`[${R.fmt(edges[i])}, ${R.fmt(edges[i + 1])}): ${c}`)]);
    });
    const lo = svg("text", { x: 0, y: H - 1, "font-size": 9 });
    lo.textContent = R.fmt(edges[0], 2);
    const hi = svg("text", { x: W, y: H - 1, "font-size": 9, "text-anchor": "end" });
    hi.textContent = R.fmt(edges[n], 2);
    const zero = edges[0] < 0 && edges[n] > 0 ?
      svg("line", { x1: (-edges[0] / (edges[n] - edges[0])) * W, x2: (-edges[0] / (edges[n] - edges[0])) * W,
        y1: 0, y2: H - 12, stroke: "#555", "stroke-dasharray": "2,2" }) : null;
    return svg("svg", { width: W, height: H, class: "hist", role: "img" }, [...bars, zero, lo, hi]);
  };

  // Matrix as a table of coloured cells; symmetric colour scale in [-max, max] (or [0, max] if unsigned).
  R.matrix = function (values, rowLabels, colLabels, opts) {
    opts = opts || {};
    const scale = opts.scale || Math.max(1e-9, ...values.flat().map((v) => Math.abs(v || 0)));
    const head = R.el("tr", {}, [R.el("th", {}, ""), ...colLabels.map((c) => R.el("th", { title: c },
      R.el("span", {}, c)))]);
    const rows = values.map((row, i) => R.el("tr", {}, [R.el("th", {}, rowLabels[i]), ...row.map((v, j) =>
      R.el("td", { title: `${rowLabels[i]} x ${colLabels[j]}: ${R.fmt(v)}`,
        style: { background: v === null ? "#eee" : R.color(v, scale) } }, opts.compact ? "" : R.fmt(v, 2)))]));
    const cls = "matrix" + (opts.compact ? " compact" : "") + (opts.className ? " " + opts.className : "");
    return R.el("table", { className: cls }, [head, ...rows]);
  };

  // Line chart of several series over x; legend with colours.
  R.lines = function (xs, series, opts) {
    opts = opts || {};
    const W = opts.width || 520, H = opts.height || 160, P = 28;
    const all = series.flatMap((s) => s.values.filter((v) => v !== null));
    const ymax = Math.max(1e-9, ...all), ymin = Math.min(0, ...all);
    const X = (i) => P + (i / Math.max(1, xs.length - 1)) * (W - P - 6);
    const Y = (v) => H - 16 - ((v - ymin) / (ymax - ymin)) * (H - 26);
    const palette = ["#dc2626", "#ea580c", "#ca8a04", "#16a34a", "#0891b2", "#2563eb", "#7c3aed", "#db2777",
      "#525252", "#0d9488"];
    const paths = series.map((s, k) => svg("polyline", {
      points: s.values.map((v, i) => (v === null ? "" : `${X(i)},${Y(v)}`)).join(" "),
      fill: "none", stroke: palette[k % palette.length], "stroke-width": 1.5 }, [svgTitle(s.name)]));
    const axis = [svg("line", { x1: P, x2: W, y1: H - 16, y2: H - 16, stroke: "#999" })];
    for (const [v, y] of [[ymax, Y(ymax)], [ymin, Y(ymin)]]) {
      const t = svg("text", { x: P - 3, y: y + 3, "font-size": 9, "text-anchor": "end" });
      t.textContent = R.fmt(v, 2);
      axis.push(t);
    }
    xs.forEach((x, i) => {
      if (xs.length > 16 && i % Math.ceil(xs.length / 16)) return;
      const t = svg("text", { x: X(i), y: H - 3, "font-size": 9, "text-anchor": "middle" });
      t.textContent = String(x);
      axis.push(t);
    });
    const legend = R.el("div", { className: "legend" }, series.map((s, k) =>
      R.el("span", {}, [R.el("i", { style: { background: palette[k % palette.length] } }), s.name])));
    return R.el("div", { className: "chart" }, [svg("svg", { width: W, height: H }, [...axis, ...paths]), legend]);
  };

  R.stats = function (pairs) {
    return R.el("table", { className: "stats" }, pairs.map(([k, v]) =>
      R.el("tr", {}, [R.el("th", {}, k), R.el("td", {}, typeof v === "number" ? R.fmt(v, 4) : String(v))])));
  };

  window.R = R;
})();
