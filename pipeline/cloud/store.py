"""Async access to the job bucket (aioboto3), with the shared retry policy.

Everything the pipeline reads or writes in S3 goes through ``Store``; key names come from
``pipeline.jobs.keys``. Every attempt of every call is bounded by the store's ``Calls.timeout_s``
(a hung connection is a transient failure, retried), and every store says who it is in the
User-Agent (``Calls.agent``).

Outputs a result will name are written with ``put_new`` / ``put_file_new``: created once
(``If-None-Match: *``, multipart completion included) and recognised as our own when a retry
meets the copy its lost first try left, so a retried upload never leaves a second version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from pipeline.cloud import aws
from pipeline.config import Settings, sse_params

M = TypeVar("M", bound=BaseModel)

PART_BYTES = 8 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB)
_PARTS_IN_FLIGHT = 2  # with one being read: ~24 MiB of a file in memory, whatever its size
RANGE_BLOCK = 1024 * 1024  # what Store.ranges reads per request
_WRITE_TOKEN = "tts-write"  # metadata naming one logical write, identical on all its retries
_DELETE_BATCH = 1000  # DeleteObjects limit


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    last_modified: datetime
    size: int


class NotFound(KeyError):
    pass


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed (If-Match) or already exists (If-None-Match)."""


class Unreadable(ValueError):
    """A stored document that is not the model it should be: planted, corrupted, or written by a
    version this one cannot read. A ValueError, so readers that skip a bad document still do."""

    def __init__(self, key: str, model: str, detail: str) -> None:
        super().__init__(f"{key} is not a readable {model} document: {detail}")
        self.key = key
        self.etag: str | None = None  # the unreadable version's, for a conditional write over it


def parse_document(key: str, body: bytes, model: type[M]) -> M:
    """``body`` as ``model``, or ``Unreadable``: never another exception, whatever the bytes."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        # Only the first problem, without pydantic's echo of the input (which could be megabytes).
        first = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise Unreadable(key, model.__name__, f"{e.error_count()} error(s), first at {where}: {first['msg']}") from None


class RangeIgnored(RuntimeError):
    """A ranged GET answered with other bytes than the range asked for."""

    def __init__(self, key: str, start: int) -> None:
        super().__init__(f"{key}: the answer to a read from byte {start} is not that range")


class TooLarge(ValueError):
    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key}: {size} bytes > limit {limit}")
        self.size = size
        self.limit = limit


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _is_not_found(e: ClientError) -> bool:
    return _code(e) in {"NoSuchKey", "404", "NotFound"}


def _total_size(resp: dict[str, Any]) -> int:
    """The object's size from a ranged answer (``Content-Range: bytes a-b/total``)."""
    total = str(resp.get("ContentRange", "")).rpartition("/")[2]
    return int(total) if total.isdigit() else int(resp.get("ContentLength", 0))


def _is_precondition(e: ClientError) -> bool:
    # Not ConditionalRequestConflict (409): that one is transient (pipeline/cloud/aws.py).
    return _code(e) in {"PreconditionFailed", "412"}


