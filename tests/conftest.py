"""Shared fixtures: a tiny config that trains in about a second, and one trained run."""

import pytest

from initlens.models import MixtureTask, ModelConfig, RunConfig, TrainConfig, train

TINY_TASK = MixtureTask(keys=(21, 30), memory_anchors=(1, 2), reasoning_anchors=(11, 13),
                        seq_len=5, samples_per_pair=30)


def tiny_config(**train_fields) -> RunConfig:
    fields = dict(steps=30, batch_size=32, eval_every=10, eval_size=64, n_checkpoints=3,
                  warmup_steps=5)
    fields.update(train_fields)
    return RunConfig(task=TINY_TASK,
                     model=ModelConfig(gamma=0.5, n_layers=2, d_model=16, n_heads=2),
                     train=TrainConfig(**fields))


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("runs") / "tiny", progress=False)
