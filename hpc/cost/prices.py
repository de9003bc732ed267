"""Price tables: what a GPU-hour and a CPU-hour cost, from a YAML file.

Example (every key optional)::

    version: 1
    currency: EUR
    gpu_hour:                 # per allocated GPU per hour
      default: 2.00           # GPUs that match nothing below (absent: unpriced, noted)
      by_gpu_type: {a100: 3.00, v100: 1.20}
      by_partition: {gpu-long: 2.50}
      rules:                  # partition + type together
        - {partition: gpu-long, gpu_type: a100, rate: 3.50}
    cpu_hour: 0.01            # per allocated CPU per hour, every job (GPU jobs too)
    billing:                  # billing-TRES mode: cost = billing x hours x rate
      rate: 0.05              # (replaces the GPU/CPU rates for rows that have billing=)
    refund_states: [PREEMPTED, NODE_FAIL]   # such runs cost 0 (hours still shown)

The GPU rate of an allocation is the first that applies of: a rule matching its partition
and GPU type, ``by_gpu_type``, ``by_partition``, ``default``.

The file is validated with JSON Schema; an error names the file and the key (and the line
for YAML syntax errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc.cost.common import CostInputError

_RATE = {"type": "number", "minimum": 0}
_NAME_RATES = {"type": "object", "additionalProperties": _RATE}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "currency": {"type": "string", "maxLength": 16},
        "gpu_hour": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "default": _RATE,
                "by_gpu_type": _NAME_RATES,
                "by_partition": _NAME_RATES,
                "rules": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["partition", "gpu_type", "rate"],
                        "properties": {
                            "partition": {"type": "string", "minLength": 1},
                            "gpu_type": {"type": "string", "minLength": 1},
                            "rate": _RATE,
                        },
                    },
                },
            },
        },
        "cpu_hour": _RATE,
        "billing": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rate"],
            "properties": {"rate": _RATE},
        },
        "refund_states": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "pattern": "^[A-Z_]+$"},
        },
    },
}


@dataclass(frozen=True)
class PriceTable:
    """Validated rates; the all-zero default prices nothing (hours only)."""

    currency: str = ""
    gpu_default: float | None = None
    gpu_by_type: dict[str, float] = field(default_factory=dict)
    gpu_by_partition: dict[str, float] = field(default_factory=dict)
    gpu_rules: dict[tuple[str, str], float] = field(default_factory=dict)
    cpu_hour: float = 0.0
    billing_rate: float | None = None
    refund_states: frozenset[str] = frozenset()
    source: str | None = None

    def gpu_rate(self, partition: str | None, gpu_type: str | None) -> float | None:
        """Rate per GPU-hour for an allocation, or None when nothing applies."""
        if partition is not None and gpu_type is not None:
            rate = self.gpu_rules.get((partition, gpu_type))
            if rate is not None:
                return rate
        if gpu_type is not None and gpu_type in self.gpu_by_type:
            return self.gpu_by_type[gpu_type]
        if partition is not None and partition in self.gpu_by_partition:
            return self.gpu_by_partition[partition]
        return self.gpu_default

    @property
    def priced(self) -> bool:
        return bool(
            self.gpu_default
            or self.gpu_by_type
            or self.gpu_by_partition
            or self.gpu_rules
            or self.cpu_hour
            or self.billing_rate
        )


def load_prices(path: str | Path) -> PriceTable:
    """Read and validate a price table; errors name the file and the key or line."""
    import yaml  # noqa: PLC0415 (lazy: yaml only with --prices)

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CostInputError(source, exc.strerror or str(exc)) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise CostInputError(
            source, f"not valid YAML: {getattr(exc, 'problem', exc)}", line
        ) from None
    return parse_prices(doc if doc is not None else {}, source)


def parse_prices(doc: Any, source: str = "<prices>") -> PriceTable:
    """Validate an already-loaded document (see the module doc for its keys)."""
    import jsonschema  # noqa: PLC0415 (lazy: jsonschema only with --prices)

    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            key = ".".join([*map(str, err.absolute_path), extra[0]]) if extra else key
            raise CostInputError(source, f"key {key}: unknown key")
        raise CostInputError(source, f"key {key}: {err.message}")
    gpu = doc.get("gpu_hour") or {}
    rules: dict[tuple[str, str], float] = {}
    for i, rule in enumerate(gpu.get("rules") or []):
        pair = (rule["partition"], rule["gpu_type"])
        if pair in rules:
            raise CostInputError(source, f"key gpu_hour.rules.{i}: duplicate rule for {pair}")
        rules[pair] = float(rule["rate"])
    billing = doc.get("billing")
    return PriceTable(
        currency=str(doc.get("currency", "")),
        gpu_default=None if gpu.get("default") is None else float(gpu["default"]),
        gpu_by_type={k: float(v) for k, v in (gpu.get("by_gpu_type") or {}).items()},
        gpu_by_partition={k: float(v) for k, v in (gpu.get("by_partition") or {}).items()},
        gpu_rules=rules,
        cpu_hour=float(doc.get("cpu_hour", 0.0)),
        billing_rate=None if billing is None else float(billing["rate"]),
        refund_states=frozenset(doc.get("refund_states") or ()),
        source=source,
    )
