//! Helpers for the listener tests: a test CA with server and client certificates, TLS clients,
//! configs the broker must refuse, and MQTT 3.1.1 packets over any byte stream (the `codec`
//! client's encoder and reader, pinned to 3.1.1). The broker process is `super::Broker`, whose
//! `listener_addr(scheme)` gives the port of each TLS or WebSocket listener.
use super::codec;
use mqflux::protocol::{self, Connect, Packet, ProtocolVersion, Publish, QoS, Subscribe};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(10);

/// Run a config that must be refused; returns the broker's output and asserts exit code 2.
pub fn rejected_config(dir: &Path, config: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().expect("UTF-8 temp path");
    let (status, output) = super::run_to_exit(&["--config", path], WAIT);
    assert_eq!(status.code(), Some(2), "output: {output}");
    output
}

/// A test PKI: a CA, a server certificate for localhost/127.0.0.1 and a client certificate
/// with subject CN `client_cn`, all written as PEM files into `dir`.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from another CA, which the broker must not accept.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

pub fn make_pki(dir: &Path, client_cn: &str) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let ca =
        CertifiedIssuer::self_signed(ca_params("mqflux test CA"), KeyPair::generate().unwrap())
            .unwrap();
    let other_ca =
        CertifiedIssuer::self_signed(ca_params("another CA"), KeyPair::generate().unwrap())
            .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &ca).unwrap();

    let client = |cn: &str, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::OrganizationName, "mqflux tests");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (client_cert, client_key) = client(client_cn, &ca);
    let (stranger_cert, stranger_key) = client("stranger", &other_ca);
    TestPki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client_cert),
        client_key: write("client.key", client_key),
        stranger_cert: write("stranger.pem", stranger_cert),
        stranger_key: write("stranger.key", stranger_key),
    }
}

/// A `[[listeners]]` table for a TLS-based listener (`mqtts` or `wss`) on a free loopback port,
/// serving the server certificate of `pki`.
pub fn tls_listener_toml(protocol: &str, pki: &TestPki) -> String {
    format!(
        "[[listeners]]\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1\"\nport = 0\n\
         cert_file = {}\nkey_file = {}\n",
        toml_path(&pki.server_cert),
        toml_path(&pki.server_key)
    )
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `packet` as MQTT 3.1.1 bytes.
pub fn encode(packet: &Packet) -> Vec<u8> {
    codec::encode(packet, ProtocolVersion::V311)
}

/// The `codec` client's CONNECT (clean start, keep-alive 30 s) as MQTT 3.1.1.
pub fn connect_packet(client_id: &str) -> Packet {
    Packet::Connect(Connect {
        version: ProtocolVersion::V311,
        ..codec::connect_packet(client_id)
    })
}

pub fn subscribe_packet(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![protocol::SubscribeFilter {
            filter: filter.into(),
            options: protocol::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    })
}

pub fn publish_packet(topic: &str, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        payload: payload.to_vec().into(),
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        packet_id: 0,
        properties: Default::default(),
    })
}

/// Read one MQTT packet from a blocking stream (read timeout set by the caller).
pub fn read_packet(stream: &mut impl Read) -> Packet {
    codec::read_packet(stream, ProtocolVersion::V311, 1 << 20)
}

/// CONNECT with a username and password.
pub fn connect_with_credentials(client_id: &str, username: &str, password: &str) -> Packet {
    let mut packet = connect_packet(client_id);
    if let Packet::Connect(c) = &mut packet {
        c.username = Some(username.into());
        c.password = Some(password.as_bytes().to_vec().into());
    }
    packet
}

/// Send CONNECT on `stream` and expect CONNACK 0.
pub fn mqtt_connect(stream: &mut (impl Read + Write), client_id: &str) {
    stream
        .write_all(&encode(&connect_packet(client_id)))
        .unwrap();
    match read_packet(stream) {
        Packet::ConnAck(c) => assert_eq!(c.code, 0, "CONNACK code"),
        other => panic!("expected CONNACK, got {}", other.name()),
    }
}

/// A TLS client connection to `addr` trusting the CA in `ca_file` (server name "localhost").
pub fn tls_client(
    addr: SocketAddr,
    ca_file: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}
