//! Authentication and authorization through the real broker: mosquitto-format password and ACL
//! files, `mqflux passwd`, SIGHUP reload and the per-client publish rate limit.

use crate::common;
use crate::common::codec as v5_common;

use common::client::{options, MqttClient};
use common::raw::{self, RawClient};
use common::{run_to_exit, Broker};
use rumqttc::{ConnectReturnCode, MqttOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A directory for password/ACL files that outlives the broker using them.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

fn mosquitto_passwd(file: &Path, user: &str, password: &str) {
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("run mosquitto_passwd (Debian package mosquitto)");
    assert!(status.success(), "mosquitto_passwd failed");
}

fn with_credentials(broker: &Broker, client_id: &str, user: &str, password: &str) -> MqttOptions {
    let mut o = options(broker, client_id);
    o.set_credentials(user, password);
    o
}

fn refusal_code(result: Result<MqttClient, String>) -> String {
    match result {
        Ok(_) => panic!("connection was accepted"),
        Err(e) => e,
    }
}

#[test]
fn password_file_written_by_mosquitto_passwd_is_accepted() {
    let files = Files::new();
    let pw = files.write("passwd", "");
    mosquitto_passwd(&pw, "alice", "s3cret-pw");
    let broker = Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {:?}\n",
        pw
    ));

    let ok = MqttClient::connect_with(with_credentials(&broker, "alice-1", "alice", "s3cret-pw"));
    assert_eq!(ok.connack.code, ConnectReturnCode::Success);

    // Wrong password, unknown user and no credentials: CONNACK 0x05 Not authorized (3.1.1).
    let wrong = MqttClient::try_connect(with_credentials(&broker, "alice-2", "alice", "nope"));
    assert!(refusal_code(wrong).contains("NotAuthorized"));
    let unknown = MqttClient::try_connect(with_credentials(&broker, "eve-1", "eve", "x"));
    assert!(refusal_code(unknown).contains("NotAuthorized"));
    let anonymous = MqttClient::try_connect(options(&broker, "anon-1"));
    assert!(refusal_code(anonymous).contains("NotAuthorized"));

    // The refusal is logged with the reason, never with the password.
    let line = broker.wait_for_log(&["alice-2", "wrong password"]);
    assert!(
        !line.contains("nope"),
        "password leaked into the log: {line}"
    );
    assert!(
        !broker.log_text().contains("nope"),
        "password leaked into the log"
    );
}

#[test]
fn users_added_with_mqflux_passwd_can_connect() {
    let files = Files::new();
    let pw = files.path("passwd");
    let file = pw.to_str().expect("utf-8 path");
    let (status, out) = run_to_exit(
        &["passwd", file, "bob", "--password", "hunter22"],
        Duration::from_secs(10),
    );
    assert!(status.success(), "mqflux passwd failed: {out}");
    let text = std::fs::read_to_string(&pw).expect("read passwd");
    assert!(
        text.starts_with("bob:$7$101$"),
        "not mosquitto's $7$ format: {text}"
    );

    let broker = Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {:?}\n",
        pw
    ));
    MqttClient::connect_with(with_credentials(&broker, "bob-1", "bob", "hunter22"));
    let wrong = MqttClient::try_connect(with_credentials(&broker, "bob-2", "bob", "hunter23"));
    assert!(refusal_code(wrong).contains("NotAuthorized"));
}

const ACL: &str = "\
# anonymous clients: nothing at all

user alice
topic write sensors/#
topic write users/+/inbox
topic write public/#
topic write will/#
pattern readwrite clients/%c/#

user bob
topic read sensors/temp
topic read will/#
pattern read users/%u/inbox
";

fn acl_broker(files: &Files, acl: &str) -> Broker {
    acl_broker_with(files, acl, "")
}

/// `acl_broker` with more configuration appended.
fn acl_broker_with(files: &Files, acl: &str, extra: &str) -> Broker {
    let pw = files.write("passwd", "");
    mosquitto_passwd(&pw, "alice", "a");
    mosquitto_passwd(&pw, "bob", "b");
    let acl = files.write("acl", acl);
    Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {pw:?}\nacl_file = {acl:?}\n{extra}"
    ))
}

