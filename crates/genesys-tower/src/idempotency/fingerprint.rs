//! A stable fingerprint of a request: method, path and query, body.

use std::fmt;
use std::str::FromStr;

use http::{Method, Uri};

/// A 128-bit fingerprint of a request's method, path (with query) and body.
///
/// An idempotency key names one logical operation; the fingerprint tells whether a request that
/// reuses a key is the same operation (a retry) or a different one (a client bug, answered with an
/// error instead of someone else's response).
///
/// The hash is 128-bit FNV-1a over `method NUL path?query NUL body`. It is the same in every
/// process, on every platform and in every version of this crate that keeps the `v1` tag, so
/// several servers sharing one Redis agree on it. It is not a cryptographic hash: it catches a
/// client that changed its payload by mistake, not one that crafts collisions on purpose (and such a
/// client could only collide with its own key).
///
/// ```
/// use genesys_tower::idempotency::Fingerprint;
/// use http::{Method, Uri};
///
/// let uri: Uri = "/orders?dry_run=false".parse().unwrap();
/// let a = Fingerprint::of(&Method::POST, &uri, b"{\"qty\":1}");
/// let b = Fingerprint::of(&Method::POST, &uri, b"{\"qty\":2}");
/// assert_ne!(a, b);
/// assert_eq!(a, a.to_string().parse().unwrap());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u128);

// FNV-1a, 128-bit parameters (the published offset basis and prime).
const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

impl Fingerprint {
    /// The fingerprint of a request. Only the path and query of `uri` count: the same request sent
    /// to another host name of the same service (a load balancer, say) has the same fingerprint.
    pub fn of(method: &Method, uri: &Uri, body: &[u8]) -> Self {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        // NUL cannot appear in a method or a URI, so the parts cannot run into one another.
        let mut h = fnv(FNV_OFFSET, b"v1\0");
        h = fnv(h, method.as_str().as_bytes());
        h = fnv(h, b"\0");
        h = fnv(h, path.as_bytes());
        h = fnv(h, b"\0");
        Fingerprint(fnv(h, body))
    }

    /// A fingerprint from its 128-bit value (a store reading back what it wrote).
    #[must_use]
    pub fn from_u128(value: u128) -> Self {
        Fingerprint(value)
    }

    /// The 128-bit value.
    #[must_use]
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

fn fnv(mut h: u128, bytes: &[u8]) -> u128 {
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

impl fmt::Display for Fingerprint {
    /// 32 lowercase hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The error of parsing a [`Fingerprint`] that is not 32 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFingerprintError(());

impl fmt::Display for ParseFingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a fingerprint is 32 hexadecimal digits")
    }
}

impl std::error::Error for ParseFingerprintError {}

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseFingerprintError(()));
        }
        u128::from_str_radix(s, 16)
            .map(Fingerprint)
            .map_err(|_| ParseFingerprintError(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_is_stable() {
        // FNV-1a-128 of the empty input is the offset basis: the parameters are the published ones.
        assert_eq!(fnv(FNV_OFFSET, b""), FNV_OFFSET);
        // FNV-1a-128("a"), the published test vector.
        assert_eq!(
            fnv(FNV_OFFSET, b"a"),
            0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964
        );
    }

    #[test]
    fn every_part_counts() {
        let uri: Uri = "/a?x=1".parse().unwrap();
        let base = Fingerprint::of(&Method::POST, &uri, b"{}");
        assert_ne!(base, Fingerprint::of(&Method::PATCH, &uri, b"{}"));
        assert_ne!(
            base,
            Fingerprint::of(&Method::POST, &"/a?x=2".parse().unwrap(), b"{}")
        );
        assert_ne!(base, Fingerprint::of(&Method::POST, &uri, b"{ }"));
        let absolute: Uri = "https://api.example.com/a?x=1".parse().unwrap();
        assert_eq!(base, Fingerprint::of(&Method::POST, &absolute, b"{}"));
    }
}
