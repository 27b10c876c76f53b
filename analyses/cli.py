"""The `probe` command line: train, study, sweep, info, presets, patch, circuit, geometry,
linear, report, instruments. Each command parses its options and calls a function of `analyses`.

Every field of the task, model and train configs is an option (`--gamma`, `--d-model`,
`--lr`, `--keys 21,120`, ...), generated from the dataclasses so the two never drift.
Precedence: built-in defaults < `--config FILE` or `--preset NAME` < options. User
mistakes print one line and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import typer

from initlens.analyses.instruments import INSTRUMENTS
from initlens.models.config import ModelConfig, RunConfig, TrainConfig
from initlens.models.errors import UserError
from initlens.models.progress import Bar
from initlens.models.tasks import TASKS, task_class

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="InitLens: train transformers at any init scale and dissect them.",
)

SECTIONS = {"model": [ModelConfig], "train": [TrainConfig], "task": list(TASKS.values())}


def _field_options() -> dict[str, tuple[str, dataclasses.Field, str]]:
    """{option name: (section, field, help text)} for every config field."""
    out: dict[str, tuple[str, dataclasses.Field, str]] = {}
    for section, classes in SECTIONS.items():
        for cls in classes:
            for f in dataclasses.fields(cls):
                owner = f"{cls.name}: " if section == "task" else ""
                default = f"{owner}{_default(f)}"
                if f.name in out:
                    out[f.name] = (section, out[f.name][1], f"{out[f.name][2]}; {default}")
                else:
                    out[f.name] = (section, f, f"default {default}")
    return out


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _option_type(default) -> type:
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return type(default)
    return str  # strings, tuples ("21,120" or "11,13;13,11"), and None-defaults


FIELDS = _field_options()
INT_OR_NONE = {"d_head", "d_mlp", "n_ctx", "batch_seed", "init_rank", "key_position_mod"}
BOOL_OR_NONE = {"final_ln"}  # true, false or none (the default)
PATHS = {"files"}  # tuple-of-path fields: comma-separated


def _parse(name: str, raw, task_cls) -> Any:
    """Turn an option's text into the field's type (tuples from '1,2' or '1,2;3,4')."""
    section, f, _ = FIELDS[name]
    flag = f"--{name.replace('_', '-')}"
    if section == "task":
        if name not in {g.name for g in dataclasses.fields(task_cls)}:
            raise UserError(f"option {flag} does not apply to task {task_cls.name!r}")
        default = _default(next(g for g in dataclasses.fields(task_cls) if g.name == name))
    else:
        default = _default(f)
    if name in INT_OR_NONE:
        if str(raw).lower() == "none":
            return None
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"{flag} {raw!r}: expected an integer or none") from None
    if name in BOOL_OR_NONE:
        text = str(raw).lower()
        if text not in ("true", "false", "none"):
            raise UserError(f"{flag} {raw!r}: expected true, false or none")
        return None if text == "none" else text == "true"
    if name in PATHS:
        return tuple(p.strip() for p in str(raw).split(",") if p.strip())
    if not isinstance(default, tuple):
        return raw
    try:
        groups = [
            tuple(int(v) for v in g.split(",") if v.strip())
            for g in str(raw).replace(" ", ";").split(";")
            if g.strip()
        ]
    except ValueError:
        raise UserError(
            f"{flag} {raw!r}: expected integers like '1,2' or pairs like '11,13;13,11'"
        ) from None
    nested = bool(default) and isinstance(default[0], tuple)
    return tuple(groups) if nested else (groups[0] if groups else ())


def build_config(
    config: Path | None, task: str | None, values: dict[str, Any], base: RunConfig | None = None
) -> RunConfig:
    """Defaults (or `base`), then the config file, then the options that were given."""
    cfg = RunConfig.load(config) if config else (base or RunConfig())
    if task is not None and task != cfg.task.name:
        cfg = RunConfig(task=task_class(task)(), model=cfg.model, train=cfg.train)
    changes: dict[str, dict] = {"task": {}, "model": {}, "train": {}}
    for name, raw in values.items():
        if raw is not None:
            changes[FIELDS[name][0]][name] = _parse(name, raw, type(cfg.task))
    return cfg.replace(**changes).validate()


PRESET_HELP = "Start from a published set-up (`probe presets` lists them); options win."


def preset_base(preset: str | None, config: Path | None) -> RunConfig | None:
    """The config of --preset (None without one); --config would replace it, so not both."""
    if preset is None:
        return None
    from initlens.models.presets import get_preset

    found = get_preset(preset)
    if config:
        raise UserError("--preset and --config each give a whole config; use one", option="preset")
    return found.config


def record_preset(
    preset: str | None,
    cfg: RunConfig,
    given: dict[str, Any],
    task: str | None,
    folder: Path,
    varied: dict | None = None,
) -> None:
    """Write FOLDER/preset.json: the preset, and the options given on top (final values)."""
    if preset is None or not folder.is_dir():
        return
    from initlens.models.presets import preset_record

    overrides = {name: getattr(getattr(cfg, FIELDS[name][0]), name) for name in given}
    if task:
        overrides["task"] = task
    record = preset_record(preset, overrides)
    if varied:
        record["varied"] = {k: list(v) for k, v in varied.items()}
    (folder / "preset.json").write_text(json.dumps(record, indent=2, default=list) + "\n")


def with_config_options(func):
    """Append an option per config field to a command's signature."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    for name, (section, f, hint) in FIELDS.items():
        typ = (
            str
            if name in INT_OR_NONE | BOOL_OR_NONE  # accept "none"
            else _option_type(_default(f))
        )
        flag = f"--{name.replace('_', '-')}"
        decl = [f"{flag}/--no-{name.replace('_', '-')}"] if typ is bool else [flag]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None, *decl, help=hint, show_default=False, rich_help_panel=section.title()
                ),
                annotation=typ | None,
            )
        )
    func.__signature__ = sig.replace(parameters=params)
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def _analysis(on: bool, pairs: int, probe_rows: int, probe_targets: str, instruments: str):
    from initlens.analyses.studies.run_analysis import AnalysisConfig

    return (
        AnalysisConfig(
            pairs=pairs,
            probe_rows=probe_rows,
            probe_targets=_formats(probe_targets),
            instruments=_formats(instruments) or None,
        )
        if on
        else None
    )