/// Collect topics received until `sentinel` arrives.
fn topics_until(client: &mut MqttClient, sentinel: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let p = client.recv_publish();
        if p.topic == sentinel {
            return topics;
        }
        topics.push(p.topic);
    }
}

#[test]
fn acl_filters_publishes_and_deliveries_with_user_and_client_patterns() {
    let files = Files::new();
    let broker = acl_broker(&files, ACL);
    let mut bob = MqttClient::connect_with(with_credentials(&broker, "bob-dev", "bob", "b"));
    bob.subscribe("#", 1);
    let mut alice = MqttClient::connect_with(with_credentials(&broker, "alice-dev", "alice", "a"));

    alice.publish("sensors/temp", 1, false, b"21"); // bob may read
    alice.publish("sensors/hum", 1, false, b"40"); // bob may not read
    alice.publish("users/bob/inbox", 1, false, b"hi"); // %u pattern lets bob read his inbox
    alice.publish("users/carol/inbox", 1, false, b"hi"); // but not carol's
    alice.publish("secret/x", 1, false, b"no"); // alice may not write: dropped
    alice.publish("clients/alice-dev/status", 1, false, b"up"); // %c: alice's own subtree
    alice.publish("clients/other/status", 1, false, b"no"); // not hers: dropped
    alice.publish("will/sentinel", 1, false, b"end");

    let got = topics_until(&mut bob, "will/sentinel");
    assert_eq!(got, vec!["sensors/temp", "users/bob/inbox"]);
    broker.wait_for_log(&["alice-dev", "denied by ACL"]);
}

#[test]
fn retained_and_will_messages_obey_the_acl() {
    let files = Files::new();
    let broker = acl_broker(&files, ACL);
    let mut alice = MqttClient::connect_with(with_credentials(&broker, "alice-dev", "alice", "a"));
    alice.publish("sensors/temp", 1, true, b"21");
    alice.publish("sensors/hum", 1, true, b"40");
    alice.publish("secret/retained", 1, true, b"never stored");

    // A late subscriber gets only the retained messages it may read.
    let mut bob = MqttClient::connect_with(with_credentials(&broker, "bob-dev", "bob", "b"));
    bob.subscribe("#", 1);
    let first = bob.recv_publish();
    assert_eq!(first.topic, "sensors/temp");
    assert!(bob
        .recv_publish_timeout(Duration::from_millis(300))
        .is_none());

    // Wills obey the ACL too: one on a topic its client may not write is not published, one
    // it may write is. The raw client drops its socket without DISCONNECT.
    let will_client = |client_id: &str, topic: &str| raw::Connect {
        client_id: client_id.into(),
        username: Some("alice".into()),
        password: Some(b"a".to_vec()),
        will: Some(raw::Will {
            topic: topic.into(),
            payload: b"gone".to_vec(),
            qos: 1,
            retain: false,
        }),
        ..raw::Connect::default()
    };
    let (denied, _) =
        RawClient::connect_mqtt(broker.addr(), &will_client("alice-will", "secret/will"));
    denied.drop_connection();
    broker.wait_for_log(&["alice-will", "denied by ACL; not published"]);
    let (allowed, _) =
        RawClient::connect_mqtt(broker.addr(), &will_client("alice-will2", "will/alice"));
    allowed.drop_connection();
    let will = bob.recv_publish();
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/alice", &b"gone"[..])
    );
}

