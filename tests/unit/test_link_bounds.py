"""Every string a sidecar can send is cut and cleaned before the hub keeps it: tried on
every field of every message a sidecar sends, found from the contract itself."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from hub.link.bounds import DEFAULT_MAX_CHARS, MAX_CHARS, MAX_MAP_ENTRIES, bound
from protos import link_pb2 as pb

HUGE = "\x1b[2J" + "x" * 100_003  # the fleet-token host name once stored at 100,007 chars


def _fill(message: Message, depth: int = 0) -> None:
    """Put hostile text in every string field, recursively (maps: many entries)."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).extend([HUGE, HUGE])
            else:
                setattr(message, field.name, HUGE)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                target = getattr(message, field.name)
                for index in range(MAX_MAP_ENTRIES + 10):
                    key = f"k{index}"
                    if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING:
                        target[key] = HUGE
            elif field.is_repeated:
                _fill(getattr(message, field.name).add(), depth + 1)
            elif entry.full_name != "google.protobuf.Timestamp":
                _fill(getattr(message, field.name), depth + 1)


def _strings(message: Message) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            found += [(field.name, v) for v in (value if field.is_repeated else [value])]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                assert len(value) <= MAX_MAP_ENTRIES
                found += [(field.name, v) for v in value.values() if isinstance(v, str)]
            else:
                for item in value if field.is_repeated else [value]:
                    found += _strings(item)
    return found


def _sent_by_a_sidecar() -> list[Descriptor]:
    oneof = pb.SidecarMessage.DESCRIPTOR.oneofs_by_name["body"]
    return [field.message_type for field in oneof.fields] + [pb.EnrollRequest.DESCRIPTOR]


def test_every_string_of_every_message_a_sidecar_sends_is_bounded_and_clean() -> None:
    checked = 0
    for descriptor in _sent_by_a_sidecar():
        message = getattr(pb, descriptor.name)()
        _fill(message)
        for name, value in _strings(bound(message)):
            assert len(value) <= MAX_CHARS.get(name, DEFAULT_MAX_CHARS), (descriptor.name, name)
            assert "\x1b" not in value, (descriptor.name, name)
            checked += 1
    assert checked > 50  # the walk reached the contract's text


def test_the_host_name_of_an_enrollment_is_cut_to_a_dns_name() -> None:
    request = bound(pb.EnrollRequest(hostname="h" * 100_007))
    assert len(request.hostname) == 253
