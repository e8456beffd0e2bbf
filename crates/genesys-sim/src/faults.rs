//! Seeded, reproducible fault injection: the `--faults SPEC` language.
//!
//! A spec is a comma list of `key=value` items:
//!
//! | key | value | effect on an API request (never on `/oauth/token` or `/sim/*`) |
//! | --- | --- | --- |
//! | `5xx` | probability | 502, 503 or 504 (equally likely), ErrorBody, no `Retry-After` |
//! | `500` | probability | 500 `internal.server.error` (kept apart: clients do not retry 500 by default) |
//! | `503-retry-after` | probability | 503 `service.unavailable` with `Retry-After: 1..=3` |
//! | `reset-before` | probability | the connection is reset before anything is applied; no response |
//! | `reset-after` | probability | the effect is applied and recorded in the ledger, then the connection is reset; no response |
//! | `long-retry-after` | probability | 429 `too.many.requests.retry.after` with `Retry-After` between 181 and 3600 s |
//! | `latency` | `5ms..50ms` or `20ms` | every API request waits a uniform delay in the range first |
//! | `revoke-every` | duration (`30s`) | every token is revoked periodically (the next call gets 401) |
//! | `token-5xx` | probability | `POST /oauth/token` answers 503 |
//! | `endless-body` | probability | the effect is applied, then the answer's body never ends (chunked: the real JSON, then spaces forever) |
//! | `huge-body` | probability | as `endless-body`, with `Content-Length: 1000000000000` |
//! | `stall-body` | probability | the effect is applied; the headers and half the body are sent, then nothing more (the connection stays open) |
//! | `drip-body` | probability | the effect is applied; the body is sent one byte every 5 s |
//! | `504-after` | probability | the effect is applied, then a gateway answers 504 `gateway.timeout` in its place |
//! | `520-after` | probability | the effect is applied, then a CDN answers 520 with an HTML page in its place |
//! | `stale-page` | probability | a cache in front of the API that ignores the query string: the request is served as if it had none (a listing answers its first page, of the default size, whatever page was asked) |
//!
//! The probabilities of `5xx`, `500`, `503-retry-after`, `reset-before`, `reset-after`,
//! `long-retry-after`, the four `*-body` faults, `504-after`, `520-after` and `stale-page` are exclusive
//! outcomes of one
//! draw, so they
//! must sum to at most 1.
//! The draw for the n-th API request depends only on the seed and n, so a sequential client
//! sees the same faults on every run with the same seed.
//!
//! ```
//! use genesys_sim::Faults;
//!
//! let faults: Faults = "5xx=0.05,reset-after=0.01,latency=5ms..50ms".parse().unwrap();
//! assert_eq!(faults.server_error, 0.05);
//! assert_eq!(faults.to_string(), "5xx=0.05,reset-after=0.01,latency=5ms..50ms");
//! assert!("5xx=2".parse::<Faults>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// The keys a fault spec accepts, for error messages and docs.
pub const FAULT_KEYS: &str = "5xx, 500, 503-retry-after, reset-before, reset-after, \
long-retry-after (probabilities 0..=1), latency (MIN..MAX or a single duration, e.g. 5ms..50ms), \
revoke-every (a duration, e.g. 30s), token-5xx, endless-body, huge-body, stall-body, drip-body, \
504-after, 520-after, stale-page (probabilities)";

/// The fault configuration: what goes wrong, how often. `Faults::default()` injects nothing.
///
/// Parse it from a spec with [`str::parse`] / [`Faults::parse`]; `Display` writes the spec back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// `5xx=p`: probability of a 502, 503 or 504 (chosen uniformly), without `Retry-After`.
    pub server_error: f64,
    /// `500=p`: probability of a 500 `internal.server.error`.
    pub internal_error: f64,
    /// `503-retry-after=p`: probability of a 503 with `Retry-After` of 1 to 3 seconds.
    pub retry_after_503: f64,
    /// `reset-before=p`: probability that the connection is reset before the effect is applied.
    pub reset_before: f64,
    /// `reset-after=p`: probability that the effect is applied, then the connection is reset.
    pub reset_after: f64,
    /// `long-retry-after=p`: probability of a 429 whose `Retry-After` exceeds 180 seconds.
    pub long_retry_after: f64,
    /// `latency=MIN..MAX`: an added delay, uniform in the range, before every API request.
    pub latency: Option<(Duration, Duration)>,
    /// `revoke-every=D`: revoke every issued token each `D`.
    pub revoke_every: Option<Duration>,
    /// `token-5xx=p`: probability that `POST /oauth/token` answers 503.
    pub token_error: f64,
    /// `endless-body=p`: probability that an answer's body never ends (chunked).
    pub endless_body: f64,
    /// `huge-body=p`: probability that an answer declares `Content-Length: 10^12` and never ends.
    pub huge_body: f64,
    /// `stall-body=p`: probability that an answer sends half its body, then stalls.
    pub stall_body: f64,
    /// `drip-body=p`: probability that an answer's body is sent one byte every 5 s.
    pub drip_body: f64,
    /// `504-after=p`: probability that the effect is applied, then a gateway answers 504 in
    /// place of the answer (what a gateway that gave up waiting does).
    pub gateway_after: f64,
    /// `520-after=p`: probability that the effect is applied, then a CDN in front of the API
    /// answers 520 ("the origin returned an unknown error") with an HTML page in its place: a
    /// status outside the usual three, as Cloudflare's 520 to 527 are.
    pub cdn_after: f64,
    /// `stale-page=p`: probability that the request is served as if it had no query string,
    /// as a cache in front of the API that ignores it does (a listing answers its first page).
    pub stale_page: f64,
}

