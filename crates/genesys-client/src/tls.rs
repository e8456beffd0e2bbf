//! The default leaf's TLS: which certificate authorities it trusts.
//!
//! The Mozilla roots built in (`webpki-roots`), and besides them, read when the client is built:
//!
//! - the system's own bundle, as curl and OpenSSL read it: the first of
//!   `/etc/ssl/certs/ca-certificates.crt` (Debian, Ubuntu, Alpine, Arch),
//!   `/etc/pki/tls/certs/ca-bundle.crt` (Fedora, RHEL), `/etc/ssl/ca-bundle.pem` (openSUSE),
//!   `/etc/pki/tls/cacert.pem` and `/etc/ssl/cert.pem` (macOS, the BSDs) that exists. A network
//!   whose proxy inspects TLS signs every host's certificate with an authority of its own, which
//!   its administrators add to the system's bundle;
//! - or, in its place, the PEM file `SSL_CERT_FILE` names, when it is set (as OpenSSL reads it);
//! - the certificates given to
//!   [`GenesysClientBuilder::root_certificates_pem`](crate::GenesysClientBuilder::root_certificates_pem).
//!
//! A file `SSL_CERT_FILE` names, or certificates given, that cannot be read or hold no
//! certificate fail the build, naming them: a client that went on without them would fail every
//! connection with a certificate error instead. A system bundle that cannot be read is passed
//! over. Keys that macOS or Windows keep in their own stores, not in a file, are not read:
//! export such an authority to a PEM file and name it in `SSL_CERT_FILE`.

use std::io::Read;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::GenesysError;

/// The variable naming a PEM file of certificate authorities to trust besides the built-in
/// ones.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// The largest certificate file read (a system's whole bundle is about 200 KB).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Where systems keep their bundle of certificate authorities, in the order they are looked
/// for (OpenSSL's and curl's).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The TLS configuration of the default leaf: the built-in roots, the system's bundle or
/// `SSL_CERT_FILE`'s, and `extra`'s (PEM).
pub(crate) fn client_config(extra: &[Arc<[u8]>]) -> Result<rustls::ClientConfig, GenesysError> {
    // Read once a process, when SSL_CERT_FILE does not name another: a program may build
    // clients in its async code, where reading a file blocks its thread. A bundle that could
    // not be read (too many files open, say) is looked for again by the next build.
    static SYSTEM: std::sync::OnceLock<(&'static str, Vec<u8>)> = std::sync::OnceLock::new();
    let file = std::env::var_os(SSL_CERT_FILE).filter(|p| !p.is_empty());
    let system = match (&file, SYSTEM.get()) {
        (Some(_), _) => None,
        (None, Some(found)) => Some(found),
        (None, None) => first_readable(SYSTEM_BUNDLES).map(|found| SYSTEM.get_or_init(|| found)),
    };
    let system = system.map(|(path, pem)| (*path, pem.as_slice()));
    let roots = roots(file, system, extra)?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| GenesysError::Config(format!("TLS set-up failed: {e}")))
        .map(|config| config.with_root_certificates(roots).with_no_client_auth())
}

/// The first of `paths` that can be read, and its bytes.
fn first_readable(paths: &[&'static str]) -> Option<(&'static str, Vec<u8>)> {
    paths
        .iter()
        .find_map(|path| Some((*path, read_bounded(std::path::Path::new(path)).ok()?)))
}

/// The roots to trust: the built-in ones, those of the file `file` names or else of the
/// system's bundle (its path and bytes), and `extra`'s.
fn roots(
    file: Option<std::ffi::OsString>,
    system: Option<(&str, &[u8])>,
    extra: &[Arc<[u8]>],
) -> Result<RootCertStore, GenesysError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = file.filter(|p| !p.is_empty()) {
        let shown = format!("{SSL_CERT_FILE}={}", std::path::Path::new(&path).display());
        let pem = read_bounded(std::path::Path::new(&path))
            .map_err(|e| GenesysError::Config(format!("{shown}: {e}")))?;
        add(&mut roots, &pem, &shown)?;
    } else if let Some((path, pem)) = system
        && let Err(e) = add(&mut roots, pem, path)
    {
        tracing::debug!(error = %e, "the system's certificate bundle passed over");
    }
    for (i, pem) in extra.iter().enumerate() {
        add(&mut roots, pem, &format!("root certificates #{}", i + 1))?;
    }
    Ok(roots)
}

