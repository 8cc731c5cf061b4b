"""Autointerp offline: the lexicon rules, the lexicon explainer and the offline scorer on hand-made features,
prompts and their parsers, the resumable driver, and stages 2.2 / 2.7 / 2.3 / 2.8 on the test profile."""

import json
import shutil

import numpy as np
import pytest

from helpers import hand_topk, outputs_under, run_script, synthetic_store, train_test_run
from rank1 import constants as K
from rank1.activations.interpretability import layer_bins
from rank1.artifacts import read_json
from rank1.autointerp import (
    AutointerpError,
    AutointerpOptions,
    EndpointError,
    LexiconCategoriser,
    LexiconExplainer,
    OfflineScorer,
    build_examples,
    run_autointerp,
    token_categories,
)
from rank1.autointerp.categories import PAPER_TOP_LEVEL_SCHEME
from rank1.autointerp.examples import Window, quiet_spans, scaled
from rank1.autointerp.explainers import Explanation
from rank1.autointerp.lexicon import CATEGORY_KEYS, LEXICON_TO_TOP_LEVEL, PAPER_TOP_LEVEL, lexical_category
from rank1.autointerp.prompts import AnswerError, explanation_messages, parse_answers, parse_category, parse_explanation
from rank1.autointerp.scorers import fuzzing_items, parse_predicate
from rank1.errors import OtherSettings
from rank1.topk import TopKResult, compute_topk

SCRIPTS = "2_lora_activation_interp"
CHAT = ["<|im_start|>", "system", "\n", "You", " are", " helpful", "<|im_end|>", "\n", "<|im_start|>", "user", "\n",
        "What", " is", " 4", " +", " 5", "?", " The", " baker", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n",
        "<|im_start|>", "think", "\n", "Wait", ",", " let", " me", " verify", "<|im_start|>", "answer", "\n", "Answer",
        ":", " 9", "<|im_end|>"]


# ---------------------------------------------------------------- lexicon


def test_token_categories_follow_the_chat_turns():
    got = dict(enumerate(token_categories(CHAT)))
    expected = ["format"] * 11 + ["problem", "problem", "numbers", "operators", "numbers", "punctuation", "problem",
                                  "problem"] + ["format"] * 8 + \
        ["verification", "punctuation", "procedure", "other", "verification", "format", "answer", "format", "answer",
         "punctuation", "numbers", "format"]
    assert [got[i] for i in range(len(CHAT))] == expected


def test_window_edges_take_the_turn_before_the_first_role():
    # starts inside the system prompt: its words are template text
    assert token_categories([" helpful", " AI", "<|im_end|>", "\n", "<|im_start|>", "user", "\n", "A", " baker"]) == \
        ["format", "format", "format", "format", "format", "format", "format", "problem", "problem"]
    # starts inside the user turn: " eggs" is a problem word there, "other" in the assistant's text
    assert token_categories([" eggs", "?", "<|im_end|>", "\n", "<|im_start|>", "assistant"])[0] == "problem"
    assert token_categories(["<|im_start|>", "think", "\n", " eggs"])[-1] == "other"
    assert token_categories([" eggs", " and"]) == ["other", "other"]  # no turn in sight


@pytest.mark.parametrize("token,category", [(" Wait", "verification"), ("Wait,", "verification"), (" ×", "operators"),
                                            (" =", "operators"), ("\\frac", "operators"), (" 474", "numbers"),
                                            ("undred", "numbers"), (" x", "numbers"), (" So", "answer"),
                                            (" borrow", "procedure"), (" many", "problem"), ("\n", "punctuation"),
                                            (" (", "punctuation"), ("<|endoftext|>", "format"), (" muff", "other")])
def test_lexical_categories(token, category):
    assert lexical_category(token) == category


def test_every_category_maps_to_a_paper_top_level_category():
    assert set(LEXICON_TO_TOP_LEVEL) == set(CATEGORY_KEYS)
    assert set(LEXICON_TO_TOP_LEVEL.values()) <= set(PAPER_TOP_LEVEL)
    assert set(PAPER_TOP_LEVEL_SCHEME.keys) == set(PAPER_TOP_LEVEL)


# ---------------------------------------------------------------- hand-made features


def _ex(tokens, peak, value=4.0, others=0.0, extra=None):
    """An example: ``tokens`` with ``value`` at index ``peak``, ``others`` elsewhere, ``extra`` {index: value}."""
    acts = [others] * len(tokens)
    acts[peak] = value
    for i, v in (extra or {}).items():
        acts[i] = v
    return (tokens, acts, peak)


