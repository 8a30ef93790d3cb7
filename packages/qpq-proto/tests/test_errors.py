"""The exception tree and the one-to-one mapping of wire codes onto it."""

from __future__ import annotations

import pytest

from qpq_proto import (
    ErrorCode,
    ErrorResponse,
    decode_event,
    decode_response,
    encode_event,
    encode_response,
)
from qpq_proto import errors as e
from qpq_proto._schema import schema

SERVICE_ERRORS = [
    cls
    for cls in vars(e).values()
    if isinstance(cls, type) and issubclass(cls, e.ServiceError) and cls is not e.ServiceError
]


def _snake(camel: str) -> str:
    return "".join(f"_{c}" if c.isupper() else c.upper() for c in camel)


def test_error_codes_match_the_schema_enum() -> None:
    enumerants = dict(schema().ErrorCode.schema.enumerants)
    assert {_snake(name): value for name, value in enumerants.items()} == {
        code.name: code.value for code in ErrorCode
    }


def test_every_code_has_exactly_one_class_and_back() -> None:
    assert len(SERVICE_ERRORS) == len(ErrorCode)
    assert {cls.code for cls in SERVICE_ERRORS} == set(ErrorCode)
    for cls in SERVICE_ERRORS:
        assert type(e.service_error(cls.code, "m")) is cls
        assert cls.__name__ in e.__all__


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_code_to_exception_to_wire_and_back(code: ErrorCode) -> None:
    field = "limit" if code is ErrorCode.INVALID_ARGUMENT else ""
    exc = e.service_error(code, f"{code.name} message", field)
    assert type(exc).code is code
    assert isinstance(exc, e.ServiceError)
    assert exc.code is code
    assert exc.message == f"{code.name} message"
    assert exc.field == field

    response = ErrorResponse.from_exception(exc)
    assert response == ErrorResponse(code, f"{code.name} message", field)
    for wire in (decode_response(encode_response(response)), decode_event(encode_event(response))):
        assert wire == response
        rebuilt = wire.to_exception()  # type: ignore[union-attr]
        assert type(rebuilt) is type(exc)
        assert (rebuilt.code, rebuilt.message, rebuilt.field) == (code, exc.message, field)


def test_service_error_accepts_raw_integer_codes() -> None:
    assert type(e.service_error(6, "gone")) is e.NotFoundError


@pytest.mark.parametrize("raw", [17, 99, 0xFFFF, -1])
def test_unknown_code_becomes_internal_error(raw: int) -> None:
    exc = e.service_error(raw, "newer server", "f")
    assert type(exc) is e.InternalError
    assert str(raw) in exc.message
    assert "newer server" in exc.message
    assert exc.field == "f"


def test_tree_keeps_local_remote_and_service_apart() -> None:
    for cls in (e.LocalProtocolError, e.RemoteProtocolError, e.ServiceError):
        assert issubclass(cls, e.QpqError)
    for cls in (
        e.MalformedMessageError,
        e.MessageTooLargeError,
        e.TruncatedMessageError,
        e.StreamResetError,
    ):
        assert issubclass(cls, e.RemoteProtocolError)
        assert not issubclass(cls, e.ServiceError)
    for cls in SERVICE_ERRORS:
        assert not issubclass(cls, e.RemoteProtocolError | e.LocalProtocolError)
    assert not issubclass(e.LocalProtocolError, e.RemoteProtocolError)


def test_default_message_is_the_class_doc() -> None:
    exc = e.NotFoundError()
    assert exc.message == "The requested item does not exist."
    assert str(exc) == exc.message


def test_str_names_the_field() -> None:
    exc = e.InvalidArgumentError("bad", field="limit")
    assert str(exc) == "bad (field: limit)"
    assert exc.field == "limit"


def test_stream_reset_error_carries_the_code() -> None:
    exc = e.StreamResetError("reset", error_code=7)
    assert exc.error_code == 7
    assert e.StreamResetError("reset").error_code == 0
