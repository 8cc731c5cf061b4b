// The attribution dashboard: per problem, adapters x positions (gradient x activation), tokens as columns.
(function () {
  "use strict";
  const R = window.R, el = R.el;

  function problemView(index, key, holder) {
    R.load(key).then((p) => {
      const tokens = p.tokens.map(R.showToken);
      holder.replaceChildren(
        el("h2", {}, `problem ${p.id}`),
        el("p", { className: "question" }, p.question),
        R.stats([["gold answer", p.gold], ["target", `${index.target} of ${JSON.stringify(p.target_token)}`],
          ["target value", p.target_value], ["sum of attributions", p.total]]),
        el("h3", {}, `top ${p.rows.length} adapters (rows) x positions (columns); red raises the target, ` +
          "blue lowers it; hover for values"),
        el("div", { className: "scroll" }, R.matrix(p.matrix, p.rows, tokens, { compact: true })));
    });
  }

  function render(index) {
    const app = document.getElementById("app");
    const holder = el("div", {});
    const pick = el("select", { onchange: () => problemView(index, pick.value, holder) },
      index.problems.map((p) => el("option", { value: p.key }, `${p.id}: ${p.question.slice(0, 60)}`)));
    app.replaceChildren(
      el("header", {}, [el("h1", {}, index.title), el("p", { className: "muted" },
        `run ${index.run} \u00b7 target ${index.target} \u00b7 ${index.freeze ? "RMSNorm scales and attention " +
        "patterns frozen" : "plain gradient"} \u00b7 ${index.problems.length} problems`)]),
      el("section", {}, [el("h3", {}, "mean |attribution| per adapter (layer x projection)"),
        R.matrix(index.mean_abs, index.layers.map((l) => "L" + l), index.projections, { compact: true })]),
      el("section", {}, [el("h3", {}, "problem"), pick, holder]));
    if (index.problems.length) problemView(index, index.problems[0].key, holder);
  }

  render(R.get("index"));
})();
