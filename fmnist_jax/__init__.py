"""fmnist_jax: the TF1 Fashion-MNIST CNN experiment, in JAX/Flax."""

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
