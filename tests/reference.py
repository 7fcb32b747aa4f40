"""Published figures the tests check the code against, each with where it comes from.

Counts that a source states only as shapes are derived here from those shapes, so the derivation can be
checked by reading it.
"""

# Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012,
# section 3.5 and Figure 2 (227x227x3 input, 1000 classes; the text's "60 million parameters"). Counted from
# the figure's layers: conv1 96x3x11x11, conv2 256x48x5x5 (two towers), conv3 384x256x3x3, conv4 384x192x3x3
# and conv5 256x192x3x3 (two towers), fc6 9216x4096, fc7 4096x4096, fc8 4096x1000, each with its biases.
ALEXNET_PAPER_PARAMS = 60_965_224
# The same layers as one tower (groups=1): conv2, conv4 and conv5 read all maps of the layer before.
ALEXNET_ONE_TOWER_PARAMS = 62_378_344

# Dive into Deep Learning, section 8.1 "Deep Convolutional Neural Networks (AlexNet)" (d2l.ai), the layer
# shapes it prints for a 1x224x224 Fashion-MNIST input (conv1 11x11 stride 4 padding 1).
D2L_ALEXNET_SHAPES = {
    "conv1": (96, 54, 54), "pool1": (96, 26, 26), "conv2": (256, 26, 26), "pool2": (256, 12, 12),
    "conv3": (384, 12, 12), "conv4": (384, 12, 12), "conv5": (256, 12, 12), "pool5": (256, 5, 5),
    "flatten": (6400,), "fc6": (4096,), "fc7": (4096,), "fc8": (10,),
}
# Its parameter count, from those shapes: convs 1->96 (11x11), 96->256 (5x5), 256->384, 384->384, 384->256
# (3x3), then Linear 6400->4096->4096->10, each with biases.
D2L_ALEXNET_PARAMS = 46_764_746
# d2l section 8.1's exercise for 28x28 input (conv1 5x5 stride 1 padding 2, first pool 3/1): conv1 loses
# 96 x (121 - 25) weights, everything after pool1 is as above.
D2L_ALEXNET_28_PARAMS = D2L_ALEXNET_PARAMS - 96 * (121 - 25)

# torchvision's model documentation (pytorch.org/vision/stable/models, "num_params" of each weights entry:
# AlexNet_Weights.IMAGENET1K_V1, VGG16_Weights.IMAGENET1K_V1, GoogLeNet_Weights.IMAGENET1K_V1 without the
# auxiliary heads, ResNet*_Weights.IMAGENET1K_V1), 3 channels in, 1000 classes.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840, "vgg16": 138_357_544, "googlenet": 6_624_904,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
}
