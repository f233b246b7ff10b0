"""API users (``config/api_users.yaml``): bearer tokens mapped to users, roles and organisations.

Only a token's SHA-256 is stored, never the token: ``sdv token new`` mints a token, prints it
once for its holder and prints the YAML entry (with ``token_sha256``) to paste into the file.
A presented token is hashed and compared with every stored hash in constant time
(:func:`hmac.compare_digest`), so neither the file nor response timings give a token away.
Tokens are 256-bit random values, so an unsalted fast hash is enough (there is no
dictionary of likely tokens to try, unlike passwords).

Each user names a role of the role policy (``config/policy.yaml``), the organisation they
read for (required when the role is scoped to one, e.g. a school DSL's school URN) and the
purpose used when a request does not state one in ``X-Purpose``, which must be one of the
role's purposes. The file is checked against the policy when it is loaded, so a typo fails at
start-up instead of as a 403 for someone at night.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from warehouse.access import User
from warehouse.policy import Policy, load_policy
from warehouse.yaml_model import load_yaml_model

USERS_FILE = "api_users.yaml"
USERS_ENV = "SDV_API_USERS"  # overrides <config_dir>/api_users.yaml
MAX_TOKEN = 512  # longer "tokens" are refused without hashing them


class ApiUsersError(ValueError):
    """The API users file is missing or invalid; the message names file and key."""


class ApiUser(BaseModel):
    """One API user: who they are, what role and organisation they read as, their token hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1, max_length=200)
    role: str = Field(min_length=1)
    organisation: str | None = None
    default_purpose: str = Field(min_length=1)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("user_id", "role", "default_purpose", "organisation")
    @classmethod
    def _stripped(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("token_sha256", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def user(self) -> User:
        """The access layer's view of this user."""
        return User(self.user_id, self.role, self.organisation)


class ApiUsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    users: list[ApiUser] = []

    @model_validator(mode="after")
    def _unique(self) -> ApiUsersFile:
        problems = []
        seen_ids: set[str] = set()
        seen_hashes: set[str] = set()
        for index, user in enumerate(self.users):
            if user.user_id in seen_ids:
                problems.append(f"users.{index}: user_id {user.user_id!r} is listed twice")
            if user.token_sha256 in seen_hashes:
                problems.append(f"users.{index}: token_sha256 is another user's token")
            seen_ids.add(user.user_id)
            seen_hashes.add(user.token_sha256)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def policy_problems(user: ApiUser, policy: Policy, where: str = "user") -> list[str]:
    """Why ``user`` cannot work under ``policy`` (empty when it can)."""
    role = policy.role(user.role)
    if role is None:
        roles = ", ".join(policy.roles)
        return [f"{where}.role: {user.role!r} is not a role in the policy ({roles})"]
    problems = []
    if role.scope is not None and not user.organisation:
        problems.append(
            f"{where}.organisation: role {user.role} reads for an organisation "
            f"({role.scope.organisation_type}): give its id"
        )
    if user.default_purpose not in role.purposes:
        problems.append(
            f"{where}.default_purpose: {user.default_purpose!r} is not one of role "
            f"{user.role}'s purposes ({', '.join(role.purposes)})"
        )
    return problems


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token, as stored in the users file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint_token() -> tuple[str, str]:
    """A new random bearer token and its hash: give the token, store the hash."""
    token = secrets.token_urlsafe(32)
    return token, token_sha256(token)


class ApiUsers:
    """The users the API knows, looked up by bearer token."""

    def __init__(self, users: Sequence[ApiUser] = ()) -> None:
        self._users = tuple(users)
        self._by_id = {user.user_id: user for user in self._users}

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[ApiUser]:
        return iter(self._users)

    def get(self, user_id: str) -> ApiUser | None:
        return self._by_id.get(user_id)

    def authenticate(self, token: str | None) -> ApiUser | None:
        """The user holding ``token``, or None. Every stored hash is compared, in constant
        time, so how long this takes does not depend on which (if any) matched."""
        if not token or len(token) > MAX_TOKEN:
            return None
        digest = token_sha256(token)
        found = None
        for user in self._users:
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found


def users_path(config_dir: Path) -> Path:
    """``$SDV_API_USERS`` if set, else ``<config_dir>/api_users.yaml``."""
    override = os.environ.get(USERS_ENV)
    return Path(override).resolve() if override else Path(config_dir) / USERS_FILE


def load_api_users(path: Path, policy: Policy | None = None) -> ApiUsers:
    """Read and validate the users file, checking each user against the role policy."""
    parsed = load_yaml_model(path, ApiUsersFile, ApiUsersError)
    policy = policy or load_policy()
    problems = [
        problem
        for index, user in enumerate(parsed.users)
        for problem in policy_problems(user, policy, f"users.{index}")
    ]
    if problems:
        raise ApiUsersError(f"{path}: {'; '.join(problems)}")
    return ApiUsers(parsed.users)


def user_entry(
    user_id: str,
    role: str,
    token_hash: str,
    *,
    organisation: str | None = None,
    default_purpose: str | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """A validated users-file entry; ``default_purpose`` defaults to the role's first."""
    policy = policy or load_policy()
    role_def = policy.role(role)
    if default_purpose is None and role_def is not None:
        default_purpose = role_def.purposes[0]
    try:
        user = ApiUser(
            user_id=user_id,
            role=role,
            organisation=organisation,
            default_purpose=default_purpose or "",
            token_sha256=token_hash,
        )
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ApiUsersError(problems) from err
    problems = policy_problems(user, policy)
    if problems:
        raise ApiUsersError("; ".join(problems))
    return user.model_dump(exclude_none=True)
