//! Certificates and keys from PEM files, and what the gateway reads out of a certificate
//! (its names, its subject's common name, when it expires).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// What the gateway knows of a certificate it serves: for the expiry metric, logs and the
/// admin view.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// The PEM file it was read from.
    pub path: PathBuf,
    /// The DNS names it is valid for (its subject alternative names, wildcards as `*.x`).
    pub names: Vec<String>,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// When it expires (its `notAfter`).
    pub not_after: SystemTime,
}

/// Reads a file, naming it in the error.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in the PEM file `path`, whose contents are `pem`.
pub(super) fn certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

/// A root store of the CA certificates in the PEM file `path`, whose contents are `pem`; a
/// certificate that cannot be a trust anchor is refused with the error `unusable` makes of
/// what is wrong with it.
pub(super) fn root_store(
    path: &Path,
    pem: &[u8],
    unusable: impl Fn(String) -> TlsError,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots
            .add(cert)
            .map_err(|error| unusable(format!("not a usable CA certificate: {error}")))?;
    }
    Ok(roots)
}

/// The (first) private key in the PEM file `path`, whose contents are `pem`: PKCS #8, PKCS #1
/// (RSA) or SEC1 (EC).
pub(super) fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_owned()),
        error => TlsError::Pem {
            path: path.to_owned(),
            detail: error.to_string(),
        },
    })
}

/// A chain and its key, read from their files and checked to belong together, with what the
/// leaf says of itself.
pub(super) fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertificateInfo), TlsError> {
    let chain = certificates(cert_path, cert_pem)?;
    let key = private_key(key_path, key_pem)?;
    let info = describe(cert_path, &chain[0])?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|error| TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            detail: error.to_string(),
        })?;
    Ok((Arc::new(certified), info))
}

/// What the certificate `der` (read from `path`) says of itself.
pub(super) fn describe(path: &Path, der: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            detail: format!("not a valid X.509 certificate: {error}"),
        })?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map_or(SystemTime::UNIX_EPOCH, |secs| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        });
    Ok(CertificateInfo {
        path: path.to_owned(),
        names,
        common_name: common_name(der.as_ref()),
        not_after,
    })
}

/// The subject common name of the certificate `der`, if it parses and has a non-empty one
/// (the first, should it have several).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?;
    name.as_str()
        .ok()
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// The name a verified client certificate stands for: its subject common name; without a
/// usable one, its first DNS, e-mail or URI subject alternative name; else `serial:` and its
/// serial number in hex (unique under its CA). `None` only for a certificate that does not
/// parse.
pub(crate) fn client_name(der: &[u8]) -> Option<String> {
    if let Some(name) = common_name(der) {
        return Some(name);
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let alternative = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::RFC822Name(name) | GeneralName::URI(name)
                if !name.is_empty() =>
            {
                Some((*name).to_owned())
            }
            _ => None,
        });
        if alternative.is_some() {
            return alternative;
        }
    }
    Some(format!(
        "serial:{}",
        cert.raw_serial_as_string().replace(':', "")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_client_is_named_by_its_common_name_else_an_alternative_name_else_its_serial() {
        let mut named = rcgen::CertificateParams::new(vec!["svc.example.test".to_owned()]).unwrap();
        named
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        assert_eq!(client_name(&cert(named)).as_deref(), Some("alice"));

        let mut empty = rcgen::CertificateParams::new(vec!["svc.example.test".to_owned()]).unwrap();
        empty.distinguished_name = rcgen::DistinguishedName::new();
        empty.distinguished_name.push(rcgen::DnType::CommonName, "");
        assert_eq!(
            client_name(&cert(empty)).as_deref(),
            Some("svc.example.test")
        );

        let mut bare = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        bare.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        assert_eq!(client_name(&cert(bare)).as_deref(), Some("serial:0abc"));
        assert_eq!(client_name(b"junk"), None);
    }
}
