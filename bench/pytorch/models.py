"""Models shared by the PyTorch peers of msq-bench: CIFAR ResNets (6n+2), ImageNet ResNet-18, DeiT and Swin-T.

Both match MSQ's (Sources/MSQ/Models): CIFAR ResNets with option-A (zero-padding) shortcuts, ResNet-18 in
torchvision's layout, written out here so torchvision is not needed. Convolutions are bias-free and
Kaiming-normal (fan-out) initialised, BN starts at gamma = 1, beta = 0, the classifier has a bias.
`reference_model` builds every `msq --model` kind with the state_dict names MSQ's parameter paths map
to (Sources/MSQ/Deployment/PyTorchNames.swift); only it needs torchvision (resnet18/resnet50).
DeiT (VisionTransformer) is written out as timm builds it, with timm's names, so timm is not needed;
Swin-T is torchvision's own SwinTransformer class.
"""
import torch
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


class Attention(nn.Module):
    """timm's Attention: qkv Linear(dim, 3 dim) read as [B, T, 3, heads, d], softmax(q k^T / sqrt(d)) v, proj."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # timm's default (fused) path; the same as softmax(q k^T · scale) v
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """timm's pre-norm Block (LayerNorm eps 1e-6)."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp_ratio * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cin, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DeiT as timm builds it (no distillation token), with timm's state_dict names, so MSQ's
    VisionTransformer (Sources/MSQ/Models/VisionTransformer.swift) loads its weights unchanged."""

    def __init__(self, cin=3, classes=10, image=224, patch=16, dim=192, depth=12, heads=3, mlp_ratio=4):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image // patch) ** 2, dim))
        self.patch_embed = PatchEmbed(cin, dim, patch)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vision_transformer(name, cin=3, classes=10, image=224):
    """DeiT-Tiny/-Small; below 64 pixels patch 4 and depth 6, as MSQ's visionTransformerConfiguration."""
    dim, heads = DEIT_MODELS[name]
    small = image < 64
    return VisionTransformer(cin, classes, image, 4 if small else 16, dim, 6 if small else 12, heads)


CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}
IMAGENET_MODELS = ("resnet18", "resnet50")
MOBILENET_MODELS = {"mobilenetv3-large": "mobilenet_v3_large", "mobilenetv3-small": "mobilenet_v3_small"}
DEIT_MODELS = {"deit-tiny": (192, 3), "deit-small": (384, 6)}
SWIN_MODELS = ("swin-t",)
MODEL_NAMES = tuple(CIFAR_DEPTHS) + IMAGENET_MODELS + tuple(MOBILENET_MODELS) + tuple(DEIT_MODELS) + SWIN_MODELS


def swin(name, cin=3, classes=10, image=224):
    """torchvision's swin_t; below 64 pixels patch 2 and three stages of two blocks (heads 3, 6, 12),
    MSQ's swinConfiguration, built by torchvision's own SwinTransformer class. For cin != 3 the stem
    conv features[0][0] is replaced (same names). Both keep swin_t's stochastic depth 0.2 (MSQ trains
    without it; in eval mode it is the identity, and its train-mode cost is one multiply per block)."""
    from torchvision.models.swin_transformer import SwinTransformer

    if name != "swin-t":
        raise ValueError(f"unknown Swin '{name}'")
    if image < 64:
        model = SwinTransformer(patch_size=[2, 2], embed_dim=96, depths=[2, 2, 2], num_heads=[3, 6, 12],
                                window_size=[7, 7], stochastic_depth_prob=0.2, num_classes=classes)
        patch = 2
    else:
        import torchvision

        model = torchvision.models.swin_t(num_classes=classes)
        patch = 4
    if cin != 3:
        model.features[0][0] = nn.Conv2d(cin, 96, kernel_size=patch, stride=patch)
    return model


def cifar_resnet(depth, cin=1, classes=10):
    """CIFAR ResNet of depth 6n + 2 (20, 32, 56, ...), MSQ's CIFARResNet."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return ResNet20(cin, classes, n=(depth - 2) // 6)


def reference_model(name, in_channels, classes, image=224):
    """The PyTorch twin of `msq --model NAME`: models.py's CIFAR ResNets, torchvision's resnet18/50 and
    mobilenet_v3_large/small (for other input channel counts the stem conv is replaced, as below).

    torchvision's stem takes 3 channels; for other counts conv1 is replaced by a 7x7/2 conv with
    `in_channels` inputs, as MSQ's ImageNetResNet builds it (the state_dict names do not change).
    """
    if name in CIFAR_DEPTHS:
        return cifar_resnet(CIFAR_DEPTHS[name], in_channels, classes)
    if name in DEIT_MODELS:  # the DeiTs and Swin are the kinds whose parameters depend on the image size
        return vision_transformer(name, in_channels, classes, image)
    if name in SWIN_MODELS:
        return swin(name, in_channels, classes, image)
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
