"""Published set-ups as data: one `Preset` per paper (`probe presets` lists them).

A preset is a full `RunConfig` plus where its values come from. `probe train/study/sweep
--preset NAME` starts from it; options given on top win and are recorded as overrides
(`preset.json` next to the run's or the study's config). Where docs/SCIENCE.md and the
authors' released code disagree, the preset follows the code and its note says so. The
published step counts are long: these are GPU runs (a 2-core CPU trains the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from initlens.models.config import ModelConfig, RunConfig, TrainConfig
from initlens.models.errors import UserError
from initlens.models.tasks import CompositeTask, FormalTask, MixtureTask, ModularTask

ANCHOR_CODE = "github sjtuzzw/complexity_control, code_for_anchor_func/"
# The anchor-function code's optimizer and schedule (main.py, model/choose_optimizer.py,
# script.py): AdamW on all parameters, wd 0.01, clip 1; GradualWarmupScheduler from
# lr 1e-5 with multiplier 20 (peak 2e-4) over 10 epochs, then cosine to eta_min 1e-5.
ANCHOR_TRAIN = dict(
    lr=2e-4,
    weight_decay=0.01,
    decay="all",
    beta1=0.9,
    beta2=0.999,
    grad_clip=1.0,
    schedule="gradual_warmup",
    warmup_multiplier=20.0,
    min_lr_ratio=0.05,
)

# Shown for every preset, default or not: the choices the published set-ups differ in.
CONVENTIONS = {
    "model": ("embed_fan_in", "biases", "final_ln", "normalization", "act_fn"),
    "train": ("schedule", "decay", "grad_clip"),
}


@dataclass(frozen=True)
class Preset:
    """A published set-up: its config, the paper, and where each choice comes from."""

    name: str
    paper: str
    source: str  # paper section and/or the authors' file
    note: str  # what could not be matched, and where text and code disagree
    config: RunConfig

    def settings(self) -> dict[str, dict[str, Any]]:
        """Per section, the fields away from the defaults and the conventions (task: all)."""
        default = RunConfig(task=type(self.config.task)())
        data, base = self.config.to_dict(), default.to_dict()
        return {
            section: {
                k: v
                for k, v in values.items()
                if section == "task"
                or base[section].get(k) != v
                or k in CONVENTIONS.get(section, ())
            }
            for section, values in data.items()
        }


def _composite() -> RunConfig:
    """210 epochs (10 of warm-up) of ~759k training rows at batch 2048: 370 steps each."""
    return RunConfig(
        task=CompositeTask(samples_per_pair=50625, key_position_mod=9),
        model=ModelConfig(
            gamma=0.5,
            n_layers=2,
            d_model=400,
            n_heads=1,
            d_head=200,
            d_mlp=1200,
            act_fn="relu",
            normalization="post",
            final_ln=False,
            biases=False,
            embed_fan_in="d_model",
            n_ctx=20,
        ),
        train=TrainConfig(
            steps=77_700, batch_size=2048, warmup_steps=3_700, eval_every=370, **ANCHOR_TRAIN
        ),
    )


def _mixture() -> RunConfig:
    """~1000 epochs of 200k rows at batch 100 (2000 steps each), 10 of warm-up."""
    return RunConfig(
        task=MixtureTask.published(),
        model=ModelConfig(
            gamma=0.5,
            n_layers=2,
            d_model=200,
            n_heads=1,
            d_mlp=600,
            act_fn="gelu",
            normalization="LN",
            final_ln=True,
            biases=True,
            embed_fan_in="d_model",
        ),
        train=TrainConfig(
            steps=2_000_000, batch_size=100, warmup_steps=20_000, eval_every=2_000, **ANCHOR_TRAIN
        ),
    )


def _grokking(normalization: str) -> RunConfig:
    """Full batch (round(0.3 * 113^2) = 3831 pairs), 10 warm-up steps, then constant lr."""
    task = ModularTask.published()
    return RunConfig(
        task=task,
        model=ModelConfig(
            gamma=0.5,
            n_layers=1,
            d_model=128,
            n_heads=4,
            d_head=32,
            d_mlp=512,
            act_fn="relu",
            normalization=normalization,
            biases=False,
            embed_fan_in="d_model",
        ),
        train=TrainConfig(
            steps=40_000,
            batch_size=round(task.train_fraction * task.p**2),
            lr=1e-3,
            weight_decay=1.0,
            decay="all",
            beta1=0.9,
            beta2=0.98,
            warmup_steps=10,
            min_lr_ratio=1.0,
            grad_clip=0.0,
            eval_every=100,
        ),
    )


def _rule_extrapolation() -> RunConfig:
    """5000 epochs of 512 strings at batch 128 (4 steps each); validation every 250."""
    return RunConfig(
        task=FormalTask(language="anbn", max_len=512, prompt_len=6, samples=512, test_fraction=0.5),
        model=ModelConfig(
            gamma=0.5,
            n_layers=2,
            d_model=8,
            n_heads=4,
            d_mlp=128,
            act_fn="relu",
            normalization="post",
            final_ln=False,
            biases=True,
            embed_fan_in="d_model",
        ),
        train=TrainConfig(
            steps=20_000,
            batch_size=128,
            lr=0.01,
            weight_decay=0.01,
            decay="all",
            schedule="inverse_sqrt",
            warmup_steps=1000,
            grad_clip=0.0,
            eval_every=1000,
        ),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "icml2025-mixture",
            "Yao, Zhang, Xu, ICML 2025 (arXiv 2502.04375): reasoning bias at small init",
            "SCIENCE.md 1 (task, 2 layers, 1 head, batch 100, ~1000 epochs); conventions from "
            f"{ANCHOR_CODE}model/GPT2_init_for_diff_part_prenorm.py and "
            "model/choose_optimizer.py",
            "The paper has no public code: conventions are the same group's released "
            "anchor-function code (embeddings at d_model^-gamma, pre-LN with a final "
            "LayerNorm, biases, GELU, AdamW wd 0.01 on all parameters, clip 1, warm-up x20 "
            "then cosine). d_model 200 and the epochs are approximate; d_mlp 600 keeps the "
            "code's d_mlp = 3 d_model; the lr is the code's. Not matched: that file "
            "normalizes only the query input and scales W_O and W_out by "
            "1/sqrt(2 n_layers) with d_model fan-in.",
            _mixture(),
        ),
        Preset(
            "neurips2024-composite",
            "Zhang, Lin, Wang, Zhang, Xu, NeurIPS 2024 (arXiv 2405.05409): anchor functions",
            "SCIENCE.md 2.3; " + ANCHOR_CODE + "script.py (composition runs), "
            "model/GPT_normal_init (compiled only: __pycache__), "
            "data_generator/composition.py, model/choose_optimizer.py",
            "Follows the code where it and the paper text differ: post-LN with no final "
            "LayerNorm, no Q/K/V/O or MLP biases, ReLU, every embedding at d_model^-gamma, "
            "key positions held out at x mod 9 (not 7), max_pos 20. 900k rows: 50625 "
            "training rows per pair (9/160 of 900k; test rows get as many, not 1/160). "
            "lr 1e-5 x 20 = 2e-4 peak, eta_min 1e-5. Vary depth (2-7) and gamma "
            "(0.3-0.7) with `probe sweep --layers/--gammas`. Not matched: the code's "
            "unembedding bias starts at PyTorch's uniform init, ours at 0.",
            _composite(),
        ),
        Preset(
            "nanda2023-grokking",
            "Nanda et al., ICLR 2023: progress measures for grokking (modular addition)",
            "SCIENCE.md 3; the TransformerLens grokking demo (biases frozen at zero)",
            "p = 113, 30% training pairs, full batch, AdamW lr 1e-3, betas 0.9/0.98, wd 1 "
            "on all parameters, 10 warm-up steps then constant lr, 40k epochs, no "
            "LayerNorm, ReLU, W_E and W_pos at d_model^-1/2 (gamma 0.5). Not matched: the "
            "unembedding bias stays trainable (zero-initialized).",
            _grokking("none"),
        ),
        Preset(
            "singh2026-layernorm-grokking",
            "Singh, Misra, Orvieto (arXiv 2602.06702): grokking through LayerNorm placement",
            "SCIENCE.md 3",
            "Nanda's set-up with LayerNorm; compare placements with `probe sweep --vary "
            "normalization=none,attn,LN,mlp,qk,v`. The final LayerNorm follows each "
            "placement (kept except for none and post): the paper does not say.",
            _grokking("LN"),
        ),
        Preset(
            "reizinger2024-rule-extrapolation",
            "Meszaros, Ujvary, Brendel, Reizinger, Huszar, NeurIPS 2024: rule extrapolation",
            "SCIENCE.md 4; github meszarosanna/rule_extrapolation configs/config.yaml, "
            "rule_extrapolation/model.py and runner.py",
            "Transformer of configs/config.yaml: 2 layers, d_model 8, 4 heads, d_mlp 128, "
            "post-LN (torch TransformerEncoderLayer) with no final LayerNorm, ReLU; prompts "
            "of 6 symbols; 512 strings up to 512 symbols; batch 128, AdamW lr 0.01 (torch "
            "default wd 0.01), inverse-sqrt schedule with 1000 warm-up steps, 5000 epochs. "
            "Not matched: their sinusoidal positions (ours learned), dropout 0.1, "
            "LayerNorm eps 2e-4, embedding x sqrt(d_model), 512 validation strings "
            "(ours: test_fraction 0.5), early stopping. --language picks the grammar.",
            _rule_extrapolation(),
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a UserError listing them."""
    if name not in PRESETS:
        raise UserError(
            f"unknown preset {name!r}; presets: {', '.join(PRESETS)} "
            f"(`probe presets` describes them)",
            option="preset",
        )
    return PRESETS[name]


def preset_record(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What preset.json holds: the preset, its source, and the options given on top."""
    p = get_preset(name)
    return {
        "preset": p.name,
        "paper": p.paper,
        "source": p.source,
        "overrides": {
            k: list(v) if isinstance(v, tuple) else v for k, v in sorted(overrides.items())
        },
    }


__all__ = ["PRESETS", "Preset", "get_preset", "preset_record"]
