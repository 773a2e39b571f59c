"""Validation perplexity of a tiny byte-level decoder LM (mpq layers) after weight quantization:
RTN vs GPTQ vs AWQ at int4, and MXFP4 vs NVFP4 vs int4 (RTN). CPU, a couple of minutes.

    python experiments/lm_algorithms.py                 # prints the table
    python experiments/lm_algorithms.py --write-docs    # also replaces the table in docs/quantization.md

Data: the bytes of a few Python standard-library modules (train: the first 90%, validation: the
rest). Model: embedding 64 + learned positions, one pre-norm causal attention block and MLP,
a LayerNorm + Dense head over 256 bytes; trained with Adam from a fixed seed. Every Dense layer
is quantized (weights only; embeddings and norms stay float32); calibration for GPTQ / AWQ: 16
training windows of 64 bytes (1024 rows per layer).
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

import torch  # noqa: E402

import mpq  # noqa: E402
from mpq.layers import Dense, Embedding, Layer, LayerNormalization, Sequential  # noqa: E402

MODULES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "fnmatch.py")
T, D = 64, 64


def _corpus() -> torch.Tensor:
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((lib / m).read_bytes() for m in MODULES)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


class TinyLM(Layer):
    """Bytes ``[B, T]`` -> next-byte logits ``[B, T, 256]``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tok = Embedding(256, D, name="tok")
        self.pos = Embedding(T, D, name="pos")
        self.ln1 = LayerNormalization(name="ln1")
        self.qkv = Dense(3 * D, name="qkv")
        self.out = Dense(D, name="attn_out")
        self.mlp = Sequential(
            [LayerNormalization(name="ln2"), Dense(4 * D, activation="gelu", name="up"),
             Dense(D, name="down")],
            name="mlp",
        )  # fmt: skip
        self.head = Sequential([LayerNormalization(name="ln_f"), Dense(256, name="logits")])

    def call(self, ids):
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t))
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        att = (q @ k.transpose(1, 2)) / math.sqrt(D)
        att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        x = x + self.out(att.softmax(-1) @ v)
        x = x + self.mlp(x)
        return self.head(x)


def _windows(data: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - T - 1, (n,), generator=gen)
    return torch.stack([data[s : s + T + 1] for s in starts.tolist()])


def perplexity(model: Layer, val: torch.Tensor) -> float:
    n = (len(val) - 1) // T
    x = val[: n * T].reshape(n, T)
    y = val[1 : n * T + 1].reshape(n, T)
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256).float(), y.reshape(-1))
    return math.exp(float(loss))


def train(steps: int) -> tuple[Layer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    data = _corpus()
    split = int(0.9 * len(data))
    train_data, val = data[:split], data[split:]
    model = TinyLM(name="lm")
    model(train_data[:T].unsqueeze(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = _windows(train_data, 32, gen)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    calib_gen = torch.Generator().manual_seed(1)
    calibration = [_windows(train_data, 4, calib_gen)[:, :-1] for _ in range(4)]
    return model, val, calibration


VARIANTS = [
    ("float32", None, "rtn"),
    ("int4/32 RTN", "int4/32", "rtn"),
    ("int4/32 GPTQ", "int4/32", "gptq"),
    ("int4/32 AWQ", "int4/32", "awq"),
    ("mxfp4 (RTN)", "mxfp4", "rtn"),
    ("nvfp4 (RTN)", "nvfp4", "rtn"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    t0 = time.perf_counter()
    base, val, calibration = train(args.steps)
    lines = [
        "| variant | validation perplexity | weight bytes | notes |",
        "|---|---|---|---|",
    ]
    for label, mode, algorithm in VARIANTS:
        model = copy.deepcopy(base)
        notes = ""
        if mode is not None:
            report = mpq.quantize(
                model,
                mode,
                filter=lambda layer: type(layer) is Dense,
                algorithm=algorithm,
                calibration=None if algorithm == "rtn" else calibration,
            )
            notes = ", ".join(p.split("/")[-1] for p in report.notes)
            notes = f"not scaled (no layer to fold into): {notes}" if notes else ""
        ppl = perplexity(model, val)
        size = mpq.quantization.weight_bytes(model)
        lines.append(f"| {label} | {ppl:.3f} | {size:,} | {notes} |")
    table = "\n".join(lines)
    print(table)
    print(
        f"({args.steps} training steps, {time.perf_counter() - t0:.0f} s, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads)"
    )
    if args.write_docs:
        path = ROOT / "docs" / "quantization.md"
        text = path.read_text()
        begin, end = "<!-- lm_algorithms begin -->", "<!-- lm_algorithms end -->"
        block = f"{begin}\n{table}\n{end}"
        new = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda m: block, text, flags=re.S)
        if new == text and block not in text:
            raise SystemExit(f"Expected the markers {begin} ... {end} in {path}")
        path.write_text(new)


if __name__ == "__main__":
    main()
