"""``tf.train.Example`` and ``tf.train.SequenceExample`` message classes, without TensorFlow.

The messages are described here as data (a ``FileDescriptorProto`` with the field names and
numbers of TensorFlow's ``example.proto`` and ``feature.proto``) and the protobuf runtime builds
the classes when this module is imported. That keeps the project free of a ``protoc`` build step
and of generated code, and the classes still get the runtime's native (upb) parser. They live in
a private descriptor pool, so importing TensorFlow in the same process cannot clash with them.

Wire compatibility is what matters and is tested against files TensorFlow wrote: the messages
are proto3, so the numeric lists are packed, as TensorFlow writes them (parsing accepts both).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "tensorflow"
_F = descriptor_pb2.FieldDescriptorProto


def _field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    repeated: bool = False,
    type_name: str | None = None,
    oneof: int | None = None,
) -> None:
    field = msg.field.add(name=name, number=number, type=kind)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name is not None:
        field.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof


def _map_field(msg: descriptor_pb2.DescriptorProto, name: str, entry: str, value_type: str) -> None:
    """``map<string, value_type> name = 1``: protobuf encodes a map as a nested entry message."""
    nested = msg.nested_type.add(name=entry)
    nested.options.map_entry = True
    _field(nested, "key", 1, _F.TYPE_STRING)
    _field(nested, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    _field(msg, name, 1, _F.TYPE_MESSAGE, repeated=True, type_name=f"{msg.name}.{entry}")


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="vidfeat/yt8m/example.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, kind in (
        ("BytesList", _F.TYPE_BYTES),
        ("FloatList", _F.TYPE_FLOAT),
        ("Int64List", _F.TYPE_INT64),
    ):
        _field(fd.message_type.add(name=name), "value", 1, kind, repeated=True)

    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for name, number, type_name in (
        ("bytes_list", 1, "BytesList"),
        ("float_list", 2, "FloatList"),
        ("int64_list", 3, "Int64List"),
    ):
        _field(feature, name, number, _F.TYPE_MESSAGE, type_name=type_name, oneof=0)

    _map_field(fd.message_type.add(name="Features"), "feature", "FeatureEntry", "Feature")
    feature_list = fd.message_type.add(name="FeatureList")
    _field(feature_list, "feature", 1, _F.TYPE_MESSAGE, repeated=True, type_name="Feature")
    _map_field(
        fd.message_type.add(name="FeatureLists"), "feature_list", "FeatureListEntry", "FeatureList"
    )

    example = fd.message_type.add(name="Example")
    _field(example, "features", 1, _F.TYPE_MESSAGE, type_name="Features")
    sequence = fd.message_type.add(name="SequenceExample")
    _field(sequence, "context", 1, _F.TYPE_MESSAGE, type_name="Features")
    _field(sequence, "feature_lists", 2, _F.TYPE_MESSAGE, type_name="FeatureLists")
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message_class(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


Feature = _message_class("Feature")
Features = _message_class("Features")
FeatureList = _message_class("FeatureList")
FeatureLists = _message_class("FeatureLists")
Example = _message_class("Example")
SequenceExample = _message_class("SequenceExample")

__all__ = ["Example", "Feature", "FeatureList", "FeatureLists", "Features", "SequenceExample"]
