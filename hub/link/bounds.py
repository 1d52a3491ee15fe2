"""Bounds on what a sidecar sends: every string field of every message, cut and cleaned.

A sidecar is trusted with its own gateway, not with the hub's memory, logs or
dashboard: a Hello's host name, a run's error message or a drift detail is kept by
the hub and shown to admins. Every string field of an incoming message (found by
walking the message's descriptor, so a field added to link.proto is covered without
being listed) is cut to its limit and its control characters made visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from missioncontrol.text import displayable

DEFAULT_MAX_CHARS = 1024
M = TypeVar("M", bound=Message)
MAX_MAP_ENTRIES = 256  # e.g. a workspace's file hashes: a handful
# Field names whose values are longer by nature, or must stay short.
MAX_CHARS: Mapping[str, int] = {
    "hostname": 253,  # a DNS name
    "sidecar_version": 64,
    "openclaw_version": 64,
    "last_touched_version": 64,
    "workspace_root": 4096,  # PATH_MAX
    "workspace": 4096,  # an unmanaged agent's workspace
    "agent_api_url": 2048,
    "path": 2048,  # an agent call's path
    "query": 8192,
    "error": 4096,
    "message": 4096,
    "unreachable_reason": 4096,
    "config_error": 4096,
    "detail": 1024,
    "status": 64,
    "agent_id": 128,
    "current_task_id": 128,
}


def bound(message: M) -> M:
    """Cut and clean every string field of `message` (and the messages inside it), in place."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_map(field):
                _bound_map(field, value)
            elif field.is_repeated:
                for item in value:
                    bound(item)
            else:
                bound(value)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                value[:] = [_text(field.name, item) for item in value]
            else:
                setattr(message, field.name, _text(field.name, value))
    return message


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _bound_map(field: FieldDescriptor, mapping: Any) -> None:
    entry = field.message_type
    assert entry is not None
    value_type = entry.fields_by_name["value"].type
    for index, key in enumerate(list(mapping)):
        if index >= MAX_MAP_ENTRIES:
            del mapping[key]
        elif value_type == FieldDescriptor.TYPE_MESSAGE:
            bound(mapping[key])
        elif value_type == FieldDescriptor.TYPE_STRING:
            mapping[key] = _text(field.name, mapping[key])


def _text(name: str, value: str) -> str:
    # Identifiers and tokens too: a cleaned one matches nothing, as its original would not.
    return displayable(value, max_chars=MAX_CHARS.get(name, DEFAULT_MAX_CHARS))
