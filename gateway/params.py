"""Request parameters, Binance-style: the query string and a form body read as one set.

Every accessor raises a -11xx ApiError naming the parameter, so a handler reads its
inputs in a few lines and a malformed value can never reach the engine or become a 500.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl

from engine.markets import Market, MarketsConfig
from gateway import errors

_DECIMAL = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,18})?$")
_CLIENT_ID = re.compile(r"^[.A-Za-z0-9_:/-]{1,36}$")


def split_pairs(text: str) -> list[tuple[str, str]]:
    """parse_qsl(text, keep_blank_values=True): (name, value) in order, '+' and %XX
    decoded. Text with neither (a bot's usual order) is only split: parse_qsl's unquote
    of every name and value was a tenth of a signed request's parsing."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    out = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            out.append((name, value))
    return out


class Params:
    def __init__(self, query: str, body: str = "") -> None:
        self.values: dict[str, str] = {}
        for text in (query, body) if body else (query,):
            try:
                pairs = split_pairs(text)
            except ValueError:
                raise errors.illegal_chars("query") from None
            for name, value in pairs:
                if name in self.values:
                    raise errors.ApiError(-1101, f"Duplicate values for parameter '{name}'.")
                self.values[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def raw(self, name: str) -> str | None:
        return self.values.get(name)

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None or value == "":
            if required:
                raise errors.mandatory_missing(name)
            return None
        return value

    def integer(self, name: str, required: bool = False, default: int | None = None,
                low: int | None = None, high: int | None = None) -> int | None:
        value = self.text(name, required)
        if value is None:
            return default
        if not value.lstrip("-").isdigit() or len(value) > 20:
            raise errors.illegal_chars(name)
        number = int(value)
        if (low is not None and number < low) or (high is not None and number > high):
            raise errors.ApiError(-1100, f"Illegal value for parameter '{name}'; legal range "
                                  f"is '{low if low is not None else ''}'-'{high if high is not None else ''}'.")
        return number

    def decimal(self, name: str, required: bool = False) -> Decimal | None:
        value = self.text(name, required)
        if value is None:
            return None
        if not _DECIMAL.match(value):
            raise errors.illegal_chars(name)
        try:
            return Decimal(value)
        except InvalidOperation:
            raise errors.illegal_chars(name) from None

    def choice(self, name: str, options, required: bool = False, default: str | None = None,
               error: Callable[[], errors.ApiError] | None = None) -> str | None:
        """The value if it is one of `options` (any container); `error` builds the
        refusal (only when there is one: an exception built per call cost more than the
        check)."""
        value = self.values.get(name)
        if not value:
            if required:
                raise errors.mandatory_missing(name)
            return default
        if value not in options:
            raise error() if error is not None else errors.ApiError(
                -1100, f"Illegal value for parameter '{name}'.")
        return value

    def market(self, markets: MarketsConfig, required: bool = True) -> Market | None:
        symbol = self.text("symbol", required)
        if symbol is None:
            return None
        market = markets.market(symbol.upper())
        if market is None:
            raise errors.invalid_symbol()
        return market

    def client_order_id(self, name: str = "newClientOrderId") -> str | None:
        value = self.text(name)
        if value is not None and not _CLIENT_ID.match(value):
            raise errors.illegal_chars(name)
        return value
