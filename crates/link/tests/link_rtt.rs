//! The emulated link reproduces its configured round-trip time. This is the one timing-sensitive
//! test of the data plane, kept in its own binary so nothing else runs beside it. A busy machine
//! only ever adds delay, so the fastest of 20 round trips measures the link itself: it must be
//! within 1 ms of the configured RTT. No round trip may be shorter than configured (that part does
//! not depend on timing at all). The median is printed, not asserted: on a loaded CI machine it
//! drifts with the load, not with the link.

use std::time::{Duration, Instant};

use ikukantai_api::topology::LinkProperties;
use ikukantai_link::link::Link;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_round_trip_is_within_a_millisecond_of_the_configured_rtt() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            if s.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let rtt = Duration::from_millis(20);
    let link = Link::new(&LinkProperties { rtt, jitter: Duration::ZERO, bandwidth: None }, 1);

    let started = Instant::now();
    let mut stream = link.connect(addr).await.unwrap();
    assert!(started.elapsed() >= rtt, "connecting costs a round trip");

    let mut samples = Vec::new();
    for i in 0..20u8 {
        let t = Instant::now();
        stream.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        samples.push(t.elapsed());
        assert_eq!(b[0], i);
    }
    samples.sort();
    assert!(samples[0] >= rtt, "never faster than the link: {samples:?}");
    let median = samples[samples.len() / 2];
    assert!(
        samples[0] <= rtt + Duration::from_millis(1),
        "fastest {:?} for a {rtt:?} link: {samples:?}",
        samples[0]
    );
    eprintln!("configured {rtt:?}, measured median {median:?}, min {:?}, max {:?}", samples[0], samples[19]);
}
