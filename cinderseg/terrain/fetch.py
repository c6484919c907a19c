"""Resumable, checked HTTP downloads under allowed base URLs (requests with urllib3's Retry).

Used by :mod:`cinderseg.terrain.download` for the USGS 3DEP tiles, with the settings of the config's
``download`` section. A file is streamed to a partial file; server errors (5xx, 408, 425, 429),
timeouts and dropped connections share one budget of ``retries`` further attempts with exponential
backoff (``backoff_s`` before the first retry, doubled after, at most 300 s; a server's Retry-After
wins). A dropped transfer resumes where it stopped (HTTP Range, If-Range), and starts again when the
server ignores the Range. The size is checked against Content-Length, and the MD5 against the
server's (Content-MD5, or an S3 ETag) when it sends one. Only http(s) URLs under the configured base
URLs are fetched, redirects included. Errors are one line naming the file and URL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cinderseg.core.errors import InputError
from cinderseg.core.progress import track
from cinderseg.core.raster import file_digest

log = logging.getLogger(__name__)

USER_AGENT = "cinderseg (USGS 3DEP tile download; Python requests)"
#: Longest wait between two attempts, whatever backoff_s and Retry-After say (seconds).
MAX_BACKOFF_S = 300
#: HTTP statuses worth another attempt; every other 4xx is final.
RETRY_STATUS = frozenset({408, 425, 429, *range(500, 600)})
#: Largest JSON answer accepted (bytes).
MAX_JSON_BYTES = 20 * 1024 * 1024


class Policy(Protocol):
    """What a download needs of the config's ``download`` section (times in seconds)."""

    @property
    def bases(self) -> tuple[str, ...]: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def backoff_s(self) -> float: ...
    @property
    def chunk_bytes(self) -> int: ...


def url_allowed(url: str, bases: Iterable[str]) -> bool:
    """True when ``url`` is http(s) and under one of ``bases`` (same scheme, host, port, path prefix)."""
    target = urllib.parse.urlsplit(url)
    if target.scheme not in ("http", "https") or not target.netloc:
        return False
    for base in bases:
        allowed = urllib.parse.urlsplit(base)
        prefix = allowed.path.rstrip("/") + "/"
        if (
            allowed.scheme == target.scheme
            and allowed.netloc.lower() == target.netloc.lower()
            and (target.path + ("/" if not target.path.endswith("/") else "")).startswith(prefix)
            and "/../" not in f"{target.path}/"
        ):
            return True
    return False


class _Retry(Retry):
    """urllib3's Retry waiting ``backoff_factor`` seconds before the first retry, doubled at each
    further one (urllib3's own schedule retries the first failure at once)."""

    def get_backoff_time(self) -> float:
        n = len(self.history)
        return min(self.backoff_max, self.backoff_factor * 2 ** (n - 1)) if n else 0.0


class _Interrupted(Exception):
    """A transfer that stopped before the whole file was in (worth another attempt); ``str`` says why."""


def _reason(err: Exception, timeout_s: float) -> str:
    """What went wrong with a request, for the one-line error."""
    if isinstance(err, requests.Timeout) or "timed out" in str(err):  # read timeouts come wrapped
        return f"timed out: no data for {timeout_s:g} s"
    return f"network error: {err}"


def _gave_up(what: str, url: str, attempts: int, last: str) -> InputError:
    return InputError(
        f"{what}: download from {url} failed after {attempts} attempt{'s' if attempts > 1 else ''} ({last}); "
        "check the network or the server, or raise download.retries / download.timeout_s"
    )


