"""Reading and writing the vocabulary files of a transformers tokenizer directory.

Ids are read from the files, never assumed: `tokenizer.json` (`added_tokens`),
`tokenizer_config.json` (`added_tokens_decoder`) and `added_tokens.json` may each list them;
where several do, they must agree.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from anygpt_jax import storage

SPM_FILE = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
ADDED_TOKENS_JSON = "added_tokens.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
PREPEND_SCHEMES = ("first", "always", "never")


@dataclasses.dataclass(frozen=True)
class AddedToken:
    """One added token and the matching flags transformers stores with it."""

    content: str
    id: int
    special: bool = False
    lstrip: bool = False  # the token swallows whitespace on its left
    rstrip: bool = False  # ... and on its right
    normalized: bool = True
    single_word: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
            "special": self.special,
        }


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
    """What a tokenizer directory says: the SentencePiece model, added tokens, text options."""

    spm_bytes: bytes
    added: tuple[AddedToken, ...]  # sorted by id; includes <unk>/<s>/</s> when files list them
    prepend_scheme: str = "first"  # where a '▁' is prepended to text chunks (tokenizers Metaspace)
    source: str = "<memory>"
    add_bos: bool = True  # whether transformers' tokenizer puts <s> first (kept on export)


def spm_proto(spm_bytes: bytes, source: str = "<memory>") -> sentencepiece_model_pb2.ModelProto:
    """Parses a SentencePiece model, naming `source` when it is not one."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(spm_bytes)
    except Exception as e:  # protobuf raises DecodeError, a private class
        raise ValueError(f"{source} is not a SentencePiece model: {e}") from e
    if not proto.pieces:
        raise ValueError(f"{source} is not a SentencePiece model: it has no pieces")
    return proto


def read_spm(path: str) -> bytes:
    """Reads a SentencePiece model file (local or gs://) with a clear error when it is missing."""
    if not storage.isfile(path):
        raise FileNotFoundError(
            f"SentencePiece model {path} not found: a tokenizer directory must hold the "
            f"LLaMA {SPM_FILE} that its added tokens extend"
        )
    data = storage.read_bytes(path)
    spm_proto(data, path)
    return data


def load_json(path: str) -> Any:
    """A JSON value from file `path` (local or gs://), naming the file when it is not JSON."""
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def dump_json(obj: Any) -> str:
    """`obj` as the indented JSON text the tokenizer files are written in (key order kept)."""
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _flag(entry: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key}={value!r} must be true or false")
    return value


