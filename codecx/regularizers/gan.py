"""Adversarial regularizers for generative compression: `reg=illm` (MS-ILLM, Muckley et al.,
ICML 2023) and `reg=patchgan` (HiFiC, Mentzer et al., NeurIPS 2020).

Both add `weight * L_G` to the codec loss (gradients reach the codec through `x_hat` only;
the discriminator is frozen in the codec phase) and train their discriminator in an
auxiliary phase "discriminator" on the detached `x_hat` and quantized latent `y_hat`, one D
step per codec step. They work with every backbone: D is conditioned on `y_hat` through
`attach(codec)`, which reads `codec.backbone.M`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from codecx.regularizers.base import AuxPhase, Regularizer
from codecx.types import CodecOutput, RegOutput

__all__ = ["UNetDiscriminator", "PatchGANDiscriminator", "ILLMRegularizer", "PatchGANRegularizer",
           "oasis_d_loss", "oasis_g_loss"]

#: the released MS-ILLM discriminator's widths below the (3 + 16)-channel input
ILLM_CHANNELS = (128, 128, 256, 256, 512, 512)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2)


class _DownBlock(nn.Module):
    """Pre-activation residual block, average-pool down (OASIS / MS-ILLM, no normalisation):
    `body(a) + skip(a)` with `a = LeakyReLU_0.2(x)` (the first block: `a = x`).

    The shortcut sees the *activated* input, as in the released net, whose in-place LeakyReLU
    (after an identity norm) rewrites the block's input before its shortcut reads it."""

    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__()
        self.act = nn.Identity() if first else _lrelu()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _lrelu(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.AvgPool2d(2))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity(), nn.AvgPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(x)
        return self.body(a) + self.skip(a)


