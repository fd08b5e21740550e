"""The method registry: the one place that knows which names ``pretrain.ssl.method`` accepts."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.config import SSLConfig
    from pipeline.methods.base import Method
    from pipeline.models.encoder import Encoder

_REGISTRY: dict[str, type[Method[Any]]] = {}

# The registered methods by name, in registration order: a read-only view that follows registrations.
METHODS: Mapping[str, type[Method[Any]]] = MappingProxyType(_REGISTRY)

M = TypeVar("M", bound="type[Method[Any]]")

# The names of pipeline.config.SSLConfig's own fields and methods: a method's name keys its section of
# that config, so it must not shadow them (nor pydantic's BaseModel attributes). Listed here rather than
# read from SSLConfig because the config imports this registry to validate itself;
# tests/methods/test_adding_a_method.py checks the list against SSLConfig.
SSL_CONFIG_NAMES = frozenset({"method", "section"})


def register_method(cls: M) -> M:
    """Class decorator: make a :class:`~pipeline.methods.base.Method` selectable by its ``name``.

    The name becomes a valid ``pretrain.ssl.method`` and the key of the method's own parameter section,
    ``pretrain.ssl.<name>``, checked by its ``params_model``.

    Args:
        cls: the method class; ``cls.name`` must be a Python identifier other than ``method``.

    Returns:
        ``cls`` itself, so that ``@register_method`` decorates the class definition.

    Raises:
        ValueError: the name is not an identifier, is ``method`` (or another attribute of
            :class:`~pipeline.config.SSLConfig`), or another class holds it already.
    """
    name = getattr(cls, "name", None)
    # The name keys the method's section of SSLConfig: it must not shadow the config's own attributes.
    if (not isinstance(name, str) or not name.isidentifier() or name in SSL_CONFIG_NAMES
            or hasattr(BaseModel, name)):
        raise ValueError(f"{cls.__name__}.name must be a Python identifier that is not a pretrain.ssl key or "
                         f"an SSLConfig attribute, got {name!r}")
    held = _REGISTRY.get(name)
    if held is not None and held is not cls:
        raise ValueError(f"method {name!r} is already registered by {held.__module__}.{held.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (a test's toy method, when the test ends); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def method_class(name: str) -> type[Method[Any]]:
    """The registered class called ``name``.

    Raises:
        ValueError: no method of that name is registered (the message lists those that are).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def build_method(cfg: SSLConfig, encoder: Encoder) -> Method[Any]:
    """The method ``cfg.method`` with its own parameters (``pretrain.ssl.<method>``), for ``encoder``.

    Args:
        cfg: the ``pretrain.ssl`` section.
        encoder: the online encoder the method trains (a target network copies it).

    Returns:
        The method, an ``nn.Module`` on the CPU; the loop moves it to the encoder's device.

    Raises:
        ValueError: ``cfg.method`` is not registered.
    """
    try:
        cls = method_class(cfg.method)
    except ValueError as exc:
        raise UserError(f"pretrain.ssl.method: {exc}") from None
    return cls(cfg.section(cfg.method), encoder)