#[test]
fn sighup_reloads_the_acl_without_dropping_connections() {
    let files = Files::new();
    let broker = acl_broker(&files, ACL);
    let mut bob = MqttClient::connect_with(with_credentials(&broker, "bob-dev", "bob", "b"));
    bob.subscribe("#", 1);
    let mut alice = MqttClient::connect_with(with_credentials(&broker, "alice-dev", "alice", "a"));

    alice.publish("public/news", 1, false, b"before");
    alice.publish("will/sentinel", 1, false, b"1");
    assert_eq!(
        topics_until(&mut bob, "will/sentinel"),
        Vec::<String>::new()
    );

    // Give bob read access to public/# and reload; both connections stay up.
    let acl = files.path("acl");
    std::fs::write(&acl, format!("{ACL}topic read public/#\n")).expect("rewrite acl");
    let mark = broker.log_mark();
    broker.send_signal(libc_sighup());
    broker.wait_for_log_after(mark, &["reloaded"], Duration::from_secs(5));

    alice.publish("public/news", 1, false, b"after");
    alice.publish("will/sentinel", 1, false, b"2");
    assert_eq!(topics_until(&mut bob, "will/sentinel"), vec!["public/news"]);

    // A broken ACL on reload keeps the previous rules.
    std::fs::write(&acl, "topic bogus-access-word x y z\n").expect("write broken acl");
    let mark = broker.log_mark();
    broker.send_signal(libc_sighup());
    broker.wait_for_log_after(mark, &["reload failed"], Duration::from_secs(5));
    alice.publish("public/news", 1, false, b"still");
    alice.publish("will/sentinel", 1, false, b"3");
    assert_eq!(topics_until(&mut bob, "will/sentinel"), vec!["public/news"]);
}

fn libc_sighup() -> i32 {
    1 // SIGHUP on Linux
}

#[test]
fn publish_rate_limit_slows_a_fast_publisher_without_dropping() {
    let broker = Broker::with_config("[limits]\nmax_publish_rate = 20\n");
    let mut sub = MqttClient::connect(&broker, "rate-sub");
    sub.subscribe("rate/#", 1);
    let mut publisher = MqttClient::connect(&broker, "rate-pub");
    let started = Instant::now();
    for i in 0..50u32 {
        publisher.publish("rate/x", 1, false, &i.to_be_bytes());
    }
    let elapsed = started.elapsed();
    // A burst of 20 passes at once, the other 30 at 20/s: at least ~1.5 s.
    assert!(
        elapsed >= Duration::from_millis(1300),
        "not throttled: {elapsed:?}"
    );
    for i in 0..50u32 {
        let p = sub.recv_publish();
        assert_eq!(
            &p.payload[..],
            &i.to_be_bytes(),
            "message {i} lost or out of order"
        );
    }
}

#[test]
fn shared_subscription_messages_go_only_to_members_allowed_to_read_them() {
    shared_members_allowed_to_read(false);
}

/// The same through the exactly-once path: QoS 2 from a stored session, with persistence, is
/// routed with its store record written atomically with the deliveries.
#[test]
fn shared_subscription_qos2_messages_of_a_stored_session_go_only_to_members_allowed_to_read_them() {
    shared_members_allowed_to_read(true);
}

fn shared_members_allowed_to_read(exactly_once_path: bool) {
    // A member that may not read the topic is skipped for one that may: nothing is lost to the
    // ACL and nothing leaks past it.
    let files = Files::new();
    // carol may subscribe to sensors/+ (she reads part of it) but not read sensors/temp.
    let acl = format!("{ACL}\nuser carol\ntopic read sensors/#\ntopic deny sensors/temp\n");
    let broker = if exactly_once_path {
        acl_broker_with(
            &files,
            &acl,
            &common::persistent_config(&files.path("store")),
        )
    } else {
        acl_broker(&files, &acl)
    };
    mosquitto_passwd(&files.path("passwd"), "carol", "c");
    // The password file is read at start-up: reload it so carol exists.
    broker.send_signal(libc_sighup());
    broker.wait_for_log(&["reloaded"]);
    let mut bob = MqttClient::connect_with(with_credentials(&broker, "bob-dev", "bob", "b"));
    let mut carol = MqttClient::connect_with(with_credentials(&broker, "carol-dev", "carol", "c"));
    bob.subscribe("$share/g/sensors/+", 1);
    carol.subscribe("$share/g/sensors/+", 1);
    let mut o = with_credentials(&broker, "alice-dev", "alice", "a");
    o.set_clean_session(!exactly_once_path);
    let mut alice = MqttClient::connect_with(o);
    let qos = if exactly_once_path { 2 } else { 1 };
    for i in 0..6u8 {
        alice.publish("sensors/temp", qos, false, &[i]);
    }
    for i in 0..6u8 {
        assert_eq!(
            &bob.recv_publish().payload[..],
            &[i],
            "bob must get every message"
        );
    }
    assert!(
        carol
            .recv_publish_timeout(Duration::from_millis(300))
            .is_none(),
        "carol may not read sensors/temp"
    );
}

