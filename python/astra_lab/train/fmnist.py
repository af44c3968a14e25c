"""Fashion-MNIST: a small ViT trained from scratch, then ASTRA-fine-tuned for N ranks.

1. train the original ViT (patch 4: 49 patch tokens + a class token) and
   measure its test accuracy;
2. for each variant: k-means codebooks (zero-shot accuracy), NAVQ fine-tuning
   in the N-device simulation, test accuracy; ablations at one G: no noise
   (lambda = 0), a single class token instead of Distributed Class Tokens, and
   the commitment weight beta;
3. the real runtime (ranks over gloo), loaded with the fine-tuned weights and
   codebooks, classifies the test set; its predictions are compared with the
   simulation's.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from astra import AstraEngine, adapt
from astra._optional import require

from . import data
from .loop import Batch, Variant, codebooks_of, cosine_lr, finetune, init_quantizers, variant_name
from .simulate import simulate

transformers = require("transformers", extra="train", purpose="the Fashion-MNIST experiment")
tqdm = require("tqdm.auto", extra="train", purpose="the Fashion-MNIST experiment").tqdm

# The runtime check uses the training quantizer's nearest codewords: the rows measure the trained model, and
# int8-estimated codes are measured on their own (benchmarks/studies/approximation_error.py --fmnist).
CHECK_ENCODE = "exact"


@dataclass
class FmnistConfig:
    dim: int = 96
    layers: int = 4
    heads: int = 4
    mlp: int = 192
    patch: int = 4
    epochs: int = 8
    batch: int = 128
    lr: float = 2e-3
    ranks: int = 4
    codebook_size: int = 1024
    groups: list[int] = field(default_factory=lambda: [1, 16])
    ft_steps: int = 900
    ft_lr: float = 3e-4
    noise: float = 1.0
    beta: float = 1e-3
    ablation_groups: int = 16
    ablation_betas: list[float] = field(default_factory=lambda: [0.0, 0.25])
    calib_images: int = 1024
    train_limit: int | None = None
    test_limit: int | None = None
    check_ranks: int = 2
    seed: int = 0
    quantize: str = "input"  # what the tokens send: attention inputs, or keys and values ("kv")
    out: str = "runs/accuracy/fmnist"


QUICK = FmnistConfig(dim=32, layers=2, heads=2, mlp=64, epochs=1, batch=64, codebook_size=16, groups=[1, 4], ft_steps=4,
                     ablation_groups=4, ablation_betas=[0.0], calib_images=32, train_limit=256, test_limit=96,
                     out="runs/accuracy/fmnist-quick")


def build_model(cfg: FmnistConfig):
    torch.manual_seed(cfg.seed)
    config = transformers.ViTConfig(
        image_size=28, patch_size=cfg.patch, num_channels=1, hidden_size=cfg.dim, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.mlp, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.ViTForImageClassification(config)


def _batches(x, y, batch, gen, augment=True):
    while True:
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - batch + 1, batch):
            idx = perm[i: i + batch]
            xb = x[idx]
            if augment:  # random horizontal flips
                flip = torch.rand(xb.shape[0], generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yield Batch(xb, y[idx])


def train_original(cfg: FmnistConfig, x, y, progress: bool):
    """Train from scratch (plain forward); cached in cfg.out/original."""
    path = os.path.join(cfg.out, "original")
    meta = os.path.join(path, "astra_train.json")
    want = {k: v for k, v in asdict(cfg).items() if k in ("dim", "layers", "heads", "mlp", "patch", "epochs", "batch",
                                                          "lr", "train_limit", "seed")}
    if os.path.exists(meta) and json.load(open(meta)) == want:
        return transformers.ViTForImageClassification.from_pretrained(path).eval()
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * (x.shape[0] // cfg.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    sched = cosine_lr(opt, steps, warmup=steps // 20)
    batches = _batches(x, y, cfg.batch, gen)
    model.train()
    bar = tqdm(range(steps), desc="fmnist: train original ViT", unit="step", disable=not progress, leave=False)
    for _ in bar:
        b = next(batches)
        loss = F.cross_entropy(model(pixel_values=b.inputs).logits, b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.save_pretrained(path)
    with open(meta, "w") as f:
        json.dump(want, f)
    return model


@torch.no_grad()
def accuracy(adapter, quantizers, x, y, ranks: int, class_token: str = "distributed") -> float:
    """Test accuracy through the simulation (quantizers None: the unquantized model)."""
    correct = 0
    for i in range(0, x.shape[0], 500):
        logits = simulate(adapter, quantizers, x[i: i + 500], ranks, class_token=class_token).outputs
        correct += (logits.argmax(-1) == y[i: i + 500]).sum().item()
    return correct / x.shape[0]


def run(cfg: FmnistConfig, command: str, progress: bool = True) -> list[dict]:
    torch.manual_seed(cfg.seed)
    x_train, y_train = data.fashion_mnist("train")
    x_test, y_test = data.fashion_mnist("test")
    if cfg.train_limit:
        x_train, y_train = x_train[: cfg.train_limit], y_train[: cfg.train_limit]
    if cfg.test_limit:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    original = train_original(cfg, x_train, y_train, progress)
    row = dict(task="fmnist", command=command, metric="accuracy")
    with torch.no_grad():
        base = (original(pixel_values=x_test).logits.argmax(-1) == y_test).float().mean().item()
    rows = [dict(row, ranks=1, groups=None, variant="original", value=base)]
    # Control: the same extra training without quantization (fine-tuning alone may add accuracy).
    control = copy.deepcopy(original)
    finetune(control, adapt(control), None, _batches(x_train, y_train, cfg.batch, torch.Generator().manual_seed(cfg.seed)),
             cfg.ft_steps, cfg.ft_lr, 1, Variant("original_continued", 0), lambda out, b: F.cross_entropy(out.outputs, b.targets),
             desc="fmnist: continue training the original", progress=progress)
    rows.append(dict(row, ranks=1, groups=None, variant="original_continued",
                     value=accuracy(adapt(control), None, x_test, y_test, 1)))

    variants = [Variant("astra", g, cfg.noise, cfg.beta) for g in cfg.groups]
    a = cfg.ablation_groups
    if a in cfg.groups:
        variants += [Variant("astra_no_noise", a, 0.0, cfg.beta),
                     Variant("astra_single_cls", a, cfg.noise, cfg.beta, "single")]
        variants += [Variant(f"astra_beta{b:g}", a, cfg.noise, b) for b in cfg.ablation_betas]
    calib = [x_train[i: i + 256] for i in range(0, min(cfg.calib_images, x_train.shape[0]), 256)]
    for v in variants:
        model = copy.deepcopy(original)
        adapter = adapt(model)
        quantizers = init_quantizers(model, calib, cfg.codebook_size, v.groups, cfg.seed, cfg.quantize)
        if v.name == "astra":
            acc = accuracy(adapter, quantizers, x_test, y_test, cfg.ranks)
            rows.append(dict(row, ranks=cfg.ranks, groups=v.groups,
                             variant=variant_name("astra_zero_shot", cfg.quantize), value=acc))
        gen = torch.Generator().manual_seed(cfg.seed + v.groups)
        finetune(model, adapter, quantizers, _batches(x_train, y_train, cfg.batch, gen), cfg.ft_steps, cfg.ft_lr,
                 cfg.ranks, v, lambda out, b: F.cross_entropy(out.outputs, b.targets),
                 desc=f"fmnist: NAVQ fine-tune {v.name} G={v.groups}", progress=progress)
        acc = accuracy(adapter, quantizers, x_test, y_test, cfg.ranks, v.class_token)
        rows.append(dict(row, ranks=cfg.ranks, groups=v.groups, variant=variant_name(v.name, cfg.quantize), value=acc))
        if v.name == "astra":  # the fine-tuned model and its codebooks, for the runtime (and the studies)
            path = os.path.join(cfg.out, f"astra-G{v.groups}")
            model.save_pretrained(path)
            codebooks_of(quantizers).save(path)
            if v.groups == a:
                rows += distributed_check(path, x_test, y_test, cfg, command)
    return rows


def _rank_predict(path: str, limit: int | None, out_dir: str) -> None:
    """One rank of the distributed check: classify the test set, rank 0 saves predictions."""
    from astra.codebooks import Codebooks
    from astra.launch import make_transport

    torch.set_num_threads(1)
    transport = make_transport("gloo", timeout_s=120.0)
    model = transformers.ViTForImageClassification.from_pretrained(path).eval()
    engine = AstraEngine(model, Codebooks.load(path), encode=CHECK_ENCODE)
    x, _ = data.fashion_mnist("test")
    x = x[:limit] if limit else x
    preds = torch.cat([engine.run_rank(x[i: i + 500], transport).argmax(-1) for i in range(0, x.shape[0], 500)])
    if transport.rank == 0:
        torch.save(preds, os.path.join(out_dir, "distributed_preds.pt"))
    transport.close()


def distributed_check(path: str, x_test, y_test, cfg: FmnistConfig, command: str) -> list[dict]:
    """Classify the test set with the real runtime (cfg.check_ranks gloo ranks); compare with the simulation."""
    from astra.codebooks import Codebooks
    from astra.launch import spawn_local

    codes = spawn_local(cfg.check_ranks, _rank_predict, (path, cfg.test_limit, path))
    if any(codes):
        raise RuntimeError(f"distributed check failed: rank exit codes {codes}")
    dist = torch.load(os.path.join(path, "distributed_preds.pt"))
    model = transformers.ViTForImageClassification.from_pretrained(path).eval()
    engine = AstraEngine(model, Codebooks.load(path), encode=CHECK_ENCODE)
    with torch.no_grad():
        sim = torch.cat([engine.forward(x_test[i: i + 500], cfg.check_ranks).argmax(-1) for i in range(0, x_test.shape[0], 500)])
    agree = (sim == dist).float().mean().item()
    row = dict(task="fmnist", command=command, ranks=cfg.check_ranks, groups=cfg.ablation_groups)
    distributed, simulated = (variant_name(n, cfg.quantize) for n in ("astra_distributed", "astra_simulated"))
    return [
        dict(row, variant=distributed, metric="accuracy", value=(dist == y_test).float().mean().item()),
        dict(row, variant=simulated, metric="accuracy", value=(sim == y_test).float().mean().item()),
        dict(row, variant=distributed, metric="agreement_with_simulation", value=agree),
    ]
