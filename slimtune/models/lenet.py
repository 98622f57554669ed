"""The MNIST-class nets of Deep Compression (Han et al. 2016): LeNet-300-100 and LeNet-5.

Both take 28x28 inputs (their first linear layer is sized for it); another input size is
a one-line :class:`~slimtune.errors.UserInputError`, raised when the model is first run
(``slimtune validate`` / the layer table), not a shape error deep inside torch.

- ``lenet300``: LeNet-300-100, a 784-300-100-10 MLP with ReLU (266,610 parameters for
  10 classes and one input channel); layers ``fc1``, ``fc2``, ``fc3``.
- ``lenet5``: the Caffe LeNet-5 variant the paper compressed (Caffe's
  ``examples/mnist/lenet_train_test.prototxt``): conv 20 5x5, max-pool 2, conv 50 5x5,
  max-pool 2, fc 500, ReLU, fc 10 (431,080 parameters). As in Caffe there is no
  activation after the convolutions (max-pooling is their non-linearity) and no
  BatchNorm; layers ``conv1``, ``conv2``, ``fc1``, ``fc2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimtune.errors import UserInputError

IMAGE = 28


def _check_input(arch: str, x: Tensor) -> None:
    if torch.jit.is_tracing():  # the exporter's own example: a check would warn, not help
        return
    if tuple(x.shape[-2:]) != (IMAGE, IMAGE):
        raise UserInputError(f"{arch} takes {IMAGE}x{IMAGE} inputs (MNIST-class data), "
                             f"got {x.shape[-2]}x{x.shape[-1]}")


class LeNet300(nn.Module):
    """LeNet-300-100: flatten, 300, ReLU, 100, ReLU, classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * IMAGE * IMAGE, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("lenet300", x)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe's LeNet: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, ReLU, fc classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("lenet5", x)
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def lenet300(num_classes: int = 10, in_channels: int = 1) -> LeNet300:
    """LeNet-300-100 (Deep Compression's 40x MNIST MLP), about 0.27M parameters."""
    return LeNet300(num_classes, in_channels)


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """Caffe LeNet-5 (Deep Compression's 39x MNIST conv net), about 0.43M parameters."""
    return LeNet5(num_classes, in_channels)