/// A client id substituted for `%c` must stay one topic level: with `pattern readwrite
/// devices/%c/#`, client `victim/data` would otherwise read and forge `devices/victim/data`,
/// which belongs to client `victim` (mosquitto 2.0 allows that; mqflux treats `/` as it treats
/// `+` and `#`: no pattern rules for such a name).
#[test]
fn client_id_with_a_slash_gets_no_pattern_rules() {
    let files = Files::new();
    let acl = files.write("acl", "pattern readwrite devices/%c/#\n");
    let broker = Broker::with_config(&format!(
        "[security]\nallow_anonymous = true\nacl_file = {acl:?}\n"
    ));
    let mut victim = MqttClient::connect(&broker, "victim");
    victim.subscribe("devices/victim/#", 1);
    let mut attacker = MqttClient::connect(&broker, "victim/data");
    attacker.subscribe("devices/#", 1);

    // Forged: dropped by the ACL (v3.1.1 publishers are not told).
    attacker.publish("devices/victim/data", 1, false, b"forged");
    broker.wait_for_log(&["victim/data", "denied by ACL"]);
    // The victim's own message on the same topic is not readable by the attacker.
    victim.publish("devices/victim/data", 1, false, b"real");
    victim.publish("devices/victim/sentinel", 1, false, b"end");
    let got = topics_until(&mut victim, "devices/victim/sentinel");
    assert_eq!(got, vec!["devices/victim/data"]);
    assert!(
        attacker
            .recv_publish_timeout(Duration::from_millis(300))
            .is_none(),
        "a client id with `/` read another client's topic"
    );
    broker.wait_for_log(&["patterns not applied", "victim/data"]);
}

// ---------------------------------------------------------------------------------------------
// Session ownership
// ---------------------------------------------------------------------------------------------

const OWNERSHIP_ACL: &str = "user alice\ntopic readwrite alice/#\n\nuser eve\ntopic read eve/#\n";

fn ownership_broker(files: &Files, extra: &str) -> Broker {
    let pw = files.write("passwd", "");
    mosquitto_passwd(&pw, "alice", "a");
    mosquitto_passwd(&pw, "eve", "e");
    let acl = files.write("acl", OWNERSHIP_ACL);
    Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {pw:?}\nacl_file = {acl:?}\n{extra}"
    ))
}

/// A persistent CONNECT (clean session 0) as `user`.
fn persistent_as(client_id: &str, user: &str, password: &str) -> raw::Connect {
    raw::Connect {
        username: Some(user.into()),
        password: Some(password.as_bytes().to_vec()),
        ..raw::Connect::persistent(client_id)
    }
}

/// alice leaves session `alice-persist` subscribed to `alice/#` and has 3 QoS 1 messages queued
/// for it (published from another client id).
fn leave_alice_session_with_three_queued(broker: &Broker) {
    let (mut alice, _) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-persist", "alice", "a"));
    alice.subscribe(1, &[("alice/#", 1)]);
    alice.send(&raw::disconnect());
    alice.read_until_closed(Duration::from_secs(5));
    let mut publisher =
        MqttClient::connect_with(with_credentials(broker, "alice-pub", "alice", "a"));
    for i in 1..=3 {
        publisher.publish(&format!("alice/private{i}"), 1, false, b"secret");
    }
}

