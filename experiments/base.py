"""The seed experiment: the original TF1 Fashion-MNIST CNN, number for number.

  python -m fmnist_jax.main --config=experiments/base.py --workdir=runs/base

Expected: final test accuracy 0.8975 ± 0.0105 over seeds 0-4 (seed 0: 0.9021, the shipped model in
pretrained/); record docs/figures/seeds/final.csv, all the numbers in docs/records.md.

Every other config imports this one (`from fmnist_jax.experiments import base`) and overrides only
what differs. How a run executes (fused steps, kernels, allocator, cache) is not part of the
experiment: `config.runtime`, see fmnist_jax/runtime.py.
"""

import ml_collections

from fmnist_jax import runtime


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Run -------------------------------------------------------------------
  config.seed = 0  # Root PRNG seed: init = fold_in(seed, 0); shuffle(epoch) = fold_in(fold_in(seed, 1), epoch).

  # --- Data ------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "fashion_mnist"  # TFDS name of the dataset.
  config.data.source = "auto"  # "auto": TFDS, then IDX fallbacks; "tfds": TFDS only; "idx": IDX files only (no TensorFlow).
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (None: TFDS default, ~/tensorflow_datasets).
  config.data.manual_dir = ml_collections.config_dict.placeholder(str)  # Folder holding the four original .gz files; TFDS reads them instead of downloading.
  config.data.idx_dirs = ("/usr/share/datasets/fashion-mnist",)  # Offline fallback: folders with the IDX files (Debian's dataset-fashion-mnist).

  # --- Model -----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"  # Model family: "cnn" (this CNN) or "resnet" (--config.model.name=resnet: model_families.resnet_config()'s fields).
  config.model.conv_features = (64, 64)  # Output channels of conv1 and conv2.
  config.model.kernel_size = (5, 5)  # Convolution window (SAME padding).
  config.model.pool_size = (2, 2)  # Max-pool window and stride after each conv.
  config.model.dense_features = 1024  # Width of the hidden dense layer (0: flattened features straight to the logits).
  config.model.num_classes = 10  # Output logits.
  config.model.activation = "elu"  # Nonlinearity after each conv and the dense layer (any flax.linen activation name).
  config.model.batch_norm = False  # BatchNorm between each conv and its activation (the convs then have no bias).
  config.model.batch_norm_momentum = 0.9  # BatchNorm running statistics: new = momentum * old + (1 - momentum) * batch's.
  config.model.batch_norm_scale = True  # BatchNorm learns a scale (False: offset only, the scale fixed at 1).
  config.model.convs_per_stage = 1  # 1: conv-act-pool stages; 2: conv-pool-act-conv-act (the second conv at half size).
  config.model.whiten_kernel_size = 0  # k > 0: a first VALID kxk conv with fixed patch-whitening filters of the training images (fmnist_jax/whitening.py).
  config.model.whiten_directions = 0  # The stem keeps this many strongest patch directions (and their negatives); 0: all k*k*C.
  config.model.whiten_eps = 5e-4  # Added to each patch-covariance eigenvalue before its filter is scaled by 1/sqrt.
  config.dtype = "float32"  # Compute dtype ("float32" or "bfloat16"); parameters and Adam state stay float32.

  # --- Optimizer (fmnist_jax/optimizers.py) ---------------------------------
  config.optimizer = "adam"  # "adam", "adamw" (decoupled weight decay), "sgd" (momentum) or "muon" (orthogonalized momentum).
  config.learning_rate = 0.001  # Peak step size (a schedule scales it).
  config.adam_learning_rate = 0.001  # Muon: peak rate of the parameters it leaves to Adam (biases, BatchNorm).
  config.b1 = 0.9  # Adam/AdamW beta1.
  config.b2 = 0.999  # Adam/AdamW beta2.
  config.eps = 1e-8  # Adam/AdamW epsilon.
  config.momentum = 0.9  # SGD momentum; Muon's momentum (beta).
  config.nesterov = False  # SGD: Nesterov momentum.
  config.weight_decay = 0.0  # Weight decay of the kernels: decoupled for adamw and muon, L2 for sgd; adam needs 0.
  config.grad_clip_norm = 0.0  # Clip the gradients to this global norm (0: no clipping).
  config.schedule = "constant"  # Peak-rate multiplier: "constant", "warmup_cosine", "warmup_linear", "one_cycle".
  config.warmup_fraction = 0.0  # Fraction of the training steps spent rising to the peak rate (not "constant").
  config.lr_start_factor = 0.0  # Rate at the first step, as a fraction of the peak (not "constant").
  config.lr_end_factor = 0.0  # Rate at the last step, as a fraction of the peak (not "constant").

  # --- Regularization and evaluation ------------------------------------------
  config.label_smoothing = 0.0  # Training targets (1 - a) * one_hot + a / num_classes (0: plain cross-entropy).
  config.ema_decay = 0.0  # Evaluate and predict with an EMA of the parameters of this decay (0: off).
  config.eval_flip_tta = False  # Evaluation and prediction average the logits of each image and its mirror.
  config.eval_tta_shift_pixels = 0  # ...and of its shifts by 1, ..., this many pixels up, down, left and right (0: none).
  config.augment = ml_collections.ConfigDict()  # On-device training augmentation (fmnist_jax/augment.py).
  config.augment.flip = False  # Mirror each training image left-right with probability 1/2.
  config.augment.alternate_flip = False  # Mirror each image in every other epoch (which: a per-image coin); not with flip.
  config.augment.translate_pixels = 0  # Shift each image by up to this many pixels each way, zero fill (0: off).
  config.augment.erase_probability = 0.0  # Random erasing: fill one rectangle per image with this probability (0: off).
  config.augment.erase_area = (0.02, 0.4)  # Erased area as a fraction of the image, drawn uniformly.
  config.augment.erase_aspect = (0.3, 3.3)  # Height/width of the erased rectangle, drawn log-uniformly.
  config.augment.erase_fill = 0.0  # Pixel value of the erased rectangle (images are in [0, 1]).

  # --- Schedule --------------------------------------------------------------
  config.batch_size = 250  # Global training batch (split over devices).
  config.num_epochs = 4  # Training length in epochs, used when num_train_steps <= 0.
  config.num_train_steps = -1  # > 0 overrides num_epochs; -1 derives it from num_epochs.
  config.eval_batch_size = 1000  # Evaluation batch; the test split is padded to a multiple and masked.

  # --- Logging and checkpoints -----------------------------------------------
  config.log_every_steps = 100  # Train metrics averaged over this window, written and logged.
  config.eval_every_steps = 40  # Full test-split evaluation interval (and at the last step).
  config.checkpoint_every_steps = 240  # Checkpoint interval (one epoch); the last step is always saved.
  config.max_checkpoints_to_keep = 3  # Orbax keeps the newest few steps.

  # --- Execution (not the experiment) -----------------------------------------
  config.runtime = runtime.get_config()  # Fused steps, kernels, allocator, NaN guard, cache: fmnist_jax/runtime.py.
  return config