ANALYSIS_HELP = (
    "Analyse each run for the report (patching, probes, geometry; computed once "
    "per run, then reused); --no-analysis: behaviour only."
)
PAIRS_HELP = "Prompt pairs per patching experiment in the analysis."
ROWS_HELP = "Task rows for the analysis probes (80% fit, 20% held out)."
# probes.linear.TARGETS, spelled out so that `probe --help` need not import scikit-learn
# (tests/test_cli.py checks that the two agree).
PROBE_TARGETS = ("key", "a1", "a2", "intermediate", "label", "task_type", "memorized")
TARGETS_HELP = "Probe targets in the analysis, comma-separated: " + ", ".join(PROBE_TARGETS) + "."
INSTRUMENTS_HELP = (
    "Analysis instruments, comma-separated (default: "
    + ", ".join(name for name, i in INSTRUMENTS.items() if i.default)
    + "); all: "
    + ", ".join(INSTRUMENTS)
    + ". See `probe instruments`."
)
REPORT_FORMAT_HELP = (
    "Also export every report figure into REPORT_figures/, in these formats (comma-separated): "
    "html, png, svg, pdf. report.html itself is always written. PNG/SVG/PDF need Chromium."
)


@app.command("train")
@with_config_options
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="JSON config file (task/model/train)."
    ),
    task: str | None = typer.Option(None, help=f"Task: {', '.join(TASKS)}."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    **fields,
):
    """Train one model at init scale --gamma into a run directory."""
    from initlens.models.train import train

    given = {k: v for k, v in fields.items() if v is not None}
    base = preset_base(preset, config)
    cfg = (
        None
        if resume and not (given or config or task is not None or preset)
        else build_config(config, task, given, base=base)
    )
    run = train(cfg, out, resume=resume)
    if cfg is not None:
        record_preset(preset, cfg, given, task, Path(out))
    typer.echo(
        f"trained {run.path} ({run.status.get('state')}); inspect it with `probe info {run.path}`"
    )