/// Issue 23 finding 3: a persistent session belongs to the identity that created it. eve (who
/// may only read `eve/#`) connecting with alice's client id and clean session 0 does not resume
/// alice's session: CONNACK 0 with Session Present 0, none of alice's queued messages, none of
/// her subscriptions. The old session is discarded as on a Clean Start (any client may already
/// end another client id's session that way), so alice, reconnecting, starts afresh too.
///
/// mosquitto 2.0.11 (`src/handle_connect.c`, `connect__on_authorised`) does not compare
/// usernames: it resumes the session for eve (Session Present 1, alice's subscriptions moved to
/// her) but first deletes every queued and in-flight message eve may not read
/// (`connection_check_acl`), and checks read access per delivery after that. So there too eve
/// gets none of alice's messages and alice loses them; mqflux also keeps eve from inheriting
/// alice's subscriptions.
#[test]
fn another_user_does_not_resume_a_persistent_session_or_read_its_queue() {
    let files = Files::new();
    let broker = ownership_broker(&files, "");
    leave_alice_session_with_three_queued(&broker);

    let (mut eve, present) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-persist", "eve", "e"));
    // Nothing of alice's: neither the queue nor (since the subscription did not pass to eve)
    // what alice publishes now.
    let mut publisher =
        MqttClient::connect_with(with_credentials(&broker, "alice-pub2", "alice", "a"));
    publisher.publish("alice/private4", 1, false, b"secret");
    eve.expect_silence(Duration::from_millis(500));
    assert!(!present, "eve must not be told she resumed alice's session");
    broker.wait_for_log(&[
        "alice-persist",
        "owned by user \"alice\" not resumed by user \"eve\"",
    ]);
    eve.send(&raw::disconnect());
    eve.read_until_closed(Duration::from_secs(5));

    // eve's session is hers: alice does not resume it either, and finds no messages.
    let (mut alice, present) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-persist", "alice", "a"));
    assert!(!present, "alice starts a new session after eve's takeover");
    alice.expect_silence(Duration::from_millis(300));
}

/// The owner survives a restart: alice resumes her stored session with its 3 queued messages;
/// eve, after the next restart, does not.
#[test]
fn session_owner_is_remembered_across_restarts() {
    let files = Files::new();
    let broker_config = common::persistent_config(&files.path("store"));
    let mut broker = ownership_broker(&files, &broker_config);
    leave_alice_session_with_three_queued(&broker);
    broker.stop_gracefully();
    broker.restart();

    let (mut alice, present) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-persist", "alice", "a"));
    assert!(present, "the owner resumes her stored session");
    for i in 1..=3 {
        let p = alice.expect_publish();
        assert_eq!(p.topic, format!("alice/private{i}"));
        alice.ack(&p);
    }
    alice.send(&raw::disconnect());
    alice.read_until_closed(Duration::from_secs(5));
    let mut publisher =
        MqttClient::connect_with(with_credentials(&broker, "alice-pub", "alice", "a"));
    publisher.publish("alice/private5", 1, false, b"secret");
    drop(publisher);
    broker.stop_gracefully();
    broker.restart();

    let (mut eve, present) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-persist", "eve", "e"));
    assert!(!present);
    eve.expect_silence(Duration::from_millis(500));
}

/// Read access is checked again when a session is resumed: messages queued while its client
/// was away that the (reloaded) ACL no longer lets it read are discarded, not delivered (as
/// mosquitto's `connection_check_acl` does at CONNECT).
#[test]
fn queued_messages_the_client_may_no_longer_read_are_not_delivered_on_resume() {
    let files = Files::new();
    let broker = ownership_broker(&files, "");
    let (mut alice, _) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-acl", "alice", "a"));
    alice.subscribe(1, &[("alice/#", 1)]);
    alice.send(&raw::disconnect());
    alice.read_until_closed(Duration::from_secs(5));
    let mut publisher =
        MqttClient::connect_with(with_credentials(&broker, "alice-pub", "alice", "a"));
    publisher.publish("alice/secret", 1, false, b"no longer hers");
    publisher.publish("alice/open", 1, false, b"still hers");

    std::fs::write(
        files.path("acl"),
        "user alice\ntopic write alice/#\ntopic read alice/open\n",
    )
    .expect("rewrite acl");
    let mark = broker.log_mark();
    broker.send_signal(libc_sighup());
    broker.wait_for_log_after(mark, &["reloaded"], Duration::from_secs(5));

    let (mut alice, present) =
        RawClient::connect_mqtt(broker.addr(), &persistent_as("alice-acl", "alice", "a"));
    assert!(present);
    let p = alice.expect_publish();
    assert_eq!(p.topic, "alice/open");
    alice.ack(&p);
    alice.expect_silence(Duration::from_millis(300));
    broker.wait_for_log(&["alice-acl", "1 queued message(s)", "discarded"]);
}