PREFIX = [" So", " 3", " +", " 4"]


def _features():
    mono = {"top": [_ex([*PREFIX, " Wait", ",", " let"], 4) for _ in range(10)], "name": "L0_q_proj_positive"}
    broad = {"top": [_ex([" I", " need", f" {d}", ".", " So"], 2) for d in range(10)], "name": "L1_k_proj_positive",
             "layer": 1, "site_name": "k_proj"}
    poly = {"top": [_ex([" a", " =", " b"], 1) for _ in range(5)] + [_ex([" a", " the", " b"], 1) for _ in range(4)]
            + [_ex([" a", " 7", " b"], 1)],
            "name": "L2_v_proj_negative", "polarity": -1, "layer": 2, "site_name": "v_proj"}
    dense = {"top": [_ex([" 2", " +", " Wait", " the", "."], 2, extra={0: 3.0, 1: 3.0, 3: 3.0, 4: 3.0})
                     for _ in range(10)], "name": "L2_o_proj_positive", "layer": 2, "site_name": "o_proj"}
    empty = {"top": [], "name": "L2_q_proj_negative", "polarity": -1}
    return [mono, broad, poly, dense, empty]


def test_lexicon_explainer_rules_on_hand_made_features():
    res = hand_topk(_features())
    ex = [build_examples(res, f) for f in range(5)]
    e = [LexiconExplainer().explain(x) for x in ex[:4]]
    assert (e[0].classification, e[0].text) == (0, '"Wait" token (verification words)')
    assert e[0].predicate == {"tokens": ["Wait"], "categories": []} and e[0].lexicon_category == "verification"
    assert e[1].classification == 1 and e[1].text.startswith("numbers: ") and e[1].lexicon_category == "numbers"
    assert e[1].predicate == {"tokens": [], "categories": ["numbers"]}
    # 5 x "=", 4 x "the", 1 x "7": no token or category reaches 60%
    assert e[2].classification == 2 and e[2].predicate["categories"] == ["operators", "other"]
    assert e[2].text == 'mixed: arithmetic operators ("="), other words ("the")'
    # the peaks are all "Wait", but it fires as strongly around them on four other tokens: 10/50 < 60%
    assert e[3].classification == 2 and "10/50" in e[3].reasoning
    assert all(len(x.text.split()) <= 10 for x in e)
    assert ex[4].top == []


def test_a_token_in_two_categories():
    # "\n" closes a template line three times (format) and ends a text line twice (punctuation)
    nl_format = [_ex(["<|im_end|>", "\n", "<|im_start|>"], 1) for _ in range(3)]
    nl_text = [_ex([" 5", ".", "\n"], 2) for _ in range(2)]
    words = [_ex([" a", w, " b"], 1) for w in (" the", " the", " cat", " cat", " dog")]
    res = hand_topk([{"top": nl_text + nl_format + words}])
    e = LexiconExplainer().explain(build_examples(res, 0))
    # tokens: "\n" 5/10 (no 60%); categories: other 5, format 3, punctuation 2 (no 60%)
    assert e.classification == 2 and e.predicate["categories"] == ["other", "format"]
    assert e.text == 'mixed: other words ("the"), chat format tokens ("\\n")'


def test_lexicon_categoriser_and_top_level_mapping():
    res = hand_topk(_features())
    ex = build_examples(res, 0)
    e = LexiconExplainer().explain(ex)
    assert LexiconCategoriser().categorise(ex, e) == ("verification", None)
    assert LexiconCategoriser(PAPER_TOP_LEVEL_SCHEME).categorise(ex, e) == ("reasoning_flow_control", None)
    # an explanation from elsewhere (no lexicon category): the categoriser reads the examples itself
    assert LexiconCategoriser().categorise(ex, Explanation("anything", 1)) == ("verification", None)


