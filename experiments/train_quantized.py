"""End to end: a plain PyTorch CNN -> mpq layers -> mixed_bfloat16 training -> int8 / float8 ->
LoRA fine-tuning of the int8 model, with QAT int4 against post-training int4 for comparison.

    python experiments/train_quantized.py            # ~1 minute on a 2-core CPU

Data: scikit-learn's bundled 8x8 digits (1797 images; 1400 to train, 397 to test). Each step
prints test accuracy, the SQNR (dB) of its test logits against the same weights evaluated in
float32 (its quantization / low-precision error), and the bytes of stored weights.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import mpq
from mpq.layers import Layer
from mpq.quantization import weight_bytes
from mpq.testing import sqnr
from mpq.training import LossScaler, from_torch, qat


class DigitsCNN(nn.Module):
    """A torchvision-free CNN on NCHW 1x8x8 images (what a user brings)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),  # -> 32 x 4 x 4
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_data() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def train(model, x, y, *, epochs, lr, seed=0, scaler=None) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()


@torch.no_grad()
def logits(model, x) -> torch.Tensor:
    model.eval()
    return model(x).float()


def with_policy(model: nn.Module, policy: str) -> nn.Module:
    """A copy of ``model`` whose (float) mpq layers all use ``policy``."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, Layer):
            m.dtype_policy = policy
    return out


def float_reference(model: nn.Module, float_model: nn.Module) -> nn.Module:
    """``float_model`` (float32) carrying every float weight of ``model`` that it can hold:
    biases, BatchNorm statistics, float8's float kernels, QAT's float kernels, LoRA factors
    (enabled alike). Quantized kernels (int8 / packed int4) keep ``float_model``'s values."""
    ref = copy.deepcopy(float_model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Layer)}
    for name, m in ref.named_modules():
        src = layers.get(name)
        if src is not None and getattr(src, "lora_enabled", False):
            m.enable_lora(src.lora_rank, src.lora_alpha)
    target = ref.state_dict()
    for key, value in model.state_dict().items():
        t = target.get(key)
        if t is not None and t.shape == value.shape and value.is_floating_point():
            t.copy_(value)
    return ref


def report(step: str, model, x, y, reference, t0) -> None:
    out = logits(model, x)
    acc = (out.argmax(-1) == y).float().mean().item()
    db = sqnr(logits(reference, x), out) if reference is not None else float("inf")
    print(
        f"{step:<44} acc {acc * 100:6.2f}%   SQNR {db:6.1f} dB   "
        f"weights {weight_bytes(model) / 1024:7.1f} KiB   {time.perf_counter() - t0:5.1f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="mixed_bfloat16 training epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_data()
    t0 = time.perf_counter()

    # 1. A PyTorch model, converted: Conv2d (NCHW) / BatchNorm2d / Linear -> mpq layers.
    net = DigitsCNN()
    model, conversion = from_torch(net, "mixed_bfloat16")
    print(conversion, "\n")

    # 2. Train under mixed_bfloat16 (float32 weights, bfloat16 compute).
    train(model, xtr, ytr, epochs=args.epochs, lr=3e-3)
    float_model = with_policy(model, "float32")  # the same weights, computed in float32
    report("float32 (the trained weights)", float_model, xte, yte, None, t0)
    report("mixed_bfloat16 (trained in it)", model, xte, yte, float_model, t0)

    # 2b. The same training under mixed_float16 needs loss scaling.
    f16, _ = from_torch(net, "mixed_float16")
    scaler = LossScaler()
    train(f16, xtr, ytr, epochs=args.epochs, lr=3e-3, scaler=scaler)
    f16_ref = with_policy(f16, "float32")
    label = f"mixed_float16 + LossScaler (scale {scaler.get_scale():g})"
    report(label, f16, xte, yte, f16_ref, t0)

    # 3. Post-training int8 (W8A8) of the trained float weights.
    int8 = copy.deepcopy(float_model)
    q = mpq.quantize(int8, "int8")
    label = f"int8 W8A8 ({len(q.quantized)} layers; BatchNorm stays float)"
    report(label, int8, xte, yte, float_model, t0)

    # 4. float8 (delayed scaling): one epoch of training sets the amax histories and scales.
    fp8 = copy.deepcopy(float_model)
    mpq.quantize(fp8, "float8")
    report("float8 (scales not calibrated yet)", fp8, xte, yte, float_model, t0)
    train(fp8, xtr, ytr, epochs=1, lr=1e-3, seed=1)
    report("float8 after 1 epoch of training", fp8, xte, yte, float_reference(fp8, float_model), t0)

    # 5. LoRA on the frozen int8 model: only the rank-4 factors (and biases) train.
    lora = copy.deepcopy(int8)
    for m in lora.modules():
        if getattr(m, "quantization_mode", None) == "int8":
            m.enable_lora(4)
    n_train = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    train(lora, xtr, ytr, epochs=2, lr=3e-3, seed=2)
    label = f"int8 + LoRA r=4 fine-tuned ({n_train} trainable)"
    report(label, lora, xte, yte, float_reference(lora, float_model), t0)

    # 6. int4 per channel: post-training vs quantization-aware training.
    int4 = copy.deepcopy(float_model)
    mpq.quantize(int4, "int4/-1")
    report("int4 per-channel, post-training", int4, xte, yte, float_model, t0)
    qat_model = copy.deepcopy(float_model)
    qat.prepare(qat_model, "int4/-1")
    train(qat_model, xtr, ytr, epochs=2, lr=1e-3, seed=3)
    qat_ref = float_reference(qat_model, float_model)  # its float kernels, before convert
    qat.convert(qat_model)
    report("int4 per-channel, QAT (2 epochs) + convert", qat_model, xte, yte, qat_ref, t0)


if __name__ == "__main__":
    main()
