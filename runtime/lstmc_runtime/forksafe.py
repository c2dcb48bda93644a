"""Locks that a forked child gets anew.

A fork copies a lock as it is. One that another thread held at the fork (a kernel runs
without the GIL, a compile for seconds: forks land there) stays held in the child, where
that thread does not exist, and the child's next call waits forever. An owner that makes
its lock here (`fork_safe_lock(owner, "name")`) gets a fresh one assigned to
`owner.name` in every forked child; the lock itself is a plain threading.Lock, at no
cost to the calls that take it."""
from __future__ import annotations

import os
import threading
import weakref

_owners: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def fork_safe_lock(owner: object, attribute: str) -> threading.Lock:
    """A new lock for `owner.<attribute>` (an object or a module), renewed there in
    forked children."""
    _owners.setdefault(owner, set()).add(attribute)
    return threading.Lock()


def _renew() -> None:
    for owner, attributes in list(_owners.items()):
        for attribute in attributes:
            setattr(owner, attribute, threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew)
