"""Helpers shared by the test modules: a tiny run configuration, the in-process `probe`
CLI with its one-line error check, and a PNG decoder (no imaging library needed)."""

import re
import struct
import zlib

from initlens.analyses.cli import main
from initlens.models import MixtureTask, ModelConfig, RunConfig, TrainConfig

TINY_TASK = MixtureTask(
    keys=(21, 30), memory_anchors=(1, 2), reasoning_anchors=(11, 13), seq_len=5, samples_per_pair=30
)


def tiny_config(**train_fields) -> RunConfig:
    """The tests' tiny trained run. Its embeddings keep the paper-text fan-in (d_vocab,
    n_ctx), the convention the tests that read its activations were written against."""
    fields = dict(
        steps=30, batch_size=32, eval_every=10, eval_size=64, n_checkpoints=3, warmup_steps=5
    )
    fields.update(train_fields)
    return RunConfig(
        task=TINY_TASK,
        model=ModelConfig(gamma=0.5, n_layers=2, d_model=16, n_heads=2, embed_fan_in="vocab"),
        train=TrainConfig(**fields),
    )


# `probe` options for the same tiny run as tiny_config().
TINY = [
    "--keys",
    "21,30",
    "--memory-anchors",
    "1,2",
    "--reasoning-anchors",
    "11,13",
    "--seq-len",
    "5",
    "--samples-per-pair",
    "30",
    "--d-model",
    "16",
    "--steps",
    "30",
    "--batch-size",
    "32",
    "--eval-every",
    "10",
    "--eval-size",
    "64",
    "--n-checkpoints",
    "3",
    "--warmup-steps",
    "5",
    "--embed-fan-in",
    "vocab",
]
SMALL_ANALYSIS = ["--pairs", "32", "--probe-rows", "600", "--probe-targets", "task_type"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result, pattern):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 4 if color == 6 else 3
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


# The attention key bias adds the same amount to every score of a query, which softmax
# ignores: its gradient is zero up to rounding, and Adam turns that rounding into random
# +-lr steps in any run, alone or not. It is compared through the logits instead.
NO_GRADIENT = "attn.k.bias"


def assert_same_run(run, ref, tokens=None, step=None) -> None:
    """`run` (e.g. an ensemble member) equals `ref` (the same config trained alone) at
    `step`: weights to 2e-5, last-position logits on `tokens` to 1e-4, metrics to 1e-4."""
    import torch

    a, b = run.load_model(step, device="cpu"), ref.load_model(step, device="cpu")
    wa, wb = a.state_dict(), b.state_dict()
    for name in wb:
        if not name.endswith(NO_GRADIENT):
            torch.testing.assert_close(wa[name], wb[name], atol=2e-5, rtol=1e-4, msg=name)
    if tokens is not None:
        with torch.no_grad():
            torch.testing.assert_close(a(tokens)[:, -1], b(tokens)[:, -1], atol=1e-4, rtol=1e-4)
    ma, mb = run.metrics(), ref.metrics()
    assert list(ma.step) == list(mb.step) and list(ma.metric) == list(mb.metric)
    assert (ma.value - mb.value).abs().max() < 1e-4
