"""Models shared by the PyTorch peers of msq-bench: CIFAR ResNets (6n+2) and ImageNet ResNet-18.

Both match MSQ's (Sources/MSQ/Models): CIFAR ResNets with option-A (zero-padding) shortcuts, ResNet-18 in
torchvision's layout, written out here so torchvision is not needed. Convolutions are bias-free and
Kaiming-normal (fan-out) initialised, BN starts at gamma = 1, beta = 0, the classifier has a bias.
`reference_model` builds every `msq --model` kind with the state_dict names MSQ's parameter paths map
to (Sources/MSQ/Deployment/PyTorchNames.swift); only it needs torchvision (resnet18/resnet50).
"""
import torch.nn as nn
import torch.nn.functional as F


def kaiming_init(model):
    """Kaiming-normal (fan-out, ReLU) init of every conv, as MSQ's Conv2d and torchvision."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class _Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU; subclasses define `shortcut`."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Block(_Residual):
    """CIFAR basic block; a shape-changing shortcut subsamples and zero-pads channels (option A)."""

    def __init__(self, cin, cout, stride):
        super().__init__(cin, cout, stride)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None
        self.stride = stride

    def shortcut(self, x):
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))


class ResNet20(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (3 stages of n blocks, widths 16, 32, 64; n = 3 is ResNet-20) for `cin`-channel images."""

    def __init__(self, cin=1, classes=10, n=3):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, inp = [], 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for i in range(n):
                blocks.append(Block(inp, planes, stride if i == 0 else 1))
                inp = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, classes)
        kaiming_init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class BasicBlock(_Residual):
    """ImageNet basic block; a shape-changing shortcut is a 1x1 conv + BN projection (`downsample`)."""

    def __init__(self, cin, cout, stride):
        super().__init__(cin, cout, stride)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)


class ResNet18(nn.Module):
    """ImageNet ResNet-18 (torchvision layout): 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 blocks, avg pool, fc."""

    def __init__(self, cin=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inp = [], 64
        for s, width in enumerate([64, 128, 256, 512]):
            stride = 1 if s == 0 else 2
            stages.append(nn.Sequential(BasicBlock(inp, width, stride), BasicBlock(width, width, 1)))
            inp = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, classes)
        kaiming_init(self)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}
IMAGENET_MODELS = ("resnet18", "resnet50")
MOBILENET_MODELS = {"mobilenetv3-large": "mobilenet_v3_large", "mobilenetv3-small": "mobilenet_v3_small"}
MODEL_NAMES = tuple(CIFAR_DEPTHS) + IMAGENET_MODELS + tuple(MOBILENET_MODELS)


def cifar_resnet(depth, cin=1, classes=10):
    """CIFAR ResNet of depth 6n + 2 (20, 32, 56, ...), MSQ's CIFARResNet."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return ResNet20(cin, classes, n=(depth - 2) // 6)


def reference_model(name, in_channels, classes):
    """The PyTorch twin of `msq --model NAME`: models.py's CIFAR ResNets, torchvision's resnet18/50 and
    mobilenet_v3_large/small (for other input channel counts the stem conv is replaced, as below).

    torchvision's stem takes 3 channels; for other counts conv1 is replaced by a 7x7/2 conv with
    `in_channels` inputs, as MSQ's ImageNetResNet builds it (the state_dict names do not change).
    """
    if name in CIFAR_DEPTHS:
        return cifar_resnet(CIFAR_DEPTHS[name], in_channels, classes)
    if name in MOBILENET_MODELS:
        import torchvision

        model = getattr(torchvision.models, MOBILENET_MODELS[name])(num_classes=classes)
        if in_channels != 3:
            model.features[0][0] = nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False)
        return model
    if name not in IMAGENET_MODELS:
        raise ValueError(f"unknown model '{name}'; valid models: {', '.join(MODEL_NAMES)}")
    import torchvision  # only these two need it

    model = getattr(torchvision.models, name)(num_classes=classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