def _token_from_entry(entry: Any, tid: Any, where: str) -> AddedToken:
    if isinstance(entry, str):  # very old tokenizer_config files store plain strings
        entry = {"content": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise ValueError(f"{where}: expected an object with a string 'content', got {entry!r}")
    try:
        tid = int(tid)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: id {tid!r} of {entry['content']!r} is not an integer") from None
    return AddedToken(
        content=entry["content"],
        id=tid,
        special=_flag(entry, "special", False, where),
        lstrip=_flag(entry, "lstrip", False, where),
        rstrip=_flag(entry, "rstrip", False, where),
        normalized=_flag(entry, "normalized", True, where),
        single_word=_flag(entry, "single_word", False, where),
    )


def _prepend_scheme(tok_json: dict[str, Any] | None, config: dict[str, Any], where: str) -> str:
    """Where '▁' goes: read from tokenizer.json's Metaspace, else as transformers 5 derives it."""
    if tok_json is not None:
        pre = tok_json.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        for p in parts:
            if p.get("type") == "Metaspace":
                if p.get("split", False):
                    raise ValueError(f"{where}: Metaspace with split=true is not a LLaMA tokenizer")
                scheme = p.get("prepend_scheme", "always")
                if scheme not in PREPEND_SCHEMES:
                    raise ValueError(f"{where}: unknown Metaspace prepend_scheme {scheme!r}")
                return scheme
    # LlamaTokenizer: add_prefix_space (default true) and legacy (transformers 5 default false).
    if config.get("add_prefix_space") is False:
        return "never"
    return "always" if config.get("legacy") is True else "first"


def _adds_bos(tok_json: dict[str, Any] | None, config: dict[str, Any]) -> bool:
    """Whether transformers prepends <s>: tokenizer_config's flag, else tokenizer.json's template.

    LLaMA's own default (no flag, no template) is to add it.
    """
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    post = (tok_json or {}).get("post_processor")
    if isinstance(post, dict) and post.get("type") == "TemplateProcessing":
        return any("SpecialToken" in item for item in post.get("single", []))
    return True


def read_tokenizer_dir(path: str) -> TokenizerFiles:
    """Reads tokenizer.model and every added token (with its flags) of a transformers directory."""
    if not storage.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    spm_bytes = read_spm(storage.join(path, SPM_FILE))
    by_id: dict[int, tuple[AddedToken, str]] = {}

    def add(tok: AddedToken, where: str, flags_known: bool = True) -> None:
        if tok.id < 0:
            raise ValueError(f"{where}: negative id {tok.id} for {tok.content!r}")
        old = by_id.get(tok.id)
        if old is None:
            by_id[tok.id] = (tok, where)
        elif old[0].content != tok.content:
            raise ValueError(
                f"{old[1]} gives id {tok.id} to {old[0].content!r} but {where} gives it to "
                f"{tok.content!r}"
            )
        elif flags_known and old[0] != tok:
            raise ValueError(f"{old[1]} and {where} disagree on the flags of {tok.content!r}")

    tok_json = None
    tj = storage.join(path, TOKENIZER_JSON)
    if storage.isfile(tj):
        tok_json = load_json(tj)
        for i, e in enumerate(tok_json.get("added_tokens") or []):
            add(
                _token_from_entry(
                    e, e.get("id") if isinstance(e, dict) else None, f"{tj} added_tokens[{i}]"
                ),
                tj,
            )
    config: dict[str, Any] = {}
    tc = storage.join(path, TOKENIZER_CONFIG)
    if storage.isfile(tc):
        config = load_json(tc)
        decoder = config.get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise ValueError(f"{tc}: added_tokens_decoder must be an object of id -> token")
        for tid, e in decoder.items():
            add(_token_from_entry(e, tid, f"{tc} added_tokens_decoder[{tid!r}]"), tc)
    at = storage.join(path, ADDED_TOKENS_JSON)
    if storage.isfile(at):
        table = load_json(at)
        if not isinstance(table, dict):
            raise ValueError(f"{at}: expected an object of token -> id")
        for content, tid in table.items():
            # Ids only: flags come from the other files, else transformers 5's defaults.
            tok = _token_from_entry({"content": content}, tid, f"{at} key {content!r}")
            add(tok, at, flags_known=tok.id not in by_id)
    for tok, where in by_id.values():
        if tok.single_word:
            raise ValueError(f"{where}: token {tok.content!r} has single_word=true (unsupported)")
    added = tuple(t for t, _ in sorted(by_id.values(), key=lambda x: x[0].id))
    scheme = _prepend_scheme(tok_json, config, tj if tok_json is not None else tc)
    return TokenizerFiles(
        spm_bytes=spm_bytes,
        added=added,
        prepend_scheme=scheme,
        source=path,
        add_bos=_adds_bos(tok_json, config),
    )


def write_tokenizer_dir(files: TokenizerFiles, path: str) -> None:
    """Writes tokenizer.model, added_tokens.json, tokenizer_config.json, special_tokens_map.json."""
    proto = spm_proto(files.spm_bytes, files.source)
    spm_size = len(proto.pieces)
    spec = proto.trainer_spec
    special = {
        f"{name}_token": proto.pieces[i].piece
        for name, i in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id))
        if 0 <= i < spm_size
    }
    storage.makedirs(path)
    storage.write_bytes(storage.join(path, SPM_FILE), files.spm_bytes)
    added = {t.content: t.id for t in files.added if t.id >= spm_size}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": files.add_bos,
        "add_eos_token": False,
        "add_prefix_space": files.prepend_scheme != "never",
        "legacy": files.prepend_scheme == "always",
        **special,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(t.id): t.to_json() for t in files.added},
    }
    for name, obj in (
        (ADDED_TOKENS_JSON, added),
        (TOKENIZER_CONFIG, config),
        (SPECIAL_TOKENS_MAP, special),
    ):
        storage.write_text(storage.join(path, name), dump_json(obj))
