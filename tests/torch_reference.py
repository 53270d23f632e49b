"""Reference PyTorch models for parity tests: timm's InceptionResNetV2 wrapped as KonCept512.pth."""

from __future__ import annotations

import importlib.machinery
import sys
import types


def _stub_torchvision() -> None:
    """Lets `import timm` work: the torchvision that pip pairs with it here fails to import.

    timm only needs torchvision for data transforms and a few ops we never call; a module whose
    attributes are inert placeholders satisfies its imports. Real torch stays untouched. The real
    torchvision is never tried: a failed import leaves torch's operator registry half-changed.
    """
    if "torchvision" in sys.modules:
        return

    class _Placeholder:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return _Placeholder()

        def __getattr__(self, name):
            return _Placeholder()

        def __mro_entries__(self, bases):
            return (object,)

    def module(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__path__ = []

        def getattr_(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Placeholder()

        m.__getattr__ = getattr_
        return m

    for name in (
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.transforms.v2",
        "torchvision.ops",
        "torchvision.ops.misc",
        "torchvision.datasets",
        "torchvision.io",
        "torchvision.models",
        "torchvision.utils",
    ):
        sys.modules[name] = module(name)


def timm_inception_resnet_v2():
    import torch  # noqa: F401  (must be imported before the stubs exist)

    _stub_torchvision()
    import timm

    return timm.create_model("inception_resnet_v2", pretrained=False, num_classes=0)


def koncept512_torch(seed: int = 0, head_widths=(2048, 1024, 256)):
    """KonCept512 as the MediaEval 2020 organisers built it, on timm's backbone, with random
    weights and random BatchNorm statistics. Its `state_dict()` has the KonCept512.pth layout."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    backbone = timm_inception_resnet_v2()
    children = [
        backbone.conv2d_1a,
        backbone.conv2d_2a,
        backbone.conv2d_2b,
        backbone.maxpool_3a,
        backbone.conv2d_3b,
        backbone.conv2d_4a,
        backbone.maxpool_5a,
        backbone.mixed_5b,
        backbone.repeat,
        backbone.mixed_6a,
        backbone.repeat_1,
        backbone.mixed_7a,
        backbone.repeat_2,
        backbone.block8,
        backbone.conv2d_7b,
        nn.AvgPool2d(8, count_include_pad=False),
    ]
    a, b, c = head_widths

    class KonCept512(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Sequential(*children)
            self.fc = nn.Sequential(
                nn.Linear(1536, a), nn.ReLU(True), nn.BatchNorm1d(a), nn.Dropout(0.25),
                nn.Linear(a, b), nn.ReLU(True), nn.BatchNorm1d(b), nn.Dropout(0.25),
                nn.Linear(b, c), nn.ReLU(True), nn.BatchNorm1d(c), nn.Dropout(0.5),
                nn.Linear(c, 1),
            )  # fmt: skip

        def forward(self, x):
            x = self.base((x - 0.5) / 0.5)
            return self.fc(x.view(x.size(0), -1))[:, 0]

    model = KonCept512()
    randomize_batchnorm(model, seed)
    return model.eval()


def randomize_batchnorm(model, seed: int, calibration_shape=(4, 3, 299, 331)) -> None:
    """Realistic random BatchNorm statistics and affine terms, so that every BN tensor matters.

    Random conv weights with unit BN statistics blow activations up through 40 residual blocks, so
    the statistics are first measured on a random batch (as training would), then perturbed, and
    the affine terms randomised. Variances stay of the order of real ones, where epsilon shows.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(torch.rand(*calibration_shape, generator=g))
        model.eval()
        for m in bns:
            n = m.num_features
            m.running_var.mul_(torch.rand(n, generator=g) + 0.5)
            m.running_mean.add_(0.1 * torch.randn(n, generator=g) * m.running_var.sqrt())
            if m.affine:
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
