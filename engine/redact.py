"""PII and secret redaction: nothing a person pasted into Slack by mistake reaches the database,
the training data or the logs (DESIGN.md step 1).

Two families of recognizers feed one resolver:

* Presidio's pattern recognizers for e-mail addresses, phone numbers (python-phonenumbers),
  Luhn-checked card numbers and IP addresses. They are called directly with
  ``nlp_artifacts=None``: no spaCy model and no NLP engine are needed. Presidio's e-mail recognizer
  validates the top-level domain against the public suffix list, which misses the internal
  domains teams mail and host on (``ops@acme.corp``, ``ops@build.internal``); ours takes any
  syntactically valid top-level domain except file and systemd-unit suffixes (``logo@2x.png``,
  ``getty@tty1.service``), asking the suffix list (tldextract's bundled snapshot, no socket) only
  for suffixes that are both. One-label hosts (``root@localhost``) are accounts, not addresses.
* Our own recognizers for what Presidio does not know: Slack tokens and webhooks, cloud and API
  keys (AWS, Azure connection strings and SAS signatures, GitHub, GitLab, Stripe, OpenAI, Google,
  npm, PyPI, Vault…), JWTs and ``Authorization`` / ``Bearer`` credentials, PEM private keys,
  credentials in URLs (the whole userinfo), ``.netrc`` and ``.pgpass`` lines, and passwords
  written as ``key=value`` / ``key: value``. Host names, ports and paths are kept: they are facts.

Each recognizer adds precision rules tuned on ``tests/fixtures/redaction_cases.jsonl`` (Slack
timestamps, version strings, git SHAs, order numbers and the like are not phone or card numbers);
``tests/fixtures/redaction_heldout.jsonl`` is a held-back part the rules are not tuned on.
Overlapping candidates are resolved by specificity, then length: a Slack token written as
``token=xoxb-…`` is one ``slack_token``, not a password.

Presidio imports spaCy (a few seconds), so the analyzer is built on the first call, once per
process, behind a lock; ``import engine.redact`` stays cheap.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

KINDS: tuple[str, ...] = (
    "email",
    "phone",
    "card",
    "ip",
    "slack_token",
    "api_key",
    "private_key",
    "password",
)
"""Every kind :func:`find` reports, as used in :attr:`Redacted.counts`."""

PLACEHOLDERS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in KINDS}
"""The text that replaces a finding of each kind, e.g. ``[EMAIL]``."""

# Higher wins an overlap. Secrets outrank PII (a secret's recognizer knows the exact shape, and a
# secret that partly survives is worse than a mislabelled one); among secrets the recognizers
# that know a vendor's format outrank the generic ``key=value`` rule.
_PRIORITY = {
    "private_key": 8,
    "slack_token": 7,
    "api_key": 6,
    "password": 5,
    "card": 4,
    "email": 3,
    "ip": 2,
    "phone": 1,
}

# Phone regions tried as the default for numbers written without a country code; numbers written
# with ``+CC`` or ``00CC`` are recognised for every country whatever the region.
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN")


@dataclass(frozen=True)
class Finding:
    """One piece of PII or one secret: ``text[start:end]`` is of ``kind`` (one of :data:`KINDS`)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Redacted:
    """The text with each finding replaced by its placeholder, and how many of each kind."""

    text: str
    counts: dict[str, int]


def find(text: str) -> list[Finding]:
    """All PII and secrets in ``text``, without overlaps, in order of position.

    Where candidates overlap, the most specific kind wins (private key > Slack token > API key >
    password > card > e-mail > IP > phone), then the longest span.
    """
    if not text:
        return []
    candidates = list(_analyzer().candidates(_without_emphasis(text)))
    candidates.sort(key=lambda f: (-_PRIORITY[f.kind], -(f.end - f.start), f.start))
    chosen: list[Finding] = []
    for candidate in candidates:
        if all(candidate.end <= c.start or candidate.start >= c.end for c in chosen):
            chosen.append(candidate)
    return sorted(chosen, key=lambda f: f.start)