/// Which API requests the probability faults may hit (by default, all): a share of the traffic
/// that goes wrong while the rest does not, as when one version of a client misbehaves or one
/// client's requests take a bad route. Latency and token faults hit every request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultTarget {
    /// Requests carrying the header with this value (`header:NAME=VALUE`).
    Header(http::HeaderName, String),
    /// Requests made with a token of this OAuth client (`client:ID`).
    Client(String),
}

impl FaultTarget {
    /// Parses `header:NAME=VALUE` or `client:ID`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "`{spec}` is not a fault target: write header:NAME=VALUE (e.g. \
                 header:x-policy-version=v2) or client:ID"
            )
        };
        if let Some(rest) = spec.strip_prefix("header:") {
            let (name, value) = rest.split_once('=').ok_or_else(usage)?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| usage())?;
            return Ok(FaultTarget::Header(name, value.trim().to_owned()));
        }
        match spec.strip_prefix("client:").map(str::trim) {
            Some(id) if !id.is_empty() => Ok(FaultTarget::Client(id.to_owned())),
            _ => Err(usage()),
        }
    }

    /// Whether a request with `headers`, made by `client`, is targeted.
    pub(crate) fn matches(&self, headers: &http::HeaderMap, client: &str) -> bool {
        match self {
            FaultTarget::Header(name, value) => headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == value.as_bytes()),
            FaultTarget::Client(id) => id == client,
        }
    }
}

impl fmt::Display for FaultTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultTarget::Header(name, value) => write!(f, "header:{name}={value}"),
            FaultTarget::Client(id) => write!(f, "client:{id}"),
        }
    }
}

/// One probability fault: the one place it is declared. Parsing, `Display`, validation and the
/// draw of [`Faults`] are derived from [`PROBABILITY_FAULTS`]; adding a fault is a field of
/// [`Faults`], a row here and its effect where the request is served.
struct ProbabilityFault {
    /// Its key in a spec.
    key: &'static str,
    get: fn(&Faults) -> f64,
    set: fn(&mut Faults, f64),
    /// What it does to an API request when drawn; `None` for a fault outside the API draw.
    outcome: Option<fn(&mut SmallRng) -> Fault>,
}

macro_rules! probability_fault {
    ($key:literal, $field:ident, $outcome:expr) => {
        ProbabilityFault {
            key: $key,
            get: |f| f.$field,
            set: |f, p| f.$field = p,
            outcome: $outcome,
        }
    };
}

/// The probability faults, in the order of the draw (the order keeps seeded runs reproducible).
/// Those with an outcome are exclusive outcomes of one draw per API request.
const PROBABILITY_FAULTS: [ProbabilityFault; 14] = [
    probability_fault!(
        "5xx",
        server_error,
        Some(|rng| Fault::ServerError([502, 503, 504][rng.random_range(0..3)]))
    ),
    probability_fault!("500", internal_error, Some(|_| Fault::ServerError(500))),
    probability_fault!(
        "503-retry-after",
        retry_after_503,
        Some(|rng| Fault::RetryAfter503(rng.random_range(1..=3)))
    ),
    probability_fault!("reset-before", reset_before, Some(|_| Fault::ResetBefore)),
    probability_fault!("reset-after", reset_after, Some(|_| Fault::ResetAfter)),
    probability_fault!(
        "long-retry-after",
        long_retry_after,
        Some(|rng| Fault::LongRetryAfter(rng.random_range(181..=3600)))
    ),
    probability_fault!("token-5xx", token_error, None),
    probability_fault!(
        "endless-body",
        endless_body,
        Some(|_| Fault::Body(BodyFault::Endless))
    ),
    probability_fault!(
        "huge-body",
        huge_body,
        Some(|_| Fault::Body(BodyFault::Huge))
    ),
    probability_fault!(
        "stall-body",
        stall_body,
        Some(|_| Fault::Body(BodyFault::Stall))
    ),
    probability_fault!(
        "drip-body",
        drip_body,
        Some(|_| Fault::Body(BodyFault::Drip))
    ),
    probability_fault!("504-after", gateway_after, Some(|_| Fault::GatewayAfter)),
    probability_fault!("520-after", cdn_after, Some(|_| Fault::CdnAfter)),
    probability_fault!("stale-page", stale_page, Some(|_| Fault::StalePage)),
];

