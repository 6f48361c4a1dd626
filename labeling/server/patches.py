"""Fixes applied to argilla-server 2.8.0 by our launcher before uvicorn starts.

`GET /api/v1/records/{record_id}` eager-loads `Record.vectors` but not each vector's
`vector_settings`; the response schema then reads `vector.vector_settings.name`, a lazy load outside
the async session ("greenlet_spawn has not been called"), so every record with vectors answers 500
(opening a "similar records" URL in the UI shows an error). We swap that one route for an
equivalent handler that also eager-loads `Vector.vector_settings`. Same path, schema, auth policy.

No `from __future__ import annotations` here: FastAPI resolves the handler's annotations at runtime.
"""
from uuid import UUID

from fastapi import Depends, Security
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

RECORD_ROUTE = "/records/{record_id}"


def _get_record_handler():
    from argilla_server.api.policies.v1 import RecordPolicy, authorize
    from argilla_server.database import get_async_db
    from argilla_server.models import Record, User, Vector
    from argilla_server.security import auth

    async def get_record(
        *,
        db: AsyncSession = Depends(get_async_db),
        record_id: UUID,
        current_user: User = Security(auth.get_current_user),
    ):
        record = await Record.get_or_raise(
            db,
            record_id,
            options=[
                selectinload(Record.dataset),
                selectinload(Record.suggestions),
                selectinload(Record.responses),
                selectinload(Record.vectors).selectinload(Vector.vector_settings),
            ],
        )
        await authorize(current_user, RecordPolicy.get(record))
        return record

    return get_record


def patch_get_record_route() -> bool:
    """Replace the upstream GET /records/{record_id} route in place; True when patched."""
    from argilla_server.api.routes import api_v1
    from argilla_server.api.schemas.v1.records import Record as RecordSchema

    routes = api_v1.router.routes
    for index, route in enumerate(routes):
        if isinstance(route, APIRoute) and route.path == RECORD_ROUTE and route.methods == {"GET"}:
            api_v1.router.add_api_route(
                RECORD_ROUTE,
                _get_record_handler(),
                methods=["GET"],
                response_model=RecordSchema,
                tags=route.tags,
                dependencies=route.dependencies,
                name=route.name,
            )
            routes[index] = routes.pop()  # the new route takes the old one's place in matching order
            return True
    return False