def redact(text: str) -> Redacted:
    """Replace every finding of :func:`find` by its placeholder (``[EMAIL]``, ``[API_KEY]``…).

    For ``password=hunter2`` only the value is replaced: ``password=[PASSWORD]``. ``counts`` has
    an entry for each kind found at least once. Redacting redacted text changes nothing.
    """
    findings = find(text)
    counts: dict[str, int] = {}
    pieces: list[str] = []
    position = 0
    for finding in findings:
        pieces.append(text[position : finding.start])
        pieces.append(PLACEHOLDERS[finding.kind])
        position = finding.end
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    pieces.append(text[position:])
    return Redacted(text="".join(pieces), counts=counts)


# Slack's emphasis markers around a word: _italic_, *bold*, ~strike~. Underscores are word
# characters, so "_alice@example.com_" would otherwise hide the address from \b-anchored patterns.
# A "*" that touches a ":" is a wildcard (the .pgpass line "*:5432:*:app:S3cret"), not emphasis.
_EMPHASIS = re.compile(
    r"""(?<![^\s(\[{<"'`])[_*~]+(?![_*~]*:)|(?<=[^\s:_*~])[_*~]+(?![^\s)\]}>"'`.,;:!?])"""
)


def _without_emphasis(text: str) -> str:
    """``text`` with emphasis markers blanked out; same length, so every offset still holds."""
    return _EMPHASIS.sub(lambda m: " " * len(m.group()), text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message, arguments, traceback and stack.

    Install it on handlers (``handler.addFilter(RedactingFilter())``), not on loggers: handler
    filters also see records propagated from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not let its arguments through raw
            message = f"{record.msg!s} {record.args!r}"
        redacted = redact(message).text
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the raw traceback is never rendered.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text).text
        if record.stack_info:
            record.stack_info = redact(record.stack_info).text
        return True


# -- the analyzer --------------------------------------------------------------------------------


class _Analyzer:
    """All recognizers; yields every candidate finding, overlaps included."""

    def __init__(self, recognizers: list[Callable[[str], Iterable[Finding]]]) -> None:
        self.recognizers = recognizers

    def candidates(self, text: str) -> Iterator[Finding]:
        for recognizer in self.recognizers:
            yield from recognizer(text)


_analyzer_instance: _Analyzer | None = None
_analyzer_lock = threading.Lock()


def _analyzer() -> _Analyzer:
    global _analyzer_instance
    analyzer = _analyzer_instance
    if analyzer is None:
        with _analyzer_lock:
            if _analyzer_instance is None:
                _analyzer_instance = _build_analyzer()
            analyzer = _analyzer_instance
    return analyzer


def _build_analyzer() -> _Analyzer:
    analyzer = _Analyzer([*_presidio_recognizers(), *_secret_recognizers()])
    # Warm up while still holding the lock: Presidio compiles its patterns and tldextract loads
    # its suffix list lazily, on first use, and neither is guarded against concurrent first use.
    list(
        analyzer.candidates(
            "mail a@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, ip 10.0.0.1"
        )
    )
    return analyzer


# -- Presidio recognizers and our precision rules on top of them ----------------------------------


