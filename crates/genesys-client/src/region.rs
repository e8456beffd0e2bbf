//! Genesys Cloud regions and the hosts that serve them.
//!
//! Every region has an API host (`api.<domain>`) and a login host (`login.<domain>`), where OAuth
//! tokens are issued. [`Region`] names the eighteen public regions; [`Endpoints`] is what the
//! client really uses: an API base URL and a login base URL, taken from a region or given by hand
//! (a simulator, a proxy, a test server).
//!
//! ```
//! use genesys_client::{Endpoints, Region};
//!
//! let region: Region = "eu-west-1".parse().unwrap();
//! assert_eq!(region, Region::EuWest1);
//! assert_eq!(region.api_base_url(), "https://api.mypurecloud.ie");
//! assert_eq!(region.login_base_url(), "https://login.mypurecloud.ie");
//!
//! // The domain and the API host are accepted too.
//! assert_eq!("mypurecloud.ie".parse::<Region>().unwrap(), Region::EuWest1);
//! assert_eq!("https://api.usw2.pure.cloud".parse::<Region>().unwrap(), Region::UsWest2);
//!
//! // A simulator serves the OAuth and API routes on one address.
//! let local = Endpoints::custom("http://127.0.0.1:8080").unwrap();
//! assert_eq!(local.login_base_url(), "http://127.0.0.1:8080");
//! ```

use std::fmt;
use std::str::FromStr;

use http::Uri;

/// A public Genesys Cloud region.
///
/// Parse one from its AWS-style name (`us-east-1`), its SDK name (`us_east_1`), its domain
/// (`mypurecloud.com`) or a host or URL on that domain (`api.mypurecloud.com`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Region {
    /// Americas (US East), `mypurecloud.com`.
    UsEast1,
    /// FedRAMP (US East 2), `use2.us-gov-pure.cloud`.
    UsEast2,
    /// Americas (US West), `usw2.pure.cloud`.
    UsWest2,
    /// Americas (Canada), `cac1.pure.cloud`.
    CaCentral1,
    /// Americas (São Paulo), `sae1.pure.cloud`.
    SaEast1,
    /// Americas (Mexico), `mxc1.pure.cloud`.
    MxCentral1,
    /// EMEA (Frankfurt), `mypurecloud.de`.
    EuCentral1,
    /// EMEA (Zurich), `euc2.pure.cloud`.
    EuCentral2,
    /// EMEA (Dublin), `mypurecloud.ie`.
    EuWest1,
    /// EMEA (London), `euw2.pure.cloud`.
    EuWest2,
    /// EMEA (UAE), `mec1.pure.cloud`.
    MeCentral1,
    /// EU Sovereign Cloud (Germany East), `edee1.eusc-pure.cloud`.
    EuscDeEast1,
    /// Asia Pacific (Mumbai), `aps1.pure.cloud`.
    ApSouth1,
    /// Asia Pacific (Singapore), `apse1.pure.cloud`.
    ApSoutheast1,
    /// Asia Pacific (Sydney), `mypurecloud.com.au`.
    ApSoutheast2,
    /// Asia Pacific (Tokyo), `mypurecloud.jp`.
    ApNortheast1,
    /// Asia Pacific (Seoul), `apne2.pure.cloud`.
    ApNortheast2,
    /// Asia Pacific (Osaka), `apne3.pure.cloud`.
    ApNortheast3,
}

impl Region {
    /// Every public region.
    pub const ALL: [Region; 18] = [
        Region::UsEast1,
        Region::UsEast2,
        Region::UsWest2,
        Region::CaCentral1,
        Region::SaEast1,
        Region::MxCentral1,
        Region::EuCentral1,
        Region::EuCentral2,
        Region::EuWest1,
        Region::EuWest2,
        Region::MeCentral1,
        Region::EuscDeEast1,
        Region::ApSouth1,
        Region::ApSoutheast1,
        Region::ApSoutheast2,
        Region::ApNortheast1,
        Region::ApNortheast2,
        Region::ApNortheast3,
    ];

