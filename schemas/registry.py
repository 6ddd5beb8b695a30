"""A small Confluent Schema Registry client (REST API v1) over urllib.

Only the two calls the codec needs: register a schema under a subject (idempotent on
the registry's side: the same schema returns the same id) and fetch a schema by id.
Both are cached for the life of the process, so the hot path never touches the network
after the first record of each schema.
"""
from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

from schemas.errors import CodecError, CodecFault, RegistryUnavailable

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistry:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._auth: str | None = None
        if parts.username is not None:
            # Credentials in the URL become basic auth (as Confluent Cloud expects)
            # and are kept out of the base URL that may show up in error messages.
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            self._auth = f"Basic {token}"
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.base_url = urllib.parse.urlunsplit(parts).rstrip("/")
        self.timeout = timeout
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema_text: str) -> int:
        """The id of `schema_text` under `subject`, registering it if new."""
        key = (subject, schema_text)
        found = self._ids.get(key)
        if found is not None:
            return found
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._call("POST", path, {"schema": schema_text, "schemaType": "AVRO"})
        schema_id = answer.get("id")
        if not isinstance(schema_id, int):
            raise RegistryUnavailable(f"registry answered {answer!r} to {path}, no id")
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, schema_text)
        return schema_id

    def schema(self, schema_id: int) -> str:
        """The schema text registered with this id; CodecError(UNKNOWN_SCHEMA) if none."""
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        answer = self._call("GET", f"/schemas/ids/{schema_id}", None)
        text = answer.get("schema")
        if not isinstance(text, str):
            raise RegistryUnavailable(f"registry answered {answer!r} for id {schema_id}")
        with self._lock:
            self._schemas[schema_id] = text
        return text

    def _call(self, method: str, path: str, body: dict | None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", CONTENT_TYPE)
        if data is not None:
            request.add_header("Content-Type", CONTENT_TYPE)
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            if exc.code == 404 and method == "GET":
                raise CodecError(CodecFault.UNKNOWN_SCHEMA,
                                 f"schema registry has no {path} ({detail})") from None
            if 400 <= exc.code < 500:
                # e.g. 409 incompatible schema, 422 invalid schema: a deployment error,
                # not a transient one, but the record is not to blame either.
                raise RegistryUnavailable(
                    f"schema registry refused {method} {path}: HTTP {exc.code} {detail}") from None
            raise RegistryUnavailable(
                f"schema registry failed {method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryUnavailable(
                f"schema registry {self.base_url} unreachable for {method} {path}: {exc}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason or ""
    if isinstance(payload, dict):
        return f"{payload.get('error_code', '')} {payload.get('message', '')}".strip()
    return str(payload)