@app.command("study")
@with_config_options
def study_cmd(
    out: Path = typer.Option(Path("study"), "--out", "-o", help="Study folder."),
    gammas: str = typer.Option("0.3,0.8", help="Comma-separated init scales to compare."),
    seeds: str | None = typer.Option(
        None,
        help="Comma-separated seeds, e.g. 0,1,2: every gamma trains at each, and the "
        "report judges the published claims over them (default: --seed's one).",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="JSON config file."),
    task: str | None = typer.Option(None, help=f"Task: {', '.join(TASKS)}."),
    overwrite: bool = typer.Option(False, help="Replace an existing study in --out."),
    analysis: bool = typer.Option(True, help=ANALYSIS_HELP),
    pairs: int = typer.Option(256, help=PAIRS_HELP),
    probe_rows: int = typer.Option(8000, help=ROWS_HELP),
    probe_targets: str = typer.Option("label,task_type", help=TARGETS_HELP),
    instruments: str = typer.Option("", help=INSTRUMENTS_HELP),
    format: str = typer.Option("", "--format", help=REPORT_FORMAT_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    **fields,
):
    """The main job: train each gamma (default: large 0.3 vs small 0.8) at each seed,
    write report.html."""
    from initlens.analyses.studies.study import run_study

    try:
        gamma_values = tuple(float(g) for g in gammas.split(",") if g.strip())
    except ValueError:
        raise UserError(f"--gammas {gammas!r}: expected numbers like 0.3,0.8") from None
    seed_values = _seeds(seeds)
    if seed_values is not None and fields.get("seed") is not None:
        raise UserError("--seed gives one seed and --seeds several: give one", option="seeds")
    given = {k: v for k, v in fields.items() if v is not None and k != "gamma"}
    base = build_config(config, task, given, base=preset_base(preset, config))
    info = run_study(
        base,
        gamma_values,
        out,
        overwrite=overwrite,
        analysis=_analysis(analysis, pairs, probe_rows, probe_targets, instruments),
        formats=_formats(format),
        analysis_progress=Bar(unit="ckpt"),
        log=typer.echo,
        seeds=seed_values,
    )
    varied = {"gamma": gamma_values, **({"seed": seed_values} if seed_values else {})}
    record_preset(preset, base, given, task, Path(out), varied)
    _echo_report(info)


def _seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds of `probe study`: integers >= 0, comma-separated (None: not given)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise UserError(f"{text!r}: expected integers >= 0 like 0,1,2", option="seeds")
    return tuple(int(p) for p in parts)


@app.command("info")
def info_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    step: str = typer.Option("last", help="Checkpoint to load and check: last or a step number."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Config, realized init, status, checkpoints and final metrics of a run."""
    from initlens.models.build import n_params
    from initlens.models.run import Run

    r = Run.open(run)
    cfg = r.config
    loaded = r.resolve_step(_step(step))
    model = r.load_model(loaded, device="cpu")  # proves the checkpoint loads
    preset_file = r.path / "preset.json"
    preset = json.loads(preset_file.read_text()) if preset_file.exists() else None
    info = {
        "run": str(r.path),
        "status": r.status,
        "config": cfg.to_dict(),
        "checkpoints": r.checkpoint_steps(),
        "final": r.summary.get("final", {}),
        "loaded_step": loaded,
        "n_params": n_params(model),
        "init": r.init,
        "preset": preset,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(info_table(info))


INFO_KEY = 13  # width of the key column of `probe info`


def _info_value(value) -> str:
    """A config value as its option takes it: 21,30 for a tuple, 11,13;13,11 for pairs."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        if value and isinstance(value[0], (tuple, list)):
            return ";".join(",".join(map(str, v)) for v in value)
        return ",".join(map(str, value))
    return str(value)


def _info_line(key: str, text: str) -> list[str]:
    """KEY, padded, then TEXT wrapped at 100 columns under itself."""
    width = 100 - INFO_KEY
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    lines = lines or [""]
    return [f"{key if i == 0 else '':<{INFO_KEY}}{line}" for i, line in enumerate(lines)]


def info_table(info: dict) -> str:
    """`probe info` as aligned key/value lines (what `--json` prints, for a reader)."""
    out = _info_line("run", info["run"])
    status = info["status"]
    out += _info_line(
        "status",
        ", ".join(f"{k} {v}" for k, v in status.items())
        if isinstance(status, dict)
        else str(status),
    )
    if preset := info.get("preset"):
        overrides = preset.get("overrides") or {}
        out += _info_line(
            "preset",
            f"{preset.get('preset')} (overrides: "
            + (", ".join(f"{k}={_info_value(v)}" for k, v in overrides.items()) or "none")
            + ")",
        )
    for section, values in info["config"].items():
        out += _info_line(section, ", ".join(f"{k}={_info_value(v)}" for k, v in values.items()))
    out += _info_line("checkpoints", ", ".join(map(str, info["checkpoints"])))
    out += _info_line("loaded", f"step {info['loaded_step']}: {info['n_params']} parameters")
    rows = [row for row in info["init"] or [] if row.get("d_in")]
    if rows:
        width = max(len("param"), *(len(row["param"]) for row in rows))
        out.append(f"{'init':<{INFO_KEY}}{'param':<{width}}  {'d_in':>6}  {'target':>8}  realized")
        for row in rows:
            out.append(
                f"{'':<{INFO_KEY}}{row['param']:<{width}}  {row['d_in']:>6}  "
                f"{row['target_std']:>8.5f}  {row['realized_std']:>8.5f}"
            )
    final = info["final"] or {}
    width = max((len(k) for k in final), default=0)
    for i, (key, value) in enumerate(final.items()):
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
        out.append(f"{'final' if i == 0 else '':<{INFO_KEY}}{key:<{width}}  {shown}")
    return "\n".join(out)


def _step(text: str) -> str | int:
    """--step: one checkpoint, `last` or a step number (every command that loads one)."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    if text != "last":
        raise UserError(f"{text!r} is not last or a step number", option="step")
    return text


def _steps(text: str) -> str | list[int]:
    """--steps: the checkpoints of the commands that read several: all, stages (init,
    early, each task type learned, end), last, or step numbers, comma-separated."""
    text = str(text).strip()
    if text in ("all", "stages", "last"):
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(
            f"{text!r} is not all, stages, last or step numbers like 10,20,30", option="steps"
        )
    return list(dict.fromkeys(int(p) for p in parts))


def _renamed(name: str, value, default, old_name: str, old_value):
    """An option's value, or that of its old name (--n, --C, and --step of linear and
    geometry: hidden from --help, kept so that scripts do not break)."""
    if old_value is None:
        return value
    if value != default:
        flag = name.replace("_", "-")
        raise UserError(f"--{old_name} is the old name of --{flag}: give one", option=name)
    return old_value


def _formats(format: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in format.split(",") if f.strip())


def _echo_written(info: dict) -> None:
    for message in info["warnings"]:
        typer.echo(f"note: {message}", err=True)
    for f in info["files"]:
        typer.echo(f"wrote {f}")


STEP_HELP = "Checkpoint: last or a step number."
STEPS_HELP = (
    "Checkpoints: all, stages (init, early, each task type at 90%, end), last, or step "
    "numbers, comma-separated (10,20,30)."
)
FORMAT_HELP = (
    "Figure formats, comma-separated: html, png, svg, pdf; only those asked are written "
    "(HTML figures share the folder's plotly.min.js). PNG/SVG/PDF need Chromium; "
    "without it, HTML instead."
)
ROWS_OPTION_HELP = "Task rows for the activation-based metrics."
INVERSE_L2_HELP = "scikit-learn's C: inverse L2 strength (smaller: stronger regularization)."


SWEEP_AXES = {"gammas": "gamma", "layers": "n_layers", "seeds": "seed"}


def sweep_grid(cfg: RunConfig, axes: dict[str, str | None], vary: list[str]) -> dict:
    """{field: values} from --gammas/--layers/--seeds and --vary NAME=V1,V2 (values of
    tuple fields, such as --vary 'keys=21,120|30,40', are separated by '|')."""
    items = [f"{SWEEP_AXES[option]}={raw}" for option, raw in axes.items() if raw is not None]
    grid = {}
    for item in items + list(vary):
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in FIELDS:
            raise UserError(
                f"--vary {item!r}: expected NAME=V1,V2 with NAME a config field "
                f"(e.g. lr=0.001,0.003 or n_heads=1,2)"
            )
        is_tuple = isinstance(_parse(name, "1", type(cfg.task)), tuple)
        grid[name] = [
            _field_value(name, v, type(cfg.task))
            for v in raw.split("|" if is_tuple else ",")
            if v.strip()
        ]
    return grid


def _field_value(name: str, text: str, task_cls) -> Any:
    """A field's value from text, typed like its default (e.g. gamma '1' -> 1.0)."""
    value = _parse(name, text.strip(), task_cls)
    if not isinstance(value, str):
        return value
    kind = _option_type(_default(FIELDS[name][1]))
    if kind is str:
        return value
    if kind is bool:
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    raise UserError(f"{name}={value!r}: expected a {kind.__name__}")


@app.command("sweep")
@with_config_options
def sweep_cmd(
    out: Path = typer.Option(
        Path("sweep"), "--out", "-o", help="Sweep folder (resumes when it holds the same sweep)."
    ),
    gammas: str | None = typer.Option(None, help="Init scales, e.g. 0.3,0.5,0.8."),
    layers: str | None = typer.Option(None, help="Depths, e.g. 1,2,4."),
    seeds: str | None = typer.Option(None, help="Seeds, e.g. 0,1,2."),
    vary: list[str] = typer.Option(
        [], help="Any other config field: NAME=V1,V2 (repeatable; tuple fields: NAME=1,2|3,4)."
    ),
    grid: Path | None = typer.Option(
        None,
        help='JSON sweep file: {"base": {config}, '
        '"grid": {"gamma": [...], ...}}; options add '
        "to it.",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="JSON config file (the base of the grid)."
    ),
    task: str | None = typer.Option(None, help=f"Task: {', '.join(TASKS)}."),
    backend: str = typer.Option(
        "local",
        help="local (a child process) or ray (Ray tasks; a local Ray instance unless --address).",
    ),
    address: str | None = typer.Option(
        None,
        help="Ray cluster address (e.g. "
        "ray://head:10001 or auto); the sweep folder must "
        "be on storage every node sees.",
    ),
    strategy: str = typer.Option(
        "auto",
        help="auto or ensemble: train runs that differ "
        "only in init (gamma, readout_scale, init_rank) and seed "
        "together; sequential: one by one.",
    ),
    cpus_per_task: int = typer.Option(1, help="CPU cores (torch threads) per Ray task."),
    gpus_per_task: float = typer.Option(
        0, help="GPUs per Ray task (0.25: four share one); 0 trains on CPUs."
    ),
    retries: int = typer.Option(
        2,
        help="Tries more for a unit whose process dies (a lost Ray worker, a killed child); "
        "each resumes from the runs' last checkpoints.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing sweep in --out."),
    format: str = typer.Option("html", "--format", help=FORMAT_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    **fields,
):
    """Train a grid (gamma x layers x seed x any option) and draw its phase diagram."""
    from initlens.analyses.studies.phase import default_value
    from initlens.analyses.studies.sweep import load_sweep, make_sweep, run_sweep

    given = {k: v for k, v in fields.items() if v is not None}
    start = preset_base(preset, config)
    spec = load_sweep(grid) if grid else None
    if start is not None and spec is not None:
        raise UserError(
            "--preset and --grid's base each give a whole config; use one", option="preset"
        )
    base = build_config(config, task, given, base=spec.base if spec else start)
    values = {
        **(dict(spec.grid) if spec else {}),
        **sweep_grid(base, {"gammas": gammas, "layers": layers, "seeds": seeds}, vary),
    }
    if not values:
        raise UserError(
            "nothing to sweep: give --gammas, --layers, --seeds, --vary NAME=V1,V2 or --grid FILE"
        )
    info = run_sweep(
        make_sweep(base, values),
        out,
        backend=backend,
        strategy=strategy,
        address=address,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        overwrite=overwrite,
        formats=_formats(format),
        log=typer.echo,
        retries=retries,
    )
    record_preset(preset, base, given, task, Path(out), values)
    table = info["table"]
    value = default_value(table)
    for row in table.itertuples():
        shown = f"{value} {getattr(row, value):.3f}" if row.state == "done" else row.error
        typer.echo(f"{row.run:<24} {row.state:<8} {shown}")
    typer.echo(f"{(table.state == 'done').sum()} of {len(table)} runs done")
    _echo_written(info)


@app.command("patch")
def patch_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    component: str = typer.Option(
        "resid_pre",
        help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern.",
    ),
    corruption: str = typer.Option(
        "key",
        help="; ".join(
            f"{name}: {', '.join(cls.corruptions)}"
            for name, cls in TASKS.items()
            if cls.corruptions
        )
        + ".",
    ),
    out: Path = typer.Option(Path("patching"), "--out", "-o", help="Output folder."),
    step: str = typer.Option("last", help=STEP_HELP),
    pairs: int = typer.Option(256, help="Number of prompt pairs."),
    old_n: int | None = typer.Option(None, "--n", hidden=True),
    metric: str = typer.Option("logit_diff", help="logit_diff, logprob or accuracy."),
    direction: str = typer.Option(
        "denoising", help="denoising (clean into corrupted) or noising (corrupted into clean)."
    ),
    source: str = typer.Option(
        "reasoning",
        help="Clean rows from the reasoning or the memory group (key and anchor corruptions).",
    ),
    all_positions: bool = typer.Option(False, help="Patch all positions at once."),
    attribution: bool = typer.Option(
        False, help="Also estimate by attribution patching and report its agreement."
    ),
    format: str = typer.Option("html", "--format", help=FORMAT_HELP),
    seed: int = typer.Option(0, help="Seed for drawing the pairs."),
    max_memory_mb: float = typer.Option(256, help="Memory budget of one patched chunk."),
):
    """Activation patching of a checkpoint on task corruptions: table and heatmaps."""
    from initlens.analyses.commands.patch import PatchOptions, patch_command

    options = PatchOptions(
        component=component,
        corruption=corruption,
        step=_step(step),
        pairs=_renamed("pairs", pairs, 256, "n", old_n),
        metric=metric,
        direction=direction,
        source=source,
        per_position=not all_positions,
        attribution=attribution,
        formats=_formats(format),
        seed=seed,
        max_memory_mb=max_memory_mb,
    )
    info = patch_command(run, out, options, progress=Bar(unit="chunk"))
    typer.echo(f"{metric}: clean {info['clean']:.4f}, corrupted {info['corrupted']:.4f}")
    if "agreement" in info:
        typer.echo(
            "attribution vs exact: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in info["agreement"].items()
            )
        )
    _echo_written(info)


