"""What `synth stages` prints: each registered stage, its parameters and its columns."""

from __future__ import annotations

import inspect

from pydantic_core import PydanticUndefined

from .registry import get_stage, stage_names


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def describe_stages(names: list[str] | None = None) -> list[dict]:
    out = []
    for name in names or stage_names():
        cls = get_stage(name)
        params = []
        for field_name, info in cls.Params.model_fields.items():
            default = info.default
            if info.default_factory is not None:
                default = info.default_factory()
            params.append(
                {
                    "name": field_name,
                    "type": _type_name(info.annotation),
                    "required": info.is_required(),
                    "default": None if default is PydanticUndefined else default,
                    "description": info.description or "",
                }
            )
        doc = inspect.getdoc(cls) or ""
        reads = writes = []
        try:  # columns that depend on parameters: describe with the field names as placeholders
            placeholder = cls.Params.model_construct(**{p["name"]: f"<{p['name']}>" for p in params if p["required"]})
            reads, writes = cls.reads(placeholder), cls.writes(placeholder)
        except Exception:
            pass
        out.append(
            {
                "name": name,
                "kind": cls.kind,
                "summary": doc.splitlines()[0] if doc else "",
                "reads": reads,
                "writes": writes,
                "params": params,
            }
        )
    return out
