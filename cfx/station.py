"""A station several inspectors share: which data roots the app may open, and who is deciding.

The app's data-root field opens only folders on the allow-list (the demo, ``$CFX_DATA_ROOT`` and
``$CFX_ALLOWED_ROOTS`` with everything below them, compared after resolving links), and answers
every other path with the same line (:data:`REFUSAL`), so the field cannot be used to learn what
exists on the server. Sign-in (a password from Streamlit's secrets, or a user name set by a
reverse proxy in a trusted header) is the app's (``pages/_auth.py``); this module holds the rules.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from cfx import config

#: the one answer to a data root outside the allow-list, whatever the reason
REFUSAL = ("this station does not open that folder: ask whoever runs it to allow it (CFX_ALLOWED_ROOTS) "
           "or to start the app with CFX_DATA_ROOT set to it")


def allowed_roots() -> list[Path]:
    """The resolved folders the app may open (each with everything below it)."""
    roots = [config.demo_root(), *config.allowed_roots_env()]
    env = config.env_data_root()
    if env is not None:
        roots.append(env)
    return [Path(os.path.realpath(r)) for r in roots]


def is_allowed(path: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved) is an allowed root or lies below one."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    return any(real == r or real.is_relative_to(r) for r in allowed_roots())


def password_matches(given: str, expected: str) -> bool:
    """A constant-time comparison of a typed password with the configured one."""
    return hmac.compare_digest(given.encode(), expected.encode())