@app.command("circuit")
def circuit_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path = typer.Option(Path("circuit"), "--out", "-o", help="Output folder."),
    steps: str = typer.Option("last", help=STEPS_HELP),
    pairs: int = typer.Option(256, help="Number of prompt pairs per task type."),
    per_position: bool = typer.Option(
        False, help="Also patch each sender position on its own (circuit_by_position)."
    ),
    top: int = typer.Option(8, help="Paths drawn per panel of the layer graph."),
    format: str = typer.Option("html", "--format", help=FORMAT_HELP),
    seed: int = typer.Option(0, help="Seed for drawing the pairs."),
):
    """Path patching of every sender x receiver path: edge table and layer graph."""
    from initlens.analyses.commands.circuit import circuit_command
    from initlens.analyses.studies.circuit import strongest_edges
    from initlens.analyses.studies.over_training import last_steps

    info = circuit_command(
        runs, out, _steps(steps), pairs, per_position, top, _formats(format), seed, Bar(unit="ckpt")
    )
    for row in strongest_edges(info["table"], top=3).itertuples():
        typer.echo(
            f"{row.run} step {row.step} {row.experiment}: {row.sender} -> {row.receiver} "
            f"normalized {row.normalized:+.3f} (attribution {row.attribution_normalized:+.3f})"
        )
    for row in last_steps(info["agreement"]).itertuples():
        typer.echo(
            f"{row.run} {row.experiment}: edge attribution vs exact over {row.n_paths} paths: "
            f"pearson {row.pearson:.3f}, spearman {row.spearman:.3f}, "
            f"top path {'found' if row.top_edge_match else 'missed'}"
        )
    _echo_written(info)


