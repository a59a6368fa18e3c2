"""Authentication domains of RBAC users (the 2.x ``couchbase.auth_domain``).

A user lives in one domain: :attr:`AuthDomain.Local` (defined and
authenticated by the cluster itself) or :attr:`AuthDomain.External`
(authenticated elsewhere, e.g. LDAP; such users have no password on the
cluster). :class:`~couchbase_core.admin.Admin` takes these values, and also
the REST API's own names ``'local'`` and ``'external'``.
"""

from __future__ import annotations

from typing import Any

from couchbase_core.exceptions import ArgumentError

__all__ = ["AuthDomain", "domain_path_name"]


class AuthDomain:
    """The authentication domain of a user: ``Local`` (0) or ``External`` (1),
    the values 2.x used."""

    Local, External = range(2)


_NAMES = {AuthDomain.Local: "local", AuthDomain.External: "external"}


def domain_path_name(domain: Any) -> str:
    """The REST name of ``domain`` (``'local'`` or ``'external'``).

    Accepts :attr:`AuthDomain.Local` / :attr:`AuthDomain.External` and the
    strings ``'local'`` / ``'external'``.

    Raises:
        ArgumentError: for any other value (a bool included), naming it.
    """
    if isinstance(domain, str) and domain in ("local", "external"):
        return domain
    if isinstance(domain, int) and not isinstance(domain, bool) and domain in _NAMES:
        return _NAMES[domain]
    raise ArgumentError("unknown authentication domain %r: use AuthDomain.Local or AuthDomain.External "
                        "('local' or 'external')" % (domain,))
