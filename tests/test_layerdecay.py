"""layer_decay: depths read from the module tree (flat, hierarchical, towers), a model's timm-style
group_matcher(), the depth= override, min_scale. Expected depths are written from the recipes'
conventions (BEiT/MAE for flat models, SimMIM/timm for stages, EVA-CLIP for towers, timm's
group_with_matcher for group_matcher), never from paramwise's output."""

import pytest
import torch
from torch import nn

import paramwise
from paramwise import ParamwiseError

RATE = 0.5


def lr_exponents(model, *rules, **kw):
    """name -> e where the group's lr is RATE ** e (lr=1.0 as the base)."""
    groups = paramwise.param_groups(model, list(rules) or [paramwise.layer_decay(RATE, **kw)],
                                    lr=1.0)
    out = {}
    for g in groups:
        e = round(torch.log2(torch.tensor(g["lr"], dtype=torch.float64)).item() / -1)
        assert RATE ** e == g["lr"], g["lr"]
        out.update(dict.fromkeys(g["param_names"], e))
    return out


class Block(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)


class Stage(nn.Module):
    """A Swin/ConvNeXt stage: an optional downsampling layer, registered before or after the
    list of blocks."""

    def __init__(self, depth, down_first, d=4):
        super().__init__()
        if down_first:
            self.downsample = nn.Linear(d, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        if not down_first:
            self.downsample = nn.Linear(d, d)


class Hier(nn.Module):
    def __init__(self, depths=(2, 2, 3, 2), down_first=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 2)
        self.stages = nn.ModuleList([Stage(k, down_first) for k in depths])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)


def expected_hier(depths, down_first):
    """SimMIM's get_swin_layer / timm's swin group_matcher: block j of stage i is
    sum(depths[:i]) + j + 1; the stage's downsampling goes with its first block (registered
    first, timm) or its last (registered last, original Swin / SimMIM); stem 0; norm, head L+1."""
    total = sum(depths)
    top = total + 1
    exp = {"stem.weight": top, "stem.bias": top}
    for i, k in enumerate(depths):
        before = sum(depths[:i])
        for j in range(k):
            d = before + j + 1
            for p in ("norm.weight", "norm.bias", "fc.weight", "fc.bias"):
                exp[f"stages.{i}.blocks.{j}.{p}"] = top - d
        d_down = before + 1 if down_first else before + k
        exp[f"stages.{i}.downsample.weight"] = exp[f"stages.{i}.downsample.bias"] = top - d_down
    for p in ("norm.weight", "norm.bias", "head.weight", "head.bias"):
        exp[p] = 0
    return exp


@pytest.mark.parametrize("down_first", [True, False])
def test_hierarchical_blocks_are_numbered_across_stages(down_first):
    depths = (2, 2, 3, 2)
    got = lr_exponents(Hier(depths, down_first))
    assert got == expected_hier(depths, down_first)
    # the stem trains at RATE ** 10 (every block counted), not RATE ** 5 (stages counted)
    assert got["stem.weight"] == 10


def test_a_hierarchical_depth_regex_numbers_blocks_across_stages():
    depths = (2, 2, 3, 2)
    got = lr_exponents(Hier(depths), depth=r"stages\.(\d+)\.blocks\.(\d+)\.")
    exp = expected_hier(depths, True)
    # with a regex the stage's downsampling matches no block: after the first block -> top
    for i in range(4):
        exp[f"stages.{i}.downsample.weight"] = exp[f"stages.{i}.downsample.bias"] = (
            10 if i == 0 else 0)
    assert got == exp


class Sublayers(nn.Module):
    """T5's block: a list of *different* sublayers (attention, feed-forward), not stages."""

    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
                                    Block()])