// ---------------------------------------------------------------------------------------------
// Revocation on reload
// ---------------------------------------------------------------------------------------------

/// Issue 23 finding 4: after SIGHUP, a client whose password file entry was removed (dave,
/// MQTT 3.1.1: the connection is closed) or changed (erin, MQTT 5: DISCONNECT 0x87 Not
/// authorized, then close) is disconnected, logged, without its will; what dave sends after
/// the reload is not delivered. bob, whose entry is unchanged, stays connected and keeps
/// receiving. mosquitto 2.0.11 does the same at reload (`mosquitto_security_apply_default`
/// re-checks every client's username and password and disconnects those that fail; it sends
/// v5 clients no DISCONNECT there).
#[test]
fn reload_disconnects_clients_whose_credentials_no_longer_hold_and_keeps_the_others() {
    let files = Files::new();
    let pw = files.write("passwd", "");
    for (user, password) in [("dave", "d"), ("erin", "e"), ("bob", "b")] {
        mosquitto_passwd(&pw, user, password);
    }
    let broker = Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {pw:?}\n"
    ));
    let mut bob = MqttClient::connect_with(with_credentials(&broker, "bob-dev", "bob", "b"));
    bob.subscribe("#", 1);
    let (mut dave, _) = RawClient::connect_mqtt(
        broker.addr(),
        &raw::Connect {
            username: Some("dave".into()),
            password: Some(b"d".to_vec()),
            will: Some(raw::Will {
                topic: "t/dave-will".into(),
                payload: b"gone".to_vec(),
                qos: 1,
                retain: false,
            }),
            ..raw::Connect::new("dave-dev")
        },
    );
    let mut connect = v5_common::connect_packet("erin-dev");
    connect.username = Some("erin".into());
    connect.password = Some(bytes::Bytes::from_static(b"e"));
    let (mut erin, ack) = v5_common::RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, 0);
    dave.publish_acked("t/dave", b"before", 1, 1, false);
    assert_eq!(bob.recv_publish().topic, "t/dave");

    // Remove dave, give erin a new password, reload.
    let status = Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(&pw)
        .arg("dave")
        .status()
        .expect("run mosquitto_passwd -D");
    assert!(status.success());
    mosquitto_passwd(&pw, "erin", "new-password");
    let mark = broker.log_mark();
    broker.send_signal(libc_sighup());
    // main's line comes after `reload_security` has flagged the revoked connections; the
    // library's "password/ACL files reloaded" comes before, and a publish sent then may pass.
    broker.wait_for_log_after(
        mark,
        &["SIGHUP: password and ACL files reloaded"],
        Duration::from_secs(5),
    );

    // dave's next publish is not delivered: his connection is closed without a reply.
    let _ = dave.try_send(&raw::publish("t/dave", b"after", 1, 2, false, false));
    let packets = dave.read_until_closed(Duration::from_secs(5));
    assert!(packets.is_empty(), "dave got {packets:02x?}");
    erin.expect_disconnect(0x87);
    broker.wait_for_log(&["dave-dev", "password file entry removed or changed"]);
    broker.wait_for_log(&["erin-dev", "password file entry removed or changed"]);

    // bob's credentials still hold: still connected, and he got neither dave's publish nor
    // dave's will.
    bob.client
        .publish(
            "t/sentinel",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"end".to_vec(),
        )
        .expect("bob publishes");
    assert_eq!(topics_until(&mut bob, "t/sentinel"), Vec::<String>::new());
    // dave cannot come back with the removed credentials: CONNACK 0x05 Not authorized.
    let mut again = RawClient::connect(broker.addr());
    again.send(
        &raw::Connect {
            username: Some("dave".into()),
            password: Some(b"d".to_vec()),
            ..raw::Connect::new("dave-dev")
        }
        .encode(),
    );
    assert_eq!(again.expect_packet().bytes(), vec![0x20, 0x02, 0x00, 0x05]);
}
