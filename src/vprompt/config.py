"""Run configuration: one flat dataclass, the methods' recipes, and their resolution order.

Resolution, lowest to highest priority: the dataclass defaults, the chosen method's recipe, a YAML config file
(``-c``), then the command line. A value the user sets explicitly always wins over the recipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import did_you_mean

__all__ = [
    "RunConfig", "METHODS", "PRECISIONS", "check_precision", "resolve_config", "load_yaml", "list_methods",
    "shipped_configs", "find_config",
]  # fmt: skip


PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtype of the frozen model; fp32 is none
#: Label maps from a classifier's logits to the target classes (ILM-VP, Chen et al. 2023).
LABEL_MAPS = ("identity", "rlm", "flm", "ilm")
#: Output heads: auto (text for CLIP, FLM for a classifier), CLIP's text head, a trainable linear layer, a label map.
HEADS = ("auto", "text", "linear", *LABEL_MAPS)
#: Prompters (prompters.py), optimizers and schedules (optim.py), input diversity (diversity.py), text templates.
PROMPTERS = ("evp", "pad", "fixed_patch", "random_patch", "none")
OPTIMIZERS = ("normgrad", "sgd", "adamw")
SCHEDULES = ("cosine_epoch", "cosine", "constant")
DIVERSITIES = ("ref", "di", "none")
TEMPLATES = ("single", "ensemble", "imagenet80")


def check_precision(precision: str, source: str = "--precision") -> None:
    """Raise ValueError, naming ``source`` and the choices, unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{source}: unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")


@dataclass
class RunConfig:
    """Everything a run needs; stored as a plain dict in ``config.yaml`` and in the prompt's metadata. Settings
    left as None that the method's recipe (:data:`METHODS`) names take the recipe's value."""

    # what to adapt, to what
    model: str = "ViT-B-32"
    pretrained: str | None = None
    dataset: str = "cifar100"
    data_dir: str | None = None
    download: bool = True
    dataset_options: dict[str, Any] = field(default_factory=dict)
    method: str = "evp"
    # prompt geometry (None: from the backbone and the method)
    prompter: str | None = None
    input_size: int | None = None
    inner_size: int | None = None
    prompt_size: int | None = None
    # head
    head: str = "auto"
    templates: str | None = None
    label_map: str | None = None  # rlm | flm | ilm (classifiers); the same as --head rlm|flm|ilm
    ilm_interval: int = 1  # ILM recomputes the label map every k epochs
    head_lr: float | None = None  # AdamW lr of a trainable head (--head linear; default 1e-3)
    l2_grid: list[float] | None = None  # linprobe: L2 strengths swept on the validation split (default 1e-6..1e2)
    # optimization (None: from the method)
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str | None = None
    warmup_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 256
    diversity: str | None = None
    di_min_scale: float = 0.9
    di_prob: float = 0.5
    # protocol
    val_fraction: float = 0.1
    split_seed: int = 0
    shots: int | None = None  # K training images per class (after the validation holdout), drawn by split_seed
    train_fraction: float | None = None  # or this share of each class
    seed: int = 42
    eval_every: int = 1
    # engine
    precision: str = "fp32"
    deterministic: bool = False  # cuDNN's deterministic kernels (a CPU run is deterministic without)
    device: str | None = None
    threads: int | None = None  # CPU threads for PyTorch (None or 0: its default)
    workers: int = 4
    eval_batch_size: int | None = None
    log_every: int = 50
    output: str = "runs"
    name: str | None = None
    resume: str | None = None
    # what was filled in rather than given: {"method": M, setting: value, ...} for what method M's recipe filled, and
    # with "model": X the sizes model X gave (a run records them). A config re-created with another method
    # (cfg.replace(method="vp"), or a saved config given another method) takes that method's recipe and sizes there,
    # with another model that model's sizes; otherwise (a saved config read back) the values stay as saved.
    recipe_filled: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        recipe = method_recipe(self.method, "method")
        filled = dict(self.recipe_filled) if isinstance(self.recipe_filled, dict) else None
        if (
            filled is None
            or not all(k in _RECIPE_KEYS or k in SIZE_KEYS or k in ("method", "model") for k in filled)
            or (filled and filled.get("method") not in METHODS)
        ):
            raise SettingError("recipe_filled", f"recipe_filled {self.recipe_filled!r}: what a method's recipe and a "
                               "model filled in, as a run saves it; leave it out")  # fmt: skip
        earlier_method, earlier_model = filled.pop("method", self.method), filled.pop("model", self.model)
        # still the value filled in: not a setting of the user's (another method or model fills it again)
        filled = {k: v for k, v in filled.items() if getattr(self, k) == v}
        if earlier_method != self.method:
            gone = set(filled)
        else:
            gone = {k for k in filled if k in SIZE_KEYS} if earlier_model != self.model else set()
        for key in gone:
            setattr(self, key, None)
            del filled[key]
        recipe_lr = self.lr is None and recipe.get("epochs") and recipe.get("lr")
        for key, value in recipe.items():  # the method fills what was left unset
            if getattr(self, key) is None:
                setattr(self, key, value)
                filled[key] = value
        self.recipe_filled = {}
        self.record_filled(filled)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        if self.shots and self.train_fraction:
            raise SettingError(
                "shots", f"shots {self.shots} and train_fraction {self.train_fraction:g} together: give one of them, "
                "K images per class or a share of each class (none undoes one given in a config file)",
                "train_fraction",
            )  # fmt: skip
        check_head_choice(self.head, self.label_map)
        if recipe_lr and self.optimizer != recipe.get("optimizer"):
            raise SettingError(
                "lr", f"lr: optimizer {self.optimizer} needs its own; method {self.method}'s lr "
                f"{recipe['lr']:g} is a step size for {recipe['optimizer']}",
            )  # fmt: skip

    def record_filled(self, values: Mapping[str, Any]) -> None:
        """Add ``values`` (of the method's recipe, or sizes this config's model gave) to :attr:`recipe_filled`."""
        filled = {k: v for k, v in self.recipe_filled.items() if k not in ("method", "model")} | dict(values)
        model = {"model": self.model} if any(k in SIZE_KEYS for k in filled) else {}
        self.recipe_filled = {"method": self.method, **model, **filled} if filled else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        """This config with ``changes`` (as :func:`dataclasses.replace`), as a config file is overridden: a setting
        given wins even when it equals what the recipe of the method replaced had filled in, a size given has the
        model fill the others again, and one of two settings that say one thing (``head`` and ``label_map``; EVP's
        ``inner_size`` and ``prompt_size``) replaces both."""
        mine = self.to_dict()
        kept = under({k: v for k, v in changes.items() if v is not None}, mine, self.method)  # (None gives nothing)
        mine |= {k: _FIELDS[k].default for k in mine.keys() - kept.keys()}  # (the other of a pair: its default)
        return dataclasses.replace(self, **{**less_given(mine, changes), **changes})

    def identity(self) -> dict[str, Any]:
        """What a run is, as the first keys of its ``results.json``: what the result tables group by."""
        keys = ("method", "model", "pretrained", "dataset", "seed", "shots", "train_fraction")
        return {k: getattr(self, k) for k in keys}

    @property
    def run_name(self) -> str:
        """``--name``, or a name derived from what the run is, so re-running the same command finds its folder."""
        if self.name:
            return self.name
        model = self.model.replace("/", "-").replace(":", "-")
        scale = f"-{self.shots}shot" if self.shots else ""
        scale += f"-frac{self.train_fraction:g}" if self.train_fraction else ""
        return f"{self.method}-{model}-{self.dataset}-seed{self.seed}{scale}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output).expanduser() / self.run_name  # (a config file's ~, which no shell expands)


