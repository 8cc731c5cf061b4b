// The attribution dashboard: per problem, adapters x positions (gradient x activation), tokens as columns.
// The matrix scrolls sideways inside its own box (row labels stay in view), cells are at least 16 px and a
// colour key gives the scale's numbers.
(function () {
  "use strict";
  const R = window.R, el = R.el;

  const absMax = (m) => Math.max(1e-12, ...m.flat().map((v) => Math.abs(v || 0)));

  function problemView(index, key, holder) {
    R.load(key).then((p) => {
      const tokens = p.tokens.map(R.showToken);
      const scale = absMax(p.matrix);
      holder.replaceChildren(
        el("h2", {}, `problem ${p.id}`),
        el("p", { className: "question" }, p.question),
        R.stats([["gold answer", p.gold], ["target", `${index.target} of ${JSON.stringify(p.target_token)}`],
          ["target value", p.target_value], ["sum of attributions", p.total]]),
        el("h3", {}, `top ${p.rows.length} adapters (rows) x ${tokens.length} positions (columns); red raises the ` +
          "target, blue lowers it; hover a cell for its value"),
        R.legend(scale, "attribution per cell"),
        el("div", { className: "scroll", id: "attr-scroll" },
          R.matrix(p.matrix, p.rows, tokens, { compact: true, scale, className: "attr" })));
    }, (err) => holder.replaceChildren(el("p", { className: "error" }, String(err))));
  }

  function render(index) {
    const app = document.getElementById("app");
    const holder = el("div", { id: "problem" });
    const pick = el("select", { onchange: () => problemView(index, pick.value, holder) },
      index.problems.map((p) => el("option", { value: p.key }, `${p.id}: ${p.question.slice(0, 60)}`)));
    const meanScale = absMax(index.mean_abs);
    app.replaceChildren(
      el("header", {}, [el("h1", {}, index.title), el("p", { className: "muted" },
        `run ${index.run} \u00b7 target ${index.target} \u00b7 ${index.freeze ? "RMSNorm scales and attention " +
        "patterns frozen" : "plain gradient"} \u00b7 ${index.problems.length} problems`)]),
      el("section", {}, [el("h3", {}, "mean |attribution| per adapter (layer x projection)"),
        R.legend(meanScale, "mean |attribution|", true),
        el("div", { className: "scroll" }, R.matrix(index.mean_abs, index.layers.map((l) => "L" + l),
          index.projections, { compact: true, scale: meanScale, className: "attr" }))]),
      el("section", {}, [el("h3", {}, "problem"), pick, holder]));
    if (index.problems.length) problemView(index, index.problems[0].key, holder);
  }

  const index = R.index();
  if (index) render(index);
})();