class _UpBlock(nn.Module):
    """Pre-activation residual block, nearest-neighbour up: `body(a) + skip(a)`, `a =
    LeakyReLU_0.2(x)` (the shortcut sees the activated input, as in the released net)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.act = _lrelu()
        self.body = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(cin, cout, 3, padding=1), _lrelu(),
                                  nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity(),
                                  nn.Upsample(scale_factor=2, mode="nearest"))

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(x)
        return self.body(a) + self.skip(a)


class UNetDiscriminator(nn.Module):
    """MS-ILLM's conditional U-Net discriminator as released (NeuralCompression
    `ConditionalUnetDiscriminator`, OASIS layout without skip concatenations or normalisation).

    The latent `y_hat` (M channels) goes through conv3x3 (reflect padding) to
    `context_channels`, LeakyReLU 0.2, nearest upsampling to the image size, and is
    concatenated with the RGB image. Down path: one residual block per entry of `channels`
    (each halves the resolution: 256 -> 4 for the six defaults); up path back to
    `out_factor` (1/8) ending at `head_channels` (64); a 1x1 conv gives `num_classes` logits
    (C + 1 = 1025: index 0 = fake). Inputs must be multiples of 2^len(channels). Every block
    but the first feeds its body and its shortcut the same LeakyReLU-activated input (the
    released net's in-place activation); `tests/test_reference_nc.py` proves it equal to
    NeuralCompression's with the same weights.
    """

    def __init__(self, latent_channels: int, num_classes: int = 1025,
                 channels: Sequence[int] = ILLM_CHANNELS, context_channels: int = 16,
                 out_factor: int = 8, head_channels: int = 64):
        super().__init__()
        widths = [int(c) for c in channels]
        n_down = len(widths)
        if out_factor < 1 or out_factor & (out_factor - 1):
            raise ValueError(f"reg.out_factor={out_factor}: must be a power of 2 (8: labels at 1/8)")
        n_up = n_down - (int(out_factor).bit_length() - 1)
        if n_up < 1:
            raise ValueError(f"reg.channels has {n_down} levels: need more than log2(out_factor)="
                             f"{int(out_factor).bit_length() - 1} (the U-Net goes below 1/{out_factor} and back)")
        self.multiple, self.out_factor, self.num_classes = 2**n_down, int(out_factor), int(num_classes)
        self.context = nn.Sequential(
            nn.Conv2d(int(latent_channels), int(context_channels), 3, padding=1, padding_mode="reflect"),
            _lrelu())
        c = [3 + int(context_channels), *widths]
        self.down = nn.Sequential(*[_DownBlock(c[i], c[i + 1], first=(i == 0)) for i in range(n_down)])
        ups = []
        for j in range(n_up):
            cin = widths[n_down - 1 - j]
            cout = widths[n_down - 2 - j] if j < n_up - 1 else int(head_channels)
            ups.append(_UpBlock(cin, cout))
        self.up = nn.Sequential(*ups)
        self.head = nn.Conv2d(int(head_channels), int(num_classes), 1)

    def forward(self, x: Tensor, y_hat: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"U-Net discriminator: image {h}x{w} is not a multiple of {self.multiple} "
                             "(2^len(reg.channels)); use crops of such sizes")
        ctx = F.interpolate(self.context(y_hat), size=(h, w), mode="nearest")
        return self.head(self.up(self.down(torch.cat((x, ctx), dim=1))))


def oasis_d_loss(real_logits: Tensor, fake_logits: Tensor, real_labels: Tensor) -> Tensor:
    """OASIS discriminator loss (Sushko et al. 2022; MS-ILLM eq. 6):
    `0.5 * (CE(D(x), u(x) + 1) + CE(D(x_hat), 0))`, averaged over pixels."""
    fake = torch.zeros(fake_logits.shape[:1] + fake_logits.shape[2:], dtype=torch.long,
                       device=fake_logits.device)
    return 0.5 * (F.cross_entropy(real_logits, real_labels + 1) + F.cross_entropy(fake_logits, fake))


def oasis_g_loss(fake_logits: Tensor, labels: Tensor) -> Tensor:
    """OASIS generator loss: `CE(D(x_hat), u(x) + 1)` (the fake should look like its real label)."""
    return F.cross_entropy(fake_logits, labels + 1)


def _crop(x: Tensor, x_hat: Tensor, y_hat: Tensor, multiple: int, stride: int = 16):
    """Top-left crop of the images to a multiple of `multiple`, and of y_hat to match."""
    h, w = x.shape[-2:]
    ch, cw = h - h % multiple, w - w % multiple
    if ch == 0 or cw == 0:
        raise ValueError(f"discriminator: images of {h}x{w} px are smaller than its input multiple "
                         f"{multiple}; use crops of at least {multiple} px")
    return (x[..., :ch, :cw], x_hat[..., :ch, :cw],
            y_hat[..., : max(1, ch // stride), : max(1, cw // stride)])


def _halves(n: int) -> Tuple[slice, slice]:
    """(fake, real) image indices: the first and second half of the batch (one image: itself)."""
    if n < 2:
        return slice(0, 1), slice(0, 1)
    h = n // 2
    return slice(0, h), slice(h, 2 * h)


class _GANRegularizer(Regularizer):
    """Shared plumbing: D built at `attach(codec)` (it needs M), one AuxPhase "discriminator"."""

    name = "gan"

    def __init__(self, weight: float, lr: float, betas: Sequence[float], weight_decay: float,
                 optimizer: str, warmup_steps: int = 0):
        super().__init__()
        self.weight = float(weight)
        if not self.weight >= 0:
            raise ValueError(f"reg.weight={weight}: the generator weight must be >= 0")
        if int(warmup_steps) < 0:
            raise ValueError(f"reg.warmup_steps={warmup_steps}: must be >= 0 (D steps before the generator term)")
        # D warm-up (not in the released recipes): the generator term is 0 until D took this many steps
        self.warmup_steps, self.d_steps = int(warmup_steps), 0  # d_steps: counted in this process
        self.lr, self.betas = float(lr), tuple(float(b) for b in betas)
        self.weight_decay, self.optimizer = float(weight_decay), str(optimizer)
        self.discriminator: Optional[nn.Module] = None
        self.latent_stride = 16

    def build(self, latent_channels: int) -> nn.Module:
        raise NotImplementedError

    def attach(self, codec) -> None:
        """Build the discriminator for the backbone's latent width `codec.backbone.M`."""
        bb = codec.backbone
        self.latent_stride = int(getattr(bb, "latent_stride", 16))
        if self.discriminator is None:
            with torch.random.fork_rng(devices=[]):  # leave the codec's random stream untouched
                self.discriminator = self.build(int(bb.M))

    def g_weight(self) -> float:
        """The generator term's weight now: 0 during the discriminator warm-up, then `weight`."""
        return self.weight if self.d_steps >= self.warmup_steps else 0.0

    def _d(self) -> nn.Module:
        if self.discriminator is None:
            raise RuntimeError(f"{type(self).__name__} must be attached to a codec (attach(codec)) before use")
        return self.discriminator

    def aux_phases(self) -> List[AuxPhase]:
        def loss(x: Tensor, out: CodecOutput):
            self.d_steps += 1
            return self.d_loss(x, out)

        # D's gradient is clipped at norm 1.0 like G's, as MS-ILLM's released GANCompressionModule
        # does for both discriminators (schedule.phases.discriminator.clip_max_norm overrides)
        return [AuxPhase("discriminator", list(self._d().parameters()), loss, lr=self.lr,
                         betas=self.betas, weight_decay=self.weight_decay, optimizer=self.optimizer,
                         clip_max_norm=1.0)]

    def d_loss(self, x: Tensor, out: CodecOutput) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError


class ILLMRegularizer(_GANRegularizer):
    """reg=illm: MS-ILLM's adversarial term with the VQ-VAE-labelled U-Net discriminator.

    Codec loss term: `weight * CE(D(x_hat, y_hat), u(x) + 1)` (lambda_d = 0.008), D frozen.
    Phase "discriminator" (AdamW 4e-4, betas (0.5, 0.9), wd 0): `0.5 * (CE(D(x), u(x)+1) +
    CE(D(x_hat), 0))` with real and fake from different images (fakes: the first half of the
    batch, reals: the second half). `labeler`: the file `codecx train-labeler` wrote; u(x) are
    its code indices of the *original* images at 1/8, frozen, eval mode, no grad. `channels`:
    D's widths (the released ~18M-parameter D by default; a CPU study may narrow them).
    `condition=False` (diagnostic, not MS-ILLM): D gets a zero latent, so its context branch is
    a constant and it sees only the image. `warmup_steps` (not in MS-ILLM's recipe): the
    generator term is 0 until D has taken that many steps (D trains alone first; counted in
    this process). `mc_sampling=False` (not the released default): D sees every image and its own
    reconstruction, HiFiC's pairing, instead of reals and fakes from different halves.
    """

    def __init__(self, labeler: str, weight: float = 0.008, channels: Sequence[int] = ILLM_CHANNELS,
                 context_channels: int = 16, out_factor: int = 8, head_channels: int = 64,
                 lr: float = 4e-4, betas: Sequence[float] = (0.5, 0.9), weight_decay: float = 0.0,
                 optimizer: str = "adamw", condition: bool = True, warmup_steps: int = 0,
                 mc_sampling: bool = True):
        super().__init__(weight, lr, betas, weight_decay, optimizer, warmup_steps)
        from codecx.regularizers.labeler import load_labeler

        self.condition, self.mc_sampling = bool(condition), bool(mc_sampling)

        if not labeler:
            raise ValueError("reg.labeler is not set: give the labeler file written by "
                             "`codecx train-labeler --data DIR --out labeler.pt`")
        lab = load_labeler(labeler)
        if lab.factor != int(out_factor):
            raise ValueError(f"reg.labeler={labeler} labels at 1/{lab.factor} but reg.out_factor={out_factor}")
        self._labeler = [lab]  # a list: frozen, not a submodule (not in checkpoints or optimizers)
        self.channels, self.context_channels = [int(c) for c in channels], int(context_channels)
        self.out_factor, self.head_channels = int(out_factor), int(head_channels)
        self.num_classes = lab.codebook_size + 1

    @property
    def labeler(self):
        return self._labeler[0]

    def build(self, latent_channels: int) -> nn.Module:
        return UNetDiscriminator(latent_channels, self.num_classes, self.channels,
                                 self.context_channels, self.out_factor, self.head_channels)

    def labels(self, x: Tensor) -> Tensor:
        lab = self.labeler.to(x.device)
        return lab.labels(x)

    def discriminate(self, x: Tensor, y_hat: Tensor) -> Tensor:
        """D's C+1 logits at 1/8 for images `x` (a zero latent when `condition` is off)."""
        return self._d()(x, y_hat if self.condition else torch.zeros_like(y_hat))

    def forward(self, x: Tensor, out: CodecOutput) -> RegOutput:
        d = self._d()
        x, x_hat, y_hat = _crop(x, out.x_hat, out.y_hat.detach(), d.multiple, self.latent_stride)
        g = oasis_g_loss(self.discriminate(x_hat, y_hat), self.labels(x))
        loss = self.g_weight() * g
        return RegOutput(loss=loss, metrics={"g_loss": g.detach(), "gan_loss": loss.detach()})

    def d_loss(self, x: Tensor, out: CodecOutput):
        d = self._d()
        x, x_hat, y_hat = _crop(x, out.x_hat.detach(), out.y_hat.detach(), d.multiple, self.latent_stride)
        # released mc_sampling: reals and fakes from different halves; False: every image and its x_hat
        fake, real = _halves(x.size(0)) if self.mc_sampling else (slice(None), slice(None))
        labels = self.labels(x[real])
        real_logits = self.discriminate(x[real], y_hat[real])
        fake_logits = self.discriminate(x_hat[fake], y_hat[fake])
        loss = oasis_d_loss(real_logits, fake_logits, labels)
        with torch.no_grad():
            real_acc = (real_logits.argmax(1) == labels + 1).float().mean()
            fake_acc = (fake_logits.argmax(1) == 0).float().mean()
            # real vs fake as a binary decision: P(fake) = softmax(logits)[0] above 1/2 or not
            rf_acc = 0.5 * ((real_logits.softmax(1)[:, 0] < 0.5).float().mean()
                            + (fake_logits.softmax(1)[:, 0] > 0.5).float().mean())
        return loss, {"d_real_acc": real_acc, "d_fake_acc": fake_acc, "d_rf_acc": rf_acc}


class PatchGANDiscriminator(nn.Module):
    """HiFiC's conditional PatchGAN (official TensorFlow layout): the latent through a
    spectral-norm conv3x3 to `context_channels` (12), LeakyReLU 0.2, nearest upsampling,
    concatenated with the image; spectral-norm 4x4 convs stride 2 to 64, 128, 256, stride 1 to
    512, stride 1 to one logit per patch (1/8 of the image: 32x32 for 256 px), "same" padding."""

    def __init__(self, latent_channels: int, channels: Sequence[int] = (64, 128, 256, 512),
                 context_channels: int = 12):
        super().__init__()
        sn = spectral_norm
        self.context = nn.Sequential(sn(nn.Conv2d(int(latent_channels), int(context_channels), 3, padding=1)),
                                     _lrelu())
        c = [3 + int(context_channels), *[int(v) for v in channels]]
        layers: List[nn.Module] = []
        for i in range(len(c) - 1):
            stride = 2 if i < len(c) - 2 else 1
            layers += [_SamePad(stride), sn(nn.Conv2d(c[i], c[i + 1], 4, stride=stride)), _lrelu()]
        layers += [_SamePad(1), sn(nn.Conv2d(c[-1], 1, 4, stride=1))]
        self.net = nn.Sequential(*layers)
        self.multiple = 2 ** (len(c) - 2)

    def forward(self, x: Tensor, y_hat: Tensor) -> Tensor:
        ctx = F.interpolate(self.context(y_hat), size=x.shape[-2:], mode="nearest")
        return self.net(torch.cat((x, ctx), dim=1))


class _SamePad(nn.Module):
    """TensorFlow's "SAME" padding for a 4x4 kernel (stride 2: 1 | 1, stride 1: 1 | 2)."""

    def __init__(self, stride: int):
        super().__init__()
        self.pad = (1, 1, 1, 1) if stride == 2 else (1, 2, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pad)


class PatchGANRegularizer(_GANRegularizer):
    """reg=patchgan: HiFiC's conditional PatchGAN with non-saturating BCE losses.

    Codec loss term: `weight * softplus(-D(x_hat, y_hat))` (HiFiC's beta = 0.15), D frozen.
    Phase "discriminator" (lr 1e-4): `softplus(-D(x, y_hat)) + softplus(D(x_hat, y_hat))`,
    real and fake conditioned on the same detached latent (HiFiC's D(x, y) vs D(x', y)).
    `warmup_steps`: D trains alone that many steps before the generator term is on (not HiFiC's).
    """

    def __init__(self, weight: float = 0.15, channels: Sequence[int] = (64, 128, 256, 512),
                 context_channels: int = 12, lr: float = 1e-4, betas: Sequence[float] = (0.5, 0.9),
                 weight_decay: float = 0.0, optimizer: str = "adamw", warmup_steps: int = 0):
        super().__init__(weight, lr, betas, weight_decay, optimizer, warmup_steps)
        self.channels, self.context_channels = [int(c) for c in channels], int(context_channels)

    def build(self, latent_channels: int) -> nn.Module:
        return PatchGANDiscriminator(latent_channels, self.channels, self.context_channels)

    def forward(self, x: Tensor, out: CodecOutput) -> RegOutput:
        d = self._d()
        x, x_hat, y_hat = _crop(x, out.x_hat, out.y_hat.detach(), self.latent_stride, self.latent_stride)
        g = F.softplus(-d(x_hat, y_hat)).mean()
        loss = self.g_weight() * g
        return RegOutput(loss=loss, metrics={"g_loss": g.detach(), "gan_loss": loss.detach()})

    def d_loss(self, x: Tensor, out: CodecOutput):
        d = self._d()
        x, x_hat, y_hat = _crop(x, out.x_hat.detach(), out.y_hat.detach(), self.latent_stride,
                                self.latent_stride)
        real, fake = d(x, y_hat), d(x_hat, y_hat)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        with torch.no_grad():
            acc = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return loss, {"d_acc": acc}
