"""Build ``mlp_mnist.onnx``: a 784-64-10 ReLU MLP for MNIST."""

from _common import build_mlp


def build():
    return build_mlp("mlp_mnist", [784, 64, 10], seed=3)


if __name__ == "__main__":
    print(build())
