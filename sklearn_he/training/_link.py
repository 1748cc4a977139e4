"""The network between the client and the server, as the planner prices it.

Outsourced training moves bytes both ways on every round trip: the client
sends a fresh model state, the server returns the trained one, and the
client must wait for both. :class:`Link` describes that link (bandwidth
each way and round-trip time); the planner adds its cost to the server's
compute and the client's refresh when it chooses how many minibatches a
circuit runs between two refreshes. Everything a link carries is public
(sizes and timings, which the plan already reveals).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

__all__ = ["LINK_PROFILES", "Link"]

_BITS_PER_MBIT = 1e6


@dataclass(frozen=True)
class Link:
    """Bandwidth each way and round-trip time between client and server.

    Parameters
    ----------
    up_mbps : float, default=inf
        Client-to-server bandwidth in Mbit/s (10^6 bits per second).
    down_mbps : float, default=inf
        Server-to-client bandwidth in Mbit/s.
    rtt_ms : float, default=0
        Round-trip time in milliseconds: what one exchange costs beyond its
        bytes (latency, or, for ``"offline"``, the time until the client
        comes back online).
    name : str, optional
        The profile's name, for reports (not compared).

    Examples
    --------
    >>> from sklearn_he import Link
    >>> Link.parse("wan")
    Link(up_mbps=100.0, down_mbps=100.0, rtt_ms=50.0, name='wan')
    >>> round(Link(100, 100, 50).seconds(up_bytes=12_500_000, round_trips=1), 3)
    1.05
    """

    up_mbps: float = math.inf
    down_mbps: float = math.inf
    rtt_ms: float = 0.0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for attr in ("up_mbps", "down_mbps", "rtt_ms"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
                raise ValueError(f"Link.{attr} must be a number; got {value!r}")
            object.__setattr__(self, attr, float(value))
        if not (self.up_mbps > 0 and self.down_mbps > 0):
            raise ValueError(
                f"a link's bandwidths must be positive (Mbit/s); got up {self.up_mbps:g}, "
                f"down {self.down_mbps:g}. Use math.inf for a link whose bytes cost nothing"
            )
        if not (0 <= self.rtt_ms < math.inf):
            raise ValueError(
                f"a link's round-trip time must be finite and at least 0 ms; got {self.rtt_ms:g}"
            )

    # ----------------------------------------------------------------- costs
    def seconds(
        self, *, up_bytes: float = 0, down_bytes: float = 0, round_trips: float = 0
    ) -> float:
        """Estimated seconds to move ``up_bytes`` up and ``down_bytes`` down in ``round_trips``."""
        return (
            8 * up_bytes / (self.up_mbps * _BITS_PER_MBIT)
            + 8 * down_bytes / (self.down_mbps * _BITS_PER_MBIT)
            + round_trips * self.rtt_ms / 1e3
        )

    @property
    def free(self) -> bool:
        """Whether nothing on this link costs time (the ``"local"`` profile)."""
        return math.isinf(self.up_mbps) and math.isinf(self.down_mbps) and self.rtt_ms == 0

    # ------------------------------------------------------------ spelling
    @classmethod
    def parse(cls, spec: Any) -> Link:
        """A :class:`Link` from a Link, a profile name or ``"UP,DOWN,RTT"``.

        Profiles are those of :data:`LINK_PROFILES`; ``"UP,DOWN,RTT"`` gives
        Mbit/s up, Mbit/s down and milliseconds (``"100,20,50"``; ``inf``
        is accepted for a bandwidth).

        Raises
        ------
        ValueError
            Anything else, with the accepted spellings.
        """
        if isinstance(spec, Link):
            return spec
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text in LINK_PROFILES:
                return LINK_PROFILES[text]
            parts = [p.strip() for p in re.split(r"[,/]", text)]
            if len(parts) == 3:
                try:
                    up, down, rtt = (float(p) for p in parts)
                except ValueError:
                    pass
                else:
                    return cls(up, down, rtt)
        raise ValueError(
            f"link {spec!r} is neither a profile ({', '.join(LINK_PROFILES)}) nor "
            "'UP,DOWN,RTT' (Mbit/s up, Mbit/s down, round-trip milliseconds, e.g. '100,20,50') "
            "nor a sklearn_he.Link"
        )

    def spec(self) -> str:
        """The spelling :meth:`parse` reads back: the profile name, else ``"UP,DOWN,RTT"``."""
        if self.name is not None and LINK_PROFILES.get(self.name) == self:
            return self.name
        return f"{self.up_mbps:g},{self.down_mbps:g},{self.rtt_ms:g}"

    def describe(self) -> str:
        """For people: ``"wan (100 Mbit/s up, 100 Mbit/s down, 50 ms round trip)"``."""
        if self.free:
            return f"{self.name or 'local'} (same machine: transfers cost nothing)"

        def rate(x: float) -> str:
            return "unlimited" if math.isinf(x) else f"{x:g} Mbit/s"

        what = (
            f"{rate(self.up_mbps)} up, {rate(self.down_mbps)} down, {self.rtt_ms:g} ms round trip"
        )
        return f"{self.name} ({what})" if self.name else what

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``inf`` as None)."""
        return {
            "name": self.name,
            "up_mbps": None if math.isinf(self.up_mbps) else self.up_mbps,
            "down_mbps": None if math.isinf(self.down_mbps) else self.down_mbps,
            "rtt_ms": self.rtt_ms,
        }


#: Named links. ``"local"``: client and server on one machine (the default of
#: ``fit``); ``"lan"``: 1 Gbit/s, 1 ms; ``"wan"``: 100 Mbit/s each way, 50 ms
#: (the default of the command line); ``"slow"``: 10 Mbit/s, 200 ms;
#: ``"offline"``: a client that comes online once an hour (3600 s per round
#: trip, 100 Mbit/s when it is).
LINK_PROFILES: dict[str, Link] = {
    "local": Link(name="local"),
    "lan": Link(1000.0, 1000.0, 1.0, name="lan"),
    "wan": Link(100.0, 100.0, 50.0, name="wan"),
    "slow": Link(10.0, 10.0, 200.0, name="slow"),
    "offline": Link(100.0, 100.0, 3_600_000.0, name="offline"),
}
