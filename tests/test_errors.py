"""The error boundary of every entry point: bad input and failed checks end in one ``error:`` line, exit 2."""

import pytest

from rank1.generate import ParityError
from rank1.logs import run_main
from rank1.lora import AdapterCheckError


@pytest.mark.parametrize("error", [AdapterCheckError("adapter in /r/a is incomplete: layer 1 gate_proj lora_B is 0"),
                                   ParityError("vllm: first-token log-probs differ from the PEFT model on prompt 0"),
                                   ValueError("--k must be >= 1"), FileNotFoundError("/x/manifest.json")])
def test_a_failed_check_ends_in_one_error_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)

    def main(cfg):
        raise error

    with pytest.raises(SystemExit) as exit_:
        run_main(main, None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {error}"]


def test_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("RANK1_DEBUG", "1")

    def main(cfg):
        raise AdapterCheckError("incomplete")

    with pytest.raises(AdapterCheckError, match="incomplete"):
        run_main(main, None)


def test_a_bug_is_not_turned_into_an_error_line(monkeypatch):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)

    def main(cfg):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_main(main, None)
