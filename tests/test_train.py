"""Training: schedule, determinism, resume, run directory contents."""

import json
import math

import pytest
import torch

from helpers import tiny_config
from initlens.models import Run, UserError, train
from initlens.models.train import checkpoint_steps, eval_steps, lr_at


def _weights(run: Run, step=None):
    return run.load_model(step, device="cpu").state_dict()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    tc = tiny_config(steps=100, warmup_steps=10, lr=1e-2, min_lr_ratio=0.1).train
    assert lr_at(0, tc) == pytest.approx(1e-3)
    assert lr_at(9, tc) == pytest.approx(1e-2)
    assert lr_at(10, tc) == pytest.approx(1e-2)
    assert lr_at(55, tc) == pytest.approx(1e-3 + 9e-3 * 0.5)
    assert lr_at(100, tc) == pytest.approx(1e-3)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(10, 100))


def test_eval_schedule_dense_early_and_checkpoints_include_init():
    ev = eval_steps(3000, 50)
    assert ev[0] == 0 and ev[-1] == 3000 and set(range(0, 3001, 50)) <= set(ev)
    early = [s for s in ev if s < 50]
    assert len(early) >= 8  # denser than every 50 steps early on
    ck = checkpoint_steps(3000, 50, 10)
    assert ck[0] == 0 and ck[-1] == 3000 and len(ck) >= 10


def test_run_directory_contents(tiny_run):
    run = Run.open(tiny_run.path)
    assert run.status == {"state": "done", "step": 30}
    assert run.checkpoint_steps()[0] == 0 and run.checkpoint_steps()[-1] == 30
    df = run.metrics()
    assert set(df.group) >= {"memory", "reasoning", "reasoning_test", "train"}
    assert set(df.metric) >= {"loss", "accuracy", "lr"}
    assert df.step.min() == 0 and df.step.max() == 30
    assert run.summary["steps"] == 30 and "memory/accuracy" in run.summary["final"]
    assert run.config == tiny_config()
    assert {r["param"] for r in run.init} >= {"embed.weight", "unembed.weight"}
    # Checkpoints are safetensors: the first 8 bytes are a little-endian header length.
    raw = (run.path / "checkpoints" / "step_0000000.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"] == {"step": "0"}


def test_training_lowers_the_loss(tiny_run):
    df = tiny_run.metrics()
    loss = df[(df.metric == "loss") & (df.group == "memory")].set_index("step").value
    assert loss.loc[30] < loss.loc[0]


def test_same_seed_same_numbers(tmp_path, tiny_run):
    again = train(tiny_config(), tmp_path / "again", progress=False)
    a, b = tiny_run.metrics(), again.metrics()
    assert a.drop(columns="run").equals(b.drop(columns="run"))
    wa, wb = _weights(tiny_run), _weights(again)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_equals_uninterrupted(tmp_path, tiny_run):
    partial = train(tiny_config(), tmp_path / "chunked", stop_at=13, progress=False)
    assert partial.status["state"] == "running" and partial.checkpoint_steps()[-1] == 13
    resumed = train(None, tmp_path / "chunked", resume=True, progress=False)
    assert resumed.done
    wa, wb = _weights(tiny_run), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Each evaluation is recorded once and equals the uninterrupted run's (the stop adds
    # one evaluation at step 13; the running train-batch loss averages another window).
    a, b = (r.metrics().query("group != 'train'").drop(columns="run") for r in (tiny_run, resumed))
    assert not b.duplicated(["step", "group", "metric"]).any()
    b = b[b.step.isin(set(a.step))]
    assert a.reset_index(drop=True).equals(b.reset_index(drop=True))


def test_resume_rejects_different_options(tmp_path):
    train(tiny_config(), tmp_path / "r", stop_at=5, progress=False)
    with pytest.raises(UserError, match="differ"):
        train(tiny_config(lr=0.5), tmp_path / "r", resume=True, progress=False)


def test_training_into_an_existing_run_is_refused_and_keeps_it(tmp_path, tiny_run):
    out = tmp_path / "r"
    train(tiny_config(), out, stop_at=5, progress=False)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(UserError, match="already holds a run.*resume it") as refused:
        train(tiny_config(), out, progress=False)
    assert refused.value.option == "out"  # the CLI shows it as --out
    assert before == {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path):
    cfg = tiny_config(lr=1e30, grad_clip=0.0, warmup_steps=0, steps=20)
    with pytest.raises(UserError, match="diverged") as stopped:
        train(cfg, tmp_path / "nan", progress=False)
    assert stopped.value.option == "lr"
    run = Run.open(tmp_path / "nan")
    assert run.status["state"] == "failed" and "diverged" in run.status["reason"]
    assert 0 in run.checkpoint_steps()
    assert not math.isnan(float(_weights(run, 0)["embed.weight"].sum()))


def test_run_dataset_feeds_the_model(tiny_run):
    ds = tiny_run.dataset()
    tokens = ds[:4]["tokens"]
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (4, tiny_run.config.task.seq_len)
    logits, cache = tiny_run.load_model(device="cpu").run_with_cache(tokens)
    assert logits.shape[:2] == tokens.shape and "blocks.1.hook_resid_post" in cache