@app.command("geometry")
def geometry_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path = typer.Option(Path("geometry"), "--out", "-o", help="Output folder."),
    steps: str = typer.Option("all", help=STEPS_HELP),
    rows: int = typer.Option(512, help=ROWS_OPTION_HELP),
    old_step: str | None = typer.Option(None, "--step", hidden=True),
    old_n: int | None = typer.Option(None, "--n", hidden=True),
    cka: bool = typer.Option(True, help="Also CKA between layers, checkpoints and runs."),
    format: str = typer.Option("html", "--format", help=FORMAT_HELP),
):
    """Embedding and weight geometry, attention entropy and CKA over training."""
    from initlens.analyses.commands.representations import geometry_command

    info = geometry_command(
        runs,
        out,
        _steps(_renamed("steps", steps, "all", "step", old_step)),
        _renamed("rows", rows, 512, "n", old_n),
        cka,
        _formats(format),
        progress=Bar(unit="ckpt"),
    )
    table = info["table"]
    typer.echo(
        f"{len(table)} rows: {table.run.nunique()} run(s), {table.step.nunique()} "
        f"step(s), {table.metric.nunique()} metrics"
    )
    _echo_written(info)


@app.command("linear")
def linear_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    target: str = typer.Option("key", help="Comma-separated: " + ", ".join(PROBE_TARGETS) + "."),
    component: str = typer.Option(
        "resid_pre,resid_mid,resid_post",
        help="Comma-separated hooks to probe at every layer and position.",
    ),
    out: Path = typer.Option(Path("linear"), "--out", "-o", help="Output folder."),
    steps: str = typer.Option("stages", help=STEPS_HELP),
    rows: int = typer.Option(
        20000,
        help="Task rows, at most (80% train, 20% held out); "
        "fewer can leave rare labels out of the training split.",
    ),
    inverse_l2: float = typer.Option(1.0, help=INVERSE_L2_HELP),
    format: str = typer.Option("html", "--format", help=FORMAT_HELP),
    old_step: str | None = typer.Option(None, "--step", hidden=True),
    old_n: int | None = typer.Option(None, "--n", hidden=True),
    old_c: float | None = typer.Option(None, "--C", hidden=True),
):
    """Linear probes with control tasks at every layer and position, over training."""
    from initlens.analyses.commands.representations import linear_command
    from initlens.analyses.studies.over_training import last_steps

    info = linear_command(
        runs,
        out,
        _formats(target),
        _formats(component),
        _steps(_renamed("steps", steps, "stages", "step", old_step)),
        _renamed("rows", rows, 20000, "n", old_n),
        _renamed("inverse_l2", inverse_l2, 1.0, "C", old_c),
        _formats(format),
        progress=Bar(unit="ckpt"),
    )
    table = info["table"]
    last = last_steps(table)
    for (run, target), group in last.groupby(["run", "target"]):
        top = group.loc[group.selectivity.idxmax()]
        typer.echo(
            f"{run} {target}: best selectivity {top.selectivity:.3f} (accuracy "
            f"{top.accuracy:.3f}, control {top.control_accuracy:.3f}) at {top.hook} "
            f"position {top.position}, step {top.step}"
        )
    _echo_written(info)


