"""Async access to the job bucket (aioboto3), with the shared retry policy.

Everything the pipeline reads or writes in S3 goes through ``Store``; key names come from
``pipeline.keys``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel

from pipeline import aws
from pipeline.config import Settings, sse_params

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    last_modified: datetime
    size: int


class NotFound(KeyError):
    pass


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed (If-Match) or already exists (If-None-Match)."""


class TooLarge(ValueError):
    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key}: {size} bytes > limit {limit}")
        self.size = size
        self.limit = limit


def _is_not_found(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}


class Store:
    def __init__(self, s3: Any, bucket: str, put_params: dict[str, str] | None = None) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.put_params = put_params or {}  # e.g. server-side encryption, applied to every write

    @classmethod
    @asynccontextmanager
    async def open(cls, bucket: str, put_params: dict[str, str] | None = None) -> AsyncIterator[Store]:
        async with aws.session().client("s3", config=aws.client_config()) as s3:
            yield cls(s3, bucket, put_params)

    async def _call(self, op: str, **kwargs: Any) -> Any:
        async for attempt in aws.async_retrying():
            with attempt:
                return await getattr(self.s3, op)(Bucket=self.bucket, **kwargs)
        raise AssertionError("unreachable")

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        return (await self._get(key, max_bytes))[0]

    async def _get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """Body and ETag; NotFound, or TooLarge before reading a body over ``max_bytes``."""
        async for attempt in aws.async_retrying():
            with attempt:
                try:
                    resp = await self.s3.get_object(Bucket=self.bucket, Key=key)
                except ClientError as e:
                    if _is_not_found(e):
                        raise NotFound(key) from None
                    raise
                size = resp["ContentLength"]
                async with resp["Body"] as body:
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(key, size, max_bytes)
                    return await body.read(), resp["ETag"]
        raise AssertionError("unreachable")

    async def get_json(self, key: str) -> Any:
        return json.loads(await self.get_bytes(key))

    async def get_model(self, key: str, model: type[M]) -> M | None:
        return (await self.get_model_etag(key, model))[0]

    async def get_model_etag(self, key: str, model: type[M]) -> tuple[M | None, str | None]:
        """The document and its ETag (for a later conditional write), or (None, None)."""
        try:
            body, etag = await self._get(key)
        except NotFound:
            return None, None
        return model.model_validate_json(body), etag

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write an object; returns its ETag. ``if_match``/``if_none_match`` make it conditional
        (S3 answers 412, raised as PreconditionFailed)."""
        extra: dict[str, str] = dict(self.put_params)
        if if_match:
            extra["IfMatch"] = if_match
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            resp = await self._call("put_object", Key=key, Body=data, ContentType=content_type, **extra)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise PreconditionFailed(key) from None
            if if_match and code in {"NoSuchKey", "404"}:
                raise PreconditionFailed(key) from None  # the version we read is gone altogether
            raise
        return resp.get("ETag", "")

    async def put_json(
        self, key: str, doc: BaseModel | dict[str, Any], *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        body = doc.model_dump_json(indent=2) if isinstance(doc, BaseModel) else json.dumps(doc, indent=2)
        return await self.put_bytes(
            key, body.encode(), "application/json", if_match=if_match, if_none_match=if_none_match
        )

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload a local file in parts (s3transfer's managed upload): memory stays bounded by the
        part size whatever the file's size, so a 2-hour chapter does not have to fit in RAM."""
        from boto3.s3.transfer import TransferConfig

        part = 8 * 1024 * 1024  # S3's minimum part is 5 MiB
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= part:  # most jobs: one plain PUT, as for any other object
            await self.put_bytes(key, await asyncio.to_thread(path.read_bytes), content_type)
            return
        # aioboto3 reads ahead up to max_io_queue_size parts (100 by default: the whole file);
        # here at most 2 queued + 2 in flight, ~32 MiB whatever the file's size.
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=2, max_io_queue=2)
        extra = {"ContentType": content_type, **self.put_params}
        async for attempt in aws.async_retrying():
            with attempt:
                await self.s3.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Config=config)
                return
        raise AssertionError("unreachable")

    async def head(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._call("head_object", Key=key)
        except ClientError as e:
            if _is_not_found(e):
                return None
            raise

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    async def list_keys(self, prefix: str) -> list[str]:
        return [o.key for o in await self.list_objects(prefix)]

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix``: one LIST request per 1,000 keys. A transient failure on
        any page restarts the listing (under the shared retry policy, as every other call)."""
        async for attempt in aws.async_retrying():
            with attempt:
                out: list[ObjectInfo] = []
                paginator = self.s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                    contents = page.get("Contents", [])
                    out.extend(ObjectInfo(o["Key"], o["LastModified"], o.get("Size", 0)) for o in contents)
                return out
        raise AssertionError("unreachable")

    async def presign_get(self, key: str, expires_s: int) -> str:
        return await self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )


def open_store(settings: Settings) -> AbstractAsyncContextManager[Store]:
    """The job bucket, with the configured server-side encryption on every write."""
    return Store.open(settings.bucket, sse_params(settings))
