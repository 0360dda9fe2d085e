"""Who is acting on the data layer: the user of the current request or Chainlit session.

Chainlit's `PUT/DELETE /feedback` routes set no Chainlit context, so the app sets
`request_user` for those requests; elsewhere the Chainlit session's user is the actor.
"""

from __future__ import annotations

import contextvars

request_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_user", default=None)


def current_user_identifier() -> str | None:
    """The acting user's identifier, or None when unknown (scripts, tests, background jobs)."""
    if (identifier := request_user.get()) is not None:
        return identifier
    try:
        from chainlit.context import context

        user = context.session.user
    except Exception:  # no Chainlit context at all: nobody is acting
        return None
    return getattr(user, "identifier", None) if user else None


def current_session_thread() -> str | None:
    """The thread of the current Chainlit session, if any."""
    try:
        from chainlit.context import context

        return context.session.thread_id
    except Exception:  # no Chainlit context
        return None
