"""Build SAM models by architecture name, with seeded random weights or from a checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configs import CONFIGS, SamConfig
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

logger = logging.getLogger(__name__)

_KEYS_SHOWN = 10


def build_sam(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    meta: bool = False,
) -> Sam:
    """Build a SAM architecture by name, in eval mode.

    Args:
        name: architecture in ``CONFIGS``: "vit_b", "vit_l", "vit_h", "vit_t" (MobileSAM) or a
            tiny test config such as "vit_tiny_test".
        checkpoint: optional weights: a path to a state-dict file, or anything
            ``composer.hub.load_checkpoint`` resolves (e.g. a weights name). Loaded with
            ``map_location="cpu"``, ``weights_only=True`` and ``strict=True``.
        device: device the returned model lives on: "cpu", "cuda", "cuda:N", "mps" or a
            ``torch.device``; checked before any weights are read.
        seed: seed of the random initialisation when no checkpoint is given. The global RNG
            state is left untouched.
        meta: build on the meta device (shapes only, no memory) to inspect parameter names
            and shapes of large models; ``device`` and ``checkpoint`` must be left unset.

    Returns:
        The ``Sam`` model in eval mode.

    Raises:
        ValueError: unknown ``name``; a device that is unknown or not usable here (no CUDA,
            an index past the last GPU); ``meta`` combined with a checkpoint or device; or a
            checkpoint whose keys or shapes do not fit the architecture (the message names
            the missing, unexpected and mis-shaped keys).
        FileNotFoundError: ``checkpoint`` is a path that does not exist and no hub is
            available to resolve it.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown SAM architecture {name!r}; valid names: {sorted(CONFIGS)}")
    return build_sam_from_config(CONFIGS[name], checkpoint, device=device, seed=seed, meta=meta)


def _registry_builder(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike[str] | None = None, **kwargs: Any) -> Sam:
        return build_sam(name, checkpoint, **kwargs)

    build.__name__ = build.__qualname__ = f"build_sam_{name}"
    build.__doc__ = f"``build_sam({name!r}, checkpoint, **kwargs)``: the official registry's builder."
    return build


#: The official packages' ``sam_model_registry``, for code ported from them:
#: ``sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`` is
#: ``build_sam("vit_b", checkpoint=...)``. ``"default"`` is ViT-H, as in ``segment_anything``;
#: ``"vit_t"`` is MobileSAM's (``mobile_sam``'s registry). Each builder also takes
#: :func:`build_sam`'s keyword arguments (``device``, ``seed``, ``meta``).
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": _registry_builder("vit_h"),
    **{name: _registry_builder(name) for name in ("vit_h", "vit_l", "vit_b", "vit_t")},
}


def build_sam_from_config(
    config: SamConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    meta: bool = False,
) -> Sam:
    """Like :func:`build_sam` but from an explicit :class:`SamConfig`."""
    if not isinstance(config, SamConfig):
        raise TypeError(f"config must be a SamConfig, got {type(config).__name__}")
    # before the (possibly long) load, so a device this machine lacks fails at once and says why
    device = check_device(device)
    if meta:
        if checkpoint is not None:
            raise ValueError("meta=True builds a model without storage; it cannot load weights")
        if device.type != "cpu":
            raise ValueError(f"meta=True ignores device; got device={device!r}")
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = _construct(config)
        return model.eval()

    if checkpoint is not None:
        model = _construct_for_loading(config)
        _load_weights(model, checkpoint, config.name)
        logger.info("built SAM %s from %s", config.name, checkpoint)
    else:
        model = _construct_seeded(config, seed)
        logger.info("built SAM %s with random weights (seed %d)", config.name, seed)
    return model.to(device).eval()


def check_device(
    device: str | torch.device, choices: str = "cpu, cuda, cuda:N or mps",
    cpu_hint: str = "device='cpu'",
) -> torch.device:
    """``device`` as a ``torch.device`` this machine can use (``load_segmenter`` resolves
    "auto" first and checks the rest here).

    Args:
        device: "cpu", "cuda", "cuda:N", "mps" (any case, surrounding spaces allowed) or a
            ``torch.device``.
        choices: the names the caller accepts, for the error of an unknown one.
        cpu_hint: how the caller asks for the CPU, for the error of a missing accelerator.

    Raises:
        ValueError: an unknown or unsupported device name, or an accelerator torch cannot use
            here (the message says why: no CUDA in this torch build, no visible GPU, an index
            past the last GPU, no MPS).
    """
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"unknown device {device!r}: use {choices}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no GPU"
            raise ValueError(f"device {device!r} asked for, but {why}; use {cpu_hint}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}: use {choices}")
    return dev


def _construct_seeded(config: SamConfig, seed: int) -> Sam:
    # Built on the CPU so the seeded weights are the same whatever the target device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _construct(config)


def _construct_for_loading(config: SamConfig) -> Sam:
    """A CPU model whose every checkpointed tensor is NaN, to be overwritten by a checkpoint.

    Random initialisation of ViT-H takes seconds and is thrown away by the load, so the tree
    is built on the meta device and given uninitialised storage instead. Only the pixel
    statistics are not in a checkpoint; a model with other non-persistent buffers (TinyViT's
    index tables) is initialised normally.
    """
    with torch.device("meta"):
        model = _construct(config)
    derived = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in module._non_persistent_buffers_set
    }
    if derived - {"pixel_mean", "pixel_std"}:
        return _construct_seeded(config, 0)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        model.pixel_mean.copy_(torch.tensor(config.pixel_mean).view(-1, 1, 1))
        model.pixel_std.copy_(torch.tensor(config.pixel_std).view(-1, 1, 1))
    return model


