"""The model card: ``model_card.json`` beside every trained ``.keras`` model, the one reader of it.

The card records what a model was trained on and how (channels, tile size, settings, training
regions and their pixel size in metres, the encoder's start, scores), so that a model can be applied
to a new DEM the same way. The shipped model lives in ``cinderseg/pretrained/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cinderseg.core.errors import ConfigError, InputError

#: File name of the model card beside a trained ``.keras`` model.
MODEL_CARD = "model_card.json"
#: The U-Net shipped with cinderseg (rebuilt by ``make pretrained``), with its model card beside it.
PRETRAINED_MODEL = Path(__file__).resolve().parent.parent / "pretrained" / "model.keras"
#: The learned second stage shipped with the model (``vectorize.second_stage: pretrained``).
PRETRAINED_VERIFIER = PRETRAINED_MODEL.with_name("verifier.json")
#: The keyword naming :data:`PRETRAINED_MODEL` in ``predict.model``, ``train.initial_model`` and the
#: ``--model`` option of ``cinderseg predict``.
PRETRAINED_KEYWORD = "pretrained"
#: Keyword values of ``model.encoder_weights`` (where an encoder starts); anything else is a path to a
#: weights file.
WEIGHT_KEYWORDS: tuple[str, ...] = ("pretrained", "imagenet", "none")


def model_path(value: str | os.PathLike[str], *, key: str = "model") -> Path:
    """The model file a config value or ``--model`` names: ``pretrained`` is the shipped model.

    Raises ConfigError (naming ``key``) when the shipped model is asked for but missing.
    """
    if str(value).strip().lower() != PRETRAINED_KEYWORD:
        return Path(value)
    if not PRETRAINED_MODEL.is_file() or not card_path(PRETRAINED_MODEL).is_file():
        raise ConfigError(
            f"{key}: the shipped pretrained model is missing ({PRETRAINED_MODEL} and its "
            f"{MODEL_CARD}); rebuild it with `make pretrained`"
        )
    return PRETRAINED_MODEL


def verifier_path(value: str | os.PathLike[str], *, key: str = "vectorize.second_stage") -> Path | None:
    """The verifier file ``vectorize.second_stage`` names: None for 'none', the shipped one for
    'pretrained' (ConfigError naming ``key`` when it is missing), else the path as given."""
    word = str(value).strip().lower()
    if word == "none":
        return None
    if word != PRETRAINED_KEYWORD:
        return Path(value)
    if not PRETRAINED_VERIFIER.is_file():
        raise ConfigError(
            f"{key}: the shipped verifier is missing ({PRETRAINED_VERIFIER}); "
            "rebuild it with `make pretrained`"
        )
    return PRETRAINED_VERIFIER


def card_path(model: str | os.PathLike[str]) -> Path:
    """The model card's path beside ``model``."""
    return Path(model).with_name(MODEL_CARD)


def read_model_card(
    model: str | os.PathLike[str], *, required: bool = True, what: str | None = None
) -> dict[str, Any] | None:
    """The model card beside ``model`` as a dict.

    A missing card is an InputError when ``required`` (else None); an unreadable one, or one that is
    not a cinderseg card (no ``channels`` list), always is. ``what`` names the model in the message
    (e.g. a config key); default: the model's path.
    """
    path = card_path(model)
    who = what or f"model {model}"
    if not path.is_file():
        if not required:
            return None
        raise InputError(
            f"{who}: model card not found beside the model: {path} (it records the channels and "
            "settings the model was trained with)"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{who}: {path}: not a readable model card ({err})") from err
    if not isinstance(card, dict) or not isinstance(card.get("channels"), list):
        raise InputError(f"{who}: {path}: not a cinderseg model card (no 'channels' list)")
    return card


def training_resolution_range_m(card: dict[str, Any]) -> tuple[float, float] | None:
    """The smallest and largest pixel size (m) of the model's training regions, if recorded."""
    values = [float(v) for v in (card.get("resolution_m") or {}).values()]
    return (min(values), max(values)) if values else None