class T5ish(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.block = nn.ModuleList([Sublayers() for _ in range(n)])
        self.final = nn.LayerNorm(4)


class MlpBlock(nn.Module):
    """A block whose MLP is a Sequential of single layers (mlp.0, mlp.2): not stages either."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))


class MlpNet(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.blocks = nn.ModuleList([MlpBlock() for _ in range(n)])
        self.head = nn.Linear(4, 2)


@pytest.mark.parametrize("model, container", [(T5ish(), "block"), (MlpNet(), "blocks")])
def test_inner_lists_of_sublayers_or_single_layers_are_not_stages(model, container):
    got = lr_exponents(model)
    top = 3 + (1 if isinstance(model, MlpNet) else 1)
    for name, e in got.items():
        if name.startswith(container + "."):
            i = int(name.split(".")[1])
            assert e == top - (i + 1), name
    if isinstance(model, T5ish):
        assert got["embed.weight"] == top and got["final.weight"] == 0


class Tower(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([Block() for _ in range(n)])
        self.post_norm = nn.LayerNorm(4)


class TwoTowers(nn.Module):
    """CLIP's layout: a text and a vision tower of different depths, projections, a scale."""

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.text_model = Tower(2)
        self.vision_model = Tower(4)
        self.text_projection = nn.Linear(4, 2, bias=False)


def test_towers_are_numbered_each_on_its_own():
    got = lr_exponents(TwoTowers())
    # EVA-CLIP: each tower's last block is one step below the top, its embeddings L_t + 1
    for tower, n in (("text_model", 2), ("vision_model", 4)):
        assert got[f"{tower}.embed.weight"] == n + 1
        for i in range(n):
            assert got[f"{tower}.encoder.layers.{i}.fc.weight"] == n - i
        assert got[f"{tower}.post_norm.weight"] == 0
    assert got["logit_scale"] == 0 and got["text_projection.weight"] == 0


class TimmLike(nn.Module):
    """A timm VisionTransformer's layout and its group_matcher (copied semantics: stem, blocks,
    the final norm joining the last block via MATCH_PREV_GROUP)."""

    def __init__(self, n=3):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = nn.Conv2d(3, 4, 2)
        self.blocks = nn.Sequential(*[Block() for _ in range(n)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def group_matcher(self, coarse=False):
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])


def test_a_models_group_matcher_is_followed_exactly():
    got = lr_exponents(TimmLike())
    # timm: stem = layer 0, block i = layer i + 1, norm joins block 2 (layer 3), head unmatched
    # -> inf -> layer 4; scale = rate ** (4 - layer)
    assert got["cls_token"] == got["patch_embed.weight"] == 4
    for i in range(3):
        assert got[f"blocks.{i}.fc.weight"] == 3 - i
    assert got["norm.weight"] == 1 and got["head.weight"] == 0
    # without group_matcher the BEiT/MAE convention puts the final norm with the head
    plain = TimmLike()
    plain.group_matcher = None
    assert lr_exponents(plain)["norm.weight"] == 0


def test_group_matcher_through_ddp_style_wrappers_and_depth_overrides_it():
    model = nn.DataParallel(TimmLike())
    assert lr_exponents(model)["norm.weight"] == 1
    got = lr_exponents(TimmLike(), depth=r"blocks\.(\d+)\.")
    assert got["norm.weight"] == 0 and got["blocks.0.fc.weight"] == 3


def test_min_scale_floors_the_multiplier():
    groups = paramwise.param_groups(Hier(), [paramwise.layer_decay(0.5, min_scale=0.05)], lr=1.0)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["stem.weight"] == 0.05  # 0.5 ** 10 < 0.05
    assert lr["stages.3.blocks.1.fc.weight"] == 0.5 and lr["head.weight"] == 1.0
    assert lr["stages.2.blocks.0.fc.weight"] == 0.05  # depth 5 of 10: 0.5 ** 5 < 0.05
    assert lr["stages.2.blocks.2.fc.weight"] == 0.5 ** 3  # depth 7 of 10: above the floor


def test_bad_layer_decay_arguments():
    with pytest.raises(ParamwiseError, match=r"min_scale=2.0\) must lie in \[0, 1\]"):
        paramwise.layer_decay(0.5, min_scale=2.0)
    with pytest.raises(ParamwiseError, match=r"depth=3\) is neither a regex nor a callable"):
        paramwise.layer_decay(0.5, depth=3)
    with pytest.raises(ParamwiseError, match=r"captured \['0', 'downsample'\] from 'stages\.0\.down"):
        lr_exponents(Hier(), depth=r"stages\.(\d+)\.(\w+)\.")
    with pytest.raises(ParamwiseError, match="layer_decay found no blocks"):
        lr_exponents(nn.Linear(2, 2))


def test_explain_names_the_depth_and_config_takes_min_scale():
    model = Hier()
    text = paramwise.explain(model, "stem.weight", rules=[paramwise.layer_decay(0.5)], lr=1.0)
    assert "rule 0 ('layer_decay depth 0/10')" in text and "lr_mult=0.000976562" in text
    opt = paramwise.from_config(model, {"optimizer": "sgd", "lr": 1.0, "rules": [
        {"layer_decay": {"rate": 0.5, "min_scale": 0.05}}]})
    assert min(g["lr"] for g in opt.param_groups) == 0.05


def test_a_depth_regex_that_could_hang_is_refused_and_selector_errors_name_the_rule():
    with pytest.raises(ParamwiseError, match=r"layer_decay depth '\(a\+\)\+b\(\\\\d\)' is refused: "
                       r"a repeat .* exponential time; capture the index with a simple regex"):
        lr_exponents(Hier(), depth=r"(a+)+b(\d)")
    with pytest.raises(ParamwiseError, match=r"layer_decay depth '\(\\\\d\+' is not a valid regex"):
        lr_exponents(Hier(), depth=r"(\d+")
    with pytest.raises(ParamwiseError, match=r"^rule 1 \('<lambda>'\): selector callable"):
        paramwise.param_groups(Hier(), [paramwise.Rule("all", lr=0.1),
                                        paramwise.Rule(lambda n, p, m: "False", lr=0.2)])
    long = " | ".join(f"stages.0.blocks.0.fc.{i}" for i in range(500))
    with pytest.raises(ParamwiseError, match=r"\(chars\)|\d+ chars\)'?\) matched no parameter"):
        paramwise.param_groups(Hier(), [paramwise.Rule(long, lr=0.2)], lr=1.0)