/// A fault spec that could not be parsed: says what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpecError(String);

impl fmt::Display for FaultSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultSpecError {}

impl Faults {
    /// Parses a spec such as `5xx=0.05,latency=5ms..50ms` (empty or `none`: no faults).
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        spec.parse()
    }

    /// Checks a fault configuration built by hand (a parsed spec is always valid): every
    /// probability in 0..=1, the exclusive ones summing to at most 1, every duration at most
    /// [`MAX_DURATION`], `revoke-every` longer than 0.
    pub fn validate(&self) -> Result<(), FaultSpecError> {
        for row in &PROBABILITY_FAULTS {
            let p = (row.get)(self);
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(format!(
                    "fault `{}` needs a probability between 0 and 1, got {p}",
                    row.key
                )));
            }
        }
        let sum = self.exclusive_sum();
        if sum > 1.0 + 1e-9 {
            let keys: Vec<&str> = PROBABILITY_FAULTS
                .iter()
                .filter(|r| r.outcome.is_some())
                .map(|r| r.key)
                .collect();
            return Err(FaultSpecError(format!(
                "the probabilities of {} are exclusive outcomes of one draw and must sum to at \
                 most 1 (they sum to {sum})",
                keys.join(", ")
            )));
        }
        if let Some((lo, hi)) = self.latency
            && (hi < lo || hi > MAX_DURATION)
        {
            return Err(bad(format!(
                "fault `latency` needs MIN <= MAX <= {} s",
                MAX_DURATION.as_secs()
            )));
        }
        if let Some(d) = self.revoke_every
            && !(MIN_REVOKE_EVERY..=MAX_DURATION).contains(&d)
        {
            return Err(bad(format!(
                "fault `revoke-every` must be at least 1ms and at most {} s",
                MAX_DURATION.as_secs()
            )));
        }
        Ok(())
    }

    /// True when nothing is injected.
    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }

    fn exclusive_sum(&self) -> f64 {
        PROBABILITY_FAULTS
            .iter()
            .filter(|r| r.outcome.is_some())
            .map(|r| (r.get)(self))
            .sum()
    }

    /// The fault (if any) for the `n`-th API request under `seed`.
    pub(crate) fn decide(&self, rng: &mut SmallRng) -> Fault {
        let u: f64 = rng.random();
        let mut edge = 0.0;
        for row in &PROBABILITY_FAULTS {
            if let Some(outcome) = row.outcome {
                edge += (row.get)(self);
                if u < edge {
                    return outcome(rng);
                }
            }
        }
        Fault::None
    }

    /// The added latency for this request, if configured.
    pub(crate) fn latency(&self, rng: &mut SmallRng) -> Option<Duration> {
        let (lo, hi) = self.latency?;
        if hi <= lo {
            return Some(lo);
        }
        let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
        Some(lo.saturating_add(Duration::from_nanos(rng.random_range(0..=span))))
    }
}

/// One request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    ServerError(u16),
    RetryAfter503(u64),
    ResetBefore,
    ResetAfter,
    LongRetryAfter(u64),
    /// The handler runs (the effect is applied); its answer's body misbehaves.
    Body(BodyFault),
    /// The handler runs (the effect is applied); a gateway's 504 is answered in its place.
    GatewayAfter,
    /// The handler runs (the effect is applied); a CDN's 520 page is answered in its place.
    CdnAfter,
    /// The handler runs as if the request had no query string.
    StalePage,
}

/// How an answer's body misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Never ends (chunked).
    Endless,
    /// Declares `Content-Length: 10^12` and never ends.
    Huge,
    /// Half the body, then nothing.
    Stall,
    /// One byte every [`DRIP_EVERY`].
    Drip,
}

/// The shortest `revoke-every`: a shorter period only keeps a core busy revoking.
const MIN_REVOKE_EVERY: Duration = Duration::from_millis(1);

