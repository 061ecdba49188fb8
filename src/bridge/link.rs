//! The bridge's client connection to the remote broker: TCP or TLS (rustls, the CA of
//! `bridge_cafile`), CONNECT/CONNACK with our own codec, then packets in both directions with
//! short read timeouts, so one thread can send, receive and keep the link alive.
//!
//! `try_private` sets the bridge bit in the protocol level (0x84 / 0x83, as mosquitto does):
//! the codec writes the level, `connect` ORs the bit into that one byte.

use super::config::{split_address, BridgeConfig, BridgeProtocol};
use crate::broker::tls::MaybeTls;
use crate::protocol::{self, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a TCP connect, the TLS handshake and the CONNACK may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that cannot progress for this long means the link is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Stream = MaybeTls<rustls::ClientConnection>;

/// Why the link ended or could not be made.
#[derive(Debug)]
pub enum LinkError {
    /// No TCP connection, TLS failure, closed before CONNACK.
    Connect(String),
    /// CONNACK with a refusal code.
    Refused(u8),
    /// The remote hung up after our CONNECT, without CONNACK (how some brokers refuse a
    /// protocol level they do not know).
    NoConnAck,
    /// The link broke (I/O error, EOF, protocol error, keep-alive timeout).
    Broken(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(e) => write!(f, "{e}"),
            LinkError::Refused(code) => write!(f, "CONNACK refused the bridge (code {code:#04x})"),
            LinkError::NoConnAck => write!(f, "the remote closed the connection before CONNACK"),
            LinkError::Broken(e) => write!(f, "{e}"),
        }
    }
}

/// One connection to the remote.
pub struct Link {
    stream: Stream,
    pub version: ProtocolVersion,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    pub last_sent: Instant,
    pub last_received: Instant,
    /// Largest packet we read (the default `limits`-like bound for what the remote sends).
    max_in: usize,
    /// Packets that came in the same read as CONNACK (a remote resending its session's
    /// messages at once), handed out by the next `poll`.
    early: Vec<Packet>,
}