def test_examples_cap_per_document_and_shuffle_deterministically():
    tops = [_ex([" a", f" {i}", " b"], 1, value=10 - i) + (i // 4,) for i in range(10)]  # docs 0,0,0,0,1,1,1,1,2,2
    res = hand_topk([{"top": tops}])
    capped = build_examples(res, 0, n_examples=5, per_doc_cap=2)
    assert sorted(w.tokens[w.center] for w in capped.top) == [" 0", " 1", " 4", " 5", " 8"]
    again = build_examples(res, 0, n_examples=5, per_doc_cap=2)
    assert [w.tokens for w in again.top] == [w.tokens for w in capped.top]
    assert [w.tokens[w.center] for w in capped.top] != [" 0", " 1", " 4", " 5", " 8"]  # shuffled (seeded)
    assert len(build_examples(res, 0, n_examples=3).top) == 3


def test_negative_feature_prompt_shows_the_negative_direction():
    res = hand_topk(_features())
    neg = explanation_messages(build_examples(res, 2))[1]["content"]
    pos = explanation_messages(build_examples(res, 0))[1]["content"]
    assert "NEGATIVE direction" in neg and "NEGATIVE" not in pos
    assert neg.count("Example ") == 10 and "<< =>>" in neg and '" =" 10' in neg
    assert scaled([2.0, -1.0, 1.0, 0.04], 2.0) == [10, 0, 5, 0]  # the other direction shows 0


def test_prompt_parsers():
    answer = 'Sure!\n```json\n{"explanation": "digits", "classification": "1", "reasoning": "r"}\n```'
    assert parse_explanation(answer) == ("digits", 1, "r")
    for bad in ("no json here", '{"explanation": "x"}', '{"explanation": "x", "classification": 3}',
                '{"explanation": "", "classification": 0}', '{"explanation": "x", "classification": true}'):
        with pytest.raises(AnswerError):
            parse_explanation(bad)
    assert parse_answers('{"answers": [1, 0, "1"]}', 3) == [1, 0, 1]
    with pytest.raises(AnswerError, match="list of 2"):
        parse_answers('{"answers": [1, 0, 1]}', 2)
    with pytest.raises(AnswerError, match="0 or 1"):
        parse_answers('{"answers": [1, 2]}', 2)
    assert parse_category('{"category": "Operators"}', ["numbers", "operators"]) == "operators"
    with pytest.raises(AnswerError):
        parse_category('{"category": "maths"}', ["numbers", "operators"])


def test_offline_scorer_hand_computed():
    win = lambda tokens, active: _ex(tokens, active, value=2.0)  # noqa: E731
    active = [win([" a", " Wait", " b"], 1), win([" c", " Wait", " d"], 1), win([" Wait", " e", " f"], 0),
              win([" g", " the", " h"], 1)]  # the last fires on "the", not on "Wait"
    quiet = [(t, [0.0] * 3, 1) for t in ([" a", " b", " c"], [" d", " e", " f"], [" g", " h", " i"],
                                         [" j", " Wait", " k"])]
    res = hand_topk([{"top": [win([" x", " Wait", " y"], 1)] * 3, "decile": active, "random": quiet,
                      "threshold": 1.0}])
    ex = build_examples(res, 0)
    assert len(ex.active) == 4 and len(ex.quiet) == 4
    scores = OfflineScorer().score(ex, Explanation('"Wait" token', 0, predicate={"tokens": ["Wait"]}))
    # detection: 3 of 4 activating windows show "Wait", 3 of 4 quiet ones do not -> (3/4 + 3/4) / 2
    assert scores["detection"]["balanced_accuracy"] == pytest.approx(0.75)
    # fuzzing: true marks match in 3 of 4 pairs, random marks never do -> (3/4 + 4/4) / 2
    assert scores["fuzzing"]["balanced_accuracy"] == pytest.approx(0.875) and scores["fuzzing"]["n"] == 8
    # the same explanation as free text: quoted strings are the predicate's tokens
    text = OfflineScorer().score(ex, Explanation('fires on "Wait"', 0))
    assert text["detection"] == scores["detection"]


def test_parse_predicate_and_fuzzing_marks():
    assert parse_predicate('"=" signs') == {"tokens": ["="], "categories": []}
    assert parse_predicate('"\\n" after a step') == {"tokens": ["\n"], "categories": []}
    assert parse_predicate("digits in arithmetic") == {"tokens": [], "categories": ["operators", "numbers"]}
    tokens = [" a", " b", " c", " d", " e"]
    res = hand_topk([{"top": [_ex(tokens, 2)], "decile": [_ex(tokens, 2, extra={1: 3.0}),
                                                          _ex(tokens, 2, extra={0: 3, 1: 3, 3: 3})],
                      "threshold": 1.0}], context=4)
    ex = build_examples(res, 0, window=2)
    items = fuzzing_items(ex, seed=0)
    assert [(m, y) for _, m, y in items][0] == ([1, 2], 1)  # the sparse example: its two active tokens
    wrong = items[1][1]
    assert len(wrong) == 2 and not set(wrong) & {1, 2}
    # the dense one (4 of 5 active): one active vs. one inactive token
    assert len(items[2][1]) == 1 and items[2][1][0] in (0, 1, 2, 3) and items[3][1] == [4]


def test_quiet_spans_come_from_quiet_stretches_of_held_out_windows():
    acts = [0.0] * 5 + [2.0] + [0.0] * 10
    w = Window([f" t{i}" for i in range(16)], acts, 5)
    (q,) = quiet_spans([w], thr=1.0, window=3, n=5)
    assert max(q.acts[q.span(3)]) <= 1.0 and abs(q.center - 5) > 3
    assert quiet_spans([Window(w.tokens, [2.0] * 16, 5)], 1.0, 3, 5) == []


# ---------------------------------------------------------------- the driver


class Failing:
    """The lexicon explainer, until the endpoint 'goes away' after ``n`` features."""

    def __init__(self, n):
        self.inner, self.n, self.calls = LexiconExplainer(), n, 0

    def describe(self):
        return self.inner.describe()

    def explain(self, ex):
        self.calls += 1
        if self.calls > self.n:
            raise EndpointError("cannot reach the LLM endpoint http://x/v1 after 3 attempts")
        return self.inner.explain(ex)


@pytest.fixture
def synthetic_topk(tmp_path):
    store, *_ = synthetic_store(tmp_path / "store", T=400, shards=2)
    res = compute_topk(store, k=8, context=6, n_per_decile=2, n_random=4)
    res.vocab = {i: (f" w{i}" if i % 3 else f" {i}") for i in range(50)}
    return res


def _run(res, out, explainer=None, **kw):
    return run_autointerp(res, out, explainer or LexiconExplainer(), OfflineScorer(), LexiconCategoriser(),
                          AutointerpOptions(n_examples=5, window=3, **kw), {"what": "test"})


def test_resume_after_a_failure_equals_an_uninterrupted_run(tmp_path, synthetic_topk):
    full = _run(synthetic_topk, tmp_path / "full")
    records = [json.loads(x) for x in (full / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert len(records) == 6 and [r["status"] for r in records].count("skipped") == 1  # site 2 is never negative
    assert read_json(full / K.AUTOINTERP_SUMMARY)["status"] == {"ok": 5, "skipped": 1}
    out = tmp_path / "resumed"
    with pytest.raises(AutointerpError, match="cannot reach.*2 of 6 features finished and kept"):
        _run(synthetic_topk, out, Failing(2))  # features 0 and 1 explained, then the endpoint is gone
    journal = out / K.AUTOINTERP_JOURNAL
    assert len(journal.read_text().splitlines()) == 1 + 2
    assert not (out / K.AUTOINTERP_RESULTS).exists() and not (out / K.CONFIG_JSON).exists()
    with journal.open("a") as fh:
        fh.write('{"feature": 3, "status": "o')  # a record torn by a kill
    again = Failing(10)
    _run(synthetic_topk, out, again)
    assert again.calls == 3  # only features 2, 3 and 4 (5 is skipped without the explainer)
    assert (out / K.AUTOINTERP_RESULTS).read_text() == (full / K.AUTOINTERP_RESULTS).read_text()
    assert not journal.exists() and read_json(out / K.CONFIG_JSON)["what"] == "test"


def test_finished_folder_is_kept_or_refused(tmp_path, synthetic_topk):
    out = _run(synthetic_topk, tmp_path / "a")
    before = (out / K.AUTOINTERP_RESULTS).stat().st_mtime_ns
    _run(synthetic_topk, out)  # same settings: skipped
    assert (out / K.AUTOINTERP_RESULTS).stat().st_mtime_ns == before
    with pytest.raises(OtherSettings, match=r"config.json was made with other settings or inputs "
                                            r"\(settings.options.max_features: 0 there, 3 now; settings.features: "
                                            r"\[0, 1, 2, 3, 4, 5\] there, \[3, 4, 5\] now\); pass --overwrite"):
        _run(synthetic_topk, out, max_features=3)
    assert (out / K.AUTOINTERP_RESULTS).stat().st_mtime_ns == before  # a refusal writes nothing
    with pytest.raises(AutointerpError, match="cannot reach"):
        _run(synthetic_topk, tmp_path / "b", Failing(1))
    with pytest.raises(AutointerpError, match="unfinished results made with other settings"):
        _run(synthetic_topk, tmp_path / "b", max_features=3)
    done = run_autointerp(synthetic_topk, out, LexiconExplainer(), OfflineScorer(), LexiconCategoriser(),
                          AutointerpOptions(n_examples=5, window=3, max_features=3), overwrite=True)
    assert len((done / K.AUTOINTERP_RESULTS).read_text().splitlines()) == 3


def test_empty_topk_is_refused(tmp_path, synthetic_topk):
    with pytest.raises(AutointerpError, match="holds no features"):
        _run(TopKResult({}, [], {}), tmp_path / "x")
    for f in synthetic_topk.features:
        f["n_top"] = 0
    with pytest.raises(AutointerpError, match="no feature .* has a top example"):
        _run(synthetic_topk, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="holds no top-k examples"):
        _run(tmp_path, tmp_path / "z")


def test_threads_give_the_same_records(tmp_path, synthetic_topk):
    one = _run(synthetic_topk, tmp_path / "one")
    four = _run(synthetic_topk, tmp_path / "four", concurrency=4)
    assert (one / K.AUTOINTERP_RESULTS).read_text() == (four / K.AUTOINTERP_RESULTS).read_text()


def test_layer_bins():
    assert layer_bins(30, 0) == [(0, 10), (10, 20), (20, 30)]
    assert layer_bins(64, 8)[-1] == (56, 64) and len(layer_bins(64, 8)) == 8
    assert layer_bins(64, 0) == [(0, 21), (21, 43), (43, 64)]
    assert layer_bins(2, 0) == [(0, 1), (1, 2)]


# ---------------------------------------------------------------- the stage scripts on the test profile


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """A 2-step test-profile run, its LoRA and MLP stores over 8 documents and their top-k examples."""
    from rank1.activations.config import ExtractConfig, TopKConfig
    from rank1.activations.stage import extract, precompute_topk
    from rank1.config import config_from_profile

    with outputs_under(tmp_path_factory.mktemp("root")) as root:
        run = train_test_run(n_train=8)
        out = {"run": str(run), "root": root}
        for kind in ("lora", "mlp"):
            store = extract(config_from_profile(ExtractConfig, "extract", "test", run=str(run),
                                                out=str(root / f"{kind}_store")), kind)
            out[kind] = str(precompute_topk(config_from_profile(TopKConfig, "topk", "test", run=str(run),
                                                                store=str(store), out=str(root / f"{kind}_topk")),
                                            kind))
    return out


def _stage(stage2, kind, out, **kw):
    from rank1.autointerp.stage import AutointerpConfig, run_stage
    from rank1.config import config_from_profile

    kw.setdefault("topk", stage2[kind])
    return run_stage(config_from_profile(AutointerpConfig, "autointerp", "test", run=stage2["run"], out=str(out),
                                         **kw), kind)


def test_stages_end_to_end_and_numbers_recomputed(stage2, tmp_path):
    from scipy.stats import chi2

    from rank1.activations.config import CompareConfig, InterpretabilityConfig
    from rank1.activations.stage import run_analyze_interpretability as interpretability
    from rank1.activations.stage import run_compare_lora_mlp as lora_vs_mlp
    from rank1.config import config_from_profile

    lora, mlp = _stage(stage2, "lora", tmp_path / "lora"), _stage(stage2, "mlp", tmp_path / "mlp")
    cfg = read_json(lora / K.CONFIG_JSON)
    assert cfg["kind"] == "lora" and cfg["n_layers"] == 2 and cfg["settings"]["explainer"]["kind"] == "lexicon"
    out = interpretability(config_from_profile(InterpretabilityConfig, "interpretability", "test", run=stage2["run"],
                                               autointerp=str(lora), out=str(tmp_path / "interp")))
    rep = read_json(out / K.INTERPRETABILITY_JSON)
    recs = [json.loads(x) for x in (lora / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    ok = [r for r in recs if r["status"] == "ok"]
    assert rep["classes"]["n"] == len(ok)
    mono = sum(r["classification"] == 0 for r in ok) / len(ok)
    assert rep["classes"]["shares"]["monosemantic"]["value"] == pytest.approx(mono)
    assert sorted(rep["by_projection"]) == sorted(K.PROJECTIONS) and len(rep["by_layer_bin"]) == 2
    assert (out / f"{K.INTERPRETABILITY_STEM}.png").is_file() and (out / f"{K.INTERPRETABILITY_STEM}.pdf").is_file()

    out = lora_vs_mlp(config_from_profile(CompareConfig, "lora_vs_mlp", "test", run=stage2["run"], lora=str(lora),
                                          mlp=str(mlp), out=str(tmp_path / "cmp")))
    comp = read_json(out / K.COMPARE_JSON)
    table = np.array(comp["table"]["counts"], dtype=float)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    assert comp["chi_square"]["statistic"] == pytest.approx(stat)
    assert comp["chi_square"]["p_value"] == pytest.approx(chi2.sf(stat, table.shape[1] - 1))
    for key, e in comp["enrichment"].items():
        if e["mlp_count"]:
            ratio = (e["lora_count"] / comp["classes"]["lora"]["n"]) / (e["mlp_count"] / comp["classes"]["mlp"]["n"])
            assert e["enrichment"]["value"] == pytest.approx(ratio), key
    assert comp["enrichment"]["operators"]["name"] == "Mathematical Operators"
    assert comp["enrichment"]["operators"]["paper"] == 8.5
    assert (out / f"{K.FIGURE2_STEM}.png").is_file() and (out / f"{K.FIGURE2_STEM}.pdf").is_file()


def test_sides_from_another_run_corpus_or_settings_are_refused(stage2, tmp_path):
    from rank1.activations.config import CompareConfig
    from rank1.activations.stage import run_compare_lora_mlp as lora_vs_mlp
    from rank1.config import config_from_profile
    from rank1.runs import RunError

    # a top-k folder made from other weights than the run: 2.7 refuses it
    other = tmp_path / "mlp_topk_other"
    shutil.copytree(stage2["mlp"], other)
    cfg = read_json(other / K.CONFIG_JSON)
    cfg["identity"] = {**cfg["identity"], "run": "b", "weights_sha256": "f" * 64}
    (other / K.CONFIG_JSON).write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="made from run 'b'"):
        _stage(stage2, "mlp", tmp_path / "x", topk=str(other))
    assert not (tmp_path / "x").exists()
    with pytest.raises(AutointerpError, match="holds top-k examples of 'mlp' features"):
        _stage(stage2, "lora", tmp_path / "x", topk=stage2["mlp"])

    lora, mlp = _stage(stage2, "lora", tmp_path / "lora"), _stage(stage2, "mlp", tmp_path / "mlp")

    def compare_with(edit, **kw):
        bad = tmp_path / "mlp_bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(mlp, bad)
        c = read_json(bad / K.CONFIG_JSON)
        edit(c)
        (bad / K.CONFIG_JSON).write_text(json.dumps(c))
        lora_vs_mlp(config_from_profile(CompareConfig, "lora_vs_mlp", "test", run=stage2["run"], lora=str(lora),
                                        mlp=str(bad), out=str(tmp_path / "cmp")))

    with pytest.raises(RunError, match="MLP side .* was made from run 'b'"):
        compare_with(lambda c: c.update(identity={**c["identity"], "run": "b", "weights_sha256": "0" * 64}))
    with pytest.raises(AutointerpError, match="different corpora"):
        compare_with(lambda c: c.update(n_tokens=c["n_tokens"] + 1))
    with pytest.raises(AutointerpError, match="different options settings"):
        compare_with(lambda c: c["settings"]["options"].update(n_examples=99))
    assert not (tmp_path / "cmp").exists()


def test_scripts_one_error_line(stage2, tmp_path):
    cases = [([f"{SCRIPTS}/2.8_compare_lora_mlp.py", "--lora", tmp_path / "none", "--mlp", tmp_path / "none"],
              "holds no finished autointerp results"),
             ([f"{SCRIPTS}/2.2_run_lora_autointerp.py", "--topk", stage2["lora"], "--explainer", "llm",
               "--llm_base_url", "", "--llm_model", ""], "needs a base URL and a model")]
    for args, message in cases:
        proc = run_script([*args, "--profile", "test", "--run", stage2["run"], "--out", tmp_path / "o"], check=False,
                          env={"OPENAI_BASE_URL": "", "RANK1_LLM_MODEL": ""})
        lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()
