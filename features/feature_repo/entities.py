"""Feast entities: one, the resolved customer."""

from __future__ import annotations

from feast import Entity, ValueType

from features.contract import ENTITY, ENTITY_KEY


def customer_entity() -> Entity:
    """The person behind every channel, as resolved by identity resolution (``customer_id``)."""
    return Entity(
        name=ENTITY,
        join_keys=[ENTITY_KEY],
        value_type=ValueType.STRING,
        description="A customer resolved across store, web, app, email, SMS, call centre and "
        "social identifiers.",
    )