/// The TLS client configuration of a bridge with `bridge_cafile`, None without TLS.
pub fn tls_config(c: &BridgeConfig) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let Some(cafile) = &c.bridge_cafile else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cafile)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("bridge_cafile {}: {e}", cafile.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "bridge_cafile {}: no PEM certificate",
            cafile.display()
        ));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("bridge_cafile {}: {e}", cafile.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("bridge_cafile {}: {e}", cafile.display()))?;
    let builder = if c.bridge_insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
    } else {
        builder.with_webpki_verifier(verifier)
    };
    let config = match (&c.bridge_certfile, &c.bridge_keyfile) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("bridge_certfile {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("bridge_keyfile {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("bridge_certfile/bridge_keyfile: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// `bridge_insecure`: the chain must still lead to `bridge_cafile`, but the certificate need not
/// name the host (mosquitto's meaning).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Open a TCP connection to `address` ("host:port") within the connect timeout.
pub fn tcp_connect(address: &str, timeout: Duration) -> Result<TcpStream, String> {
    let (host, port) = split_address(address).ok_or_else(|| format!("bad address {address:?}"))?;
    let addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{address}: cannot resolve: {e}"))?;
    let mut last = format!("{address}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

impl Link {
    /// Connect to `address` and complete CONNECT/CONNACK. `private`: set the bridge bit (v3).
    pub fn connect(
        c: &BridgeConfig,
        address: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
        private: bool,
    ) -> Result<(Link, ConnAck), LinkError> {
        let tcp = tcp_connect(address, CONNECT_TIMEOUT).map_err(LinkError::Connect)?;
        tcp.set_nodelay(true).ok();
        tcp.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT)).ok();
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let host = split_address(address).map(|(h, _)| h).unwrap_or_default();
                let name = ServerName::try_from(host.clone()).map_err(|e| {
                    LinkError::Connect(format!("{address}: server name {host:?}: {e}"))
                })?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| LinkError::Connect(format!("{address}: TLS: {e}")))?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).map_err(|e| {
                        LinkError::Connect(format!("{address}: TLS handshake: {e}"))
                    })?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        let version = match c.bridge_protocol_version {
            BridgeProtocol::V311 => ProtocolVersion::V311,
            BridgeProtocol::V5 => ProtocolVersion::V5,
        };
        let mut properties = Properties::default();
        if version.is_v5() {
            // Keep the remote session (and its QoS state) as long as it allows, unless
            // cleansession; tell it how much we take at once.
            if !c.cleansession {
                properties.session_expiry_interval = Some(u32::MAX);
            }
            properties.receive_maximum = Some(c.max_inflight);
        }
        let connect = Connect {
            version,
            clean_start: c.cleansession,
            keep_alive: c.keepalive_interval,
            client_id: c.remote_clientid(),
            will: None,
            username: c.remote_username.clone(),
            password: c
                .remote_password
                .as_ref()
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            properties,
            // The bridge bit in the protocol level (0x84); the encoder leaves it out for 5.0.
            bridge: private,
        };
        let mut link = Link {
            stream,
            version,
            rbuf: Vec::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(64 * 1024),
            last_sent: Instant::now(),
            last_received: Instant::now(),
            max_in: protocol::MAX_REMAINING_LENGTH + 5,
            early: Vec::new(),
        };
        protocol::encode_packet(&Packet::Connect(connect), version, &mut link.wbuf);
        link.flush()
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let packets = link.poll().map_err(|e| match e {
                LinkError::Broken(_) => LinkError::NoConnAck,
                other => other,
            })?;
            let mut packets = packets.into_iter();
            if let Some(first) = packets.next() {
                // Whatever followed CONNACK in the same read is the session's first traffic:
                // dropping it would lose messages the remote then considers delivered.
                link.early.extend(packets);
                return match first {
                    Packet::ConnAck(ack) if ack.code == 0 => Ok((link, ack)),
                    Packet::ConnAck(ack) => Err(LinkError::Refused(ack.code)),
                    other => Err(LinkError::Connect(format!(
                        "expected CONNACK, got {}",
                        other.name()
                    ))),
                };
            }
            if Instant::now() >= deadline {
                return Err(LinkError::Connect("no CONNACK within 5 s".into()));
            }
        }
    }

    /// Use `timeout` for each read from now on (how long `poll` waits for the remote).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .ok();
    }

    /// Queue a packet (written by `flush`).
    pub fn queue(&mut self, packet: &Packet) {
        protocol::encode_packet(packet, self.version, &mut self.wbuf);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Write what is queued.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.wbuf)
            .and_then(|()| self.stream.flush())
            .map_err(|e| LinkError::Broken(format!("write: {e}")))?;
        self.wbuf.clear();
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Read once (waiting at most the read timeout) and return every whole packet received.
    pub fn poll(&mut self) -> Result<Vec<Packet>, LinkError> {
        if !self.early.is_empty() {
            return Ok(std::mem::take(&mut self.early));
        }
        let mut chunk = [0u8; 32 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => return Err(LinkError::Broken("the remote closed the connection".into())),
            Ok(n) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                self.last_received = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(LinkError::Broken(format!("read: {e}"))),
        }
        let mut packets = Vec::new();
        let mut used = 0;
        loop {
            match protocol::frame_in(&self.rbuf[used..], self.max_in) {
                Ok(Some((frame, size))) => {
                    used += size;
                    let packet = protocol::decode_packet(frame, self.version).map_err(
                        |e: DecodeError| LinkError::Broken(format!("from the remote: {e}")),
                    )?;
                    packets.push(packet);
                }
                Ok(None) => break,
                Err(e) => return Err(LinkError::Broken(format!("from the remote: {e}"))),
            }
        }
        self.rbuf.drain(..used);
        Ok(packets)
    }

    /// Close the TCP connection at once (both ways).
    pub fn shutdown(&self) {
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }
}
