"""Build ``mlp_mnist.onnx``: a 784-64-10 ReLU MLP for MNIST."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("mlp_mnist", [784, 64, 10], seed=3, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
