"""The presets on real architectures: ``no_decay()`` and ``layer_decay(rate)`` against the papers'.

Each family builds a tiny ``transformers`` model from a config (no download, CPU) and states, in a
few explicit lines over the model's own parameter names, what the family's reference
implementation does:

* which parameters are left undecayed (timm ``param_groups_weight_decay``, the official Swin
  ``set_weight_decay``, open_clip's ``exclude`` lambda, DINOv2's ``get_params_groups_with_decay``,
  Google BERT's ``exclude_from_weight_decay``, minGPT's ``configure_optimizers``, ...);
* the layer-decay exponent ``e`` of each parameter (BEiT ``get_num_layer_for_vit``, MAE
  ``lrd.get_layer_id_for_vit``, ELECTRA ``_get_layer_lrs``, SimMIM ``get_swin_layer``, timm's
  ``group_matcher``s, EVA-CLIP ``get_num_layer_for_transformer``): depth ``d`` is 0 for what comes
  before the blocks, ``i + 1`` for block ``i``, ``L + 1`` for what comes after, and
  ``e = (L + 1) - d``, so the head trains at the base lr, the last block at ``rate``, the
  embeddings at ``rate ** (L + 1)``.

Where paramwise's decided semantics part from a reference, the expectation follows paramwise and
the line says so (``DIFFERS FROM``).

The expectations are never paramwise's output pasted back: they are computed here from the
names. A tied tensor (GPT-2 / BERT-MLM / T5 embeddings and LM head) is reported once, under its
first name in ``named_parameters(remove_duplicate=False)`` order; it is undecayed when any of its
names is, and takes its first name's depth.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import paramwise  # noqa: E402

RATE = 0.5
WD = 0.1


# --------------------------------------------------------------------------------------------
# helpers


def _block(name: str, container: str) -> int | None:
    """The index ``i`` when ``name`` lies in ``f"{container}.{i}."``, else None."""
    m = re.match(re.escape(container) + r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _beit(d: int, n_blocks: int) -> int:
    """BEiT / MAE exponent: ``layer_decay ** (num_layers + 1 - layer_id)`` with
    ``num_layers = len(blocks) + 1``, i.e. the head (d = L + 1) gets 0, the last block 1."""
    assert 0 <= d <= n_blocks + 1
    return n_blocks + 1 - d


@contextlib.contextmanager
def _quiet_transformers():
    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(old)


# --------------------------------------------------------------------------------------------
# BERT (BertModel, BertForMaskedLM)

BERT_LAYERS = 2


def _bert_config():
    return transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=BERT_LAYERS, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32)


def bert_no_decay(name: str, p) -> bool:
    # Google BERT optimization.py (and ELECTRA's): exclude_from_weight_decay=["LayerNorm",
    # "layer_norm", "bias"], each a re.search on the name. cls.predictions.bias is caught too.
    if any(re.search(pat, name) for pat in ("LayerNorm", "layer_norm", "bias")):
        return True
    # DIFFERS FROM Google BERT / HF Trainer, which decay the word/position/token_type tables:
    # paramwise gives nn.Embedding the embedding role (minGPT configure_optimizers' blacklist).
    return name.endswith(("word_embeddings.weight", "position_embeddings.weight",
                          "token_type_embeddings.weight"))


def bert_exponent(name: str) -> int:
    # ELECTRA _get_layer_lrs: "/embeddings/" -> depth 0, "encoder/layer_i/" -> i + 1,
    # "task_specific/" (here: pooler, cls.*) on top. Exponent as BEiT/MAE (ELECTRA itself uses
    # n_layers + 2 - depth, one more for every layer below the head).
    body = name.removeprefix("bert.")
    if body.startswith("embeddings."):
        d = 0
    elif (i := _block(body, "encoder.layer")) is not None:
        d = i + 1
    else:  # pooler.*, cls.predictions.* (the decoder weight is the tied word embedding)
        d = BERT_LAYERS + 1
    return _beit(d, BERT_LAYERS)


# --------------------------------------------------------------------------------------------
# GPT-2

GPT2_LAYERS = 2


def gpt2_no_decay(name: str, p) -> bool:
    # minGPT configure_optimizers: every bias, and the weights of LayerNorm (ln_1, ln_2, ln_f)
    # and nn.Embedding (wte, wpe) are not decayed; Linear (here HF's Conv1D) weights are.
    # (nanoGPT's later "dim >= 2 decays" rule would decay wte/wpe: paramwise follows minGPT.)
    # lm_head.weight is wte under a second name, so it is undecayed with it.
    return (name.endswith(".bias")
            or re.search(r"\.ln_(1|2|f)\.", name) is not None
            or name.startswith(("transformer.wte.", "transformer.wpe.")))


def gpt2_exponent(name: str) -> int:
    # BEiT/MAE depth: token and position embeddings 0, block h.i -> i + 1, ln_f (and the head,
    # tied to wte, so reported as wte) on top.
    if name.startswith(("transformer.wte.", "transformer.wpe.")):
        d = 0
    elif (i := _block(name, "transformer.h")) is not None:
        d = i + 1
    else:
        d = GPT2_LAYERS + 1
    return _beit(d, GPT2_LAYERS)


# --------------------------------------------------------------------------------------------
# Llama, Mixtral (decoder-only LMs with RMSNorm, no biases; untied head)

LLAMA_LAYERS = 2


def llama_no_decay(name: str, p) -> bool:
    # minGPT configure_optimizers / OLMo get_param_groups (decay_norm_and_bias=False,
    # decay_embeddings=False): norm weights (input_layernorm, post_attention_layernorm,
    # model.norm, all RMSNorm) and the token embedding are not decayed. Every projection is,
    # including the untied lm_head, Mixtral's router (mlp.gate) and its fused expert tensors
    # mlp.experts.gate_up_proj (E, 2F, D) / down_proj (E, D, F): stacked Linear weights.
    return (re.search(r"(^|\.)(input_layernorm|post_attention_layernorm|norm)\.weight$", name)
            is not None
            or name == "model.embed_tokens.weight")


def llama_exponent(name: str) -> int:
    # BEiT/MAE depth over model.layers: embed_tokens 0, layer i -> i + 1, model.norm and
    # lm_head on top.
    if name.startswith("model.embed_tokens."):
        d = 0
    elif (i := _block(name, "model.layers")) is not None:
        d = i + 1
    else:
        d = LLAMA_LAYERS + 1
    return _beit(d, LLAMA_LAYERS)


# --------------------------------------------------------------------------------------------
# T5 (encoder and decoder: two towers of different depths, all embeddings tied to `shared`)

T5_LAYERS = {"encoder": 2, "decoder": 3}


def t5_no_decay(name: str, p) -> bool:
    # LM convention (minGPT blacklist: norms and nn.Embedding; HF Trainer: "layer_norm"):
    # T5LayerNorm weights, the shared token embedding (= encoder/decoder.embed_tokens = lm_head)
    # and relative_attention_bias (an nn.Embedding) are not decayed. T5 has no biases.
    # (The T5 paper trains with Adafactor and no weight decay at all: no reference to follow.)
    return ("layer_norm" in name
            or name.endswith(("shared.weight", "embed_tokens.weight", "lm_head.weight"))
            or "relative_attention_bias" in name)


def t5_exponent(name: str) -> int:
    # Each tower numbered on its own (EVA-CLIP convention for two-tower models).
    if name == "shared.weight":
        # outside both towers and an embedding: the deepest exponent, max_t L_t + 1
        return max(T5_LAYERS.values()) + 1
    tower, body = name.split(".", 1)
    n = T5_LAYERS[tower]
    if body.startswith("embed_tokens."):
        d = 0  # tied to shared: never a reported name
    elif (i := _block(body, "block")) is not None:
        d = i + 1
    else:  # final_layer_norm
        d = n + 1
    return _beit(d, n)


# --------------------------------------------------------------------------------------------
# ViT

VIT_LAYERS = 2


def vit_no_decay(name: str, p) -> bool:
    # timm param_groups_weight_decay: ndim <= 1 or name.endswith(".bias") or name in
    # model.no_weight_decay() = {pos_embed, cls_token, dist_token} (BEiT and MAE lrd.py alike).
    # The patch-embedding Conv2d weight is decayed.
    return (p.ndim <= 1 or name.endswith(".bias")
            or name in {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"})


def vit_exponent(name: str) -> int:
    # BEiT get_num_layer_for_vit / MAE get_layer_id_for_vit: cls_token, pos_embed, patch_embed
    # -> 0; blocks.i -> i + 1; everything else (final norm, head) -> L + 1.
    if name.startswith("vit.embeddings."):
        d = 0
    elif (i := _block(name, "vit.layers")) is not None:
        d = i + 1
    else:
        d = VIT_LAYERS + 1
    return _beit(d, VIT_LAYERS)


# --------------------------------------------------------------------------------------------
# DINOv2

DINO_LAYERS = 2


def dinov2_no_decay(name: str, p) -> bool:
    # facebookresearch/dinov2 get_params_groups_with_decay: wd_multiplier 0 when
    # name.endswith(".bias") or "norm" in name or "gamma" in name (LayerScale's gamma; HF
    # calls it layer_scale{1,2}.lambda1).
    if name.endswith(".bias") or "norm" in name or "layer_scale" in name:
        return True
    # DIFFERS FROM the DINOv2 repo, which decays cls_token/mask_token/pos_embed: paramwise
    # follows timm's no_weight_decay() tokens here.
    return name in {"embeddings.cls_token", "embeddings.mask_token",
                    "embeddings.position_embeddings"}


def dinov2_exponent(name: str) -> int:
    # dinov2 get_vit_lr_decay_rate: pos_embed/patch_embed/mask_token/cls_token -> 0,
    # blocks.i -> i + 1, else (final norm) num_layers + 1; rate ** (num_layers + 1 - layer_id).
    if name.startswith("embeddings."):
        d = 0
    elif (i := _block(name, "encoder.layer")) is not None:
        d = i + 1
    else:
        d = DINO_LAYERS + 1
    return _beit(d, DINO_LAYERS)


# --------------------------------------------------------------------------------------------
# Swin (hierarchical: stages of blocks, a patch-merging `downsample` at the END of each stage)

SWIN_DEPTHS = (2, 2, 4, 2)


def swin_no_decay(name: str, p) -> bool:
    # Official Swin set_weight_decay(model, skip_list={"absolute_pos_embed"},
    # skip_keywords={"relative_position_bias_table"}): len(shape) == 1 or name.endswith(".bias")
    # or in the skip list or containing a keyword. HF's absolute_pos_embed is
    # swin.embeddings.position_embeddings. downsample.reduction (Linear) is decayed.
    return (p.ndim == 1 or name.endswith(".bias")
            or name == "swin.embeddings.position_embeddings"
            or "relative_position_bias_table" in name)


def swin_exponent(name: str) -> int:
    # SimMIM get_swin_layer: patch_embed -> 0; layers.i.blocks.j -> sum(depths[:i]) + j + 1
    # (blocks numbered across stages); layers.i.downsample (reduction/norm) ->
    # sum(depths[:i + 1]), the stage's last block; everything else (final norm, head) -> L + 1.
    n = sum(SWIN_DEPTHS)
    m = re.match(r"swin\.encoder\.layers\.(\d+)\.(?:blocks\.(\d+)|downsample)\.", name)
    # A block's relative_position_bias_table (an embedding by role) stays at its block's depth,
    # as SimMIM and BEiT keep per-block tables: only embeddings outside the blocks are depth 0.
    if name.startswith("swin.embeddings."):
        # patch embedding, its norm and absolute_pos_embed. (SimMIM's name test only catches
        # patch_embed; its absolute_pos_embed would fall to the top. BEiT: pos_embed -> 0.)
        d = 0
    elif m:
        i = int(m.group(1))
        d = sum(SWIN_DEPTHS[:i]) + int(m.group(2)) + 1 if m.group(2) else sum(SWIN_DEPTHS[:i + 1])
    else:
        d = n + 1
    return _beit(d, n)


# --------------------------------------------------------------------------------------------
# ConvNeXt (hierarchical: a `downsampling_layer` at the START of stages 1..3)

CONVNEXT_DEPTHS = (2, 2, 3, 2)


def convnext_no_decay(name: str, p) -> bool:
    # ConvNeXt's main.py builds the optimizer with timm (param_groups_weight_decay):
    # ndim <= 1 or .bias -> LayerNorms, biases and the layer-scale gamma
    # (layer_scale_parameter). Stem, depthwise, downsampling and pointwise weights are decayed.
    return p.ndim <= 1 or name.endswith(".bias")


def convnext_exponent(name: str) -> int:
    # timm ConvNeXt.group_matcher: stem -> 0; (r"^stages\.(\d+)\.downsample", (0,)) shares the
    # key of the stage's first block; stages.i.blocks.j numbered across stages; head on top.
    # (The ConvNeXt repo's get_num_layer_for_convnext instead folds [3, 3, 27, 3] into 12 groups.)
    n = sum(CONVNEXT_DEPTHS)
    m = re.match(r"convnext\.encoder\.stages\.(\d+)\.(?:layers\.(\d+)|downsampling_layer)\.", name)
    if name.startswith("convnext.embeddings."):
        d = 0
    elif m:
        i, j = int(m.group(1)), int(m.group(2) or 0)  # downsampling_layer: the first block's
        d = sum(CONVNEXT_DEPTHS[:i]) + j + 1
    else:  # convnext.layernorm, classifier
        d = n + 1
    return _beit(d, n)


# --------------------------------------------------------------------------------------------
# ResNet (hierarchical, bottleneck blocks; BatchNorm)

RESNET_DEPTHS = (1, 2, 1, 1)


def resnet_no_decay(name: str, p) -> bool:
    # timm param_groups_weight_decay (ndim <= 1 or .bias): every BatchNorm weight and bias;
    # conv and fc weights decayed (as "Bag of Tricks" no-bias-decay).
    return p.ndim <= 1 or name.endswith(".bias")


def resnet_exponent(name: str) -> int:
    # timm ResNet.group_matcher: stem (conv1|bn1) -> 0, blocks r"^layer(\d+)\.(\d+)" numbered
    # across stages, fc on top. The shortcut lives inside a stage's first block.
    n = sum(RESNET_DEPTHS)
    m = re.match(r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", name)
    if name.startswith("resnet.embedder."):
        d = 0
    elif m:
        d = sum(RESNET_DEPTHS[:int(m.group(1))]) + int(m.group(2)) + 1
    else:  # classifier
        d = n + 1
    return _beit(d, n)


# --------------------------------------------------------------------------------------------
# wav2vec 2.0 (conv feature encoder, weight-normed positional conv, transformer; no head)

# Three transformer layers against two conv feature-encoder layers, as in the real models
# (7 conv, 12 or 24 transformer layers): the blocks are the larger list, encoder.layers.
W2V_LAYERS = 3


def wav2vec2_no_decay(name: str, p) -> bool:
    # HF Trainer get_decay_parameter_names: biases and norm layers (feature-extractor GroupNorm,
    # LayerNorms) are not decayed. Beyond it (fairseq decays everything uniformly), paramwise
    # also leaves: masked_spec_embed, the learned mask embedding (1-D, "embed");
    # and weight norm's magnitude g (parametrizations.weight.original0, shape (1, 1, K)), a
    # per-tap gain (Salimans & Kingma), while the direction v (original1) is decayed.
    return (name.endswith(".bias") or "layer_norm" in name or name == "masked_spec_embed"
            or name.endswith("parametrizations.weight.original0"))


def wav2vec2_exponent(name: str) -> int:
    # BEiT depth over encoder.layers; everything registered before the first block (mask
    # embedding, conv feature encoder, projection, positional conv, the pre-block
    # encoder.layer_norm) is depth 0. There is nothing after the blocks, so the deepest depth
    # present is L and the last block trains at the base lr, as timm's
    # param_groups_layer_decay does (layer_max = the largest layer id present).
    if (i := _block(name, "encoder.layers")) is not None:
        d = i + 1
    else:
        assert name == "masked_spec_embed" or name.startswith(
            ("feature_extractor.", "feature_projection.", "encoder.pos_conv_embed.",
             "encoder.layer_norm.")), name
        d = 0
    return W2V_LAYERS - d


# --------------------------------------------------------------------------------------------
# CLIP (text and vision towers of different depths; logit_scale and projections outside both)

CLIP_LAYERS = {"text_model": 2, "vision_model": 3}


def clip_no_decay(name: str, p) -> bool:
    # open_clip main.py: exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or
    # "bias" in n or "logit_scale" in n. HF's norms (layer_norm1/2, pre_layrnorm,
    # post_layernorm, final_layer_norm) are 1-D, so ndim < 2 covers them, class_embedding (1-D)
    # and logit_scale (0-d). patch_embedding is a Conv2d weight (open_clip's conv1): decayed, as
    # are both projections.
    if p.ndim < 2 or "bias" in name or "logit_scale" in name:
        return True
    # DIFFERS FROM open_clip, which decays its 2-D token_embedding and positional_embedding:
    # paramwise gives nn.Embedding tables the embedding role.
    return name.endswith(("token_embedding.weight", "position_embedding.weight"))


def clip_exponent(name: str) -> int:
    # EVA-CLIP: each tower gets its own layer decay (a tower's top block e = 1, its embeddings
    # e = L_t + 1, its post-block norm e = 0); parameters outside the towers (logit_scale,
    # visual_projection, text_projection) are in EVA-CLIP's plain group: e = 0.
    tower, _, body = name.partition(".")
    if tower not in CLIP_LAYERS:
        return 0
    n = CLIP_LAYERS[tower]
    if body.startswith(("embeddings.", "pre_layrnorm.")):
        # token/position/patch/class embeddings and the vision tower's pre-block norm: depth 0.
        # (EVA-CLIP's name list would send open_clip's class_embedding and ln_pre to the top.)
        d = 0
    elif (i := _block(body, "encoder.layers")) is not None:
        d = i + 1
    else:  # final_layer_norm / post_layernorm
        d = n + 1
    return _beit(d, n)


# --------------------------------------------------------------------------------------------
# the zoo


def _build(family: str):
    T = transformers
    if family in ("bert", "bert_mlm"):
        return (T.BertModel if family == "bert" else T.BertForMaskedLM)(_bert_config())
    if family == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=50, n_embd=16, n_layer=GPT2_LAYERS, n_head=2, n_positions=32,
            bos_token_id=0, eos_token_id=0))
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=LLAMA_LAYERS, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=32))
    if family == "mixtral":
        return T.MixtralForCausalLM(T.MixtralConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=LLAMA_LAYERS, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=32, num_local_experts=4))
    if family == "t5":
        return T.T5ForConditionalGeneration(T.T5Config(
            vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_heads=2,
            num_layers=T5_LAYERS["encoder"], num_decoder_layers=T5_LAYERS["decoder"]))
    if family == "vit":
        return T.ViTForImageClassification(T.ViTConfig(
            hidden_size=16, num_hidden_layers=VIT_LAYERS, num_attention_heads=2,
            intermediate_size=32, image_size=32, patch_size=8, num_labels=3))
    if family == "dinov2":
        return T.Dinov2Model(T.Dinov2Config(
            hidden_size=16, num_hidden_layers=DINO_LAYERS, num_attention_heads=2, mlp_ratio=2,
            image_size=32, patch_size=8))
    if family == "swin":
        return T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=2, embed_dim=8, depths=list(SWIN_DEPTHS),
            num_heads=[1, 1, 2, 2], window_size=2, num_labels=3, use_absolute_embeddings=True))
    if family == "convnext":
        return T.ConvNextForImageClassification(T.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=list(CONVNEXT_DEPTHS), num_labels=3))
    if family == "resnet":
        return T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=list(RESNET_DEPTHS),
            num_labels=3))
    if family == "wav2vec2":
        return T.Wav2Vec2Model(T.Wav2Vec2Config(
            hidden_size=16, num_hidden_layers=W2V_LAYERS, num_attention_heads=2,
            intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2))
    if family == "clip":
        return T.CLIPModel(T.CLIPConfig(
            text_config=dict(vocab_size=50, hidden_size=16,
                             num_hidden_layers=CLIP_LAYERS["text_model"], num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=16,
                             bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=dict(hidden_size=16, num_hidden_layers=CLIP_LAYERS["vision_model"],
                               num_attention_heads=2, intermediate_size=32, image_size=32,
                               patch_size=8),
            projection_dim=8))
    raise KeyError(family)


@dataclass(frozen=True)
class Family:
    no_decay: Callable[[str, object], bool]  # (name, param) -> left undecayed by the reference
    exponent: Callable[[str], int]  # canonical name -> layer-decay exponent e


FAMILIES = {
    "bert": Family(bert_no_decay, bert_exponent),
    "bert_mlm": Family(bert_no_decay, bert_exponent),
    "gpt2": Family(gpt2_no_decay, gpt2_exponent),
    "llama": Family(llama_no_decay, llama_exponent),
    "mixtral": Family(llama_no_decay, llama_exponent),
    "t5": Family(t5_no_decay, t5_exponent),
    "vit": Family(vit_no_decay, vit_exponent),
    "dinov2": Family(dinov2_no_decay, dinov2_exponent),
    "swin": Family(swin_no_decay, swin_exponent),
    "convnext": Family(convnext_no_decay, convnext_exponent),
    "resnet": Family(resnet_no_decay, resnet_exponent),
    "wav2vec2": Family(wav2vec2_no_decay, wav2vec2_exponent),
    "clip": Family(clip_no_decay, clip_exponent),
}


@functools.cache
def model_of(family: str):
    with _quiet_transformers(), torch.device("cpu"):
        return _build(family)


def tensors(model) -> dict[str, tuple[object, list[str]]]:
    """canonical (first) name -> (tensor, all its names), over remove_duplicate=False order."""
    by_id: dict[int, tuple[object, list[str]]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), (p, []))[1].append(n)
    return {names[0]: (p, names) for p, names in by_id.values() if p.requires_grad}


def options_by_name(model, groups: list[dict]) -> dict[str, dict]:
    """name -> its group's options, checking every trainable tensor is in exactly one group."""
    canon = tensors(model)
    seen: dict[str, dict] = {}
    n_params = 0
    for g in groups:
        assert len(g["params"]) == len(g["param_names"]), "params / param_names out of step"
        n_params += len(g["params"])
        for name, p in zip(g["param_names"], g["params"]):
            assert name in canon, f"{name!r}: not a canonical (first) name of a trainable tensor"
            assert p is canon[name][0], f"{name!r}: param_names and params disagree"
            assert name not in seen, f"{name!r} is in two groups"
            seen[name] = {k: v for k, v in g.items() if k not in ("params", "param_names")}
    assert n_params == len(seen)
    missing = sorted(set(canon) - set(seen))
    assert not missing, f"trainable tensors in no group: {missing}"
    return seen