    /// The region's name, as the Genesys SDKs spell it with dashes: `us-east-1`.
    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// The region's domain: `mypurecloud.com`.
    pub fn domain(self) -> &'static str {
        self.info().1
    }

    /// The API host: `api.mypurecloud.com`.
    pub fn api_host(self) -> String {
        format!("api.{}", self.domain())
    }

    /// The login (OAuth) host: `login.mypurecloud.com`.
    pub fn login_host(self) -> String {
        format!("login.{}", self.domain())
    }

    /// The API base URL: `https://api.mypurecloud.com`.
    pub fn api_base_url(self) -> String {
        format!("https://api.{}", self.domain())
    }

    /// The login base URL: `https://login.mypurecloud.com`.
    pub fn login_base_url(self) -> String {
        format!("https://login.{}", self.domain())
    }

    /// The endpoints of this region.
    pub fn endpoints(self) -> Endpoints {
        Endpoints::from(self)
    }

    fn info(self) -> (&'static str, &'static str) {
        match self {
            Region::UsEast1 => ("us-east-1", "mypurecloud.com"),
            Region::UsEast2 => ("us-east-2", "use2.us-gov-pure.cloud"),
            Region::UsWest2 => ("us-west-2", "usw2.pure.cloud"),
            Region::CaCentral1 => ("ca-central-1", "cac1.pure.cloud"),
            Region::SaEast1 => ("sa-east-1", "sae1.pure.cloud"),
            Region::MxCentral1 => ("mx-central-1", "mxc1.pure.cloud"),
            Region::EuCentral1 => ("eu-central-1", "mypurecloud.de"),
            Region::EuCentral2 => ("eu-central-2", "euc2.pure.cloud"),
            Region::EuWest1 => ("eu-west-1", "mypurecloud.ie"),
            Region::EuWest2 => ("eu-west-2", "euw2.pure.cloud"),
            Region::MeCentral1 => ("me-central-1", "mec1.pure.cloud"),
            Region::EuscDeEast1 => ("eusc-de-east-1", "edee1.eusc-pure.cloud"),
            Region::ApSouth1 => ("ap-south-1", "aps1.pure.cloud"),
            Region::ApSoutheast1 => ("ap-southeast-1", "apse1.pure.cloud"),
            Region::ApSoutheast2 => ("ap-southeast-2", "mypurecloud.com.au"),
            Region::ApNortheast1 => ("ap-northeast-1", "mypurecloud.jp"),
            Region::ApNortheast2 => ("ap-northeast-2", "apne2.pure.cloud"),
            Region::ApNortheast3 => ("ap-northeast-3", "apne3.pure.cloud"),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Region {
    type Err = ParseRegionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = s.trim().to_ascii_lowercase();
        // Accept a URL or a host: strip the scheme, any path, a port, and the api./login. prefix.
        let mut key = raw.as_str();
        if let Some((_, rest)) = key.split_once("://") {
            key = rest;
        }
        key = key.split(['/', ':']).next().unwrap_or(key);
        for prefix in ["api.", "login.", "apps."] {
            if let Some(rest) = key.strip_prefix(prefix) {
                key = rest;
            }
        }
        let by_name = key.replace('_', "-");
        Region::ALL
            .into_iter()
            .find(|r| r.name() == by_name || r.domain() == key)
            .ok_or_else(|| ParseRegionError {
                input: s.trim().to_owned(),
            })
    }
}

/// The error of parsing a [`Region`] from a string that names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRegionError {
    input: String,
}

impl fmt::Display for ParseRegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown Genesys Cloud region {:?}: use a region name such as \"us-east-1\" or \
             \"eu-west-1\", or a domain such as \"mypurecloud.ie\" (known: ",
            self.input
        )?;
        for (i, r) in Region::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(r.name())?;
        }
        f.write_str("); for any other host, set a base URL instead")
    }
}

impl std::error::Error for ParseRegionError {}

/// Where the client sends its requests: an API base URL and a login base URL.
///
/// From a [`Region`], or custom: a simulator, a proxy, a test server. For a custom API URL whose
/// host starts with `api.`, the login URL is the same URL with `login.` in its place, as every
/// Genesys SDK does; any other custom URL serves the OAuth routes itself (as the simulator does)
/// unless a login URL is given with [`Endpoints::with_login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    api: String,
    login: String,
}