@app.command("report")
def report_cmd(
    target: Path = typer.Argument(..., help="A study or sweep folder, or a run directory."),
    out: Path | None = typer.Option(
        None, help="Where to write the HTML (default: TARGET/report.html)."
    ),
    analysis: bool = typer.Option(True, help=ANALYSIS_HELP),
    pairs: int = typer.Option(256, help=PAIRS_HELP),
    probe_rows: int = typer.Option(8000, help=ROWS_HELP),
    probe_targets: str = typer.Option("label,task_type", help=TARGETS_HELP),
    instruments: str = typer.Option("", help=INSTRUMENTS_HELP),
    format: str = typer.Option("", "--format", help=REPORT_FORMAT_HELP),
):
    """(Re)build the HTML report of a study or a run, or a sweep's table and phase diagram."""
    from initlens.analyses.commands.report import report_command

    info = report_command(
        target,
        out,
        _analysis(analysis, pairs, probe_rows, probe_targets, instruments),
        _formats(format),
        progress=Bar(unit="ckpt"),
    )
    if "report" in info:
        _echo_report(info)
    else:  # a sweep: its table and figures
        _echo_written(info)


@app.command("presets")
def presets_cmd():
    """The published set-ups of --preset: what each sets, and its source."""
    from initlens.models.presets import PRESETS

    for p in PRESETS.values():
        typer.echo(f"{p.name}: {p.paper}\n    source: {p.source}")
        for section, values in p.settings().items():
            typer.echo(f"    {section:<6} " + ", ".join(f"{k}={v}" for k, v in values.items()))
        typer.echo(f"    note: {p.note}")


@app.command("instruments")
def instruments_cmd():
    """The analysis instruments: name, what each needs, its tables, what it measures."""
    for name, instrument in INSTRUMENTS.items():
        default = "" if instrument.default else " (opt-in: --instruments)"
        typer.echo(
            f"{name}{default}: {instrument.description}\n"
            f"    needs {', '.join(sorted(instrument.needs))}; tables "
            f"{', '.join(instrument.tables)}"
        )


def _echo_report(info: dict) -> None:
    _echo_written(info)
    typer.echo(f"report: {info['report']}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e.for_cli()}", err=True)
        sys.exit(2)
    except typer.TyperException as e:  # what the parser refused: one line, not a box
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # `probe` or a group alone: its help
            e.show()
        else:
            where = ctx.command_path if ctx else "probe"
            typer.echo(f"error: {e.format_message().rstrip('.')}; see `{where} --help`", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; finished work is kept: `probe train --resume` continues a "
            "run, the same `probe study` or `probe sweep` command continues those",
            err=True,
        )
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