def expected_undecayed(model, family: str) -> set[str]:
    """Canonical names the reference leaves undecayed (any of a tied tensor's names counts)."""
    rule = FAMILIES[family].no_decay
    return {c for c, (p, names) in tensors(model).items() if any(rule(n, p) for n in names)}


def _diff(what: str, expected: set[str], got: set[str]) -> str:
    return (f"{what}: expected but not got {sorted(expected - got)}; "
            f"got but not expected {sorted(got - expected)}")


# --------------------------------------------------------------------------------------------
# tests

FAMILY_IDS = list(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_no_decay_follows_the_reference(family):
    model = model_of(family)
    groups = paramwise.param_groups(model, [paramwise.no_decay()], weight_decay=WD)
    opts = options_by_name(model, groups)
    assert {o["weight_decay"] for o in opts.values()} <= {0.0, WD}
    got = {n for n, o in opts.items() if o["weight_decay"] == 0.0}
    expected = expected_undecayed(model, family)
    assert got == expected, _diff("undecayed", expected, got)
    # the reference decays something in every family (guards against a vacuous pass)
    assert set(opts) - expected


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_layer_decay_follows_the_reference(family):
    model = model_of(family)
    groups = paramwise.param_groups(
        model, [paramwise.no_decay(), paramwise.layer_decay(RATE)], lr=1.0, weight_decay=WD)
    opts = options_by_name(model, groups)
    expected = {n: FAMILIES[family].exponent(n) for n in tensors(model)}
    got = {}
    for n, o in opts.items():
        e = round(-math.log(o["lr"], 1 / RATE))
        # lr is exactly rate ** e; anything else is reported as the raw exponent
        got[n] = e if o["lr"] == RATE ** e else -math.log(o["lr"], 1 / RATE)
    wrong = {n: (expected[n], got[n]) for n in expected if got[n] != expected[n]}
    shown = sorted(wrong.items())[:25]
    assert not wrong, (f"layer-decay exponent wrong for {len(wrong)} of {len(expected)} names "
                       "(expected, got): " + ", ".join(f"{n}: {v}" for n, v in shown))
    # not vacuous: the expectation spans bottom, blocks and top
    assert len(set(expected.values())) >= 3
    # layer_decay leaves no_decay's choice alone
    undecayed = {n for n, o in opts.items() if o["weight_decay"] == 0.0}
    want = expected_undecayed(model, family)
    assert undecayed == want, _diff("undecayed with layer_decay", want, undecayed)


TIED = {
    # family -> the names that must be one tensor (input embedding first)
    "gpt2": ("transformer.wte.weight", "lm_head.weight"),
    "bert_mlm": ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    "t5": ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
           "lm_head.weight"),
}


@pytest.mark.parametrize("family", list(TIED))
def test_tied_lm_builds_and_leaves_the_shared_embedding_undecayed(family):
    model = model_of(family)
    names = TIED[family]
    params = dict(model.named_parameters(remove_duplicate=False))
    shared = params[names[0]]
    assert all(params[n] is shared for n in names), "the zoo model is no longer tied"
    opt = paramwise.optimizer(model, "adamw", [paramwise.no_decay()], lr=1e-3, weight_decay=WD)
    holding = [g for g in opt.param_groups for p in g["params"] if p is shared]
    assert len(holding) == 1, f"the tied tensor is in {len(holding)} groups"
    assert holding[0]["weight_decay"] == 0.0
    # and nothing else of the model is listed twice
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(tensors(model))


def test_explain_names_the_embedding_role_on_gpt2_head_alias():
    model = model_of("gpt2")
    text = paramwise.explain(model, "lm_head.weight", rules=[paramwise.no_decay()],
                             weight_decay=WD)
    assert isinstance(text, str)
    header = text.splitlines()[0]
    # the roles are the tensor's (wte's embedding role reaches the head alias), not the Linear's
    assert re.search(r"\broles?\b.*\bembedding\b", header), text