impl Endpoints {
    /// Endpoints at a custom API base URL (`http://127.0.0.1:8080`, `https://proxy.example`).
    ///
    /// The URL must be absolute, `http` or `https`; a trailing `/` is dropped.
    pub fn custom(api_base_url: &str) -> Result<Self, InvalidUrl> {
        let api = normalise(api_base_url)?;
        let login = match api.split_once("://api.") {
            Some((scheme, rest)) => format!("{scheme}://login.{rest}"),
            None => api.clone(),
        };
        Ok(Endpoints { api, login })
    }

    /// The same API base URL with another login base URL.
    pub fn with_login(mut self, login_base_url: &str) -> Result<Self, InvalidUrl> {
        self.login = normalise(login_base_url)?;
        Ok(self)
    }

    /// The API base URL, without a trailing `/`.
    pub fn api_base_url(&self) -> &str {
        &self.api
    }

    /// The login base URL, without a trailing `/`.
    pub fn login_base_url(&self) -> &str {
        &self.login
    }

    /// The OAuth token URL: `<login>/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.login)
    }

    /// The authority (`host[:port]`) of the API base URL: the only one the bearer token is sent to.
    pub fn api_authority(&self) -> Option<String> {
        self.api
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
    }
}

impl From<Region> for Endpoints {
    fn from(region: Region) -> Self {
        Endpoints {
            api: region.api_base_url(),
            login: region.login_base_url(),
        }
    }
}

fn normalise(url: &str) -> Result<String, InvalidUrl> {
    let trimmed = url.trim().trim_end_matches('/');
    let uri: Uri = trimmed.parse().map_err(|_| InvalidUrl::new(url))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https"), Some(_)) => Ok(trimmed.to_owned()),
        (Some("http"), Some(authority)) => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let local = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !local {
                // Allowed (a test server, a proxy of one's own), but said: the client secret
                // and every token would cross the network in clear.
                tracing::warn!(
                    host,
                    "an http:// URL for a host that is not this machine: credentials and \
                     tokens are sent to it unencrypted; use https://"
                );
            }
            Ok(trimmed.to_owned())
        }
        _ => Err(InvalidUrl::new(url)),
    }
}

/// A base URL that is not an absolute `http` or `https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUrl {
    input: String,
}

impl InvalidUrl {
    fn new(input: &str) -> Self {
        InvalidUrl {
            input: input.to_owned(),
        }
    }
}

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid base URL {:?}: give an absolute http or https URL such as \
             \"https://api.mypurecloud.com\" or \"http://127.0.0.1:8080\"",
            self.input
        )
    }
}

impl std::error::Error for InvalidUrl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_round_trips_by_name_and_domain() {
        for r in Region::ALL {
            assert_eq!(r.name().parse::<Region>().unwrap(), r);
            assert_eq!(r.domain().parse::<Region>().unwrap(), r);
            assert_eq!(r.api_base_url().parse::<Region>().unwrap(), r);
            assert_eq!(r.login_host().parse::<Region>().unwrap(), r);
            assert_eq!(r.name().replace('-', "_").parse::<Region>().unwrap(), r);
        }
        let domains: std::collections::HashSet<_> =
            Region::ALL.iter().map(|r| r.domain()).collect();
        assert_eq!(domains.len(), 18);
    }

    #[test]
    fn unknown_region_names_the_known_ones() {
        let err = "us-east-9".parse::<Region>().unwrap_err().to_string();
        assert!(
            err.contains("us-east-9") && err.contains("eu-west-1"),
            "{err}"
        );
    }

    #[test]
    fn custom_endpoints_follow_the_sdk_rule() {
        let e = Endpoints::custom("https://api.example.test/").unwrap();
        assert_eq!(e.api_base_url(), "https://api.example.test");
        assert_eq!(e.login_base_url(), "https://login.example.test");
        let e = Endpoints::custom("http://127.0.0.1:9")
            .unwrap()
            .with_login("http://127.0.0.1:10")
            .unwrap();
        assert_eq!(e.token_url(), "http://127.0.0.1:10/oauth/token");
        assert_eq!(e.api_authority().as_deref(), Some("127.0.0.1:9"));
        assert!(Endpoints::custom("not a url").is_err());
        assert!(Endpoints::custom("ftp://x").is_err());
    }
}
