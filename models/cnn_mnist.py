"""Build ``cnn_mnist.onnx``: a small CNN for 28x28 MNIST images.

Conv 3x3 (8 ch, pad 1) + Relu + MaxPool 2 -> Conv 3x3 (16 ch, no pad) + Relu + MaxPool 2
-> Flatten -> Gemm to 10 logits. Shapes: 28 -> 28 -> 14 -> 12 -> 6, so 16 * 6 * 6 = 576 features.
"""

from _common import HERE, Net


def build(out_dir=HERE):
    net = Net("cnn_mnist", seed=11)
    h = net.op("Relu", [net.conv("x", 1, 8, 3, "conv1", pad=1)])
    h = net.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.op("Relu", [net.conv(h, 8, 16, 3, "conv2")])
    h = net.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.op("Flatten", [h], axis=1)
    net.gemm(h, 16 * 6 * 6, 10, "fc", init="glorot", out="logits")
    return net.save([("x", ["batch", 1, 28, 28])], [("logits", ["batch", 10])], out_dir)


if __name__ == "__main__":
    print(build())