/// Reads the file at `path`, up to [`MAX_FILE`] bytes.
fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut pem = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if pem.len() as u64 > MAX_FILE {
        return Err(format!(
            "it is over {} MiB, larger than any certificate bundle: name a PEM file of \
             certificate authorities",
            MAX_FILE / (1024 * 1024)
        ));
    }
    Ok(pem)
}

/// Adds the certificates of `pem` to `roots`: an error, naming `source`, when it holds none
/// that can be a root.
fn add(roots: &mut RootCertStore, pem: &[u8], source: &str) -> Result<(), GenesysError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            GenesysError::Config(format!(
                "{source}: not a PEM file of certificates ({e}): name a file of \
                 -----BEGIN CERTIFICATE----- blocks"
            ))
        })?;
    let (added, _unusable) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(GenesysError::Config(format!(
            "{source}: holds no certificate that can be a certificate authority: name a file \
             of -----BEGIN CERTIFICATE----- blocks"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = include_bytes!("../tests/fixtures/ca.pem");

    #[test]
    fn the_built_in_roots_and_the_ones_added() {
        let built_in = roots(None, None, &[]).unwrap().len();
        assert!(built_in > 100, "{built_in}");
        assert_eq!(
            roots(None, None, &[Arc::from(CA)]).unwrap().len(),
            built_in + 1
        );
    }

    #[test]
    fn the_systems_bundle_unless_ssl_cert_file_names_another() {
        let dir = std::env::temp_dir().join(format!("genesys-tls-system-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = dir.join("ca-certificates.crt");
        std::fs::write(&bundle, CA).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"junk").unwrap();
        let missing = dir.join("missing.crt");
        // Leaked: the system's paths are static.
        let path = |p: std::path::PathBuf| -> &'static str {
            Box::leak(p.to_str().unwrap().to_owned().into_boxed_str())
        };
        let (bundle, junk, missing) = (path(bundle), path(junk), path(missing));
        let system = |paths: &[&'static str]| first_readable(paths);
        let built_in = roots(None, None, &[]).unwrap().len();
        // The first that exists, however many follow.
        let first = system(&[missing, bundle, junk]).unwrap();
        assert_eq!(first.0, bundle);
        assert_eq!(
            roots(None, Some((first.0, &first.1)), &[]).unwrap().len(),
            built_in + 1
        );
        // One that holds nothing usable is passed over, not an error.
        let first = system(&[junk, bundle]).unwrap();
        assert_eq!(
            roots(None, Some((first.0, &first.1)), &[]).unwrap().len(),
            built_in
        );
        // SSL_CERT_FILE in its place.
        let other = dir.join("other.pem");
        std::fs::write(&other, include_bytes!("../tests/fixtures/server.pem")).unwrap();
        let named = roots(Some(other.into_os_string()), Some((bundle, CA)), &[]).unwrap();
        assert_eq!(named.len(), built_in + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_used_fails_naming_it() {
        let dir = std::env::temp_dir().join(format!("genesys-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ca.pem");
        std::fs::write(&ok, CA).unwrap();
        let built_in = roots(None, None, &[]).unwrap().len();
        assert_eq!(
            roots(Some(ok.into_os_string()), None, &[]).unwrap().len(),
            built_in + 1
        );
        let not_pem = dir.join("key.txt");
        std::fs::write(&not_pem, b"hello").unwrap();
        let missing = dir.join("missing.pem");
        for (path, says) in [(not_pem, "no certificate"), (missing, "cannot open")] {
            let Err(GenesysError::Config(message)) = roots(Some(path.clone().into()), None, &[])
            else {
                panic!("{} accepted", path.display());
            };
            assert!(message.contains("SSL_CERT_FILE"), "{message}");
            assert!(message.contains(says), "{message}");
        }
        let Err(GenesysError::Config(message)) = roots(None, None, &[Arc::from(&b"junk"[..])])
        else {
            panic!("junk accepted");
        };
        assert!(message.contains("root certificates #1"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