class Store:
    def __init__(
        self, s3: Any, bucket: str, put_params: dict[str, str] | None = None, calls: aws.Calls | None = None
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.put_params = put_params or {}  # e.g. server-side encryption, applied to every write
        self.calls = calls or aws.Calls()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, bucket: str, put_params: dict[str, str] | None = None, calls: aws.Calls | None = None, max_pool: int = 16
    ) -> AsyncIterator[Store]:
        calls = calls or aws.Calls()
        async with aws.session().client("s3", config=calls.config(max_pool)) as s3:
            yield cls(s3, bucket, put_params, calls)

    def with_calls(self, calls: aws.Calls) -> Store:
        """The same bucket and client under another call policy (e.g. a deadline)."""
        return Store(self.s3, self.bucket, self.put_params, calls)

    async def _call(self, op: str, *, size: int = 0, **kwargs: Any) -> Any:
        """One call under the retry policy; each attempt bounded (longer for ``size`` bytes of body)."""
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.for_bytes(size)):
                    return await getattr(self.s3, op)(Bucket=self.bucket, **kwargs)
        raise AssertionError("unreachable")

    # -- reads ------------------------------------------------------------------------------------

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        return (await self._get(key, max_bytes))[0]

    async def _get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """Body and ETag; NotFound, or TooLarge before reading a body over ``max_bytes``."""
        async for attempt in self.calls.retrying():
            with attempt:
                resp = await self._get_object(key)
                size = resp["ContentLength"]
                async with resp["Body"] as body:
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(key, size, max_bytes)
                    async with asyncio.timeout(self.calls.for_bytes(size)):
                        return await body.read(), resp["ETag"]
        raise AssertionError("unreachable")

    async def get_range(self, key: str, start: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes of an object from byte ``start`` (fewer at its end), and the object's
        size; NotFound. One GetObject with a Range, read whole under the call's deadline: the
        connection goes back to the pool at once, however slowly the caller hands the bytes on
        (a reader that never reads cannot hold one of the client's connections)."""
        if start < 0 or length < 1:
            raise ValueError(f"bad range {start}+{length}")
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.timeout_s):
                    try:
                        resp = await self.s3.get_object(
                            Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
                        )
                    except ClientError as e:
                        if _is_not_found(e):
                            raise NotFound(key) from None
                        if _code(e) == "InvalidRange":  # start at or past the end
                            return b"", start
                        raise
                size = _total_size(resp)
                async with resp["Body"] as body, asyncio.timeout(self.calls.for_bytes(length)):
                    if not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-"):
                        # An answer that ignored the Range (the whole object) is not these bytes.
                        raise RangeIgnored(key, start)
                    data = await body.read()  # a range's answer: at most ``length`` bytes
                if len(data) > length:
                    raise RangeIgnored(key, start)
                return data, size
        raise AssertionError("unreachable")

    async def size(self, key: str, max_bytes: int | None = None) -> int:
        """An object's size; NotFound; TooLarge over ``max_bytes``."""
        head = await self.head(key)
        if head is None:
            raise NotFound(key)
        size = int(head["ContentLength"])
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(key, size, max_bytes)
        return size

    async def ranges(self, key: str, size: int, start: int = 0, block: int = RANGE_BLOCK) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``size`` of an object, ``block`` at a time, each a ranged GET of its
        own (``get_range``): memory and connections held stay one block, whatever the object's
        size or the reader's pace. Ends early if the object is shorter than ``size``."""
        at = start
        while at < size:
            data, _ = await self.get_range(key, at, min(block, size - at))
            if not data:
                return
            at += len(data)
            yield data

    async def _get_object(self, key: str) -> dict[str, Any]:
        """One GetObject, up to its headers (the body is the caller's to read); NotFound."""
        async with asyncio.timeout(self.calls.timeout_s):
            try:
                return await self.s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if _is_not_found(e):
                    raise NotFound(key) from None
                raise

    async def get_json(self, key: str) -> Any:
        return json.loads(await self.get_bytes(key))

    async def get_model(self, key: str, model: type[M], max_bytes: int | None = None) -> M | None:
        return (await self.get_model_etag(key, model, max_bytes))[0]

    async def get_model_etag(
        self, key: str, model: type[M], max_bytes: int | None = None
    ) -> tuple[M | None, str | None]:
        """The document and its ETag (for a later conditional write), or (None, None); ``Unreadable``
        if it is not a ``model`` document."""
        try:
            body, etag = await self._get(key, max_bytes)
        except NotFound:
            return None, None
        try:
            return parse_document(key, body, model), etag
        except Unreadable as e:
            e.etag = etag
            raise

    async def head(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._call("head_object", Key=key)
        except ClientError as e:
            if _is_not_found(e):
                return None
            raise

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        return [o.key for o in await self.list_objects(prefix, start_after)]

    async def list_objects(self, prefix: str, start_after: str | None = None) -> list[ObjectInfo]:
        """Every object under ``prefix`` (after ``start_after``, in key order): one LIST request
        per 1,000 keys. A transient failure on any page restarts the listing (under the shared
        retry policy, as every other call)."""
        async for attempt in self.calls.retrying():
            with attempt:
                out: list[ObjectInfo] = []
                token: dict[str, str] = {"StartAfter": start_after} if start_after else {}
                while True:
                    async with asyncio.timeout(self.calls.timeout_s):
                        page = await self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **token)
                    contents = page.get("Contents", [])
                    out.extend(ObjectInfo(o["Key"], o["LastModified"], o.get("Size", 0)) for o in contents)
                    if not page.get("IsTruncated"):
                        return out
                    token = {"ContinuationToken": page["NextContinuationToken"]}
        raise AssertionError("unreachable")

    async def presign_get(self, key: str, expires_s: int) -> str:
        return await self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    # -- writes -----------------------------------------------------------------------------------

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Write an object; returns its ETag. ``if_match``/``if_none_match`` make it conditional
        (S3 answers 412, raised as PreconditionFailed)."""
        extra: dict[str, Any] = dict(self.put_params)
        if if_match:
            extra["IfMatch"] = if_match
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if metadata:
            extra["Metadata"] = metadata
        try:
            resp = await self._call("put_object", size=len(data), Key=key, Body=data, ContentType=content_type, **extra)
        except ClientError as e:
            if _is_precondition(e):
                raise PreconditionFailed(key) from None
            if if_match and _code(e) in {"NoSuchKey", "404"}:
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

    async def put_new(self, key: str, data: bytes, content_type: str) -> None:
        """Create ``key`` once. A retry that meets the object its own lost try created succeeds;
        an object anyone else created raises PreconditionFailed."""
        token = uuid.uuid4().hex
        try:
            await self.put_bytes(key, data, content_type, if_none_match=True, metadata={_WRITE_TOKEN: token})
        except PreconditionFailed:
            await self._check_own(key, token)

    async def put_file_new(self, key: str, path: Path, content_type: str) -> None:
        """``put_new`` for a local file of any size: up to ``PART_BYTES`` in one PUT, else a
        multipart upload whose parts are retried one by one (a fault costs one part, not the file)
        and whose completion is conditional. Memory stays at a few parts whatever the file's size."""
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= PART_BYTES:  # most jobs
            await self.put_new(key, await asyncio.to_thread(path.read_bytes), content_type)
            return
        token = uuid.uuid4().hex
        created = await self._call(
            "create_multipart_upload",
            Key=key,
            ContentType=content_type,
            Metadata={_WRITE_TOKEN: token},
            **self.put_params,
        )
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(key, upload_id, path, size)
            await self._complete(key, upload_id, parts, token)
        except BaseException:
            # Best effort (the bucket's lifecycle rule aborts what is left after 7 days).
            with contextlib.suppress(Exception):
                await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
            raise

    async def _upload_parts(self, key: str, upload_id: str, path: Path, size: int) -> list[dict[str, Any]]:
        count = (size + PART_BYTES - 1) // PART_BYTES
        etags: dict[int, str] = {}

        async def send(number: int, body: bytes) -> None:
            resp = await self._call(
                "upload_part", size=len(body), Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            etags[number] = resp["ETag"]

        in_flight: set[asyncio.Task[None]] = set()
        try:
            with path.open("rb") as f:
                for number in range(1, count + 1):
                    while len(in_flight) >= _PARTS_IN_FLIGHT:  # read the next part only when a slot frees
                        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        errors = [t.exception() for t in done if t.exception() is not None]
                        if errors:  # a part that failed past its retries fails the upload
                            raise errors[0]
                    body = await asyncio.to_thread(f.read, PART_BYTES)
                    in_flight.add(asyncio.create_task(send(number, body)))
                for task in list(in_flight):
                    await task
                    in_flight.discard(task)
        finally:
            for task in in_flight:
                task.cancel()
            # Cancelled parts must be gone before the caller aborts the upload (none lands after it).
            await asyncio.gather(*in_flight, return_exceptions=True)
        return [{"ETag": etags[n], "PartNumber": n} for n in range(1, count + 1)]

    async def _complete(self, key: str, upload_id: str, parts: list[dict[str, Any]], token: str) -> None:
        try:
            await self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except ClientError as e:
            # A retry after a completion whose answer was lost: the upload is gone (NoSuchUpload)
            # or the key exists (412). Either way the object must be ours.
            if not (_is_precondition(e) or _code(e) == "NoSuchUpload"):
                raise
            await self._check_own(key, token)

    async def _check_own(self, key: str, token: str) -> None:
        head = await self.head(key)
        if head is None or head.get("Metadata", {}).get(_WRITE_TOKEN) != token:
            raise PreconditionFailed(key)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` in batches of 1,000 per request (DeleteObjects); returns how many."""
        todo = sorted(set(keys))
        for i in range(0, len(todo), _DELETE_BATCH):
            batch = [{"Key": k} for k in todo[i : i + _DELETE_BATCH]]
            resp = await self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise ClientError(
                    {"Error": {"Code": first.get("Code", "InternalError"), "Message": first.get("Message", "")}},
                    f"DeleteObjects ({len(errors)} of {len(batch)} keys failed, first {first.get('Key')})",
                )
        return len(todo)


def open_store(settings: Settings, agent: str = "cli", max_pool: int = 16) -> AbstractAsyncContextManager[Store]:
    """The job bucket, with the configured server-side encryption on every write."""
    return Store.open(settings.bucket, sse_params(settings), settings.calls(agent), max_pool)
