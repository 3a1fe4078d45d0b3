"""storage.registry: the deployment history that /tune rollback walks, on SQLite and PostgreSQL."""

from __future__ import annotations

from storage import registry
from storage.db import session_scope


def _models(db, n: int) -> list[int]:
    with session_scope(db) as s:
        return [
            registry.add_model(
                session=s, base_model="base", adapter_path=f"/a/{i}", checksum="0" * 64
            ).id
            for i in range(n)
        ]


def _deploy(db, model_id: int, action: str = "deploy") -> None:
    with session_scope(db) as s:
        registry.mark_deployed(
            session=s,
            model=registry.get_model(session=s, ref=model_id),
            by_user="UADM",
            action=action,
        )


def _previous(db) -> int | None:
    with session_scope(db) as s:
        model = registry.previous_deployed(session=s)
        return model.id if model is not None else None


def test_rolling_back_again_goes_further_back_not_forth(db):
    a, b, c = _models(db, 3)
    for model in (a, b, c):
        _deploy(db, model)
    assert _previous(db) == b
    _deploy(db, b, action="rollback")  # C → B
    assert _previous(db) == a  # not C again
    _deploy(db, a, action="rollback")  # B → A
    assert _previous(db) is None  # next stop: the base model
    _deploy(db, c)  # a new deploy after rollbacks: back goes to A
    assert _previous(db) == a


def test_redeploying_the_deployed_model_does_not_make_it_its_own_predecessor(db):
    a, b = _models(db, 2)
    for model in (a, b, b):
        _deploy(db, model)
    assert _previous(db) == a


def test_a_rollback_to_the_base_model_empties_the_history(db):
    a, b = _models(db, 2)
    _deploy(db, a)
    _deploy(db, b)
    with session_scope(db) as s:
        registry.undeploy(session=s, by_user="UADM", detail="rollback")
    assert _previous(db) is None
    _deploy(db, b)
    assert _previous(db) is None
