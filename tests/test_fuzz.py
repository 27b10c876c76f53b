"""Fuzzed input: whatever a user types or writes into a config file, `probe` either
accepts it or prints one line and exits 2 (never a traceback, never a silent surprise).

The training commands are fuzzed up to the point where training would start (`train` is
replaced by a stub that records the config it was given); the analysis commands run for
real on the tiny run, so their checks must come before their work.
"""

import json
import math
import sys
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TINY, run_cli, tiny_config
from initlens.analyses.cli import FIELDS
from initlens.models import RunConfig
from initlens.models.errors import UserError

# The same examples on every run (CI must not flake); raise max_examples to search wider.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text a user might type for a value: junk, edge numbers, lists, empty strings.
EDGES = [
    "",
    " ",
    "-1",
    "0",
    "1",
    "-0",
    "nan",
    "inf",
    "-inf",
    "1e30",
    "1e-300",
    "1.5",
    "abc",
    "none",
    "true",
    "21",
    "1,2,3",
    "1,",
    ",",
    ";",
    "11,13;13",
    "cuda:abc",
    "１",
    "0x10",
]
OPTION_TEXT = st.one_of(
    st.sampled_from(EDGES),
    st.text(max_size=6),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
# JSON a user might write into a config file for a field.
JSON_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


class Reached(Exception):
    """Raised by the training stub: the input was accepted."""


@pytest.fixture
def no_training(monkeypatch):
    """Replace training by a stub that checks the config it is given, then stops."""
    seen = []

    def stub(cfg, out, **kwargs):
        assert isinstance(cfg, RunConfig)
        cfg.validate()  # what the CLI accepted is valid
        seen.append(cfg)
        raise Reached

    # `initlens.models.train` is also the name of the function the package exports
    monkeypatch.setattr(sys.modules["initlens.models.train"], "train", stub)
    return seen


def accepted_or_one_line(capsys, *args) -> bool:
    """True if `probe ARGS` reached the work; else it must be one line with exit 2."""
    try:
        code, out, err = run_cli(capsys, *args)
    except Reached:
        capsys.readouterr()
        return True
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, err)
    assert "Traceback" not in out + err
    return False


@FUZZ
@given(name=st.sampled_from(sorted(FIELDS)), raw=OPTION_TEXT)
def test_train_options(tmp_path, capsys, no_training, name, raw):
    flag = f"--{name.replace('_', '-')}"
    accepted_or_one_line(capsys, "train", "--out", tmp_path / "run", *TINY, flag, raw)
    assert not (tmp_path / "run").exists()


def _set(data: dict, section: str, name: str, value) -> dict:
    data = json.loads(json.dumps(data))
    data[section][name] = value
    return data


SECTION_FIELDS = [
    (section, name)
    for section, obj in tiny_config().to_dict().items()
    for name in obj
    if name != "name"
]


@pytest.mark.unchecked  # a value of the wrong type must reach our own field checks
@FUZZ
@given(where=st.sampled_from(SECTION_FIELDS), value=JSON_VALUE)
def test_config_file_values(tmp_path, capsys, no_training, where, value):
    data = _set(tiny_config().to_dict(), *where, value)
    try:
        RunConfig.from_dict(data).validate()
        valid = True
    except UserError:
        valid = False
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data, allow_nan=True))
    reached = accepted_or_one_line(capsys, "train", "--config", config, "--out", tmp_path / "o")
    assert reached == valid  # the CLI and the library agree
    assert not (tmp_path / "o").exists()


def _finite_positive(text: str) -> bool:
    try:
        return 0 < float(text) < math.inf
    except ValueError:
        return False


@FUZZ
@given(
    option=st.sampled_from(["--n", "--C", "--step", "--format", "--target", "--component"]),
    raw=OPTION_TEXT,
)
def test_linear_options(tmp_path, capsys, tiny_run, option, raw):
    args = ["linear", tiny_run.path, "--out", tmp_path / "l", "--n", "64", option, raw]
    code, out, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert "Traceback" not in out + err
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    if option == "--C" and not _finite_positive(raw):
        assert code == 2, (raw, out)
    if option == "--n" and code == 0:
        assert int(raw) >= 1


@FUZZ
@given(
    option=st.sampled_from(["--n", "--seed", "--max-memory-mb", "--step", "--format"]),
    raw=OPTION_TEXT,
)
def test_patch_options(tmp_path, capsys, tiny_run, option, raw):
    folder = tmp_path / uuid.uuid4().hex  # one per example (tmp_path is shared)
    args = ["patch", tiny_run.path, "--out", folder, "--n", "4", option, raw]
    code, out, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert "Traceback" not in out + err
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert not folder.exists()  # refused before anything was written
    if option == "--max-memory-mb" and not _finite_positive(raw):
        assert code == 2, (raw, out)
    if option in ("--n", "--seed") and code == 0:
        assert int(raw) >= (1 if option == "--n" else 0)