def _presidio_recognizers() -> list[Callable[[str], Iterable[Finding]]]:
    import tldextract
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    # No suffix-list URLs and no disk cache: tldextract goes straight to the snapshot it ships.
    offline_tlds = tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True
    )

    class AnyDomainEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recognizer (its pattern: at least one dot in the domain), accepting
        any syntactically valid top-level domain, internal ones included (``.corp``,
        ``.internal``, ``.lan``, ``.example``): Presidio's own check against the public suffix
        list lets ``ops@acme.corp`` through unredacted."""

        def validate_result(self, pattern_text: str) -> bool:
            return _email_domain_ok(pattern_text, offline_tlds)

    # Presidio's card pattern misses 2-series Mastercard and accepts any 13–19 digits starting
    # with 1; ours takes contiguous digits or the usual 4-4-4-4 / 4-6-5 groupings, and
    # _card_ok checks issuer prefix and length on top of Presidio's Luhn check.
    card_pattern = Pattern(
        "card",
        r"(?<![\w.+-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})"
        r"(?![\w]|[.,-]\d)",
        0.3,
    )

    email = AnyDomainEmailRecognizer()
    phone = PhoneRecognizer(supported_regions=PHONE_REGIONS, leniency=1)
    # A number written with +CC is a phone number even where the numbering plan has no such
    # line yet (drama ranges, new mobile ranges): for those, "possible" is enough.
    international_phone = PhoneRecognizer(supported_regions=("US",), leniency=0)
    card = CreditCardRecognizer(patterns=[card_pattern])
    ip = IpRecognizer()

    def run(recognizer, entity: str, kind: str, accept: Callable[[str, int, int], bool]):
        def recognize(text: str) -> Iterator[Finding]:
            for result in recognizer.analyze(text, [entity], None):
                if accept(text, result.start, result.end):
                    yield Finding(kind, result.start, result.end)

        return recognize

    return [
        run(email, "EMAIL_ADDRESS", "email", _email_ok),
        run(phone, "PHONE_NUMBER", "phone", _phone_ok),
        run(
            international_phone,
            "PHONE_NUMBER",
            "phone",
            lambda text, start, end: text[start] == "+" and _phone_ok(text, start, end),
        ),
        run(card, "CREDIT_CARD", "card", _card_ok),
        run(ip, "IP_ADDRESS", "ip", _ip_ok),
    ]


# Suffixes after "name@" that make a file or a systemd unit, not a mail domain: logo@2x.png,
# getty@tty1.service. A suffix that is also a public top-level domain (.sh, .pt, .md, .zip) still
# makes an address, as Presidio's own check had it; systemd's unit types never do.
_SYSTEMD_UNITS = frozenset(
    "service socket timer target mount automount swap path slice scope device".split()
)
_FILE_SUFFIXES = frozenset(
    """png jpg jpeg gif svg webp ico bmp tif tiff heic pdf txt md rst csv tsv json jsonl yaml yml
    toml ini cfg conf env log lock py pyc ipynb js mjs cjs ts tsx jsx rb go rs java kt scala c h cc
    cpp hpp cs php pl sh bash zsh ps1 bat sql html htm css scss xml proto pem key crt csr der p12
    pfx zip gz tgz tar bz2 xz zst whl jar war deb rpm dmg exe dll so dylib bin img iso parquet
    arrow pt pth safetensors onnx gguf ckpt mp3 mp4 mov wav""".split()
)


def _email_domain_ok(address: str, public_suffixes: Callable[[str], object]) -> bool:
    """Is the domain of ``address`` (which has at least one dot) one mail can go to?

    Any syntactically valid top-level domain is: letters (or punycode), not a number
    (``react@18.2.0`` is a version), and not a file or unit suffix that is no public one.
    """
    tld = address.rpartition(".")[2].lower()
    if not (len(tld) >= 2 and (tld.isalpha() or re.fullmatch(r"xn--[a-z0-9-]+", tld))):
        return False
    if tld in _SYSTEMD_UNITS:
        return False
    if tld in _FILE_SUFFIXES:
        return getattr(public_suffixes(address), "fqdn", "") != ""
    return True


def _email_ok(text: str, start: int, end: int) -> bool:
    # ``git@github.com:org/repo.git`` is an SSH remote, not somebody's address.
    if text[start:end].lower().startswith("git@") and text[end : end + 1] == ":":
        return False
    # Matrix products in code: ``q@k.transpose(-2, -1)`` is a method call, not an address; a
    # path segment ``medium.com/@alice.smith`` is a profile link.
    if text[end : end + 1] == "(" or "/@" in text[start:end]:
        return False
    # In a URL's authority (``postgres://app:$PW@db1.prod.internal``) the part after "@" is a
    # host and the part before it credentials: the URL rules own them, the host stays.
    return not _IN_URL_AUTHORITY.search(text, max(0, start - 300), start)


_IN_URL_AUTHORITY = re.compile(r"://[^\s/]*$")


# Words that make a bare run of digits a phone number: "call me on 4155550123", "mobile 0791…".
# "call" alone is not enough ("the API call returned 1726133700").
_PHONE_CONTEXT = re.compile(
    r"(?i)(?:\b(?:phone|mobile|cell|cellphone|tel|telephone|whatsapp|signal|sms|fax|landline|hotline)\b"
    r"|\b(?:call|ring|text|reach|contact|dial)\s+(?:me|us|him|her|them)\b"
    r"|\bmy (?:number|no\.?)|\bnumber is)[^\n]{0,30}$"
)
_PHONE_NOT_AFTER = re.compile(
    r"(?i)(?:#|\bno\.?|\bid|\border|\bticket|\binvoice|\bissue|\bpr|\bjob|\brun|\bbuild|\bts|"
    r"\btimestamp|\bepoch|\bversion|\bref|\bcase|\btracking)\s*[:#=]?\s*$"
)


def _phone_ok(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    before, after = text[max(0, start - 24) : start], text[end : end + 2]
    # Part of a decimal, a dotted version or a Slack timestamp (1726133700.887259).
    if (
        re.match(r"[.,:]\d", after)
        or re.search(r"\d[.,:]$", before)
        or re.search(r"[\w/]$", before)
    ):
        return False
    announced = bool(_PHONE_CONTEXT.search(text[max(0, start - 40) : start]))
    if not announced and _PHONE_NOT_AFTER.search(before):
        return False  # "order #0123 456 789", "ticket 020 7946 0958" (but "phone no. 020 …" is one)
    if raw.startswith("+") or any(not ch.isdigit() for ch in raw):
        return True  # written the way people write phone numbers: +CC, spaces, dashes, brackets
    # A bare run of digits is far more often an id, a count or an epoch: only with a phone word.
    return announced


def _card_ok(text: str, start: int, end: int) -> bool:
    digits = re.sub(r"\D", "", text[start:end])
    return _card_brand_ok(digits)


def _card_brand_ok(digits: str) -> bool:
    """Does ``digits`` start with a card issuer's prefix and have that issuer's length?"""
    n = len(digits)
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 == 62 or p2 == 81:  # UnionPay
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58, 63, 67) or p4 in (6759, 6761, 6762, 6763):  # Maestro
        return 12 <= n <= 19
    if p4 == 2200 or p4 == 2204:  # Mir
        return 16 <= n <= 19
    return False


_VERSION_BEFORE = re.compile(
    r"""(?i)(?:(?:\bversion|\bver\.?|\brelease|\bbuild|\bfirmware)\s*[:=]?\s*["']?|\bv|==|>=|<=|~=|!=)\s*$"""
)


def _ip_ok(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    before, after = text[max(0, start - 12) : start], text[end : end + 2]
    if ":" in raw:
        # IPv6: "::" alone, and hex-only words like ``Add::add`` in Rust or C++ code, are not
        # addresses; a real one has a digit.
        return any(ch.isdigit() for ch in raw) and raw.strip(":") != ""
    # IPv4 inside a longer dotted run (1.2.3.4.5) or written as a version (v1.2.3.4, ==1.2.3.4).
    # (user@10.0.0.1 stays an address: ssh targets are far more common here than npm pins.)
    if re.match(r"\.\d", after) or re.search(r"\d\.$", before):
        return False
    # A product version: Chrome/128.0.0.0 (but not http://10.0.0.1).
    if re.search(r"[A-Za-z]/$", before):
        return False
    return not _VERSION_BEFORE.search(before)


# -- our recognizers: Slack, cloud and API keys, private keys, passwords --------------------------


@dataclass(frozen=True)
class _Rule:
    """A regex whose group ``group`` (0: the whole match) is a finding of ``kind`` when ``accept``
    agrees with the match."""

    kind: str
    regex: re.Pattern[str]
    group: int | str | Callable[[re.Match[str]], str] = 0
    accept: Callable[[re.Match[str]], bool] | None = None


def _has_digit(group: int | str = 0) -> Callable[[re.Match[str]], bool]:
    # Real tokens are random and contain digits; "xoxb-your-bot-token" in docs does not.
    return lambda m: any(ch.isdigit() for ch in m.group(group))


def _mixed_case_and_digit(m: re.Match[str]) -> bool:
    value = m.group("value")
    return (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )


_AWS_SECRET_CONTEXT = re.compile(r"(?i)(?:aws|secret|access[ _-]?key)")


def _aws_secret(m: re.Match[str]) -> bool:
    # 40 base64 characters are an AWS secret access key only near the words that announce one;
    # git SHAs (lowercase hex) fail the mixed-case test.
    window = m.string[max(0, m.start() - 80) : m.start()]
    return bool(_AWS_SECRET_CONTEXT.search(window)) and _mixed_case_and_digit(m)


# Bounded repetitions keep the regex linear on long hyphenated runs ("xoxb-xoxb-xoxb-…").
_PASSWORD_KEY = (
    r"(?P<key>(?:[A-Za-z0-9]{1,30}[_.-]){0,6}"
    r"(?:[A-Za-z0-9]{0,20}(?:password|passwd|passphrase|secret|token|credentials?|"
    r"(?:api|access|secret|private|signing|encryption|master)[_-]?key)|pwd|pw|pass))"
)
# Key names that end like a secret's but are not one: tokenizer settings in ML code.
_NOT_SECRET_KEY = re.compile(
    r"(?i)(?:^|[_.-])(?:eos|bos|pad|unk|sep|cls|mask|max|min|num|n|special|stop|start|end|total|"
    r"prompt|completion|input|output|new|next|page|continuation|cancellation)[_.-]?token$"
)
_VALUE = (
    r"""(?:"(?P<dq>[^"\n]{1,256})"|'(?P<sq>[^'\n]{1,256})'"""
    r"""|`(?P<bq>[^`\n]{1,256})`|(?P<bare>[^\s"'`]{1,256}))"""
)
_PROSE_VALUES = frozenset(
    """a an the is was are be been being not no none null nil true false yes undefined empty
    required optional reset resets expired expires expiring expiry changed change rotated rotate
    revoked invalid incorrect wrong missing unknown see via in on of for from to and or
    with without when if must should will can could has have had please same new old here there
    this that it its mine yours ours field prompt manager policy hidden redacted masked omitted
    set unset updated generated stored saved provided needed sent ok n/a tbd todo use used using
    check ask asked dm dms your my our their his her""".split()
)
_PLACEHOLDER_VALUE = re.compile(
    r"""(?ix)^(?:
        \$\{?[A-Za-z_][\w.]*\}?            # $DB_PASSWORD, ${DB_PASSWORD}
      | \$?\{\{.* | \{%.* | \$\(.*        # {{ secrets.TOKEN }}, ${{ ... }}, $(cat file)
      | <[^<>]*>                          # <your-token>
      | [*•●·]+ | .*(?:x{3,}|\.{3,}|…)     # ****, ••••, hf_xxx, sk-...
      | (?:env|secret)\(.*                # env("X")
    )$
    | .*?(?:^|[^a-z])your(?:[^a-z]|$)      # your-password-here, xoxb-your-bot-token, YOUR_KEY
    | \[(?:EMAIL|PHONE|CARD|IP|SLACK_TOKEN|API_KEY|PRIVATE_KEY|PASSWORD)\]  # already redacted
    """
)
_TYPE_ANNOTATION = re.compile(
    r"^(?:(?:Optional|Union|list|List|Annotated)\[)?"
    r"(?:str|bytes|int|Any|SecretStr|SecretBytes)\b[\]|, ]*\)?[,:)]?$"
)
_CODE_VALUE = re.compile(
    r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*(?:\(|\[)|^(?:[a-z_]+\.)+[a-z_]+$|^[a-z_]+\($"
)


def _password_value(m: re.Match[str]) -> str:
    return next(m.group(g) for g in ("dq", "sq", "bq", "bare") if m.group(g) is not None)


def _password_group(m: re.Match[str]) -> str:
    return next(g for g in ("dq", "sq", "bq", "bare") if m.group(g) is not None)


def _password_ok(m: re.Match[str]) -> bool:
    key, value = m.group("key"), _password_value(m)
    quoted = m.group("bare") is None
    if _NOT_SECRET_KEY.search(key):
        return False
    if len(value.strip()) < 3 or _PLACEHOLDER_VALUE.match(value.strip()):
        return False
    if re.match(r"(?i)^[a-z][a-z0-9+.-]*://", value):
        return False  # a URL; credentials inside URLs have their own rule
    if key.lower().endswith("pwd") and value.startswith(("/", "~")):
        return False  # $PWD, the working directory
    if key.lower() == "pass" and re.fullmatch(r"[\d.,/%]+", value):
        return False  # test results: "pass: 120, fail: 3"
    if not quoted:
        if value.lower().rstrip(".,;:!?") in _PROSE_VALUES or _CODE_VALUE.match(value):
            return False
        if value.lower() == re.split(r"[_.-]", key.lower())[-1]:
            return False  # code passing a variable along: self.token = token
        if ":" in m.group("sep") and _TYPE_ANNOTATION.match(value):
            return False  # Python: def login(password: str), token: SecretStr = Field(...)
        after = m.string[m.end() : m.end() + 3]
        if ":" in m.group("sep") and value.isalpha() and re.match(r"[ \t]+[a-z]", after):
            return False  # a sentence, not a value: "Secret: Santa party on Friday"
    return True


def _trim_punctuation(text: str, start: int, end: int) -> int:
    """The end of an unquoted value without the sentence punctuation after it ("use
    password=hunter2."). "!" and "?" stay: passwords often end with them."""
    while end - start > 3 and text[end - 1] in ".,;)]}":
        end -= 1
    return end


_SAID_PASSWORD = re.compile(
    r"(?i)\b(?:password|passwd|passphrase|pwd|pw|pin)\s+(?:is|was|will be|=)\s+(?:now\s+|still\s+)?"
    r"""(?:["'`](?P<q>[^"'`\s]{4,64})["'`]|(?P<bare>[^\s"'`]{6,64}))"""
)


def _said_password_ok(m: re.Match[str]) -> bool:
    # "the password is Hunter2024!" names a password; "the password is expired" does not.
    value = (m.group("q") or m.group("bare")).rstrip(".,;)")
    if value.lower() in _PROSE_VALUES or _PLACEHOLDER_VALUE.match(value):
        return False
    return m.group("q") is not None or any(not c.isalpha() for c in value)


def _random_looking(group: str) -> Callable[[re.Match[str]], bool]:
    # A token has a digit, or mixes cases over 20 characters or more; "Bearer authentication"
    # does neither.
    def accept(m: re.Match[str]) -> bool:
        value = m.group(group)
        if _PLACEHOLDER_VALUE.match(value):
            return False
        mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
        return any(c.isdigit() for c in value) or (mixed and len(value) >= 20)

    return accept


def _plain_value_ok(value: str) -> bool:
    value = value.strip().rstrip(".,;:")
    return (
        bool(value) and value.lower() not in _PROSE_VALUES and not _PLACEHOLDER_VALUE.match(value)
    )


def _url_credentials_ok(m: re.Match[str]) -> bool:
    password = m.group("value").partition(":")[2]
    return bool(password) and not _PLACEHOLDER_VALUE.match(password)


def _pgpass_ok(m: re.Match[str]) -> bool:
    host = m.group("host")
    # A host name, "*" or an IPv4 address; not a MAC address, an IPv6 address or a clock time.
    if not (host == "*" or re.search(r"[A-Za-z]", host) or re.fullmatch(r"[\d.]{7,15}", host)):
        return False
    if re.fullmatch(r"[0-9A-Fa-f:]+", m.group(0)):
        return False
    return _plain_value_ok(m.group("bare"))


def _secret_recognizers() -> list[Callable[[str], Iterable[Finding]]]:
    c = re.compile
    rules = [
        # PEM private keys (RSA, EC, DSA, OpenSSH, PKCS#8, encrypted, PGP), across lines; a key
        # pasted without its END line is redacted as far as its base64 body runs.
        _Rule(
            "private_key",
            c(
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                # Only key material (base64, "Proc-Type: 4,ENCRYPTED" headers) up to END, so a
                # key cut short never swallows the text up to the END of a later key.
                r"(?:(?:(?!-----BEGIN)[A-Za-z0-9+/=:,\s-]|\\n)*?"
                r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                r"|(?:(?:\\n|\s)*[A-Z][A-Za-z-]+: [^\n]*)*(?:(?:\\n|\s)*[A-Za-z0-9+/=]{16,})+)",
            ),
        ),
        # Slack: bot, user, app, workspace, refresh and config tokens; incoming webhooks.
        _Rule(
            "slack_token",
            c(r"\b(?:xox[abposre]|xoxe\.xox[bp]|xapp)-[A-Za-z0-9-]{10,}"),
            accept=_has_digit(),
        ),
        _Rule(
            "slack_token",
            c(
                r"(?:https?://)?hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{8,}"
            ),
        ),
        # AWS access key ids, and secret access keys where the context announces one.
        _Rule(
            "api_key",
            c(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}\b"),
        ),
        _Rule(
            "api_key",
            c(r"(?<![A-Za-z0-9/+_-])(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=_-])"),
            group="value",
            accept=_aws_secret,
        ),
        # GitHub, GitLab, Hugging Face, npm, Google, Stripe, SendGrid.
        _Rule("api_key", c(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,255}\b")),
        _Rule("api_key", c(r"\bgithub_pat_[A-Za-z0-9_]{30,255}\b")),
        _Rule("api_key", c(r"\bglpat-[A-Za-z0-9_-]{20,}")),
        _Rule("api_key", c(r"\bhf_[A-Za-z0-9]{30,}\b"), accept=_has_digit()),
        _Rule("api_key", c(r"\bnpm_[A-Za-z0-9]{36}\b")),
        _Rule("api_key", c(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
        _Rule("api_key", c(r"\b(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{10,}")),
        _Rule("api_key", c(r"\bSG\.[\w-]{16,}\.[\w-]{16,}")),
        # OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-api03-...) keys.
        _Rule("api_key", c(r"\bsk-[A-Za-z0-9_-]{20,}"), accept=_has_digit()),
        # More vendors' prefixed tokens: Stripe webhook secrets, PyPI, HashiCorp Vault,
        # DigitalOcean, Shopify, Databricks, GitLab (deploy, runner, feed… tokens), Linear,
        # Atlassian, Twilio, Mailgun, Brevo, Telegram bots, Azure AD client secrets.
        _Rule(
            "api_key",
            c(
                r"\b(?:whsec_[A-Za-z0-9+/=]{24,}|pypi-AgE[A-Za-z0-9_-]{50,}"
                r"|hv[sbr]\.[A-Za-z0-9_-]{24,}|do[por]_v1_[a-f0-9]{64}"
                r"|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|dapi[a-f0-9]{32}(?:-\d)?"
                r"|gl(?:dt|rt|ptt|soat|cbt|imt|ft|ffct|agent)-[A-Za-z0-9_-]{20,}"
                r"|lin_api_[A-Za-z0-9]{40}|ATATT3[A-Za-z0-9_=-]{50,}|SK[0-9a-f]{32}"
                r"|key-[0-9a-f]{32}|xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}"
                r"|\d{8,10}:AA[A-Za-z0-9_-]{33})(?![A-Za-z0-9_-])"
                r"|(?<![\w~.-])[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![\w~.-])"
            ),
        ),
        # Azure: storage and Service Bus / Event Hubs connection strings, SAS signatures.
        _Rule(
            "api_key",
            c(
                r"(?i)\b(?:AccountKey|SharedAccessKey|SharedSecretValue)="
                r"(?P<value>[A-Za-z0-9+/]{20,}={0,2})"
            ),
            group="value",
        ),
        _Rule("api_key", c(r"[?&]sig=(?P<value>[A-Za-z0-9%+/_-]{20,}={0,2})"), group="value"),
        # JWTs, and bearer / basic credentials in Authorization headers.
        _Rule("api_key", c(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
        _Rule(
            "api_key",
            c(
                r"(?i)\bauthorization:[ \t]*(?:basic|token|bearer|digest|negotiate)[ \t]+"
                r"(?P<value>[A-Za-z0-9._~+/-]{8,}=*)"
            ),
            group="value",
            accept=lambda m: not _PLACEHOLDER_VALUE.match(m.group("value")),
        ),
        # "Bearer <token>" without the header name: a token is random, prose is not.
        _Rule(
            "api_key",
            c(r"(?i)\bbearer[ \t]+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)"),
            group="value",
            accept=_random_looking("value"),
        ),
        # Passwords and other secrets written as key=value, key: value, "key": "value",
        # key => value.
        _Rule(
            "password",
            c(
                r"(?i)(?<![\w.])(?<!://)"
                + _PASSWORD_KEY
                + r"""["']?(?P<sep>[ \t]*(?::=|:(?![:/])|=>|=(?!=))[ \t]*)"""
                + _VALUE
            ),
            group=_password_group,
            accept=_password_ok,
        ),
        # Command-line flags: mysql --password 'S3cret!', docker login -p hunter2.
        _Rule(
            "password",
            c(
                r"""(?i)(?<![\w-])(?P<key>--(?:[a-z]+-)*(?:password|passwd|passphrase|token|secret|api-key))"""
                r"""(?P<sep>[ \t]+)""" + _VALUE
            ),
            group=_password_group,
            accept=_password_ok,
        ),
        _Rule(
            "password",
            c(
                r"\b(?P<key>(?:docker|podman) login\b[^\n]{0,200}?\s-p[ \t]+"
                r"|mysql\w*\b[^\n]{0,200}?\s-p)(?P<sep>)" + _VALUE
            ),
            group=_password_group,
            accept=lambda m: _password_ok(m) and not _password_value(m).startswith("-"),
        ),
        # Credentials inside URLs: postgres://app:S3cret@db1.prod.internal/app. The whole
        # userinfo goes (the user slot often holds the token itself: https://oauth2:TOKEN@,
        # https://TOKEN:x-oauth-basic@, redis://:PASS@), up to the last "@" before the host, so
        # an unencoded "@" in the password does not leave its tail behind; scheme, host, port
        # and path stay.
        _Rule(
            "password",
            c(
                r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,30}://"
                r"(?P<value>[^\s:/@\"'`]{0,256}:[^\s/\"'`]{0,256}[^\s/\"'`@])@"
            ),
            group="value",
            accept=_url_credentials_ok,
        ),
        # A token alone in the user slot: https://<40 hex>@github.com/org/repo.git.
        _Rule(
            "password",
            c(r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,30}://(?P<value>[A-Za-z0-9_.~-]{20,256})@"),
            group="value",
            accept=_has_digit("value"),
        ),
        # .netrc: "machine git.acme.corp login deploy password S3cret", on one line or several.
        _Rule(
            "password",
            c(
                r"(?i)\b(?:machine[ \t]+\S+|default)(?:\s+(?:login|account|port)[ \t]+\S+){0,3}"
                r"\s+password[ \t]+(?P<bare>[^\s\"'`]{1,256})"
            ),
            group="bare",
            accept=lambda m: _plain_value_ok(m.group("bare")),
        ),
        # .pgpass: host:port:database:user:password.
        _Rule(
            "password",
            c(
                r"(?<![\w.:/@-])(?P<host>\*|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):(?:\d{1,5}|\*)"
                r":[^\s:]{1,63}:[^\s:]{1,63}:(?P<bare>[^\s\"'`]{1,256})"
            ),
            group="bare",
            accept=_pgpass_ok,
        ),
        # "the password is Hunter2024!"
        _Rule(
            "password",
            _SAID_PASSWORD,
            group=lambda m: "q" if m.group("q") is not None else "bare",
            accept=_said_password_ok,
        ),
    ]

    def run(rule: _Rule) -> Callable[[str], Iterator[Finding]]:
        def recognize(text: str) -> Iterator[Finding]:
            for m in rule.regex.finditer(text):
                if rule.accept is not None and not rule.accept(m):
                    continue
                group = rule.group(m) if callable(rule.group) else rule.group
                start, end = m.span(group)
                if group == "bare":
                    end = _trim_punctuation(text, start, end)
                if end > start:
                    yield Finding(rule.kind, start, end)

        return recognize

    return [run(rule) for rule in rules]
