//! TLS settings of an `mqtts` / `wss` listener: the rustls server configuration built from PEM
//! files, and the client identity (certificate subject CN) used by `use_identity_as_username`.

use crate::config::ListenerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;

/// A TLS setting that cannot be used: the listener key it came from and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettingError {
    /// Key inside the listener table, e.g. `cert_file`.
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: String) -> TlsSettingError {
    TlsSettingError { key, message }
}

/// The crypto provider is chosen explicitly rather than through a process-wide default, so the
/// broker works the same whichever other rustls providers are compiled into the binary.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSettingError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(
            key,
            format!(
                "{} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The listener check that configuration runs (`config::ListenerCheck`, passed down by
/// `main`): the TLS files load and fit together, as `server_config` needs them.
pub fn check_listener(listener: &ListenerConfig) -> Result<(), (&'static str, String)> {
    server_config(listener)
        .map(|_| ())
        .map_err(|e| (e.key, e.message))
}

/// Build the rustls configuration of a TLS listener. Client certificates are verified against
/// `ca_file` when it is set; `require_certificate` makes one mandatory.
pub fn server_config(listener: &ListenerConfig) -> Result<Arc<ServerConfig>, TlsSettingError> {
    let cert_path = listener
        .cert_file
        .as_deref()
        .ok_or_else(|| bad("cert_file", "required for a TLS listener (PEM file)".into()))?;
    let key_path = listener
        .key_file
        .as_deref()
        .ok_or_else(|| bad("key_file", "required for a TLS listener (PEM file)".into()))?;
    let chain = read_certificates("cert_file", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        bad(
            "key_file",
            format!(
                "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {e}",
                key_path.display()
            ),
        )
    })?;

    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert_file", format!("TLS setup failed: {e}")))?;
    let builder = match &listener.ca_file {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("ca_file", ca_path)? {
                roots.add(cert).map_err(|e| {
                    bad(
                        "ca_file",
                        format!("unusable CA certificate in {}: {e}", ca_path.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            let verifier = if listener.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| bad("ca_file", format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        bad(
            "key_file",
            format!("does not go with the certificate in cert_file: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}

/// The subject Common Name of a DER certificate (the first CN, as mosquitto takes it), or None
/// when the subject has none. Only the certificate's outer structure is walked: rustls has
/// already verified it against the CA before this is called.
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    // 2.5.4.3 (id-at-commonName)
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    let (tag, cert, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // TBSCertificate: [0] version (optional), serialNumber, signature, issuer, validity, subject
    if tbs.first() == Some(&0xA0) {
        tbs = der_element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, mut subject, _) = der_element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (tag, mut rdn, rest) = der_element(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attribute, rest) = der_element(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_element(attribute)?;
            if tag == OID && oid == COMMON_NAME {
                let (tag, text, _) = der_element(value)?;
                return der_string(tag, text);
            }
        }
    }
    None
}

/// Split one DER element off `input`: (tag, contents, rest). None if it is malformed.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None; // multi-byte tags do not occur in the fields walked here
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7F) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..count)?, rest.get(count..)?);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// Decode the string types a Common Name may use (RFC 5280 DirectoryString and friends).
fn der_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString
        0x0C | 0x13 | 0x16 | 0x1A => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString: in practice Latin-1
        0x14 => Some(bytes.iter().map(|&b| b as char).collect()),
        // BMPString: UTF-16BE
        0x1E if bytes.len() % 2 == 0 => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// A TCP connection with or without TLS over it: `C` is `rustls::ServerConnection` for the ops
/// HTTP server and `rustls::ClientConnection` for a bridge's link, the same logic either way.
pub enum MaybeTls<C> {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<C, TcpStream>>),
}

impl<C> MaybeTls<C> {
    /// The socket underneath, for timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => &s.sock,
        }
    }
}

impl<C, S> Read for MaybeTls<C>
where
    C: DerefMut + Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.read(buf),
            MaybeTls::Tls(s) => s.read(buf),
        }
    }
}

impl<C, S> Write for MaybeTls<C>
where
    C: DerefMut + Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.write(buf),
            MaybeTls::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush(),
            MaybeTls::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_with_subject(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "mqflux tests");
        dn.push(rcgen::DnType::CommonName, "sensor-17");
        let der = certificate_with_subject(dn);
        assert_eq!(subject_common_name(&der).as_deref(), Some("sensor-17"));
    }

    #[test]
    fn subject_without_common_name_gives_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "no cn here");
        let der = certificate_with_subject(dn);
        assert_eq!(subject_common_name(&der), None);
    }

    #[test]
    fn truncated_or_garbage_certificates_give_none_without_panicking() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "x");
        let der = certificate_with_subject(dn);
        for len in 0..der.len() {
            let _ = subject_common_name(&der[..len]);
        }
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(subject_common_name(&[0x30, 0x80]), None);
        assert_eq!(subject_common_name(b"not a certificate"), None);
    }

    #[test]
    fn bmp_and_teletex_strings_are_decoded() {
        assert_eq!(der_string(0x1E, &[0, b'h', 0, b'i']).as_deref(), Some("hi"));
        assert_eq!(der_string(0x14, &[0xE9]).as_deref(), Some("é"));
        assert_eq!(der_string(0x1E, &[0]), None);
    }
}