/// How often a `drip-body` answer sends a byte.
pub(crate) const DRIP_EVERY: Duration = Duration::from_secs(5);

impl Fault {
    /// The name counted in [`crate::Stats::faults`].
    pub(crate) fn kind(self) -> Option<&'static str> {
        Some(match self {
            Fault::None => return None,
            Fault::ServerError(500) => "500",
            Fault::ServerError(_) => "5xx",
            Fault::RetryAfter503(_) => "503-retry-after",
            Fault::ResetBefore => "reset-before",
            Fault::ResetAfter => "reset-after",
            Fault::LongRetryAfter(_) => "long-retry-after",
            Fault::Body(BodyFault::Endless) => "endless-body",
            Fault::Body(BodyFault::Huge) => "huge-body",
            Fault::Body(BodyFault::Stall) => "stall-body",
            Fault::Body(BodyFault::Drip) => "drip-body",
            Fault::GatewayAfter => "504-after",
            Fault::CdnAfter => "520-after",
            Fault::StalePage => "stale-page",
        })
    }
}

/// A reproducible generator for the `n`-th draw of a stream under `seed`.
pub(crate) fn rng_for(seed: u64, stream: u64, n: u64) -> SmallRng {
    SmallRng::seed_from_u64(splitmix(
        seed ^ splitmix(n ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)),
    ))
}

/// SplitMix64 finaliser: spreads nearby inputs over the whole range.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn bad(msg: String) -> FaultSpecError {
    FaultSpecError(format!("{msg}; allowed keys: {FAULT_KEYS}"))
}

fn parse_prob(key: &str, value: &str) -> Result<f64, FaultSpecError> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t');
    let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match v.parse::<f64>() {
        Ok(p) if plain && (0.0..=1.0).contains(&p) => Ok(p),
        _ => {
            let shown: String = v.chars().take(40).collect();
            Err(bad(format!(
                "fault `{key}` needs a probability between 0 and 1, got `{shown}`"
            )))
        }
    }
}

