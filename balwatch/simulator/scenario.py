"""Scenario files for ``balwatch simulate``: the accounts, balances and faults to start with.

```yaml
accounts:
  - name: bitso-main
    exchange: bitso
    api_key: sim-bitso-key
    api_secret: sim-bitso-secret
    balances: {USDT: {total: "12000", available: "11000", locked: "1000"}}
  - name: coinapi-main
    exchange: coinapi              # omit api_key: a self-hosted gateway without auth
    api_key: sim-coinapi-key
    venues: {BINANCE: {BTC: {total: "2.5", available: "2", locked: "0.5", rate_usd: "60000"}}}
    faults: [{kind: status, status: 503, times: 2}]
    delay: 0.2
rate_limits: {bitso: [300, 60]}    # override a source's documented limit
tickers: {binance: {BTC/USDT: "60000"}, bitso: {USDT/MXN: "17.25"}}   # market prices
```
Balance fields use the normalized metric names; each fake source renders its own wire format.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from balwatch.config.problems import EXPECTED, Reporter, file_kind
from balwatch.config.yamlsource import load_yaml
from balwatch.errors import ConfigError
from balwatch.simulator.state import Fault, FaultKind, SimAccount, SimState


def _as_text(value: object) -> str:
    # YAML numbers arrive as int/float; keep what the author wrote, never round through float.
    return value if isinstance(value, str) else str(value)


def to_fields(raw: dict[str, Any]) -> dict[str, str]:
    return {str(k): _as_text(v) for k, v in raw.items()}


# A market as its exchange's tickers name it: base and quote currency.
Pair = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+/[A-Za-z0-9]+$")]


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    times: int | None = Field(default=1, ge=1)
    status: int = Field(default=500, ge=100, le=599)
    body: str = ""
    content_type: str = "application/json"
    retry_after: str | None = Field(default=None, pattern=r"^[\x20-\x7e]*$")  # a header value

    def build(self) -> Fault:
        return Fault(**self.model_dump())


class AccountScenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    exchange: str
    api_key: str | None = None
    api_secret: str | None = None
    merchant_id: str | None = None
    login: str | None = None
    password: str | None = None
    balances: dict[str, dict[str, Any]] = Field(default_factory=dict)
    venues: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    faults: list[FaultSpec] = Field(default_factory=list)
    delay: float = Field(default=0.0, ge=0, le=3600, allow_inf_nan=False)  # seconds

    @field_validator("balances", "venues", mode="before")
    @classmethod
    def _no_null(cls, value: object) -> object:
        return {} if value is None else value

    def build(self) -> SimAccount:
        venues = {venue: _assets(assets) for venue, assets in self.venues.items()}
        if self.balances:
            venues[self.exchange] = _assets(self.balances)
        return SimAccount(
            name=self.name,
            exchange=self.exchange,
            api_key=self.api_key,
            api_secret=self.api_secret,
            merchant_id=self.merchant_id,
            login=self.login,
            password=self.password,
            balances=venues,
            faults=deque(f.build() for f in self.faults),
            delay=self.delay,
        )


def _assets(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {asset: to_fields(fields) for asset, fields in raw.items()}


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountScenario] = Field(default_factory=list)
    rate_limits: dict[str, tuple[int, float]] = Field(default_factory=dict)
    tickers: dict[str, dict[Pair, Any]] = Field(default_factory=dict)

    def build(self) -> SimState:
        return SimState(
            [a.build() for a in self.accounts],
            rate_limits=self.rate_limits,
            tickers={venue: to_fields(prices) for venue, prices in self.tickers.items()},
        )


SCENARIO_FILE: Final = file_kind("scenario file", Scenario)


def load_scenario(path: Path) -> Scenario:
    """The scenario in ``path``; raises ConfigError naming file, line and column."""
    # YAML floats as Decimal from their text: amounts keep every digit.
    doc = load_yaml(path, SCENARIO_FILE, decimal_floats=True)
    try:
        return Scenario.model_validate(doc.data or {})
    except ValidationError as exc:
        raise ConfigError(_Reporter(doc, Scenario).problems(exc)) from None


class _Reporter(Reporter):
    expected = EXPECTED
