"""Issue 21's CLI conventions, in-process (nothing starts: every case fails or ends before a sweep):
bare `raybench` prints help and exits 0; every flag has help; errors in plain words with "did you
mean"; empty names refused; `raybench methods METHOD` shows type, default, range and search space."""
import argparse

import pytest

from raybench.cli import build_parser, main


def test_bare_raybench_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: raybench") and "sweep" in out and "raybench ui" in out


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_flag_has_help_and_says_its_default():
    for name, p in _subparsers().items():
        for action in p._actions:
            assert action.help, (name, action.option_strings or action.dest)
        text = p.format_help()
        for action in p._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
                assert "default" in (p._get_formatter()._get_help_string(action)), (name, action.option_strings)
        assert "usage: raybench" in text
    assert "demo: imagenet" in _subparsers()["sweep"].format_help().replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("argv, says", [
    (["sweep", "demo", "--method", "patchcor"], "unknown method 'patchcor' (did you mean patchcore?)"),
    (["sweep", "demo", "--method", "patchcore", "--set", "corset_ratio=0.1"], "(did you mean coreset_ratio?)"),
    (["sweep", "demo", "--categories", "disc,,weave"], "an empty name"),
    (["register", "demo", "--categories", "disc,,weave", "--tracking-uri", "sqlite:///nowhere/x.db"],
     "an empty name"),
    (["methods", "cutpast"], "(did you mean cutpaste?)"),
])
def test_errors_in_plain_words_with_did_you_mean(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and "<class" not in err


def test_an_unknown_dataset_is_refused_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "demp"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'demp' (did you mean demo?)" in err and "mvtec" in err


def test_a_mistyped_value_says_the_type_in_words():
    from raybench.config import from_dict
    from raybench.errors import ConfigError
    from raybench.methods import get_method
    with pytest.raises(ConfigError) as err:
        from_dict(get_method("patchcore").config_cls, {"sigma": "wide"})
    assert "sigma: expected float, got 'wide' (str)" in str(err.value)


def test_methods_lists_types_defaults_ranges_and_the_search_space(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "patchcore" in out and "cutpaste" in out and len(out.splitlines()) < 30
    assert main(["methods", "patchcore"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (coreset,) = [line for line in lines if line.startswith("coreset_ratio ")]
    assert "float" in coreset and "in (0, 1]" in coreset and "tuned: 0.001..0.1 log" in coreset
    (size,) = [line for line in lines if line.startswith("image_size ")]
    assert "int" in size and "256" in size and size.rstrip().endswith("-")


def test_the_leaderboard_fits_100_columns_and_says_who_wins_by_how_much():
    from raybench.tracking import LeaderboardRow, format_leaderboard
    rows = [LeaderboardRow("demo", c, m, "", v, 0.9, t, 0.9, 0.8, 3, f"run-{c}-{m}", run_name=f"{c}-{m}-a-very-long-run-name",
                           budget="default", weights="imagenet", image_size="128", eval_resolution="128", n_test=50)
            for c, m, v, t in (("disc", "patchcore", 0.875, 0.85), ("disc", "cutpaste", 0.917, 0.88),
                               ("weave", "patchcore", 0.7, 0.72), ("weave", "cutpaste", 0.7, 0.69),
                               ("stripes", "siamese-unet", 0.8, 0.8))]
    rows[-1].variant = "synthetic"
    text = format_leaderboard(rows)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "disc: cutpaste wins over patchcore: VAL img 0.917 vs 0.875 (+0.042); TEST img 0.880 vs 0.850" in text
    assert "weave: patchcore ties with cutpaste on VAL img 0.700, a full tie;\n    TEST img 0.720 vs 0.690" in text
    assert "stripes: siamese-unet (synthetic) (the only method)" in text
    assert "a-very-long-run-name" not in text and "a-very-long-run-name" in format_leaderboard(rows, wide=True)