/// The longest duration the simulator accepts anywhere (fault specs, token lifetime, quota
/// window): 365 days. Longer ones are refused where they are read, so that no clock arithmetic
/// can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250us`, `5ms`, `2s`, `1.5s`, `1m`, `1h`: a plain decimal number (ASCII digits and at
/// most one `.`) and a unit. Durations longer than [`MAX_DURATION`] are refused with a message.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t');
    let shown: String = v.chars().take(40).collect();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{shown}` has no unit (use us, ms, s, m or h, e.g. 50ms)"))?;
    let (num, unit) = v.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(format!("`{shown}` does not start with a number"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{shown}` does not start with a number"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            let unit: String = unit.chars().take(10).collect();
            return Err(format!(
                "`{shown}` has unknown unit `{unit}` (use us, ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "`{shown}` is longer than the simulator allows (at most {} s, 365 days)",
            MAX_DURATION.as_secs()
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{shown}` is not a valid duration: {e}"))
}

/// Writes a duration in the unit `parse_duration` reads back exactly.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

impl FromStr for Faults {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut f = Faults::default();
        let spec = spec.trim();
        if spec.is_empty() || spec.eq_ignore_ascii_case("none") {
            return Ok(f);
        }
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                bad(format!(
                    "fault item `{}` is not of the form key=value",
                    item.chars().take(40).collect::<String>()
                ))
            })?;
            let key = key.trim();
            match key {
                "latency" => {
                    let (lo, hi) = match value.split_once("..") {
                        Some((lo, hi)) => (lo, hi),
                        None => (value, value),
                    };
                    let lo =
                        parse_duration(lo).map_err(|e| bad(format!("fault `latency`: {e}")))?;
                    let hi =
                        parse_duration(hi).map_err(|e| bad(format!("fault `latency`: {e}")))?;
                    if hi < lo {
                        return Err(bad(
                            "fault `latency`: the maximum is below the minimum".to_string()
                        ));
                    }
                    f.latency = Some((lo, hi));
                }
                "revoke-every" => {
                    let d = parse_duration(value)
                        .map_err(|e| bad(format!("fault `revoke-every`: {e}")))?;
                    if d < MIN_REVOKE_EVERY {
                        return Err(bad("fault `revoke-every` must be at least 1ms".into()));
                    }
                    f.revoke_every = Some(d);
                }
                other => match PROBABILITY_FAULTS.iter().find(|r| r.key == other) {
                    Some(row) => (row.set)(&mut f, parse_prob(key, value)?),
                    None => return Err(bad(format!("unknown fault `{other}`"))),
                },
            }
        }
        f.validate()?;
        Ok(f)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = PROBABILITY_FAULTS
            .iter()
            .filter(|r| (r.get)(self) > 0.0)
            .map(|r| format!("{}={}", r.key, (r.get)(self)))
            .collect();
        if let Some((lo, hi)) = self.latency {
            if lo == hi {
                items.push(format!("latency={}", fmt_duration(lo)));
            } else {
                items.push(format!(
                    "latency={}..{}",
                    fmt_duration(lo),
                    fmt_duration(hi)
                ));
            }
        }
        if let Some(d) = self.revoke_every {
            items.push(format!("revoke-every={}", fmt_duration(d)));
        }
        if items.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let spec = "5xx=0.05,503-retry-after=0.01,reset-before=0.01,reset-after=0.01,\
                    long-retry-after=0.001,latency=5ms..50ms,revoke-every=30s";
        let f: Faults = spec.parse().unwrap();
        assert_eq!(f.to_string(), spec);
        assert_eq!(f.to_string().parse::<Faults>().unwrap(), f);
        assert_eq!(Faults::default().to_string(), "none");
        assert_eq!("none".parse::<Faults>().unwrap(), Faults::default());
    }

    #[test]
    fn refuses_with_what_is_allowed() {
        for bad in [
            "5xx",
            "5xx=1.5",
            "boom=0.1",
            "latency=5",
            "latency=50ms..5ms",
            "5xx=0.6,500=0.6",
        ] {
            let e = bad.parse::<Faults>().unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = "boom=0.1".parse::<Faults>().unwrap_err().to_string();
        assert!(
            e.contains("unknown fault `boom`") && e.contains("reset-after"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn body_faults_round_trip_and_count_in_the_sum() {
        let spec = "endless-body=0.1,huge-body=0.2,stall-body=0.3,drip-body=0.4";
        let f: Faults = spec.parse().unwrap();
        assert_eq!(f.to_string(), spec);
        let e = "5xx=0.5,stall-body=0.6".parse::<Faults>().unwrap_err();
        assert!(e.to_string().contains("stall-body"), "{e}");
        let mut rng = rng_for(0, 0, 0);
        let always: Faults = "drip-body=1".parse().unwrap();
        assert_eq!(always.decide(&mut rng), Fault::Body(BodyFault::Drip));
        let always: Faults = "504-after=1".parse().unwrap();
        assert_eq!(always.to_string(), "504-after=1");
        assert_eq!(always.decide(&mut rng), Fault::GatewayAfter);
    }

    #[test]
    fn overflowing_durations_are_refused_with_a_message() {
        for spec in [
            "latency=99999999999999999999999h",
            "latency=1e400s",
            "revoke-every=8761h",
            "latency=5ms..366d",
            "latency=..5ms",
            "latency=.ms",
            "latency=1.2.3s",
            "revoke-every=\u{a0}5s",
            "5xx=NaN",
            "5xx=inf",
            "5xx=-0.1",
            "5xx=1e-1",
        ] {
            let e = spec.parse::<Faults>().unwrap_err().to_string();
            assert!(!e.is_empty(), "{spec}");
        }
        let e = "latency=99999999999999999999999h"
            .parse::<Faults>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most"), "{e}");
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
    }

    #[test]
    fn hand_built_faults_are_validated() {
        let f = Faults {
            latency: Some((Duration::ZERO, Duration::MAX)),
            ..Faults::default()
        };
        assert!(f.validate().is_err());
        let f = Faults {
            server_error: f64::NAN,
            ..Faults::default()
        };
        assert!(f.validate().is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(5000)))]

        #[test]
        fn any_spec_parses_or_says_why(spec in "\\PC{0,48}") {
            match spec.parse::<Faults>() {
                Ok(f) => {
                    proptest::prop_assert!(f.validate().is_ok());
                    // What parses, prints back to a spec that parses.
                    proptest::prop_assert!(f.to_string().parse::<Faults>().is_ok());
                    let mut rng = rng_for(1, 2, 3);
                    let _ = f.latency(&mut rng);
                    let _ = f.decide(&mut rng);
                }
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn spec_shaped_input_parses_or_says_why(
            key in "(5xx|500|latency|revoke-every|token-5xx|reset-after)",
            num in "[0-9.]{0,30}",
            unit in "(us|ms|s|m|h|d|)",
            range in proptest::bool::ANY,
        ) {
            let value = if range { format!("{num}{unit}..{num}{unit}") } else { format!("{num}{unit}") };
            match format!("{key}={value}").parse::<Faults>() {
                Ok(f) => proptest::prop_assert!(f.validate().is_ok()),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
            match parse_duration(&value) {
                Ok(d) => proptest::prop_assert!(d <= MAX_DURATION),
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
        }
    }
}