def is_plain_name(text: str) -> bool:
    """Whether ``text`` names a file or folder in the folder it is written to, not one above or below it."""
    return text not in ("", ".", "..") and not any(c in text for c in "/\\\0")


class SettingError(ValueError):
    """A setting of the wrong type or out of range; ``key`` names it, ``others`` the settings it conflicts with."""

    def __init__(self, key: str, message: str, *others: str) -> None:
        super().__init__(message)
        self.key = key
        self.keys = (key, *others)


def check_head_choice(head: str, label_map: str | None) -> None:
    """A :class:`SettingError` when ``label_map`` and ``head`` name two heads (``head`` must be ``auto`` or the
    same): ``--label-map flm`` is ``--head flm``."""
    if label_map is not None and head not in ("auto", label_map):
        raise SettingError(
            "label_map", f"label_map {label_map} conflicts with head {head}; give only one of them", "head"
        )


#: The smallest value of numeric settings (None, where a setting allows it, always means "unset").
_AT_LEAST: dict[str, float] = {
    "epochs": 0, "warmup_steps": 0, "workers": 0, "log_every": 0, "threads": 0, "lr": 0, "head_lr": 0,
    "weight_decay": 0, "batch_size": 1, "eval_batch_size": 1, "input_size": 1, "inner_size": 1,
    "prompt_size": 1, "ilm_interval": 1, "eval_every": 1, "shots": 1,
}  # fmt: skip
#: Settings with a fixed set of values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "head": HEADS, "label_map": LABEL_MAPS, "prompter": PROMPTERS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
    "diversity": DIVERSITIES, "templates": TEMPLATES, "precision": PRECISIONS,
}  # fmt: skip
#: Shares, and momentum (1 or more never forgets a gradient): (low, high, low allowed, high allowed).
_SHARES: dict[str, tuple[float, float, bool, bool]] = {
    "val_fraction": (0, 1, True, False), "train_fraction": (0, 1, False, True),
    "di_prob": (0, 1, True, True), "di_min_scale": (0, 1, False, True), "momentum": (0, 1, True, False),
}  # fmt: skip


