"""Who is using the hub: the local admin user (USER.md is rendered from it), their role."""

from __future__ import annotations

import zoneinfo
from typing import Any

from pydantic import BaseModel, Field, field_validator

from hub.api.core import MULTILINE, Api, Call, Strict
from hub.api.deps import deps
from hub.users import LOCAL_USER_ID, read_user, update_user
from missioncontrol.timefmt import iso

ORGANIZATION_ID = "local"


class UserRead(BaseModel):
    id: str
    name: str
    preferred_name: str
    pronouns: str
    timezone: str
    notes: str
    context: str
    timezone_missing: bool  # reported, never a redirect loop: agents then assume UTC
    created_at: str | None
    updated_at: str | None


class UserUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    preferred_name: str | None = Field(None, max_length=200)
    pronouns: str | None = Field(None, max_length=64)
    timezone: str | None = Field(None, max_length=64)
    notes: str | None = Field(None, max_length=4000, json_schema_extra=MULTILINE)
    context: str | None = Field(None, max_length=4000, json_schema_extra=MULTILINE)

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, value: str | None) -> str | None:
        if value:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin"
                ) from None
        return value


class Member(BaseModel):
    organization_id: str
    user_id: str
    role: str
    all_boards_read: bool
    all_boards_write: bool


class Bootstrap(BaseModel):
    user: UserRead
    member: Member
    auth_mode: str


def user_read(user: dict[str, Any]) -> UserRead:
    return UserRead(
        **{
            **user,
            "timezone_missing": not user["timezone"],
            "created_at": iso(user["created_at"]),
            "updated_at": iso(user["updated_at"]),
        }
    )


MEMBER = Member(
    organization_id=ORGANIZATION_ID,
    user_id=LOCAL_USER_ID,
    role="owner",
    all_boards_read=True,
    all_boards_write=True,
)


def register(api: Api) -> None:
    tags = ("identity",)

    @api.route(
        "GET",
        "/api/v1/auth/bootstrap",
        summary="Who am I, and what may I do",
        tags=tags,
        response=Bootstrap,
    )
    async def bootstrap(call: Call) -> Bootstrap:
        user = await deps(call.request).db.read(read_user)
        return Bootstrap(user=user_read(user), member=MEMBER, auth_mode="local")

    @api.route("GET", "/api/v1/users/me", summary="The current user", tags=tags, response=UserRead)
    async def get_me(call: Call) -> UserRead:
        return user_read(await deps(call.request).db.read(read_user))

    @api.route(
        "PATCH",
        "/api/v1/users/me",
        summary="Update the current user (what USER.md says about whom the agents work for)",
        tags=tags,
        body=UserUpdate,
        response=UserRead,
    )
    async def patch_me(call: Call) -> UserRead:
        values = call.body.model_dump(exclude_unset=True, exclude_none=True)
        user = await deps(call.request).db.write(lambda conn: update_user(conn, values))
        return user_read(user)

    @api.route(
        "GET",
        "/api/v1/organizations/me/member",
        summary="The current user's role",
        tags=tags,
        response=Member,
    )
    async def member(call: Call) -> Member:
        return MEMBER
