//! Hostile bytes on the Kafka port: the broker drops the offending connection, allocates nothing
//! for lengths it will not accept, and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use spate_e2e::{assert_serves, TestBroker};

fn connect(broker: &TestBroker) -> TcpStream {
    let stream = TcpStream::connect(broker.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads until the broker closes the connection; fails if it stays open for 10 s.
fn expect_closed(mut stream: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            // An error response before closing is acceptable; keep reading to the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                return
            }
            Err(e) => panic!("{what}: the broker kept the connection open ({e})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_truncated_frames_leave_the_broker_serving() {
    let mut broker = TestBroker::start(&[]).unwrap();

    tokio::task::block_in_place(|| {
        // Text where a frame should be: "GET " read as a length is ~1.2 GB, past the limit.
        let mut s = connect(&broker);
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        expect_closed(s, "http request");

        // The largest positive length prefix: must be refused, not allocated.
        let mut s = connect(&broker);
        s.write_all(&0x7fff_ffffi32.to_be_bytes()).unwrap();
        s.write_all(&[0u8; 64]).unwrap();
        expect_closed(s, "0x7fffffff length");

        // A negative length.
        let mut s = connect(&broker);
        s.write_all(&(-5i32).to_be_bytes()).unwrap();
        expect_closed(s, "negative length");

        // A well-framed body that is not a request header (api key -1, version -1).
        let mut s = connect(&broker);
        let mut frame = 12i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff; 12]);
        s.write_all(&frame).unwrap();
        expect_closed(s, "unknown api key");

        // A known api key with a truncated body: Metadata v12, correlation id, then nothing.
        let mut s = connect(&broker);
        let body: Vec<u8> = [3i16.to_be_bytes(), 12i16.to_be_bytes()].concat();
        let mut frame = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(&7i32.to_be_bytes());
        s.write_all(&frame).unwrap();
        expect_closed(s, "truncated metadata request");

        // A frame cut short by the client: 100 bytes promised, 10 sent, then end of stream.
        let mut s = connect(&broker);
        s.write_all(&100i32.to_be_bytes()).unwrap();
        s.write_all(&[0u8; 10]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        expect_closed(s, "truncated frame");

        // Random bytes, many times over one connection each.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20 {
            let mut s = connect(&broker);
            let garbage: Vec<u8> = (0..256)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            // The peer may close mid-write; that is the point.
            let _ = s.write_all(&garbage);
            let _ = s.shutdown(Shutdown::Write);
            expect_closed(s, &format!("random garbage round {round}"));
        }
    });

    assert!(broker.is_alive(), "broker died:\n{}", broker.log());
    assert_serves(&broker, "after-garbage", 100).await;
    assert!(broker.is_alive(), "broker died:\n{}", broker.log());
}
