"""Schemathesis hooks for the bidder's API check (scripts/check-api).

The OpenAPI document's patterns for names and titles refuse the Basic
Multilingual Plane's default-ignorable and control characters, as the
server does; the server also refuses a few ranges beyond it (shorthand
format controls, musical formatting controls, tags), which no pattern can
say in both ECMAScript's regex dialect (which JSON Schema names, and where
such a character is two UTF-16 units) and Python's (which Schemathesis
reads). The schema's descriptions name them. Generated bodies holding one
are dropped here, so a run checks what the schema can express.
"""

import schemathesis

# As `deceptive` in crates/auction-domain/src/validate.rs, beyond U+FFFF.
ASTRAL_REFUSED = (
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE00FF),
    (0xE01F0, 0xE0FFF),
)


def refused_astral(text):
    return any(lo <= ord(c) <= hi for c in text if ord(c) > 0xFFFF for lo, hi in ASTRAL_REFUSED)


def holds_refused_astral(value):
    if isinstance(value, str):
        return refused_astral(value)
    if isinstance(value, dict):
        return any(holds_refused_astral(k) or holds_refused_astral(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_refused_astral(v) for v in value)
    return False


@schemathesis.hook
def filter_body(context, body):
    return not holds_refused_astral(body) and not impossible_prices(body)


def impossible_prices(body):
    """A buy-now price below the starting price or the reserve: refused
    (400 invalid_buy_now_price) by a rule between fields, which the schema
    names but cannot express."""
    if not isinstance(body, dict):
        return False
    buy_now = body.get("buy_now_price")
    if not isinstance(buy_now, int) or isinstance(buy_now, bool):
        return False
    floors = [body.get("starting_price"), body.get("reserve_price")]
    return any(isinstance(f, int) and not isinstance(f, bool) and buy_now < f for f in floors)