class _Session(requests.Session):
    """A session with one retry budget (``retries`` further attempts after a failed one: server errors,
    timeouts, refused and dropped connections alike) that follows redirects only under the base URLs."""

    def __init__(self, settings: Policy, what: str) -> None:
        super().__init__()
        self.settings, self.what = settings, what
        self.headers["User-Agent"] = USER_AGENT
        self.retry = _Retry(
            total=settings.retries,
            status_forcelist=RETRY_STATUS,
            backoff_factor=settings.backoff_s,
            backoff_max=MAX_BACKOFF_S,
            retry_after_max=MAX_BACKOFF_S,
            raise_on_status=False,
        )
        self.adapter = HTTPAdapter(max_retries=self.retry)
        self.mount("http://", self.adapter)
        self.mount("https://", self.adapter)

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        url = urllib.parse.urljoin(resp.url, target or "")
        if target is not None and not url_allowed(url, self.settings.bases):
            raise InputError(
                f"{self.what}: {resp.url} redirects to {url}, which is not under the configured "
                "download.api_url or download.staged_url"
            )
        return target

    def fetch(self, url: str, headers: Mapping[str, str]) -> requests.Response:
        """GET ``url`` (streamed) with the budget left (InputError once it is spent)."""
        if not url_allowed(url, self.settings.bases):
            raise InputError(
                f"{self.what}: refusing {url}: not under download.api_url or download.staged_url"
            )
        self.adapter.max_retries = self.retry
        try:
            resp = self.get(url, headers=headers, stream=True, timeout=self.settings.timeout_s)
        except requests.RequestException as err:
            raise _gave_up(
                self.what, url, self.settings.retries + 1, _reason(err, self.settings.timeout_s)
            ) from err
        self.retry = resp.raw.retries or self.retry  # with the failures urllib3 retried on the way
        return resp

    def check_status(self, resp: requests.Response, url: str, not_found_hint: str = "") -> None:
        """InputError for an answer other than 200/206 (urllib3 hands a retried status on once it gave up)."""
        code = resp.status_code
        if code in RETRY_STATUS:
            raise _gave_up(self.what, url, len(self.retry.history) + 1, f"HTTP {code} {resp.reason}")
        if code in (404, 410):
            raise InputError(f"{self.what}: not found (HTTP {code}) at {url}{not_found_hint}")
        if code not in (200, 206):
            raise InputError(f"{self.what}: HTTP {code} {resp.reason} from {url}")

    def failed(self, url: str, err: Exception) -> None:
        """Count a failed attempt (a transfer cut short) and wait; InputError when no attempt is left."""
        try:
            self.retry = self.retry.increment("GET", url, error=err)
        except urllib3.exceptions.MaxRetryError:
            raise _gave_up(self.what, url, len(self.retry.history) + 1, str(err)) from err
        log.warning("%s: attempt %d failed (%s); retrying", self.what, len(self.retry.history), err)
        self.retry.sleep()