def _construct(config: SamConfig) -> Sam:
    """Assemble the module tree of ``config`` (on the current default device)."""
    grid = config.image_embedding_size
    dim = config.prompt_embed_dim
    prompt_encoder = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    return Sam(
        image_encoder=_image_encoder(config),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )


def _image_encoder(config: SamConfig) -> nn.Module:
    if config.encoder_type == "tiny_vit":
        # Imported here so the ViT models work without the TinyViT module.
        from .tiny_vit import TinyViT

        tv = config.tiny_vit
        if tv is None:  # guarded by SamConfig, repeated for the type checker
            raise ValueError(f"config {config.name!r} has no tiny_vit settings")
        encoder: nn.Module = TinyViT(
            img_size=config.img_size,
            in_chans=3,
            num_classes=1000,
            embed_dims=list(tv.embed_dims),
            depths=list(tv.depths),
            num_heads=list(tv.num_heads),
            window_sizes=list(tv.window_sizes),
            mlp_ratio=tv.mlp_ratio,
            drop_rate=tv.drop_rate,
            drop_path_rate=tv.drop_path_rate,
            use_checkpoint=False,
            mbconv_expand_ratio=tv.mbconv_expand_ratio,
            local_conv_size=tv.local_conv_size,
            layer_lr_decay=tv.layer_lr_decay,
        )
        return encoder
    return ImageEncoderViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=3,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=config.mlp_ratio,
        out_chans=config.out_chans,
        qkv_bias=True,
        norm_layer=_LayerNormEps6,
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
    )


class _LayerNormEps6(nn.LayerNorm):
    """``nn.LayerNorm`` with eps 1e-6, the ViT encoder's norm (a class, not a partial, so the
    module tree prints and pickles cleanly)."""

    def __init__(self, normalized_shape: int, **kwargs: Any) -> None:
        kwargs.setdefault("eps", 1e-6)
        super().__init__(normalized_shape, **kwargs)


# ------------------------------------------------------------------ checkpoint loading
def _load_weights(model: Sam, checkpoint: str | os.PathLike[str], arch: str) -> None:
    """Load ``checkpoint`` into ``model`` strictly, through composer.hub when it exists."""
    hub_load: Callable[..., Any] | None
    try:
        from ..hub import load_checkpoint as hub_load
    except ImportError as err:
        logger.debug(
            "composer.hub.load_checkpoint unavailable (%s); loading the file directly", err
        )
        hub_load = None
    if hub_load is not None:
        from ..hub import resolve_checkpoint
        from .composer_tiny import register_weights

        # the packaged weights' name is known (and refused for a SAM arch by name) even when
        # nothing imported composer_tiny yet
        register_weights()
        # errors of finding the file (not cached, no such file) are not "does not fit" errors
        checkpoint = resolve_checkpoint(checkpoint, arch=arch)
    try:
        if hub_load is not None:
            hub_load(model, checkpoint)
        else:
            _load_file_strict(model, checkpoint)
    except ValueError as err:
        from ..hub.checkpoint import UnreadableCheckpoint

        if f"{arch!r}" in str(err) or isinstance(err, UnreadableCheckpoint):
            raise  # already names the architecture, or the file cannot be read at all
        detail = str(err)
        repeated = f"checkpoint {os.fspath(checkpoint)} does not fit "
        if detail.startswith(repeated):  # the hub's message names the file already
            detail = detail[len(repeated):]
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint)} does not fit SAM architecture {arch!r}: {detail}"
        ) from err
    # Storage left NaN by _construct_for_loading means a tensor the load did not fill.
    unfilled = [
        name
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and t.numel() and bool(t.reshape(-1)[0].isnan())
    ]
    if unfilled:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint)} left {len(unfilled)} tensors of SAM "
            f"architecture {arch!r} unloaded or NaN: {unfilled[:_KEYS_SHOWN]}"
        )


def _load_file_strict(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state-dict file into ``model`` with ``strict=True`` (used without composer.hub).

    The file is read with ``map_location="cpu"`` and ``weights_only=True`` (a checkpoint is
    untrusted input). A ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state dict, or its keys or shapes do not fit ``model``
            (the message names up to 10 missing, unexpected and mis-shaped keys each).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"checkpoint file {file} not found (weights names need composer.hub to resolve)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = _unwrap_state_dict(state, file)
    _check_state_dict(model, state)
    model.load_state_dict(state, strict=True)


def _unwrap_state_dict(state: Any, file: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and not any(
                isinstance(v, torch.Tensor) for v in state.values()
            ):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{file} does not hold a state dict of tensors")
    return state


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys, if any.

    Args:
        model: the module to be loaded.
        state: the state dict to load into it.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if keys:
            more = f" (+{len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else ""
            parts.append(f"{len(keys)} {label} keys: {keys[:_KEYS_SHOWN]}{more}")
    raise ValueError(f"state dict does not fit {type(model).__name__}: " + "; ".join(parts))
