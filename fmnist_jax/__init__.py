"""fmnist_jax: the TF1 Fashion-MNIST CNN experiment, in JAX/Flax.

The dataset's facts, read by every module (none of them needs JAX to know them):
"""

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SHAPE = (28, 28, 1)  # Height, width, channels of every image.
SPLIT_SIZES = {"train": 60_000, "test": 10_000}  # Images per split; every data source is checked against them.