def fetch_json(url: str, *, settings: Policy, what: str) -> Any:
    """GET ``url`` and parse JSON, with the retries of :func:`download_file`; InputError when it fails."""
    with _Session(settings, what) as session, session.fetch(url, {"Accept": "application/json"}) as resp:
        session.check_status(resp, url)
        try:
            body = resp.raw.read(MAX_JSON_BYTES + 1, decode_content=True)
        except urllib3.exceptions.HTTPError as err:
            raise _gave_up(
                what, url, len(session.retry.history) + 1, _reason(err, settings.timeout_s)
            ) from err
    if len(body) > MAX_JSON_BYTES:
        raise InputError(f"{what}: answer of {url} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as err:
        raise InputError(f"{what}: the answer of {url} is not JSON: {body[:60]!r}") from err


def discard(*paths: Path) -> None:
    """Remove files, if they exist."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _server_md5(headers: Mapping[str, str]) -> str | None:
    """The MD5 (hex) the server gives for the whole file: Content-MD5, or an ETag that is one (S3's
    ETag of a file uploaded in one part; a multipart upload's ETag has a '-' and is not an MD5)."""
    with contextlib.suppress(ValueError):
        if headers.get("Content-MD5"):
            return base64.b64decode(headers["Content-MD5"], validate=True).hex()
    match = re.fullmatch(r'"?([0-9a-fA-F]{32})"?', headers.get("ETag") or "")
    return match.group(1).lower() if match else None


@dataclass
class _Transfer:
    """A file streamed from ``url`` into ``part``, with a record (``{part}.json``) of the server's size,
    validators and MD5, so that a later attempt resumes (Range, If-Range) only the same file."""

    url: str
    part: Path
    session: _Session
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> Path:
        return self.part.with_name(self.part.name + ".json")

    def discard(self) -> None:
        discard(self.part, self.record)
        self.meta = {}

    def resume(self) -> tuple[int, dict[str, str]]:
        """Bytes of the part file to resume from (0 unless it holds this URL) and the request headers."""
        with contextlib.suppress(OSError, ValueError):
            self.meta = json.loads(self.record.read_text())
        if not isinstance(self.meta, dict) or self.meta.get("url") != self.url or not self.part.exists():
            self.discard()
            return 0, {"Accept-Encoding": "identity"}
        have = self.part.stat().st_size
        log.info("%s: resuming %s at byte %d", self.session.what, self.url, have)
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={have}-"}
        if validator := self.meta.get("etag") or self.meta.get("last_modified"):
            headers["If-Range"] = validator
        return have, headers

    def receive(self, resp: requests.Response, have: int, not_found_hint: str) -> int:
        """The part file completed from ``resp`` after its ``have`` bytes: its size in bytes.

        Raises _Interrupted when the file is not whole (a dropped or stalled connection, a wrong size or
        MD5): the next attempt resumes or restarts it.
        """
        if resp.status_code == 416 and have:  # nothing left to send: the file is whole, or stale
            whole = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", resp.headers.get("Content-Range") or "")
            if not (whole and int(whole.group(1)) == have == self.meta.get("total")):
                self.discard()
                raise _Interrupted("range not satisfiable; starting again")
        else:
            self.session.check_status(resp, self.url, not_found_hint)
            have = self._stream(resp, self._start(resp, have))
        expected = self.meta.get("md5")
        if expected and file_digest(self.part, "md5") != expected:
            self.discard()
            raise _Interrupted(f"MD5 differs from the server's {expected}: corrupted in transfer")
        return have

    def _start(self, resp: requests.Response, have: int) -> int:
        """Where the body of ``resp`` goes: after the ``have`` bytes (206), or from 0 (a new transfer)."""
        if resp.status_code == 206:
            rng = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", resp.headers.get("Content-Range") or "")
            total = self.meta.get("total")
            if rng is None or int(rng.group(1)) != have or (total and rng.group(2) != str(total)):
                self.discard()
                raise _Interrupted(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            return have
        if have:
            log.info("%s: the server sent the whole file; starting again", self.session.what)
        length = resp.headers.get("Content-Length") or ""
        self.meta = {
            "url": self.url,
            "total": int(length) if length.isdigit() else None,
            "etag": resp.headers.get("ETag"),
            "last_modified": resp.headers.get("Last-Modified"),
            "md5": _server_md5(resp.headers),
        }
        self.record.write_text(json.dumps(self.meta))
        size = f"{self.meta['total']} bytes" if self.meta["total"] else "size unknown"
        log.info("%s: downloading %s (%s)", self.session.what, self.url, size)
        return 0

    def _stream(self, resp: requests.Response, have: int) -> int:
        """Write the body of ``resp`` after the part file's ``have`` bytes; the bytes it then holds."""
        total, settings = self.meta.get("total"), self.session.settings
        resp.raw.enforce_content_length = False  # a short body is resumed, not raised with its tail lost
        with (
            self.part.open("ab" if have else "wb") as fh,
            track(self.session.what, (total or 0) / 1e6, unit="MB") as advance,
        ):
            advance(have / 1e6)
            try:
                for chunk in resp.iter_content(settings.chunk_bytes):
                    fh.write(chunk)
                    have += len(chunk)
                    advance(len(chunk) / 1e6)
                    if total is not None and have > total:
                        self.discard()
                        raise _Interrupted(f"server sent more than the announced {total} bytes")
            except requests.RequestException as err:
                raise _Interrupted(_reason(err, settings.timeout_s)) from err
        if total is not None and have != total:
            raise _Interrupted(f"connection closed after {have} of {total} bytes")
        return have


def download_file(url: str, part: Path, *, settings: Policy, what: str, not_found_hint: str = "") -> int:
    """Stream ``url`` into ``part``, resuming what ``part`` already holds; return its size in bytes.

    Server errors, timeouts and dropped connections share one budget of ``settings.retries`` further
    attempts; a dropped transfer resumes where it stopped. Raises InputError (one line naming ``what``
    and ``url``, plus ``not_found_hint`` on a 404) when all attempts fail.
    """
    Path(part).parent.mkdir(parents=True, exist_ok=True)
    with _Session(settings, what) as session:
        transfer = _Transfer(url, Path(part), session)
        while True:
            have, headers = transfer.resume()
            with session.fetch(url, headers) as resp:
                try:
                    return transfer.receive(resp, have, not_found_hint)
                except _Interrupted as err:
                    session.failed(url, err)