def _number(value: Any, kind: str) -> int | float | None:
    """``value`` as a finite number of ``kind`` (``int`` or ``float``; numbers written as strings too, as YAML reads
    ``1e-3``; an integral float is an int), else None. Ints stay exact, however large."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if kind == "int" and isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    if kind == "int":
        return int(number) if number.is_integer() else None
    return number


def _number_list(name: str, value: Any) -> list[float]:
    """``value`` (a number, a list of them, or a comma-separated string of them) as a non-empty list of finite,
    non-negative floats, or a :class:`SettingError`."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    numbers = [_number(v, "float") for v in items if not (isinstance(v, str) and not v.strip())]
    if not numbers or any(n is None or n < 0 for n in numbers):
        raise SettingError(name, f"{name} {value!r} must be one or more non-negative numbers, e.g. 1e-4,1e-2,1")
    return [float(n) for n in numbers]


def l2_strengths(grid: Any) -> list[float]:
    """The L2 strengths a probe sweeps for ``grid`` (see :func:`_number_list`): sorted, each once."""
    return sorted(set(_number_list("l2_grid", grid)))


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of setting ``f`` as its type (a number in a string, as YAML reads ``1e-3``, becomes one), or a
    :class:`SettingError` saying what it must be."""
    kind = str(f.type).split(" | ")[0]
    if value is not None and kind == "list[float]":
        return _number_list(f.name, value)
    if value is None or kind not in ("int", "float", "bool", "str"):
        return value
    shown = f"{f.name} {value!r}"
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingError(f.name, f"{shown} must be true or false")
        return value
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise SettingError(f.name, f"{shown} must be a single value")
        if f.name in _CHOICES and str(value) not in _CHOICES[f.name]:
            hint = did_you_mean(value, _CHOICES[f.name])
            raise SettingError(f.name, f"{shown} is not one of {', '.join(_CHOICES[f.name])}{hint}")
        if f.name == "name" and not is_plain_name(str(value)):
            raise SettingError(f.name, f"{shown} must be a folder name inside --output, without / or \\")
        return str(value)
    number = _number(value, kind)
    if number is None:
        nullable = f.default is None and str(value).lower() == "none"
        unset = " (or null, YAML's none, to leave it unset)" if nullable else ""
        raise SettingError(f.name, f"{shown} must be {'an integer' if kind == 'int' else 'a finite number'}{unset}")
    if f.name in _AT_LEAST and number < _AT_LEAST[f.name]:
        raise SettingError(f.name, f"{shown} must be at least {_AT_LEAST[f.name]:g}")
    if f.name in _SHARES:
        lo, hi, lo_ok, hi_ok = _SHARES[f.name]
        if not ((lo <= number if lo_ok else lo < number) and (number <= hi if hi_ok else number < hi)):
            raise SettingError(
                f.name, f"{shown} must be in {'[' if lo_ok else '('}{lo:g}, {hi:g}{']' if hi_ok else ')'}"
            )
    return number


#: VP's optimization recipe, shared by its three prompters.
_VP: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 40.0,
    "schedule": "cosine",
    "warmup_steps": 1000,
    "epochs": 1000,
    "diversity": "none",
    "templates": "single",
}
_VP_DOC = "SGD momentum 0.9, lr 40, warmup 1000 steps, cosine"

#: Recipes: the settings each method fills in where the user left them unset.
METHODS: dict[str, dict[str, Any]] = {
    "evp": {
        "prompter": "evp",
        "optimizer": "normgrad",
        "lr": 70.0,
        "schedule": "cosine_epoch",
        "warmup_steps": 0,
        "epochs": 1000,
        "diversity": "ref",
        "templates": "single",
        "_doc": "EVP: shrink + border prompt, input diversity, normalized gradient, cosine per epoch (lr 70)",
    },
    "vp": {**_VP, "prompter": "pad", "_doc": "VP padding (Bahng et al.): additive border, " + _VP_DOC},
    "fixed_patch": {
        **_VP,
        "prompter": "fixed_patch",
        "_doc": "VP fixed patch: additive square at the top-left, " + _VP_DOC,
    },
    "random_patch": {
        **_VP,
        "prompter": "random_patch",
        "_doc": "VP random patch: additive square at a random place per batch, " + _VP_DOC,
    },
    "linprobe": {
        "prompter": "none",
        "epochs": 0,
        "diversity": "none",
        "_doc": "linear probe: logistic regression on cached frozen features, L2 strength chosen on val (no prompt)",
    },
    "zeroshot": {
        "prompter": "none",
        "optimizer": "sgd",
        "lr": 0.0,
        "schedule": "constant",
        "warmup_steps": 0,
        "epochs": 0,
        "diversity": "none",
        "templates": "ensemble",
        "_doc": "no prompt and no training: evaluate the frozen model with its head as is",
    },
}


def less_given(values: Mapping[str, Any], given: Collection[str]) -> dict[str, Any]:
    """``values`` (a config's settings, with the ``recipe_filled`` of a saved one) where settings are now ``given``:
    those are the user's, whatever was filled in (``recipe_filled`` keeps the method and model it names, which tell
    a change of either), and where a size is given the sizes the model filled are unset, for the model to fill them
    again around it (VP's pad of a 32-pixel input is no pad of a 48-pixel one)."""
    filled = values.get("recipe_filled")
    if not isinstance(filled, Mapping):
        return dict(values)
    resized = {k for k in SIZE_KEYS if k in filled and k not in given} if any(k in given for k in SIZE_KEYS) else set()
    kept = {k: v for k, v in filled.items() if k in ("method", "model") or k not in given and k not in resized}
    unset = {k: None for k in resized if values.get(k) == filled[k]}  # (still the model's: not a setting of the user's)
    return {**values, **unset, "recipe_filled": kept}


#: The sizes a config may leave to its model (set, and recorded as filled, when the prompter is built).
SIZE_KEYS = ("input_size", "inner_size", "prompt_size")

#: The settings some method's recipe fills in.
_RECIPE_KEYS = {k for recipe in METHODS.values() for k in recipe if not k.startswith("_")}


def method_recipe(method: str, source: str) -> dict[str, Any]:
    """The settings ``method`` fills in where they were left unset, or a ValueError naming ``source``, the close
    matches and the methods."""
    if not isinstance(method, str):
        raise ValueError(f"{source}: method {method!r} must be a single value (one of {', '.join(sorted(METHODS))})")
    if method not in METHODS:
        hint = did_you_mean(method, METHODS)
        raise ValueError(f"{source}: unknown method {method!r}{hint} (available: {', '.join(sorted(METHODS))})")
    return {k: v for k, v in METHODS[method].items() if not k.startswith("_")}


def check_recipe_kept(later: Mapping[str, Any], earlier: Mapping[str, Any], later_source: str, source: str) -> None:
    """Refuse a ``later`` layer of settings (the command line) that changes the method or the optimizer of an
    ``earlier`` one (a config file, named ``source``) whose settings were made for the old ones: the old method's
    recipe spelled out (a VP file under ``--method evp`` would train VP's prompt, named evp), or a learning rate
    that is a step size for the old optimizer."""
    old, new = earlier.get("method", RunConfig.method if "method" in later else None), later.get("method")
    filled = earlier.get("recipe_filled") if isinstance(earlier.get("recipe_filled"), dict) else {}
    switched = old != new and all(isinstance(m, str) and m in METHODS for m in (old, new))
    if switched:
        ours, theirs = method_recipe(old, source), method_recipe(new, later_source)
        # the old recipe's own values, as a file states them (a run's saved config lists those it filled: refilled)
        spelled_out = [k for k, v in _recipe_values(earlier, ours).items() if not (k in filled and filled[k] == v)]
        kept = [k for k in spelled_out if k not in later and earlier[k] != theirs.get(k)]
        if kept:
            spelled = ", ".join(f"{k} {earlier[k]}" for k in kept)
            raise ValueError(
                f"{later_source}: method {new} over {source}, which spells out method {old}'s recipe ({spelled}); "
                f"those would stay: give them for {new} too, or use a config file of {new}"
            )

    def refilled(key: str) -> bool:  # the earlier value was its old method's recipe's, which the new one's replaces
        return switched and key in earlier and key in filled and filled[key] == earlier[key]

    recipe_opt = METHODS.get(old, {}).get("optimizer") if isinstance(old, str) else None
    old_opt, new_opt = earlier.get("optimizer", recipe_opt), later.get("optimizer")
    what = f"optimizer {new_opt}"
    # (a method that trains nothing, zeroshot or linprobe, takes no step: its recipe's optimizer is not asked of it)
    if (
        new_opt is None
        and switched
        and METHODS[new].get("epochs") != 0
        and ("optimizer" not in earlier or refilled("optimizer"))
    ):
        new_opt = METHODS[new].get("optimizer")  # the new method's recipe's
        what = f"method {new} (optimizer {new_opt})"
    lr_kept = "lr" in earlier and "lr" not in later and not refilled("lr")
    if old_opt is not None and new_opt not in (None, old_opt) and lr_kept:
        raise ValueError(
            f"{later_source}: {what} over {source}, whose lr {earlier['lr']} is a step size for {old_opt}; "
            f"give --lr for {new_opt} too"
        )


def _recipe_values(settings: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``settings`` that hold ``recipe``'s value."""
    return {k: v for k, v in recipe.items() if k in settings and settings[k] == v}


def with_filled_recorded(settings: Mapping[str, Any], model_input_size: Any = None) -> dict[str, Any]:
    """A run's saved ``settings`` with :attr:`RunConfig.recipe_filled` as runs record it now. Runs saved before did
    not record it, or not its method: the values its method's recipe fills are taken as filled in, and, with the
    ``model_input_size`` its model gave, the sizes that model fills for the sizes left (the fewest taken as given)."""
    method, filled = settings.get("method"), settings.get("recipe_filled")
    if not (isinstance(method, str) and method in METHODS) or (isinstance(filled, Mapping) and "method" in filled):
        return dict(settings)
    # (recorded without its method: the run's own, which filled it; not recorded: what its recipe would fill)
    filled = dict(filled) if isinstance(filled, Mapping) else _recipe_values(settings, method_recipe(method, "method"))
    known = type(model_input_size) is int and 0 < model_input_size <= 8192  # (a model's input size, as runs save it)
    sizes = _sizes_filled(settings, model_input_size) if known and not filled.keys() & {"model", *SIZE_KEYS} else {}
    model = {"model": settings.get("model")} if sizes else {}
    return {**settings, "recipe_filled": {"method": method, **model, **filled, **sizes} if filled or sizes else {}}


def _sizes_filled(settings: Mapping[str, Any], model_input_size: int) -> dict[str, Any]:
    """The saved sizes of ``settings`` that its model (of input size ``model_input_size``) would fill in, with the
    fewest of them taken as given that gives them all."""
    from .build import planned_sizes

    saved = {k: settings.get(k) for k in SIZE_KEYS}
    for n in range(len(SIZE_KEYS) + 1):
        for given in itertools.combinations([k for k in SIZE_KEYS if saved[k] is not None], n):
            try:
                cfg = RunConfig(prompter=settings.get("prompter"), **{k: saved[k] for k in given})
                planned = planned_sizes(cfg, model_input_size)
            except (ValueError, TypeError, RuntimeError):  # (sizes no prompter takes: none of them filled)
                continue
            if all(planned.get(k) == saved[k] for k in SIZE_KEYS if k not in given):
                return {k: saved[k] for k in planned}
    return {}


#: Settings of how and where a run was started, not of what it trains: a run's saved config read as a config file,
#: or a run evaluated, takes them from the command line (a run started with ``--resume`` is not continued again).
INVOCATION_KEYS = ("resume", "threads", "device")


def run_file_settings(settings: Mapping[str, Any], model_input_size: Any = None) -> dict[str, Any]:
    """The settings of a run's saved config.yaml as a config file for another run: with what was filled in
    recorded (:func:`with_filled_recorded`), and without those the run did not use (a suite's shared
    ``weight_decay`` under the normalized gradient), which it would not have recorded as it runs now, or
    :data:`INVOCATION_KEYS`."""
    kept = without_unused(with_filled_recorded(settings, model_input_size))
    return {k: v for k, v in kept.items() if k not in INVOCATION_KEYS}


def list_methods() -> dict[str, str]:
    """Method name -> one-line description."""
    return {k: v.get("_doc", "") for k, v in sorted(METHODS.items())}


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def is_default(key: str, value: Any) -> bool:
    """Whether ``value`` is setting ``key``'s default: a run's saved config.yaml spells out every setting, so a file
    given a value that is its default says nothing of its own."""
    field = _FIELDS.get(key)
    return field is not None and value == field.default


def in_file_terms(text: str) -> str:
    """``text`` (an error's message) with the flags of settings spelled as a config file's keys: ``--data-dir`` as
    ``data_dir``, ``--dataset-option crop=20`` as ``dataset_options: {crop: 20}``, ``--no-download`` as ``download:
    false``. For the errors of a suite's runs, whose settings come from the suite's file. A command shown as an
    example (``vprompt train --head linear``) keeps its flags, and so does ``--resume`` (a suite resumes)."""

    def key(match: re.Match[str]) -> str:
        if match.group("command"):
            return match.group(0)
        if match.group("option"):
            return f"dataset_options: {{{match.group('option')}: {match.group('value')}}}"
        negated, name = match.group("no"), match.group("name").replace("-", "_")
        f = _FIELDS.get(name)
        if f is None or name == "resume":
            return match.group(0)
        if f.type == "bool":
            return f"{name}: {'false' if negated else 'true'}"
        return match.group(0) if negated else name

    flag = r"(?:(?<=^)|(?<=[\s(`]))--"  # (not inside a path or a word)
    return re.sub(
        rf"(?P<command>\bvprompt [a-z]+[^;)]*)|{flag}dataset-option (?P<option>\w+)=(?P<value>[^\s,;)]+)"
        rf"|{flag}(?P<no>no-)?(?P<name>[a-z][a-z0-9-]*)",
        key,
        text,
    )


#: Settings that say one thing: a layer of settings giving either replaces both of an earlier layer's. (EVP's
#: border is what the shrunk image leaves of the input: a file's prompt_size 30 under --inner-size 180 is no conflict.)
_ONE_SETTING = (("head", "label_map"), ("inner_size", "prompt_size"))


def under(later: Mapping[str, Any], earlier: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
    """``earlier`` without what ``later`` replaces, to be updated with ``later``: its keys, and of each group of
    :data:`_ONE_SETTING` all (a file's ``label_map: flm`` under ``--head linear`` is no conflict); ``method``: the
    run's, where neither layer names it."""
    method = later.get("method", earlier.get("method", method or RunConfig.method))
    filled = earlier.get("recipe_filled") if isinstance(earlier.get("recipe_filled"), dict) else {}
    own = earlier.get("prompter") if filled.get("prompter") != earlier.get("prompter") else None  # (not a recipe's)
    prompter = later.get("prompter") or own or METHODS.get(str(method), {}).get("prompter")
    groups = [g for g in _ONE_SETTING if prompter == "evp" or "inner_size" not in g]  # (VP's prompt_size stands alone)
    gone = {k for group in groups if later.keys() & set(group) for k in group}
    return {k: v for k, v in earlier.items() if k not in gone}


def check_dataset_options(options: Any, source: str = "dataset_options") -> dict[str, Any]:
    """``options`` as a dict (None: empty), or a ValueError naming ``source`` when it is not a mapping."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{source}: dataset_options must be a mapping of option: value, not {type(options).__name__}")
    return {str(k).replace("-", "_"): v for k, v in options.items()}


def resolve_config(
    values: Mapping[str, Any],
    source: str = "config",
    sources: Mapping[str, str] | None = None,
    check_unused: bool | Collection[str] = True,
) -> RunConfig:
    """Build a :class:`RunConfig` from user values (explicit settings only); the method's recipe fills the rest.

    Args:
        values: field name -> value; unset fields may be absent or None.
        source: where the values come from, for error messages (a file name, "command line").
        sources: where each value came from when they came from several places (key -> source).
        check_unused: refuse a setting given that the run would not use (momentum without SGD, weight decay with
            the normalized gradient, warmup without the ``cosine`` schedule, ``inner_size`` with a VP prompter):
            every one given (True), those named, or none (False: the saved settings of a finished run).

    Raises:
        ValueError: an unknown key, method, precision or malformed dataset options, or an unused setting, naming
            where the bad value came from and the close matches or choices.
    """

    def where(key: str) -> str:
        return (sources or {}).get(key, source)

    unknown = [k for k in values if k not in _FIELDS]
    if unknown:
        k = unknown[0]
        hint = did_you_mean(k, _FIELDS) or " (settings are the flags' names: lr for --lr)"
        raise ValueError(f"{where(k)}: unknown setting {k!r}{hint}")
    explicit = {k: v for k, v in values.items() if v is not None}
    if "pretrained" in explicit:
        explicit["pretrained"] = kept_pretrained(explicit["pretrained"], explicit.get("model", RunConfig.model))
        explicit = {k: v for k, v in explicit.items() if v is not None}
    method_recipe(explicit.get("method", RunConfig.method), where("method"))  # checked here to name its source
    if "dataset_options" in explicit:
        explicit["dataset_options"] = check_dataset_options(explicit["dataset_options"], where("dataset_options"))
    try:
        cfg = RunConfig(**explicit)
        _refuse_unused(cfg, explicit if check_unused is True else check_unused or ())
        return cfg
    except SettingError as e:
        text = str(e)
        for key in e.keys:  # (as flags where they were given as flags)
            text = text.replace(key, f"--{key.replace('_', '-')}", 1) if where(key) == "command line" else text
        raise ValueError(f"{where(e.key)}: {text}") from None


#: What a setting its run does not use is compared as: the value that does nothing (see :func:`_unused`).
_NOTHING: dict[str, Any] = {
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "inner_size": None,
    "di_min_scale": 0.9,
    "di_prob": 0.5,
    "head_lr": None,
    "ilm_interval": 1,
    "templates": None,
    "l2_grid": None,
    # what a linear probe, which trains no prompt, leaves at its recipe's
    "prompter": "none",
    "prompt_size": None,
    "epochs": 0,
    "head": "auto",
    "label_map": None,
    "lr": None,
    "optimizer": None,
    "schedule": None,
    "diversity": "none",
    "eval_every": 1,
    "deterministic": False,
    # what a run that reads no training images leaves unset
    "shots": None,
    "train_fraction": None,
}

_PROBE_IGNORES = ("prompter", "prompt_size", "inner_size", "epochs", "head", "label_map", "lr", "optimizer",
                  "schedule", "warmup_steps", "momentum", "weight_decay", "diversity", "head_lr", "ilm_interval",
                  "templates", "deterministic")  # fmt: skip


def _unused(settings: Mapping[str, Any]) -> dict[str, str]:
    """Setting -> why, for those of :data:`_NOTHING` that the optimizer, schedule, prompter, diversity, head or
    method of ``settings`` (a run's, resolved) does not use."""
    optimizer, schedule, prompter = settings.get("optimizer"), settings.get("schedule"), settings.get("prompter")
    method, diversity = settings.get("method"), settings.get("diversity")
    why = {}
    if optimizer != "sgd":
        why["momentum"] = f"only optimizer sgd has momentum, not {optimizer}"
    if schedule != "cosine":
        why["warmup_steps"] = f"only schedule cosine warms up, not {schedule}"
    if prompter in ("pad", "fixed_patch", "random_patch"):
        why["inner_size"] = (
            f"EVP's shrunk image; prompter {prompter} adds its prompt on top of the whole image (its size: prompt_size)"
        )
    if diversity != "di":
        for key in ("di_min_scale", "di_prob"):
            why[key] = f"only diversity di resizes and pads, not {diversity}"
    if not settings.get("epochs"):
        why["eval_every"] = "how often training epochs are validated; a run of --epochs 0 trains none"
    elif settings.get("val_fraction") == 0:
        why["eval_every"] = "how often training epochs are validated; --val-fraction 0 holds out no validation split"
    if method == "linprobe":
        probe = (
            "a linear probe fits logistic regression on frozen features, with no prompt, epochs, optimizer or head; "
            "leave it out, or train a linear layer with a prompt (vprompt train --head linear)"
        )
        return {**why, **dict.fromkeys(_PROBE_IGNORES, probe)}
    why["l2_grid"] = f"the L2 strengths of method linprobe, not {method}"
    head = _head_of(settings)
    if optimizer == "normgrad" and head != "linear":  # (a linear head's AdamW decays by it)
        why["weight_decay"] = "the normalized gradient has none (optimizer sgd or adamw decays, or a linear head's)"
    if head != "linear":
        why["head_lr"] = f"only head linear is trained with its own lr, not {head or 'the model default'}"
    if head != "ilm":
        why["ilm_interval"] = f"only label map ilm is recomputed, not {head or 'the model default'}"
    elif not settings.get("epochs"):
        why["ilm_interval"] = "ILM recomputes its map between training epochs; with none it is computed once (flm)"
    if head not in ("text", None):
        why["templates"] = f"the text prompts of a CLIP text head, not of head {head}"
    if not settings.get("epochs") and head in HEADS_WITHOUT_DATA:
        for key in ("shots", "train_fraction"):
            why[key] = (
                f"a run that trains nothing, with head {head}, reads no training image: leave it out (a trained "
                "prompt or probe, or a label map computed on the training images, flm, draws the subset)"
            )
    return why


#: Heads that learn nothing from the training data: a run that trains nothing with them needs none.
HEADS_WITHOUT_DATA = ("text", "identity", "rlm")


def _head_of(settings: Mapping[str, Any]) -> str | None:
    """The head a run's settings ask for, as :func:`vprompt.heads.resolve_head` resolves it for the model; the
    label map where one is given (a head it conflicts with is refused when the model is built); None where the
    model's kind is unknown."""
    from .backbones import model_kind
    from .heads import resolve_head

    label_map = settings.get("label_map")
    head = "auto" if label_map is not None else str(settings.get("head"))
    try:
        kind = model_kind(str(settings.get("model"))) if head == "auto" and label_map is None else ""
    except ValueError:  # an unknown model source: refused when the model is built
        return None
    return resolve_head(head, label_map, kind)


def _refuse_unused(cfg: RunConfig, given: Collection[str]) -> None:
    """A :class:`SettingError` for a setting in ``given`` that ``cfg``'s optimizer, schedule, prompter, diversity,
    head or method would not use: the run would record it, but not apply it."""
    for key, why in _unused(cfg.to_dict()).items():
        value = getattr(cfg, key)
        # (None is unset, and what was filled in is not given: a saved config read back, or one of another method)
        if key in given and value is not None and value != _NOTHING[key] and key not in cfg.recipe_filled:
            shown = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else value
            shown = f"{shown:g}" if isinstance(shown, float) else shown
            raise SettingError(key, f"{key if value is True else f'{key} {shown}'}: {why}")  # (a switch: its flag)


def without_unused(values: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``values`` without the settings that the run of ``settings`` (resolved; by default ``values``) does not use,
    which would be recorded with it but not applied."""
    unused = _unused(values if settings is None else settings)
    return {k: v for k, v in values.items() if k not in unused}


def unused_settings(values: Mapping[str, Any]) -> set[str] | None:
    """The keys of ``values`` (a config file's) that the run they describe would not use; None where they do not
    resolve on their own (a file that leaves a setting it needs to the command line)."""
    try:
        cfg = resolve_config(values, check_unused=False)
    except ValueError:
        return None
    return set(values) - set(without_unused(values, cfg.to_dict()))


def resolve_leaving_unused(
    values: Mapping[str, Any], check_unused: Collection[str], **where: Any
) -> tuple[RunConfig, list[str]]:
    """The config of ``values`` as :func:`resolve_config` (given ``where``: ``source``, ``sources``) builds it,
    without the settings its run does not use, refused only where ``check_unused`` names them; and the keys left
    out. For settings shared with runs that do not use them: a suite's, or a training run's file given to zeroshot."""
    cfg = resolve_config(values, check_unused=check_unused, **where)
    used = without_unused(values, cfg.to_dict())
    left = sorted(k for k in values if k not in used)
    return (resolve_config(used, check_unused=check_unused, **where) if left else cfg), left


def kept_pretrained(value: Any, model: Any) -> Any:
    """``pretrained`` as a run keeps it: a word for random weights (none, false or random, YAML's false included) is
    None, or ``"none"`` for a model that brings its own weights (it is then the only way to ask for random ones)."""
    from .backbones import _is_none, brings_own_weights

    if not str(value).strip() or not _is_none(str(value)):
        return value
    return "none" if brings_own_weights(str(model)) else None


def comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A run's saved ``settings`` as two runs are compared: the settings it does not use as :data:`_NOTHING`, the
    L2 strengths as the sorted set the probe sweeps (a config file may give them as strings), and the dataset
    options without those given their default."""
    from .data import get_dataset_spec

    out = {**settings, **{k: _NOTHING[k] for k in _unused(settings) if k in settings}}
    if out.get("pretrained") is not None:  # (a run saved before the words for random weights were one: random)
        out["pretrained"] = kept_pretrained(out["pretrained"], out.get("model", RunConfig.model))
    if out.get("dataset_options"):
        with contextlib.suppress(ValueError):  # an unknown dataset: its options compared as written
            out["dataset_options"] = get_dataset_spec(out["dataset"]).explicit_options(out["dataset_options"])
    if out.get("l2_grid") is not None:
        with contextlib.suppress(SettingError):
            out["l2_grid"] = l2_strengths(out["l2_grid"])
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # (<<: keys that a mapping then overrides are fine)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the safe loader's own error tells it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice; keep one", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def shipped_configs() -> dict[str, Path]:
    """The config files that come with vprompt (the papers' settings), by name: ``evp_clip_vitb32`` and so on."""
    return {p.stem: p for p in sorted((Path(__file__).parent / "configs").glob("*.yaml"))}


def find_config(path: str | Path) -> Path:
    """``path`` where it exists; otherwise, for a bare name such as ``evp_clip_vitb32`` (``.yaml`` optional, no
    folder), the shipped config of that name, so that ``-c evp_clip_vitb32`` works wherever vprompt is installed."""
    path = Path(path)
    if path.exists() or path.parent != Path("."):
        return path
    return shipped_configs().get(path.name.removesuffix(".yaml"), path)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (or a shipped config by name, :func:`find_config`) into a dict, with dashes in keys
    accepted as underscores; of a run's saved config.yaml its settings, as :func:`run_file_settings` gives them."""
    path = find_config(path)
    if not path.is_file():
        shipped = f"; the shipped configs are {', '.join(shipped_configs())}" if path.parent == Path(".") else ""
        raise FileNotFoundError(
            f"config file {path} " + ("is a folder; give a YAML file" if path.is_dir() else f"does not exist{shipped}")
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ValueError(
            f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from e
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem or e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    if isinstance(data.get("config"), dict) and "argv" in data:  # a run's config.yaml: its settings
        data = run_file_settings(data["config"], data.get("model_input_size"))
    settings: dict[str, Any] = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key in settings:
            raise ValueError(f"config file {path}: {key!r} is given twice (with - and with _); keep one")
        settings[key] = v
    return settings
