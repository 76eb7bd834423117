"""The same CNN, Adam and batches in PyTorch: the baseline the benchmark compares against.

Only `fmnist_jax.benchmark` imports this module, and only when asked to compare: torch is the
optional `bench` extra, never a dependency of training. The model starts from the JAX initial
parameters and sees the JAX epoch permutations, so both frameworks do the same arithmetic on the
same batches and their losses can be compared as well as their speed.
"""

import contextlib
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fmnist_jax import errors


class TorchCNN(torch.nn.Module):
  """conv → pool → conv → pool → flatten → dense → logits in NCHW, like `models.CNN`."""

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    m = config.model
    self.activation = getattr(F, m.activation, None)
    if self.activation is None:
      raise errors.ConfigError(f"config.model.activation={m.activation!r} has no torch.nn.functional "
                               "counterpart; compare with e.g. 'elu' or 'relu'")
    self.pool_size = tuple(m.pool_size)
    height, width, channels = image_shape
    convs = []
    for features in m.conv_features:
      convs.append(torch.nn.Conv2d(channels, features, tuple(m.kernel_size), padding="same"))
      channels = features
      height, width = height // self.pool_size[0], width // self.pool_size[1]
    self.convs = torch.nn.ModuleList(convs)
    self.flat_shape = (height, width, channels)
    self.hidden = torch.nn.Linear(height * width * channels, m.dense_features)
    self.logits = torch.nn.Linear(m.dense_features, m.num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv in self.convs:
      x = F.max_pool2d(self.activation(conv(x)), self.pool_size)
    x = self.activation(self.hidden(x.flatten(1)))
    return self.logits(x)

  @torch.no_grad()
  def load_flax_params(self, params: Dict) -> None:
    """Copies flax parameters (HWIO kernels, NHWC flatten order) into this NCHW model."""
    t = lambda a: torch.from_numpy(np.array(a))  # A writable copy.
    for i, conv in enumerate(self.convs):
      p = params[f"Conv_{i}"]
      conv.weight.copy_(t(np.transpose(p["kernel"], (3, 2, 0, 1))))
      conv.bias.copy_(t(p["bias"]))
    # Flax flattens (h, w, c); torch flattens (c, h, w).
    h, w, c = self.flat_shape
    kernel = np.transpose(np.asarray(params["Dense_0"]["kernel"]).reshape(h, w, c, -1), (2, 0, 1, 3))
    self.hidden.weight.copy_(t(kernel.reshape(h * w * c, -1).T))
    self.hidden.bias.copy_(t(params["Dense_0"]["bias"]))
    self.logits.weight.copy_(t(np.asarray(params["Dense_1"]["kernel"]).T))
    self.logits.bias.copy_(t(params["Dense_1"]["bias"]))


class TorchTrainer:
  """Eager PyTorch training on the resident uint8 split, step for step like `train.Trainer`."""

  def __init__(self, config, images: np.ndarray, labels: np.ndarray, params: Dict, allow_tf32: bool):
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Same matmul precision policy as JAX on this run (TF32 on NVIDIA unless JAX asks for full f32).
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    self.batch_size = config.batch_size
    self.bfloat16 = config.dtype == "bfloat16"  # bf16 compute, float32 parameters and Adam, as in JAX.
    self.images = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy()).to(self.device)
    self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
    self.model = TorchCNN(config, images.shape[1:])
    self.model.load_flax_params(params)
    self.model.to(self.device)
    self._perm = (None, None)  # (host permutation, its device copy): copied once per epoch.
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate,
                                      betas=(config.b1, config.b2), eps=config.eps)

  def run_steps(self, perm: np.ndarray, start_index: int, num_steps: int) -> float:
    """Trains batches [start_index, start_index + num_steps) of `perm`; returns their mean loss."""
    if self._perm[0] is not perm:
      self._perm = (perm, torch.from_numpy(np.asarray(perm, np.int64)).to(self.device))
    perm = self._perm[1]
    total = torch.zeros((), device=self.device)
    for index in range(start_index, start_index + num_steps):
      idx = perm[index * self.batch_size:(index + 1) * self.batch_size]
      images, labels = self.images[idx].float() / 255.0, self.labels[idx]
      with (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bfloat16
            else contextlib.nullcontext()):
        loss = F.cross_entropy(self.model(images), labels)
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
      total += loss.detach().float()
    return float(total) / num_steps  # The only host sync: the window's end.
