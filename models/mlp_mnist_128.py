"""Build ``mlp_mnist_128.onnx``: a 784-128-10 ReLU MLP for MNIST."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("mlp_mnist_128", [784, 128, 10], seed=4, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
