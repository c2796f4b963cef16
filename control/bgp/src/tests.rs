//! The speaker against a scripted neighbour on loopback: the neighbour's side is written with
//! [`crate::wire`] and every byte the speaker sends is checked.

use super::*;
use crate::wire::{emit_keepalive, parse_header, Family, MessageType, Notification, Open};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
const LOCAL_AS: u32 = 65001;
const PEER_AS: u32 = 65002;
const PEER_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// The scripted neighbour's end of a session.
struct Neighbour {
    stream: TcpStream,
}

impl Neighbour {
    async fn read(&mut self) -> (MessageType, Vec<u8>) {
        tokio::time::timeout(STEP, async {
            let mut head = [0u8; wire::HEADER_LEN];
            self.stream.read_exact(&mut head).await.expect("a header");
            let h = parse_header(&head).expect("a valid header");
            let mut body = vec![0; h.len - wire::HEADER_LEN];
            self.stream.read_exact(&mut body).await.expect("a body");
            (h.kind, body)
        })
        .await
        .expect("the speaker sent nothing in time")
    }

    /// The next message that is not a KEEPALIVE.
    async fn read_skipping_keepalives(&mut self) -> (MessageType, Vec<u8>) {
        loop {
            let m = self.read().await;
            if m.0 != MessageType::Keepalive {
                return m;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the speaker's OPEN, answers with an OPEN from `my_as` and a KEEPALIVE.
    async fn open(&mut self, my_as: u32, hold: u16) -> Open {
        let (kind, body) = self.read().await;
        assert_eq!(kind, MessageType::Open);
        let theirs = Open::parse(&body).expect("the speaker's OPEN parses");
        let mut out = Vec::new();
        Open::ours(my_as, hold, PEER_ID, &[Family::Ipv4Unicast]).emit(&mut out);
        emit_keepalive(&mut out);
        self.send(&out).await;
        theirs
    }

    /// [`Neighbour::open`] and the speaker's KEEPALIVE that makes the session established.
    async fn establish(&mut self) -> Open {
        let theirs = self.open(PEER_AS, 90).await;
        assert_eq!(self.read().await.0, MessageType::Keepalive);
        theirs
    }

    /// The next NOTIFICATION; KEEPALIVEs and UPDATEs (the End-of-RIB) before it are skipped.
    async fn expect_notification(&mut self) -> Notification {
        let (kind, body) = loop {
            let m = self.read_skipping_keepalives().await;
            if m.0 != MessageType::Update {
                break m;
            }
        };
        assert_eq!(kind, MessageType::Notification, "{body:?}");
        Notification::parse(&body).unwrap()
    }
}

/// A running speaker with one neighbour at 127.0.0.1, and that neighbour's listener.
struct Setup {
    speaker: Arc<Speaker>,
    listener: TcpListener,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A port nobody listens on right now, for the speaker's listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup(remote_as: u32, routes: Routes) -> Setup {
    setup_with(remote_as, routes, None).await
}

async fn setup_with(remote_as: u32, routes: Routes, next_hop_v4: Option<Ipv4Addr>) -> Setup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let speaker = Arc::new(Speaker::new());
    speaker.set(Desired {
        global: Some(GlobalConfig {
            listen_port: free_port(),
            next_hop_v4,
            ..GlobalConfig::new(LOCAL_AS, Ipv4Addr::new(198, 18, 0, 1))
        }),
        peers: vec![PeerConfig {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_as,
            remote_port: port,
            multihop: false,
        }],
        routes,
    });
    let driver = tokio::spawn(speaker.run());
    Setup {
        speaker,
        listener,
        driver,
    }
}

impl Setup {
    async fn accept(&self) -> Neighbour {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("the speaker did not connect in time")
            .unwrap();
        Neighbour { stream }
    }

    fn status(&self) -> PeerStatus {
        self.speaker.peers().pop().expect("one neighbour")
    }

    /// Waits (bounded) until the neighbour's status satisfies `f`.
    async fn wait_status(&self, f: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
        let deadline = Instant::now() + STEP;
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never matched: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn vip_routes() -> Routes {
    [(VIP, Preference::Primary)].into()
}

#[tokio::test]
async fn an_ebgp_session_comes_up_and_the_vip_is_announced_then_withdrawn() {
    let s = setup(PEER_AS, vip_routes()).await;
    let mut n = s.accept().await;
    let theirs = n.establish().await;
    assert_eq!(theirs.my_as, LOCAL_AS);
    assert!(theirs.four_octet);
    assert_eq!(theirs.families, Family::ALL);

    let (kind, body) = n.read_skipping_keepalives().await;
    assert_eq!(kind, MessageType::Update);
    assert_eq!(
        body,
        [
            0, 0, // no withdrawn routes
            0, 27, // attributes
            0x40, 1, 1, 0, // ORIGIN IGP
            0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, // AS_PATH [65001]
            0x40, 3, 4, 127, 0, 0, 1, // NEXT_HOP: the session's local address
            0x80, 4, 4, 0, 0, 0, 10, // MED 10 (no LOCAL_PREF to an eBGP neighbour)
            32, 198, 18, 100, 1,
        ]
    );
    // End-of-RIB for IPv4, the only family both sides speak.
    assert_eq!(n.read_skipping_keepalives().await.1, [0, 0, 0, 0]);
    let st = s
        .wait_status(|st| st.state == SessionState::Established)
        .await;
    assert_eq!(st.established_total, 1);

    let before = (**s.speaker.desired.borrow()).clone();
    s.speaker.set(Desired {
        routes: Routes::new(),
        ..before
    });
    let (kind, body) = n.read_skipping_keepalives().await;
    assert_eq!(kind, MessageType::Update);
    assert_eq!(body, [0, 5, 32, 198, 18, 100, 1, 0, 0]);
    s.wait_status(|st| st.updates_sent == 3).await;
}

#[tokio::test]
async fn an_ibgp_neighbour_gets_an_empty_as_path_and_the_backup_preference() {
    let s = setup(LOCAL_AS, [(VIP, Preference::Backup)].into()).await;
    let mut n = s.accept().await;
    let theirs = n.open(LOCAL_AS, 90).await;
    assert_eq!(theirs.my_as, LOCAL_AS);
    assert_eq!(n.read().await.0, MessageType::Keepalive);
    let (_, body) = n.read_skipping_keepalives().await;
    assert_eq!(
        &body[4..body.len() - 5],
        [
            0x40, 1, 1, 0, // ORIGIN IGP
            0x40, 2, 0, // empty AS_PATH
            0x40, 3, 4, 127, 0, 0, 1, // NEXT_HOP
            0x80, 4, 4, 0, 0, 0, 70, // MED 70
            0x40, 5, 4, 0, 0, 0, 10, // LOCAL_PREF 10
        ]
    );
}

#[tokio::test]
async fn a_configured_next_hop_replaces_the_sessions_local_address() {
    let nh = Ipv4Addr::new(198, 18, 0, 9);
    let s = setup_with(PEER_AS, vip_routes(), Some(nh)).await;
    let mut n = s.accept().await;
    n.establish().await;
    let (_, body) = n.read_skipping_keepalives().await;
    assert_eq!(&body[17..24], [0x40, 3, 4, 198, 18, 0, 9], "{body:?}");
}

#[tokio::test]
async fn a_malformed_update_is_answered_with_its_notification_and_counted() {
    let s = setup(PEER_AS, Routes::new()).await;
    let mut n = s.accept().await;
    n.establish().await;
    // ORIGIN 7 does not exist: UPDATE Message Error, Invalid ORIGIN Attribute.
    let body = [
        0, 0, 0, 14, 0x40, 1, 1, 7, 0x40, 2, 0, 0x40, 3, 4, 198, 18, 1, 2, 24, 198, 18, 200,
    ];
    let mut msg = wire::MARKER.to_vec();
    msg.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    msg.push(MessageType::Update as u8);
    msg.extend_from_slice(&body);
    n.send(&msg).await;
    let note = n.expect_notification().await;
    assert_eq!((note.code, note.subcode), (3, 6));
    let st = s
        .wait_status(|st| st.notifications_sent.get(&(3, 6)) == Some(&1))
        .await;
    assert_eq!(st.malformed.get("invalid_origin"), Some(&1));
    assert_ne!(st.state, SessionState::Established);
}

#[tokio::test]
async fn a_neighbour_announcing_another_as_is_refused_with_bad_peer_as() {
    let s = setup(PEER_AS, Routes::new()).await;
    let mut n = s.accept().await;
    n.open(65003, 90).await;
    let note = n.expect_notification().await;
    assert_eq!((note.code, note.subcode), (2, 2));
    s.wait_status(|st| {
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("65003"))
    })
    .await;
}

#[tokio::test]
async fn a_silent_neighbour_is_dropped_when_the_hold_timer_expires() {
    let s = setup(PEER_AS, Routes::new()).await;
    let mut n = s.accept().await;
    n.open(PEER_AS, 3).await;
    let started = Instant::now();
    // Keepalives come every second (a third of the hold time); then the NOTIFICATION.
    let note = n.expect_notification().await;
    assert_eq!((note.code, note.subcode), (4, 0));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_neighbours_own_connection_on_the_listen_port_makes_the_session() {
    let s = setup(PEER_AS, vip_routes()).await;
    let port = s.speaker.desired.borrow().global.unwrap().listen_port;
    // The speaker's outgoing connection stays unanswered (accepted, never read) while the
    // neighbour connects itself.
    let _ignored = s.accept().await;
    let deadline = Instant::now() + STEP;
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the speaker never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut n = Neighbour { stream };
    n.establish().await;
    let (kind, _) = n.read_skipping_keepalives().await;
    assert_eq!(kind, MessageType::Update);
    s.wait_status(|st| st.state == SessionState::Established)
        .await;
}

#[tokio::test]
async fn stopping_the_speaker_says_goodbye_with_an_administrative_shutdown() {
    let s = setup(PEER_AS, Routes::new()).await;
    let mut n = s.accept().await;
    n.establish().await;
    s.wait_status(|st| st.state == SessionState::Established)
        .await;
    s.speaker.stop();
    let note = n.expect_notification().await;
    assert_eq!((note.code, note.subcode), (6, 2));
}

#[tokio::test]
async fn removing_the_neighbour_closes_its_session_with_peer_deconfigured() {
    let s = setup(PEER_AS, Routes::new()).await;
    let mut n = s.accept().await;
    n.establish().await;
    s.wait_status(|st| st.state == SessionState::Established)
        .await;
    let before = (**s.speaker.desired.borrow()).clone();
    s.speaker.set(Desired {
        peers: Vec::new(),
        ..before
    });
    let note = n.expect_notification().await;
    assert_eq!((note.code, note.subcode), (6, 3));
    assert!(s.speaker.peers().is_empty());
}

#[test]
fn updowntime_reads_like_gobgps() {
    let peer = PeerConfig {
        addr: VIP,
        remote_as: 1,
        remote_port: 179,
        multihop: false,
    };
    let mut st = PeerStatus::new(&peer);
    let now = Instant::now();
    assert_eq!(st.updowntime(now), "never");
    st.up_since = Some(now);
    assert_eq!(st.updowntime(now + Duration::from_secs(3725)), "01:02:05");
    assert_eq!(
        st.updowntime(now + Duration::from_secs(2 * 86400 + 5)),
        "2d 00:00:05"
    );
}

#[test]
fn the_metrics_name_every_neighbour() {
    let speaker = Speaker::new();
    speaker.set(Desired {
        global: None,
        peers: vec![PeerConfig {
            addr: VIP,
            remote_as: 65002,
            remote_port: 179,
            multihop: false,
        }],
        routes: Routes::new(),
    });
    let mut page = String::new();
    speaker.render_metrics(&mut page);
    assert!(
        page.contains("oxlb_bgp_session_state{peer=\"198.18.100.1\",remote_as=\"65002\"} 1"),
        "{page}"
    );
    assert!(page.contains("# TYPE oxlb_bgp_updates_sent_total counter"));
}
