"""A small CNN classifier for small images: network, augmentation, training with early stopping.

The network is deliberately small (a few conv blocks, global average pooling, one linear layer)
so that it trains in seconds to minutes on a CPU at 32 px; it still beats an RBF SVC on raw pixels
by a wide margin because convolutions share weights across positions and pooling makes it
tolerant to where things are in the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffscape.data.dataset import MAX_SIZE
from diffscape.judge.data import JudgeError
from diffscape.settings.sections import CNNSettings


@dataclass(frozen=True)
class CNNConfig:
    """The architecture; stored in judge.json so that loading rebuilds the net from it alone."""

    num_classes: int
    size: int  # input pixels per side
    widths: tuple[int, ...] = (32, 64, 128)  # channels per conv block; each block halves the size
    convs_per_block: int = 2  # 3x3 conv-BN-ReLU layers per block
    dropout: float = 0.2  # before the linear head

    def __post_init__(self) -> None:
        # the architecture's bounds are the settings' (a ConfigError names the setting)
        CNNSettings(widths=self.widths, convs_per_block=self.convs_per_block, dropout=self.dropout)
        if not 2 ** len(self.widths) <= self.size <= MAX_SIZE:
            raise JudgeError(
                f"a {len(self.widths)}-block CNN takes images of {2 ** len(self.widths)} to "
                f"{MAX_SIZE} px, got {self.size}"
            )


class SmallCNN(nn.Module):
    """[conv3x3-BN-ReLU x convs_per_block, maxpool2] per width, global average pool, dropout,
    linear."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for w in config.widths:
            for _ in range(config.convs_per_block):
                # No conv bias: the BatchNorm right after it has its own shift.
                layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)]
                layers.append(nn.ReLU(inplace=True))
                c_in = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c_in, config.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale (the input normalisation)."""
    x = images.reshape(len(images), 3, -1).astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2))
    std = x.std(axis=(0, 2)).clip(min=1e-3)
    return mean.tolist(), std.tolist()


def augment(x: Tensor, settings: CNNSettings, gen: torch.Generator) -> Tensor:
    """Random flip, shift and light colour jitter of float images in [0, 1], (B, 3, H, W)."""
    b, _, h, w = x.shape
    if settings.flip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    pad = int(round(settings.shift * min(h, w)))
    if pad:
        # A random crop of the reflect-padded image = a shift that never shows a black border.
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy.view(b, 1) + torch.arange(h)).view(b, 1, h, 1)
        cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, 1, w)
        x = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
    if settings.jitter:
        j = settings.jitter

        def factor() -> Tensor:
            return (1 + (2 * torch.rand(b, generator=gen) - 1) * j).view(b, 1, 1, 1)

        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * factor() + gray  # saturation
        x = x.clamp(0, 1)
    return x


def lr_at(epoch: float, settings: CNNSettings) -> float:
    """Cosine decay from the peak to 0 over ``max_epochs`` (``epoch`` may be fractional)."""
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(epoch / settings.max_epochs, 1.0)))


@dataclass
class CNNModel:
    """A network and its input normalisation (the training images' channel statistics)."""

    net: SmallCNN
    mean: list[float]
    std: list[float]

    def normalise(self, x: Tensor) -> Tensor:
        """Float images in [0, 1] -> the network's input (per-channel z-scores)."""
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return (x - mean) / std

    @torch.inference_mode()
    def logits(self, images: np.ndarray, batch: int = 256) -> Tensor:
        self.net.eval()
        out = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.array(images[i : i + batch])).float() / 255.0
            out.append(self.net(self.normalise(x)))
        return torch.cat(out)

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        if len(images) == 0:
            return np.empty(0, np.int64)
        return self.logits(images, batch).argmax(1).numpy().astype(np.int64)


@dataclass
class TrainedCNN(CNNModel):
    best_epoch: int  # 1-based epoch whose weights were kept
    history: list[dict]  # per epoch: train loss, train (augmented) accuracy, val loss/accuracy


def fit_cnn(
    train: tuple[np.ndarray, np.ndarray],  # uint8 images (N, 3, H, W) and their labels
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    settings: CNNSettings,
    gen: torch.Generator,
    progress: bool = True,
    desc: str = "cnn",
) -> TrainedCNN:
    """Train with AdamW and augmentation, with early stopping on the validation images.

    Training stops ``patience_epochs`` after the validation accuracy last rose; the weights kept
    are those of the best-accuracy epoch with the lowest validation loss. (Loss alone keeps
    falling long after accuracy saturates on easy data, so it would never stop.)"""
    if len(val[0]) == 0:
        raise JudgeError(
            "early stopping needs at least one validation image: give some class two or more "
            "images (or the dataset a val split)"
        )
    # Weight init and dropout draw from torch's global RNG (they take no generator): seed it from
    # ``gen`` inside a fork, so the result depends on ``gen`` alone and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        return _fit(train, val, num_classes, settings, gen, progress, desc)


def _fit(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    settings: CNNSettings,
    gen: torch.Generator,
    progress: bool,
    desc: str,
) -> TrainedCNN:
    (x_train, y_train), (x_val, y_val) = train, val
    config = CNNConfig(
        num_classes, x_train.shape[-1], settings.widths, settings.convs_per_block, settings.dropout
    )
    model = CNNModel(SmallCNN(config), *channel_stats(x_train))
    net = model.net
    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    yt = torch.from_numpy(np.asarray(y_train, np.int64))
    yv = torch.from_numpy(np.asarray(y_val, np.int64))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    best_state: dict[str, Tensor] = {}
    history: list[dict] = []
    bar = tqdm(range(1, settings.max_epochs + 1), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        net.train()
        batches = torch.randperm(len(xt), generator=gen).split(settings.batch)
        loss_sum, correct = 0.0, 0
        for step, idx in enumerate(batches):
            if len(idx) < 2:  # BatchNorm cannot train on a single image
                continue
            opt.param_groups[0]["lr"] = lr_at(epoch - 1 + step / len(batches), settings)
            out = net(model.normalise(augment(xt[idx].float() / 255.0, settings, gen)))
            loss = F.cross_entropy(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yt[idx]).sum())
        val_logits = model.logits(x_val)  # (and the network left in eval mode)
        h = {
            "epoch": epoch,
            "train_loss": loss_sum / len(xt),
            "train_accuracy": correct / len(xt),
            "val_loss": float(F.cross_entropy(val_logits, yv)),
            "val_accuracy": float((val_logits.argmax(1) == yv).float().mean()),
        }
        history.append(h)
        bar.set_postfix(loss=f"{h['train_loss']:.3f}", val_acc=f"{h['val_accuracy']:.3f}")
        # The first epoch of the highest accuracy, and of those the lowest loss, is kept.
        best = max(history, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
        if best["epoch"] == epoch:
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        rose = min(e["epoch"] for e in history if e["val_accuracy"] == best["val_accuracy"])
        if epoch - rose >= settings.patience_epochs:  # no higher accuracy for that long
            break
    bar.close()
    net.load_state_dict(best_state)
    return TrainedCNN(net, model.mean, model.std, best["epoch"], history)
