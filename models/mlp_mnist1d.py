"""Build ``mlp_mnist1d.onnx``: a 40-128-10 ReLU MLP for MNIST-1D."""

from _common import HERE, build_mlp


def build(out_dir=HERE):
    return build_mlp("mlp_mnist1d", [40, 128, 10], seed=5, out_dir=out_dir)


if __name__ == "__main__":
    print(build())
